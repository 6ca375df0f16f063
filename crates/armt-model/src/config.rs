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
    #[serde(alias = "in_channels", default = "default_in_chans")]
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
        Self::from_json_str(&text).map_err(|msg| ModelError::Config {
            path: path.to_path_buf(),
            msg,
        })
    }

    /// Parses either layout. The error is a plain message; `from_file` adds the path.
    pub fn from_json_str(text: &str) -> Result<Self, String> {
        let root: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        let root = root.as_object().ok_or("config.json is not a JSON object")?;
        // 5.x nests the decoder's fields under text_config; 4.x keeps them at the top level.
        let text_obj = match root.get("text_config") {
            Some(Value::Object(t)) => t,
            _ => root,
        };
        let get = |key: &str| text_obj.get(key).or_else(|| root.get(key));
        let usize_field = |key: &str| -> Result<usize, String> {
            get(key)
                .and_then(Value::as_u64)
                .map(|v| v as usize)
                .ok_or_else(|| format!("missing or non-integer field `{key}`"))
        };
        let vision_value = root.get("vision_config").ok_or("missing `vision_config`")?;
        let vision: VisionConfig =
            serde_json::from_value(vision_value.clone()).map_err(|e| format!("bad `vision_config`: {e}"))?;

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
            .ok_or("missing `mrope_section` (in rope_scaling or rope_parameters)")?
            .iter()
            .map(|v| {
                v.as_u64()
                    .map(|x| x as usize)
                    .ok_or("non-integer in `mrope_section`")
            })
            .collect::<Result<_, _>>()?;
        if mrope_section.iter().sum::<usize>() * 2 != head_dim {
            return Err(format!(
                "mrope_section {mrope_section:?} does not cover head_dim {head_dim} (its sum must be head_dim/2)"
            ));
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
            return Err(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                text.num_attention_heads, text.num_key_value_heads
            ));
        }
        if !vision.hidden_size.is_multiple_of(vision.num_heads) {
            return Err("vision hidden_size is not a multiple of num_heads".into());
        }
        for act in [&text.hidden_act, &vision.hidden_act] {
            if act != "silu" {
                return Err(format!("unsupported hidden_act `{act}` (Qwen2.5-VL uses silu)"));
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
        let err = Qwen25VlConfig::from_json_str(&bad).unwrap_err();
        assert!(err.contains("mrope_section"), "{err}");
        let missing = FLAT.replace("\"vocab_size\": 1000,", "");
        assert!(Qwen25VlConfig::from_json_str(&missing)
            .unwrap_err()
            .contains("vocab_size"));
    }
}
