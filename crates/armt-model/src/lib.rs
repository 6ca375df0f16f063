//! Qwen2.5-VL on libtorch (tch): the vision tower with window attention and 2-D rotary
//! embeddings, the patch merger, and the Qwen2 decoder with GQA and multimodal RoPE.
//! Loads official safetensors checkpoints (single file or shards, hub or transformers-5 names).
//! f32 on CPU, bf16 on CUDA by default.

pub mod checkpointing;
mod config;
mod decoding;
mod layers;
mod model;
mod rope;
mod text;
mod vision;
mod weights;

pub use checkpointing::HiddenStates;
pub use config::{ConfigError, Qwen25VlConfig, TextConfig, VisionConfig};
pub use model::{default_kind_for, KvCache, Qwen25Vl};
pub use rope::{rope_index, RopeIndex};
pub use text::{AppendView, DecodeView, SlotCache};
pub use weights::WeightLayout;

use std::path::PathBuf;

/// Errors of loading or running the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("bad model config {path}: {source}")]
    Config {
        path: PathBuf,
        source: config::ConfigError,
    },
    /// A checkpoint's files are missing or inconsistent (`msg` says which and how).
    #[error("bad checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("bad checkpoint {path}: invalid JSON: {source}")]
    IndexJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("bad checkpoint {path}: not a safetensors file: {source}")]
    NotSafetensors {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },
    /// A stored tensor whose bytes do not make a tensor of its dtype and shape.
    #[error("bad checkpoint {path}: {tensor}: {source}")]
    TensorData {
        path: PathBuf,
        tensor: String,
        #[source]
        source: Box<tch::TchError>,
    },
    #[error("checkpoint {dir} does not match the model built from its config.json:\n{report}")]
    WeightMismatch { dir: PathBuf, report: String },
    #[error("bad model input: {0}")]
    Input(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}
