//! Data-parallel `armt train` on the CPU with two ranks (the TCP backend), launched with the
//! variables torchrun sets (and once through torchrun itself):
//! - two ranks end with the same weights as one process given the same global batch;
//! - a two-rank run killed (SIGKILL) and resumed ends like an uninterrupted one;
//! - a NaN loss on one rank stops both with the message;
//! - a rank that dies makes the other exit with an error well within 60 s.
//!
//! Equality is exact (max |Δw| = 0), not approximate, by construction: each rank's
//! micro-batches are exactly those one process forms (one GRPO group per micro-batch, SFT
//! micro-batches of half the batch), every micro-batch's forward/backward runs with one CPU
//! thread in both setups, sampling draws from per-row streams, and the TCP backend sums the
//! ranks' gradients in rank order, which is the order one process accumulates them in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tch::Tensor;

const STEPS: usize = 4;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dist").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    // Two consecutive free ports: torchrun's store takes one, armt's rendezvous the next.
    loop {
        let a = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let p = a.local_addr().unwrap().port();
        if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
            return p;
        }
    }
}

/// The tiny default shrunk to seconds; `root/stage1` is the run directory.
fn overrides(root: &Path) -> Vec<String> {
    [
        format!("train.run_dir={}", root.join("stage1").display()),
        format!("train.steps={STEPS}"),
        "train.save_every=2".into(),
        "train.keep_last=5".into(),
        // One prompt (= one group of n rollouts = one micro-batch) per rank.
        "train.prompts_per_step=2".into(),
        "train.micro_batch=2".into(),
        "rollout.n=2".into(),
        "rollout.max_turn_tokens=48".into(),
        "rollout.max_response_tokens=96".into(),
        // A small task set: generating the default 3000 tasks takes longer than the run.
        "builtin.train_tasks=60".into(),
        "builtin.val_tasks=12".into(),
        "builtin.read_steps=0".into(),
        "sft.steps=10".into(),
        "sft.batch=8".into(),
        "sft.micro_batch=4".into(),
        "reward.stage1.other_tool=0.2".into(),
        // A gradient even when a group's rewards are all equal.
        "grpo.entropy_coeff=0.01".into(),
        "dist.timeout_s=120".into(),
    ]
    .to_vec()
}

fn train_args(root: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["train".into(), "--stage".into(), "1".into()];
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend(overrides(root));
    a
}

/// One process, one CPU thread (what each of two ranks gets on this machine's share).
fn one_process(root: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_armt"))
        .args(train_args(root, &[]))
        .env("OMP_NUM_THREADS", "1")
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .unwrap()
}

/// Rank `rank` of `world`, with the variables torchrun sets.
fn spawn_rank(root: &Path, rank: usize, world: usize, port: u16, extra_env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_armt"));
    c.args(train_args(root, &[]))
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("LOCAL_WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env_remove("OMP_NUM_THREADS")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

fn weights(ckpt: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(ckpt.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn max_diff(a: &Path, b: &Path) -> f64 {
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(wa.len(), wb.len());
    wa.iter()
        .map(|(k, t)| (t - &wb[k]).abs().max().double_value(&[]))
        .fold(0.0, f64::max)
}

fn ckpt(root: &Path, step: usize) -> PathBuf {
    root.join(format!("stage1/checkpoints/step-{step:06}"))
}

/// The one-process reference run (built once for all tests): its root also holds the task
/// set, the tiny model and the cold start the other runs copy instead of redoing.
fn reference() -> &'static Path {
    static REF: OnceLock<PathBuf> = OnceLock::new();
    REF.get_or_init(|| {
        let root = scratch("reference");
        let o = one_process(&root);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        root
    })
}

/// A root with the reference's task set and tiny model (and its finished cold start, unless
/// `with_sft` is false).
fn seeded_root(name: &str, with_sft: bool) -> PathBuf {
    let src = reference();
    let root = scratch(name);
    let mut dirs = vec!["data", "tiny-model"];
    if with_sft {
        dirs.push("sft");
    }
    for d in dirs {
        let st = Command::new("cp")
            .arg("-a")
            .arg(src.join(d))
            .arg(&root)
            .status()
            .unwrap();
        assert!(st.success());
    }
    root
}

fn wait_all(children: Vec<Child>, limit: Duration) -> Vec<Output> {
    let t0 = Instant::now();
    children
        .into_iter()
        .map(|mut c| {
            while c.try_wait().unwrap().is_none() {
                if t0.elapsed() > limit {
                    let _ = c.kill();
                    panic!("a rank did not finish within {limit:?}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            c.wait_with_output().unwrap()
        })
        .collect()
}

#[test]
fn two_ranks_end_with_one_process_weights() {
    let reference = reference();
    // The cold start (SFT) is redone data-parallel here too.
    let root = seeded_root("two-ranks", false);
    let port = free_port();
    let ranks = (0..2).map(|r| spawn_rank(&root, r, 2, port, &[])).collect();
    let out = wait_all(ranks, Duration::from_secs(600));
    for (r, o) in out.iter().enumerate() {
        assert!(
            o.status.success(),
            "rank {r}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // Rank 1 leaves the console to rank 0.
    assert!(
        String::from_utf8_lossy(&out[1].stderr).trim().is_empty(),
        "{}",
        String::from_utf8_lossy(&out[1].stderr)
    );
    let sft = |root: &Path| root.join("sft/checkpoints/step-000010");
    let d_sft = max_diff(&sft(reference), &sft(&root));
    let d = max_diff(&ckpt(reference, STEPS), &ckpt(&root, STEPS));
    println!("2 ranks vs 1 process: cold start max |Δw| = {d_sft:e}, after {STEPS} GRPO steps {d:e}");
    assert_eq!(d_sft, 0.0);
    assert_eq!(d, 0.0);
    // The same metrics (over both ranks' rollouts), written once, by rank 0.
    let rows = |root: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(root.join("stage1/metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (a, b) = (rows(reference), rows(&root));
    assert_eq!(a.len(), STEPS);
    assert_eq!(b.len(), STEPS);
    for (x, y) in a.iter().zip(&b) {
        for key in [
            "reward/mean",
            "reward/std",
            "actor/grad_norm",
            "actor/entropy",
            "response/length_mean",
        ] {
            assert_eq!(x[key], y[key], "{key} at step {}", x["step"]);
        }
    }
    // The update was not zero.
    assert!(a.iter().any(|r| r["actor/grad_norm"].as_f64().unwrap() > 0.0));
    // Each rank kept its own rollouts.
    assert!(root.join("stage1/rollouts.rank-1.jsonl").exists());
}

/// ZeRO-2 (optimizer state and fp32 gradients sharded, gradients reduce-scattered, weights
/// all-gathered) on 2 ranks against the one-process run at ZeRO-0. Each element's gradient is
/// summed over the same micro-batches in the same order either way, and AdamW is elementwise; only
/// the clipping norm is summed in another order (per-shard sums of squares, all-reduced in f64),
/// which can move a clipped update by an ulp: hence a bound, not 0.
#[test]
fn two_ranks_with_zero2_end_with_one_process_weights() {
    let reference = reference();
    let root = seeded_root("two-ranks-zero2", true);
    let port = free_port();
    let ranks = (0..2)
        .map(|r| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_armt"));
            c.args(train_args(&root, &["train.zero_stage=2"]))
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", "2")
                .env("LOCAL_RANK", r.to_string())
                .env("LOCAL_WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env_remove("OMP_NUM_THREADS")
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    let out = wait_all(ranks, Duration::from_secs(600));
    for (r, o) in out.iter().enumerate() {
        assert!(
            o.status.success(),
            "rank {r}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let d = max_diff(&ckpt(reference, STEPS), &ckpt(&root, STEPS));
    println!("2 ranks at ZeRO-2 vs 1 process at ZeRO-0: after {STEPS} GRPO steps max |Δw| = {d:e}");
    assert!(d <= 1e-6, "max |Δw| = {d:e}");
    // Each rank wrote its own shard of the optimizer state.
    let shards = ckpt(&root, STEPS).join("optimizer");
    assert!(shards.join("rank-00000-of-00002.safetensors").exists());
    assert!(shards.join("rank-00001-of-00002.safetensors").exists());
}

/// The pids of `parent`'s child processes.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after its ')'.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: u32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        if ppid == parent {
            out.push(pid);
        }
    }
    out
}

fn torchrun(root: &Path, extra: &[&str]) -> Command {
    let torchrun = armt_testkit::python().parent().unwrap().join("torchrun");
    let mut c = Command::new(torchrun);
    c.arg("--nproc-per-node")
        .arg("2")
        .arg("--master-port")
        .arg(free_port().to_string())
        .arg("--no-python")
        .arg(env!("CARGO_BIN_EXE_armt"))
        .args(train_args(root, extra))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

#[test]
fn torchrun_two_ranks_killed_and_resumed_match_an_uninterrupted_run() {
    let reference = reference();
    let root = seeded_root("torchrun-resume", true);
    let mut run = torchrun(&root, &[]).spawn().unwrap();
    let started = Instant::now();
    let step2 = ckpt(&root, 2);
    while !step2.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "no step-2 checkpoint"
        );
        if let Some(status) = run.try_wait().unwrap() {
            let o = run.wait_with_output().unwrap();
            panic!(
                "torchrun ended ({status}) before it could be killed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Both ranks die at once, as on a node failure (torchrun's workers run in their own
    // sessions, so they are killed by pid).
    let workers = children_of(run.id());
    assert_eq!(workers.len(), 2, "torchrun's workers: {workers:?}");
    for w in &workers {
        let _ = Command::new("kill").arg("-9").arg(w.to_string()).status();
    }
    let _ = run.kill();
    let _ = run.wait();
    assert!(!ckpt(&root, STEPS).exists(), "killed too late to test resuming");

    let o = torchrun(&root, &["--resume"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d = max_diff(&ckpt(reference, STEPS), &ckpt(&root, STEPS));
    println!("torchrun 2 ranks, killed after step 2 and resumed, vs 1 process: max |Δw| = {d:e}");
    assert_eq!(d, 0.0, "resuming changed the result");
    let steps: Vec<u64> = std::fs::read_to_string(root.join("stage1/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (1..=STEPS as u64).collect::<Vec<_>>());
}

#[test]
fn a_nan_on_one_rank_stops_both_with_the_message() {
    let root = seeded_root("nan", true);
    let port = free_port();
    let nan = [("ARMT_TEST_NAN_AT", "grpo:1:2")];
    let ranks = (0..2).map(|r| spawn_rank(&root, r, 2, port, &nan)).collect();
    let out = wait_all(ranks, Duration::from_secs(300));
    for (r, o) in out.iter().enumerate() {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "rank {r} must fail: {err}");
        assert!(
            err.contains("step 2: the policy loss on rank 1 is NaN"),
            "rank {r}: {err}"
        );
    }
    // Step 1's checkpoint is not due (save_every 2); the failed step 2 never saved one.
    assert!(!ckpt(&root, 2).exists());
}

#[test]
fn a_rank_that_dies_makes_the_other_exit_promptly() {
    let root = seeded_root("dead-rank", true);
    let port = free_port();
    let mut ranks: Vec<Child> = (0..2).map(|r| spawn_rank(&root, r, 2, port, &[])).collect();
    // Kill rank 1 once training is under way (the first step's metrics are written).
    let metrics = root.join("stage1/metrics.jsonl");
    let started = Instant::now();
    while !std::fs::read_to_string(&metrics).is_ok_and(|t| !t.is_empty()) {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "training never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    ranks[1].kill().unwrap();
    let killed = Instant::now();
    let mut rank0 = ranks.remove(0);
    while rank0.try_wait().unwrap().is_none() {
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "rank 0 still running 60 s after rank 1 died"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let waited = killed.elapsed();
    let o = rank0.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    println!("rank 0 exited {waited:?} after rank 1 was killed");
    assert!(!o.status.success());
    assert!(err.contains("rank 1 exited or was killed"), "{err}");
    let _ = ranks[0].wait();
}
