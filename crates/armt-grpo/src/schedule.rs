//! Learning-rate schedule: linear warm-up, then constant (verl's default, used by the paper) or
//! cosine decay to a floor (verl's `get_cosine_schedule_with_warmup`).

use crate::GrpoError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    Constant,
    Cosine,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LrSchedule {
    /// Peak learning rate (the paper's stage-2 GRPO uses 2e-6).
    pub lr: f64,
    pub warmup_steps: usize,
    /// Optimizer steps in the whole run (the cosine reaches the floor there).
    pub total_steps: usize,
    /// The floor, as a fraction of `lr`.
    pub min_lr_ratio: f64,
    pub decay: Decay,
}

impl Default for LrSchedule {
    fn default() -> Self {
        Self {
            lr: 2e-6,
            warmup_steps: 0,
            total_steps: 1,
            min_lr_ratio: 0.0,
            decay: Decay::Constant,
        }
    }
}

impl LrSchedule {
    pub fn validate(&self) -> Result<(), GrpoError> {
        if !self.lr.is_finite() || self.lr <= 0.0 {
            return Err(GrpoError::Config(format!(
                "lr = {} must be finite and > 0",
                self.lr
            )));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return Err(GrpoError::Config(format!(
                "min_lr_ratio = {} must be in [0, 1]",
                self.min_lr_ratio
            )));
        }
        if self.decay == Decay::Cosine && self.warmup_steps >= self.total_steps {
            return Err(GrpoError::Config(format!(
                "warmup_steps = {} leaves no cosine phase in total_steps = {}",
                self.warmup_steps, self.total_steps
            )));
        }
        Ok(())
    }

    /// The learning rate of optimizer step `step` (0-based).
    ///
    /// warm-up (step < W): lr·step/W, so step 0 runs at 0 as in verl/HF;
    /// cosine: lr·(r + (1 − r)·½(1 + cos(π·p))), p = (step − W)/(N − W) clamped to [0, 1].
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * step as f64 / self.warmup_steps as f64;
        }
        match self.decay {
            Decay::Constant => self.lr,
            Decay::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let p = ((step - self.warmup_steps) as f64 / span).clamp(0.0, 1.0);
                let r = self.min_lr_ratio;
                self.lr * (r + (1.0 - r) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_the_floor() {
        let s = LrSchedule {
            lr: 1e-6,
            warmup_steps: 10,
            total_steps: 110,
            min_lr_ratio: 0.1,
            decay: Decay::Cosine,
        };
        s.validate().unwrap();
        let at = |k| s.lr_at(k) / 1e-6;
        assert_eq!(at(0), 0.0);
        assert!((at(5) - 0.5).abs() < 1e-12 && (at(10) - 1.0).abs() < 1e-12);
        // Halfway: cos(π/2) = 0 → 0.1 + 0.9·0.5 = 0.55; a quarter: 0.1 + 0.9·½(1 + √½) = 0.8681981.
        assert!((at(60) - 0.55).abs() < 1e-12);
        assert!(
            (at(35) - (0.1 + 0.45 * (1.0 + 0.5f64.sqrt()))).abs() < 1e-12
                && (at(35) - 0.8681981).abs() < 1e-6
        );
        assert!((at(110) - 0.1).abs() < 1e-12 && (at(500) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn constant_after_warmup() {
        let s = LrSchedule {
            lr: 2e-6,
            warmup_steps: 4,
            ..LrSchedule::default()
        };
        s.validate().unwrap();
        assert_eq!(
            [s.lr_at(0), s.lr_at(1), s.lr_at(4), s.lr_at(1000)],
            [0.0, 0.5e-6, 2e-6, 2e-6]
        );
        assert_eq!(LrSchedule::default().lr_at(0), 2e-6);
        assert!(LrSchedule {
            decay: Decay::Cosine,
            warmup_steps: 5,
            total_steps: 5,
            ..s.clone()
        }
        .validate()
        .is_err());
        assert!(LrSchedule {
            min_lr_ratio: 1.5,
            ..s
        }
        .validate()
        .is_err());
    }
}
