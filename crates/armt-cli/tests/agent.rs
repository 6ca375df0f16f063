//! `armt eval --api-base` against `armt serve --no-tool-loop` equals in-process `armt eval` on the
//! same checkpoint and data, greedy: the same turns, tool calls, verdicts, rewards and token
//! ids, and the server's prompt for every turn is token for token the context the in-process
//! loop built (the server re-renders the messages through the chat template and re-tokenizes
//! them, as vLLM does). The checkpoint is the transformers tiny model (real Qwen2.5-VL
//! tokenizer) fine-tuned for a few seconds on one zoom-in trajectory, so that its greedy turns
//! call the tool, read the zoom and give a verdict.

mod common;

use common::{repo, serve, work_dir_with_red_dot, Server};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn armt(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_armt"))
        .current_dir(repo())
        .env("OMP_NUM_THREADS", "1")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "armt {args:?}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `armt serve --no-tool-loop` on `model`: the policy behind `armt eval --api-base`.
fn serve_policy(model: &Path, config: &Path) -> Server {
    serve(&[
        "--no-tool-loop".as_ref(),
        "--model".as_ref(),
        model.as_os_str(),
        "--config".as_ref(),
        config.as_os_str(),
    ])
}

/// `armt eval` of `ckpt` on `tasks` with the zoom tool, trajectories to `out`.
fn eval_args(ckpt: &Path, tasks: &Path, config: &Path, out: &Path) -> Vec<String> {
    [
        "eval",
        "--model",
        ckpt.to_str().unwrap(),
        "--data",
        tasks.to_str().unwrap(),
        "--tools",
        "configs/tools/zoom.yaml",
        "--config",
        config.to_str().unwrap(),
        "--device",
        "cpu",
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

const QUESTION: &str = "What colour is the small dot in the top-right corner?";
/// The zoom tool's answer for the first observation (what the model reads in the tool turn).
const ZOOM_TEXT: &str = "This is the zoom-in image `observation_1`(zoomed in on the image original_image) after your tool call.\nContinue your reasoning process within `<think>...</think>`. If needed, you can continue to call available tools within `<tool_call>...</tool_call>`. If your final response to the original question is confirmed, put your final answer or judgment within `<answer>...</answer>`.";

fn prompt(first: &str, second: &str) -> String {
    format!("{QUESTION}\n[Answer 1] {first}\n[Answer 2] {second}\nWhich answer is better?")
}

/// A checkpoint that calls the zoom tool and then judges (the tiny model, fine-tuned on one
/// trajectory until it repeats it).
fn judge_checkpoint(dir: &Path) -> PathBuf {
    let sft = dir.join("sft.jsonl");
    let row = json!({
        "messages": [
            {"role": "user", "content": format!("<image>{}", prompt("It is red.", "It is blue."))},
            {"role": "assistant", "content": "<think>The dot is tiny; zoom in.</think>\n<tool_call>\n{\"name\": \"image_zoom_in_tool\", \"arguments\": {\"image\": \"original_image\", \"bbox_2d\": [650, 50, 850, 300]}}\n</tool_call>"},
            {"role": "user", "content": format!("<tool_response>\n<image>{ZOOM_TEXT}\n</tool_response>")},
            {"role": "assistant", "content": "<think>The zoomed dot is red.</think><answer>Overall Judgment: Answer 1 is better (X must be either 1 or 2). </answer>"},
        ],
        "images": ["images/red_dot.png", "images/red_dot.png"],
    });
    std::fs::write(&sft, format!("{row}\n")).unwrap();
    let config = dir.join("sft.toml");
    std::fs::write(
        &config,
        "[sft]\nsteps = 30\nlr = 1e-2\nbatch = 1\nmicro_batch = 1\n[optim]\nlr = 1e-2\n[train]\nsave_every = 1000\nkeep_last = 1\n",
    )
    .unwrap();
    let run = dir.join("sft-run");
    let model = armt_testkit::refs_dir().join("model/tiny-hub/model");
    armt(&[
        "sft",
        "--model",
        model.to_str().unwrap(),
        "--data",
        sft.to_str().unwrap(),
        "--tools",
        "configs/tools/zoom.yaml",
        "--config",
        config.to_str().unwrap(),
        &format!("train.run_dir={}", run.display()),
    ]);
    run.join("checkpoints/step-000030")
}

/// The rows of a JSONL file, tool timings (`duration_ms`) removed.
fn read_jsonl(p: &Path) -> Vec<Value> {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("duration_ms");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v = serde_json::from_str(l).unwrap();
            strip(&mut v);
            v
        })
        .collect()
}

#[test]
fn eval_through_a_server_equals_in_process_eval() {
    let dir = work_dir_with_red_dot("agent");
    let ckpt = judge_checkpoint(&dir);
    // The trained prompt (the model answers 1: right), the candidates swapped (it still
    // answers 1: wrong), and a question it was not trained on.
    let tasks = dir.join("tasks.jsonl");
    let rows: Vec<String> = [
        ("same", prompt("It is red.", "It is blue."), "1"),
        ("swapped", prompt("It is blue.", "It is red."), "2"),
        (
            "other",
            "Is the dot round?\n[Answer 1] Yes.\n[Answer 2] No.\nWhich answer is better?".to_string(),
            "1",
        ),
    ]
    .iter()
    .map(|(id, p, gt)| {
        json!({"id": id, "task": "zoom", "prompt": p, "images": ["images/red_dot.png"],
               "judgment": {"type": "pair", "candidates": 2}, "ground_truth": gt})
        .to_string()
    })
    .collect();
    std::fs::write(&tasks, rows.join("\n") + "\n").unwrap();
    let config = dir.join("eval.toml");
    std::fs::write(
        &config,
        "[rollout]\nmax_turns = 3\nmax_turn_tokens = 64\nmax_response_tokens = 400\nmax_context = 8192\ncot_prompt = \"\"\n",
    )
    .unwrap();
    let server = serve_policy(&ckpt, &config);
    let common = |out: &Path| eval_args(&ckpt, &tasks, &config, out);
    let (local_out, remote_out) = (dir.join("local.jsonl"), dir.join("remote.jsonl"));
    let mut local_args = common(&local_out);
    // In-process, each turn re-tokenized as the server re-renders it (the same here: this
    // model's turns are its tokenizer's own splits; tests/retokenize.rs has one that is not).
    local_args.push("--retokenize-turns".into());
    let local = armt(&local_args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut remote_args = common(&remote_out);
    remote_args.extend(["--api-base".to_string(), format!("{}/v1", server.base)]);
    let remote = armt(&remote_args.iter().map(String::as_str).collect::<Vec<_>>());

    // The same table (accuracy, format, right tool, reward per task kind).
    let (lt, rt) = (
        String::from_utf8_lossy(&local.stdout),
        String::from_utf8_lossy(&remote.stdout),
    );
    assert_eq!(lt, rt);
    // The same trajectories, token for token.
    let (l, r) = (read_jsonl(&local_out), read_jsonl(&remote_out));
    assert_eq!(l.len(), 3);
    for (a, b) in l.iter().zip(&r) {
        for key in [
            "sample_id",
            "turns",
            "final_text",
            "stop_reason",
            "reward",
            "token_ids",
            "prompt_len",
        ] {
            assert_eq!(a[key], b[key], "{key} of {}", a["sample_id"]);
        }
    }
    // Not vacuous: tools were called, and both verdicts occur (one right, one wrong).
    let calls: usize = l
        .iter()
        .map(|t| {
            t["turns"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| !x["tool_call"].is_null())
                .count()
        })
        .sum();
    assert!(calls >= 2, "{l:?}");
    assert!(
        l[0]["final_text"]
            .as_str()
            .unwrap()
            .contains("Answer 1 is better"),
        "{}",
        l[0]
    );
    assert!(
        l[0]["reward"].as_f64().unwrap() > 1.0 && l[1]["reward"].as_f64().unwrap() < 1.0,
        "{l:?}"
    );
    // Every turn's server prompt was the in-process context, token for token.
    let turns: usize = l.iter().map(|t| t["turns"].as_array().unwrap().len()).sum();
    let stderr = String::from_utf8_lossy(&remote.stderr);
    assert!(
        stderr.contains(&format!(
            "{turns} request(s) to {}/v1/chat/completions; server prompt tokens reported for {turns}, differing from the loop's context in 0",
            server.base
        )),
        "{stderr}"
    );

    // ARMBench-VL items: the same per-item results and scores.
    let bench = |work: &Path, remote: bool| {
        let mut a = vec![
            "eval".to_string(),
            "--model".into(),
            ckpt.display().to_string(),
            "--armbench".into(),
            "data/armbench/fine_grained_perception.jsonl".into(),
            "--image-root".into(),
            "data".into(),
            "--tools".into(),
            "configs/tools/zoom.yaml".into(),
            "--config".into(),
            config.display().to_string(),
            "--device".into(),
            "cpu".into(),
            "--work-dir".into(),
            work.display().to_string(),
        ];
        if remote {
            a.extend(["--api-base".to_string(), format!("{}/v1", server.base)]);
        }
        armt(&a.iter().map(String::as_str).collect::<Vec<_>>());
        let results = read_jsonl(&work.join("step-000030.jsonl"));
        let scores: Value =
            serde_json::from_str(&std::fs::read_to_string(work.join("step-000030_scores.json")).unwrap())
                .unwrap();
        (results, scores)
    };
    let (lb, ls) = bench(&dir.join("bench-local"), false);
    let (rb, rs) = bench(&dir.join("bench-remote"), true);
    assert_eq!(ls, rs);
    assert_eq!(lb.len(), 3);
    for (a, b) in lb.iter().zip(&rb) {
        for key in [
            "model_resp",
            "model_choice",
            "score",
            "tool_call_cnt",
            "stop_reason",
        ] {
            assert_eq!(
                a["judge_result"][key], b["judge_result"][key],
                "{key} of item {}",
                a["idx"]
            );
        }
    }

    // `armt agent`: the loop's trajectories, n per sample (greedy: n equal rows).
    let traj = dir.join("agent.jsonl");
    armt(&[
        "agent",
        "--api-base",
        &format!("{}/v1", server.base),
        "--model",
        ckpt.to_str().unwrap(),
        "--data",
        tasks.to_str().unwrap(),
        "--tools",
        "configs/tools/zoom.yaml",
        "--config",
        config.to_str().unwrap(),
        "--n",
        "2",
        "--out",
        traj.to_str().unwrap(),
    ]);
    let rows = read_jsonl(&traj);
    assert_eq!(rows.len(), 6);
    for (k, row) in rows.iter().enumerate() {
        assert_eq!(row["turns"], l[k / 2]["turns"], "agent row {k}");
        assert_eq!(row["group_index"], json!(k % 2));
    }
}

#[test]
fn single_turn_requests_follow_openai() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("agent-single");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("short.toml");
    std::fs::write(&config, "[rollout]\nmax_turn_tokens = 16\nmax_context = 8192\n").unwrap();
    let model = armt_testkit::refs_dir().join("model/tiny-hub/model");
    let server = serve_policy(&model, &config);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let post = |body: Value| -> (u16, Value) {
        let mut resp = agent
            .post(format!("{}/v1/chat/completions", server.base))
            .send(body.to_string())
            .unwrap();
        let status = resp.status().as_u16();
        (
            status,
            serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap(),
        )
    };
    let convo = json!([
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>"},
        {"role": "tool", "content": "done"},
    ]);
    let (s, v) = post(json!({"model": "m", "messages": convo, "max_tokens": 5, "temperature": 0}));
    assert_eq!(s, 200, "{v}");
    let choice = &v["choices"][0];
    // Five tokens and no stop token: cut by the limit.
    assert_eq!(
        v["armt"]["completion_token_ids"].as_array().unwrap().len(),
        5,
        "{v}"
    );
    assert_eq!(choice["finish_reason"], "length", "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    // The prompt is the chat template's rendering of the messages, tokenized.
    let prompt_ids: Vec<i64> = v["armt"]["prompt_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect();
    let tok = tokenizers::Tokenizer::from_file(model.join("tokenizer.json")).unwrap();
    let text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\ndone\n</tool_response><|im_end|>\n<|im_start|>assistant\n";
    let want: Vec<i64> = tok
        .encode(text, false)
        .unwrap()
        .get_ids()
        .iter()
        .map(|&i| i as i64)
        .collect();
    assert_eq!(prompt_ids, want);
    // A stop string inside the generated text ends the content before it (OpenAI semantics).
    let completion: Vec<u32> = v["armt"]["completion_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    let full = tok.decode(&completion, false).unwrap();
    assert_eq!(choice["message"]["content"], json!(full));
    let cut: String = full.chars().skip(1).take(2).collect();
    if !cut.trim().is_empty() {
        let (s, v) =
            post(json!({"messages": convo, "max_tokens": 5, "temperature": 0, "stop": [cut.clone()]}));
        assert_eq!(s, 200, "{v}");
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(content, &full[..full.find(&cut).unwrap()], "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["choices"][0]["stop_reason"], json!(cut));
    }
    // Malformed single-turn requests: 400 with the reason.
    for (body, reason) in [
        (
            json!({"messages": [{"role": "assistant", "content": "x"}], "tool_loop": false}),
            "needs a `user` message",
        ),
        (json!({"messages": convo, "n": 2}), "`n` must be 1"),
        (json!({"messages": convo, "stop": 3}), "`stop` must be"),
        (
            json!({"messages": [{"role": "robot", "content": "x"}], "tool_loop": false}),
            "role must be",
        ),
    ] {
        let (s, v) = post(body);
        assert_eq!(s, 400, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(reason), "{v}");
    }
}

/// A checkpoint whose greedy first turn is a split its tokenizer would not produce: the tiny
/// model fine-tuned on a trajectory (exact token ids) whose first turn spells its thought one
/// character per token, then zooms, then answers.
fn split_turn_checkpoint(dir: &Path, sample: &armt_data::Sample) -> (PathBuf, usize) {
    use armt_processing::Processor;
    use armt_rollout::{RolloutConfig, RolloutEnv, ScriptedGenerator};
    let model = armt_testkit::refs_dir().join("model/tiny-hub/model");
    let processor = Processor::from_model_dir(&model).unwrap();
    let tools = armt_tools::ToolRegistry::from_yaml_file(repo().join("configs/tools/zoom.yaml")).unwrap();
    let enc = |t: &str| -> Vec<i64> {
        processor
            .tokenizer()
            .encode(t, false)
            .unwrap()
            .get_ids()
            .iter()
            .map(|&i| i as i64)
            .collect()
    };
    let thought = "<think>The dot is tiny; zoom in.</think>\n";
    let call = "<tool_call>\n{\"name\": \"image_zoom_in_tool\", \"arguments\": {\"image\": \"original_image\", \"bbox_2d\": [650, 50, 850, 300]}}\n</tool_call>";
    let split: Vec<i64> = thought
        .chars()
        .flat_map(|c| enc(&c.to_string()))
        .chain(enc(call))
        .collect();
    let canonical_len = enc(&format!("{thought}{call}")).len();
    assert!(split.len() > canonical_len);
    let answer = enc("<think>The zoomed dot is red.</think><answer>Overall Judgment: Answer 1 is better (X must be either 1 or 2). </answer><|im_end|>");
    let config = RolloutConfig {
        cot_prompt: String::new(),
        ..RolloutConfig::default()
    };
    let images = dir.join("split-images");
    std::fs::create_dir_all(&images).unwrap();
    let env = RolloutEnv {
        processor: &processor,
        tools: &tools,
        config: &config,
        image_dir: Some(images),
    };
    let mut g = ScriptedGenerator::new(vec![vec![split.clone(), answer]]);
    let traj = env
        .run(&mut g, std::slice::from_ref(sample), 1, |_| {})
        .unwrap()
        .remove(0)
        .trajectory;
    assert_eq!(traj.tool_calls().count(), 1);
    let data = dir.join("split.jsonl");
    std::fs::write(&data, serde_json::to_string(&traj).unwrap() + "\n").unwrap();
    let config = dir.join("split-sft.toml");
    std::fs::write(
        &config,
        "[sft]\nsteps = 30\nlr = 1e-2\nbatch = 1\nmicro_batch = 1\n[optim]\nlr = 1e-2\n[train]\nsave_every = 1000\nkeep_last = 1\n",
    )
    .unwrap();
    let run = dir.join("split-run");
    armt(&[
        "sft",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
        &format!("train.run_dir={}", run.display()),
    ]);
    (run.join("checkpoints/step-000030"), split.len())
}

#[test]
fn a_split_turn_matches_the_server_only_when_in_process_eval_retokenizes() {
    let dir = work_dir_with_red_dot("agent-split");
    let row = json!({"id": "same", "task": "zoom", "prompt": prompt("It is red.", "It is blue."),
                     "images": ["images/red_dot.png"], "judgment": {"type": "pair", "candidates": 2},
                     "ground_truth": "1"});
    let tasks = dir.join("tasks.jsonl");
    std::fs::write(&tasks, format!("{row}\n")).unwrap();
    let sample = armt_data::read_samples(&tasks).unwrap().remove(0);
    let (ckpt, split_len) = split_turn_checkpoint(&dir, &sample);
    let config = dir.join("eval.toml");
    std::fs::write(
        &config,
        "[rollout]\nmax_turns = 3\nmax_turn_tokens = 128\nmax_response_tokens = 400\nmax_context = 8192\ncot_prompt = \"\"\n",
    )
    .unwrap();
    let server = serve_policy(&ckpt, &config);
    let eval = |out: &Path, extra: &[String]| {
        let mut a = eval_args(&ckpt, &tasks, &config, out);
        a.extend(extra.iter().cloned());
        let o = armt(&a.iter().map(String::as_str).collect::<Vec<_>>());
        (
            read_jsonl(out).remove(0),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (plain, _) = eval(&dir.join("plain.jsonl"), &[]);
    let (retok, _) = eval(&dir.join("retok.jsonl"), &["--retokenize-turns".into()]);
    let (remote, log) = eval(
        &dir.join("remote.jsonl"),
        &["--api-base".into(), format!("{}/v1", server.base)],
    );
    // The model repeats its split first turn in process ...
    let first_turn = |t: &Value| {
        let mask: Vec<u64> = t["loss_mask"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_u64().unwrap())
            .collect();
        mask.iter().take_while(|&&m| m == 1).count()
    };
    assert_eq!(first_turn(&plain), split_len, "{plain}");
    assert!(plain["turns"][0]["tool_call"].is_object(), "{plain}");
    // ... the server sees that turn re-tokenized, as does in-process eval with
    // --retokenize-turns: the same contexts, turns and results; without it, other tokens.
    assert!(first_turn(&remote) < split_len);
    for key in ["turns", "final_text", "stop_reason", "reward", "token_ids"] {
        assert_eq!(retok[key], remote[key], "{key}");
    }
    assert_ne!(plain["token_ids"], remote["token_ids"]);
    assert!(log.contains("differing from the loop's context in 0"), "{log}");
}
