//! `armt dev ...`: hidden helpers for `scripts/gpu-check`, which runs on a machine with a GPU and
//! PyTorch but no Rust and no hub access:
//! * `tiny-model --root DIR`: the built-in tiny checkpoint and task set (prints the model dir);
//! * `rel-error A B --key logits`: ‖A − B‖ / ‖B‖ of one tensor of two safetensors files;
//! * `model-config-7b`: the hub's config.json of Qwen2.5-VL-7B-Instruct;
//! * `micro-step --model-config config.json`: a random-weight model built directly on the
//!   device and one GRPO micro-step (old log-probs without grad, then the policy loss's forward
//!   and backward) on one synthetic sequence, timed.

use crate::forward::{parse_device, parse_dtype};
use anyhow::{bail, Context, Result};
use armt_grpo::{policy_loss, AggNorm, EntropyGrad, GrpoConfig, PolicyBatch};
use armt_model::{Qwen25Vl, Qwen25VlConfig};
use armt_processing::ProcessedImage;
use armt_train::{logprobs_rows_no_grad, policy_logprobs, Example};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(clap::Subcommand)]
pub enum DevCommand {
    /// Writes the built-in tiny checkpoint and task set under ROOT; prints the model directory.
    TinyModel {
        #[arg(long)]
        root: PathBuf,
    },
    /// Relative error ‖A − B‖ / ‖B‖ of tensor KEY in two safetensors files.
    RelError {
        a: PathBuf,
        b: PathBuf,
        #[arg(long, default_value = "logits")]
        key: String,
    },
    /// One timed GRPO micro-step of a random-weight model built on the device.
    MicroStep(MicroStepArgs),
    /// Prints the hub's config.json of Qwen2.5-VL-7B-Instruct.
    #[command(name = "model-config-7b")]
    ModelConfig7b,
}

#[derive(clap::Args)]
pub struct MicroStepArgs {
    /// The model's config.json (its weights are random).
    #[arg(long)]
    model_config: PathBuf,
    #[arg(long)]
    device: Option<String>,
    #[arg(long)]
    dtype: Option<String>,
    /// Tokens of the sequence (the second half is the trained response).
    #[arg(long, default_value_t = 4096)]
    tokens: usize,
    /// Side, in patches, of one square image at the start of the sequence (0: text only).
    #[arg(long, default_value_t = 0)]
    image_side: usize,
    /// Recompute decoder layers and vision blocks in the backward.
    #[arg(long)]
    checkpointing: bool,
    #[arg(long, default_value_t = 512)]
    logit_chunk: i64,
    /// Timed repetitions after one warm-up step (the median is reported).
    #[arg(long, default_value_t = 2)]
    repeat: usize,
}

pub fn run(cmd: DevCommand) -> Result<()> {
    match cmd {
        DevCommand::TinyModel { root } => {
            // The model is what is wanted here: a small task set keeps this quick.
            let section = armt_train::BuiltinSection {
                train_tasks: 60,
                val_tasks: 12,
                ..Default::default()
            };
            let b = armt_train::builtin::prepare(&root, 1, &section)?;
            println!("{}", b.model_dir.display());
            Ok(())
        }
        DevCommand::RelError { a, b, key } => {
            let read = |p: &PathBuf| -> Result<Tensor> {
                Tensor::read_safetensors(p)
                    .with_context(|| format!("reading {}", p.display()))?
                    .into_iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, t)| t.to_kind(Kind::Double))
                    .with_context(|| format!("{}: no tensor `{key}`", p.display()))
            };
            let (ta, tb) = (read(&a)?, read(&b)?);
            if ta.size() != tb.size() {
                bail!("shapes differ: {:?} vs {:?}", ta.size(), tb.size());
            }
            let err = (&ta - &tb).norm().double_value(&[]) / tb.norm().double_value(&[]).max(1e-30);
            println!("{err:.3e}");
            Ok(())
        }
        DevCommand::MicroStep(args) => micro_step(args),
        DevCommand::ModelConfig7b => {
            println!("{}", crate::plan::QWEN25_VL_7B_CONFIG);
            Ok(())
        }
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// One sequence: an optional image (vision start, pads, vision end), then random text ids.
fn synthetic_example(cfg: &Qwen25VlConfig, tokens: usize, image_side: usize) -> Result<Example> {
    let mut ids = Vec::with_capacity(tokens);
    let mut images = Vec::new();
    if image_side > 0 {
        let merge = cfg.vision.spatial_merge_size;
        if !image_side.is_multiple_of(merge) {
            bail!("--image-side {image_side} must be a multiple of the merge size {merge}");
        }
        let patches = image_side * image_side;
        let v = &cfg.vision;
        let patch_dim = v.in_chans * v.temporal_patch_size * v.patch_size * v.patch_size;
        ids.push(cfg.vision_start_token_id);
        ids.extend(std::iter::repeat_n(cfg.image_token_id, patches / (merge * merge)));
        ids.push(cfg.vision_start_token_id + 1); // <|vision_end|>
        let pixels = Tensor::randn([(patches * patch_dim) as i64], (Kind::Float, Device::Cpu));
        images.push(ProcessedImage {
            pixel_values: std::sync::Arc::new(Vec::try_from(pixels)?),
            grid_thw: [1, image_side, image_side],
            patch_dim,
        });
    }
    if ids.len() + 2 > tokens {
        bail!("--tokens {tokens} leaves no room for text after the image");
    }
    // Ordinary text ids: below every special token.
    let text_vocab = (cfg.vision_start_token_id.min(cfg.text.vocab_size as i64) - 16).max(2);
    let text = Tensor::randint(
        text_vocab,
        [(tokens - ids.len()) as i64],
        (Kind::Int64, Device::Cpu),
    );
    ids.extend(Vec::<i64>::try_from(text)?);
    let prompt_len = tokens / 2;
    Ok(Example {
        loss_mask: vec![1; tokens - prompt_len],
        ids,
        prompt_len,
        images,
    })
}

fn micro_step(args: MicroStepArgs) -> Result<()> {
    let device = parse_device(args.device.as_deref())?;
    let kind = parse_dtype(args.dtype.as_deref(), device)?;
    let cfg = Qwen25VlConfig::from_file(&args.model_config)?;
    tch::manual_seed(0);
    let built = Instant::now();
    let mut model = Qwen25Vl::new(cfg.clone(), device, kind);
    model.init_random(0.02, 0);
    model.set_grad_checkpointing(args.checkpointing);
    sync(device);
    let build_s = built.elapsed().as_secs_f64();
    let example = synthetic_example(&cfg, args.tokens, args.image_side)?;
    let exs = [&example];
    let pad = 0;
    let grpo = GrpoConfig::default();
    let norm = AggNorm {
        batch_num_tokens: Some(example.num_trained() as f64),
        global_batch_size: Some(1.0),
        loss_scale_factor: None,
    };
    let run_once = || -> Result<(f64, f64, f64)> {
        let t0 = Instant::now();
        let old = logprobs_rows_no_grad(&model, &exs, pad, args.logit_chunk, 1)?;
        sync(device);
        let old_s = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let lp = policy_logprobs(&model, &exs, pad, args.logit_chunk, EntropyGrad::NoGrad)?;
        let old_t = Tensor::from_slice(&old[0]).view([1, -1]).to_device(device);
        // Perturbed old log-probs so the ratio is not 1 everywhere (clipping takes part).
        let old_t = &old_t + old_t.randn_like() * 0.05;
        let adv = Tensor::from_slice(&[1.0f32]).to_device(device);
        let batch = PolicyBatch {
            log_probs: &lp.logp,
            old_log_probs: &old_t,
            advantages: &adv,
            loss_mask: &lp.mask,
            ref_log_probs: None,
            entropy: lp.entropy.as_ref(),
        };
        let (loss, stats) = policy_loss(&batch, &grpo, &norm)?;
        lp.backward(&loss);
        sync(device);
        let step_s = t1.elapsed().as_secs_f64();
        for (_, t) in model.var_store().variables() {
            let mut g = t.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        Ok((old_s, step_s, stats.loss))
    };
    run_once()?; // warm-up: kernels, cuBLAS handles, allocator
    let mut runs: Vec<(f64, f64, f64)> = (0..args.repeat.max(1))
        .map(|_| run_once())
        .collect::<Result<_>>()?;
    runs.sort_by(|a, b| a.1.total_cmp(&b.1));
    let (old_s, step_s, loss) = runs[runs.len() / 2];
    let shape = crate::plan::ModelShape::from_config(&cfg, "model");
    let bytes = if kind == Kind::Float { 4.0 } else { 2.0 };
    let estimate = crate::plan::micro_step_estimate_gib(
        &shape,
        bytes,
        args.tokens as f64,
        args.checkpointing,
        args.logit_chunk as f64,
    );
    let summary = serde_json::json!({
        "device": format!("{device:?}"),
        "dtype": format!("{kind:?}"),
        "params": shape.params(),
        "tokens": args.tokens,
        "trained_tokens": example.num_trained(),
        "image_patches": args.image_side * args.image_side,
        "checkpointing": args.checkpointing,
        "build_s": build_s,
        "old_logprob_s": old_s,
        "micro_step_s": step_s,
        "loss": loss,
        "plan_estimate_gib": estimate,
    });
    println!("{summary}");
    Ok(())
}
