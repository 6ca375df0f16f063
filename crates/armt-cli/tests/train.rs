//! `armt train` on the built-in default, shrunk to seconds: a killed and resumed run ends with
//! the same weights as an uninterrupted one; checkpoints load in transformers; NaN and bad
//! config keys stop the run with a message naming them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tch::Tensor;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A few-second version of the default: tiny batches and budgets, checkpoints every 2 steps.
fn small(run_dir: &Path, steps: usize) -> Vec<String> {
    [
        format!("train.run_dir={}", run_dir.display()),
        format!("train.steps={steps}"),
        "train.save_every=2".into(),
        "train.keep_last=5".into(),
        "train.prompts_per_step=2".into(),
        "train.micro_batch=2".into(),
        "rollout.n=2".into(),
        "rollout.max_turn_tokens=48".into(),
        "rollout.max_response_tokens=96".into(),
        // Enough cold start that some rollouts earn reward, so the GRPO updates are real.
        // A small task set: generating the default 3000 tasks takes longer than the run.
        "builtin.train_tasks=60".into(),
        "builtin.val_tasks=12".into(),
        "builtin.read_steps=0".into(),
        "sft.steps=30".into(),
        "sft.batch=8".into(),
        "sft.micro_batch=8".into(),
        // Any tool call earns something, so rewards differ within groups from the first step.
        "reward.stage1.other_tool=0.2".into(),
    ]
    .to_vec()
}

fn armt(args: &[String]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_armt"))
        .args(args)
        .output()
        .expect("running armt")
}

fn train_args(extra: &[&str], overrides: Vec<String>) -> Vec<String> {
    let mut a: Vec<String> = vec!["train".into(), "--stage".into(), "1".into()];
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend(overrides);
    a
}

fn weights(ckpt: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(ckpt.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn killed_and_resumed_run_matches_an_uninterrupted_one() {
    let root = scratch("resume");
    // Uninterrupted: 4 steps.
    let a = root.join("a/stage1");
    let o = armt(&train_args(&[], small(&a, 4)));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // Same run, killed (SIGKILL) as soon as its step-2 checkpoint appears, then resumed.
    let b = root.join("b/stage1");
    let mut child = Command::new(env!("CARGO_BIN_EXE_armt"))
        .args(train_args(&[], small(&b, 4)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let step2 = b.join("checkpoints/step-000002");
    while !step2.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no step-2 checkpoint"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("run ended before it could be killed: {status}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !b.join("checkpoints/step-000004").exists(),
        "killed too late to test resuming"
    );
    // Whatever the kill interrupted never shows as a checkpoint.
    for e in std::fs::read_dir(b.join("checkpoints")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        assert!(name.starts_with("step-") || name.starts_with(".tmp-"), "{name}");
    }
    let o = armt(&train_args(&["--resume"], small(&b, 4)));
    // (`--resume` takes a path only as `--resume=PATH`, so the overrides after it stay overrides.)
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let (wa, wb) = (
        weights(&a.join("checkpoints/step-000004")),
        weights(&b.join("checkpoints/step-000004")),
    );
    assert_eq!(wa.len(), wb.len());
    let mut worst = 0f64;
    for (name, t) in &wa {
        let d = (t - &wb[name]).abs().max().double_value(&[]);
        worst = worst.max(d);
    }
    println!(
        "resumed vs uninterrupted after 4 steps: max |Δw| = {worst:e} over {} tensors",
        wa.len()
    );
    assert_eq!(worst, 0.0, "resuming changed the result");
    // Metrics were logged once per step, also across the kill.
    let steps: Vec<u64> = std::fs::read_to_string(b.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, vec![1, 2, 3, 4]);
    // The comparison means something only if the policy gradient was not zero.
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(a.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let moved = rows
        .iter()
        .filter(|r| r["reward/std"].as_f64().unwrap_or(0.0) > 0.0)
        .count();
    assert!(moved >= 2, "rewards were constant in most steps: {rows:?}");

    sigterm_lock_and_damage(&root, &wa);

    // The final checkpoint is a model directory transformers loads, with the same logits.
    checkpoint_loads_in_transformers(&a.join("checkpoints/step-000004"), &root);

    // `armt eval` scores it on the built-in held-out tasks, per task kind.
    let ckpt = a.join("checkpoints/step-000004");
    let o = armt(&[
        "eval".into(),
        "--model".into(),
        ckpt.display().to_string(),
        "--builtin-root".into(),
        root.join("a").display().to_string(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    for row in ["zoom", "document", "instruction", "all"] {
        assert!(
            table.lines().any(|l| l.starts_with(row)),
            "no `{row}` row in:\n{table}"
        );
    }
    let all: Vec<f64> = table
        .lines()
        .find(|l| l.starts_with("all"))
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(all[0], 12.0, "every held-out task (builtin.val_tasks) is scored");
    assert!(
        (0.0..=1.0).contains(&all[1]) && (0.0..=1.5).contains(&all[4]),
        "{all:?}"
    );

    // `armt eval --compare` with no checkpoints: the built-in stages present, side by side, and
    // the last one again without tools (on a few held-out tasks, to stay quick).
    let val = std::fs::read_to_string(root.join("a/data/val/tasks.jsonl")).unwrap();
    let few: String = val.lines().take(6).map(|l| format!("{l}\n")).collect();
    let few_path = root.join("a/data/val/few.jsonl");
    std::fs::write(&few_path, few).unwrap();
    let o = armt(&[
        "eval".into(),
        "--compare".into(),
        "--builtin-root".into(),
        root.join("a").display().to_string(),
        "--data".into(),
        few_path.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    let header = table.lines().find(|l| l.starts_with("metric")).expect("header");
    for col in ["cold start", "stage 1", "stage 1 no tools"] {
        assert!(header.contains(col), "no `{col}` column in:\n{table}");
    }
    for metric in [
        "accuracy",
        "format",
        "right tool",
        "tool calls",
        "reward",
        "top verdict",
    ] {
        let rows = table.lines().filter(|l| l.starts_with(metric)).count();
        assert_eq!(
            rows, 4,
            "`{metric}`: a row per task kind and one for all:\n{table}"
        );
    }
}

fn checkpoint_loads_in_transformers(ckpt: &Path, scratch: &Path) {
    let python = armt_testkit::python();
    let out = scratch.join("hf_logits.safetensors");
    let script = r#"
import sys, torch
from safetensors.torch import save_file
from transformers import Qwen2_5_VLForConditionalGeneration
m = Qwen2_5_VLForConditionalGeneration.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
ids = torch.arange(5, 45).view(1, -1)
with torch.no_grad():
    logits = m(input_ids=ids).logits[0]
save_file({"logits": logits.contiguous(), "ids": ids[0].contiguous()}, sys.argv[2])
"#;
    let o = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(ckpt)
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "transformers could not load {}: {}",
        ckpt.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let r: HashMap<String, Tensor> = Tensor::read_safetensors(&out).unwrap().into_iter().collect();
    let model = armt_model_load(ckpt);
    let logits = tch::no_grad(|| model.forward(&r["ids"].view([1, -1]), None, &[]))
        .unwrap()
        .squeeze_dim(0);
    let err = (&logits - &r["logits"]).norm().double_value(&[]) / r["logits"].norm().double_value(&[]);
    println!("checkpoint in transformers vs armt: logits relative error {err:.2e}");
    assert!(err < 1e-4, "{err}");
}

fn armt_model_load(dir: &Path) -> armt_model::Qwen25Vl {
    armt_model::Qwen25Vl::load(dir, tch::Device::Cpu, tch::Kind::Float).unwrap()
}

#[test]
fn nan_stops_the_step_and_names_it() {
    let root = scratch("nan");
    let run = root.join("stage1");
    // A learning rate this large makes the first update overflow the weights; the next
    // step's loss or gradient is then not finite.
    let mut o = small(&run, 4);
    o.push("optim.lr=1e30".into());
    o.push("optim.grad_clip=0".into());
    o.push("train.save_every=1".into());
    let out = armt(&train_args(&[], o));
    assert!(!out.status.success(), "a NaN run must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("step") && (err.contains("NaN") || err.contains("inf")),
        "{err}"
    );
    assert!(err.contains("loss") || err.contains("gradient norm"), "{err}");
    // No checkpoint of the failed step.
    let line = err
        .lines()
        .find(|l| l.starts_with("Error:"))
        .unwrap_or_else(|| panic!("no error line in: {err}"));
    let failed_step = line
        .strip_prefix("Error: step ")
        .and_then(|s| s.split(':').next())
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no step number in: {line}"));
    assert!(!run.join(format!("checkpoints/step-{failed_step:06}")).exists());

    // Weights overflowed by the first update are never saved: the save refuses and says that
    // no good checkpoint exists (the same cold start, reused).
    let run = root.join("stage1-inf");
    let mut o = small(&run, 2);
    o.push("optim.lr=1e39".into());
    o.push("optim.grad_clip=0".into());
    o.push("train.save_every=1".into());
    let out = armt(&train_args(&[], o));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("step 1: not saving a checkpoint") && err.contains("NaN or infinite"),
        "{err}"
    );
    assert!(err.contains("no good checkpoint exists"), "{err}");
    assert!(
        armt_train_latest(&run).is_none(),
        "a non-finite checkpoint was written"
    );
}

#[test]
fn bad_config_keys_are_rejected_with_the_valid_ones() {
    let out = armt(&train_args(&[], vec!["rollout.temprature=0.5".into()]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("temprature") && err.contains("max_turns") && err.contains("sampling"),
        "{err}"
    );
}

#[test]
fn ctrl_c_saves_a_checkpoint_then_exits() {
    let root = scratch("sigint");
    let run = root.join("stage1");
    let mut o = small(&run, 50);
    o.push("train.save_every=1000".into());
    let child = Command::new(env!("CARGO_BIN_EXE_armt"))
        .args(train_args(&[], o))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // Wait for the first GRPO step to be logged, then interrupt.
    loop {
        let logged = std::fs::read_to_string(run.join("metrics.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if logged >= 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no GRPO step logged"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(130),
        "an interrupted run exits 128 + SIGINT, as a shell reports it"
    );
    assert!(err.contains("interrupted") && err.contains("--resume="), "{err}");
    let ckpts: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("step-"))
        .collect();
    assert_eq!(ckpts.len(), 1, "exactly the interrupt's checkpoint: {ckpts:?}");
}

/// Run `a`'s GRPO again from its cold start (model and data given explicitly): a second run
/// into the same directory is refused while the first holds it; SIGTERM saves and exits
/// non-zero with a resume hint; the resume (past a garbage metrics row and a stale temporary
/// checkpoint) ends bit-identical to `a`; a damaged optimizer file is then refused by name.
fn sigterm_lock_and_damage(root: &Path, reference: &HashMap<String, Tensor>) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let sft = root.join("a/sft/checkpoints/step-000030");
    let c = root.join("c/stage1");
    let explicit = |steps: usize| {
        let mut o = small(&c, steps);
        o.push("train.save_every=1000".into());
        o.push(format!("model.path={}", sft.display()));
        o.push(format!(
            "data.train={}",
            root.join("a/data/train/tasks.jsonl").display()
        ));
        o.push(format!(
            "tools.config={}",
            repo.join("configs/tools/tiny.yaml").display()
        ));
        o
    };
    let child = Command::new(env!("CARGO_BIN_EXE_armt"))
        .args(train_args(&[], explicit(4)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::fs::read_to_string(c.join("metrics.jsonl")).map_or(0, |t| t.lines().count()) < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no GRPO step logged"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A second run into the same directory is refused, naming the holder.
    let o = armt(&train_args(&[], explicit(4)));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "a second run into a locked run dir must fail"
    );
    assert!(
        err.contains("in use by another armt run") && err.contains(&format!("pid {}", child.id())),
        "{err}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(143),
        "a SIGTERM-stopped run exits 128 + SIGTERM: {err}"
    );
    assert!(err.contains("SIGTERM") && err.contains("--resume="), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let saved = armt_train_latest(&c);
    assert!(saved.is_some(), "SIGTERM left no checkpoint: {err}");
    // What a crash could leave behind must not block the resume.
    std::fs::create_dir_all(c.join("checkpoints/.tmp-step-000009")).unwrap();
    let mut metrics = std::fs::read_to_string(c.join("metrics.jsonl")).unwrap();
    metrics.insert_str(0, "garbage \u{1}\n");
    std::fs::write(c.join("metrics.jsonl"), metrics).unwrap();
    let o = armt(&train_args(&["--resume"], explicit(4)));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        !c.join("checkpoints/.tmp-step-000009").exists(),
        "stale temporary kept"
    );
    let wc = weights(&c.join("checkpoints/step-000004"));
    let worst = reference
        .iter()
        .map(|(n, t)| (t - &wc[n]).abs().max().double_value(&[]))
        .fold(0f64, f64::max);
    println!("SIGTERM-stopped and resumed vs uninterrupted after 4 steps: max |Δw| = {worst:e}");
    assert_eq!(worst, 0.0, "a SIGTERM resume changed the result");

    // Garbage in the optimizer file's data: refused by name, pointing at an earlier checkpoint.
    let opt = c.join("checkpoints/step-000004/optimizer/rank-00000-of-00001.safetensors");
    let mut bytes = std::fs::read(&opt).unwrap();
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for b in &mut bytes[header..] {
        *b = 0xFF;
    }
    std::fs::write(&opt, bytes).unwrap();
    let o = armt(&train_args(&["--resume"], explicit(5)));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a damaged optimizer file must be refused");
    assert!(
        err.contains("step-000004 is damaged") && err.contains("optimizer state") && err.contains("NaN"),
        "{err}"
    );
    // The hint names the checkpoint before the damaged one, if the interrupt left one (the
    // SIGTERM can land in the last step, whose checkpoint is then the damaged one).
    let earlier = std::fs::read_dir(c.join("checkpoints"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .any(|n| n.starts_with("step-") && n.as_str() < "step-000004");
    if earlier {
        assert!(
            err.contains("the last good checkpoint is") && err.contains("--resume="),
            "{err}"
        );
    } else {
        assert!(err.contains("no good checkpoint exists in"), "{err}");
    }
}

fn armt_train_latest(run: &Path) -> Option<PathBuf> {
    std::fs::read_dir(run.join("checkpoints"))
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("step-"))
        .max()
}
