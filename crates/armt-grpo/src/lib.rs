//! GRPO maths on libtorch, as verl computes it (`verl/trainer/ppo/core_algos.py`): small pure
//! functions over tensors, each with its formula next to it.
//!
//! * [`advantage`]: per-group outcome advantages (with or without std normalisation) and the
//!   dynamic-sampling filter that drops groups whose rewards are all equal.
//! * [`loss`]: masked reductions, the four loss aggregations, the KL estimators, the
//!   clipped (asymmetric, dual-clip) policy-gradient loss and [`policy_loss`], which combines
//!   them with the entropy bonus and the KL-to-reference term.
//! * [`logits`]: per-token log-probs of the sampled ids and per-token entropies from `[B, T, V]`
//!   logits, in chunks of positions.
//! * [`schedule`]: linear warm-up, then constant or cosine decay to a floor.
//!
//! Every loss term is reduced over the loss mask only: template, padding and tool-output tokens
//! carry mask 0 and never train the policy.

pub mod advantage;
pub mod chunked;
pub mod logits;
pub mod loss;
pub mod schedule;

pub use advantage::{advantages_tensor, broadcast_advantages, group_advantages, informative_groups_mask};
pub use chunked::ChunkedLogprobs;
pub use logits::{entropy_from_logits, logprobs_and_entropy, logprobs_from_logits, EntropyGrad};
pub use loss::{
    agg_loss, clipped_pg_losses, kl_penalty, masked_mean, masked_sum, policy_loss, AggMode, AggNorm,
    KlEstimator, PgStats, PolicyBatch, PolicyLossMetrics,
};
pub use schedule::{Decay, LrSchedule};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum GrpoError {
    /// A setting outside what it accepts (the message names the key and its value).
    #[error("invalid GRPO config: {0}")]
    Config(String),
    /// The config's JSON does not parse or has unknown fields.
    #[error("invalid GRPO config: {0}")]
    Json(#[source] serde_json::Error),
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A non-zero coefficient (`coefficient = value`) whose input (`needs`) was not given.
    #[error("{coefficient} = {value} needs {needs}")]
    MissingInput {
        coefficient: &'static str,
        value: f64,
        needs: &'static str,
    },
    #[error("reward {index} is {value}")]
    NonFiniteReward { index: usize, value: f64 },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// The GRPO knobs, defaults as verl's actor config (`clip_ratio_low/high = 0.2`,
/// `clip_ratio_c = 3.0`, no KL loss, `kl_loss_type = low_var_kl`, `entropy_coeff = 0`,
/// `loss_agg_mode = token-mean`, `norm_adv_by_std_in_grpo = true`, ε = 1e-6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoConfig {
    /// ε_low: the ratio is clipped at 1 − ε_low.
    pub clip_ratio_low: f64,
    /// ε_high: the ratio is clipped at 1 + ε_high (DAPO's clip-higher uses 0.28).
    pub clip_ratio_high: f64,
    /// Dual clip for negative advantages: the loss is capped at −c·A (c > 1); None turns it off.
    pub clip_ratio_c: Option<f64>,
    /// Weight of the KL-to-reference loss term (0 = no reference model needed).
    pub kl_coef: f64,
    pub kl_estimator: KlEstimator,
    /// Weight of the entropy bonus (subtracted from the loss).
    pub entropy_coeff: f64,
    pub loss_agg_mode: AggMode,
    /// Divide advantages by the group std (GRPO); false gives Dr.GRPO's mean-centred rewards.
    pub norm_adv_by_std: bool,
    /// Added to the group std before dividing.
    pub epsilon: f64,
    /// The constant L of `seq-mean-token-sum-norm` (None: the padded response length).
    pub loss_scale_factor: Option<f64>,
    /// Dynamic sampling: drop groups whose rewards are all equal (their advantages are all 0).
    pub filter_constant_groups: bool,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        Self {
            clip_ratio_low: 0.2,
            clip_ratio_high: 0.2,
            clip_ratio_c: Some(3.0),
            kl_coef: 0.0,
            kl_estimator: KlEstimator::K3,
            entropy_coeff: 0.0,
            loss_agg_mode: AggMode::TokenMean,
            norm_adv_by_std: true,
            epsilon: 1e-6,
            loss_scale_factor: None,
            filter_constant_groups: false,
        }
    }
}

impl GrpoConfig {
    /// DAPO's options: clip-higher (ε_high = 0.28) and dynamic sampling.
    pub fn dapo() -> Self {
        Self {
            clip_ratio_high: 0.28,
            filter_constant_groups: true,
            ..Self::default()
        }
    }

    /// Parses a JSON config (missing fields take the defaults, unknown fields are errors).
    pub fn from_json(text: &str) -> Result<Self, GrpoError> {
        let cfg: Self = serde_json::from_str(text).map_err(GrpoError::Json)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), GrpoError> {
        let err = |m: String| Err(GrpoError::Config(m));
        if !(0.0..1.0).contains(&self.clip_ratio_low) {
            return err(format!(
                "clip_ratio_low = {} must be in [0, 1)",
                self.clip_ratio_low
            ));
        }
        if self.clip_ratio_high.is_nan() || self.clip_ratio_high < 0.0 {
            return err(format!("clip_ratio_high = {} must be >= 0", self.clip_ratio_high));
        }
        if let Some(c) = self.clip_ratio_c {
            if c.is_nan() || c <= 1.0 {
                return err(format!("clip_ratio_c = {c} must be > 1 (dual clip)"));
            }
        }
        if !self.kl_coef.is_finite() || self.kl_coef < 0.0 {
            return err(format!("kl_coef = {} must be finite and >= 0", self.kl_coef));
        }
        if !self.entropy_coeff.is_finite() {
            return err(format!("entropy_coeff = {} must be finite", self.entropy_coeff));
        }
        if self.epsilon.is_nan() || self.epsilon < 0.0 {
            return err(format!("epsilon = {} must be >= 0", self.epsilon));
        }
        if let Some(l) = self.loss_scale_factor {
            if l.is_nan() || l <= 0.0 {
                return err(format!("loss_scale_factor = {l} must be > 0"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_are_verls_and_names_round_trip() {
        let c = GrpoConfig::default();
        assert_eq!(
            (c.clip_ratio_low, c.clip_ratio_high, c.clip_ratio_c),
            (0.2, 0.2, Some(3.0))
        );
        assert_eq!(
            (c.kl_coef, c.kl_estimator, c.entropy_coeff),
            (0.0, KlEstimator::K3, 0.0)
        );
        assert_eq!(
            (c.loss_agg_mode, c.norm_adv_by_std, c.epsilon),
            (AggMode::TokenMean, true, 1e-6)
        );
        assert_eq!(GrpoConfig::dapo().clip_ratio_high, 0.28);
        let json = serde_json::to_string(&c).unwrap();
        assert!(
            json.contains("\"token-mean\"") && json.contains("\"low_var_kl\""),
            "{json}"
        );
        assert_eq!(GrpoConfig::from_json(&json).unwrap(), c);
        let c = GrpoConfig::from_json(
            r#"{"loss_agg_mode": "seq-mean-token-sum-norm", "kl_estimator": "k1", "kl_coef": 0.001}"#,
        )
        .unwrap();
        assert_eq!(
            (c.loss_agg_mode, c.kl_estimator),
            (AggMode::SeqMeanTokenSumNorm, KlEstimator::K1)
        );
        let c = GrpoConfig::from_json(r#"{"kl_estimator": "mse"}"#).unwrap();
        assert_eq!(c.kl_estimator, KlEstimator::K2);
    }

    #[test]
    fn config_rejects_bad_values() {
        let err = GrpoConfig::from_json(r#"{"clip_ratio": 0.2}"#).unwrap_err();
        assert!(err.to_string().contains("clip_ratio"), "{err}");
        // The parser's error stays reachable.
        let source = std::error::Error::source(&err).and_then(|s| s.downcast_ref::<serde_json::Error>());
        assert!(source.is_some(), "{err:?}");
        assert!(GrpoConfig::from_json(r#"{"clip_ratio_c": 1.0}"#).is_err());
        assert!(GrpoConfig::from_json(r#"{"clip_ratio_low": 1.0}"#).is_err());
        assert!(GrpoConfig::from_json(r#"{"kl_coef": -0.1}"#).is_err());
        assert!(GrpoConfig::from_json(r#"{"loss_agg_mode": "token-sum-mean"}"#).is_err());
        assert!(GrpoConfig::from_json(r#"{"loss_scale_factor": 0}"#).is_err());
        assert!(GrpoConfig::from_json(r#"{"clip_ratio_c": null}"#)
            .unwrap()
            .clip_ratio_c
            .is_none());
    }
}
