//! Checkpoints: `RUN/checkpoints/step-NNNNNN/` holds the weights (safetensors with the names of
//! the checkpoint the run started from, plus its config and tokenizer files, so transformers
//! and `armt` load it as a model directory), the optimizer state (`optimizer/`: each rank's
//! shard of fp32 masters and moments, and their layout), and `trainer_state.json`
//! (step, optimizer steps, data position, config). Written to a temporary directory and
//! renamed, so a killed run never leaves a half-written checkpoint.

use crate::data_fingerprint::DataFingerprint;
use crate::optimizer::AdamW;
use crate::{finite, DataLoader, MasterDtype, TrainConfig, TrainError, ZeroStage};
use armt_dist::Communicator;
use armt_model::Qwen25Vl;
use safetensors::tensor::{Dtype, View};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Kind, Tensor};

/// Files of a model directory that are not weights; copied into every checkpoint.
const MODEL_FILES: [&str; 7] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "generation_config.json",
    "chat_template.json",
    "special_tokens_map.json",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Training steps completed.
    pub step: usize,
    pub optimizer_steps: i64,
    /// Data loader position: epoch and index within its permutation.
    pub data_epoch: u64,
    pub data_index: usize,
    /// "sft" or "grpo-stage1"/"grpo-stage2".
    pub phase: String,
    /// The resolved config, as TOML.
    pub config: String,
    /// The training data the loader position refers to (absent in checkpoints of armt before
    /// it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataFingerprint>,
}

impl TrainerState {
    /// The state after `step` steps.
    pub fn capture(
        step: usize,
        optimizer: &AdamW,
        loader: &DataLoader,
        phase: &str,
        config: String,
        data: &DataFingerprint,
    ) -> Self {
        Self {
            step,
            optimizer_steps: optimizer.steps,
            data_epoch: loader.epoch,
            data_index: loader.index,
            phase: phase.to_string(),
            config,
            data: Some(data.clone()),
        }
    }
}

/// The optimizer over the model's trainable variables (masters per `optim.master_dtype`, state
/// sharded over `comm` per `train.zero_stage`) and where the run starts: step 0 with a fresh
/// data order, or, resuming, the checkpoint's step, optimizer state (re-sharded if the world
/// size changed) and data position (the model's weights are the caller's to load from the
/// checkpoint).
pub(crate) fn start_or_resume(
    model: &Qwen25Vl,
    cfg: &TrainConfig,
    comm: Arc<dyn Communicator>,
    resume: Option<&Path>,
    n_items: usize,
    seed: u64,
) -> Result<(AdamW, usize, DataLoader), TrainError> {
    let params: Vec<(String, Tensor)> = model
        .var_store()
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    let (master, named_kind) = MasterDtype::parse(cfg.optim.master_dtype.as_deref())?;
    if let Some(kind) = named_kind {
        if let Some((name, p)) = params.iter().find(|(_, p)| p.kind() != kind) {
            return Err(TrainError::InvalidSettings {
                problems: vec![format!(
                    "optim.master_dtype = {kind:?} but {name} computes in {:?}: use f32 or none",
                    p.kind()
                )],
            });
        }
    }
    let stage = ZeroStage::from_index(cfg.train.zero_stage)?;
    let mut optimizer = AdamW::new(params, cfg.optim.adamw.clone())
        .with_master_dtype(master)
        .with_zero_stage(stage)
        .with_communicator(comm);
    let Some(ckpt) = resume else {
        return Ok((optimizer, 0, DataLoader::new(n_items, seed, 0, 0)));
    };
    let state = read_state(ckpt)?;
    optimizer
        .load_shards(ckpt, state.optimizer_steps)
        .map_err(|e| TrainError::DamagedOptimizerState {
            path: ckpt.to_path_buf(),
            source: Box::new(e),
            last_good: finite::last_good_hint(&run_dir_of(ckpt), Some(ckpt)),
        })?;
    check_loaded(ckpt, model, &optimizer.shard_state())?;
    Ok((
        optimizer,
        state.step,
        DataLoader::new(n_items, seed, state.data_epoch, state.data_index),
    ))
}

/// A NaN/inf anywhere in the weights or the optimizer state stops the save (nothing written).
fn check_before_save(
    run_dir: &Path,
    model: &Qwen25Vl,
    optimizer_state: &[(String, Tensor)],
    step: usize,
) -> Result<(), TrainError> {
    let params = model.var_store().variables();
    let bad = finite::first_bad(params.iter().map(|(n, t)| (n.as_str(), t)))
        .map(|b| format!("parameter {b}"))
        .or_else(|| {
            finite::first_bad(optimizer_state.iter().map(|(n, t)| (n.as_str(), t)))
                .map(|b| format!("optimizer state {b}"))
        });
    match bad {
        Some(bad) => Err(TrainError::NonFiniteState {
            step,
            bad,
            last_good: finite::last_good_hint(run_dir, None),
        }),
        None => Ok(()),
    }
}

/// The run directory a checkpoint `RUN/checkpoints/step-N` belongs to.
fn run_dir_of(ckpt: &Path) -> PathBuf {
    ckpt.parent()
        .and_then(|p| p.parent())
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

fn damaged(ckpt: &Path, detail: String) -> TrainError {
    TrainError::DamagedCheckpoint {
        path: ckpt.to_path_buf(),
        detail,
        last_good: finite::last_good_hint(&run_dir_of(ckpt), Some(ckpt)),
    }
}

/// The loaded weights and optimizer state of a checkpoint must be finite.
fn check_loaded(
    ckpt: &Path,
    model: &Qwen25Vl,
    optimizer_state: &[(String, Tensor)],
) -> Result<(), TrainError> {
    let params = model.var_store().variables();
    if let Some(b) = finite::first_bad(params.iter().map(|(n, t)| (n.as_str(), t))) {
        return Err(damaged(ckpt, format!("model.safetensors: parameter {b}")));
    }
    if let Some(b) = finite::first_bad(optimizer_state.iter().map(|(n, t)| (n.as_str(), t))) {
        return Err(damaged(ckpt, format!("optimizer state: {b}")));
    }
    Ok(())
}

struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes tensors as safetensors with `{"format": "pt"}` metadata (what transformers expects).
pub fn write_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), TrainError> {
    let mut raws = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        let dtype = match t.kind() {
            Kind::Float => Dtype::F32,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Half => Dtype::F16,
            Kind::Double => Dtype::F64,
            Kind::Int64 => Dtype::I64,
            kind => {
                return Err(TrainError::UnsavableDtype {
                    name: name.clone(),
                    kind,
                })
            }
        };
        let numel = t.numel();
        let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.copy_data_u8(&mut data, numel);
        raws.push((
            name.clone(),
            Raw {
                dtype,
                shape: t.size().iter().map(|&d| d as usize).collect(),
                data,
            },
        ));
    }
    let views: Vec<(String, &Raw)> = raws.iter().map(|(n, r)| (n.clone(), r)).collect();
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::serialize_to_file(views, &metadata, path).map_err(|source| TrainError::WriteSafetensors {
        path: path.to_path_buf(),
        source,
    })
}

pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>, TrainError> {
    Ok(Tensor::read_safetensors(path)
        .map_err(|source| TrainError::ReadSafetensors {
            path: path.to_path_buf(),
            source,
        })?
        .into_iter()
        .collect())
}

/// The model's weights under the names of the checkpoint it was loaded from.
pub fn model_tensors(model: &Qwen25Vl) -> Vec<(String, Tensor)> {
    let layout = model.layout();
    let mut v: Vec<(String, Tensor)> = model
        .var_store()
        .variables()
        .into_iter()
        .map(|(n, t)| (layout.to_file_name(&n), t.detach()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Writes a model directory (weights + the source directory's config/tokenizer files).
pub fn write_model_dir(dir: &Path, model: &Qwen25Vl, source_dir: &Path) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    write_safetensors(&dir.join("model.safetensors"), &model_tensors(model))?;
    for f in MODEL_FILES {
        let src = source_dir.join(f);
        if src.exists() {
            std::fs::copy(&src, dir.join(f)).map_err(|e| TrainError::Io {
                path: src.clone(),
                source: e,
            })?;
        }
    }
    Ok(())
}

fn step_dir_name(step: usize) -> String {
    format!("step-{step:06}")
}

/// Saves a checkpoint atomically and keeps only the newest `keep_last`. Returns its path.
/// Every rank of the optimizer's group calls it: each writes its optimizer shard into the
/// temporary directory, then rank 0 adds the model dir and trainer state and renames it (the
/// run directory must be one file system for all ranks).
pub fn save(
    run_dir: &Path,
    model: &Qwen25Vl,
    source_dir: &Path,
    optimizer: &AdamW,
    state: &TrainerState,
    keep_last: usize,
) -> Result<PathBuf, TrainError> {
    let comm = optimizer.communicator().clone();
    let root = run_dir.join("checkpoints");
    let name = step_dir_name(state.step);
    let tmp = root.join(format!(".tmp-{name}"));
    let dst = root.join(&name);
    // Every rank checks what it holds before anything is written: a run never saves
    // non-finite state.
    check_before_save(run_dir, model, &optimizer.shard_state(), state.step)?;
    if comm.is_main() {
        std::fs::create_dir_all(&root).map_err(|e| TrainError::Io {
            path: root.clone(),
            source: e,
        })?;
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| TrainError::Io {
            path: tmp.clone(),
            source: e,
        })?;
    }
    comm.barrier()?;
    optimizer.save_shard(&tmp)?;
    comm.barrier()?;
    if comm.is_main() {
        publish(run_dir, model, source_dir, state, keep_last, &tmp, &dst)?;
    }
    comm.barrier()?;
    Ok(dst)
}

/// Rank 0's part of [`save`]: model dir and trainer state into `tmp`, rename, prune.
fn publish(
    run_dir: &Path,
    model: &Qwen25Vl,
    source_dir: &Path,
    state: &TrainerState,
    keep_last: usize,
    tmp: &Path,
    dst: &Path,
) -> Result<(), TrainError> {
    write_model_dir(tmp, model, source_dir)?;
    let json = serde_json::to_string_pretty(state).expect("serialisable state");
    std::fs::write(tmp.join("trainer_state.json"), json).map_err(|e| TrainError::Io {
        path: tmp.to_path_buf(),
        source: e,
    })?;
    let _ = std::fs::remove_dir_all(dst);
    std::fs::rename(tmp, dst).map_err(|e| TrainError::Io {
        path: dst.to_path_buf(),
        source: e,
    })?;
    let mut all = list(run_dir);
    while all.len() > keep_last.max(1) {
        let old = all.remove(0);
        let _ = std::fs::remove_dir_all(&old);
    }
    Ok(())
}

/// Finished checkpoints of a run, oldest first.
pub fn list(run_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(run_dir.join("checkpoints"))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("step-"))
                })
                .filter(|p| p.join("trainer_state.json").exists())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn latest(run_dir: &Path) -> Option<PathBuf> {
    list(run_dir).pop()
}

pub fn read_state(ckpt: &Path) -> Result<TrainerState, TrainError> {
    let p = ckpt.join("trainer_state.json");
    let text = std::fs::read_to_string(&p).map_err(|e| TrainError::Io {
        path: p.clone(),
        source: e,
    })?;
    serde_json::from_str(&text).map_err(|source| TrainError::Json { path: p, source })
}
