//! `armt rollout --model DIR --data FILE.jsonl --tools TOOLS.yaml --n 4 --out traj.jsonl`

use crate::forward::{parse_device, parse_dtype};
use anyhow::{bail, Context, Result};
use armt_model::Qwen25Vl;
use armt_processing::Processor;
use armt_rollout::{ModelGenerator, RolloutConfig, RolloutEnv, SamplingConfig, TemplateIds};
use armt_tools::ToolRegistry;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct RolloutArgs {
    /// Checkpoint directory (config.json, safetensors, tokenizer.json, preprocessor_config.json).
    #[arg(long)]
    model: PathBuf,
    /// Dataset JSONL (one sample per line; see docs/DATA.md).
    #[arg(long)]
    data: PathBuf,
    /// Tool config YAML (e.g. configs/tools/all.yaml).
    #[arg(long)]
    tools: PathBuf,
    /// Rollouts per sample (the GRPO group size).
    #[arg(long, default_value_t = 4)]
    n: usize,
    /// Output JSONL of trajectories; observation images go to OUT.images/.
    #[arg(long)]
    out: PathBuf,
    /// Samples rolled out together (batch rows = samples × n).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Only the first N samples.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 5)]
    max_turns: usize,
    #[arg(long, default_value_t = 4096)]
    max_response_tokens: usize,
    #[arg(long, default_value_t = 2048)]
    max_turn_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Rows decoding at once (whole groups of n are admitted as rows finish).
    #[arg(long, default_value_t = 64)]
    max_rows: usize,
    /// KV-cache positions the rollout may hold (see rollout.max_batch_tokens).
    #[arg(long, default_value_t = 1 << 20)]
    max_batch_tokens: usize,
    /// cpu, cuda or cuda:N (default: cuda if available).
    #[arg(long)]
    device: Option<String>,
    /// f32 or bf16 (default: f32 on CPU, bf16 on CUDA).
    #[arg(long)]
    dtype: Option<String>,
}

pub fn run(args: RolloutArgs) -> Result<()> {
    if args.n == 0 || args.batch == 0 {
        bail!("--n and --batch must be at least 1");
    }
    let device = parse_device(args.device.as_deref())?;
    let kind = parse_dtype(args.dtype.as_deref(), device)?;
    let mut samples = armt_data::read_samples(&args.data)?;
    if let Some(l) = args.limit {
        samples.truncate(l);
    }
    if samples.is_empty() {
        bail!("{}: no samples", args.data.display());
    }
    let check = armt_data::validate::DatasetCheck::for_file(&args.data);
    armt_data::validate::validate_samples(&samples, &check)?;
    let tools = ToolRegistry::from_yaml_file(&args.tools)?;
    let processor = Processor::from_model_dir(&args.model)?;
    let model = Qwen25Vl::load(&args.model, device, kind)?;
    let pad = TemplateIds::from_tokenizer(processor.tokenizer())?.endoftext;
    let config = RolloutConfig {
        max_turns: args.max_turns,
        max_response_tokens: args.max_response_tokens,
        max_turn_tokens: args.max_turn_tokens,
        max_rows: args.max_rows,
        max_batch_tokens: args.max_batch_tokens,
        sampling: SamplingConfig {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            seed: args.seed,
        },
        ..RolloutConfig::default()
    };
    let image_dir = PathBuf::from(format!("{}.images", args.out.display()));
    std::fs::create_dir_all(&image_dir).with_context(|| format!("creating {}", image_dir.display()))?;
    let env = RolloutEnv {
        processor: &processor,
        tools: &tools,
        config: &config,
        image_dir: Some(image_dir),
    };

    let tmp = args.out.with_extension("jsonl.partial");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let total = samples.len() * args.n;
    let bar = ProgressBar::new(total as u64);
    bar.set_style(ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {pos}/{len} trajectories {msg}",
    )?);
    let started = Instant::now();
    let (mut tokens, mut done, mut skipped) = (0usize, 0usize, 0usize);
    for (b, chunk) in samples.chunks(args.batch).enumerate() {
        // Rows draw from (seed, sample index, row), so the result does not depend on how
        // batches are cut.
        let mut generator = ModelGenerator::new(&model, config.sampling.clone(), pad);
        let groups: Vec<u64> = (0..chunk.len()).map(|i| (b * args.batch + i) as u64).collect();
        let base = done;
        let outcome = env.run_keyed(&mut generator, chunk, args.n, 0, Some(&groups), |finished| {
            bar.set_position((base + finished) as u64)
        })?;
        skipped += outcome.skipped.len();
        let rollouts = outcome.rollouts;
        for r in &rollouts {
            tokens += r.trajectory.response_len();
            serde_json::to_writer(&mut file, &r.trajectory)?;
            file.write_all(b"\n")?;
        }
        done += rollouts.len();
        bar.set_position(done as u64);
        bar.set_message(format!(
            "{:.0} response tokens/s",
            tokens as f64 / started.elapsed().as_secs_f64()
        ));
    }
    file.flush()?;
    drop(file);
    std::fs::rename(&tmp, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    bar.finish();
    eprintln!(
        "armt rollout: {done} trajectories, {tokens} response tokens in {:.1}s -> {}",
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    if skipped > 0 {
        eprintln!("armt rollout: {skipped} samples skipped (prompt too long for the limits)");
    }
    Ok(())
}
