//! `config.json` of a Qwen2.5-VL checkpoint, in both layouts transformers writes:
//! 4.x (text fields at the top level, `rope_scaling.mrope_section`) and 5.x (`text_config`,
//! `rope_parameters`). Every size comes from the file; nothing is assumed from the 7B.

use crate::ModelError;
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// The vision tower's `vision_config`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    /// Named `in_chans` by the hub configs and 4.x, `in_channels` by 5.x; a config re-saved by
    /// 5.x carries both (see [`normalize_vision_config`]).
    #[serde(default = "default_in_chans")]
    pub in_chans: usize,
    pub out_hidden_size: usize,
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
    #[serde(default = "default_merge")]
    pub spatial_merge_size: usize,
    #[serde(default = "default_temporal")]
    pub temporal_patch_size: usize,
    #[serde(default = "default_window")]
    pub window_size: usize,
    #[serde(default = "default_fullatt")]
    pub fullatt_block_indexes: Vec<usize>,
    #[serde(default = "default_tokens_per_second")]
    pub tokens_per_second: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Base of the vision tower's 2-D rotary frequencies: 5.x writes it as
    /// `rope_parameters.rope_theta`; earlier layouts leave it implicit (10000).
    #[serde(skip, default = "default_vision_rope_theta")]
    pub rope_theta: f64,
}

/// Why a `config.json` cannot describe a Qwen2.5-VL model.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("config.json is not a JSON object")]
    NotAnObject,
    #[error("missing `vision_config`")]
    MissingVision,
    #[error("bad `vision_config`: {0}")]
    Vision(#[source] serde_json::Error),
    /// The two values as the file writes them.
    #[error("`vision_config` has in_chans = {in_chans} but in_channels = {in_channels}")]
    ChannelsDisagree { in_chans: String, in_channels: String },
    #[error("missing or non-integer field `{0}`")]
    Field(&'static str),
    #[error("missing `mrope_section` (in rope_scaling or rope_parameters)")]
    MissingMropeSection,
    #[error("non-integer in `mrope_section`")]
    BadMropeSection,
    #[error("mrope_section {section:?} does not cover head_dim {head_dim} (its sum must be head_dim/2)")]
    MropeSectionSize { section: Vec<usize>, head_dim: usize },
    #[error("num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")]
    KvHeads { heads: usize, kv_heads: usize },
    #[error("vision hidden_size {hidden} is not a multiple of num_heads {heads}")]
    VisionHeads { hidden: usize, heads: usize },
    #[error("unsupported hidden_act `{0}` (Qwen2.5-VL uses silu)")]
    Activation(String),
}

/// Brings the `vision_config` layouts of transformers 4.x and 5.x to one: `in_channels` (5.x)
/// becomes `in_chans`; when a 5.x save kept both (a hub config loaded and saved again), they
/// must agree. The 5.x `rope_parameters.rope_theta` is returned separately.
fn normalize_vision_config(vision: &Value) -> Result<(Value, Option<f64>), ConfigError> {
    let mut vision = vision.clone();
    let obj = vision.as_object_mut().ok_or(ConfigError::MissingVision)?;
    if let Some(in_channels) = obj.remove("in_channels") {
        match obj.get("in_chans") {
            Some(in_chans) if *in_chans != in_channels => {
                return Err(ConfigError::ChannelsDisagree {
                    in_chans: in_chans.to_string(),
                    in_channels: in_channels.to_string(),
                });
            }
            _ => {
                obj.insert("in_chans".into(), in_channels);
            }
        }
    }
    let rope_theta = obj
        .get("rope_parameters")
        .and_then(|r| r.get("rope_theta"))
        .and_then(Value::as_f64);
    Ok((vision, rope_theta))
}

fn default_vision_rope_theta() -> f64 {
    10000.0
}
fn default_in_chans() -> usize {
    3
}
fn default_patch_size() -> usize {
    14
}
fn default_merge() -> usize {
    2
}
fn default_temporal() -> usize {
    2
}
fn default_fullatt() -> Vec<usize> {
    vec![7, 15, 23, 31]
}
fn default_window() -> usize {
    112
}
fn default_tokens_per_second() -> f64 {
    // config.json of the released checkpoints says 2; the Python class default (4) is not used.
    2.0
}
fn default_act() -> String {
    "silu".into()
}

/// The Qwen2 decoder's fields.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Split of the rotary half-dimension between the (t, h, w) position axes.
    pub mrope_section: Vec<usize>,
    pub hidden_act: String,
}

/// The whole model's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen25VlConfig {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub tie_word_embeddings: bool,
    pub image_token_id: i64,
    pub video_token_id: i64,
    pub vision_start_token_id: i64,
}

impl Qwen25VlConfig {
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::from_json_str(&text).map_err(|source| ModelError::Config {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Parses any layout transformers 4.x and 5.x write; `from_file` adds the path to errors.
    pub fn from_json_str(text: &str) -> Result<Self, ConfigError> {
        let root: Value = serde_json::from_str(text).map_err(ConfigError::Json)?;
        let root = root.as_object().ok_or(ConfigError::NotAnObject)?;
        // 5.x nests the decoder's fields under text_config; 4.x keeps them at the top level.
        let text_obj = match root.get("text_config") {
            Some(Value::Object(t)) => t,
            _ => root,
        };
        let get = |key: &str| text_obj.get(key).or_else(|| root.get(key));
        let usize_field = |key: &'static str| -> Result<usize, ConfigError> {
            get(key)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or(ConfigError::Field(key))
        };
        let vision_value = root.get("vision_config").ok_or(ConfigError::MissingVision)?;
        let (vision_value, vision_rope_theta) = normalize_vision_config(vision_value)?;
        let mut vision: VisionConfig = serde_json::from_value(vision_value).map_err(ConfigError::Vision)?;
        if let Some(theta) = vision_rope_theta {
            vision.rope_theta = theta;
        }

        let num_attention_heads = usize_field("num_attention_heads")?;
        let hidden_size = usize_field("hidden_size")?;
        let head_dim = match get("head_dim").and_then(Value::as_u64) {
            Some(h) => h as usize,
            None => hidden_size / num_attention_heads,
        };
        // rope: 4.x `rope_theta` + `rope_scaling {type: mrope, mrope_section}`;
        // 5.x `rope_parameters {rope_type, rope_theta, mrope_section}`.
        let rope_params = get("rope_parameters").or_else(|| get("rope_scaling"));
        let rope_theta = get("rope_theta")
            .and_then(Value::as_f64)
            .or_else(|| {
                rope_params
                    .and_then(|r| r.get("rope_theta"))
                    .and_then(Value::as_f64)
            })
            .unwrap_or(1_000_000.0);
        let mrope_section: Vec<usize> = rope_params
            .and_then(|r| r.get("mrope_section"))
            .and_then(Value::as_array)
            .ok_or(ConfigError::MissingMropeSection)?
            .iter()
            .map(|v| v.as_u64().map(|x| x as usize).ok_or(ConfigError::BadMropeSection))
            .collect::<Result<_, _>>()?;
        if mrope_section.iter().sum::<usize>() * 2 != head_dim {
            return Err(ConfigError::MropeSectionSize {
                section: mrope_section,
                head_dim,
            });
        }
        let text = TextConfig {
            vocab_size: usize_field("vocab_size")?,
            hidden_size,
            intermediate_size: usize_field("intermediate_size")?,
            num_hidden_layers: usize_field("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: usize_field("num_key_value_heads").unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: get("rms_norm_eps").and_then(Value::as_f64).unwrap_or(1e-6),
            rope_theta,
            mrope_section,
            hidden_act: get("hidden_act")
                .and_then(Value::as_str)
                .unwrap_or("silu")
                .to_string(),
        };
        if !text.num_attention_heads.is_multiple_of(text.num_key_value_heads) {
            return Err(ConfigError::KvHeads {
                heads: text.num_attention_heads,
                kv_heads: text.num_key_value_heads,
            });
        }
        if !vision.hidden_size.is_multiple_of(vision.num_heads) {
            return Err(ConfigError::VisionHeads {
                hidden: vision.hidden_size,
                heads: vision.num_heads,
            });
        }
        for act in [&text.hidden_act, &vision.hidden_act] {
            if act != "silu" {
                return Err(ConfigError::Activation(act.clone()));
            }
        }
        let token = |key: &str, default: i64| {
            root.get(key)
                .or_else(|| text_obj.get(key))
                .and_then(Value::as_i64)
                .unwrap_or(default)
        };
        // tie_word_embeddings sits at the top level in both layouts; 5.x may repeat it in text_config.
        let tie_word_embeddings = root
            .get("tie_word_embeddings")
            .or_else(|| text_obj.get("tie_word_embeddings"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(Self {
            text,
            vision,
            tie_word_embeddings,
            image_token_id: token("image_token_id", 151655),
            video_token_id: token("video_token_id", 151656),
            vision_start_token_id: token("vision_start_token_id", 151652),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAT: &str = r#"{
      "architectures": ["Qwen2_5_VLForConditionalGeneration"], "hidden_size": 64, "intermediate_size": 96,
      "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
      "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": false,
      "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}, "image_token_id": 151655,
      "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 48, "num_heads": 2,
        "in_chans": 3, "out_hidden_size": 64, "fullatt_block_indexes": [1], "window_size": 56}
    }"#;

    #[test]
    fn parses_flat_4x_layout() {
        let c = Qwen25VlConfig::from_json_str(FLAT).unwrap();
        assert_eq!(c.text.head_dim, 16);
        assert_eq!(c.text.mrope_section, vec![2, 3, 3]);
        assert_eq!(c.vision.fullatt_block_indexes, vec![1]);
        assert_eq!(c.vision.tokens_per_second, 2.0);
        assert!(!c.tie_word_embeddings);
    }

    #[test]
    fn parses_nested_5x_layout_like_flat() {
        let nested = r#"{
          "model_type": "qwen2_5_vl", "image_token_id": 151655, "tie_word_embeddings": true,
          "text_config": {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]}},
          "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 48, "num_heads": 2,
            "in_channels": 3, "out_hidden_size": 64, "fullatt_block_indexes": [1], "window_size": 56}
        }"#;
        let c = Qwen25VlConfig::from_json_str(nested).unwrap();
        let mut flat = Qwen25VlConfig::from_json_str(FLAT).unwrap();
        flat.tie_word_embeddings = true;
        assert_eq!(c, flat);
    }

    #[test]
    fn rejects_inconsistent_rope_section() {
        let bad = FLAT.replace("[2, 3, 3]", "[2, 3, 4]");
        let err = Qwen25VlConfig::from_json_str(&bad).unwrap_err().to_string();
        assert!(err.contains("mrope_section"), "{err}");
        let missing = FLAT.replace("\"vocab_size\": 1000,", "");
        assert!(Qwen25VlConfig::from_json_str(&missing)
            .unwrap_err()
            .to_string()
            .contains("vocab_size"));
    }

    /// The layout transformers 5.24 writes when it saves a config it loaded from the hub:
    /// `in_chans` and `in_channels` side by side, `rope_parameters` in both sub-configs, text
    /// fields such as `layer_types` and `pad_token_id: null` (written by transformers 5.24.0's
    /// `Qwen2_5_VLConfig.save_pretrained`).
    const SAVED_BY_5_24: &str = r#"{
      "image_token_id": 151655, "model_type": "qwen2_5_vl",
      "text_config": {"attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
        "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 96,
        "layer_types": ["full_attention", "full_attention"], "max_position_embeddings": 32768,
        "max_window_layers": 80, "model_type": "qwen2_5_vl_text", "num_attention_heads": 4,
        "num_hidden_layers": 2, "num_key_value_heads": 2, "pad_token_id": null, "rms_norm_eps": 1e-06,
        "rope_parameters": {"mrope_section": [2, 3, 3], "rope_theta": 1000000.0, "rope_type": "default"},
        "sliding_window": null, "use_cache": true, "use_sliding_window": false, "vocab_size": 1000},
      "tie_word_embeddings": false, "transformers_version": "5.24.0", "video_token_id": 151656,
      "vision_config": {"depth": 2, "fullatt_block_indexes": [1], "hidden_act": "silu", "hidden_size": 32,
        "in_channels": 3, "in_chans": 3, "initializer_range": 0.02, "intermediate_size": 48,
        "model_type": "qwen2_5_vl_vision", "num_heads": 2, "out_hidden_size": 64, "patch_size": 14,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "axial"}, "spatial_merge_size": 2,
        "temporal_patch_size": 2, "tokens_per_second": 2, "window_size": 56},
      "vision_end_token_id": 151653, "vision_start_token_id": 151652
    }"#;

    #[test]
    fn parses_the_layout_transformers_5_24_saves() {
        let c = Qwen25VlConfig::from_json_str(SAVED_BY_5_24).unwrap();
        assert_eq!(c, Qwen25VlConfig::from_json_str(FLAT).unwrap());
        assert_eq!(c.vision.in_chans, 3);
        assert_eq!(c.vision.rope_theta, 10000.0);
        let other_theta = SAVED_BY_5_24.replace("\"rope_theta\": 10000.0", "\"rope_theta\": 500.0");
        assert_eq!(
            Qwen25VlConfig::from_json_str(&other_theta)
                .unwrap()
                .vision
                .rope_theta,
            500.0
        );
        let only_new_name = SAVED_BY_5_24.replace("\"in_chans\": 3,", "");
        assert_eq!(Qwen25VlConfig::from_json_str(&only_new_name).unwrap(), c);
        let disagree = SAVED_BY_5_24.replace("\"in_chans\": 3", "\"in_chans\": 4");
        let err = Qwen25VlConfig::from_json_str(&disagree).unwrap_err();
        assert!(matches!(err, ConfigError::ChannelsDisagree { .. }), "{err}");
    }
}
