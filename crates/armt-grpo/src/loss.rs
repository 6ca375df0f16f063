//! Policy-loss terms over `[B, T]` per-token tensors (B responses, T response positions) and a
//! loss mask (1 where the policy sampled the token, 0 for padding, template and tool output).

use crate::{broadcast_advantages, GrpoConfig, GrpoError};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How a `[B, T]` loss matrix becomes a scalar; verl's `loss_agg_mode` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AggMode {
    /// Σ_{i,t} m·ℓ / Σ_{i,t} m (DAPO's token-level loss; verl's default).
    #[serde(rename = "token-mean")]
    TokenMean,
    /// (1/B′) Σ_i Σ_t m·ℓ, B′ = sequences with any unmasked token.
    #[serde(rename = "seq-mean-token-sum")]
    SeqMeanTokenSum,
    /// (1/B′) Σ_i (Σ_t m·ℓ / Σ_t m) (the original GRPO paper).
    #[serde(rename = "seq-mean-token-mean")]
    SeqMeanTokenMean,
    /// (1/B′) Σ_i Σ_t m·ℓ / L, L constant (Dr.GRPO).
    #[serde(rename = "seq-mean-token-sum-norm")]
    SeqMeanTokenSumNorm,
}

/// Global normalisers, for when a mini-batch is split into micro-batches whose losses are
/// summed by gradient accumulation: give the mini-batch's totals so that the micro-losses add
/// up to the mini-batch loss. None: take them from the tensors passed (one micro-batch).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AggNorm {
    /// token-mean's denominator: unmasked tokens in the whole mini-batch.
    pub batch_num_tokens: Option<f64>,
    /// seq-mean-*'s denominator: sequences with any unmasked token in the whole mini-batch.
    pub global_batch_size: Option<f64>,
    /// seq-mean-token-sum-norm's L (None: the padded length T).
    pub loss_scale_factor: Option<f64>,
}

fn same_shape(what: &str, a: &Tensor, b: &Tensor) -> Result<(), GrpoError> {
    if a.size() != b.size() {
        return Err(GrpoError::Shape(format!(
            "{what}: {:?} vs {:?}",
            a.size(),
            b.size()
        )));
    }
    Ok(())
}

fn two_d(what: &str, t: &Tensor) -> Result<(), GrpoError> {
    if t.dim() != 2 {
        return Err(GrpoError::Shape(format!(
            "{what} must be [B, T], got {:?}",
            t.size()
        )));
    }
    Ok(())
}

/// Σ x·m.
pub fn masked_sum(x: &Tensor, mask: &Tensor) -> Tensor {
    (x * mask.to_kind(x.kind())).sum(x.kind())
}

/// Σ x·m / Σ m (0 for an empty mask rather than NaN).
pub fn masked_mean(x: &Tensor, mask: &Tensor) -> Tensor {
    let m = mask.to_kind(x.kind());
    (x * &m).sum(x.kind()) / m.sum(x.kind()).clamp_min(1.0)
}

/// Aggregates a `[B, T]` per-token loss over the mask; see [`AggMode`] for each formula.
pub fn agg_loss(
    loss_mat: &Tensor,
    mask: &Tensor,
    mode: AggMode,
    norm: &AggNorm,
) -> Result<Tensor, GrpoError> {
    two_d("loss matrix", loss_mat)?;
    same_shape("loss matrix and mask", loss_mat, mask)?;
    let kind = loss_mat.kind();
    let m = mask.to_kind(kind);
    let scalar = |v: f64| {
        Tensor::from(v.max(1.0))
            .to_kind(kind)
            .to_device(loss_mat.device())
    };
    if mode == AggMode::TokenMean {
        // Σ m·ℓ / N_tokens
        let n = match norm.batch_num_tokens {
            Some(n) => scalar(n),
            None => m.sum(kind).clamp_min(1.0),
        };
        return Ok((loss_mat * &m).sum(kind) / n);
    }
    let token_sums = (loss_mat * &m).sum_dim_intlist(-1, false, kind);
    let counts = m.sum_dim_intlist(-1, false, kind);
    let has_tokens = counts.gt(0.0).to_kind(kind);
    let n_seq = match norm.global_batch_size {
        Some(b) => scalar(b),
        None => has_tokens.sum(kind).clamp_min(1.0),
    };
    let loss = match mode {
        AggMode::SeqMeanTokenSum | AggMode::SeqMeanTokenSumNorm => {
            (token_sums * &has_tokens).sum(kind) / n_seq
        }
        // The 1e-8 keeps fully masked rows at 0/ε = 0 instead of NaN (verl adds it too).
        AggMode::SeqMeanTokenMean => ((token_sums / (counts + 1e-8)) * &has_tokens).sum(kind) / n_seq,
        AggMode::TokenMean => unreachable!("handled above"),
    };
    if mode == AggMode::SeqMeanTokenSumNorm {
        let l = norm.loss_scale_factor.unwrap_or(loss_mat.size()[1] as f64);
        return Ok(loss / l);
    }
    Ok(loss)
}

/// KL(π_θ‖π_ref) estimators per token, δ = log π_θ − log π_ref (Schulman's k1/k2/k3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KlEstimator {
    /// k1 = δ.
    #[serde(rename = "k1", alias = "kl")]
    K1,
    /// |δ|.
    #[serde(rename = "abs")]
    Abs,
    /// k2 = ½δ².
    #[serde(rename = "k2", alias = "mse")]
    K2,
    /// k3 = e^{−δ} + δ − 1, with −δ clamped to [−20, 20] and the result to [−10, 10].
    #[serde(rename = "low_var_kl", alias = "k3")]
    K3,
    /// k1's value with k2's gradient (straight-through; unbiased KL gradient).
    #[serde(rename = "k1+", alias = "kl+")]
    K1Plus,
    /// k3's value with k2's gradient.
    #[serde(rename = "k3+", alias = "low_var_kl+")]
    K3Plus,
}

/// Per-token KL estimate between the policy and the frozen reference.
pub fn kl_penalty(
    log_probs: &Tensor,
    ref_log_probs: &Tensor,
    estimator: KlEstimator,
) -> Result<Tensor, GrpoError> {
    same_shape("log-probs and reference log-probs", log_probs, ref_log_probs)?;
    let delta = || log_probs - ref_log_probs;
    Ok(match estimator {
        // δ
        KlEstimator::K1 => delta(),
        // |δ|
        KlEstimator::Abs => delta().abs(),
        // ½δ²
        KlEstimator::K2 => delta().square() * 0.5,
        // e^{−δ} + δ − 1 (= ρ_ref − log ρ_ref − 1), clamped for stability as verl does
        KlEstimator::K3 => {
            let neg = (ref_log_probs - log_probs).clamp(-20.0, 20.0);
            (neg.exp() - &neg - 1.0).clamp(-10.0, 10.0)
        }
        // forward(base) + ½δ² − sg[½δ²]: the value of k1/k3, the gradient of k2
        KlEstimator::K1Plus | KlEstimator::K3Plus => {
            let base = if estimator == KlEstimator::K1Plus {
                KlEstimator::K1
            } else {
                KlEstimator::K3
            };
            let forward = kl_penalty(log_probs, ref_log_probs, base)?.detach();
            let k2 = delta().square() * 0.5;
            &k2 - k2.detach() + forward
        }
    })
}

/// Clip statistics of one policy-loss evaluation (fractions of unmasked tokens).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PgStats {
    /// Tokens where the clipped term was taken (verl's `pg_clipfrac`) = low + high.
    pub clipfrac: f64,
    /// …with A > 0: the ratio went above 1 + ε_high.
    pub clipfrac_high: f64,
    /// …with A < 0: the ratio went below 1 − ε_low.
    pub clipfrac_low: f64,
    /// A < 0 tokens capped by the dual clip at −c·A (verl's `pg_clipfrac_lower`).
    pub clipfrac_dual: f64,
    /// mean(log π_old − log π_θ) over the mask (verl's `ppo_kl`).
    pub ppo_kl: f64,
}

/// Per-token clipped surrogate loss (verl `compute_policy_loss_vanilla`), before aggregation.
///
/// log ρ = clamp(log π_θ − log π_old, −20, 20); ρ = e^{log ρ}
/// ℓ = max(−A·ρ, −A·clip(ρ, 1 − ε_low, 1 + ε_high)); for A < 0 also ℓ = min(ℓ, −c·A).
pub fn clipped_pg_losses(
    log_probs: &Tensor,
    old_log_probs: &Tensor,
    advantages: &Tensor,
    mask: &Tensor,
    clip_low: f64,
    clip_high: f64,
    clip_c: Option<f64>,
) -> Result<(Tensor, PgStats), GrpoError> {
    two_d("log-probs", log_probs)?;
    same_shape("log-probs and old log-probs", log_probs, old_log_probs)?;
    same_shape("log-probs and advantages", log_probs, advantages)?;
    same_shape("log-probs and mask", log_probs, mask)?;
    let old = old_log_probs.detach();
    let adv = advantages.detach();
    let log_ratio = (log_probs - &old).clamp(-20.0, 20.0);
    let ratio = log_ratio.exp();
    // −A·ρ
    let l1 = -&adv * &ratio;
    // −A·clip(ρ, 1 − ε_low, 1 + ε_high)
    let l2 = -&adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high);
    let clipped = l1.maximum(&l2);
    let neg = adv.lt(0.0);
    let (loss, dual) = match clip_c {
        Some(c) => {
            // −c·A bounds the loss of a negative-advantage token however large ρ gets.
            let l3 = -&adv * c;
            let dual = clipped.gt_tensor(&l3).logical_and(&neg);
            (clipped.minimum(&l3).where_self(&neg, &clipped), Some(dual))
        }
        None => (clipped.shallow_clone(), None),
    };
    let stats = tch::no_grad(|| {
        let took_clip = l2.gt_tensor(&l1);
        let frac = |t: &Tensor| masked_mean(&t.to_kind(Kind::Double), mask).double_value(&[]);
        PgStats {
            clipfrac: frac(&took_clip),
            clipfrac_high: frac(&took_clip.logical_and(&adv.gt(0.0))),
            clipfrac_low: frac(&took_clip.logical_and(&neg)),
            clipfrac_dual: dual.as_ref().map_or(0.0, frac),
            ppo_kl: masked_mean(&(-&log_ratio).to_kind(Kind::Double), mask).double_value(&[]),
        }
    });
    Ok((loss, stats))
}

/// One micro-batch's inputs to [`policy_loss`], all `[B, T]` over response positions except
/// `advantages`, which may also be `[B]` (then broadcast over the mask).
pub struct PolicyBatch<'a> {
    /// log π_θ of the sampled tokens (requires grad).
    pub log_probs: &'a Tensor,
    /// log π_old, from the rollout policy (no grad).
    pub old_log_probs: &'a Tensor,
    pub advantages: &'a Tensor,
    pub loss_mask: &'a Tensor,
    /// log π_ref of the frozen reference model; needed when `kl_coef > 0`.
    pub ref_log_probs: Option<&'a Tensor>,
    /// Per-token entropy of π_θ; needed when `entropy_coeff != 0` (with grad then).
    pub entropy: Option<&'a Tensor>,
}

/// What a policy-loss evaluation logs.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct PolicyLossMetrics {
    /// The total loss returned.
    pub loss: f64,
    /// The aggregated clipped surrogate.
    pub pg_loss: f64,
    pub pg: PgStats,
    /// Masked token-mean entropy, when entropy was given.
    pub entropy: Option<f64>,
    /// Aggregated entropy (the bonus before its coefficient), when entropy was given.
    pub entropy_loss: Option<f64>,
    /// Masked token-mean of the KL estimate, when reference log-probs were given.
    pub kl: Option<f64>,
    /// Aggregated KL (the term before its coefficient), when reference log-probs were given.
    pub kl_loss: Option<f64>,
    /// Unmasked tokens in this micro-batch.
    pub num_tokens: f64,
}

/// L = agg(ℓ_clip) − entropy_coeff·agg(H) + kl_coef·agg(KL(π_θ‖π_ref)), every term aggregated
/// with `cfg.loss_agg_mode` over the loss mask only.
// `loss -= …` on a Tensor runs in place and would also overwrite `pg_loss`, whose storage
// `loss` shares; hence the spelled-out assignments.
#[allow(clippy::assign_op_pattern)]
pub fn policy_loss(
    batch: &PolicyBatch,
    cfg: &GrpoConfig,
    norm: &AggNorm,
) -> Result<(Tensor, PolicyLossMetrics), GrpoError> {
    cfg.validate()?;
    let mask = batch.loss_mask;
    two_d("loss mask", mask)?;
    let adv = if batch.advantages.dim() == 1 {
        broadcast_advantages(batch.advantages, mask)?
    } else {
        batch.advantages.shallow_clone()
    };
    let norm = AggNorm {
        loss_scale_factor: cfg.loss_scale_factor.or(norm.loss_scale_factor),
        ..*norm
    };
    let mode = cfg.loss_agg_mode;
    let (pg_mat, pg) = clipped_pg_losses(
        batch.log_probs,
        batch.old_log_probs,
        &adv,
        mask,
        cfg.clip_ratio_low,
        cfg.clip_ratio_high,
        cfg.clip_ratio_c,
    )?;
    let pg_loss = agg_loss(&pg_mat, mask, mode, &norm)?;
    let mut loss = pg_loss.shallow_clone();
    let mut metrics = PolicyLossMetrics {
        pg_loss: pg_loss.double_value(&[]),
        pg,
        num_tokens: mask.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]),
        ..Default::default()
    };
    let scalar_mean =
        |t: &Tensor| tch::no_grad(|| masked_mean(&t.to_kind(Kind::Double), mask).double_value(&[]));

    match batch.entropy {
        Some(h) => {
            same_shape("entropy and mask", h, mask)?;
            let h_agg = agg_loss(h, mask, mode, &norm)?;
            metrics.entropy = Some(scalar_mean(h));
            metrics.entropy_loss = Some(h_agg.double_value(&[]));
            if cfg.entropy_coeff != 0.0 {
                // − entropy_coeff·agg(H): higher entropy lowers the loss
                loss = loss - h_agg * cfg.entropy_coeff;
            }
        }
        None if cfg.entropy_coeff != 0.0 => {
            return Err(GrpoError::MissingInput {
                coefficient: "entropy_coeff",
                value: cfg.entropy_coeff,
                needs: "per-token entropy",
            });
        }
        None => {}
    }
    match batch.ref_log_probs {
        Some(r) => {
            let kl = kl_penalty(batch.log_probs, &r.detach(), cfg.kl_estimator)?;
            let kl_agg = agg_loss(&kl, mask, mode, &norm)?;
            metrics.kl = Some(scalar_mean(&kl));
            metrics.kl_loss = Some(kl_agg.double_value(&[]));
            if cfg.kl_coef != 0.0 {
                // + kl_coef·agg(KL)
                loss = loss + kl_agg * cfg.kl_coef;
            }
        }
        None if cfg.kl_coef != 0.0 => {
            return Err(GrpoError::MissingInput {
                coefficient: "kl_coef",
                value: cfg.kl_coef,
                needs: "reference log-probs",
            });
        }
        None => {}
    }
    metrics.loss = loss.double_value(&[]);
    Ok((loss, metrics))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t2(rows: &[&[f64]]) -> Tensor {
        let cols = rows[0].len() as i64;
        let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).reshape([rows.len() as i64, cols])
    }

    fn vals(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    fn close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < tol, "{a:?} vs {b:?}");
        }
    }

    fn scalar(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    #[test]
    fn masked_reductions() {
        let x = t2(&[&[1.0, 2.0], &[3.0, 100.0]]);
        let m = t2(&[&[1.0, 1.0], &[1.0, 0.0]]);
        assert_eq!(scalar(&masked_sum(&x, &m)), 6.0);
        assert_eq!(scalar(&masked_mean(&x, &m)), 2.0);
        assert_eq!(scalar(&masked_mean(&x, &m.zeros_like())), 0.0);
    }

    #[test]
    fn aggregation_modes_by_hand() {
        // Rows: 2 tokens (1+2), 1 token (4), none (7, 8, 9 never count).
        let l = t2(&[&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0], &[7.0, 8.0, 9.0]]);
        let m = t2(&[&[1.0, 1.0, 0.0], &[1.0, 0.0, 0.0], &[0.0, 0.0, 0.0]]);
        let agg = |mode, norm: AggNorm| scalar(&agg_loss(&l, &m, mode, &norm).unwrap());
        let none = AggNorm::default();
        // (1 + 2 + 4) / 3
        assert!((agg(AggMode::TokenMean, none) - 7.0 / 3.0).abs() < 1e-12);
        // (3 + 4) / 2 sequences with tokens
        assert!((agg(AggMode::SeqMeanTokenSum, none) - 3.5).abs() < 1e-12);
        // (3/2 + 4/1) / 2
        assert!((agg(AggMode::SeqMeanTokenMean, none) - 2.75).abs() < 1e-7);
        // (3 + 4) / 2 / T, T = 3; or / L with L = 7
        assert!((agg(AggMode::SeqMeanTokenSumNorm, none) - 3.5 / 3.0).abs() < 1e-12);
        let l7 = AggNorm {
            loss_scale_factor: Some(7.0),
            ..none
        };
        assert!((agg(AggMode::SeqMeanTokenSumNorm, l7) - 0.5).abs() < 1e-12);
        // Global normalisers from a larger mini-batch: 7 / 14 tokens, 7 / 7 sequences.
        assert!(
            (agg(
                AggMode::TokenMean,
                AggNorm {
                    batch_num_tokens: Some(14.0),
                    ..none
                }
            ) - 0.5)
                .abs()
                < 1e-12
        );
        assert!(
            (agg(
                AggMode::SeqMeanTokenSum,
                AggNorm {
                    global_batch_size: Some(7.0),
                    ..none
                }
            ) - 1.0)
                .abs()
                < 1e-12
        );
        // Nothing unmasked: 0, not NaN.
        for mode in [
            AggMode::TokenMean,
            AggMode::SeqMeanTokenSum,
            AggMode::SeqMeanTokenMean,
            AggMode::SeqMeanTokenSumNorm,
        ] {
            assert_eq!(scalar(&agg_loss(&l, &m.zeros_like(), mode, &none).unwrap()), 0.0);
        }
        assert!(agg_loss(&l, &m.reshape([1, 9]), AggMode::TokenMean, &none).is_err());
    }

    #[test]
    fn kl_estimators_by_hand() {
        // δ = logp − ref = [0.5, −1.0]
        let logp = Tensor::from_slice(&[-1.0f64, -2.0]);
        let r = Tensor::from_slice(&[-1.5f64, -1.0]);
        let kl = |e| vals(&kl_penalty(&logp, &r, e).unwrap());
        close(&kl(KlEstimator::K1), &[0.5, -1.0], 1e-12);
        close(&kl(KlEstimator::Abs), &[0.5, 1.0], 1e-12);
        close(&kl(KlEstimator::K2), &[0.125, 0.5], 1e-12);
        // e^{−0.5} + 0.5 − 1 = 0.1065307; e^{1} − 1 − 1 = 0.7182818
        close(&kl(KlEstimator::K3), &[0.10653066, 0.71828183], 1e-7);
        close(&kl(KlEstimator::K3Plus), &[0.10653066, 0.71828183], 1e-7);
        close(&kl(KlEstimator::K1Plus), &[0.5, -1.0], 1e-12);
        let grad = |e| {
            let leaf = logp.detach().set_requires_grad(true);
            kl_penalty(&leaf, &r, e).unwrap().sum(Kind::Double).backward();
            vals(&leaf.grad())
        };
        // d k3 / d logp = 1 − e^{−δ}; straight-through variants have k2's gradient δ.
        close(
            &grad(KlEstimator::K3),
            &[1.0 - (-0.5f64).exp(), 1.0 - 1f64.exp()],
            1e-7,
        );
        close(&grad(KlEstimator::K3Plus), &[0.5, -1.0], 1e-12);
        close(&grad(KlEstimator::K1Plus), &[0.5, -1.0], 1e-12);
        close(&grad(KlEstimator::K1), &[1.0, 1.0], 1e-12);
        // k3 is clamped: δ = 30 gives e^{−20} + 20 − 1 → 10.
        let big = kl_penalty(
            &Tensor::from_slice(&[0.0f64]),
            &Tensor::from_slice(&[-30.0f64]),
            KlEstimator::K3,
        )
        .unwrap();
        close(&vals(&big), &[10.0], 1e-12);
    }

    /// Six tokens with old log-probs 0, so ρ = e^{logp}; ε_low = 0.2, ε_high = 0.28, c = 3.
    ///  tok  A   ρ    −Aρ   −A·clip(ρ)  ℓ                     gradient of ℓ wrt logp
    ///  1    +1  1.1  −1.1  −1.1        −1.1                  −Aρ = −1.1
    ///  2    +1  1.5  −1.5  −1.28       −1.28 (clip high)     0
    ///  3    −1  0.5  0.5   0.8         0.8   (clip low)      0
    ///  4    −1  0.9  0.9   0.9         0.9                   0.9
    ///  5    −1  4.0  4.0   1.2         min(4, 3) = 3 (dual)  0
    ///  6    +1  0.5  −0.5  −0.8        −0.5                  −0.5
    ///  7    +1  3.0  masked out
    fn pg_case() -> (Tensor, Tensor, Tensor, Tensor) {
        let rho = [1.1f64, 1.5, 0.5, 0.9, 4.0, 0.5, 3.0];
        let logp = Tensor::from_slice(&rho.map(f64::ln))
            .reshape([1, 7])
            .set_requires_grad(true);
        let old = logp.zeros_like().detach();
        let adv = t2(&[&[1.0, 1.0, -1.0, -1.0, -1.0, 1.0, 1.0]]);
        let mask = t2(&[&[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]]);
        (logp, old, adv, mask)
    }

    #[test]
    fn clipped_loss_by_hand() {
        let (logp, old, adv, mask) = pg_case();
        let (mat, st) = clipped_pg_losses(&logp, &old, &adv, &mask, 0.2, 0.28, Some(3.0)).unwrap();
        close(&vals(&mat)[..6], &[-1.1, -1.28, 0.8, 0.9, 3.0, -0.5], 1e-12);
        let loss = agg_loss(&mat, &mask, AggMode::TokenMean, &AggNorm::default()).unwrap();
        // (−1.1 − 1.28 + 0.8 + 0.9 + 3 − 0.5) / 6 = 1.82 / 6
        assert!((scalar(&loss) - 1.82 / 6.0).abs() < 1e-12);
        loss.backward();
        close(
            &vals(&logp.grad()),
            &[-1.1 / 6.0, 0.0, 0.0, 0.9 / 6.0, 0.0, -0.5 / 6.0, 0.0],
            1e-12,
        );
        assert!((st.clipfrac - 2.0 / 6.0).abs() < 1e-12);
        assert!((st.clipfrac_high - 1.0 / 6.0).abs() < 1e-12 && (st.clipfrac_low - 1.0 / 6.0).abs() < 1e-12);
        assert!((st.clipfrac_dual - 1.0 / 6.0).abs() < 1e-12);
        // mean(−log ρ) over the six unmasked tokens
        let ppo_kl = -[1.1f64, 1.5, 0.5, 0.9, 4.0, 0.5]
            .iter()
            .map(|r| r.ln())
            .sum::<f64>()
            / 6.0;
        assert!((st.ppo_kl - ppo_kl).abs() < 1e-12 && (ppo_kl + 0.0659025).abs() < 1e-6);
        // Without the dual clip token 5 keeps −Aρ = 4 and its gradient −A·ρ = 4.
        let (logp, old, adv, mask) = pg_case();
        let (mat, st) = clipped_pg_losses(&logp, &old, &adv, &mask, 0.2, 0.28, None).unwrap();
        close(&vals(&mat)[..6], &[-1.1, -1.28, 0.8, 0.9, 4.0, -0.5], 1e-12);
        assert_eq!(st.clipfrac_dual, 0.0);
        agg_loss(&mat, &mask, AggMode::TokenMean, &AggNorm::default())
            .unwrap()
            .backward();
        close(&vals(&logp.grad())[4..5], &[4.0 / 6.0], 1e-12);
        // Symmetric ε = 0.2: token 2 is clipped at 1.2 instead of 1.28; token 1 (1.1) still is not.
        let (mat, _) = clipped_pg_losses(&logp, &old, &adv, &mask, 0.2, 0.2, Some(3.0)).unwrap();
        close(&vals(&mat)[..2], &[-1.1, -1.2], 1e-12);
    }

    #[test]
    fn policy_loss_combines_terms_by_hand() {
        // On-policy (ρ = 1), A = [+1, −1] per sequence, three unmasked tokens.
        let logp = t2(&[&[-1.0, -2.0], &[-0.5, -3.0]]).set_requires_grad(true);
        let old = logp.detach();
        let adv = Tensor::from_slice(&[1.0f64, -1.0]);
        let mask = t2(&[&[1.0, 1.0], &[1.0, 0.0]]);
        // k1 = δ = [[0.1, 0.2], [0.3, (masked)]]
        let refp = &logp.detach() - t2(&[&[0.1, 0.2], &[0.3, 9.0]]);
        let ent = t2(&[&[0.5, 1.0], &[2.0, 9.0]]).set_requires_grad(true);
        let cfg = GrpoConfig {
            entropy_coeff: 0.1,
            kl_coef: 0.5,
            kl_estimator: KlEstimator::K1,
            ..GrpoConfig::default()
        };
        let batch = PolicyBatch {
            log_probs: &logp,
            old_log_probs: &old,
            advantages: &adv,
            loss_mask: &mask,
            ref_log_probs: Some(&refp),
            entropy: Some(&ent),
        };
        let (loss, m) = policy_loss(&batch, &cfg, &AggNorm::default()).unwrap();
        // pg = (−1 − 1 + 1)/3; H = 3.5/3; KL = 0.6/3; L = −1/3 − 0.1·3.5/3 + 0.5·0.2 = −0.35
        assert!((scalar(&loss) + 0.35).abs() < 1e-12 && (m.loss + 0.35).abs() < 1e-12);
        assert!((m.pg_loss + 1.0 / 3.0).abs() < 1e-12);
        assert!((m.entropy.unwrap() - 3.5 / 3.0).abs() < 1e-12 && (m.kl.unwrap() - 0.2).abs() < 1e-12);
        assert_eq!((m.num_tokens, m.pg.clipfrac), (3.0, 0.0));
        loss.backward();
        // d/dlogp: −A/3 from the surrogate + 0.5/3 from k1; d/dH: −0.1/3 per unmasked token.
        close(&vals(&logp.grad()), &[-1.0 / 6.0, -1.0 / 6.0, 0.5, 0.0], 1e-12);
        close(
            &vals(&ent.grad()),
            &[-0.1 / 3.0, -0.1 / 3.0, -0.1 / 3.0, 0.0],
            1e-12,
        );
        // Coefficients without their inputs are errors; inputs without coefficients are metrics only.
        let bare = PolicyBatch {
            ref_log_probs: None,
            entropy: None,
            ..batch
        };
        assert!(matches!(
            policy_loss(&bare, &cfg, &AggNorm::default()),
            Err(GrpoError::MissingInput { .. })
        ));
        let (loss, m) = policy_loss(
            &PolicyBatch {
                entropy: Some(&ent),
                ..bare
            },
            &GrpoConfig::default(),
            &AggNorm::default(),
        )
        .unwrap();
        assert!((scalar(&loss) + 1.0 / 3.0).abs() < 1e-12 && m.entropy.is_some() && m.kl.is_none());
    }
}
