//! ARM-Thinker's formats end to end through the `armt` binary on a tiny checkpoint: a verl
//! parquet trains a GRPO step and evaluates; ARMBench-VL items evaluate into the original's
//! result and score files, and a second run resumes (evaluates nothing new, same scores).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tiny_model() -> PathBuf {
    armt_testkit::refs_dir().join("model/tiny-hub/model")
}

fn armt(args: &[String]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_armt"))
        .current_dir(repo())
        .args(args)
        .output()
        .expect("running armt");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "armt {args:?} failed:\n{text}");
    text
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn parquet_trains_a_step_and_evaluates() {
    let run = scratch("parquet-train");
    let data = repo().join("data/rl_train.parquet");
    let mut args = s(&["train", "--stage", "2"]);
    args.extend([
        format!("model.path={}", tiny_model().display()),
        "model.device=cpu".into(),
        format!("data.train={}", data.display()),
        format!("data.formats.doc_root={}", repo().join("data/pages").display()),
        format!("data.formats.image_cache={}", run.join("cache").display()),
        "tools.config=configs/tools/zoom.yaml".into(),
        format!("train.run_dir={}", run.join("stage2").display()),
        "train.steps=1".into(),
        "train.prompts_per_step=4".into(),
        "train.micro_batch=4".into(),
        "rollout.n=2".into(),
        "rollout.max_turns=2".into(),
        "rollout.max_turn_tokens=16".into(),
        "rollout.max_response_tokens=32".into(),
    ]);
    let text = armt(&args);
    assert!(text.contains("4 samples"), "{text}");
    let metrics = std::fs::read_to_string(run.join("stage2/metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 1, "{metrics}");

    let out = armt(&[
        "eval".into(),
        "--model".into(),
        tiny_model().display().to_string(),
        "--data".into(),
        data.display().to_string(),
        "--tools".into(),
        "configs/tools/zoom.yaml".into(),
        "--device".into(),
        "cpu".into(),
        "--doc-root".into(),
        repo().join("data/pages").display().to_string(),
    ]);
    // One row per task kind present, and the total.
    for task in ["zoom", "document", "instruction", "all"] {
        assert!(out.lines().any(|l| l.starts_with(task)), "{task} missing:\n{out}");
    }
}

#[test]
fn armbench_eval_writes_results_and_resumes() {
    let work = scratch("armbench-eval");
    let data = repo().join("data");
    // Short turns: the tiny checkpoint is untrained, only the plumbing is under test.
    let config = work.join("eval.toml");
    std::fs::write(
        &config,
        "[rollout]\nmax_turns = 2\nmax_turn_tokens = 16\nmax_response_tokens = 32\nmax_context = 8192\n",
    )
    .unwrap();
    let args = |extra: &[&str]| {
        let mut a = s(&["eval", "--model"]);
        a.push(tiny_model().display().to_string());
        for f in [
            "fine_grained_perception",
            "multimodal_long_document",
            "multimodal_instruction_following",
        ] {
            a.push("--armbench".into());
            a.push(data.join(format!("armbench/{f}.jsonl")).display().to_string());
        }
        a.extend(s(&[
            "--tools",
            "configs/tools/all.yaml",
            "--device",
            "cpu",
            "--config",
        ]));
        a.push(config.display().to_string());
        a.extend([
            "--image-root".into(),
            data.display().to_string(),
            "--doc-root".into(),
            data.join("pages").display().to_string(),
            "--work-dir".into(),
            work.display().to_string(),
        ]);
        a.extend(s(extra));
        a
    };
    armt(&args(&[]));
    let results = std::fs::read_to_string(work.join("model.jsonl")).unwrap();
    let rows: Vec<Value> = results
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 5);
    for r in &rows {
        let j = &r["judge_result"];
        for key in [
            "tool_call_cnt",
            "full_messages",
            "model_resp",
            "model_choice",
            "gt",
            "score",
            "flag_status",
        ] {
            assert!(j.get(key).is_some(), "{key} missing in {j}");
        }
        assert_eq!(j["full_messages"][0]["role"], "system");
        assert_eq!(j["full_messages"][1]["role"], "user");
    }
    let scores: Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("model_scores.json")).unwrap()).unwrap();
    assert_eq!(scores["overall"]["overall_count"], 5);
    assert_eq!(scores["single_rm"]["single_rm_count"], 3);
    assert_eq!(scores["pair_rm"]["pair_rm_count"], 1);
    assert_eq!(scores["4-way-pair_rm"]["four_way_pair_rm_count"], 1);
    assert_eq!(scores["tracks"]["fine_grained_perception"]["track_count"], 3);
    let total: f64 = rows
        .iter()
        .map(|r| r["judge_result"]["score"].as_f64().unwrap())
        .sum();
    assert_eq!(scores["overall"]["overall_score"].as_f64().unwrap(), total);

    // Resume: nothing left to do, same files.
    let again = armt(&args(&[]));
    assert!(again.contains("0 item(s) to evaluate"), "{again}");
    assert_eq!(
        std::fs::read_to_string(work.join("model.jsonl")).unwrap(),
        results
    );
    let scores2: Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("model_scores.json")).unwrap()).unwrap();
    assert_eq!(scores, scores2);
}
