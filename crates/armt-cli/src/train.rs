//! `armt train --stage 1|2 [--config FILE] [--resume [CKPT]] [key.path=value ...]` and
//! `armt sft --model DIR --data TRAJ.jsonl [--config FILE] [key.path=value ...]`.

use crate::dist::main_first;
use crate::forward::{parse_device, parse_dtype};
use anyhow::{bail, Context, Result};
use armt_dist::Communicator;
use armt_model::Qwen25Vl;
use armt_processing::Processor;
use armt_rollout::TemplateIds;
use armt_tools::ToolRegistry;
use armt_train::{builtin, checkpoint, GrpoRun, SftRun, TrainConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tch::{Device, Kind};

#[derive(clap::Args)]
pub struct TrainArgs {
    /// 1: reward choosing and calling the right tool; 2: reward judging correctly with efficient tool use.
    #[arg(long)]
    stage: u8,
    /// Config TOML (configs/*.toml). Without it: the built-in tiny default for the stage.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Resume from the latest checkpoint of the run directory (`--resume`), or from the given one (`--resume=CKPT`).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "latest")]
    resume: Option<String>,
    /// Resume even though settings that change the run's meaning (data, group size, rewards,
    /// seed …) differ from the checkpoint's.
    #[arg(long)]
    allow_config_change: bool,
    /// Overrides, e.g. rollout.n=8 optim.lr=1e-6 train.steps=50.
    overrides: Vec<String>,
}

fn load_config(stage: u8, config: Option<&Path>, overrides: &[String]) -> Result<TrainConfig> {
    let mut o = overrides.to_vec();
    o.push(format!("stage={stage}"));
    Ok(match config {
        Some(p) => TrainConfig::load(Some(p), &o)?,
        None => {
            let text = if stage == 1 {
                builtin::TINY_STAGE1_TOML
            } else {
                builtin::TINY_STAGE2_TOML
            };
            TrainConfig::from_toml_str(text, "the built-in tiny default config", &o)?
        }
    })
}

fn resume_path(resume: &Option<String>, run_dir: &Path) -> Result<Option<PathBuf>> {
    Ok(match resume.as_deref() {
        None => None,
        Some("latest") => Some(
            checkpoint::latest(run_dir)
                .with_context(|| format!("--resume: no checkpoint in {}/checkpoints", run_dir.display()))?,
        ),
        Some(p) => {
            let p = PathBuf::from(p);
            if !p.join("trainer_state.json").exists() {
                bail!(
                    "--resume {}: not a checkpoint directory (no trainer_state.json)",
                    p.display()
                );
            }
            Some(p)
        }
    })
}

/// `model.max_pixels`, when set, caps every image the run processes.
fn capped(processor: Processor, cfg: &TrainConfig) -> Processor {
    match cfg.model.max_pixels {
        Some(max) => processor.with_max_pixels(max),
        None => processor,
    }
}

/// `--resume PATH` (with a space) reads PATH as the first override; an override has a `=`, so a
/// first "override" without one is the resume path.
fn resume_with_space(resume: &mut Option<String>, overrides: &mut Vec<String>) {
    let first_is_path = overrides.first().is_some_and(|o| !o.contains('='));
    if resume.as_deref() == Some("latest") && first_is_path {
        *resume = Some(overrides.remove(0));
    }
}

/// Takes the run directory's lock and removes what a crashed run left half-written.
fn lock_run_dir(run_dir: &Path) -> Result<armt_train::run_lock::RunLock> {
    let lock = armt_train::run_lock::RunLock::acquire(run_dir)?;
    if let Some(stale) = &lock.stale {
        eprintln!(
            "armt: taking over a stale lock on {} left by a run that is no longer running ({stale})",
            run_dir.display()
        );
    }
    for p in armt_train::run_lock::clean_stale_files(run_dir) {
        eprintln!(
            "armt: removed {} (left half-written by an earlier run)",
            p.display()
        );
    }
    Ok(lock)
}

/// A NaN stop names the checkpoint to go back to.
fn with_last_good(e: armt_train::TrainError, run_dir: &Path) -> anyhow::Error {
    match e {
        armt_train::TrainError::NonFinite { .. } => {
            anyhow::anyhow!("{e}; {}", armt_train::finite::last_good_hint(run_dir, None))
        }
        e => e.into(),
    }
}

fn device_kind(cfg: &TrainConfig) -> Result<(Device, Kind)> {
    let device = parse_device(cfg.model.device.as_deref()).context("model.device")?;
    Ok((device, parse_dtype(cfg.model.dtype.as_deref(), device)?))
}

pub fn run(mut args: TrainArgs) -> Result<()> {
    armt_train::install_ctrlc_handler();
    resume_with_space(&mut args.resume, &mut args.overrides);
    let mut cfg = load_config(args.stage, args.config.as_deref(), &args.overrides)?;
    let comm = crate::dist::setup(&mut cfg)?;
    let (device, kind) = device_kind(&cfg)?;
    let run_dir = cfg.train.run_dir.clone();
    let builtin_mode = cfg.model.path.is_none() && cfg.data.train.is_none();
    let StartingPoint {
        start_dir,
        samples,
        tools,
    } = if builtin_mode {
        builtin_start(&mut cfg, &run_dir, &comm)?
    } else {
        dataset_start(&cfg, &run_dir)?
    };
    let phase = format!("stage {}", cfg.stage);
    let (_lock, resume) = claim_run_dir(&cfg, &args, &phase, &samples, builtin_mode, &comm)?;

    let weights_dir = resume.clone().unwrap_or_else(|| start_dir.clone());
    if comm.is_main() {
        eprintln!(
            "armt train: stage {} from {} on {:?} ({:?}), {} samples, run dir {}",
            cfg.stage,
            weights_dir.display(),
            device,
            kind,
            samples.len(),
            run_dir.display()
        );
    }
    let model = Qwen25Vl::load(&weights_dir, device, kind)?;
    let reference = if cfg.grpo.kl_coef > 0.0 {
        Some(Qwen25Vl::load(&start_dir, device, kind)?)
    } else {
        None
    };
    let processor = capped(Processor::from_model_dir(&start_dir)?, &cfg);
    let last = armt_train::train_grpo(GrpoRun {
        config: &cfg,
        model,
        reference,
        model_dir: start_dir.clone(),
        processor: &processor,
        tools: &tools,
        samples,
        resume,
        phase,
        comm: comm.clone(),
    })
    .map_err(|e| with_last_good(e, &run_dir))?;
    // The last collective is done: other ranks exiting from here on is expected.
    armt_dist::nccl::mark_finished();
    if !comm.is_main() {
        return Ok(());
    }
    eprintln!(
        "armt train: stage {} done; final checkpoint {}",
        cfg.stage,
        last.display()
    );
    eprintln!(
        "  metrics: {}/metrics.jsonl, TensorBoard: {}/tb, plots: {}/plots",
        run_dir.display(),
        run_dir.display(),
        run_dir.display()
    );
    Ok(())
}

/// Where a GRPO stage starts: the model directory, the training rows and the tools.
struct StartingPoint {
    start_dir: PathBuf,
    samples: Vec<armt_data::Sample>,
    tools: ToolRegistry,
}

/// The built-in default (no `model.path`, no `data.train`): stage 1 makes (or reuses) the task
/// set of `train.seed` and runs the cold start; stage 2 continues from stage 1's checkpoint.
/// Validation runs on the held-out tasks unless `data.val` says otherwise.
fn builtin_start(
    cfg: &mut TrainConfig,
    run_dir: &Path,
    comm: &Arc<dyn Communicator>,
) -> Result<StartingPoint> {
    builtin::limit_threads();
    let root = run_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    // Rank 0 makes the task set first; the others then read it.
    let b = if cfg.stage == 1 {
        main_first(comm, || {
            Ok(builtin::prepare(&root, cfg.train.seed, &cfg.builtin)?)
        })?
    } else {
        let b = builtin::open(&root)?;
        if b.seed != cfg.train.seed {
            bail!(
                "{} holds the built-in default of train.seed={}, not {}: run `armt train --stage 1 train.seed={}` first",
                root.display(),
                b.seed,
                cfg.train.seed,
                cfg.train.seed
            );
        }
        b
    };
    if cfg.data.val.is_none() {
        // Validation during training (train.val_every) runs on the held-out tasks.
        cfg.data.val = Some(root.join("data/val/tasks.jsonl"));
    }
    let tools = builtin::tools()?;
    let origin = root.join("data/train/tasks.jsonl");
    armt_train::validate::check_dataset(cfg, &b.train, &origin, &tools, "the built-in tools")?;
    let start_dir = if cfg.stage == 1 {
        cold_start(cfg, &root, &b, &tools, comm)?
    } else {
        let stage1 = root.join("stage1");
        checkpoint::latest(&stage1).with_context(|| {
            format!("stage 2 starts from stage 1's result, but {} has no checkpoint: run `armt train --stage 1` first", stage1.display())
        })?
    };
    Ok(StartingPoint {
        start_dir,
        samples: b.train,
        tools,
    })
}

/// A run on the user's data: `model.path` (stage 2 without it: the sibling `stage1` run's last
/// checkpoint), `data.train` read and validated against `tools.config`.
fn dataset_start(cfg: &TrainConfig, run_dir: &Path) -> Result<StartingPoint> {
    let start_dir = match &cfg.model.path {
        Some(p) => p.clone(),
        None if cfg.stage == 2 => {
            let stage1 = run_dir.parent().unwrap_or(Path::new(".")).join("stage1");
            checkpoint::latest(&stage1).with_context(|| {
                format!(
                    "model.path is not set and {} has no stage-1 checkpoint to start stage 2 from",
                    stage1.display()
                )
            })?
        }
        None => bail!(
            "model.path is not set (give a checkpoint directory, or no data.train for the built-in default)"
        ),
    };
    let data = cfg.data.train.clone().context("data.train is not set")?;
    let samples = armt_data::read_dataset(&data, &cfg.data.formats)?;
    let tools = ToolRegistry::from_yaml_file(&cfg.tools.config)?;
    let origin = cfg.tools.config.display().to_string();
    armt_train::validate::check_dataset(cfg, &samples, &data, &tools, &origin)?;
    Ok(StartingPoint {
        start_dir,
        samples,
        tools,
    })
}

/// Takes the run directory for this run: rank 0 locks it for the whole group; a resume is
/// checked against its checkpoint (kind, settings, data); a fresh start refuses a directory
/// that holds a run, except the built-in default's, which it empties. Returns the lock (rank 0)
/// and the checkpoint to resume from.
fn claim_run_dir(
    cfg: &TrainConfig,
    args: &TrainArgs,
    phase: &str,
    samples: &[armt_data::Sample],
    builtin_mode: bool,
    comm: &Arc<dyn Communicator>,
) -> Result<(Option<armt_train::run_lock::RunLock>, Option<PathBuf>)> {
    let run_dir = &cfg.train.run_dir;
    let lock = if comm.is_main() {
        Some(lock_run_dir(run_dir)?)
    } else {
        None
    };
    let resume = resume_path(&args.resume, run_dir)?;
    if let Some(ckpt) = &resume {
        let data = armt_train::data_fingerprint::DataFingerprint::of_samples(samples);
        armt_train::resume_check::check(ckpt, phase, cfg, &data, args.allow_config_change)?;
    }
    // Every rank has looked at the run directory before rank 0 may clear it.
    comm.barrier()?;
    if let (None, Some(old)) = (&resume, checkpoint::latest(run_dir)) {
        if !builtin_mode {
            bail!(
                "{} already holds a run (latest checkpoint {}): pass --resume to continue it, or set another train.run_dir",
                run_dir.display(),
                old.display()
            );
        }
        // The built-in default's run directories are its own scratch space.
        if comm.is_main() {
            eprintln!(
                "armt train: starting over; removing the earlier run in {}",
                run_dir.display()
            );
            armt_train::run_lock::clear_run_dir(run_dir)
                .with_context(|| format!("removing {}", run_dir.display()))?;
        }
    }
    comm.barrier()?;
    Ok((lock, resume))
}

/// The built-in default's cold start, in two phases, each skipped if it already finished:
/// `builtin.read_steps` of SFT on the expert's tool traces alone (under `sft-read/`), then
/// `sft.steps` on those mixed with the tool-less guesses (under `sft/`).
fn cold_start(
    cfg: &TrainConfig,
    root: &Path,
    b: &builtin::Builtin,
    tools: &ToolRegistry,
    comm: &Arc<dyn Communicator>,
) -> Result<PathBuf> {
    let processor = capped(Processor::from_model_dir(&b.model_dir)?, cfg);
    let mut weights = b.model_dir.clone();
    if cfg.builtin.read_steps > 0 {
        let mut read_cfg = cfg.clone();
        read_cfg.sft.steps = cfg.builtin.read_steps;
        read_cfg.sft.lr = cfg.builtin.read_lr;
        read_cfg.builtin.guess_traces = 0;
        weights = sft_phase(
            &read_cfg,
            "reading",
            &root.join("sft-read"),
            &weights,
            b,
            &processor,
            tools,
            comm,
        )?
        .0;
    }
    let (last, trained) = sft_phase(
        cfg,
        "mixed",
        &root.join("sft"),
        &weights,
        b,
        &processor,
        tools,
        comm,
    )?;
    if trained && cfg.train.val_every > 0 && comm.is_main() {
        // The cold start's table, the baseline the RL stages are measured against.
        let (device, kind) = device_kind(cfg)?;
        let model = Qwen25Vl::load(&last, device, kind)?;
        let report = armt_train::validation::evaluate(
            &model,
            &processor,
            tools,
            &cfg.rollout,
            &cfg.reward,
            &b.val,
            64,
            |_, _, _| Ok(()),
        )?;
        eprintln!("cold start: held-out tasks (greedy)\n{}", report.table());
    }
    Ok(last)
}

/// One cold-start SFT phase in `dir` from `start` (or from its own latest checkpoint), on the
/// expert examples `cfg.builtin` asks for; returns its final checkpoint and whether it trained
/// now (false when an earlier run finished it).
#[allow(clippy::too_many_arguments)]
fn sft_phase(
    cfg: &TrainConfig,
    phase: &str,
    dir: &Path,
    start: &Path,
    b: &builtin::Builtin,
    processor: &Processor,
    tools: &ToolRegistry,
    comm: &Arc<dyn Communicator>,
) -> Result<(PathBuf, bool)> {
    let _lock = if comm.is_main() {
        Some(lock_run_dir(dir)?)
    } else {
        None
    };
    if let Some(last) = checkpoint::latest(dir) {
        if checkpoint::read_state(&last)?.step >= cfg.sft.steps {
            if comm.is_main() {
                eprintln!("cold start ({phase}): using {}", last.display());
            }
            return Ok((last, false));
        }
    }
    let examples = builtin::expert_examples(&b.train, processor, tools, &cfg.rollout, &cfg.builtin)?;
    if comm.is_main() {
        eprintln!(
            "cold start ({phase}): SFT on {} expert trajectories ({} tokens), {} steps",
            examples.len(),
            examples.iter().map(|e| e.ids.len()).sum::<usize>(),
            cfg.sft.steps
        );
    }
    let resume = checkpoint::latest(dir);
    let weights = resume.clone().unwrap_or_else(|| start.to_path_buf());
    let (device, kind) = device_kind(cfg)?;
    let model = Qwen25Vl::load(&weights, device, kind)?;
    let pad_id = TemplateIds::from_tokenizer(processor.tokenizer())?.endoftext;
    armt_train::train_sft(SftRun {
        config: cfg,
        model,
        model_dir: b.model_dir.clone(),
        examples,
        run_dir: dir.to_path_buf(),
        pad_id,
        resume,
        comm: comm.clone(),
    })
    .map(|last| (last, true))
    .map_err(|e| with_last_good(e, dir))
}

#[derive(clap::Args)]
pub struct SftArgs {
    /// Model checkpoint directory to start from.
    #[arg(long)]
    model: PathBuf,
    /// Trajectory JSONL (as `armt rollout` writes; images must exist at their recorded paths), or
    /// LLaMA-Factory conversations (`.json` array or JSONL with `messages`/`conversations`).
    #[arg(long)]
    data: PathBuf,
    /// Tool schemas for LLaMA-Factory rows that declare no `tools` of their own.
    #[arg(long)]
    tools: Option<PathBuf>,
    /// LLaMA-Factory image paths resolve here (default: the data file's folder).
    #[arg(long)]
    image_root: Option<PathBuf>,
    /// Config TOML for the [sft], [optim] and [train] sections (default: built-in defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "latest")]
    resume: Option<String>,
    /// Resume even though settings that change the run's meaning differ from the checkpoint's.
    #[arg(long)]
    allow_config_change: bool,
    /// Overrides, e.g. sft.steps=200 sft.lr=1e-5 train.run_dir=runs/sft.
    overrides: Vec<String>,
}

pub fn run_sft(mut args: SftArgs) -> Result<()> {
    armt_train::install_ctrlc_handler();
    resume_with_space(&mut args.resume, &mut args.overrides);
    let mut cfg = TrainConfig::load(args.config.as_deref(), &args.overrides)?;
    let comm = crate::dist::setup(&mut cfg)?;
    let cfg = cfg;
    let (device, kind) = device_kind(&cfg)?;
    let run_dir = cfg.train.run_dir.clone();
    // The data is read (and its errors named) before the model files are opened.
    let (convs, trajs) = if armt_data::formats::llamafactory::looks_like_llamafactory(&args.data) {
        let convs =
            armt_data::formats::llamafactory::read_conversations(&args.data, args.image_root.as_deref())?;
        (Some(convs), None)
    } else {
        (None, Some(armt_data::read_trajectories(&args.data)?))
    };
    let processor = Processor::from_model_dir(&args.model)?;
    let examples = match (convs, trajs) {
        (Some(convs), _) => {
            let tools = args
                .tools
                .as_ref()
                .map(ToolRegistry::from_yaml_file)
                .transpose()?
                .map(|t| t.schemas());
            armt_train::sft_llamafactory::examples_from_conversations(&convs, &processor, tools.as_deref())?
        }
        (None, trajs) => armt_train::examples_from_trajectories(&trajs.unwrap_or_default(), &processor)?,
    };
    // One run per directory: rank 0 holds the lock for the whole group.
    let _lock = if comm.is_main() {
        Some(lock_run_dir(&run_dir)?)
    } else {
        None
    };
    let resume = resume_path(&args.resume, &run_dir)?;
    if let Some(ckpt) = &resume {
        let data = armt_train::data_fingerprint::DataFingerprint::of_examples(&examples);
        armt_train::resume_check::check(ckpt, "sft", &cfg, &data, args.allow_config_change)?;
    }
    let model = Qwen25Vl::load(resume.as_deref().unwrap_or(&args.model), device, kind)?;
    let pad_id = TemplateIds::from_tokenizer(processor.tokenizer())?.endoftext;
    let last = armt_train::train_sft(SftRun {
        config: &cfg,
        model,
        model_dir: args.model.clone(),
        examples,
        run_dir: run_dir.clone(),
        pad_id,
        resume,
        comm: comm.clone(),
    })
    .map_err(|e| with_last_good(e, &run_dir))?;
    armt_dist::nccl::mark_finished();
    if comm.is_main() {
        eprintln!("armt sft: final checkpoint {}", last.display());
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct PlotArgs {
    /// A run directory (with metrics.jsonl).
    run_dir: PathBuf,
    /// Where the PNGs go (default RUN_DIR/plots).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run_plot(args: PlotArgs) -> Result<()> {
    let out = args.out.unwrap_or_else(|| args.run_dir.join("plots"));
    let files = armt_metrics::plot_metrics(&args.run_dir.join("metrics.jsonl"), &out, None)?;
    for f in files {
        println!("{}", f.display());
    }
    Ok(())
}
