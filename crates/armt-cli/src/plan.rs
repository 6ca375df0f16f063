//! `armt plan --config FILE [--gpus N] [--gpu-mem-gib G] [--zero-stage Z]`: the per-GPU memory
//! budget of a training run, before renting the GPUs.
//!
//! The model's shape comes from `model.path/config.json` (the Qwen2.5-VL-7B shape when there is
//! none); the run's settings from the TOML, read tolerantly (unknown or missing keys take the
//! trainer's defaults), so the plan also reads configs written for newer or older versions.
//! Peak = fixed state + the largest of the three phases of a step (rollout, old/reference
//! log-probs, updates), which never hold their big tensors at the same time.
//! The figures are the estimates of `/work/shared/docs/scale.md`, derived from the tensors the
//! code keeps; `scripts/gpu-check` sets one of them beside a measurement.

use anyhow::{bail, Context, Result};
use armt_model::Qwen25VlConfig;
use std::path::{Path, PathBuf};

/// The hub's `config.json` of Qwen2.5-VL-7B-Instruct (used when the config names no model, and
/// written by the GPU check for its random-weight model).
pub const QWEN25_VL_7B_CONFIG: &str = r#"{
  "architectures": ["Qwen2_5_VLForConditionalGeneration"],
  "attention_dropout": 0.0,
  "bos_token_id": 151643,
  "eos_token_id": 151645,
  "vision_start_token_id": 151652,
  "vision_end_token_id": 151653,
  "vision_token_id": 151654,
  "image_token_id": 151655,
  "video_token_id": 151656,
  "hidden_act": "silu",
  "hidden_size": 3584,
  "initializer_range": 0.02,
  "intermediate_size": 18944,
  "max_position_embeddings": 128000,
  "max_window_layers": 28,
  "model_type": "qwen2_5_vl",
  "num_attention_heads": 28,
  "num_hidden_layers": 28,
  "num_key_value_heads": 4,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 32768,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.41.2",
  "use_cache": true,
  "use_sliding_window": false,
  "vision_config": {
    "depth": 32,
    "hidden_act": "silu",
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_chans": 3,
    "out_hidden_size": 3584,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "spatial_patch_size": 14,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "temporal_patch_size": 2
  },
  "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
  "vocab_size": 152064
}"#;

const GIB: f64 = (1u64 << 30) as f64;
/// CUDA context, cuBLAS workspaces and allocator slack, kept free on every GPU.
const RUNTIME_RESERVE_GIB: f64 = 2.0;

#[derive(clap::Args)]
pub struct PlanArgs {
    /// Training config TOML (configs/*.toml).
    #[arg(long)]
    config: PathBuf,
    /// GPUs the run is spread over (data parallel; sharded state is divided among them).
    #[arg(long, default_value_t = 1)]
    gpus: usize,
    /// Memory of one GPU in GiB (an "80 GB" H100 has 79.6 GiB; its usable share is what counts).
    #[arg(long, default_value_t = 80.0)]
    gpu_mem_gib: f64,
    /// ZeRO stage 0, 1 or 2 (default: the config's train.zero_stage, else 0).
    #[arg(long)]
    zero_stage: Option<u8>,
    /// Overrides as for `armt train`, e.g. train.micro_batch=2 model.grad_checkpointing=false.
    overrides: Vec<String>,
}

/// The shape facts the budget needs, from a model config.
#[derive(Debug, Clone)]
pub struct ModelShape {
    pub name: String,
    pub text_params: f64,
    pub vision_params: f64,
    hidden: f64,
    intermediate: f64,
    layers: f64,
    q_width: f64,
    kv_width: f64,
    vocab: f64,
    v_hidden: f64,
    v_intermediate: f64,
    v_depth: f64,
    patch_area: f64,
}

impl ModelShape {
    pub fn from_config(cfg: &Qwen25VlConfig, name: &str) -> Self {
        let t = &cfg.text;
        let v = &cfg.vision;
        let (h, i, l) = (
            t.hidden_size as f64,
            t.intermediate_size as f64,
            t.num_hidden_layers as f64,
        );
        let q = (t.num_attention_heads * t.head_dim) as f64;
        let kv = (t.num_key_value_heads * t.head_dim) as f64;
        let vocab = t.vocab_size as f64;
        // q/k/v with bias, o without; SwiGLU without bias; two norms.
        let layer = (h * q + q) + 2.0 * (h * kv + kv) + q * h + 3.0 * h * i + 2.0 * h;
        let heads = if cfg.tie_word_embeddings { 1.0 } else { 2.0 };
        let text_params = l * layer + h + heads * vocab * h;
        let (vh, vi, depth) = (v.hidden_size as f64, v.intermediate_size as f64, v.depth as f64);
        let patch_dim = (v.in_chans * v.temporal_patch_size * v.patch_size * v.patch_size) as f64;
        let merged = vh * (v.spatial_merge_size * v.spatial_merge_size) as f64;
        let block = (vh * 3.0 * vh + 3.0 * vh) + (vh * vh + vh) + 3.0 * vh * vi + 2.0 * vi + vh + 2.0 * vh;
        let merger =
            vh + merged * merged + merged + merged * v.out_hidden_size as f64 + v.out_hidden_size as f64;
        let vision_params = vh * patch_dim + depth * block + merger;
        Self {
            name: name.to_string(),
            text_params,
            vision_params,
            hidden: h,
            intermediate: i,
            layers: l,
            q_width: q,
            kv_width: kv,
            vocab,
            v_hidden: vh,
            v_intermediate: vi,
            v_depth: depth,
            patch_area: (v.patch_size * v.patch_size) as f64,
        }
    }

    pub fn qwen25_vl_7b() -> Self {
        let cfg = Qwen25VlConfig::from_json_str(QWEN25_VL_7B_CONFIG).expect("the built-in 7B config parses");
        Self::from_config(&cfg, "Qwen2.5-VL-7B shape")
    }

    pub fn params(&self) -> f64 {
        self.text_params + self.vision_params
    }

    /// Bytes one token keeps for the backward in one decoder layer without checkpointing: the
    /// MLP's four intermediate-wide tensors, the attention's input/output and q/k/v before and
    /// after rotary (compute dtype), and the two RMSNorms' f32 input and normalised copies.
    /// No T² term: attention goes through SDPA without a mask (flash-eligible).
    pub fn layer_bytes_per_token(&self, b: f64) -> f64 {
        b * (4.0 * self.intermediate + 4.0 * self.hidden + 2.0 * (self.q_width + 2.0 * self.kv_width))
            + 16.0 * self.hidden
    }

    /// The same for one vision block and one patch (qkv is 3 × hidden wide).
    pub fn block_bytes_per_patch(&self, b: f64) -> f64 {
        b * (4.0 * self.v_intermediate + 4.0 * self.v_hidden + 6.0 * self.v_hidden) + 16.0 * self.v_hidden
    }

    /// Keys and values of one token in every decoder layer.
    pub fn kv_bytes_per_token(&self, b: f64) -> f64 {
        self.layers * 2.0 * self.kv_width * b
    }
}

/// The run settings the budget depends on (trainer defaults where the TOML is silent).
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub compute_bytes: f64,
    pub compute_dtype: String,
    /// Bytes of a master weight (None: the optimizer updates the compute weights).
    pub master_bytes: Option<f64>,
    pub zero_stage: u8,
    pub grad_checkpointing: bool,
    pub freeze_vision: bool,
    pub kl_reference: bool,
    pub micro_batch: f64,
    pub logprob_micro_batch: f64,
    pub logit_chunk: f64,
    pub max_context: f64,
    pub max_images: f64,
    pub max_pixels: f64,
    pub rollout_rows: f64,
    /// `rollout.max_batch_tokens` when the config bounds the rollout's KV cache.
    pub max_batch_tokens: Option<f64>,
}

fn lookup<'a>(root: &'a toml::Value, key: &str) -> Option<&'a toml::Value> {
    key.split('.').try_fold(root, |v, k| v.get(k))
}

fn num(root: &toml::Value, key: &str) -> Option<f64> {
    lookup(root, key).and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
}

fn dtype_bytes(name: &str) -> Result<f64> {
    Ok(match name {
        "f32" | "float32" => 4.0,
        "bf16" | "bfloat16" | "f16" | "float16" => 2.0,
        other => bail!("unknown dtype `{other}` (expected f32 or bf16)"),
    })
}

/// Sets `a.b.c=value` in `root` (the value read as TOML, else as a string), as `armt train` does.
fn apply_override(root: &mut toml::Value, assignment: &str) -> Result<()> {
    let (key, raw) = assignment
        .split_once('=')
        .with_context(|| format!("override `{assignment}`: expected key.path=value"))?;
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    };
    let mut cur = root;
    let parts: Vec<&str> = key.trim().split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let table = cur.as_table_mut().with_context(|| {
            format!(
                "override `{assignment}`: `{}` is not a table",
                parts[..i].join(".")
            )
        })?;
        if i + 1 == parts.len() {
            table.insert(part.to_string(), value);
            return Ok(());
        }
        cur = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    bail!("override `{assignment}`: empty key")
}

/// The config's TOML with `overrides` applied.
fn config_value(text: &str, origin: &str, overrides: &[String]) -> Result<toml::Value> {
    let mut root: toml::Value = toml::from_str(text).with_context(|| format!("{origin}: not TOML"))?;
    for o in overrides {
        apply_override(&mut root, o)?;
    }
    Ok(root)
}

impl RunSettings {
    /// Reads the settings from TOML text; `origin` names it in errors.
    #[cfg(test)]
    pub fn from_toml(text: &str, origin: &str, zero_stage: Option<u8>) -> Result<Self> {
        Self::from_value(&config_value(text, origin, &[])?, origin, zero_stage)
    }

    fn from_value(root: &toml::Value, origin: &str, zero_stage: Option<u8>) -> Result<Self> {
        // A plan is for GPUs: the compute dtype defaults to bf16 there.
        let compute_dtype = lookup(root, "model.dtype")
            .and_then(|v| v.as_str())
            .unwrap_or("bf16")
            .to_string();
        let compute_bytes = dtype_bytes(&compute_dtype).with_context(|| format!("{origin}: model.dtype"))?;
        let master_bytes = match lookup(root, "optim.master_dtype").and_then(|v| v.as_str()) {
            Some(m) => Some(dtype_bytes(m).with_context(|| format!("{origin}: optim.master_dtype"))?),
            // Mixed precision defaults to f32 masters whenever the compute dtype is not f32.
            None => (compute_bytes < 4.0).then_some(4.0),
        }
        .filter(|&m| m > compute_bytes);
        let zero_stage = match zero_stage {
            Some(z) => z,
            None => num(root, "train.zero_stage").unwrap_or(0.0) as u8,
        };
        if zero_stage > 2 {
            bail!("ZeRO stage {zero_stage}: expected 0, 1 or 2");
        }
        let flag = |k: &str| lookup(root, k).and_then(|v| v.as_bool()).unwrap_or(false);
        let n = num(root, "rollout.n").unwrap_or(8.0);
        let prompts = num(root, "train.prompts_per_step").unwrap_or(8.0);
        Ok(Self {
            compute_bytes,
            compute_dtype,
            master_bytes,
            zero_stage,
            grad_checkpointing: flag("model.grad_checkpointing"),
            freeze_vision: flag("model.freeze_vision"),
            kl_reference: num(root, "grpo.kl_coef").unwrap_or(0.0) > 0.0,
            micro_batch: num(root, "train.micro_batch").unwrap_or(4.0),
            logprob_micro_batch: num(root, "train.logprob_micro_batch")
                .unwrap_or(2.0 * num(root, "train.micro_batch").unwrap_or(4.0)),
            logit_chunk: num(root, "train.logit_chunk")
                .or_else(|| num(root, "train.logprob_chunk"))
                .unwrap_or(512.0),
            max_context: num(root, "rollout.max_context").unwrap_or(8192.0),
            max_images: num(root, "rollout.max_images").unwrap_or(4.0),
            // Qwen2VLImageProcessor's class default (the hub's preprocessor_config allows 12.8 MP).
            max_pixels: num(root, "model.max_pixels").unwrap_or(12_845_056.0),
            rollout_rows: prompts * n,
            max_batch_tokens: num(root, "rollout.max_batch_tokens"),
        })
    }
}

/// One line of the budget.
#[derive(Debug, Clone)]
pub struct Line {
    pub item: String,
    pub bytes: f64,
    pub how: String,
}

/// The per-GPU budget.
#[derive(Debug, Clone)]
pub struct Plan {
    pub header: String,
    pub fixed: Vec<Line>,
    /// (phase name, its lines); the peak is the largest phase.
    pub phases: Vec<(String, Vec<Line>)>,
    /// For reference: the update phase's activations with the other checkpointing setting.
    pub alternative: Line,
    pub total_bytes: f64,
    pub gpu_mem_gib: f64,
    pub advice: Vec<String>,
}

fn line(item: impl Into<String>, bytes: f64, how: impl Into<String>) -> Line {
    Line {
        item: item.into(),
        bytes,
        how: how.into(),
    }
}

fn sum(lines: &[Line]) -> f64 {
    lines.iter().map(|l| l.bytes).sum()
}

fn billions(x: f64) -> String {
    format!("{:.2} B", x / 1e9)
}

/// Activations of one training micro-batch (text and vision) with or without checkpointing.
fn update_activations(m: &ModelShape, s: &RunSettings, checkpointing: bool) -> (Line, Line) {
    let b = s.compute_bytes;
    let tokens = s.micro_batch * s.max_context;
    let per_layer = m.layer_bytes_per_token(b);
    // Embeddings, final norm, hidden-state gradient: a few hidden-wide vectors per token.
    let outside = (2.0 * b + 8.0) * m.hidden;
    let (text, how) = if checkpointing {
        (
            tokens * (m.layers * b * m.hidden + 2.0 * per_layer + outside),
            format!(
                "{tokens:.0} tokens × ({:.0} layer inputs × {:.1} KB + one layer recomputed with its gradients 2 × {:.0} KB)",
                m.layers,
                b * m.hidden / 1e3,
                per_layer / 1e3
            ),
        )
    } else {
        (
            tokens * (m.layers * per_layer + outside),
            format!(
                "{tokens:.0} tokens × {:.0} layers × {:.0} KB",
                m.layers,
                per_layer / 1e3
            ),
        )
    };
    let patches = s.micro_batch * s.max_images * s.max_pixels / m.patch_area;
    let per_block = m.block_bytes_per_patch(b);
    let (vision, vhow) = if s.freeze_vision {
        (
            patches * per_block,
            format!("{patches:.0} patches, frozen tower: one block's working set"),
        )
    } else if checkpointing {
        (
            patches * (m.v_depth * b * m.v_hidden + 2.0 * per_block),
            format!(
                "{patches:.0} patches ({:.0} images × max_pixels) × ({:.0} block inputs + one block recomputed)",
                s.micro_batch * s.max_images,
                m.v_depth
            ),
        )
    } else {
        (
            patches * m.v_depth * per_block,
            format!(
                "{patches:.0} patches × {:.0} blocks × {:.0} KB",
                m.v_depth,
                per_block / 1e3
            ),
        )
    };
    let tag = if checkpointing {
        "with checkpointing"
    } else {
        "without checkpointing"
    };
    (
        line(format!("text activations {tag}"), text, how),
        line(format!("vision activations {tag}"), vision, vhow),
    )
}

/// The budget of `s` on `gpus` GPUs of `gpu_mem_gib` each, with advice when it does not fit.
pub fn plan(m: &ModelShape, s: &RunSettings, gpus: usize, gpu_mem_gib: f64) -> Plan {
    let mut p = plan_without_advice(m, s, gpus, gpu_mem_gib);
    if p.total_bytes / GIB > gpu_mem_gib {
        p.advice = advise(m, s, gpus, gpu_mem_gib, p.total_bytes);
    }
    p
}

fn plan_without_advice(m: &ModelShape, s: &RunSettings, gpus: usize, gpu_mem_gib: f64) -> Plan {
    let n = gpus.max(1) as f64;
    let b = s.compute_bytes;
    let total = m.params();
    let trained = if s.freeze_vision { m.text_params } else { total };
    let shard = |stage: u8| if s.zero_stage >= stage { n } else { 1.0 };
    let over = |stage: u8| {
        if s.zero_stage >= stage && n > 1.0 {
            format!(" ÷ {n:.0} (ZeRO-{})", s.zero_stage)
        } else {
            String::new()
        }
    };
    let mut fixed = vec![line(
        format!("compute weights ({})", s.compute_dtype),
        total * b,
        format!("{} × {b:.0} B", billions(total)),
    )];
    let grad_bytes = if let Some(mb) = s.master_bytes {
        fixed.push(line(
            "master weights (f32)",
            trained * mb / shard(1),
            format!("{} × {mb:.0} B{}", billions(trained), over(1)),
        ));
        4.0 // gradients accumulate in f32 when there are masters
    } else {
        b
    };
    fixed.push(line(
        "gradients",
        trained * grad_bytes / shard(2),
        format!("{} × {grad_bytes:.0} B{}", billions(trained), over(2)),
    ));
    fixed.push(line(
        "AdamW moments (f32 m, v)",
        trained * 8.0 / shard(1),
        format!("{} × 8 B{}", billions(trained), over(1)),
    ));
    if s.kl_reference {
        fixed.push(line(
            "reference model (KL)",
            total * b,
            format!("{} × {b:.0} B", billions(total)),
        ));
    }
    fixed.push(line(
        "CUDA context, workspaces, allocator slack",
        RUNTIME_RESERVE_GIB * GIB,
        "reserve",
    ));

    // Rollout: every row of this GPU's share keeps a KV cache at the longest context.
    let rows = (s.rollout_rows / n).ceil();
    let kv_tok = m.kv_bytes_per_token(b);
    let (kv_tokens, kv_how) = match s.max_batch_tokens {
        Some(t) => (
            t,
            format!("rollout.max_batch_tokens {t:.0} × {:.0} KB", kv_tok / 1e3),
        ),
        None => (
            rows * s.max_context,
            format!(
                "{rows:.0} rows × {:.0} tokens × {:.0} KB (all of this GPU's rows at once)",
                s.max_context,
                kv_tok / 1e3
            ),
        ),
    };
    let rollout = vec![line("rollout KV cache", kv_tokens * kv_tok, kv_how)];

    // Old / reference log-probs: no graph, one layer's working set at a time.
    let lp_tokens = s.logprob_micro_batch * s.max_context;
    let logprob = vec![
        line(
            "old/ref log-prob forward (no grad)",
            lp_tokens * (m.layer_bytes_per_token(b) + (2.0 * b + 8.0) * m.hidden),
            format!(
                "{:.0} sequences × {:.0} tokens, one layer at a time",
                s.logprob_micro_batch, s.max_context
            ),
        ),
        line(
            "LM head chunk (no grad)",
            s.logit_chunk * m.vocab * (b + 8.0),
            format!("{:.0} positions × {:.0} vocab", s.logit_chunk, m.vocab),
        ),
    ];

    let (text, vision) = update_activations(m, s, s.grad_checkpointing);
    let (alt_text, alt_vision) = update_activations(m, s, !s.grad_checkpointing);
    let update = vec![
        text,
        vision,
        line(
            "LM head chunk with its backward",
            s.logit_chunk * m.vocab * (b + 12.0),
            format!(
                "{:.0} positions × {:.0} vocab × (logits + f32 copy, softmax, gradient)",
                s.logit_chunk, m.vocab
            ),
        ),
    ];
    let alternative = line(
        alt_text.item.replace("text activations", "update activations"),
        alt_text.bytes + alt_vision.bytes,
        "for comparison (text + vision)",
    );
    let phases = vec![
        ("rollout".to_string(), rollout),
        ("old/ref log-probs".to_string(), logprob),
        ("update (per micro-batch)".to_string(), update),
    ];
    let peak = phases.iter().map(|(_, l)| sum(l)).fold(0.0, f64::max);
    let total_bytes = sum(&fixed) + peak;
    let header = format!(
        "{}: {} parameters ({} trained), {gpus} GPU(s) × {gpu_mem_gib} GiB, ZeRO-{}, {} compute, {} masters, checkpointing {}",
        m.name,
        billions(total),
        billions(trained),
        s.zero_stage,
        s.compute_dtype,
        if s.master_bytes.is_some() { "f32" } else { "no" },
        if s.grad_checkpointing { "on" } else { "off" },
    );
    Plan {
        header,
        fixed,
        phases,
        alternative,
        total_bytes,
        gpu_mem_gib,
        advice: Vec::new(),
    }
}

/// What to change, cumulatively (each step keeps the ones before it), with the total after it,
/// until the run fits: checkpointing, micro-batches, ZeRO-2, freezing the vision tower, fewer
/// prompts per step, then more GPUs.
fn advise(m: &ModelShape, s: &RunSettings, gpus: usize, mem: f64, total: f64) -> Vec<String> {
    type Change = Box<dyn Fn(&RunSettings) -> Option<(String, RunSettings)>>;
    let changes: Vec<Change> = vec![
        Box::new(|c| {
            (!c.grad_checkpointing).then(|| {
                let n = RunSettings {
                    grad_checkpointing: true,
                    ..c.clone()
                };
                ("set model.grad_checkpointing = true".to_string(), n)
            })
        }),
        Box::new(|c| {
            (c.micro_batch > 1.0).then(|| {
                let n = RunSettings {
                    micro_batch: 1.0,
                    ..c.clone()
                };
                ("set train.micro_batch = 1".to_string(), n)
            })
        }),
        Box::new(|c| {
            (c.logprob_micro_batch > 1.0).then(|| {
                let half = (c.logprob_micro_batch / 2.0).floor().max(1.0);
                let n = RunSettings {
                    logprob_micro_batch: half,
                    ..c.clone()
                };
                (format!("set train.logprob_micro_batch = {half:.0}"), n)
            })
        }),
        Box::new(move |c| {
            (c.zero_stage < 2 && gpus > 1).then(|| {
                let n = RunSettings {
                    zero_stage: 2,
                    ..c.clone()
                };
                ("set train.zero_stage = 2".to_string(), n)
            })
        }),
        Box::new(|c| {
            (!c.freeze_vision).then(|| {
                let n = RunSettings {
                    freeze_vision: true,
                    ..c.clone()
                };
                ("set model.freeze_vision = true".to_string(), n)
            })
        }),
        Box::new(|c| {
            (c.max_batch_tokens.is_none() && c.rollout_rows > 1.0).then(|| {
                let n = RunSettings {
                    rollout_rows: (c.rollout_rows / 2.0).floor(),
                    ..c.clone()
                };
                (
                    "halve train.prompts_per_step (the rollout holds every row's KV cache at once)"
                        .to_string(),
                    n,
                )
            })
        }),
    ];
    let mut out = Vec::new();
    let (mut cur, mut best) = (s.clone(), total);
    let fits = |t: f64| t / GIB <= mem;
    for change in &changes {
        if fits(best) {
            break;
        }
        // A change may help more than once (halving again); at most a few times.
        for _ in 0..4 {
            let Some((what, next)) = change(&cur) else { break };
            let t = plan_without_advice(m, &next, gpus, mem).total_bytes;
            if t >= best - 0.05 * GIB {
                break;
            }
            let verdict = if fits(t) { "fits" } else { "still over" };
            out.push(format!("{what}: {:.1} GiB per GPU ({verdict})", t / GIB));
            (cur, best) = (next, t);
            if fits(best) {
                break;
            }
        }
    }
    // More GPUs only help through sharding.
    let zero = if cur.zero_stage < 2 {
        " with train.zero_stage = 2"
    } else {
        ""
    };
    cur.zero_stage = 2;
    let mut g = gpus;
    while !fits(best) && g < 1024 {
        g *= 2;
        let t = plan_without_advice(m, &cur, g, mem).total_bytes;
        if t < best - 0.05 * GIB {
            let verdict = if fits(t) { "fits" } else { "still over" };
            out.push(format!(
                "use {g} GPUs{zero}: {:.1} GiB per GPU ({verdict})",
                t / GIB
            ));
            best = t;
        }
    }
    if !fits(best) {
        out.push("even then it does not fit: shorten rollout.max_context or rollout.max_images".into());
    }
    out
}

/// The plan as a Markdown table, advice, and the `total:` line last.
pub fn render(p: &Plan) -> String {
    let gib = |b: f64| format!("{:.1}", b / GIB);
    let mut out = format!("{}\n\n| item | GiB per GPU | how |\n|---|---:|---|\n", p.header);
    for l in &p.fixed {
        out.push_str(&format!("| {} | {} | {} |\n", l.item, gib(l.bytes), l.how));
    }
    out.push_str(&format!("| **fixed state** | **{}** | |\n", gib(sum(&p.fixed))));
    let peak = p.phases.iter().map(|(_, l)| sum(l)).fold(0.0, f64::max);
    for (name, lines) in &p.phases {
        for l in lines {
            out.push_str(&format!(
                "| {name}: {} | {} | {} |\n",
                l.item,
                gib(l.bytes),
                l.how
            ));
        }
        let mark = if (sum(lines) - peak).abs() < 1.0 {
            " (peak)"
        } else {
            ""
        };
        out.push_str(&format!(
            "| **{name} phase{mark}** | **{}** | |\n",
            gib(sum(lines))
        ));
    }
    out.push_str(&format!(
        "| ({}) | ({}) | {} |\n",
        p.alternative.item,
        gib(p.alternative.bytes),
        p.alternative.how
    ));
    if !p.advice.is_empty() {
        out.push_str("\nIt does not fit. What would help, one change after the other:\n");
        for a in &p.advice {
            out.push_str(&format!("- {a}\n"));
        }
    }
    let verdict = if p.total_bytes / GIB <= p.gpu_mem_gib {
        "fits in"
    } else {
        "does not fit in"
    };
    out.push_str(&format!(
        "\ntotal: {} GiB per GPU ({verdict} {} GiB)",
        gib(p.total_bytes),
        p.gpu_mem_gib
    ));
    out
}

/// The model shape of a config: `model.path/config.json` when present, else the 7B shape.
fn model_shape(root: &toml::Value) -> Result<ModelShape> {
    if let Some(dir) = lookup(root, "model.path").and_then(|v| v.as_str()) {
        let json = Path::new(dir).join("config.json");
        if json.is_file() {
            let cfg = Qwen25VlConfig::from_file(&json)?;
            return Ok(ModelShape::from_config(&cfg, &json.display().to_string()));
        }
        eprintln!(
            "armt plan: {} not found; planning for the Qwen2.5-VL-7B shape",
            json.display()
        );
    }
    Ok(ModelShape::qwen25_vl_7b())
}

pub fn run(args: PlanArgs) -> Result<()> {
    if args.gpus == 0 {
        bail!("--gpus must be at least 1");
    }
    if args.gpu_mem_gib.is_nan() || args.gpu_mem_gib <= 0.0 {
        bail!("--gpu-mem-gib must be positive");
    }
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("--config {}: cannot read", args.config.display()))?;
    let origin = args.config.display().to_string();
    let root = config_value(&text, &origin, &args.overrides)?;
    let shape = model_shape(&root)?;
    let settings = RunSettings::from_value(&root, &origin, args.zero_stage)?;
    let p = plan(&shape, &settings, args.gpus, args.gpu_mem_gib);
    let extra = if args.overrides.is_empty() {
        String::new()
    } else {
        format!(" with {}", args.overrides.join(" "))
    };
    println!("armt plan: {origin}{extra}\n{}", render(&p));
    Ok(())
}

/// Estimate for one training micro-step on one GPU without an optimizer (what the GPU check
/// measures): compute weights, gradients in the compute dtype, and the update phase's peak.
pub fn micro_step_estimate_gib(
    m: &ModelShape,
    compute_bytes: f64,
    tokens: f64,
    checkpointing: bool,
    chunk: f64,
) -> f64 {
    let s = RunSettings {
        compute_bytes,
        compute_dtype: String::new(),
        master_bytes: None,
        zero_stage: 0,
        grad_checkpointing: checkpointing,
        freeze_vision: false,
        kl_reference: false,
        micro_batch: 1.0,
        logprob_micro_batch: 1.0,
        logit_chunk: chunk,
        max_context: tokens,
        max_images: 0.0,
        max_pixels: 0.0,
        rollout_rows: 0.0,
        max_batch_tokens: None,
    };
    let (text, vision) = update_activations(m, &s, checkpointing);
    let head = chunk * m.vocab * (compute_bytes + 12.0);
    (m.params() * 2.0 * compute_bytes + text.bytes + vision.bytes + head) / GIB
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: f64 = 1e9;

    fn close(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= rel * want.abs()
    }

    #[test]
    fn the_7b_shape_has_the_published_parameter_count() {
        let m = ModelShape::qwen25_vl_7b();
        // scale.md: 8.29 B in all; text weights + LM head (without the input embeddings) 7.07 B.
        assert!(close(m.params(), 8.29e9, 0.005), "{}", m.params());
        assert!(
            close(m.text_params - m.vocab * m.hidden, 7.07e9, 0.005),
            "{}",
            m.text_params
        );
    }

    #[test]
    fn fixed_state_at_7b_matches_scale_md() {
        let m = ModelShape::qwen25_vl_7b();
        let settings = |zero: u8| {
            RunSettings::from_toml(
                &format!("[model]\ndtype = \"bf16\"\n[train]\nzero_stage = {zero}\n"),
                "test",
                None,
            )
            .unwrap()
        };
        let fixed = |zero: u8, n: usize| {
            let p = plan(&m, &settings(zero), n, 80.0);
            let by = |name: &str| p.fixed.iter().find(|l| l.item.starts_with(name)).unwrap().bytes;
            (
                by("compute weights"),
                by("gradients"),
                by("master weights"),
                by("AdamW"),
                sum(&p.fixed) - RUNTIME_RESERVE_GIB * GIB,
            )
        };
        // The table of scale.md: 16.6 / 33.2 / 33.2 / 66.3 GB, 149 GB in all.
        let (w, g, ms, adam, all) = fixed(0, 1);
        assert!(close(w, 16.6 * GB, 0.01) && close(g, 33.2 * GB, 0.01), "{w} {g}");
        assert!(
            close(ms, 33.2 * GB, 0.01) && close(adam, 66.3 * GB, 0.01),
            "{ms} {adam}"
        );
        assert!(close(all, 149.0 * GB, 0.01), "{all}");
        // At N = 8: ZeRO-1 ≈ 62 GB, ZeRO-2 ≈ 33 GB.
        assert!(close(fixed(1, 8).4, 62.0 * GB, 0.02), "{}", fixed(1, 8).4);
        assert!(close(fixed(2, 8).4, 33.2 * GB, 0.02), "{}", fixed(2, 8).4);
    }

    #[test]
    fn activations_kv_and_logits_match_scale_md() {
        let m = ModelShape::qwen25_vl_7b();
        // ~260 KB per token per layer, ~7.3 MB per token, ~60 GB for one 8k sequence.
        assert!(close(m.layer_bytes_per_token(2.0), 260e3, 0.05));
        assert!(close(
            28.0 * m.layer_bytes_per_token(2.0) * 8192.0,
            60.0 * GB,
            0.05
        ));
        // Checkpointed: layer inputs 7 KB per token per layer, ~1.6 GB at 8k.
        assert!(close(m.layers * 2.0 * m.hidden * 8192.0, 1.6 * GB, 0.05));
        // KV cache: 57 KB per token; 1,024 rows × 2k tokens = 117 GB.
        assert!(close(m.kv_bytes_per_token(2.0), 57e3, 0.02));
        assert!(close(
            m.kv_bytes_per_token(2.0) * 1024.0 * 2048.0,
            117.0 * GB,
            0.03
        ));
        // Vision: ~2 MB per patch trained.
        assert!(close(m.v_depth * m.block_bytes_per_patch(2.0), 2.0e6, 0.2));
    }

    #[test]
    fn the_plan_advises_when_it_does_not_fit_and_ends_with_the_total() {
        let m = ModelShape::qwen25_vl_7b();
        let s = RunSettings::from_toml(
            "[train]\nmicro_batch = 4\n[rollout]\nmax_context = 8192\n",
            "test",
            None,
        )
        .unwrap();
        let p = plan(&m, &s, 1, 80.0);
        let text = render(&p);
        assert!(
            text.lines().last().unwrap().ends_with("(does not fit in 80 GiB)"),
            "{text}"
        );
        assert!(text.contains("model.grad_checkpointing = true"), "{text}");
        assert!(text.contains("GPUs") || text.contains("(fits)"), "{text}");
        assert!(
            text.contains("(fits)"),
            "the advice leads to a plan that fits:\n{text}"
        );
        // Checkpointing shrinks the update phase by far.
        let on = RunSettings {
            grad_checkpointing: true,
            ..s.clone()
        };
        let (a, _) = update_activations(&m, &s, false);
        let (b, _) = update_activations(&m, &on, true);
        assert!(b.bytes * 5.0 < a.bytes);
        // A tiny model fits.
        let tiny = r#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000,
            "rope_scaling": {"type": "mrope", "mrope_section": [4, 2, 2]},
            "vision_config": {"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
            "out_hidden_size": 64}}"#;
        let cfg = Qwen25VlConfig::from_json_str(tiny).unwrap();
        let p = plan(&ModelShape::from_config(&cfg, "tiny"), &s, 1, 80.0);
        assert!(render(&p).ends_with("(fits in 80 GiB)") && p.advice.is_empty());
    }

    #[test]
    fn shipped_7b_configs_fit_on_8_gpus_of_80_gib() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        for name in ["qwen2.5-vl-7b-stage1.toml", "qwen2.5-vl-7b-stage2.toml"] {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).unwrap();
            let s = RunSettings::from_toml(&text, name, None).unwrap();
            assert!(s.grad_checkpointing && s.master_bytes == Some(4.0), "{name}");
            let p = plan(&ModelShape::qwen25_vl_7b(), &s, 8, 80.0);
            let text = render(&p);
            assert!(text.ends_with("(fits in 80 GiB)"), "{name}:\n{text}");
        }
    }
}
