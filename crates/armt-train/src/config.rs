//! The training config: a TOML file (see `configs/`) with dotted `key=value` overrides from the
//! command line, as verl/Hydra users write them (`rollout.n=8 optim.lr=1e-6`). Unknown keys are
//! errors that list the valid ones.

use crate::optimizer::AdamWConfig;
use crate::TrainError;
use armt_grpo::GrpoConfig;
use armt_rewards::RewardConfig;
use armt_rollout::RolloutConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// Checkpoint directory; empty: the built-in tiny default (or the previous stage's result).
    pub path: Option<PathBuf>,
    /// cpu, cuda, cuda:N (default: cuda if available).
    pub device: Option<String>,
    /// f32 or bf16 (default: f32 on CPU, bf16 on CUDA).
    pub dtype: Option<String>,
    /// Keep the vision tower and merger fixed (ARM-Thinker's cold start does).
    pub freeze_vision: bool,
    /// Recompute decoder layers and vision blocks in the backward instead of keeping their
    /// activations (training memory per token: ~7 MB → ~0.2 MB at 7B).
    pub grad_checkpointing: bool,
    /// Upper bound on an image's pixels (overrides `preprocessor_config.json`; the hub's value
    /// allows 16k tokens per image).
    pub max_pixels: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    /// Training samples (JSONL); empty: the built-in synthetic task set.
    pub train: Option<PathBuf>,
    /// Held-out samples for evaluation.
    pub val: Option<PathBuf>,
    /// Cold-start (SFT) trajectories (JSONL written by `armt rollout`).
    pub sft: Option<PathBuf>,
    /// How ARM-Thinker parquet / ARMBench-VL files become samples (image roots, source → task).
    pub formats: armt_data::FormatOptions,
    /// Training prompts longer than this many tokens are dropped before the first step (verl's
    /// `data.max_prompt_length` with `filter_overlong_prompts`). 0: only prompts the rollout
    /// could never run (not below `rollout.max_context`, or over `rollout.max_batch_tokens`),
    /// which are dropped in any case.
    pub max_prompt_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsSection {
    pub config: PathBuf,
}

impl Default for ToolsSection {
    fn default() -> Self {
        Self {
            config: PathBuf::from("configs/tools/all.yaml"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimSection {
    pub lr: f64,
    pub warmup_steps: usize,
    /// "constant" or "cosine".
    pub schedule: String,
    pub min_lr_ratio: f64,
    /// Gradient-norm clip (0: off).
    pub grad_clip: f64,
    pub adamw: AdamWConfig,
    /// Master weights' dtype: unset or "f32" (fp32 masters, DeepSpeed/FSDP mixed precision),
    /// or "none" (the compute dtype: updates below half a bf16 step are lost).
    pub master_dtype: Option<String>,
}

impl Default for OptimSection {
    fn default() -> Self {
        // ARM-Thinker GRPO: lr 2e-6, constant, clip 1.0.
        Self {
            lr: 2e-6,
            warmup_steps: 0,
            schedule: "constant".into(),
            min_lr_ratio: 0.0,
            grad_clip: 1.0,
            adamw: AdamWConfig::default(),
            master_dtype: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoopSection {
    /// GRPO steps (one rollout batch each).
    pub steps: usize,
    /// Prompts per step; each gets `rollout.n` rollouts.
    pub prompts_per_step: usize,
    /// Optimizer updates per rollout batch: the batch is split into this many mini-batches.
    pub mini_batches: usize,
    /// Passes over each rollout batch (PPO epochs); old log-probs are computed once.
    pub ppo_epochs: usize,
    /// Sequences per forward/backward (gradient accumulation over a mini-batch).
    pub micro_batch: usize,
    /// Checkpoint every N steps (and at the end).
    pub save_every: usize,
    /// Checkpoints kept.
    pub keep_last: usize,
    /// Where checkpoints, metrics and TensorBoard files go.
    pub run_dir: PathBuf,
    pub seed: u64,
    /// Loss positions per LM-head chunk when computing log-probs (peak memory chunk × vocab).
    #[serde(alias = "logprob_chunk")]
    pub logit_chunk: i64,
    /// Sequences per forward of the no-grad old-policy and reference log-prob passes (they keep
    /// no activations, so more fit than in a training micro-batch); default 2 × micro_batch.
    pub logprob_micro_batch: Option<usize>,
    /// ZeRO stage of the data-parallel optimizer (0: replicated, 1: sharded optimizer state and
    /// masters, 2: gradients too); `armt plan` divides the sharded state by the GPU count.
    pub zero_stage: u8,
    /// Greedy validation on `data.val` every N steps and at the last step, logged as `val/*`
    /// (verl's `test_freq`); 0: off.
    pub val_every: usize,
}

impl Default for LoopSection {
    fn default() -> Self {
        Self {
            steps: 100,
            prompts_per_step: 8,
            mini_batches: 1,
            ppo_epochs: 1,
            micro_batch: 4,
            save_every: 10,
            keep_last: 3,
            run_dir: PathBuf::from("runs/train"),
            seed: 1,
            logit_chunk: 512,
            logprob_micro_batch: None,
            zero_stage: 0,
            val_every: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftSection {
    pub steps: usize,
    pub lr: f64,
    /// Sequences per optimizer step.
    pub batch: usize,
    pub micro_batch: usize,
    pub warmup_steps: usize,
}

impl Default for SftSection {
    fn default() -> Self {
        // ARM-Thinker's cold start: lr 1e-5 (LLaMA-Factory), cosine.
        Self {
            steps: 100,
            lr: 1e-5,
            batch: 16,
            micro_batch: 4,
            warmup_steps: 0,
        }
    }
}

/// The built-in default's task set and cold-start data (used when neither `model.path` nor
/// `data.train` is set). A change of the task counts makes a new task set and model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BuiltinSection {
    /// Synthetic training tasks (the three kinds in turn).
    pub train_tasks: usize,
    /// Held-out tasks, for validation during training and `armt eval`.
    pub val_tasks: usize,
    /// Cold-start SFT steps on the tool-reading traces alone, before the `sft.steps` on the mix
    /// with the guesses: copying a tool's value into the verdict is learnt in a sudden step
    /// (once heads that look back form), which comes much later when most traces use no tool.
    pub read_steps: usize,
    /// Peak learning rate of the reading phase (the mixed phase uses `sft.lr`). Copying and
    /// comparing are learnt in sudden steps whose time varies with the seed; a higher rate
    /// brought the copying sooner but left the comparison half-learnt for two of three seeds.
    pub read_lr: f64,
    /// Cold-start traces per training task that call the task's tool and read its answer.
    pub direct_traces: usize,
    /// Cold-start traces per training task that answer without a tool (a random verdict), so
    /// that the cold-start model has seen how to read the tools but mostly does not call them.
    pub guess_traces: usize,
    /// The tiny model's decoder: layers, attention heads and key/value heads (hidden size 128;
    /// `heads` must divide 128 into an even head size, `kv_heads` must divide `heads`).
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
}

impl Default for BuiltinSection {
    fn default() -> Self {
        Self {
            train_tasks: 3000,
            val_tasks: 90,
            read_steps: 2500,
            read_lr: 2e-3,
            direct_traces: 2,
            guess_traces: 3,
            layers: 4,
            heads: 4,
            kv_heads: 2,
        }
    }
}

/// Data parallelism (ranks come from the launcher: torchrun or Slurm variables).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistSection {
    /// "auto" (NCCL when the model is on CUDA, TCP on the CPU), "nccl" or "tcp".
    pub backend: String,
    /// Seconds a rank waits for the others (rendezvous, a collective) before giving up; a rank
    /// that exits is noticed at once.
    pub timeout_s: u64,
}

impl Default for DistSection {
    fn default() -> Self {
        Self {
            backend: "auto".into(),
            timeout_s: 900,
        }
    }
}

/// The whole training config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// 1: tool-selection reward; 2: accuracy + tool efficiency.
    pub stage: u8,
    pub model: ModelSection,
    pub data: DataSection,
    pub tools: ToolsSection,
    pub rollout: RolloutConfig,
    pub reward: RewardConfig,
    pub grpo: GrpoConfig,
    pub optim: OptimSection,
    pub train: LoopSection,
    pub sft: SftSection,
    pub dist: DistSection,
    pub builtin: BuiltinSection,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            stage: 1,
            model: ModelSection::default(),
            data: DataSection::default(),
            tools: ToolsSection::default(),
            rollout: RolloutConfig::default(),
            reward: RewardConfig::default(),
            grpo: GrpoConfig::default(),
            optim: OptimSection::default(),
            train: LoopSection::default(),
            sft: SftSection::default(),
            dist: DistSection::default(),
            builtin: BuiltinSection::default(),
        }
    }
}

impl TrainConfig {
    /// Reads `path` (or the defaults when None) and applies `overrides` (`a.b.c=value`, the
    /// value parsed as TOML, else taken as a string).
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self, TrainError> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| TrainError::Io {
                    path: p.to_path_buf(),
                    source: e,
                })?;
                armt_data::validate::reject_bom(p, &text)?;
                Self::from_toml_str(&text, &p.display().to_string(), overrides)
            }
            None => Self::from_toml_str("", "<defaults>", overrides),
        }
    }

    /// Parses TOML text (`origin` names it in errors) and applies the overrides.
    pub fn from_toml_str(text: &str, origin: &str, overrides: &[String]) -> Result<Self, TrainError> {
        let syntax = |source| TrainError::ConfigSyntax {
            origin: origin.to_string(),
            source,
        };
        let mut root: toml::Value = toml::from_str(text).map_err(syntax)?;
        for o in overrides {
            apply_override(&mut root, o).map_err(|source| TrainError::BadOverride {
                assignment: o.clone(),
                source,
            })?;
        }
        let cfg: TrainConfig = root.try_into().map_err(syntax)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::InvalidSettings { problems: vec![m] });
        if self.stage != 1 && self.stage != 2 {
            return bad(format!("stage = {}: must be 1 or 2", self.stage));
        }
        if self.rollout.n < 2 {
            return bad(format!(
                "rollout.n = {}: GRPO needs groups of at least 2",
                self.rollout.n
            ));
        }
        let l = &self.train;
        if self.model.max_pixels.is_some_and(|m| m < 28 * 28) {
            return bad(format!(
                "model.max_pixels = {:?}: an image needs at least one 28×28 merge unit",
                self.model.max_pixels
            ));
        }
        if l.zero_stage > 2 {
            return bad(format!("train.zero_stage = {}: expected 0, 1 or 2", l.zero_stage));
        }
        if l.logit_chunk < 1 || l.logprob_micro_batch == Some(0) {
            return bad("train.logit_chunk and train.logprob_micro_batch must be >= 1".into());
        }
        if l.prompts_per_step == 0 || l.mini_batches == 0 || l.ppo_epochs == 0 || l.micro_batch == 0 {
            return bad(
                "train.prompts_per_step, mini_batches, ppo_epochs and micro_batch must be >= 1".into(),
            );
        }
        if !(l.prompts_per_step * self.rollout.n).is_multiple_of(l.mini_batches) {
            return bad(format!(
                "train.mini_batches = {} does not divide the {} rollouts of a step",
                l.mini_batches,
                l.prompts_per_step * self.rollout.n
            ));
        }
        if self.optim.schedule != "constant" && self.optim.schedule != "cosine" {
            return bad(format!(
                "optim.schedule = `{}`: expected constant or cosine",
                self.optim.schedule
            ));
        }
        crate::MasterDtype::parse(self.optim.master_dtype.as_deref())?;
        crate::ZeroStage::from_index(self.train.zero_stage)?;
        self.grpo.validate()?;
        self.reward.validate()?;
        crate::validate::check_config(self)?;
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

/// A setting whose value is outside what it accepts.
#[derive(Debug, thiserror::Error)]
#[error("{key} = `{value}`: expected {expected}")]
pub struct InvalidSetting {
    pub key: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// Why a `key.path=value` override cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    #[error("expected key.path=value")]
    NoEquals,
    #[error("`{0}` is not a table")]
    NotATable(String),
    #[error("empty key")]
    EmptyKey,
}

fn apply_override(root: &mut toml::Value, assignment: &str) -> Result<(), OverrideError> {
    let (key, raw) = assignment.split_once('=').ok_or(OverrideError::NoEquals)?;
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").unwrap(),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let parts: Vec<&str> = key.trim().split('.').collect();
    let mut cur = root;
    for (i, part) in parts.iter().enumerate() {
        let table = cur
            .as_table_mut()
            .ok_or_else(|| OverrideError::NotATable(parts[..i].join(".")))?;
        if i + 1 == parts.len() {
            table.insert(part.to_string(), value);
            return Ok(());
        }
        cur = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    Err(OverrideError::EmptyKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_set_nested_values() {
        let cfg = TrainConfig::load(
            None,
            &[
                "rollout.n=8".into(),
                "optim.lr=1e-6".into(),
                "train.run_dir=runs/x".into(),
            ],
        )
        .unwrap();
        assert_eq!(cfg.rollout.n, 8);
        assert_eq!(cfg.optim.lr, 1e-6);
        assert_eq!(cfg.train.run_dir, PathBuf::from("runs/x"));
    }

    #[test]
    fn unknown_keys_list_the_valid_ones() {
        let err = TrainConfig::load(None, &["rollout.temprature=0.5".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("temprature") && err.contains("max_turns"), "{err}");
        let err = TrainConfig::load(None, &["stage=3".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("stage = 3"), "{err}");
    }

    #[test]
    fn config_errors_keep_their_source() {
        let err = TrainConfig::from_toml_str("stage = [", "x.toml", &[]).unwrap_err();
        assert!(err.to_string().starts_with("bad config: x.toml: "), "{err}");
        let source = std::error::Error::source(&err).expect("the TOML error is kept");
        assert!(source.downcast_ref::<toml::de::Error>().is_some(), "{source:?}");
        let err = TrainConfig::from_toml_str("", "x.toml", &["novalue".into()]).unwrap_err();
        assert!(
            matches!(
                &err,
                TrainError::BadOverride {
                    source: OverrideError::NoEquals,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "bad config: override `novalue`: expected key.path=value"
        );
        let err = TrainConfig::load(None, &["model.device=gpu".into()]).unwrap_err();
        assert!(matches!(&err, TrainError::InvalidSettings { .. }), "{err:?}");
        assert!(
            err.to_string()
                .contains("model.device = `gpu`: expected cpu, cuda or cuda:N"),
            "{err}"
        );
    }

    #[test]
    fn shipped_configs_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut n = 0;
        for f in std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()) {
            if f.extension().is_some_and(|x| x == "toml") {
                TrainConfig::load(Some(&f), &[]).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                n += 1;
            }
        }
        assert!(
            n >= 4,
            "expected the 7B and tiny stage configs in {}",
            dir.display()
        );
    }
}
