//! `armt train` drops over-long prompts before the first step and says how many (verl's
//! `filter_overlong_prompts`): by default those the rollout could never run (not below
//! `rollout.max_context`), and with `data.max_prompt_tokens` those longer than it; a data set with
//! nothing left is an error. One GRPO step of the transformers tiny model on the CPU.

mod common;

use common::{repo, work_dir_with_red_dot};
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output};

fn train(dir: &Path, name: &str, data: &str, rollout: &str) -> Output {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "stage = 1\n[model]\npath = {:?}\ndevice = \"cpu\"\ndtype = \"f32\"\n[data]\ntrain = {:?}\n{data}\n\
             [tools]\nconfig = {:?}\n[rollout]\n{rollout}\nn = 2\nmax_turns = 1\nmax_response_tokens = 4\nmax_turn_tokens = 4\n\
             [train]\nsteps = 1\nprompts_per_step = 2\nmicro_batch = 2\nsave_every = 1\nrun_dir = {:?}\n",
            armt_testkit::refs_dir().join("model/tiny-hub/model"),
            dir.join("tasks.jsonl"),
            repo().join("configs/tools/zoom.yaml"),
            dir.join(format!("run-{name}")),
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_armt"))
        .env("OMP_NUM_THREADS", "1")
        .args(["train", "--stage", "1", "--config"])
        .arg(&config)
        .output()
        .unwrap()
}

#[test]
fn overlong_prompts_are_dropped_before_training_with_a_count() {
    let dir = work_dir_with_red_dot("prompt-filter");
    // Two short prompts (a few hundred tokens with the tool schema and the image) and one of
    // about 1,300 tokens.
    let rows: Vec<String> = [
        "Which answer is better?",
        "Which one is right?",
        &"many words ".repeat(400),
    ]
    .iter()
    .enumerate()
    .map(|(i, p)| {
        json!({"id": format!("s{i}"), "task": "zoom", "prompt": p, "images": ["images/red_dot.png"],
                   "judgment": {"type": "pair", "candidates": 2}, "ground_truth": "1"})
        .to_string()
    })
    .collect();
    std::fs::write(dir.join("tasks.jsonl"), rows.join("\n") + "\n").unwrap();

    for (name, data, rollout) in [
        // The default: only what can never be rolled out (max_context 1000).
        ("default", "", "max_context = 1000"),
        // verl's max_prompt_length, with room in the context.
        ("limit", "max_prompt_tokens = 900", "max_context = 8192"),
    ] {
        let out = train(&dir, name, data, rollout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {err}");
        assert!(
            err.contains("filtered out 1 of 3 training prompts"),
            "{name}: {err}"
        );
        assert!(err.contains("(e.g. s2)"), "{name}: {err}");
    }
    let out = train(&dir, "none-left", "max_prompt_tokens = 10", "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("all 3 training prompts are too long"), "{err}");
}
