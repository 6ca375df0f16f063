//! The GRPO loop: sample prompts, roll out n per prompt with tools, reward each trajectory for the
//! stage, normalise rewards within each group, recompute old (and reference) log-probs once, then
//! clipped-policy updates over mini-batches; log, checkpoint, repeat.

use crate::batch::{pad_rows, Example};
use crate::checkpoint::{self, TrainerState};
use crate::data_fingerprint::DataFingerprint;
use crate::data_parallel::{mini_batch_ranges, DataParallel, StepRecords};
use crate::policy_logprobs::{logprobs_rows_no_grad, policy_logprobs};
use crate::validation::Validator;
use crate::{step_seed, stop_requested, TrainConfig, TrainError};
use armt_data::{Sample, StopReason};
use armt_grpo::{
    group_advantages, informative_groups_mask, policy_loss, AggNorm, EntropyGrad, LrSchedule, PolicyBatch,
};
use armt_metrics::MetricsLogger;
use armt_model::Qwen25Vl;
use armt_processing::Processor;
use armt_rewards::{routed_reward, RewardBreakdown};
use armt_rollout::{ModelGenerator, Rollout, RolloutEnv, SamplingConfig, TemplateIds};
use armt_tools::ToolRegistry;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::Tensor;

/// What a GRPO run needs besides its config.
pub struct GrpoRun<'a> {
    pub config: &'a TrainConfig,
    pub model: Qwen25Vl,
    /// Frozen reference for the KL term (only when `grpo.kl_coef > 0`).
    pub reference: Option<Qwen25Vl>,
    /// The model directory the run started from (config and tokenizer files are copied from it).
    pub model_dir: PathBuf,
    pub processor: &'a Processor,
    pub tools: &'a ToolRegistry,
    pub samples: Vec<Sample>,
    /// Resume from this checkpoint (its weights must already be in `model`).
    pub resume: Option<PathBuf>,
    /// Shown in the progress bar and saved in checkpoints.
    pub phase: String,
    /// The data-parallel group (`armt_dist::SingleProcess` for one process).
    pub comm: std::sync::Arc<dyn armt_dist::Communicator>,
}

fn lr_schedule(cfg: &TrainConfig, updates_per_step: usize) -> LrSchedule {
    LrSchedule {
        lr: cfg.optim.lr,
        warmup_steps: cfg.optim.warmup_steps,
        total_steps: (cfg.train.steps * updates_per_step).max(cfg.optim.warmup_steps + 1),
        min_lr_ratio: cfg.optim.min_lr_ratio,
        decay: if cfg.optim.schedule == "cosine" {
            armt_grpo::Decay::Cosine
        } else {
            armt_grpo::Decay::Constant
        },
    }
}

fn mean(v: impl IntoIterator<Item = f64>) -> f64 {
    let (s, n) = v.into_iter().fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

/// Trains; returns the directory of the final checkpoint.
///
/// Each step: [`roll_out`] this rank's prompts, [`score_rollouts`] (rewards, group advantages),
/// [`update_policy`] (old log-probs, then `ppo_epochs × mini_batches` updates), gather and log
/// [`step_metrics`], save on schedule or on a stop signal.
pub fn train_grpo(mut run: GrpoRun) -> Result<PathBuf, TrainError> {
    let cfg = run.config;
    let dp = DataParallel::new(run.comm.clone(), run.model.device());
    dp.check_divides("train.prompts_per_step", cfg.train.prompts_per_step)?;
    let run_dir = cfg.train.run_dir.clone();
    create_run_dir(&run_dir, cfg, &dp)?;
    if run.samples.is_empty() {
        return Err(TrainError::NothingToTrain {
            what: "training samples",
        });
    }
    // Of the rows as given, before the prompt filter (whose settings the config check covers).
    let data = DataFingerprint::of_samples(&run.samples);
    keep_trainable_prompts(&mut run, &dp)?;
    let (mut optimizer, start_step, mut loader) = prepare_model_and_state(&mut run, &dp)?;
    let schedule = lr_schedule(cfg, cfg.train.mini_batches * cfg.train.ppo_epochs);
    schedule.validate()?;

    // A fresh start drops rows an earlier run left (resume_step 0); a resume drops those after
    // its checkpoint, which are about to be logged again.
    let mut logger = match dp.is_main() {
        true => Some(MetricsLogger::create(&run_dir, Some(start_step as u64))?),
        false => None,
    };
    let ids = TemplateIds::from_tokenizer(run.processor.tokenizer())?;
    let env = RolloutEnv {
        processor: run.processor,
        tools: run.tools,
        config: &cfg.rollout,
        image_dir: None,
    };
    let mut validator = Validator::from_config(cfg)?;
    let bar = progress_bar(&run.phase, cfg.train.steps, start_step, dp.is_main());
    let mut last_ckpt = run.resume.clone();
    let mut step = start_step;
    while step < cfg.train.steps {
        let started = Instant::now();
        // Where the data stood before this step, for a stop that abandons it.
        let loader_before = loader.clone();
        let (batch, first_prompt) =
            this_ranks_prompts(&mut loader, &run.samples, &dp, cfg.train.prompts_per_step);

        let rollout_t = Instant::now();
        let rollouts = roll_out(&run, &env, &ids, &batch, first_prompt, step)?;
        let rollout_s = rollout_t.elapsed().as_secs_f64();
        if stop_requested() {
            // A stop during the rollouts (the long phase) abandons this step before any update:
            // the state is still the previous step's, saved unless it already is.
            return Err(abandon_step(
                &run,
                &data,
                &optimizer,
                &loader_before,
                step,
                last_ckpt,
                &bar,
            )?);
        }
        let ScoredRollouts { rewards, examples } = score_rollouts(cfg, &batch, &rollouts)?;
        let train_t = Instant::now();
        let updates = update_policy(
            &run,
            &dp,
            &mut optimizer,
            &schedule,
            &examples,
            ids.endoftext,
            step,
        )?;
        let train_s = train_t.elapsed().as_secs_f64();
        step += 1;

        // Metrics, over every rank's rollouts.
        let records = dp.gather_step(
            rollouts.iter().map(|r| r.trajectory.clone()),
            &rewards,
            &updates.policy,
            examples.len(),
        )?;
        let mut m = step_metrics(&records, &updates, cfg.grpo.kl_coef > 0.0);
        let step_s = started.elapsed().as_secs_f64();
        let tokens: usize = records.trajectories.iter().map(|t| t.token_ids.len()).sum();
        m.insert("perf/step_time_s".into(), step_s);
        m.insert("perf/rollout_time_s".into(), rollout_s);
        m.insert("perf/train_time_s".into(), train_s);
        m.insert("perf/tokens_per_s".into(), tokens as f64 / step_s);
        if let Some(v) = validator.as_mut().filter(|v| v.due(step, cfg.train.steps)) {
            m.extend(v.run(&run.model, run.processor, run.tools, cfg)?);
        }
        if let Some(logger) = logger.as_mut() {
            logger.log(step as u64, &m)?;
        }
        write_rollout_sample(&run_dir, dp.rank(), &rollouts, &rewards)?;
        show_step(&bar, &run.phase, step, cfg.train.steps, &m, dp.is_main());

        let stop = dp.agree_stop(stop_requested())?;
        if step % cfg.train.save_every.max(1) == 0 || step == cfg.train.steps || stop {
            let state = TrainerState::capture(step, &optimizer, &loader, &run.phase, cfg.to_toml(), &data);
            last_ckpt = Some(checkpoint::save(
                &run_dir,
                &run.model,
                &run.model_dir,
                &optimizer,
                &state,
                cfg.train.keep_last,
            )?);
        }
        if stop {
            bar.abandon_with_message(format!(
                "stopped by {} after saving a checkpoint",
                crate::stop_reason()
            ));
            return Err(TrainError::Interrupted {
                what: "step",
                step,
                signal: crate::stop_reason(),
                checkpoint: last_ckpt.clone().unwrap_or_default(),
            });
        }
    }
    bar.finish();
    dp.finish()?;
    if dp.is_main() {
        report_the_end(&run.phase, &run_dir, validator)?;
    }
    last_ckpt.ok_or(TrainError::NoCheckpointWritten)
}

/// Rank 0's side effects at the end of a stage: the last held-out table and the plots.
fn report_the_end(phase: &str, run_dir: &Path, validator: Option<Validator>) -> Result<(), TrainError> {
    if let Some(report) = validator.and_then(|v| v.last) {
        eprintln!("{phase}: held-out tasks (greedy)\n{}", report.table());
    }
    let plots = armt_metrics::plot_metrics(&run_dir.join("metrics.jsonl"), &run_dir.join("plots"), None)?;
    if let Some(p) = plots.first() {
        eprintln!(
            "{phase}: reward curves in {}",
            p.parent().unwrap_or(Path::new(".")).display()
        );
    }
    Ok(())
}

/// Freezes the vision tower if asked, sets activation checkpointing, and builds the optimizer
/// and the data loader: fresh, or from `run.resume` (whose weights the caller has loaded).
/// Returns them with the step to start from.
fn prepare_model_and_state(
    run: &mut GrpoRun,
    dp: &DataParallel,
) -> Result<(crate::AdamW, usize, crate::DataLoader), TrainError> {
    let cfg = run.config;
    if cfg.model.freeze_vision {
        freeze_vision(&mut run.model);
    }
    run.model.set_grad_checkpointing(cfg.model.grad_checkpointing);
    let (optimizer, start_step, loader) = checkpoint::start_or_resume(
        &run.model,
        cfg,
        dp.comm(),
        run.resume.as_deref(),
        run.samples.len(),
        cfg.train.seed,
    )?;
    if let Some(ckpt) = run.resume.as_ref().filter(|_| dp.is_main()) {
        eprintln!(
            "resuming {} from {} (step {start_step})",
            run.phase,
            ckpt.display()
        );
    }
    Ok((optimizer, start_step, loader))
}

/// The step's prompts from the loader, and this rank's share of them: whole groups, a
/// contiguous block of the batch, with the index of its first prompt in the whole batch.
fn this_ranks_prompts(
    loader: &mut crate::DataLoader,
    samples: &[Sample],
    dp: &DataParallel,
    prompts_per_step: usize,
) -> (Vec<Sample>, usize) {
    let batch = loader.next_batch(prompts_per_step);
    let mine = dp.shard(batch.len());
    let first_prompt = mine.start;
    (
        batch[mine].iter().map(|&i| samples[i].clone()).collect(),
        first_prompt,
    )
}

/// Creates the run directory; rank 0 writes the resolved config into it.
fn create_run_dir(run_dir: &Path, cfg: &TrainConfig, dp: &DataParallel) -> Result<(), TrainError> {
    let io = |source| TrainError::Io {
        path: run_dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(run_dir).map_err(io)?;
    if dp.is_main() {
        std::fs::write(run_dir.join("config.toml"), cfg.to_toml()).map_err(io)?;
    }
    Ok(())
}

/// Refuses rollout settings GRPO cannot train with, and drops (and reports) the prompts longer
/// than `data.max_prompt_tokens`.
fn keep_trainable_prompts(run: &mut GrpoRun, dp: &DataParallel) -> Result<(), TrainError> {
    let cfg = run.config;
    if cfg.rollout.retokenize_turns {
        return Err(TrainError::InvalidSettings {
            problems: vec![
                "rollout.retokenize_turns = true: it is for evaluation; it replaces sampled tokens, \
                 so GRPO would train on tokens the policy did not sample"
                    .into(),
            ],
        });
    }
    let env = RolloutEnv {
        processor: run.processor,
        tools: run.tools,
        config: &cfg.rollout,
        image_dir: None,
    };
    let total = run.samples.len();
    let max_prompt = cfg.data.max_prompt_tokens;
    let (kept, dropped) = crate::prompt_filter::drop_overlong_prompts(
        std::mem::take(&mut run.samples),
        &env,
        cfg.rollout.n,
        max_prompt,
    )?;
    if !dropped.is_empty() && dp.is_main() {
        eprintln!(
            "{}",
            crate::prompt_filter::report(&dropped, total, &env, max_prompt)
        );
    }
    if kept.is_empty() {
        return Err(TrainError::AllPromptsTooLong { total });
    }
    run.samples = kept;
    Ok(())
}

fn progress_bar(phase: &str, steps: usize, start_step: usize, main: bool) -> ProgressBar {
    let bar = match main {
        true => ProgressBar::new(steps as u64),
        false => ProgressBar::hidden(),
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} {elapsed_precise} [{bar:30}] step {pos}/{len} {msg}")
            .expect("valid template"),
    );
    bar.set_prefix(phase.to_string());
    bar.set_position(start_step as u64);
    bar
}

/// The step's summary on the progress bar; with no terminal (a log file, CI), one line per
/// step instead.
fn show_step(
    bar: &ProgressBar,
    phase: &str,
    step: usize,
    steps: usize,
    m: &BTreeMap<String, f64>,
    main: bool,
) {
    let mut line = format!(
        "reward {:.3} acc {:.2} right-tool {:.2} len {:.0} {:.1}s/step",
        m["reward/mean"],
        m["reward/accuracy"],
        m["tools/right_tool_rate"],
        m["response/length_mean"],
        m["perf/step_time_s"]
    );
    if let Some(a) = m.get("val/accuracy") {
        line.push_str(&format!(" val-acc {a:.2}"));
    }
    bar.set_position(step as u64);
    if bar.is_hidden() && main {
        eprintln!("{phase} step {step}/{steps}: {line}");
    }
    bar.set_message(line);
}

/// `rollout.n` rollouts of each of this rank's prompts (no grad), with a random stream
/// per step so that a resumed run draws the same.
fn roll_out(
    run: &GrpoRun,
    env: &RolloutEnv,
    ids: &TemplateIds,
    batch: &[Sample],
    first_prompt: usize,
    step: usize,
) -> Result<Vec<Rollout>, TrainError> {
    let cfg = run.config;
    let sampling = SamplingConfig {
        seed: step_seed(cfg.train.seed, step),
        ..cfg.rollout.sampling.clone()
    };
    let mut generator = ModelGenerator::new(&run.model, sampling, ids.endoftext);
    // Groups are numbered across the whole step (this rank's prompts start at `first_prompt`),
    // so each row's random stream is the one a single process would use.
    let global_groups: Vec<u64> = (first_prompt as u64..(first_prompt + batch.len()) as u64).collect();
    Ok(env
        .run_keyed(
            &mut generator,
            batch,
            cfg.rollout.n,
            step as u64,
            Some(&global_groups),
            |_| {},
        )?
        .rollouts)
}

/// A step's rollouts, scored.
struct ScoredRollouts {
    /// Every rollout's reward, in rollout order.
    rewards: Vec<RewardBreakdown>,
    /// The rows that train, with their advantage.
    examples: Vec<(Example, f64)>,
}

/// Each rollout's reward (stage 1: the tool reward; stage 2: the route of the
/// sample's source, armt's own without one), the group-normalised advantages, and the rows
/// that train with their advantage (all, or only those of groups whose rewards differ).
fn score_rollouts(
    cfg: &TrainConfig,
    batch: &[Sample],
    rollouts: &[Rollout],
) -> Result<ScoredRollouts, TrainError> {
    let mut rewards: Vec<RewardBreakdown> = Vec::with_capacity(rollouts.len());
    for r in rollouts {
        rewards.push(routed_reward(
            cfg.stage,
            &r.trajectory,
            &batch[r.group],
            &cfg.reward,
        )?);
    }
    let scores: Vec<f64> = rewards.iter().map(|r| r.total as f64).collect();
    let groups: Vec<usize> = rollouts.iter().map(|r| r.group).collect();
    let advantages = group_advantages(&scores, &groups, cfg.grpo.norm_adv_by_std, cfg.grpo.epsilon)?;
    let keep: Vec<bool> = if cfg.grpo.filter_constant_groups {
        informative_groups_mask(&scores, &groups)?
    } else {
        vec![true; scores.len()]
    };
    let examples = rollouts
        .iter()
        .zip(&advantages)
        .zip(&keep)
        .filter(|(_, &k)| k)
        .map(|((r, &a), _)| {
            let t = &r.trajectory;
            let example = Example {
                ids: t.token_ids.clone(),
                prompt_len: t.prompt_len,
                loss_mask: t.loss_mask.clone(),
                images: r.images.clone(),
            };
            (example, a)
        })
        .collect();
    Ok(ScoredRollouts { rewards, examples })
}

/// What the updates of one step did, for the metrics. The gradient norms and learning rates
/// are the same on every rank (the updates are); the loss statistics are this rank's.
#[derive(Default)]
struct UpdateStats {
    policy: Vec<armt_grpo::PolicyLossMetrics>,
    grad_norms: Vec<f64>,
    lrs: Vec<f64>,
}

/// Log-probs of the rollout rows before any update (the PPO ratio's denominator) and under
/// the frozen reference (the KL term's), computed once per rollout batch.
struct FrozenLogprobs {
    old: Vec<Vec<f32>>,
    reference: Option<Vec<Vec<f32>>>,
}

/// The frozen log-probs, then `ppo_epochs × mini_batches` optimizer updates.
/// Every rank runs the same updates: global mini-batch k is every rank's k-th range.
fn update_policy(
    run: &GrpoRun,
    dp: &DataParallel,
    optimizer: &mut crate::AdamW,
    schedule: &LrSchedule,
    examples: &[(Example, f64)],
    pad_id: i64,
    step: usize,
) -> Result<UpdateStats, TrainError> {
    let cfg = run.config;
    let mut stats = UpdateStats::default();
    if !dp.any(!examples.is_empty())? {
        return Ok(stats);
    }
    let all: Vec<&Example> = examples.iter().map(|e| &e.0).collect();
    let chunk = cfg.train.logit_chunk;
    let lp_micro = cfg.train.logprob_micro_batch.unwrap_or(2 * cfg.train.micro_batch);
    let frozen = FrozenLogprobs {
        old: logprobs_rows_no_grad(&run.model, &all, pad_id, chunk, lp_micro)?,
        reference: match &run.reference {
            Some(r) if cfg.grpo.kl_coef > 0.0 => {
                Some(logprobs_rows_no_grad(r, &all, pad_id, chunk, lp_micro)?)
            }
            _ => None,
        },
    };
    let order: Vec<usize> = (0..examples.len()).collect();
    for _epoch in 0..cfg.train.ppo_epochs {
        for range in mini_batch_ranges(examples.len(), cfg.train.mini_batches) {
            let mini = &order[range];
            update_mini_batch(
                run, dp, optimizer, schedule, examples, mini, &frozen, pad_id, step, &mut stats,
            )?;
        }
    }
    Ok(stats)
}

/// One optimizer update on one mini-batch: gradients accumulated over its micro-batches with
/// the loss normalised over every rank's tokens and sequences, clipped, then the AdamW step.
#[allow(clippy::too_many_arguments)]
fn update_mini_batch(
    run: &GrpoRun,
    dp: &DataParallel,
    optimizer: &mut crate::AdamW,
    schedule: &LrSchedule,
    examples: &[(Example, f64)],
    mini: &[usize],
    frozen: &FrozenLogprobs,
    pad_id: i64,
    step: usize,
    stats: &mut UpdateStats,
) -> Result<(), TrainError> {
    let cfg = run.config;
    let tokens: usize = mini.iter().map(|&i| examples[i].0.num_trained()).sum();
    let seqs = mini.iter().filter(|&&i| examples[i].0.num_trained() > 0).count();
    let micro_batches: Vec<&[usize]> = mini.chunks(cfg.train.micro_batch).collect();
    // Loss normalisers over all ranks, so the summed gradients are the whole batch's; and the
    // most micro-batches any rank has (the others pad).
    let totals = dp.sum(&[tokens as f64, seqs as f64, mini.len() as f64])?;
    if totals[2] == 0.0 {
        return Ok(());
    }
    let rounds = dp.max_usize(micro_batches.len())?;
    let norm = AggNorm {
        batch_num_tokens: Some(totals[0].max(1.0)),
        global_batch_size: Some(totals[1].max(1.0)),
        loss_scale_factor: None,
    };
    let entropy_mode = if cfg.grpo.entropy_coeff != 0.0 {
        EntropyGrad::Grad
    } else {
        EntropyGrad::NoGrad
    };
    optimizer.zero_grad();
    let mut bad_loss = None;
    for round in 0..rounds {
        // A padded round (this rank has fewer micro-batches) has no data.
        let Some(&micro_idx) = micro_batches.get(round) else {
            continue;
        };
        if bad_loss.is_some() {
            continue;
        }
        let exs: Vec<&Example> = micro_idx.iter().map(|&i| &examples[i].0).collect();
        let lp = policy_logprobs(&run.model, &exs, pad_id, cfg.train.logit_chunk, entropy_mode)?;
        let (logp, mask, entropy) = (&lp.logp, &lp.mask, lp.entropy.as_ref());
        let t = logp.size()[1] as usize;
        let device = logp.device();
        let rows = |per_row: &[Vec<f32>]| {
            let rows: Vec<&[f32]> = micro_idx.iter().map(|&i| per_row[i].as_slice()).collect();
            pad_rows(&rows, t, device)
        };
        let old_t = rows(&frozen.old);
        let ref_t = frozen.reference.as_deref().map(rows);
        let adv: Vec<f32> = micro_idx.iter().map(|&i| examples[i].1 as f32).collect();
        let adv = Tensor::from_slice(&adv).to_device(device);
        let pb = PolicyBatch {
            log_probs: logp,
            old_log_probs: &old_t,
            advantages: &adv,
            loss_mask: mask,
            ref_log_probs: ref_t.as_ref(),
            entropy,
        };
        let (loss, loss_stats) = policy_loss(&pb, &cfg.grpo, &norm)?;
        let value = dp.checked_loss("grpo", step + 1, loss_stats.loss);
        if !value.is_finite() {
            bad_loss = Some(value);
            continue;
        }
        lp.backward(&loss);
        optimizer.accumulate_grads()?;
        stats.policy.push(loss_stats);
    }
    dp.agree_finite(step + 1, "the policy loss", bad_loss)?;
    let (gn, lr) = optimizer.clip_and_step(cfg.optim.grad_clip, schedule, step + 1)?;
    stats.grad_norms.push(gn);
    stats.lrs.push(lr);
    Ok(())
}

/// The step's metrics over every rank's rollouts (verl's names where verl has one).
fn step_metrics(records: &StepRecords, updates: &UpdateStats, with_kl: bool) -> BTreeMap<String, f64> {
    let rewards = &records.rewards;
    let trajs = &records.trajectories;
    let pg_stats = &records.policy_stats;
    let rate = |hits: &dyn Fn(usize) -> bool, n: usize| mean((0..n).map(|i| if hits(i) { 1.0 } else { 0.0 }));
    let mut m: BTreeMap<String, f64> = BTreeMap::new();
    let scores: Vec<f64> = rewards.iter().map(|r| r.total as f64).collect();
    let reward_mean = mean(scores.iter().copied());
    m.insert("reward/mean".into(), reward_mean);
    m.insert(
        "reward/std".into(),
        mean(scores.iter().map(|s| (s - reward_mean).powi(2))).sqrt(),
    );
    for (name, _) in rewards[0].parts() {
        let part = |r: &RewardBreakdown| {
            r.parts()
                .iter()
                .find(|p| p.0 == name)
                .map_or(f64::NAN, |p| p.1 as f64)
        };
        m.insert(format!("reward/{name}"), mean(rewards.iter().map(part)));
    }
    let n = rewards.len();
    m.insert(
        "reward/accuracy".into(),
        rate(&|i| rewards[i].correct == Some(true), n),
    );
    m.insert("reward/format_ok".into(), rate(&|i| rewards[i].format_ok, n));
    m.insert(
        "tools/call_rate".into(),
        rate(
            &|i| {
                trajs[i]
                    .turns
                    .iter()
                    .any(|x| x.tool_call.is_some() || x.tool_error.is_some())
            },
            trajs.len(),
        ),
    );
    m.insert(
        "tools/calls_per_trajectory".into(),
        mean(rewards.iter().map(|r| r.tool_calls as f64)),
    );
    m.insert(
        "tools/right_tool_rate".into(),
        rate(&|i| rewards[i].right_tool_calls > 0, n),
    );
    m.insert(
        "tools/success_rate".into(),
        mean(
            trajs
                .iter()
                .flat_map(|t| t.tool_calls().map(|c| if c.success { 1.0 } else { 0.0 })),
        ),
    );
    m.insert(
        "response/length_mean".into(),
        mean(trajs.iter().map(|t| t.response_len() as f64)),
    );
    m.insert(
        "response/turns_mean".into(),
        mean(trajs.iter().map(|t| t.turns.len() as f64)),
    );
    m.insert(
        "response/answered_rate".into(),
        rate(&|i| trajs[i].stop_reason == StopReason::Answered, trajs.len()),
    );
    m.insert("actor/pg_loss".into(), mean(pg_stats.iter().map(|s| s.pg_loss)));
    m.insert("actor/loss".into(), mean(pg_stats.iter().map(|s| s.loss)));
    m.insert(
        "actor/clipfrac".into(),
        mean(pg_stats.iter().map(|s| s.pg.clipfrac)),
    );
    m.insert("actor/ppo_kl".into(), mean(pg_stats.iter().map(|s| s.pg.ppo_kl)));
    m.insert(
        "actor/entropy".into(),
        mean(pg_stats.iter().filter_map(|s| s.entropy)),
    );
    if with_kl {
        m.insert("actor/kl".into(), mean(pg_stats.iter().filter_map(|s| s.kl)));
    }
    m.insert("actor/grad_norm".into(), mean(updates.grad_norms.iter().copied()));
    m.insert("actor/lr".into(), mean(updates.lrs.iter().copied()));
    m.insert(
        "batch/kept_fraction".into(),
        records.kept as f64 / records.total as f64,
    );
    m
}

/// Saves the state before step `step + 1` (unless `last_ckpt` is it) and returns the
/// interruption error with the resume hint.
fn abandon_step(
    run: &GrpoRun,
    data: &DataFingerprint,
    optimizer: &crate::AdamW,
    loader_before: &crate::DataLoader,
    step: usize,
    last_ckpt: Option<PathBuf>,
    bar: &ProgressBar,
) -> Result<TrainError, TrainError> {
    let cfg = run.config;
    let saved = last_ckpt
        .as_ref()
        .is_some_and(|p| checkpoint::read_state(p).is_ok_and(|s| s.step == step));
    let ckpt = match last_ckpt {
        Some(p) if saved => Some(p),
        _ if step == 0 => None,
        _ => {
            let state =
                TrainerState::capture(step, optimizer, loader_before, &run.phase, cfg.to_toml(), data);
            Some(checkpoint::save(
                &cfg.train.run_dir,
                &run.model,
                &run.model_dir,
                optimizer,
                &state,
                cfg.train.keep_last,
            )?)
        }
    };
    bar.abandon_with_message(format!("stopped by {}", crate::stop_reason()));
    let signal = crate::stop_reason();
    Ok(match ckpt {
        Some(checkpoint) => TrainError::InterruptedMidStep {
            signal,
            step: step + 1,
            checkpoint,
        },
        None => TrainError::InterruptedFirstStep { signal },
    })
}

/// The vision tower and merger stop receiving gradients.
pub(crate) fn freeze_vision(model: &mut Qwen25Vl) {
    for (name, mut t) in model.var_store().variables() {
        if name.starts_with("visual.") {
            t = t.set_requires_grad(false);
            let _ = t;
        }
    }
}

/// Keeps the latest step's trajectories (with rewards) for `armt view`: rank 0's in
/// `rollouts.jsonl`, rank r's in `rollouts.rank-r.jsonl` (each rank writes its own).
fn write_rollout_sample(
    run_dir: &Path,
    rank: usize,
    rollouts: &[armt_rollout::Rollout],
    rewards: &[RewardBreakdown],
) -> Result<(), TrainError> {
    let name = match rank {
        0 => "rollouts.jsonl".to_string(),
        r => format!("rollouts.rank-{r}.jsonl"),
    };
    let path = run_dir.join(&name);
    let tmp = run_dir.join(format!("{name}.partial"));
    let mut text = String::new();
    for (r, w) in rollouts.iter().zip(rewards) {
        let mut t = r.trajectory.clone();
        t.reward = Some(w.total);
        text.push_str(&serde_json::to_string(&t).expect("serialisable trajectory"));
        text.push('\n');
    }
    std::fs::write(&tmp, text).map_err(|e| TrainError::Io {
        path: tmp.clone(),
        source: e,
    })?;
    std::fs::rename(&tmp, &path).map_err(|e| TrainError::Io {
        path: path.clone(),
        source: e,
    })?;
    Ok(())
}
