//! Checks advantages, the total policy loss and its gradients (w.r.t. log-probs, entropies and
//! logits) against `scripts/reference/grpo.py`, which computes the same quantities in PyTorch
//! for the random inputs this test writes, in float64 and float32.

use armt_grpo::{
    group_advantages, logprobs_and_entropy, policy_loss, AggMode, AggNorm, EntropyGrad, GrpoConfig,
    KlEstimator, PolicyBatch,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use tch::{Device, Kind, Tensor};

const B: i64 = 8;
const T: i64 = 9;
const V: i64 = 13;
const GROUPS: [i64; 8] = [0, 0, 0, 1, 1, 1, 1, 2];

fn cases() -> Vec<GrpoConfig> {
    let d = GrpoConfig::default();
    vec![
        // verl defaults plus DAPO clip-higher, k3 KL and an entropy bonus.
        GrpoConfig {
            clip_ratio_high: 0.28,
            kl_coef: 0.1,
            entropy_coeff: 0.01,
            ..d.clone()
        },
        GrpoConfig {
            loss_agg_mode: AggMode::SeqMeanTokenMean,
            kl_coef: 0.05,
            kl_estimator: KlEstimator::K1,
            norm_adv_by_std: false,
            ..d.clone()
        },
        GrpoConfig {
            loss_agg_mode: AggMode::SeqMeanTokenSum,
            kl_coef: 0.2,
            kl_estimator: KlEstimator::K2,
            entropy_coeff: 0.02,
            ..d.clone()
        },
        GrpoConfig {
            loss_agg_mode: AggMode::SeqMeanTokenSumNorm,
            loss_scale_factor: Some(5.0),
            kl_coef: 0.1,
            kl_estimator: KlEstimator::K3Plus,
            entropy_coeff: -0.03,
            norm_adv_by_std: false,
            ..d.clone()
        },
        GrpoConfig {
            loss_agg_mode: AggMode::SeqMeanTokenSumNorm,
            clip_ratio_c: None,
            kl_coef: 0.3,
            kl_estimator: KlEstimator::K1Plus,
            ..d.clone()
        },
        GrpoConfig {
            clip_ratio_low: 0.1,
            clip_ratio_c: Some(1.5),
            kl_coef: 0.1,
            kl_estimator: KlEstimator::Abs,
            entropy_coeff: 0.05,
            ..d
        },
    ]
}

struct Inputs {
    logits: Tensor,
    targets: Tensor,
    old: Tensor,
    refp: Tensor,
    mask: Tensor,
    rewards: Vec<f64>,
}

fn make_inputs() -> Inputs {
    // The seed is process-global and the tests run in parallel: draw under a lock so that every
    // run sees the same inputs.
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _lock = RNG.lock().unwrap();
    tch::manual_seed(20251125);
    let opts = (Kind::Double, Device::Cpu);
    let logits = Tensor::randn([B, T, V], opts) * 2.0;
    let targets = Tensor::randint(V, [B, T], (Kind::Int64, Device::Cpu));
    let logp = logits
        .log_softmax(-1, Kind::Double)
        .gather(-1, &targets.unsqueeze(-1), false)
        .squeeze_dim(-1);
    // Off-policy enough that both clip sides and the dual clip are hit.
    let old = &logp + Tensor::randn([B, T], opts) * 0.4;
    let refp = &logp + Tensor::randn([B, T], opts) * 0.3;
    let mask = Tensor::rand([B, T], opts).lt(0.75).to_kind(Kind::Double);
    // Row 2 is all tool output / padding: it must not count anywhere.
    let _ = mask.get(2).fill_(0.0);
    let levels = [0.0, 0.3, 0.4, 1.0, 1.5];
    let picks = Tensor::randint(levels.len() as i64, [B], (Kind::Int64, Device::Cpu));
    let rewards = Vec::<i64>::try_from(picks)
        .unwrap()
        .into_iter()
        .map(|i| levels[i as usize])
        .collect();
    Inputs {
        logits,
        targets,
        old,
        refp,
        mask,
        rewards,
    }
}

fn python() -> PathBuf {
    armt_testkit::python()
}

fn run_reference(inp: &Inputs, cfgs: &[GrpoConfig]) -> HashMap<String, Tensor> {
    let dir = std::env::temp_dir().join(format!("armt-grpo-reference-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let groups = Tensor::from_slice(&GROUPS);
    let rewards = Tensor::from_slice(&inp.rewards);
    let named = [
        ("logits", &inp.logits),
        ("targets", &inp.targets),
        ("old_log_probs", &inp.old),
        ("ref_log_probs", &inp.refp),
        ("mask", &inp.mask),
        ("rewards", &rewards),
        ("groups", &groups),
    ];
    Tensor::write_safetensors(&named, dir.join("inputs.safetensors")).unwrap();
    std::fs::write(dir.join("cases.json"), serde_json::to_string(cfgs).unwrap()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/reference/grpo.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(&dir)
        .output()
        .expect("cannot run the set-up Python");
    assert!(
        out.status.success(),
        "{} failed:\n{}\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let outputs = Tensor::read_safetensors(dir.join("outputs.safetensors")).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    outputs.into_iter().collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

#[test]
fn loss_and_gradients_match_pytorch() {
    let inp = make_inputs();
    let cfgs = cases();
    let reference = run_reference(&inp, &cfgs);
    let get = |name: &str| {
        reference
            .get(name)
            .unwrap_or_else(|| panic!("reference has no `{name}`"))
    };
    let mut worst: HashMap<(&str, &str), f64> = HashMap::new();
    // The inputs must reach every branch of the surrogate, or the comparison proves little.
    let mut hit = [0.0f64; 3];
    for (k, cfg) in cfgs.iter().enumerate() {
        for (kind, dtype, tol) in [(Kind::Double, "f64", 1e-10), (Kind::Float, "f32", 1e-5)] {
            let tag = format!("{k}_{dtype}");
            let mut check = |what: &'static str, ours: &Tensor, name: &str| {
                let d = max_diff(ours, get(&format!("{name}_{tag}")));
                println!("case {tag:6} {what:12} max |rust − torch| = {d:.3e}");
                assert!(d < tol, "case {tag} ({cfg:?}): {what} differs by {d:e}");
                let w = worst.entry((dtype, what)).or_insert(0.0);
                *w = w.max(d);
            };
            let f = |t: &Tensor| t.to_kind(kind);
            let (old, refp, mask) = (f(&inp.old), f(&inp.refp), f(&inp.mask));

            let adv = group_advantages(&inp.rewards, &GROUPS, cfg.norm_adv_by_std, cfg.epsilon).unwrap();
            let adv = Tensor::from_slice(&adv).to_kind(kind);
            check("advantages", &adv, "adv");

            // Log-probs and entropies from the logits.
            let logits = f(&inp.logits).detach().set_requires_grad(true);
            let (logp, ent) = logprobs_and_entropy(&logits, &inp.targets, 4, EntropyGrad::Grad).unwrap();
            let ent = ent.unwrap();
            check("log-probs", &logp, "logp");
            check("entropy", &ent, "ent");

            // 1) Log-probs and entropies as leaves: loss, and its gradient w.r.t. them.
            let logp_leaf = logp.detach().set_requires_grad(true);
            let ent_leaf = ent.detach().set_requires_grad(true);
            let batch = PolicyBatch {
                log_probs: &logp_leaf,
                old_log_probs: &old,
                advantages: &adv,
                loss_mask: &mask,
                ref_log_probs: Some(&refp),
                entropy: Some(&ent_leaf),
            };
            let (loss, metrics) = policy_loss(&batch, cfg, &AggNorm::default()).unwrap();
            loss.backward();
            hit[0] = hit[0].max(metrics.pg.clipfrac_low);
            hit[1] = hit[1].max(metrics.pg.clipfrac_high);
            hit[2] = hit[2].max(metrics.pg.clipfrac_dual);
            check("loss", &loss.reshape([1]), "loss");
            check("grad logp", &logp_leaf.grad(), "grad_logp");
            let grad_ent = if ent_leaf.grad().defined() {
                ent_leaf.grad()
            } else {
                ent_leaf.zeros_like()
            };
            check("grad entropy", &grad_ent, "grad_ent");
            check(
                "clipfrac",
                &Tensor::from_slice(&[metrics.pg.clipfrac]),
                "clipfrac",
            );
            check(
                "dual clip",
                &Tensor::from_slice(&[metrics.pg.clipfrac_dual]),
                "clipfrac_dual",
            );
            check("ppo_kl", &Tensor::from_slice(&[metrics.pg.ppo_kl]), "ppo_kl");
            // The fully masked row gets no gradient at all.
            assert_eq!(
                logp_leaf.grad().get(2).abs().sum(Kind::Double).double_value(&[]),
                0.0
            );

            // 2) Through the logits.
            let batch = PolicyBatch {
                log_probs: &logp,
                entropy: Some(&ent),
                ..batch
            };
            let (loss, _) = policy_loss(&batch, cfg, &AggNorm::default()).unwrap();
            loss.backward();
            check("grad logits", &logits.grad(), "grad_logits");
        }
    }
    assert!(
        hit.iter().all(|&f| f > 0.0),
        "low / high / dual clip fractions {hit:?}: some branch never taken"
    );
    println!("largest clip fractions (low, high, dual): {hit:?}");
    let mut worst: Vec<_> = worst.into_iter().collect();
    worst.sort_by(|a, b| a.0.cmp(&b.0));
    for ((dtype, what), d) in worst {
        println!("worst over all cases, {dtype}: {what:12} {d:.3e}");
    }
}

#[test]
fn micro_batches_with_global_normalisers_add_up_to_the_mini_batch_loss() {
    // Gradient accumulation sums micro-batch losses; with the mini-batch's token and sequence
    // counts as normalisers the sum must equal the loss of the whole mini-batch.
    let inp = make_inputs();
    let logp = inp
        .logits
        .log_softmax(-1, Kind::Double)
        .gather(-1, &inp.targets.unsqueeze(-1), false)
        .squeeze_dim(-1);
    let adv = Tensor::from_slice(&group_advantages(&inp.rewards, &GROUPS, true, 1e-6).unwrap());
    let tokens = inp.mask.sum(Kind::Double).double_value(&[]);
    let seqs = inp
        .mask
        .sum_dim_intlist(-1, false, Kind::Double)
        .gt(0.0)
        .to_kind(Kind::Double)
        .sum(Kind::Double)
        .double_value(&[]);
    let global = AggNorm {
        batch_num_tokens: Some(tokens),
        global_batch_size: Some(seqs),
        loss_scale_factor: None,
    };
    for mode in [
        AggMode::TokenMean,
        AggMode::SeqMeanTokenSum,
        AggMode::SeqMeanTokenMean,
        AggMode::SeqMeanTokenSumNorm,
    ] {
        let cfg = GrpoConfig {
            loss_agg_mode: mode,
            ..GrpoConfig::default()
        };
        let loss_of = |lo: i64, n: i64, norm: &AggNorm| {
            let (lp, old, a, m) = (
                logp.narrow(0, lo, n),
                inp.old.narrow(0, lo, n),
                adv.narrow(0, lo, n),
                inp.mask.narrow(0, lo, n),
            );
            let b = PolicyBatch {
                log_probs: &lp,
                old_log_probs: &old,
                advantages: &a,
                loss_mask: &m,
                ref_log_probs: None,
                entropy: None,
            };
            policy_loss(&b, &cfg, norm).unwrap().0.double_value(&[])
        };
        let whole = loss_of(0, B, &AggNorm::default());
        let parts = loss_of(0, 3, &global) + loss_of(3, B - 3, &global);
        println!("{mode:?}: whole {whole:.12}, sum of micro-batches {parts:.12}");
        assert!((whole - parts).abs() < 1e-12, "{mode:?}: {whole} vs {parts}");
    }
}
