//! AdamW whose state can be saved and restored exactly (tch's wrapper of the C++ optimizer
//! keeps its moments out of reach, so a resumed run could not continue bit for bit), with fp32
//! master weights and fp32 gradient accumulation (see `mixed_precision`) and optimizer state
//! sharded across the ranks of a process group (ZeRO stages 0–2, see `zero`).
//! Moments are f32 whatever the parameters' dtype, as mixed-precision trainers keep them.
//!
//! The trainer's contract, per optimizer step:
//! `zero_grad()`; per micro-batch `loss.backward()` then `accumulate_grads()?`;
//! `clip_grad_norm(max)?` (reduces the gradients across ranks, returns the global norm);
//! `step(lr)?` (updates this rank's shard, then every rank's compute weights).

use crate::mixed_precision::MasterDtype;
use crate::zero::{self, FlatLayout, ShardedLayoutFile, ZeroStage};
use crate::TrainError;
use armt_dist::{Communicator, ReduceOp, SingleProcess};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

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

/// Elements per collective and per chunk of the update (bounds temporary memory: an fp32
/// reduce-scatter bucket is world × this × 4 bytes).
const DEFAULT_BUCKET_ELEMS: i64 = 1 << 24;

pub struct AdamW {
    cfg: AdamWConfig,
    /// Compute weights (the model's variables), sorted by name: the flat order.
    params: Vec<(String, Tensor)>,
    comm: Arc<dyn Communicator>,
    stage: ZeroStage,
    master_dtype: MasterDtype,
    bucket_elems: i64,
    /// Built on first use, once the group and stage are known.
    state: Option<ShardState>,
    /// Optimizer steps taken (the bias corrections' t).
    pub steps: i64,
}

/// What this rank holds: the owned range of the flat view.
struct ShardState {
    layout: FlatLayout,
    /// The partition this rank owns (0 when the state is replicated).
    part: usize,
    master: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// fp32 gradients: the whole flat view (stages 0 and 1, or one partition), else the owned
    /// range.
    grad: Tensor,
    /// Micro-batches folded into `grad` since `zero_grad`.
    folded: usize,
    /// `grad` holds the sum over ranks (all-reduced or reduce-scattered).
    reduced: bool,
}

impl ShardState {
    /// The owned range's gradients.
    fn owned_grad(&self) -> Tensor {
        if self.grad.numel() as i64 == self.layout.shard {
            self.grad.shallow_clone()
        } else {
            let (lo, _) = self.layout.range(self.part);
            self.grad.narrow(0, lo, self.layout.shard)
        }
    }
}

impl AdamW {
    /// Over `params` (name, trainable variable), in a fixed order; one process, fp32 masters,
    /// stage 0. Change those with the `with_*` builders before training.
    pub fn new(mut params: Vec<(String, Tensor)>, cfg: AdamWConfig) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        Self {
            cfg,
            params,
            comm: Arc::new(SingleProcess),
            stage: ZeroStage::Replicated,
            master_dtype: MasterDtype::F32,
            bucket_elems: DEFAULT_BUCKET_ELEMS,
            state: None,
            steps: 0,
        }
    }

    /// The process group gradients are reduced over and the state is sharded across.
    pub fn with_communicator(mut self, comm: Arc<dyn Communicator>) -> Self {
        self.comm = comm;
        self.state = None;
        self
    }

    pub fn with_zero_stage(mut self, stage: ZeroStage) -> Self {
        self.stage = stage;
        self.state = None;
        self
    }

    pub fn with_master_dtype(mut self, master: MasterDtype) -> Self {
        self.master_dtype = master;
        self.state = None;
        self
    }

    /// Elements per collective call and per update chunk (tests use small buckets).
    pub fn with_bucket_elems(mut self, elems: i64) -> Self {
        self.bucket_elems = elems.max(1);
        self
    }

    pub fn communicator(&self) -> &Arc<dyn Communicator> {
        &self.comm
    }

    pub fn zero_stage(&self) -> ZeroStage {
        self.stage
    }

    /// The kind the compute weights share (f32 if they differ).
    fn compute_kind(&self) -> Kind {
        let mut kinds = self.params.iter().map(|(_, p)| p.kind());
        match kinds.next() {
            Some(k) if kinds.all(|x| x == k) => k,
            _ => Kind::Float,
        }
    }

    fn device(&self) -> Device {
        self.params.first().map_or(Device::Cpu, |(_, p)| p.device())
    }

    fn tensors(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, p)| p.shallow_clone()).collect()
    }

    fn grads(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, p)| p.grad()).collect()
    }

    /// Allocates this rank's shard (once).
    fn ensure_state(&mut self) -> Result<(), TrainError> {
        if self.state.is_none() {
            self.state = Some(self.build_state()?);
        }
        Ok(())
    }

    /// This rank's shard as a fresh run starts it: masters copied from the compute weights,
    /// zero moments and gradients.
    fn build_state(&self) -> Result<ShardState, TrainError> {
        let _g = tch::no_grad_guard();
        let parts = self.stage.partitions(self.comm.world_size());
        let part = if parts == 1 { 0 } else { self.comm.rank() };
        let shapes: Vec<(String, Vec<i64>)> =
            self.params.iter().map(|(n, p)| (n.clone(), p.size())).collect();
        let layout = FlatLayout::new(&shapes, parts);
        let device = self.device();
        let master_kind = self.master_dtype.resolve(self.compute_kind());
        if master_kind != Kind::Float && self.params.iter().any(|(_, p)| p.kind() != master_kind) {
            return Err(TrainError::InvalidSettings {
                problems: vec![format!(
                    "optim.master_dtype: masters in {master_kind:?} need every trainable weight in that dtype"
                )],
            });
        }
        let (lo, _) = layout.range(part);
        let master = Tensor::zeros([layout.shard], (master_kind, device));
        layout.gather_into(&self.tensors(), lo, &master);
        let f32_zeros = |n: i64| Tensor::zeros([n], (Kind::Float, device));
        let grad_len = if self.stage == ZeroStage::ShardedGradients {
            layout.shard
        } else {
            layout.shard * layout.partitions
        };
        Ok(ShardState {
            exp_avg: f32_zeros(layout.shard),
            exp_avg_sq: f32_zeros(layout.shard),
            grad: f32_zeros(grad_len),
            master,
            layout,
            part,
            folded: 0,
            reduced: false,
        })
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
        if let Some(s) = &mut self.state {
            let _ = s.grad.zero_();
            s.folded = 0;
            s.reduced = false;
        }
    }

    /// Adds the gradients the last backward left on the compute weights into the fp32
    /// accumulator and zeroes them, so micro-batches are summed in fp32 (not in bf16, where a
    /// small gradient added to a large one rounds away). At stage 2 this also reduce-scatters
    /// them (a collective: every rank calls it after each of its micro-batches). A gradient the
    /// loss did not reach counts as zero.
    pub fn accumulate_grads(&mut self) -> Result<(), TrainError> {
        self.ensure_state()?;
        let _g = tch::no_grad_guard();
        let grads = self.grads();
        let bucket = self.bucket_elems;
        let s = self.state.as_mut().expect("state built");
        let parts = s.layout.partitions;
        if self.stage == ZeroStage::ShardedGradients && parts > 1 {
            let shard = s.layout.shard;
            for (start, len) in s.layout.buckets(bucket) {
                let input = Tensor::zeros([parts * len], (Kind::Float, s.grad.device()));
                for r in 0..parts {
                    s.layout
                        .gather_into(&grads, r * shard + start, &input.narrow(0, r * len, len));
                }
                let out = Tensor::zeros([len], (Kind::Float, s.grad.device()));
                self.comm.reduce_scatter(&input, &out, ReduceOp::Sum)?;
                let _ = s.grad.narrow(0, start, len).g_add_(&out);
            }
        } else {
            for seg in s.layout.segments(0, s.layout.numel) {
                let g = &grads[seg.param];
                if g.defined() {
                    let _ = s.grad.narrow(0, seg.range_offset, seg.len).g_add_(&g.reshape(-1));
                }
            }
        }
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
        s.folded += 1;
        Ok(())
    }

    /// Makes `grad` the sum over ranks (once per step). A trainer that never called
    /// [`AdamW::accumulate_grads`] gets its gradients folded here.
    fn reduce(&mut self) -> Result<(), TrainError> {
        self.ensure_state()?;
        let s = self.state.as_ref().expect("state built");
        if s.reduced {
            return Ok(());
        }
        if s.folded == 0 {
            self.accumulate_grads()?;
        }
        let s = self.state.as_mut().expect("state built");
        if self.stage != ZeroStage::ShardedGradients && self.comm.world_size() > 1 {
            let n = s.grad.numel() as i64;
            for start in (0..n).step_by(self.bucket_elems as usize) {
                let chunk = s.grad.narrow(0, start, self.bucket_elems.min(n - start));
                self.comm.all_reduce(&chunk, ReduceOp::Sum)?;
            }
        }
        s.reduced = true;
        Ok(())
    }

    /// ‖g‖₂ over all gradients of all ranks' sum (reduces them first). Stages 0 and 1 hold
    /// the whole reduced gradient on every rank; stage 2 sums the shards' squares over ranks.
    pub fn grad_norm(&mut self) -> Result<f64, TrainError> {
        self.reduce()?;
        let _g = tch::no_grad_guard();
        let s = self.state.as_ref().expect("state built");
        let sharded = self.stage == ZeroStage::ShardedGradients && s.layout.partitions > 1;
        let g = &s.grad;
        let n = g.numel() as i64;
        let mut total = Tensor::zeros([1], (Kind::Double, g.device()));
        for start in (0..n).step_by(self.bucket_elems as usize) {
            let chunk = g.narrow(0, start, self.bucket_elems.min(n - start));
            let _ = total.g_add_(&chunk.to_kind(Kind::Double).square().sum(Kind::Double));
        }
        if sharded {
            self.comm.all_reduce(&total, ReduceOp::Sum)?;
        }
        Ok(total.double_value(&[0]).sqrt())
    }

    /// Scales gradients so that their global norm is at most `max_norm`; returns the norm before.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64, TrainError> {
        let norm = self.grad_norm()?;
        if max_norm > 0.0 && norm.is_finite() && norm > max_norm {
            let _g = tch::no_grad_guard();
            let scale = max_norm / (norm + 1e-6);
            let s = self.state.as_ref().expect("state built");
            let _ = s.owned_grad().g_mul_scalar_(scale);
        }
        Ok(norm)
    }

    /// The end of one update of training step `train_step`: clip the gradients to
    /// `max_norm`, refuse a non-finite norm (before anything changes), then [`Self::step`] at the
    /// schedule's rate for this update. Returns the norm before clipping and the rate.
    pub fn clip_and_step(
        &mut self,
        max_norm: f64,
        schedule: &armt_grpo::LrSchedule,
        train_step: usize,
    ) -> Result<(f64, f64), TrainError> {
        let norm = self.clip_grad_norm(max_norm)?;
        if !norm.is_finite() {
            return Err(TrainError::NonFinite {
                step: train_step,
                quantity: "the gradient norm".into(),
                value: norm,
            });
        }
        let lr = schedule.lr_at(self.steps as usize);
        self.step(lr)?;
        Ok((norm, lr))
    }

    /// One step at learning rate `lr`, as torch.optim.AdamW computes it, on this rank's masters
    /// (every parameter steps, a missing gradient counting as zero):
    /// p ← p·(1 − lr·λ); m ← β₁m + (1−β₁)g; v ← β₂v + (1−β₂)g²;
    /// p ← p − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε);
    /// then the compute weights of every rank ← the masters, rounded to their dtype.
    pub fn step(&mut self, lr: f64) -> Result<(), TrainError> {
        // A parameter the loss did not reach (the vision tower on a text-only batch) steps with
        // a zero gradient, as torch's AdamW after zero_grad(set_to_none=False). Skipping it
        // instead would make the result depend on whether an earlier step in this process had
        // defined its gradient, and a resumed run would drift from an uninterrupted one.
        self.reduce()?;
        let _g = tch::no_grad_guard();
        self.steps += 1;
        let t = self.steps as f64;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powf(t);
        let bc2 = 1.0 - b2.powf(t);
        let s = self.state.as_ref().expect("state built");
        let grad = s.owned_grad();
        // Chunked: the update is elementwise, so chunks change no value, only peak memory.
        for start in (0..s.layout.shard).step_by(self.bucket_elems as usize) {
            let len = self.bucket_elems.min(s.layout.shard - start);
            let g = grad.narrow(0, start, len);
            let mut m = s.exp_avg.narrow(0, start, len);
            let _ = m.g_mul_scalar_(b1);
            let _ = m.g_add_(&(&g * (1.0 - b1)));
            let mut v = s.exp_avg_sq.narrow(0, start, len);
            let _ = v.g_mul_scalar_(b2);
            let _ = v.g_add_(&(&g * &g * (1.0 - b2)));
            let denom = v.sqrt() / bc2.sqrt() + self.cfg.eps;
            let mut master = s.master.narrow(0, start, len);
            let mut p32 = master.to_kind(Kind::Float);
            p32 = p32 * (1.0 - lr * self.cfg.weight_decay) - (&m / denom) * (lr / bc1);
            master.copy_(&p32.to_kind(master.kind()));
        }
        self.publish_weights()
    }

    /// Compute weights ← masters: copied (one partition) or all-gathered bucket by bucket in
    /// the compute dtype (each bucket holds the same sub-range of every rank's partition).
    fn publish_weights(&self) -> Result<(), TrainError> {
        let s = self.state.as_ref().expect("state built");
        let tensors = self.tensors();
        let parts = s.layout.partitions;
        if parts == 1 {
            s.layout.scatter_from(&s.master, 0, &tensors);
            return Ok(());
        }
        let kind = self.compute_kind();
        for (start, len) in s.layout.buckets(self.bucket_elems) {
            let input = s.master.narrow(0, start, len).to_kind(kind).contiguous();
            let out = Tensor::zeros([parts * len], (kind, s.master.device()));
            self.comm.all_gather(&input, &out)?;
            for r in 0..parts {
                s.layout
                    .scatter_from(&out.narrow(0, r * len, len), r * s.layout.shard + start, &tensors);
            }
        }
        Ok(())
    }

    /// The master weights of all parameters (name, tensor of the parameter's shape, in the
    /// masters' dtype), gathered from every rank's shard: the precise weights of the run, of
    /// which the compute weights are a rounding. A collective when the state is sharded.
    pub fn master_params(&mut self) -> Result<Vec<(String, Tensor)>, TrainError> {
        self.ensure_state()?;
        let _g = tch::no_grad_guard();
        let s = self.state.as_ref().expect("state built");
        let kind = s.master.kind();
        let device = s.master.device();
        let mut full = Tensor::zeros([s.layout.shard * s.layout.partitions], (kind, device));
        if s.layout.partitions == 1 {
            full.copy_(&s.master);
        } else {
            self.comm.all_gather(&s.master, &full)?;
        }
        let out: Vec<(String, Tensor)> = self
            .params
            .iter()
            .map(|(n, p)| (n.clone(), Tensor::zeros(p.size(), (kind, device))))
            .collect();
        let tensors: Vec<Tensor> = out.iter().map(|(_, t)| t.shallow_clone()).collect();
        s.layout.scatter_from(&full, 0, &tensors);
        Ok(out)
    }

    /// Writes this rank's part of the optimizer state into `ckpt/optimizer/`: its shard
    /// (`master`, `exp_avg`, `exp_avg_sq`) as `rank-PPPPP-of-NNNNN.safetensors` (with replicated
    /// state only rank 0 writes), and, on rank 0, `layout.json`. The caller makes the
    /// directory complete on every rank before it publishes it.
    /// This rank's optimizer state (its partition of the fp32 masters and AdamW moments), for
    /// finiteness checks; empty before the first step builds it.
    pub fn shard_state(&self) -> Vec<(String, Tensor)> {
        match &self.state {
            Some(s) => vec![
                ("master".into(), s.master.shallow_clone()),
                ("exp_avg".into(), s.exp_avg.shallow_clone()),
                ("exp_avg_sq".into(), s.exp_avg_sq.shallow_clone()),
            ],
            None => Vec::new(),
        }
    }

    pub fn save_shard(&self, ckpt: &Path) -> Result<(), TrainError> {
        let fresh;
        let s = match &self.state {
            Some(s) => s,
            None => {
                fresh = self.build_state()?;
                &fresh
            }
        };
        let parts = s.layout.partitions as usize;
        if parts == 1 && !self.comm.is_main() {
            return Ok(());
        }
        let dir = ckpt.join(zero::OPTIMIZER_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| TrainError::Io {
            path: dir.clone(),
            source: e,
        })?;
        crate::checkpoint::write_safetensors(
            &zero::shard_path(ckpt, s.part, parts),
            &[
                ("master".to_string(), s.master.shallow_clone()),
                ("exp_avg".to_string(), s.exp_avg.shallow_clone()),
                ("exp_avg_sq".to_string(), s.exp_avg_sq.shallow_clone()),
            ],
        )?;
        if self.comm.is_main() {
            let file = ShardedLayoutFile {
                params: s
                    .layout
                    .names
                    .iter()
                    .cloned()
                    .zip(s.layout.shapes.iter().cloned())
                    .collect(),
                numel: s.layout.numel,
                partitions: s.layout.partitions,
                shard: s.layout.shard,
                zero_stage: self.stage.index(),
                world_size: self.comm.world_size(),
                master_dtype: zero::kind_name(s.master.kind()).to_string(),
            };
            let path = zero::layout_path(ckpt);
            let json = serde_json::to_string_pretty(&file).expect("serialisable layout");
            std::fs::write(&path, json).map_err(|e| TrainError::Io { path, source: e })?;
        }
        Ok(())
    }

    /// Restores what [`AdamW::save_shard`] wrote, with any number of partitions: this rank's
    /// range is cut from the saved ranges it overlaps (re-sharding when the world size or
    /// stage changed). The parameter list must be the one saved.
    pub fn load_shards(&mut self, ckpt: &Path, steps: i64) -> Result<(), TrainError> {
        self.ensure_state()?;
        let _g = tch::no_grad_guard();
        let layout_file = zero::layout_path(ckpt);
        let bad = |path: &Path, detail: String| TrainError::OptimizerMismatch {
            path: path.to_path_buf(),
            detail,
        };
        let text =
            std::fs::read_to_string(&layout_file).map_err(|source| TrainError::MissingOptimizerShards {
                path: layout_file.clone(),
                source,
            })?;
        let saved: ShardedLayoutFile = serde_json::from_str(&text).map_err(|source| TrainError::Json {
            path: layout_file.clone(),
            source,
        })?;
        let s = self.state.as_mut().expect("state built");
        let mine: Vec<(String, Vec<i64>)> = s
            .layout
            .names
            .iter()
            .cloned()
            .zip(s.layout.shapes.iter().cloned())
            .collect();
        if saved.params != mine {
            let first = saved
                .params
                .iter()
                .zip(&mine)
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("saved {} {:?}, training {} {:?}", a.0, a.1, b.0, b.1))
                .unwrap_or_else(|| format!("saved {} tensors, training {}", saved.params.len(), mine.len()));
            return Err(bad(
                &layout_file,
                format!("the trainable parameters differ from the checkpoint's ({first})"),
            ));
        }
        let (lo, hi) = s.layout.range(s.part);
        let hi = hi.min(s.layout.numel);
        for q in 0..saved.partitions {
            let (qlo, qhi) = (q * saved.shard, ((q + 1) * saved.shard).min(saved.numel));
            let (a, b) = (lo.max(qlo), hi.min(qhi));
            if a >= b {
                continue;
            }
            let path = zero::shard_path(ckpt, q as usize, saved.partitions as usize);
            let tensors = crate::checkpoint::read_safetensors(&path)?;
            for (key, dst) in [
                ("master", &s.master),
                ("exp_avg", &s.exp_avg),
                ("exp_avg_sq", &s.exp_avg_sq),
            ] {
                let src = tensors
                    .get(key)
                    .ok_or_else(|| bad(&path, format!("no `{key}` tensor")))?;
                if src.size() != [saved.shard] {
                    return Err(bad(
                        &path,
                        format!(
                            "`{key}` has shape {:?}, the layout says [{}]",
                            src.size(),
                            saved.shard
                        ),
                    ));
                }
                dst.narrow(0, a - lo, b - a)
                    .copy_(&src.narrow(0, a - qlo, b - a).to_device(dst.device()));
            }
        }
        let _ = s.grad.zero_();
        s.folded = 0;
        s.reduced = false;
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
            opt.step(lr).unwrap();
            want *= 1.0 - lr * wd;
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let denom = (v.sqrt() / (1.0 - b2.powi(t)).sqrt()) + eps;
            want -= lr / (1.0 - b1.powi(t)) * m / denom;
            let got = p.double_value(&[0]);
            assert!((got - want).abs() < 1e-6, "step {t}: {got} vs {want}");
        }
        // Saved and restored state continues identically.
        let dir = std::env::temp_dir().join(format!("armt-adamw-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        opt.save_shard(&dir).unwrap();
        let q = p.detach().copy().set_requires_grad(true);
        let mut opt2 = AdamW::new(vec![("p".into(), q.shallow_clone())], AdamWConfig::default());
        opt2.load_shards(&dir, opt.steps).unwrap();
        for (o, x) in [(&mut opt, &p), (&mut opt2, &q)] {
            o.zero_grad();
            (x * 0.3).sum(Kind::Float).backward();
            o.step(lr).unwrap();
        }
        assert_eq!(p.double_value(&[0]), q.double_value(&[0]));
        // Another parameter list is refused, naming the difference.
        let r = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let mut opt3 = AdamW::new(vec![("p".into(), r)], AdamWConfig::default());
        let err = opt3.load_shards(&dir, 1).unwrap_err().to_string();
        assert!(err.contains("layout.json") && err.contains("[2]"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let p = Tensor::from_slice(&[0.0f32, 0.0]).set_requires_grad(true);
        let mut opt = AdamW::new(vec![("p".into(), p.shallow_clone())], AdamWConfig::default());
        (&p * Tensor::from_slice(&[3.0f32, 4.0]))
            .sum(Kind::Float)
            .backward();
        opt.accumulate_grads().unwrap();
        let before = opt.clip_grad_norm(1.0).unwrap();
        assert!((before - 5.0).abs() < 1e-6);
        assert!((opt.grad_norm().unwrap() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn micro_batches_accumulate_in_f32_not_in_the_compute_dtype() {
        // bf16 has 8 significant bits: 256 + 1 rounds to 256. Gradients 256 then 1 (two
        // micro-batches) must sum to 257, which only an fp32 accumulator keeps.
        let p = Tensor::from_slice(&[0.0f32])
            .to_kind(Kind::BFloat16)
            .set_requires_grad(true);
        let mut opt = AdamW::new(vec![("p".into(), p.shallow_clone())], AdamWConfig::default());
        opt.zero_grad();
        for g in [256.0, 1.0] {
            (&p * g).sum(Kind::Float).backward();
            opt.accumulate_grads().unwrap();
        }
        assert_eq!(opt.grad_norm().unwrap(), 257.0);
        // Without the explicit call, autograd sums in bf16 and the 1 is lost (what the fold in
        // clip_grad_norm then sees).
        opt.zero_grad();
        for g in [256.0, 1.0] {
            (&p * g).sum(Kind::Float).backward();
        }
        assert_eq!(opt.grad_norm().unwrap(), 256.0);
    }
}
