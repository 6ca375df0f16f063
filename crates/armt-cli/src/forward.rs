//! `armt forward --model DIR --chat CHAT.json --out OUT.safetensors`

use anyhow::{bail, Context, Result};
use armt_model::{default_kind_for, Qwen25Vl};
use armt_processing::{Chat, Processor};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(clap::Args)]
pub struct ForwardArgs {
    /// Checkpoint directory: config.json, safetensors, tokenizer.json, preprocessor_config.json.
    #[arg(long)]
    model: PathBuf,
    /// Chat file: {"messages": [...], "add_generation_prompt": true, "tools": [...]}.
    #[arg(long)]
    chat: PathBuf,
    /// Output safetensors: input_ids, logits (f32), pixel_values, image_grid_thw.
    #[arg(long)]
    out: PathBuf,
    /// cpu, cuda or cuda:N (default: cuda if available, else cpu).
    #[arg(long)]
    device: Option<String>,
    /// f32 or bf16 (default: f32 on CPU, bf16 on CUDA).
    #[arg(long)]
    dtype: Option<String>,
    /// Time the forward pass this many times (after one warm-up) and print the median.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
}

pub fn parse_device(s: Option<&str>) -> Result<Device> {
    let device = match s {
        None => Device::cuda_if_available(),
        Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda(0),
        Some(s) => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::Cuda(n),
            None => bail!("--device: expected cpu, cuda or cuda:N, got `{s}`"),
        },
    };
    // Checked here: libtorch would otherwise abort with a C++ trace at the first tensor.
    if let Device::Cuda(n) = device {
        let count = if tch::Cuda::is_available() {
            tch::Cuda::device_count()
        } else {
            0
        };
        if count == 0 {
            bail!(
                "device `{}`: CUDA is not available to libtorch here (no GPU, or a CPU-only libtorch); use cpu",
                s.unwrap_or("cuda")
            );
        }
        if n as i64 >= count {
            bail!(
                "device `cuda:{n}`: only {count} CUDA device(s) (cuda:0..cuda:{})",
                count - 1
            );
        }
    }
    Ok(device)
}

pub fn parse_dtype(s: Option<&str>, device: Device) -> Result<Kind> {
    Ok(match s {
        None => default_kind_for(device),
        Some("f32") | Some("float32") => Kind::Float,
        Some("bf16") | Some("bfloat16") => Kind::BFloat16,
        Some(s) => bail!("--dtype: expected f32 or bf16, got `{s}`"),
    })
}

pub fn run(args: ForwardArgs) -> Result<()> {
    let device = parse_device(args.device.as_deref())?;
    let kind = parse_dtype(args.dtype.as_deref(), device)?;
    let chat = Chat::from_json_file(&args.chat)?;
    if chat.messages.is_empty() {
        bail!(
            "{}: the chat has no messages (nothing to run the model on)",
            args.chat.display()
        );
    }
    let processor = Processor::from_model_dir(&args.model)?;
    let encoded = processor.encode_chat(&chat)?;
    if encoded.input_ids.is_empty() {
        bail!("{}: the chat renders to no tokens", args.chat.display());
    }
    let started = Instant::now();
    let model = Qwen25Vl::load(&args.model, device, kind)?;
    let load_s = started.elapsed().as_secs_f64();

    let n = encoded.input_ids.len() as i64;
    let input_ids = Tensor::from_slice(&encoded.input_ids);
    let grid: Vec<[i64; 3]> = encoded.image_grid_thw.clone();
    let pixel_values = (!grid.is_empty()).then(|| {
        Tensor::from_slice(&encoded.pixel_values).view([encoded.num_patches as i64, encoded.patch_dim as i64])
    });
    let run_forward = || -> Result<(Tensor, f64)> {
        let started = Instant::now();
        let logits = tch::no_grad(|| model.forward(&input_ids.view([1, n]), pixel_values.as_ref(), &grid))?;
        // Bringing the logits to the host also waits for the GPU, so the time is the whole pass.
        let logits = logits.squeeze_dim(0).to_kind(Kind::Float).to_device(Device::Cpu);
        Ok((logits, started.elapsed().as_secs_f64()))
    };
    let (logits, mut forward_s) = run_forward()?;
    if args.repeat > 1 {
        let mut times: Vec<f64> = (0..args.repeat)
            .map(|_| run_forward().map(|r| r.1))
            .collect::<Result<_>>()?;
        times.sort_by(f64::total_cmp);
        forward_s = times[times.len() / 2];
        println!(
            "forward_median_ms {:.3} over {} runs",
            forward_s * 1e3,
            args.repeat
        );
    }

    let mut tensors: Vec<(&str, Tensor)> = vec![("input_ids", input_ids), ("logits", logits)];
    if let Some(pv) = pixel_values {
        tensors.push(("pixel_values", pv));
        let flat: Vec<i64> = grid.iter().flatten().copied().collect();
        tensors.push((
            "image_grid_thw",
            Tensor::from_slice(&flat).view([grid.len() as i64, 3]),
        ));
    }
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    // Write next to the target and rename, so a killed run never leaves a truncated file.
    let tmp = args.out.with_extension("safetensors.partial");
    Tensor::write_safetensors(&tensors, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "armt forward: {n} tokens, {} images, {:?} {:?}; load {load_s:.2}s, forward {forward_s:.3}s -> {}",
        grid.len(),
        device,
        kind,
        args.out.display()
    );
    Ok(())
}
