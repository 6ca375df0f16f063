//! The tiny Qwen2.5-VL's `config.json`, `preprocessor_config.json` and tokenizer files
//! (no weights: the trainer initialises them).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokenizers::Tokenizer;

use crate::tokenizer::special_token_ids;

/// The tiny model's shape. `Default` is what [`tiny_model_files`] writes.
#[derive(Debug, Clone)]
pub struct TinyModelSpec {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Must sum to head_dim / 2 (head_dim = hidden_size / num_attention_heads).
    pub mrope_section: [usize; 3],
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    pub max_position_embeddings: usize,
    pub vision_depth: usize,
    pub vision_hidden_size: usize,
    pub vision_intermediate_size: usize,
    pub vision_num_heads: usize,
    pub fullatt_block_indexes: Vec<usize>,
    /// Image processor pixel limits (a 224² image becomes 112² = 16 merged tokens).
    pub min_pixels: usize,
    pub max_pixels: usize,
}

impl Default for TinyModelSpec {
    fn default() -> Self {
        Self {
            hidden_size: 128,
            intermediate_size: 384,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            mrope_section: [4, 6, 6],
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: true,
            max_position_embeddings: 4096,
            vision_depth: 2,
            vision_hidden_size: 64,
            vision_intermediate_size: 128,
            vision_num_heads: 2,
            fullatt_block_indexes: vec![1],
            min_pixels: 56 * 56,
            max_pixels: 112 * 112,
        }
    }
}

/// Tokenizer vocabulary (with added tokens) rounded up to a multiple of 64.
pub fn padded_vocab_size(tok: &Tokenizer) -> usize {
    tok.get_vocab_size(true).div_ceil(64) * 64
}

/// `config.json` (flat transformers-4.x Qwen2.5-VL layout) for `tok` and `spec`.
pub fn tiny_config(tok: &Tokenizer, spec: &TinyModelSpec) -> Result<Value> {
    let ids = special_token_ids(tok)?;
    if spec.hidden_size / spec.num_attention_heads * spec.num_attention_heads != spec.hidden_size {
        bail!(
            "hidden_size {} is not a multiple of num_attention_heads {}",
            spec.hidden_size,
            spec.num_attention_heads
        );
    }
    let head_dim = spec.hidden_size / spec.num_attention_heads;
    if spec.mrope_section.iter().sum::<usize>() * 2 != head_dim {
        bail!(
            "mrope_section {:?} must sum to head_dim/2 = {}",
            spec.mrope_section,
            head_dim / 2
        );
    }
    if spec.num_attention_heads / spec.num_key_value_heads * spec.num_key_value_heads
        != spec.num_attention_heads
    {
        bail!("num_attention_heads must be a multiple of num_key_value_heads");
    }
    if spec.vision_hidden_size / spec.vision_num_heads * spec.vision_num_heads != spec.vision_hidden_size {
        bail!("vision hidden_size must be a multiple of vision num_heads");
    }
    let text = json!({
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "max_window_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_key_value_heads": spec.num_key_value_heads,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_scaling": {"type": "mrope", "mrope_section": spec.mrope_section},
        "rope_theta": spec.rope_theta,
        "sliding_window": spec.max_position_embeddings,
        "use_sliding_window": false,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "torch_dtype": "float32",
        "use_cache": true,
        "vocab_size": padded_vocab_size(tok),
    });
    let vision = json!({
            "depth": spec.vision_depth,
            "hidden_act": "silu",
            "hidden_size": spec.vision_hidden_size,
            "intermediate_size": spec.vision_intermediate_size,
            "num_heads": spec.vision_num_heads,
            "in_chans": 3,
            "out_hidden_size": spec.hidden_size,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": spec.fullatt_block_indexes,
            "tokens_per_second": 2,
            "model_type": "qwen2_5_vl"
    });
    let ids_part = json!({
        "bos_token_id": ids.bos(),
        "eos_token_id": ids.eos(),
        "pad_token_id": ids.pad(),
        "image_token_id": ids.image_pad,
        "video_token_id": ids.video_pad,
        "vision_start_token_id": ids.vision_start,
        "vision_end_token_id": ids.vision_end,
        "vision_token_id": ids.vision_pad,
    });
    let mut cfg = text;
    let obj = cfg.as_object_mut().expect("object");
    obj.extend(ids_part.as_object().expect("object").clone());
    obj.insert("vision_config".into(), vision);
    Ok(cfg)
}

/// `preprocessor_config.json` with the spec's pixel limits.
pub fn tiny_preprocessor_config(spec: &TinyModelSpec) -> Value {
    json!({
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
        "do_convert_rgb": true,
        "do_normalize": true,
        "do_rescale": true,
        "do_resize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "rescale_factor": 0.00392156862745098,
        "resample": 3,
        "min_pixels": spec.min_pixels,
        "max_pixels": spec.max_pixels,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2
    })
}

/// [`tiny_model_files_with`] with the default [`TinyModelSpec`].
pub fn tiny_model_files(dir: &Path, tokenizer: &Tokenizer) -> Result<()> {
    tiny_model_files_with(dir, tokenizer, &TinyModelSpec::default())
}

/// Writes `config.json`, `preprocessor_config.json`, `tokenizer.json`,
/// `tokenizer_config.json` and `generation_config.json` into `dir` (created if needed).
pub fn tiny_model_files_with(dir: &Path, tokenizer: &Tokenizer, spec: &TinyModelSpec) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ids = special_token_ids(tokenizer)?;
    let write = |name: &str, v: &Value| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, serde_json::to_string_pretty(v)? + "\n")
            .with_context(|| format!("writing {}", p.display()))
    };
    write("config.json", &tiny_config(tokenizer, spec)?)?;
    write("preprocessor_config.json", &tiny_preprocessor_config(spec))?;
    write(
        "generation_config.json",
        &json!({"bos_token_id": ids.bos(), "eos_token_id": [ids.im_end, ids.endoftext], "pad_token_id": ids.pad(), "do_sample": true}),
    )?;
    write(
        "tokenizer_config.json",
        &json!({"tokenizer_class": "Qwen2Tokenizer", "bos_token": null, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                "model_max_length": spec.max_position_embeddings, "split_special_tokens": false, "clean_up_tokenization_spaces": false}),
    )?;
    let json = tokenizer
        .to_string(true)
        .map_err(|e| anyhow!("serialising tokenizer: {e}"))?;
    let p = dir.join("tokenizer.json");
    std::fs::write(&p, json).with_context(|| format!("writing {}", p.display()))?;
    Ok(())
}
