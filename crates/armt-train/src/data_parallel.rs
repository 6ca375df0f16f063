//! Data parallelism for the trainers: each rank takes a contiguous block of the step's prompts
//! (whole GRPO groups, so advantages stay local), and everything that makes N ranks compute one
//! process's update on the whole batch goes through here: global loss normalisers, the same
//! number of optimizer updates and micro-batches on every rank, agreement on stopping (a
//! non-finite loss anywhere, Ctrl-C anywhere), and metrics over every rank's rollouts. The
//! gradient sum itself is the optimizer's (`AdamW::clip_grad_norm`).
//!
//! Side effects that must happen once per job (metrics, console, checkpoints' model files) are
//! gated on [`DataParallel::is_main`].

use crate::TrainError;
use armt_data::Trajectory;
use armt_dist::{Communicator, ReduceOp, SingleProcess};
use armt_grpo::PolicyLossMetrics;
use armt_rewards::RewardBreakdown;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::ops::Range;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// The process group as the trainers use it.
#[derive(Clone)]
pub struct DataParallel {
    comm: Arc<dyn Communicator>,
    /// Where small collective buffers live (NCCL needs them on the group's GPU).
    device: Device,
}

impl DataParallel {
    pub fn new(comm: Arc<dyn Communicator>, device: Device) -> Self {
        Self { comm, device }
    }

    pub fn single() -> Self {
        Self::new(Arc::new(SingleProcess), Device::Cpu)
    }

    pub fn comm(&self) -> Arc<dyn Communicator> {
        self.comm.clone()
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    pub fn is_main(&self) -> bool {
        self.comm.is_main()
    }

    /// The block of `0..total` this rank owns (`total` divisible by the world size, which the
    /// trainers check up front with [`DataParallel::check_divides`]).
    pub fn shard(&self, total: usize) -> Range<usize> {
        let per = total / self.world_size();
        self.rank() * per..(self.rank() + 1) * per
    }

    /// `what = total` must split evenly over the ranks.
    pub fn check_divides(&self, what: &str, total: usize) -> Result<(), TrainError> {
        if !total.is_multiple_of(self.world_size()) {
            return Err(TrainError::NotDivisible {
                what: what.to_string(),
                total,
                world_size: self.world_size(),
            });
        }
        Ok(())
    }

    fn reduce_f64(&self, values: &[f64], op: ReduceOp) -> Result<Vec<f64>, TrainError> {
        // Through the group even for one rank (an identity then), so a one-rank group of a
        // real backend exercises it every step.
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let t = Tensor::from_slice(values).to_device(self.device);
        self.comm.all_reduce(&t, op)?;
        Ok(Vec::<f64>::try_from(t.to_device(Device::Cpu))?)
    }

    /// Elementwise sums over ranks (f64: exact for counts).
    pub fn sum(&self, values: &[f64]) -> Result<Vec<f64>, TrainError> {
        self.reduce_f64(values, ReduceOp::Sum)
    }

    pub fn max_usize(&self, value: usize) -> Result<usize, TrainError> {
        Ok(self.reduce_f64(&[value as f64], ReduceOp::Max)?[0] as usize)
    }

    /// True on every rank when `flag` is true on any.
    pub fn any(&self, flag: bool) -> Result<bool, TrainError> {
        Ok(self.reduce_f64(&[if flag { 1.0 } else { 0.0 }], ReduceOp::Max)?[0] > 0.0)
    }

    pub fn barrier(&self) -> Result<(), TrainError> {
        Ok(self.comm.barrier()?)
    }

    /// Every rank's `bytes`, in rank order (lengths first, then the padded payloads).
    pub fn all_gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, TrainError> {
        let w = self.world_size();
        if w == 1 {
            return Ok(vec![bytes.to_vec()]);
        }
        let len = Tensor::from_slice(&[bytes.len() as i64]).to_device(self.device);
        let lens = Tensor::zeros([w as i64], (Kind::Int64, self.device));
        self.comm.all_gather(&len, &lens)?;
        let lens: Vec<i64> = Vec::try_from(lens.to_device(Device::Cpu))?;
        let max = lens.iter().copied().max().unwrap_or(0).max(1);
        let mut padded = bytes.to_vec();
        padded.resize(max as usize, 0);
        let input = Tensor::from_slice(&padded).to_device(self.device);
        let output = Tensor::zeros([w as i64 * max], (Kind::Uint8, self.device));
        self.comm.all_gather(&input, &output)?;
        let all: Vec<u8> = Vec::try_from(output.to_device(Device::Cpu))?;
        Ok((0..w)
            .map(|r| all[r * max as usize..r * max as usize + lens[r] as usize].to_vec())
            .collect())
    }

    /// Every rank's `items`, concatenated in rank order.
    pub fn all_gather_items<T: Serialize + DeserializeOwned + Clone>(
        &self,
        items: &[T],
    ) -> Result<Vec<T>, TrainError> {
        if self.world_size() == 1 {
            return Ok(items.to_vec());
        }
        let bytes = serde_json::to_vec(items).map_err(|source| TrainError::Gather { rank: None, source })?;
        let mut out = Vec::new();
        for (r, b) in self.all_gather_bytes(&bytes)?.iter().enumerate() {
            let part: Vec<T> = serde_json::from_slice(b).map_err(|source| TrainError::Gather {
                rank: Some(r),
                source,
            })?;
            out.extend(part);
        }
        Ok(out)
    }

    /// Stops every rank with the same error when `bad` (a non-finite value of `quantity`) is
    /// set on any: all ranks call it at the same point, so none waits for a rank that left.
    pub fn agree_finite(&self, step: usize, quantity: &str, bad: Option<f64>) -> Result<(), TrainError> {
        let w = self.world_size();
        if w == 1 {
            return match bad {
                Some(value) => Err(TrainError::NonFinite {
                    step,
                    quantity: quantity.to_string(),
                    value,
                }),
                None => Ok(()),
            };
        }
        // Slot r holds (flag, value) of rank r; zeros elsewhere, so a sum gathers them (a NaN
        // or infinity survives adding zeros).
        let mut slots = vec![0.0; 2 * w];
        if let Some(v) = bad {
            slots[2 * self.rank()] = 1.0;
            slots[2 * self.rank() + 1] = v;
        }
        let all = self.sum(&slots)?;
        match (0..w).find(|&r| all[2 * r] > 0.0) {
            Some(r) => Err(TrainError::NonFinite {
                step,
                quantity: format!("{quantity} on rank {r}"),
                value: all[2 * r + 1],
            }),
            None => Ok(()),
        }
    }

    /// The loss value to check, with a test hook: `ARMT_TEST_NAN_AT=PHASE:RANK:STEP` (PHASE
    /// `sft` or `grpo`) makes that rank's loss at that step NaN, to test that every rank stops
    /// with the message.
    pub fn checked_loss(&self, phase: &str, step: usize, loss: f64) -> f64 {
        match std::env::var("ARMT_TEST_NAN_AT") {
            Ok(v) if v == format!("{phase}:{}:{step}", self.rank()) => f64::NAN,
            _ => loss,
        }
    }

    /// Whether to stop after this step: a stop asked for on any rank stops all (after saving).
    pub fn agree_stop(&self, local: bool) -> Result<bool, TrainError> {
        self.any(local)
    }

    /// The end of a trainer's collectives: every rank has finished its last step. (The
    /// command marks the whole process group done with `armt_dist::nccl::mark_finished` once
    /// its last trainer returns: a cold start is followed by GRPO in the same group.)
    pub fn finish(&self) -> Result<(), TrainError> {
        self.barrier()
    }
}

/// `len` local examples as exactly `mini_batches` consecutive ranges (some possibly empty), so
/// every rank runs the same number of optimizer updates; with one rank the non-empty ranges
/// are the chunks of `ceil(len / mini_batches)` the trainer always used.
pub fn mini_batch_ranges(len: usize, mini_batches: usize) -> Vec<Range<usize>> {
    let per = len.div_ceil(mini_batches.max(1)).max(1);
    (0..mini_batches.max(1))
        .map(|k| (k * per).min(len)..((k + 1) * per).min(len))
        .collect()
}

/// What the metrics of one GRPO step are computed from: every rank's rollouts (with the
/// per-token arrays the metrics do not read left out), rewards and loss statistics.
pub struct StepRecords {
    pub trajectories: Vec<Trajectory>,
    pub rewards: Vec<RewardBreakdown>,
    pub policy_stats: Vec<PolicyLossMetrics>,
    /// Rollouts kept for the update / all rollouts, over all ranks.
    pub kept: usize,
    pub total: usize,
}

impl DataParallel {
    pub fn gather_step(
        &self,
        trajectories: impl Iterator<Item = Trajectory>,
        rewards: &[RewardBreakdown],
        policy_stats: &[PolicyLossMetrics],
        kept: usize,
    ) -> Result<StepRecords, TrainError> {
        let local: Vec<Trajectory> = trajectories
            .map(|mut t| {
                if self.world_size() > 1 {
                    t.logprobs = Vec::new();
                    t.loss_mask = Vec::new();
                }
                t
            })
            .collect();
        let total = local.len();
        let counts = self.sum(&[kept as f64, total as f64])?;
        Ok(StepRecords {
            trajectories: self.all_gather_items(&local)?,
            rewards: self.all_gather_items(rewards)?,
            policy_stats: self.all_gather_items(policy_stats)?,
            kept: counts[0] as usize,
            total: counts[1] as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mini_batches_are_padded_to_the_configured_count() {
        assert_eq!(mini_batch_ranges(16, 4), vec![0..4, 4..8, 8..12, 12..16]);
        assert_eq!(mini_batch_ranges(10, 4), vec![0..3, 3..6, 6..9, 9..10]);
        assert_eq!(mini_batch_ranges(5, 4), vec![0..2, 2..4, 4..5, 5..5]);
        assert_eq!(mini_batch_ranges(0, 2), vec![0..0, 0..0]);
        assert_eq!(mini_batch_ranges(7, 1), vec![0..7]);
    }

    #[test]
    fn single_process_agreement_is_local() {
        let dp = DataParallel::single();
        assert_eq!(dp.shard(8), 0..8);
        assert!(dp.agree_finite(3, "the loss", None).is_ok());
        let e = dp
            .agree_finite(3, "the loss", Some(f64::NAN))
            .unwrap_err()
            .to_string();
        assert!(e.contains("step 3") && e.contains("the loss is NaN"), "{e}");
        assert_eq!(dp.sum(&[1.0, 2.0]).unwrap(), vec![1.0, 2.0]);
        assert!(!dp.any(false).unwrap());
        let items = dp.all_gather_items(&[1u32, 2]).unwrap();
        assert_eq!(items, vec![1, 2]);
    }
}
