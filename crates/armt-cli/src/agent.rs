//! `armt agent --api-base URL --model NAME --data FILE [--tools T.yaml] [--out traj.jsonl] [--n K]`:
//! the rollout engine's tool loop, run here, with the policy on any OpenAI-compatible server
//! (vLLM, SGLang, lmdeploy, `armt serve --no-tool-loop`): one `POST {api-base}/chat/completions`
//! per assistant turn, as ARM-Thinker's evaluation agent does. `armt eval --api-base` scores the
//! same way. [`Policy`] is the in-process model or the server, behind the same generator
//! interface, so both go through the same loop and the same scoring.
//!
//! Tool results go back as `tool` messages (images first, then text): the server's chat
//! template must wrap them in `<tool_response>` as training did, e.g. vLLM with
//! `--chat-template configs/chat_template.jinja` (the stock Qwen2.5-VL template renders a
//! `tool` turn as `<|im_start|>tool`), or use `--tool-role user` as the original does for SGLang.
//! The loop counts tokens with the local `--tokenizer`; keep `rollout.max_context` within the
//! server's `max_model_len`, or the server refuses the request (HTTP 400, shown with its body).

use crate::forward::{parse_device, parse_dtype};
use anyhow::{bail, Context, Result};
use armt_data::Sample;
use armt_model::Qwen25Vl;
use armt_processing::Processor;
use armt_rollout::{
    ContextReport, ModelGenerator, RemoteConfig, RemoteGenerator, Rollout, RolloutConfig, RolloutEnv,
    SamplingConfig, TemplateIds,
};
use armt_tools::ToolRegistry;
use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the policy runs when it is a server.
#[derive(clap::Args, Default, Clone)]
pub struct RemoteArgs {
    /// An OpenAI-compatible server's base URL (e.g. http://127.0.0.1:8000/v1): the policy runs
    /// there, one request per assistant turn; --model is then the served model's name.
    #[arg(long)]
    pub api_base: Option<String>,
    /// Sent as a bearer token (default: $OPENAI_API_KEY when set).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Folder with the served model's tokenizer.json and preprocessor_config.json (the loop
    /// counts tokens and budgets with them; default: --model when it is a folder).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Role of tool-result messages: tool (wrapped in <tool_response> by the chat template) or
    /// user (for servers whose template has no tool role).
    #[arg(long, default_value = "tool")]
    pub tool_role: String,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 600)]
    pub request_timeout: u64,
    /// Further attempts after connection errors, timeouts, 429 and 5xx.
    #[arg(long, default_value_t = 3)]
    pub retries: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
}

/// The policy: a checkpoint in this process, or a model behind an OpenAI-compatible server.
pub enum Policy {
    Local {
        processor: Processor,
        model: Box<Qwen25Vl>,
        sampling: SamplingConfig,
        pad: i64,
    },
    Remote {
        processor: Processor,
        cfg: RemoteConfig,
        report: Cell<ContextReport>,
    },
}

impl Policy {
    /// `model`: a checkpoint folder, or with `--api-base` the served model's name.
    pub fn open(
        remote: &RemoteArgs,
        model: &Path,
        sampling: &SamplingConfig,
        device: Option<&str>,
        dtype: Option<&str>,
    ) -> Result<Self> {
        let Some(api_base) = &remote.api_base else {
            let device = parse_device(device)?;
            let kind = parse_dtype(dtype, device)?;
            let processor = Processor::from_model_dir(model)?;
            let pad = TemplateIds::from_tokenizer(processor.tokenizer())?.endoftext;
            return Ok(Policy::Local {
                processor,
                model: Box::new(Qwen25Vl::load(model, device, kind)?),
                sampling: sampling.clone(),
                pad,
            });
        };
        let tokenizer_dir = match &remote.tokenizer {
            Some(t) => t.clone(),
            None if model.is_dir() => model.to_path_buf(),
            None => bail!(
                "--api-base needs --tokenizer DIR (the served model's tokenizer.json and preprocessor_config.json): \
                 --model {} is not a folder",
                model.display()
            ),
        };
        let processor = Processor::from_model_dir(&tokenizer_dir)
            .with_context(|| format!("--tokenizer {}", tokenizer_dir.display()))?;
        let mut cfg = RemoteConfig::new(api_base.clone(), model.to_string_lossy().into_owned());
        cfg.api_key = remote
            .api_key
            .clone()
            .or_else(|| std::env::var("OPENAI_API_KEY").ok());
        cfg.temperature = sampling.temperature;
        cfg.top_p = sampling.top_p;
        cfg.timeout = Duration::from_secs(remote.request_timeout.max(1));
        cfg.retries = remote.retries;
        cfg.tool_role = remote.tool_role.clone();
        cfg.concurrency = remote.concurrency.max(1);
        Ok(Policy::Remote {
            processor,
            cfg,
            report: Cell::new(ContextReport::default()),
        })
    }

    pub fn processor(&self) -> &Processor {
        match self {
            Policy::Local { processor, .. } | Policy::Remote { processor, .. } => processor,
        }
    }

    /// `n` rollouts of each sample through `env`'s loop (groups keyed `groups`, as
    /// [`RolloutEnv::run_keyed`]).
    pub fn rollouts(
        &self,
        env: &RolloutEnv,
        samples: &[Sample],
        n: usize,
        groups: Option<&[u64]>,
    ) -> Result<(Vec<Rollout>, Vec<usize>)> {
        let outcome = match self {
            Policy::Local {
                model, sampling, pad, ..
            } => {
                let mut generator = ModelGenerator::new(model, sampling.clone(), *pad);
                env.run_keyed(&mut generator, samples, n, 0, groups, |_| {})?
            }
            Policy::Remote {
                processor,
                cfg,
                report,
            } => {
                let mut generator = RemoteGenerator::new(cfg.clone(), processor.tokenizer())?;
                let outcome = env.run_keyed(&mut generator, samples, n, 0, groups, |_| {})?;
                let (old, new) = (report.get(), generator.context_report());
                report.set(ContextReport {
                    requests: old.requests + new.requests,
                    checked: old.checked + new.checked,
                    differing: old.differing + new.differing,
                });
                outcome
            }
        };
        Ok((outcome.rollouts, outcome.skipped))
    }

    /// For a server: how many requests went out, and how the server's prompts (where it
    /// reported them) compared with the loop's token contexts.
    pub fn summary(&self) -> Option<String> {
        match self {
            Policy::Local { .. } => None,
            Policy::Remote { cfg, report, .. } => {
                let r = report.get();
                Some(format!(
                    "{} request(s) to {}; server prompt tokens reported for {}, differing from the loop's context in {}",
                    r.requests,
                    cfg.url(),
                    r.checked,
                    r.differing
                ))
            }
        }
    }
}

#[derive(clap::Args)]
pub struct AgentArgs {
    /// The served model's name (the request's `model`).
    #[arg(long)]
    model: PathBuf,
    /// Dataset: armt JSONL, an ARM-Thinker parquet, or ARMBench-VL JSONL.
    #[arg(long)]
    data: PathBuf,
    /// Tool config YAML (default: no tools).
    #[arg(long)]
    tools: Option<PathBuf>,
    /// Trajectories JSONL (for `armt view`); observation images go to OUT.images/.
    #[arg(long, default_value = "agent.jsonl")]
    out: PathBuf,
    /// Rollouts per sample.
    #[arg(long, default_value_t = 1)]
    n: usize,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Rollout limits from this config's [rollout] (default: armt's defaults); its
    /// cot_prompt is appended to each prompt.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Samples rolled out together.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Parquet / ARMBench-VL images resolve here (default: the config's data.formats.image_root,
    /// else the data file's folder).
    #[arg(long)]
    image_root: Option<PathBuf>,
    /// Document pages `<doc_id>_<page>.<ext>` are here (default: the image root).
    #[arg(long)]
    doc_root: Option<PathBuf>,
    #[command(flatten)]
    remote: RemoteArgs,
}

pub fn run(args: AgentArgs) -> Result<()> {
    if args.remote.api_base.is_none() {
        bail!("armt agent needs --api-base URL (an OpenAI-compatible server); for a local checkpoint use `armt rollout`");
    }
    if args.n == 0 || args.batch == 0 {
        bail!("--n and --batch must be at least 1");
    }
    let mut cfg = armt_train::TrainConfig::load(args.config.as_deref(), &[])?;
    let formats = &mut cfg.data.formats;
    formats.image_root = args.image_root.clone().or(formats.image_root.take());
    formats.doc_root = args.doc_root.clone().or(formats.doc_root.take());
    let samples = armt_data::read_dataset(&args.data, &cfg.data.formats)?;
    if samples.is_empty() {
        bail!("{}: no samples", args.data.display());
    }
    let mut check = armt_data::validate::DatasetCheck::for_file(&args.data);
    check.extra_roots = cfg.data.formats.data_roots(&args.data);
    armt_data::validate::validate_samples(&samples, &check)?;
    let tools = match &args.tools {
        Some(t) => ToolRegistry::from_yaml_file(t)?,
        None => ToolRegistry::new(),
    };
    let rollout = RolloutConfig {
        n: args.n,
        max_rows: cfg.rollout.max_rows.max(args.n),
        sampling: SamplingConfig {
            temperature: args.temperature,
            top_p: args.top_p,
            ..cfg.rollout.sampling.clone()
        },
        ..cfg.rollout.clone()
    };
    let policy = Policy::open(&args.remote, &args.model, &rollout.sampling, None, None)?;
    let image_dir = PathBuf::from(format!("{}.images", args.out.display()));
    std::fs::create_dir_all(&image_dir).with_context(|| format!("creating {}", image_dir.display()))?;
    let env = RolloutEnv {
        processor: policy.processor(),
        tools: &tools,
        config: &rollout,
        image_dir: Some(image_dir),
    };
    let tmp = args.out.with_extension("jsonl.partial");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    let (mut done, mut skipped, mut calls) = (0usize, 0usize, 0usize);
    for (b, chunk) in samples.chunks(args.batch).enumerate() {
        let groups: Vec<u64> = (0..chunk.len()).map(|i| (b * args.batch + i) as u64).collect();
        let (rollouts, skip) = policy.rollouts(&env, chunk, args.n, Some(&groups))?;
        skipped += skip.len();
        for r in &rollouts {
            calls += r.trajectory.tool_calls().count();
            serde_json::to_writer(&mut file, &r.trajectory)?;
            file.write_all(b"\n")?;
        }
        done += rollouts.len();
        eprintln!("armt agent: {done}/{} trajectories", samples.len() * args.n);
    }
    file.flush()?;
    drop(file);
    std::fs::rename(&tmp, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "armt agent: {done} trajectories, {calls} tool calls -> {}",
        args.out.display()
    );
    if skipped > 0 {
        eprintln!("armt agent: {skipped} samples skipped (prompt too long for the limits)");
    }
    if let Some(s) = policy.summary() {
        eprintln!("armt agent: {s}");
    }
    Ok(())
}
