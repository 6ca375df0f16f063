//! Sharded optimizer state (ZeRO 1 and 2) on an in-process group of 2 and 3 ranks (threads):
//! the same global gradients give the same parameters as one process, sharded checkpoints
//! resume exactly, and a checkpoint written by 2 ranks resumes on 3 (re-sharded).

use armt_dist::{Communicator, LocalGroup, SingleProcess};
use armt_train::{AdamW, AdamWConfig, MasterDtype, ZeroStage};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// Parameter shapes: 7 + 12 + 5 + 30 + 1 = 55 elements, divisible by neither 2 nor 3, so the
/// last partition is padded and partitions split parameters.
const SHAPES: [&[i64]; 5] = [&[7], &[3, 4], &[5], &[2, 3, 5], &[1]];
const LR: f64 = 1e-2;
/// Small buckets so every collective is cut into several calls.
const BUCKET: i64 = 4;

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Deterministic values in [-1, 1): `dyadic` ones are multiples of 1/16, so their sums are
/// exact in any order.
fn values(seed: u64, n: i64, dyadic: bool) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            let u = (splitmix(&mut s) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
            if dyadic {
                ((u * 16.0).round() / 16.0) as f32
            } else {
                u as f32
            }
        })
        .collect()
}

fn params(kind: Kind) -> Vec<(String, Tensor)> {
    SHAPES
        .iter()
        .enumerate()
        .map(|(i, shape)| {
            let n: i64 = shape.iter().product();
            let t = Tensor::from_slice(&values(100 + i as u64, n, false))
                .reshape(*shape)
                .to_kind(kind)
                .set_requires_grad(true);
            (format!("p{i}"), t)
        })
        .collect()
}

/// Micro-batch `micro` of rank `rank` at step `step` of a `world`-rank run: each rank's
/// micro-batches are a slice of the global list, so 1 rank running all of them sees the same
/// global gradient as `world` ranks together.
fn apply_gradients(ps: &[(String, Tensor)], global_micro: u64, step: u64, dyadic: bool) {
    for (i, (_, p)) in ps.iter().enumerate() {
        let g = Tensor::from_slice(&values(
            step * 1000 + global_micro * 10 + i as u64,
            p.numel() as i64,
            dyadic,
        ))
        .reshape(p.size());
        (p.to_kind(Kind::Float) * g).sum(Kind::Float).backward();
    }
}

struct Setup {
    stage: ZeroStage,
    kind: Kind,
    dyadic: bool,
    /// Global micro-batches per step (split evenly over the ranks).
    micro: u64,
}

/// One optimizer step on one rank: its share of the micro-batches, clipping at 1.0 (the global
/// gradient norm is well above it, so clipping is active), AdamW. Returns the global norm.
fn train_step(
    opt: &mut AdamW,
    ps: &[(String, Tensor)],
    rank: usize,
    world: usize,
    step: u64,
    s: &Setup,
) -> f64 {
    opt.zero_grad();
    let per_rank = s.micro / world as u64;
    for k in 0..per_rank {
        apply_gradients(ps, rank as u64 * per_rank + k, step, s.dyadic);
        opt.accumulate_grads().unwrap();
    }
    let norm = opt.clip_grad_norm(1.0).unwrap();
    opt.step(LR).unwrap();
    norm
}

fn optimizer(ps: &[(String, Tensor)], comm: Arc<dyn Communicator>, stage: ZeroStage) -> AdamW {
    AdamW::new(
        ps.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect(),
        AdamWConfig::default(),
    )
    .with_master_dtype(MasterDtype::F32)
    .with_zero_stage(stage)
    .with_communicator(comm)
    .with_bucket_elems(BUCKET)
}

fn weights(ps: &[(String, Tensor)]) -> Vec<Vec<f32>> {
    ps.iter()
        .map(|(_, t)| Vec::<f32>::try_from(t.detach().to_kind(Kind::Float).reshape(-1)).unwrap())
        .collect()
}

/// What each rank ends with after `steps` steps (and an optional checkpoint load/save).
struct RankResult {
    weights: Vec<Vec<f32>>,
    norms: Vec<f64>,
}

/// Runs `world` ranks on threads: optionally resumes from `load` (its weights and optimizer
/// state), trains steps `first..first + steps`, optionally saves into `save` afterwards.
fn run(
    world: usize,
    setup: Arc<Setup>,
    first: u64,
    steps: u64,
    load: Option<(PathBuf, Vec<Vec<f32>>)>,
    save: Option<PathBuf>,
) -> Vec<RankResult> {
    let body = move |rank: usize, comm: Arc<dyn Communicator>| {
        let ps = params(setup.kind);
        let mut opt = optimizer(&ps, comm.clone(), setup.stage);
        if let Some((dir, w)) = &load {
            let _g = tch::no_grad_guard();
            for ((_, p), w) in ps.iter().zip(w) {
                p.shallow_clone().copy_(&Tensor::from_slice(w).reshape(p.size()));
            }
            opt.load_shards(dir, first as i64).unwrap();
        }
        let norms = (first..first + steps)
            .map(|step| train_step(&mut opt, &ps, rank, world, step, &setup))
            .collect();
        if let Some(dir) = &save {
            opt.save_shard(dir).unwrap();
            comm.barrier().unwrap();
        }
        RankResult {
            weights: weights(&ps),
            norms,
        }
    };
    if world == 1 {
        return vec![body(0, Arc::new(SingleProcess))];
    }
    let body = Arc::new(body);
    let handles: Vec<_> = LocalGroup::new(world)
        .into_iter()
        .enumerate()
        .map(|(rank, comm)| {
            let body = body.clone();
            std::thread::spawn(move || body(rank, Arc::new(comm)))
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs() as f64)
        .fold(0.0, f64::max)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("armt-zero-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Two ranks at stages 0, 1, 2 against one process on the same global batch, 3 steps.
///
/// Bound: with random f32 gradients the ranks sum the same numbers in another order (one
/// process: ((g₀+g₁)+g₂)+g₃; two ranks at stage 0/1: (g₀+g₁)+(g₂+g₃); stage 2: per micro-batch
/// (g₀+g₂)+(g₁+g₃)), so gradients differ by ~1 ulp (relative 6e-8). AdamW's update
/// lr·m̂/(√v̂+ε) is scale-free in g, so each step's update differs by ~lr·1e-7 = 1e-9, and a
/// weight |w| < 2 can round the other way: at most a few ulps of 2 (2.4e-7) after 3 steps. We
/// assert 1e-6; the global gradient norm (f64) agrees to 1e-6 relative.
#[test]
fn two_ranks_match_one_process_at_every_stage() {
    for stage in [
        ZeroStage::Replicated,
        ZeroStage::ShardedState,
        ZeroStage::ShardedGradients,
    ] {
        let setup = Arc::new(Setup {
            stage,
            kind: Kind::Float,
            dyadic: false,
            micro: 4,
        });
        let one = run(1, setup.clone(), 0, 3, None, None).pop().unwrap();
        let two = run(2, setup, 0, 3, None, None);
        // Every rank holds the same (all-gathered) weights, bit for bit.
        assert_eq!(two[0].weights, two[1].weights, "{stage:?}: ranks disagree");
        let d = max_abs_diff(&one.weights, &two[0].weights);
        eprintln!("{stage:?}: 2 ranks vs 1 process after 3 steps: max |Δw| = {d:e}");
        assert!(d <= 1e-6, "{stage:?}: max |Δw| = {d:e}");
        // The weights moved (by ~3 lr), so the comparison is not vacuous.
        assert!(max_abs_diff(&one.weights, &weights(&params(Kind::Float))) > 1e-2);
        for (a, b) in one.norms.iter().zip(&two[0].norms) {
            assert!((a - b).abs() <= 1e-6 * a, "{stage:?}: global norm {a} vs {b}");
            assert!(*a > 1.0, "clipping is active");
        }
    }
}

/// With gradients whose sums are exact in any order (multiples of 1/16), sharding changes
/// nothing at all: bf16 compute weights, fp32 masters, 3 ranks at stage 2 equal one process.
#[test]
fn exact_gradients_give_bit_identical_bf16_weights_on_three_ranks() {
    let setup = Arc::new(Setup {
        stage: ZeroStage::ShardedGradients,
        kind: Kind::BFloat16,
        dyadic: true,
        micro: 3,
    });
    let one = run(1, setup.clone(), 0, 3, None, None).pop().unwrap();
    let three = run(3, setup, 0, 3, None, None);
    for r in &three {
        assert_eq!(r.weights, one.weights);
        assert_eq!(r.norms, one.norms);
    }
}

/// The concatenation of a checkpoint's `master`/`exp_avg`/`exp_avg_sq` shards, cut to `numel`.
fn flat_state(dir: &Path) -> Vec<Vec<f32>> {
    let layout: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("optimizer/layout.json")).unwrap()).unwrap();
    let parts = layout["partitions"].as_u64().unwrap() as usize;
    let numel = layout["numel"].as_i64().unwrap();
    ["master", "exp_avg", "exp_avg_sq"]
        .iter()
        .map(|key| {
            let pieces: Vec<Tensor> = (0..parts)
                .map(|p| {
                    let f = dir.join(format!("optimizer/rank-{p:05}-of-{parts:05}.safetensors"));
                    Tensor::read_safetensors(&f)
                        .unwrap()
                        .into_iter()
                        .find(|(n, _)| n == key)
                        .unwrap()
                        .1
                })
                .collect();
            Vec::<f32>::try_from(Tensor::cat(&pieces, 0).narrow(0, 0, numel).to_kind(Kind::Float)).unwrap()
        })
        .collect()
}

/// 2 ranks at stage 2: 2 steps, save, 2 more steps; against 2 fresh ranks that load the
/// checkpoint and take the same 2 steps (bit-identical); and 3 ranks that load it (re-sharded)
/// hold the same state (bit-identical flat state after saving it again) and continue as the
/// 2 ranks do (exact gradients, so the sums' order cannot differ either).
#[test]
fn sharded_checkpoints_resume_exactly_and_reshard_from_two_to_three_ranks() {
    let root = scratch("ckpt");
    let setup = Arc::new(Setup {
        stage: ZeroStage::ShardedGradients,
        kind: Kind::Float,
        dyadic: true,
        micro: 6,
    });
    let saved = root.join("two");
    let head = run(2, setup.clone(), 0, 2, None, Some(saved.clone()));
    let files: Vec<String> = {
        let mut v: Vec<String> = std::fs::read_dir(saved.join("optimizer"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        files,
        vec![
            "layout.json",
            "rank-00000-of-00002.safetensors",
            "rank-00001-of-00002.safetensors"
        ]
    );
    let w2 = head[0].weights.clone();
    let straight = run(2, setup.clone(), 0, 4, None, None);
    let resumed = run(2, setup.clone(), 2, 2, Some((saved.clone(), w2.clone())), None);
    assert_eq!(resumed[0].weights, straight[0].weights, "2 → 2 ranks resume");
    assert_eq!(resumed[1].weights, straight[1].weights);

    // Re-shard to 3 ranks: load, save (no step), compare the flat state.
    let resaved = root.join("three");
    run(
        3,
        setup.clone(),
        2,
        0,
        Some((saved.clone(), w2.clone())),
        Some(resaved.clone()),
    );
    assert_eq!(flat_state(&resaved), flat_state(&saved), "re-sharded state");
    let three = run(3, setup.clone(), 2, 2, Some((saved.clone(), w2.clone())), None);
    for r in &three {
        assert_eq!(r.weights, straight[0].weights, "2 → 3 ranks resume");
    }
    // And back to one process with replicated state.
    let one_setup = Arc::new(Setup {
        stage: ZeroStage::Replicated,
        kind: setup.kind,
        dyadic: setup.dyadic,
        micro: setup.micro,
    });
    let one = run(1, one_setup, 2, 2, Some((resaved, w2)), None);
    assert_eq!(one[0].weights, straight[0].weights, "3 ranks → 1 process resume");
    let _ = std::fs::remove_dir_all(&root);
}
