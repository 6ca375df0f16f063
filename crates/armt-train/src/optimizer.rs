//! AdamW whose state can be saved and restored exactly (tch's wrapper of the C++ optimizer
//! keeps its moments out of reach, so a resumed run could not continue bit for bit).
//! Moments are f32 whatever the parameters' dtype, as mixed-precision trainers keep them.

use crate::TrainError;
use armt_dist::{Communicator, ReduceOp, SingleProcess};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// Gradient elements per all-reduce (an fp32 bucket of 64 MiB).
const BUCKET_ELEMS: i64 = 1 << 24;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (verl's actor default 0.01).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<(String, Tensor)>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// The ranks whose gradients are summed before each step (one process by default).
    comm: Arc<dyn Communicator>,
    /// Optimizer steps taken (the bias corrections' t).
    pub steps: i64,
}

impl AdamW {
    /// Over `params` (name, trainable variable), in a fixed order.
    pub fn new(mut params: Vec<(String, Tensor)>, cfg: AdamWConfig) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |p: &Tensor| Tensor::zeros(p.size(), (Kind::Float, p.device()));
        let exp_avg = params.iter().map(|(_, p)| zeros(p)).collect();
        let exp_avg_sq = params.iter().map(|(_, p)| zeros(p)).collect();
        Self {
            cfg,
            params,
            exp_avg,
            exp_avg_sq,
            comm: Arc::new(SingleProcess),
            steps: 0,
        }
    }

    /// The process group gradients are summed over (data parallelism: every rank holds the
    /// whole state and applies the same update).
    pub fn with_communicator(mut self, comm: Arc<dyn Communicator>) -> Self {
        self.comm = comm;
        self
    }

    pub fn communicator(&self) -> &Arc<dyn Communicator> {
        &self.comm
    }

    /// Sums every gradient over the ranks, in fp32 buckets of at most [`BUCKET_ELEMS`]. A
    /// gradient this rank's loss did not reach is zero here but may not be on another rank,
    /// so it is first made a zero tensor (every rank must then hold the same sum).
    fn all_reduce_grads(&mut self) -> Result<(), TrainError> {
        if self.comm.world_size() == 1 {
            return Ok(());
        }
        let missing: Vec<Tensor> = self
            .params
            .iter()
            .filter(|(_, p)| !p.grad().defined())
            .map(|(_, p)| p.sum(Kind::Float) * 0.0)
            .collect();
        if !missing.is_empty() {
            // d(0·Σp)/dp = 0: defines the gradient as zeros of the parameter's shape and dtype.
            Tensor::stack(&missing, 0).sum(Kind::Float).f_backward()?;
        }
        let _g = tch::no_grad_guard();
        let grads: Vec<Tensor> = self.params.iter().map(|(_, p)| p.grad()).collect();
        let mut start = 0;
        while start < grads.len() {
            let mut end = start;
            let mut elems = 0;
            while end < grads.len() && (end == start || elems + grads[end].numel() as i64 <= BUCKET_ELEMS) {
                elems += grads[end].numel() as i64;
                end += 1;
            }
            let flat: Vec<Tensor> = grads[start..end]
                .iter()
                .map(|g| g.to_kind(Kind::Float).reshape(-1))
                .collect();
            let bucket = Tensor::cat(&flat, 0);
            self.comm.all_reduce(&bucket, ReduceOp::Sum)?;
            let mut offset = 0;
            for g in &grads[start..end] {
                let n = g.numel() as i64;
                g.shallow_clone()
                    .f_copy_(&bucket.narrow(0, offset, n).view(g.size().as_slice()))?;
                offset += n;
            }
            start = end;
        }
        Ok(())
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// ‖g‖₂ over all gradients.
    pub fn grad_norm(&self) -> f64 {
        let _g = tch::no_grad_guard();
        let mut total = 0f64;
        for (_, p) in &self.params {
            let g = p.grad();
            if g.defined() {
                total += g
                    .to_kind(Kind::Double)
                    .pow_tensor_scalar(2)
                    .sum(Kind::Double)
                    .double_value(&[]);
            }
        }
        total.sqrt()
    }

    /// Sums the gradients over the ranks, then scales them so that their (global) norm is at
    /// most `max_norm`; returns the norm before.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64, TrainError> {
        self.all_reduce_grads()?;
        let norm = self.grad_norm();
        if max_norm > 0.0 && norm.is_finite() && norm > max_norm {
            let _g = tch::no_grad_guard();
            let scale = max_norm / (norm + 1e-6);
            for (_, p) in &mut self.params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(scale);
                }
            }
        }
        Ok(norm)
    }

    /// One step at learning rate `lr`, as torch.optim.AdamW computes it (every parameter steps,
    /// a missing gradient counting as zero):
    /// p ← p·(1 − lr·λ); m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²;
    /// p ← p − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε).
    pub fn step(&mut self, lr: f64) {
        let _g = tch::no_grad_guard();
        self.steps += 1;
        let t = self.steps as f64;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powf(t);
        let bc2 = 1.0 - b2.powf(t);
        for (i, (_, p)) in self.params.iter_mut().enumerate() {
            // A parameter the loss did not reach (the vision tower on a text-only batch) steps
            // with a zero gradient, as torch's AdamW after zero_grad(set_to_none=False). Skipping
            // it instead would make the result depend on whether an earlier step in this process
            // had defined its gradient, and a resumed run would drift from an uninterrupted one.
            let g = p.grad();
            let g = if g.defined() {
                g.to_kind(Kind::Float)
            } else {
                Tensor::zeros(p.size(), (Kind::Float, p.device()))
            };
            let m = &mut self.exp_avg[i];
            let _ = m.g_mul_scalar_(b1);
            let _ = m.g_add_(&(&g * (1.0 - b1)));
            let v = &mut self.exp_avg_sq[i];
            let _ = v.g_mul_scalar_(b2);
            let _ = v.g_add_(&(&g * &g * (1.0 - b2)));
            let denom = v.sqrt() / bc2.sqrt() + self.cfg.eps;
            let mut p32 = p.to_kind(Kind::Float);
            p32 = p32 * (1.0 - lr * self.cfg.weight_decay) - (&*m / denom) * (lr / bc1);
            p.copy_(&p32.to_kind(p.kind()));
        }
    }

    /// Moments as named tensors (`exp_avg.<param>`, `exp_avg_sq.<param>`), for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((
                format!("exp_avg.{name}"),
                self.exp_avg[i].to_device(tch::Device::Cpu),
            ));
            out.push((
                format!("exp_avg_sq.{name}"),
                self.exp_avg_sq[i].to_device(tch::Device::Cpu),
            ));
        }
        out
    }

    /// Restores what [`AdamW::state`] saved; every moment must be there with the right shape.
    pub fn load_state(
        &mut self,
        tensors: &std::collections::HashMap<String, Tensor>,
        steps: i64,
    ) -> Result<(), String> {
        let _g = tch::no_grad_guard();
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (prefix, dst) in [
                ("exp_avg", &mut self.exp_avg[i]),
                ("exp_avg_sq", &mut self.exp_avg_sq[i]),
            ] {
                let key = format!("{prefix}.{name}");
                let src = tensors
                    .get(&key)
                    .ok_or_else(|| format!("optimizer state lacks `{key}`"))?;
                if src.size() != p.size() {
                    return Err(format!(
                        "optimizer state `{key}` has shape {:?}, parameter {:?}",
                        src.size(),
                        p.size()
                    ));
                }
                dst.copy_(&src.to_kind(Kind::Float).to_device(dst.device()));
            }
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_steps_match_hand_computed_adamw() {
        // One scalar parameter p0 = 1, gradients 0.5 then -0.25, lr 0.1, wd 0.01.
        let p = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("p".into(), p.shallow_clone())], AdamWConfig::default());
        let (b1, b2, eps, wd, lr) = (0.9f64, 0.999f64, 1e-8, 0.01, 0.1);
        let mut want = 1.0f64;
        let (mut m, mut v) = (0.0f64, 0.0f64);
        for (t, g) in [(1, 0.5f64), (2, -0.25)] {
            opt.zero_grad();
            (&p * g).sum(Kind::Float).backward();
            opt.step(lr);
            want *= 1.0 - lr * wd;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let denom = (v.sqrt() / (1.0 - b2.powi(t)).sqrt()) + eps;
            want -= lr / (1.0 - b1.powi(t)) * m / denom;
            let got = p.double_value(&[0]);
            assert!((got - want).abs() < 1e-6, "step {t}: {got} vs {want}");
        }
        // Saved and restored state continues identically.
        let state: std::collections::HashMap<String, Tensor> = opt.state().into_iter().collect();
        let q = p.detach().copy().set_requires_grad(true);
        let mut opt2 = AdamW::new(vec![("p".into(), q.shallow_clone())], AdamWConfig::default());
        opt2.load_state(&state, opt.steps).unwrap();
        for (o, x) in [(&mut opt, &p), (&mut opt2, &q)] {
            o.zero_grad();
            (x * 0.3).sum(Kind::Float).backward();
            o.step(lr);
        }
        assert_eq!(p.double_value(&[0]), q.double_value(&[0]));
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let p = Tensor::from_slice(&[0.0f32, 0.0]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("p".into(), p.shallow_clone())], AdamWConfig::default());
        (&p * Tensor::from_slice(&[3.0f32, 4.0]))
            .sum(Kind::Float)
            .backward();
        let before = opt.clip_grad_norm(1.0).unwrap();
        assert!((before - 5.0).abs() < 1e-6);
        assert!((opt.grad_norm() - 1.0).abs() < 1e-5);
    }
}
