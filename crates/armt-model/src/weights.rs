//! Reading safetensors checkpoints into the model's variables.
//!
//! Two naming layouts exist for the same tensors: the hub checkpoints (`visual.*`, `model.*`,
//! `lm_head.weight`) and what transformers 5 saves (`model.visual.*`, `model.language_model.*`).
//! The model's variables use the hub names; file names are mapped onto them, and the layout is
//! remembered so that a saved checkpoint keeps the names it came with.

use crate::ModelError;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// How the checkpoint names its tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `visual.*` and `model.*`, as the official hub checkpoints are named (transformers 4.x).
    Hub,
    /// `model.visual.*` and `model.language_model.*`, as transformers 5 saves them.
    Transformers5,
}

impl WeightLayout {
    /// Maps a checkpoint name to the model's (hub) name.
    pub fn to_model_name(name: &str) -> String {
        if let Some(rest) = name.strip_prefix("model.visual.") {
            format!("visual.{rest}")
        } else if let Some(rest) = name.strip_prefix("model.language_model.") {
            format!("model.{rest}")
        } else {
            name.to_string()
        }
    }

    /// Maps a model (hub) name to this layout's checkpoint name.
    pub fn to_file_name(self, name: &str) -> String {
        match self {
            WeightLayout::Hub => name.to_string(),
            WeightLayout::Transformers5 => {
                if let Some(rest) = name.strip_prefix("visual.") {
                    format!("model.visual.{rest}")
                } else if let Some(rest) = name.strip_prefix("model.") {
                    format!("model.language_model.{rest}")
                } else {
                    name.to_string()
                }
            }
        }
    }

    fn detect<'a>(names: impl IntoIterator<Item = &'a String>) -> Self {
        let new = names
            .into_iter()
            .any(|n| n.starts_with("model.visual.") || n.starts_with("model.language_model."));
        if new {
            WeightLayout::Transformers5
        } else {
            WeightLayout::Hub
        }
    }
}

/// The safetensors files of a checkpoint directory: `model.safetensors`, or the shards listed by
/// `model.safetensors.index.json`.
pub fn checkpoint_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::Io {
            path: index.clone(),
            source: e,
        })?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| ModelError::IndexJson {
                path: index.clone(),
                source,
            })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Checkpoint {
                path: index.clone(),
                msg: "no `weight_map` object".into(),
            })?;
        let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        let files: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        for f in &files {
            if !f.exists() {
                return Err(ModelError::Checkpoint {
                    path: index.clone(),
                    msg: format!("lists shard {} which does not exist", f.display()),
                });
            }
        }
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(ModelError::Checkpoint {
        path: dir.to_path_buf(),
        msg: "no model.safetensors or model.safetensors.index.json (are the weights downloaded?)".into(),
    })
}

fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        _ => return None,
    })
}

/// Copies every tensor of the checkpoint into `vars` (model names → variables), converting the
/// dtype and device. Fails, without copying anything, unless names and shapes match exactly;
/// the error lists every missing, unexpected and mis-shaped tensor.
/// `optional` names (tied lm_head) may be absent from the model without counting as unexpected.
pub fn load_into(
    dir: &Path,
    vars: &HashMap<String, Tensor>,
    optional_unexpected: &[&str],
) -> Result<WeightLayout, ModelError> {
    let files = checkpoint_files(dir)?;
    let mut maps = Vec::with_capacity(files.len());
    for f in &files {
        let file = std::fs::File::open(f).map_err(|e| ModelError::Io {
            path: f.clone(),
            source: e,
        })?;
        // SAFETY: the file is only read; a checkpoint changed under a running process is the
        // same hazard transformers and candle accept when they memory-map safetensors.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::Io {
            path: f.clone(),
            source: e,
        })?;
        maps.push((f.clone(), mmap));
    }
    let mut parsed = Vec::with_capacity(maps.len());
    for (path, mmap) in &maps {
        let st = SafeTensors::deserialize(mmap).map_err(|source| ModelError::NotSafetensors {
            path: path.clone(),
            source,
        })?;
        parsed.push((path, st));
    }
    let all_names: Vec<String> = parsed
        .iter()
        .flat_map(|(_, st)| st.names().into_iter().cloned())
        .collect();
    let layout = WeightLayout::detect(&all_names);

    let mut found: BTreeMap<String, (&PathBuf, String)> = BTreeMap::new();
    let mut unexpected = Vec::new();
    let mut misshaped = Vec::new();
    let mut bad_dtype = Vec::new();
    for (path, st) in &parsed {
        for (file_name, view) in st.tensors() {
            let name = WeightLayout::to_model_name(&file_name);
            let Some(var) = vars.get(&name) else {
                if !optional_unexpected.contains(&name.as_str()) {
                    unexpected.push(format!("  {file_name} {:?}", view.shape()));
                }
                continue;
            };
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            if shape != var.size() {
                misshaped.push(format!(
                    "  {file_name}: checkpoint {:?}, model {:?}",
                    shape,
                    var.size()
                ));
            } else if kind_of(view.dtype()).is_none() {
                bad_dtype.push(format!("  {file_name}: unsupported dtype {:?}", view.dtype()));
            }
            found.insert(name, (*path, file_name));
        }
    }
    let missing: Vec<String> = vars
        .iter()
        .filter(|(n, _)| !found.contains_key(*n))
        .map(|(n, v)| format!("  {} {:?}", layout.to_file_name(n), v.size()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !(missing.is_empty() && unexpected.is_empty() && misshaped.is_empty() && bad_dtype.is_empty()) {
        let mut report = String::new();
        for (title, list) in [
            ("missing from the checkpoint", missing),
            ("unexpected in the checkpoint", unexpected),
            ("with the wrong shape", misshaped),
            ("with an unsupported dtype", bad_dtype),
        ] {
            if !list.is_empty() {
                report.push_str(&format!("{} tensors {title}:\n{}\n", list.len(), list.join("\n")));
            }
        }
        return Err(ModelError::WeightMismatch {
            dir: dir.to_path_buf(),
            report,
        });
    }

    let _guard = tch::no_grad_guard();
    for (path, st) in &parsed {
        for (file_name, view) in st.tensors() {
            let name = WeightLayout::to_model_name(&file_name);
            let Some(var) = vars.get(&name) else { continue };
            let kind = kind_of(view.dtype()).expect("dtype checked above");
            let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
            let src = Tensor::f_from_data_size(view.data(), &shape, kind).map_err(|source| {
                ModelError::TensorData {
                    path: (*path).clone(),
                    tensor: file_name.clone(),
                    source: Box::new(source),
                }
            })?;
            let mut dst = var.shallow_clone();
            dst.f_copy_(&src.to_device(var.device()).to_kind(var.kind()))?;
        }
    }
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_between_layouts() {
        for (file, model) in [
            (
                "model.visual.blocks.0.attn.qkv.weight",
                "visual.blocks.0.attn.qkv.weight",
            ),
            (
                "model.language_model.layers.3.mlp.up_proj.weight",
                "model.layers.3.mlp.up_proj.weight",
            ),
            (
                "model.language_model.embed_tokens.weight",
                "model.embed_tokens.weight",
            ),
            ("lm_head.weight", "lm_head.weight"),
        ] {
            assert_eq!(WeightLayout::to_model_name(file), model);
            assert_eq!(WeightLayout::Transformers5.to_file_name(model), file);
            assert_eq!(WeightLayout::to_model_name(model), model);
            assert_eq!(WeightLayout::Hub.to_file_name(model), model);
        }
    }

    #[test]
    fn missing_weights_directory_names_it() {
        let dir = std::env::temp_dir().join("armt-no-weights-here");
        std::fs::create_dir_all(&dir).unwrap();
        let err = checkpoint_files(&dir).unwrap_err().to_string();
        assert!(
            err.contains("armt-no-weights-here") && err.contains("model.safetensors"),
            "{err}"
        );
    }
}
