//! armt's trainers: cold-start SFT on tool-use trajectories and GRPO in two reward stages, with
//! checkpoints that resume exactly and metrics logged as JSONL, TensorBoard and PNG plots.

mod batch;
pub mod builtin;
pub mod checkpoint;
mod config;
pub mod data_fingerprint;
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
    BuiltinSection, DataSection, DistSection, InvalidSetting, LoopSection, ModelSection, OptimSection,
    OverrideError, SftSection, ToolsSection, TrainConfig,
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
    /// A config's TOML (file, or one saved in a checkpoint) does not parse or does not fit the
    /// config's shape; `origin` names it.
    #[error("bad config: {origin}: {}", source.to_string().trim())]
    ConfigSyntax {
        origin: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("bad config: override `{assignment}`: {source}")]
    BadOverride {
        assignment: String,
        #[source]
        source: config::OverrideError,
    },
    #[error("bad config: {0}")]
    Setting(#[from] config::InvalidSetting),
    /// Settings outside what they accept or that contradict each other, each named with its
    /// value and what it must be.
    #[error("bad config: {}", problems.join("; "))]
    InvalidSettings { problems: Vec<String> },
    /// `what` (e.g. `sft.batch`) does not split evenly over the data-parallel ranks.
    #[error(
        "bad config: {what} = {total} does not split over {world_size} ranks: make it a multiple of the world size"
    )]
    NotDivisible {
        what: String,
        total: usize,
        world_size: usize,
    },
    /// The tool config offers no tools at all.
    #[error("bad config: {origin} defines no tools: the tool rewards could never be earned")]
    NoTools { origin: String },
    /// Task kinds in the data without any of their tools in the tool config.
    #[error("bad config: {}", problems.join("; "))]
    ToolsMissingForTasks { problems: Vec<String> },
    /// Nothing to train on (`what`: "SFT examples", "training samples").
    #[error("bad config: no {what}")]
    NothingToTrain { what: &'static str },
    /// Every training prompt is longer than a rollout can hold (they are filtered out up front).
    #[error(
        "bad config: all {total} training prompts are too long for rollout.max_context / max_batch_tokens"
    )]
    AllPromptsTooLong { total: usize },
    #[error("bad config: {}: no samples", path.display())]
    NoSamples { path: PathBuf },
    /// `--resume` names a checkpoint of another kind of run.
    #[error(
        "bad config: --resume {}: it is {checkpoint_kind}, but this run is {run_kind}; a checkpoint can only continue its own kind of run \
         (to start {phase} from it, set model.path={} and a new train.run_dir)",
        ckpt.display(),
        ckpt.display()
    )]
    ResumeOtherRun {
        ckpt: PathBuf,
        checkpoint_kind: String,
        run_kind: String,
        phase: String,
    },
    /// The config saved in the `--resume` checkpoint no longer loads.
    #[error(
        "bad config: --resume {}: its saved config cannot be compared with this one ({source}); pass {flag} to resume anyway",
        ckpt.display(),
        flag = resume_check::ALLOW_FLAG
    )]
    ResumeConfigUnreadable {
        ckpt: PathBuf,
        #[source]
        source: Box<TrainError>,
    },
    /// Settings that differ from the `--resume` checkpoint's and change the run.
    #[error(
        "bad config: --resume {}: these settings differ from the checkpoint's and would change the run: {}. \
         Restore them, or pass {flag} if the change is meant (steps, save cadence and device may change freely)",
        ckpt.display(),
        changes.join("; "),
        flag = resume_check::ALLOW_FLAG
    )]
    ResumeChanged { ckpt: PathBuf, changes: Vec<String> },
    /// A stop signal ended the run after it saved a checkpoint (`what`: "step", "SFT step").
    #[error("interrupted at {what} {step} by {signal}; resume with --resume={}", checkpoint.display())]
    Interrupted {
        what: &'static str,
        step: usize,
        signal: &'static str,
        checkpoint: PathBuf,
    },
    /// A stop signal arrived during step `step` (1-based); the state before it was saved.
    #[error(
        "interrupted by {signal} during step {step}, which was abandoned; resume with --resume={}",
        checkpoint.display()
    )]
    InterruptedMidStep {
        signal: &'static str,
        step: usize,
        checkpoint: PathBuf,
    },
    #[error("interrupted by {signal} during the first step; nothing to save, start again")]
    InterruptedFirstStep { signal: &'static str },
    /// A run that ended without writing a checkpoint (no step ran).
    #[error("no checkpoint written")]
    NoCheckpointWritten,
    /// A JSON file of a checkpoint (trainer state, optimizer layout) does not parse.
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("reading {}: {source}", path.display())]
    ReadSafetensors {
        path: PathBuf,
        #[source]
        source: tch::TchError,
    },
    #[error("writing {}: {source}", path.display())]
    WriteSafetensors {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// A tensor whose dtype checkpoints do not store.
    #[error("cannot save {name}: dtype {kind:?}")]
    UnsavableDtype { name: String, kind: tch::Kind },
    /// The saved optimizer shards cannot be read (a checkpoint without them cannot be resumed
    /// exactly).
    #[error(
        "{}: {source} (a checkpoint without sharded optimizer state cannot be resumed exactly)",
        path.display()
    )]
    MissingOptimizerShards {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Saved optimizer state that does not fit the parameters being trained.
    #[error("{}: {detail}", path.display())]
    OptimizerMismatch { path: PathBuf, detail: String },
    /// Ranks exchanging items (`rank` None: encoding this rank's own).
    #[error("gathering{}: {source}", rank.map(|r| format!(" from rank {r}")).unwrap_or_default())]
    Gather {
        rank: Option<usize>,
        #[source]
        source: serde_json::Error,
    },
    /// An image of a trajectory used for SFT cannot be opened.
    #[error("trajectory {sample_id}/{group_index}: image {key} ({}): {source}", path.display())]
    TrajectoryImage {
        sample_id: String,
        group_index: usize,
        key: String,
        path: PathBuf,
        #[source]
        source: Box<image::ImageError>,
    },
    /// A LLaMA-Factory conversation that does not make an SFT example.
    #[error("SFT conversation {id}: {source}")]
    SftConversation {
        id: String,
        #[source]
        source: Box<sft_llamafactory::SftExampleError>,
    },
    #[error("a training sequence needs at least 2 tokens")]
    SequenceTooShort,
    /// No built-in task set has been prepared under `root`.
    #[error("no built-in task set under {}: run `armt train --stage 1` first", root.display())]
    NoBuiltin { root: PathBuf },
    /// Generating the built-in default's tasks or tiny model failed.
    #[error("built-in default: {source}")]
    Builtin {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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
    /// A checkpoint whose optimizer state cannot be loaded (`source` says why).
    #[error("checkpoint {} is damaged: {source}; {last_good}", path.display())]
    DamagedOptimizerState {
        path: PathBuf,
        #[source]
        source: Box<TrainError>,
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
