//! armt's trainers: cold-start SFT on tool-use trajectories and GRPO in two reward stages, with
//! checkpoints that resume exactly and metrics logged as JSONL, TensorBoard and PNG plots.

mod batch;
pub mod builtin;
pub mod checkpoint;
mod config;
pub mod data_parallel;
pub mod finite;
mod grpo_trainer;
mod mixed_precision;
mod optimizer;
mod policy_logprobs;
pub mod prompt_filter;
pub mod resume_check;
pub mod run_lock;
mod sft;
pub mod sft_llamafactory;
pub mod signals;
pub mod validate;
pub mod validation;
mod zero;

pub use batch::{token_logprobs, Example};
pub use config::{
    DataSection, DistSection, LoopSection, ModelSection, OptimSection, SftSection, ToolsSection, TrainConfig,
};
pub use grpo_trainer::{train_grpo, GrpoRun};
pub use mixed_precision::MasterDtype;
pub use optimizer::{AdamW, AdamWConfig};
pub use policy_logprobs::{logprobs_rows_no_grad, policy_logprobs, PolicyLogprobs};
pub use sft::{examples_from_trajectories, train_sft, SftRun};
pub use zero::ZeroStage;

use armt_rollout::SplitMix64;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("cannot access {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("bad config: {0}")]
    Config(String),
    #[error("{0}")]
    State(String),
    /// A NaN or infinite loss or gradient: the step was not applied and nothing was saved.
    #[error(
        "step {step}: {quantity} is {value} — stopping before the update; the last checkpoint is intact"
    )]
    NonFinite {
        step: usize,
        quantity: String,
        value: f64,
    },
    /// A save found a NaN/inf in the weights or optimizer state: nothing was written.
    #[error("step {step}: not saving a checkpoint: {bad}; {last_good}")]
    NonFiniteState {
        step: usize,
        bad: String,
        last_good: String,
    },
    /// A checkpoint that fails its checks when loaded.
    #[error("checkpoint {path} is damaged: {detail}; {last_good}")]
    DamagedCheckpoint {
        path: PathBuf,
        detail: String,
        last_good: String,
    },
    #[error(transparent)]
    RunLock(#[from] run_lock::RunLockError),
    #[error(transparent)]
    Model(#[from] armt_model::ModelError),
    #[error(transparent)]
    Processing(#[from] armt_processing::ProcessingError),
    #[error(transparent)]
    Rollout(#[from] armt_rollout::RolloutError),
    #[error(transparent)]
    Grpo(#[from] armt_grpo::GrpoError),
    #[error(transparent)]
    Reward(#[from] armt_rewards::RewardError),
    #[error(transparent)]
    Tools(#[from] armt_tools::ToolError),
    #[error(transparent)]
    Data(#[from] armt_data::DataError),
    #[error(transparent)]
    Metrics(#[from] armt_metrics::MetricsError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A collective of the process group failed (another rank left, or bad arguments).
    #[error(transparent)]
    Dist(#[from] armt_dist::DistError),
}

/// Epoch-wise shuffled order over `n` items; the position (epoch, index) is all a checkpoint
/// needs, since each epoch's permutation is a function of the seed and the epoch.
#[derive(Debug, Clone)]
pub struct DataLoader {
    n: usize,
    seed: u64,
    pub epoch: u64,
    pub index: usize,
    perm: Vec<usize>,
}

impl DataLoader {
    pub fn new(n: usize, seed: u64, epoch: u64, index: usize) -> Self {
        let mut d = Self {
            n,
            seed,
            epoch,
            index,
            perm: Vec::new(),
        };
        d.perm = d.permutation(epoch);
        d
    }

    fn permutation(&self, epoch: u64) -> Vec<usize> {
        let mut rng = SplitMix64(self.seed ^ epoch.wrapping_mul(0xA24B_AED4_963E_E407));
        let mut p: Vec<usize> = (0..self.n).collect();
        for i in (1..p.len()).rev() {
            let j = (rng.next_u64() % (i as u64 + 1)) as usize;
            p.swap(i, j);
        }
        p
    }

    /// The next `k` indices (crossing into the next epoch when this one runs out).
    pub fn next_batch(&mut self, k: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(k);
        while out.len() < k && self.n > 0 {
            if self.index >= self.n {
                self.epoch += 1;
                self.index = 0;
                self.perm = self.permutation(self.epoch);
            }
            out.push(self.perm[self.index]);
            self.index += 1;
        }
        out
    }
}

pub use signals::{request_stop, stop_reason, STOP_REQUESTED};

/// Installs the handler for Ctrl-C, SIGTERM and SIGHUP (once per process): see [`signals`].
pub fn install_ctrlc_handler() {
    signals::install();
}

pub(crate) fn stop_requested() -> bool {
    signals::stop_requested()
}

/// A seed for step `step` of a run seeded `seed`.
pub(crate) fn step_seed(seed: u64, step: usize) -> u64 {
    SplitMix64(seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loader_resumes_at_its_position() {
        let mut a = DataLoader::new(5, 9, 0, 0);
        let first: Vec<usize> = (0..4).flat_map(|_| a.next_batch(3)).collect();
        let mut b = DataLoader::new(5, 9, 0, 0);
        let mut head = b.next_batch(3);
        head.extend(b.next_batch(3));
        let mut c = DataLoader::new(5, 9, b.epoch, b.index);
        head.extend(c.next_batch(3));
        head.extend(c.next_batch(3));
        assert_eq!(first, head);
        // Each epoch is a permutation.
        let mut e0: Vec<usize> = first[..5].to_vec();
        e0.sort();
        assert_eq!(e0, vec![0, 1, 2, 3, 4]);
    }
}
