//! `armt rollout-bench --preset 7b --device cuda --out DIR` (a developer command): the rollout
//! engine's speed on a random model of a given shape, without any checkpoint on disk.
//!
//! 1. decode step time at several batch sizes, against the bandwidth floor (the text weights and
//!    LM head read once per step ÷ the card's memory bandwidth; the KV read listed apart);
//! 2. prefill tokens/s of one long prompt (chunked as the rollout does);
//! 3. one full rollout (groups × n rows, zoom tool, one image per prompt) through `RolloutEnv`.
//!
//! Writes `DIR/rollout-bench.md` (a table) and `DIR/rollout-bench.json`. The tokenizer and
//! processor files are the built-in tiny default's (the shape, not the vocabulary, sets the cost).

use crate::forward::{parse_device, parse_dtype};
use anyhow::{bail, Context, Result};
use armt_data::{Judgment, Sample, TaskKind};
use armt_model::Qwen25Vl;
use armt_processing::Processor;
use armt_rollout::{CachePlan, Generator, ModelGenerator, RolloutConfig, RolloutEnv, RowRng, SamplingConfig};
use armt_synth::TinyModelSpec;
use armt_tools::ToolRegistry;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Kind};

#[derive(clap::Args)]
pub struct RolloutBenchArgs {
    /// Model shape: `7b` (Qwen2.5-VL-7B) or `tiny` (the built-in default's, for dry runs).
    #[arg(long, default_value = "7b")]
    preset: String,
    /// Output directory (created).
    #[arg(long)]
    out: PathBuf,
    /// cpu, cuda or cuda:N (default: cuda if available).
    #[arg(long)]
    device: Option<String>,
    /// f32 or bf16 (default: f32 on CPU, bf16 on CUDA).
    #[arg(long)]
    dtype: Option<String>,
    /// Decode batch sizes.
    #[arg(long, default_value = "16,64,256", value_delimiter = ',')]
    batches: Vec<usize>,
    /// Prompt tokens of each group in the decode measurement.
    #[arg(long, default_value_t = 512)]
    context: usize,
    /// Decode steps timed per batch size (after one warm-up window).
    #[arg(long, default_value_t = 32)]
    steps: usize,
    /// Prompt length of the prefill measurement.
    #[arg(long, default_value_t = 4096)]
    prefill: usize,
    /// Memory bandwidth of the card in GB/s (H100 SXM: 3350, H200: 4800).
    #[arg(long, default_value_t = 3350.0)]
    bandwidth_gbs: f64,
    /// The full rollout: groups × n rows, up to this many response tokens each.
    #[arg(long, default_value_t = 8)]
    groups: usize,
    #[arg(long, default_value_t = 16)]
    n: usize,
    #[arg(long, default_value_t = 256)]
    response_tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Tool config of the full rollout.
    #[arg(long, default_value = "configs/tools/zoom.yaml")]
    tools: PathBuf,
}

fn spec(preset: &str) -> Result<TinyModelSpec> {
    Ok(match preset {
        "tiny" => TinyModelSpec::default(),
        "7b" => TinyModelSpec {
            hidden_size: 3584,
            intermediate_size: 18944,
            num_hidden_layers: 28,
            num_attention_heads: 28,
            num_key_value_heads: 4,
            mrope_section: [16, 24, 24],
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: false,
            max_position_embeddings: 128_000,
            vision_depth: 32,
            vision_hidden_size: 1280,
            vision_intermediate_size: 3420,
            vision_num_heads: 16,
            fullatt_block_indexes: vec![7, 15, 23, 31],
            min_pixels: 3136,
            max_pixels: 448 * 448,
        },
        other => bail!("--preset {other}: expected 7b or tiny"),
    })
}

/// Writes the model files (tiny tokenizer, preset shape; the 7B preset with Qwen's vocabulary
/// size and window) into `dir`.
fn model_dir(dir: &Path, preset: &str) -> Result<()> {
    let tok = armt_synth::build_tiny_tokenizer(&armt_synth::fixed_corpus())?;
    armt_synth::tiny_model_files_with(dir, &tok, &spec(preset)?)?;
    if preset == "7b" {
        let path = dir.join("config.json");
        let mut cfg: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        cfg["vocab_size"] = json!(152064);
        cfg["vision_config"]["window_size"] = json!(112);
        std::fs::write(&path, serde_json::to_string_pretty(&cfg)?)?;
    }
    Ok(())
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

pub fn run(args: RolloutBenchArgs) -> Result<()> {
    let device = parse_device(args.device.as_deref())?;
    let kind = parse_dtype(args.dtype.as_deref(), device)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let dir = args.out.join("model");
    model_dir(&dir, &args.preset)?;
    let config = armt_model::Qwen25VlConfig::from_file(&dir.join("config.json"))?;
    let mut model = Qwen25Vl::new(config, device, kind);
    model.init_random(0.02, 1);
    let processor = Processor::from_model_dir(&dir)?;
    let elt = match kind {
        Kind::Float => 4.0,
        _ => 2.0,
    };
    // Read once per decode step: every text weight but the embedding table, and the LM head.
    let weight_bytes: f64 = model
        .var_store()
        .variables()
        .iter()
        .filter(|(name, _)| {
            (name.starts_with("model.") && !name.contains("embed_tokens")) || name.starts_with("lm_head")
        })
        .map(|(_, t)| t.numel() as f64 * elt)
        .sum();
    let tc = &model.config.text;
    let kv_bytes_per_token = (tc.num_hidden_layers * 2 * tc.num_key_value_heads * tc.head_dim) as f64 * elt;
    let floor_ms = weight_bytes / (args.bandwidth_gbs * 1e9) * 1e3;
    let mut report = format!(
        "# rollout engine on a random `{}` model ({:?}, {:?})\n\n\
         text weights + LM head read per decode step: {:.2} GB; bandwidth {:.0} GB/s ⇒ floor {:.2} ms\n\n\
         | batch | context | step ms | floor ms | step / floor | KV read ms at floor bw | tokens/s |\n\
         |---|---|---|---|---|---|---|\n",
        args.preset,
        device,
        kind,
        weight_bytes / 1e9,
        args.bandwidth_gbs,
        floor_ms
    );
    let mut rows = Vec::new();
    for &batch in &args.batches {
        let (step_ms, ctx) = time_decode(&model, batch, args.context, args.steps, args.seed)?;
        let kv_ms = batch as f64 * ctx * kv_bytes_per_token / (args.bandwidth_gbs * 1e9) * 1e3;
        let line = format!(
            "| {batch} | {ctx:.0} | {step_ms:.2} | {floor_ms:.2} | {:.2} | {kv_ms:.2} | {:.0} |\n",
            step_ms / floor_ms,
            batch as f64 / step_ms * 1e3
        );
        eprint!("{line}");
        report.push_str(&line);
        rows.push(
            json!({"batch": batch, "context": ctx, "step_ms": step_ms, "floor_ms": floor_ms, "kv_ms": kv_ms}),
        );
    }
    let prefill_tps = time_prefill(&model, args.prefill)?;
    let line = format!(
        "\nprefill: {} tokens at {prefill_tps:.0} tokens/s\n",
        args.prefill
    );
    eprint!("{line}");
    report.push_str(&line);
    let full = full_rollout(&model, &processor, &args)?;
    eprint!("{}", full.0);
    report.push_str(&full.0);
    std::fs::write(args.out.join("rollout-bench.md"), &report)?;
    std::fs::write(
        args.out.join("rollout-bench.json"),
        serde_json::to_string_pretty(&json!({
            "preset": args.preset, "weight_bytes": weight_bytes, "bandwidth_gbs": args.bandwidth_gbs,
            "decode": rows, "prefill_tokens_per_s": prefill_tps, "rollout": full.1,
        }))?,
    )?;
    println!("{report}");
    Ok(())
}

/// Mean decode step (ms) of `batch` rows in groups of up to 16 sharing a `context`-token prompt,
/// and the mean context during the timed steps.
fn time_decode(
    model: &Qwen25Vl,
    batch: usize,
    context: usize,
    steps: usize,
    seed: u64,
) -> Result<(f64, f64)> {
    let n = batch.min(16);
    if !batch.is_multiple_of(n) {
        bail!("batch {batch} is not a multiple of {n}");
    }
    let sync_every = 8;
    let warm = sync_every;
    let plan = CachePlan {
        groups: batch / n,
        rows_per_group: n,
        prefix_tokens: context,
        suffix_tokens: warm + steps + sync_every + 2,
        turn_tokens: warm + steps,
        prefill_chunk: 2048,
        sync_every,
    };
    let mut g = ModelGenerator::new(model, SamplingConfig::default(), 0);
    g.prepare(&plan)?;
    let vocab = model.config.text.vocab_size.min(1000) as i64;
    for b in 0..plan.groups {
        // Plain text ids (below any special token of the tiny tokenizer's range is not needed:
        // random ids of the first thousand are ordinary tokens).
        let ids: Vec<i64> = (0..context as i64)
            .map(|j| 10 + (j * 7 + b as i64) % (vocab - 10))
            .collect();
        let rows: Vec<(usize, RowRng)> = (0..n)
            .map(|j| (b * n + j, RowRng::new(seed, 0, b as u64, j as u64)))
            .collect();
        g.add_group(
            b,
            &armt_rollout::Chunk {
                ids,
                ..Default::default()
            },
            &rows,
        )?;
        for (r, _) in rows {
            g.begin_turn(r, warm + steps)?;
        }
    }
    let _ = g.step(&[])?; // warm-up window
    sync(model.device());
    let started = Instant::now();
    let mut done = warm;
    while done < warm + steps {
        let ended = g.step(&[])?;
        done += sync_every.min(warm + steps - done);
        if !ended.is_empty() {
            break;
        }
    }
    let ms = started.elapsed().as_secs_f64() * 1e3 / (done - warm) as f64;
    Ok((ms, context as f64 + (warm + done) as f64 / 2.0))
}

fn time_prefill(model: &Qwen25Vl, tokens: usize) -> Result<f64> {
    let plan = CachePlan {
        groups: 1,
        rows_per_group: 1,
        prefix_tokens: tokens,
        suffix_tokens: 2,
        turn_tokens: 1,
        prefill_chunk: 2048,
        sync_every: 1,
    };
    let mut g = ModelGenerator::new(model, SamplingConfig::default(), 0);
    g.prepare(&plan)?;
    let ids: Vec<i64> = (0..tokens as i64).map(|j| 10 + j % 900).collect();
    let chunk = armt_rollout::Chunk {
        ids,
        ..Default::default()
    };
    let row = [(0usize, RowRng::new(0, 0, 0, 0))];
    g.add_group(0, &chunk, &row)?; // warm-up
    sync(model.device());
    let started = Instant::now();
    g.add_group(0, &chunk, &row)?;
    sync(model.device());
    Ok(tokens as f64 / started.elapsed().as_secs_f64())
}

/// One rollout of `groups × n` rows with the zoom tool and an image per prompt.
fn full_rollout(model: &Qwen25Vl, processor: &Processor, args: &RolloutBenchArgs) -> Result<(String, Value)> {
    let image_path = args.out.join("bench-image.png");
    image::RgbImage::from_fn(448, 336, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    })
    .save(&image_path)
    .with_context(|| format!("writing {}", image_path.display()))?;
    let samples: Vec<Sample> = (0..args.groups)
        .map(|k| Sample {
            id: format!("bench-{k}"),
            task: TaskKind::Zoom,
            prompt: format!(
                "Which answer describes the picture better?\nAnswer 1: red.\nAnswer 2: blue.{}",
                " More detail.".repeat(k)
            ),
            images: vec![image_path.clone()],
            document: None,
            response: None,
            judgment: Judgment::Pair { candidates: 2 },
            ground_truth: "1".into(),
            source: None,
        })
        .collect();
    let tools = ToolRegistry::from_yaml_file(&args.tools)?;
    let config = RolloutConfig {
        n: args.n,
        max_rows: args.groups * args.n,
        max_turns: 3,
        max_response_tokens: args.response_tokens,
        max_turn_tokens: args.response_tokens,
        sampling: SamplingConfig {
            seed: args.seed,
            ..SamplingConfig::default()
        },
        ..RolloutConfig::default()
    };
    let env = RolloutEnv {
        processor,
        tools: &tools,
        config: &config,
        image_dir: None,
    };
    let pad = armt_rollout::TemplateIds::from_tokenizer(processor.tokenizer())?.endoftext;
    let mut g = ModelGenerator::new(model, config.sampling.clone(), pad);
    let started = Instant::now();
    let out = env.run_keyed(&mut g, &samples, args.n, 0, None, |_| {})?;
    sync(model.device());
    let secs = started.elapsed().as_secs_f64();
    let tokens: usize = out.rollouts.iter().map(|r| r.trajectory.response_len()).sum();
    let calls: usize = out
        .rollouts
        .iter()
        .map(|r| r.trajectory.tool_calls().count())
        .sum();
    let text = format!(
        "\nfull rollout: {} groups x {} rows, zoom tool: {} response tokens ({} tool calls) in {secs:.2}s = {:.0} tokens/s; \
         KV cache {} positions\n",
        args.groups,
        args.n,
        tokens,
        calls,
        tokens as f64 / secs,
        g.allocated_kv_tokens()
    );
    Ok((
        text,
        json!({"groups": args.groups, "n": args.n, "tokens": tokens, "tool_calls": calls, "seconds": secs}),
    ))
}
