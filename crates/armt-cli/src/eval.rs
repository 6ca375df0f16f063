//! `armt eval`: greedy (or sampled) rollouts over a dataset, scored with both stage rewards:
//! judgment accuracy, format, tool use. Without --model/--data: the built-in default's latest
//! checkpoint on its held-out task set.

use anyhow::{bail, Context, Result};
use armt_rewards::{routed_reward, stage1_reward};
use armt_rollout::{RolloutConfig, RolloutEnv, SamplingConfig};
use armt_tools::ToolRegistry;
use armt_train::{builtin, checkpoint, TrainConfig};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Checkpoint directory (default: the built-in default's latest stage-2, else stage-1,
    /// checkpoint); with --api-base, the served model's name.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Dataset JSONL (default: the built-in default's held-out tasks).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Tool config YAML (default: the built-in default's tools).
    #[arg(long)]
    tools: Option<PathBuf>,
    /// Rollout limits and sampling from this config's [rollout], scores with its [reward] (default: the tiny default's).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Samples rolled out together.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Write the scored trajectories here (JSONL, for `armt view`).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long)]
    device: Option<String>,
    #[arg(long)]
    dtype: Option<String>,
    /// Where the built-in default lives.
    #[arg(long, default_value = "runs/tiny")]
    builtin_root: PathBuf,
    /// Offer no tools: the system prompt lists none and any call fails. What the judge does
    /// without them (on the built-in default, chance).
    #[arg(long)]
    no_tools: bool,
    /// Evaluate several checkpoints side by side (per task kind: accuracy, format, right-tool
    /// rate, tool calls, reward, and the share of the most common verdict). Without a CKPT on
    /// the built-in default: cold start, stage 1, stage 2 and stage 2 without tools.
    #[arg(long, num_args = 0.., value_name = "CKPT")]
    compare: Option<Vec<PathBuf>>,
    /// ARMBench-VL evaluation (`--armbench FILE…`).
    #[command(flatten)]
    bench: armbench::BenchArgs,
    /// Re-tokenize each assistant turn's text before its tool turn, as a chat server re-renders
    /// the conversation (`rollout.retokenize_turns`): in-process eval then sees the contexts
    /// `--api-base` sends.
    #[arg(long)]
    retokenize_turns: bool,
    /// The policy on an OpenAI-compatible server (`--api-base URL`) instead of in this process.
    #[command(flatten)]
    remote: crate::agent::RemoteArgs,
}

mod armbench;

pub fn run(args: EvalArgs) -> Result<()> {
    if let Some(ckpts) = &args.compare {
        return crate::compare::run(crate::compare::CompareArgs {
            checkpoints: ckpts.clone(),
            data: args.data.clone(),
            tools: args.tools.clone(),
            config: args.config.clone(),
            batch: args.batch,
            device: args.device.clone(),
            dtype: args.dtype.clone(),
            builtin_root: args.builtin_root.clone(),
            no_tools: args.no_tools,
        });
    }
    if !args.bench.armbench.is_empty() {
        return armbench::run_in_process(&args);
    }
    let cfg = match &args.config {
        Some(p) => TrainConfig::load(Some(p), &[])?,
        None => {
            TrainConfig::from_toml_str(builtin::TINY_STAGE2_TOML, "the built-in tiny default config", &[])?
        }
    };
    let root = &args.builtin_root;
    if args.model.is_none() {
        builtin::limit_threads();
    }
    let model_dir = match &args.model {
        Some(m) => m.clone(),
        None if args.remote.api_base.is_some() => bail!("--api-base needs --model NAME (the served model)"),
        None => checkpoint::latest(&root.join("stage2"))
            .or_else(|| checkpoint::latest(&root.join("stage1")))
            .with_context(|| {
                format!(
                    "no --model and no checkpoint under {}: run `armt train --stage 1` first",
                    root.display()
                )
            })?,
    };
    let samples = match &args.data {
        Some(d) => {
            let formats = args.bench.format_options(&cfg.data.formats);
            let samples = armt_data::read_dataset(d, &formats)?;
            let mut check = armt_data::validate::DatasetCheck::for_file(d);
            check.extra_roots = formats.data_roots(d);
            armt_data::validate::validate_samples(&samples, &check)?;
            samples
        }
        None => builtin::open(root)?.val,
    };
    if samples.is_empty() {
        bail!("no samples to evaluate");
    }
    let tools = match &args.tools {
        _ if args.no_tools => ToolRegistry::new(),
        Some(t) => ToolRegistry::from_yaml_file(t)?,
        None => builtin::tools()?,
    };
    let rollout = RolloutConfig {
        sampling: SamplingConfig {
            temperature: args.temperature,
            seed: 0,
            ..cfg.rollout.sampling.clone()
        },
        retokenize_turns: cfg.rollout.retokenize_turns || args.retokenize_turns,
        ..cfg.rollout.clone()
    };
    let policy = crate::agent::Policy::open(
        &args.remote,
        &model_dir,
        &rollout.sampling,
        args.device.as_deref(),
        args.dtype.as_deref(),
    )?;
    let env = RolloutEnv {
        processor: policy.processor(),
        tools: &tools,
        config: &rollout,
        image_dir: None,
    };
    // Scored with the config's own [reward] (the tiny default's, or the run's via --config).
    let rewards = cfg.reward.clone();
    let mut by_task: BTreeMap<String, [f64; 5]> = BTreeMap::new(); // n, correct, format, right tool, stage-2 reward
    let mut out = match &args.out {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => None,
    };
    for chunk in samples.chunks(args.batch.max(1)) {
        for r in policy.rollouts(&env, chunk, 1, None)?.0 {
            let sample = &chunk[r.group];
            let s1 = stage1_reward(&r.trajectory, sample, &rewards)?;
            let s2 = routed_reward(2, &r.trajectory, sample, &rewards)?;
            for key in [format!("{:?}", sample.task).to_lowercase(), "all".to_string()] {
                let e = by_task.entry(key).or_default();
                e[0] += 1.0;
                e[1] += (s2.correct == Some(true)) as u8 as f64;
                e[2] += s2.format_ok as u8 as f64;
                e[3] += (s1.right_tool_calls > 0) as u8 as f64;
                e[4] += s2.total as f64;
            }
            if let Some(w) = out.as_mut() {
                let mut t = r.trajectory;
                t.reward = Some(s2.total);
                serde_json::to_writer(&mut *w, &t)?;
                w.write_all(b"\n")?;
            }
        }
    }
    println!(
        "model {} on {} samples ({})",
        model_dir.display(),
        samples.len(),
        if args.temperature == 0.0 {
            "greedy".to_string()
        } else {
            format!("temperature {}", args.temperature)
        }
    );
    println!(
        "{:<12} {:>6} {:>9} {:>8} {:>11} {:>15}",
        "task", "n", "accuracy", "format", "right tool", "stage-2 reward"
    );
    for (task, e) in &by_task {
        let n = e[0];
        println!(
            "{task:<12} {:>6} {:>9.3} {:>8.3} {:>11.3} {:>15.3}",
            n as usize,
            e[1] / n,
            e[2] / n,
            e[3] / n,
            e[4] / n
        );
    }
    if let Some(s) = policy.summary() {
        eprintln!("{s}");
    }
    Ok(())
}
