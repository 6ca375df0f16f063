//! The GRPO loop: sample prompts, roll out n per prompt with tools, reward each trajectory for the
//! stage, normalise rewards within each group, recompute old (and reference) log-probs once, then
//! clipped-policy updates over mini-batches; log, checkpoint, repeat.

use crate::batch::{pad_rows, Example};
use crate::checkpoint::{self, TrainerState};
use crate::data_parallel::{mini_batch_ranges, DataParallel};
use crate::policy_logprobs::{logprobs_rows_no_grad, policy_logprobs};
use crate::{step_seed, stop_requested, TrainConfig, TrainError};
use armt_data::{Sample, StopReason};
use armt_grpo::{
    group_advantages, informative_groups_mask, policy_loss, AggNorm, EntropyGrad, LrSchedule, PolicyBatch,
};
use armt_metrics::MetricsLogger;
use armt_model::Qwen25Vl;
use armt_processing::Processor;
use armt_rewards::{routed_reward, RewardBreakdown};
use armt_rollout::{ModelGenerator, RolloutEnv, SamplingConfig, TemplateIds};
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
pub fn train_grpo(mut run: GrpoRun) -> Result<PathBuf, TrainError> {
    let cfg = run.config;
    let dp = DataParallel::new(run.comm.clone(), run.model.device());
    dp.check_divides("train.prompts_per_step", cfg.train.prompts_per_step)?;
    let run_dir = cfg.train.run_dir.clone();
    std::fs::create_dir_all(&run_dir).map_err(|e| TrainError::Io {
        path: run_dir.clone(),
        source: e,
    })?;
    if dp.is_main() {
        std::fs::write(run_dir.join("config.toml"), cfg.to_toml()).map_err(|e| TrainError::Io {
            path: run_dir.clone(),
            source: e,
        })?;
    }
    if run.samples.is_empty() {
        return Err(TrainError::NothingToTrain {
            what: "training samples",
        });
    }
    if cfg.rollout.retokenize_turns {
        return Err(TrainError::InvalidSettings {
            problems: vec![
                "rollout.retokenize_turns = true: it is for evaluation; it replaces sampled tokens, \
                 so GRPO would train on tokens the policy did not sample"
                    .into(),
            ],
        });
    }
    {
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
    }
    if cfg.model.freeze_vision {
        freeze_vision(&mut run.model);
    }
    run.model.set_grad_checkpointing(cfg.model.grad_checkpointing);
    let (mut optimizer, start_step, mut loader) = checkpoint::start_or_resume(
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
    let updates_per_step = cfg.train.mini_batches * cfg.train.ppo_epochs;
    let schedule = lr_schedule(cfg, updates_per_step);
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
    let n = cfg.rollout.n;
    let mut validator = crate::validation::Validator::from_config(cfg)?;

    let bar = match dp.is_main() {
        true => ProgressBar::new(cfg.train.steps as u64),
        false => ProgressBar::hidden(),
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix} {elapsed_precise} [{bar:30}] step {pos}/{len} {msg}")
            .expect("valid template"),
    );
    bar.set_prefix(run.phase.clone());
    bar.set_position(start_step as u64);
    let mut last_ckpt = run.resume.clone();
    let mut step = start_step;
    while step < cfg.train.steps {
        let started = Instant::now();
        // Where the data stood before this step, for a stop that abandons it.
        let loader_before = loader.clone();
        let batch: Vec<Sample> = loader
            .next_batch(cfg.train.prompts_per_step)
            .into_iter()
            .map(|i| run.samples[i].clone())
            .collect();
        // This rank's prompts: whole groups, a contiguous block of the step's batch.
        let first_prompt = dp.shard(batch.len()).start;
        let batch: Vec<Sample> = batch[dp.shard(batch.len())].to_vec();

        // 1. Rollouts (no grad), a random stream per step so a resumed run draws the same.
        let sampling = SamplingConfig {
            seed: step_seed(cfg.train.seed, step),
            ..cfg.rollout.sampling.clone()
        };
        let rollout_t = Instant::now();
        let rollouts = {
            let mut generator = ModelGenerator::new(&run.model, sampling, ids.endoftext);
            // Groups are numbered across the whole step (this rank's prompts start at
            // `first_prompt`), so each row's random stream is the one a single process would use.
            let global_groups: Vec<u64> =
                (first_prompt as u64..(first_prompt + batch.len()) as u64).collect();
            env.run_keyed(
                &mut generator,
                &batch,
                n,
                step as u64,
                Some(&global_groups),
                |_| {},
            )?
            .rollouts
        };
        let rollout_s = rollout_t.elapsed().as_secs_f64();
        if stop_requested() {
            // A stop during the rollouts (the long phase) abandons this step before any update:
            // the state is still the previous step's, saved unless it already is.
            return Err(abandon_step(
                &run,
                &optimizer,
                &loader_before,
                step,
                last_ckpt,
                &bar,
            )?);
        }

        // 2. Rewards and group-normalised advantages.
        let mut rewards: Vec<RewardBreakdown> = Vec::with_capacity(rollouts.len());
        for r in &rollouts {
            let sample = &batch[r.group];
            // Stage 1: the tool reward; stage 2: the sample's source's route (armt's own without one).
            rewards.push(routed_reward(cfg.stage, &r.trajectory, sample, &cfg.reward)?);
        }
        let scores: Vec<f64> = rewards.iter().map(|r| r.total as f64).collect();
        let groups: Vec<usize> = rollouts.iter().map(|r| r.group).collect();
        let advantages = group_advantages(&scores, &groups, cfg.grpo.norm_adv_by_std, cfg.grpo.epsilon)?;
        let keep: Vec<bool> = if cfg.grpo.filter_constant_groups {
            informative_groups_mask(&scores, &groups)?
        } else {
            vec![true; scores.len()]
        };
        let examples: Vec<(Example, f64)> = rollouts
            .iter()
            .zip(&advantages)
            .zip(&keep)
            .filter(|(_, &k)| k)
            .map(|((r, &a), _)| {
                let t = &r.trajectory;
                (
                    Example {
                        ids: t.token_ids.clone(),
                        prompt_len: t.prompt_len,
                        loss_mask: t.loss_mask.clone(),
                        images: r.images.clone(),
                    },
                    a,
                )
            })
            .collect();

        // 3. Old (and reference) log-probs, once per rollout batch.
        let mut m: BTreeMap<String, f64> = BTreeMap::new();
        let train_t = Instant::now();
        let mut pg_stats: Vec<armt_grpo::PolicyLossMetrics> = Vec::new();
        let mut grad_norms = Vec::new();
        let mut lrs = Vec::new();
        if dp.any(!examples.is_empty())? {
            let micro = cfg.train.micro_batch;
            let all: Vec<&Example> = examples.iter().map(|e| &e.0).collect();
            let chunk = cfg.train.logit_chunk;
            let lp_micro = cfg.train.logprob_micro_batch.unwrap_or(2 * micro);
            let old: Vec<Vec<f32>> = logprobs_rows_no_grad(&run.model, &all, ids.endoftext, chunk, lp_micro)?;
            let reference: Option<Vec<Vec<f32>>> = match &run.reference {
                Some(r) if cfg.grpo.kl_coef > 0.0 => {
                    Some(logprobs_rows_no_grad(r, &all, ids.endoftext, chunk, lp_micro)?)
                }
                _ => None,
            };
            let entropy_mode = if cfg.grpo.entropy_coeff != 0.0 {
                EntropyGrad::Grad
            } else {
                EntropyGrad::NoGrad
            };

            // 4. Updates.
            let order: Vec<usize> = (0..examples.len()).collect();
            for _epoch in 0..cfg.train.ppo_epochs {
                // Every rank runs the same updates: global mini-batch k is every rank's k-th range.
                for range in mini_batch_ranges(examples.len(), cfg.train.mini_batches) {
                    let mini = &order[range];
                    let tokens: usize = mini.iter().map(|&i| examples[i].0.num_trained()).sum();
                    let seqs = mini.iter().filter(|&&i| examples[i].0.num_trained() > 0).count();
                    let micro_batches: Vec<&[usize]> = mini.chunks(micro).collect();
                    // Loss normalisers over all ranks, so the summed gradients are the whole
                    // batch's; and the most micro-batches any rank has (the others pad).
                    let totals = dp.sum(&[tokens as f64, seqs as f64, mini.len() as f64])?;
                    if totals[2] == 0.0 {
                        continue;
                    }
                    let rounds = dp.max_usize(micro_batches.len())?;
                    let norm = AggNorm {
                        batch_num_tokens: Some(totals[0].max(1.0)),
                        global_batch_size: Some(totals[1].max(1.0)),
                        loss_scale_factor: None,
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
                        let lp = policy_logprobs(&run.model, &exs, ids.endoftext, chunk, entropy_mode)?;
                        let (logp, mask, entropy) = (&lp.logp, &lp.mask, lp.entropy.as_ref());
                        let t = logp.size()[1] as usize;
                        let device = logp.device();
                        let old_t = pad_rows(
                            &micro_idx.iter().map(|&i| old[i].as_slice()).collect::<Vec<_>>(),
                            t,
                            device,
                        );
                        let ref_t = reference.as_ref().map(|r| {
                            pad_rows(
                                &micro_idx.iter().map(|&i| r[i].as_slice()).collect::<Vec<_>>(),
                                t,
                                device,
                            )
                        });
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
                        let (loss, stats) = policy_loss(&pb, &cfg.grpo, &norm)?;
                        let value = dp.checked_loss("grpo", step + 1, stats.loss);
                        if !value.is_finite() {
                            bad_loss = Some(value);
                            continue;
                        }
                        lp.backward(&loss);
                        optimizer.accumulate_grads()?;
                        pg_stats.push(stats);
                    }
                    dp.agree_finite(step + 1, "the policy loss", bad_loss)?;
                    let gn = optimizer.clip_grad_norm(cfg.optim.grad_clip)?;
                    if !gn.is_finite() {
                        return Err(TrainError::NonFinite {
                            step: step + 1,
                            quantity: "the gradient norm".into(),
                            value: gn,
                        });
                    }
                    let lr = schedule.lr_at(optimizer.steps as usize);
                    optimizer.step(lr)?;
                    grad_norms.push(gn);
                    lrs.push(lr);
                }
            }
        }
        let train_s = train_t.elapsed().as_secs_f64();
        step += 1;

        // 5. Metrics, over every rank's rollouts.
        let local_rewards = rewards;
        let records = dp.gather_step(
            rollouts.iter().map(|r| r.trajectory.clone()),
            &local_rewards,
            &pg_stats,
            examples.len(),
        )?;
        let (rewards, pg_stats) = (records.rewards, records.policy_stats);
        let scores: Vec<f64> = rewards.iter().map(|r| r.total as f64).collect();
        let trajs: Vec<&armt_data::Trajectory> = records.trajectories.iter().collect();
        m.insert("reward/mean".into(), mean(scores.iter().copied()));
        let var = mean(scores.iter().map(|s| (s - m["reward/mean"]).powi(2)));
        m.insert("reward/std".into(), var.sqrt());
        for (name, _) in rewards[0].parts() {
            m.insert(
                format!("reward/{name}"),
                mean(
                    rewards
                        .iter()
                        .map(|r| r.parts().iter().find(|p| p.0 == name).unwrap().1 as f64),
                ),
            );
        }
        m.insert(
            "reward/accuracy".into(),
            mean(
                rewards
                    .iter()
                    .map(|r| if r.correct == Some(true) { 1.0 } else { 0.0 }),
            ),
        );
        m.insert(
            "reward/format_ok".into(),
            mean(rewards.iter().map(|r| if r.format_ok { 1.0 } else { 0.0 })),
        );
        m.insert(
            "tools/call_rate".into(),
            mean(trajs.iter().map(|t| {
                if t.turns
                    .iter()
                    .any(|x| x.tool_call.is_some() || x.tool_error.is_some())
                {
                    1.0
                } else {
                    0.0
                }
            })),
        );
        m.insert(
            "tools/calls_per_trajectory".into(),
            mean(rewards.iter().map(|r| r.tool_calls as f64)),
        );
        m.insert(
            "tools/right_tool_rate".into(),
            mean(
                rewards
                    .iter()
                    .map(|r| if r.right_tool_calls > 0 { 1.0 } else { 0.0 }),
            ),
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
            mean(trajs.iter().map(|t| {
                if t.stop_reason == StopReason::Answered {
                    1.0
                } else {
                    0.0
                }
            })),
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
        if cfg.grpo.kl_coef > 0.0 {
            m.insert("actor/kl".into(), mean(pg_stats.iter().filter_map(|s| s.kl)));
        }
        m.insert("actor/grad_norm".into(), mean(grad_norms.iter().copied()));
        m.insert("actor/lr".into(), mean(lrs.iter().copied()));
        m.insert(
            "batch/kept_fraction".into(),
            records.kept as f64 / records.total as f64,
        );
        let step_s = started.elapsed().as_secs_f64();
        let tokens: usize = trajs.iter().map(|t| t.token_ids.len()).sum();
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
        write_rollout_sample(&run_dir, dp.rank(), &rollouts, &local_rewards)?;
        let mut line = format!(
            "reward {:.3} acc {:.2} right-tool {:.2} len {:.0} {:.1}s/step",
            m["reward/mean"],
            m["reward/accuracy"],
            m["tools/right_tool_rate"],
            m["response/length_mean"],
            step_s
        );
        if let Some(a) = m.get("val/accuracy") {
            line.push_str(&format!(" val-acc {a:.2}"));
        }
        bar.set_position(step as u64);
        if bar.is_hidden() && dp.is_main() {
            // No terminal (a log file, CI): one line per step instead of the bar.
            eprintln!("{} step {step}/{}: {line}", run.phase, cfg.train.steps);
        }
        bar.set_message(line);

        let stop = dp.agree_stop(stop_requested())?;
        if step % cfg.train.save_every.max(1) == 0 || step == cfg.train.steps || stop {
            let state = TrainerState::capture(step, &optimizer, &loader, &run.phase, cfg.to_toml());
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
    if let Some(report) = validator.and_then(|v| v.last).filter(|_| dp.is_main()) {
        eprintln!("{}: held-out tasks (greedy)\n{}", run.phase, report.table());
    }
    if !dp.is_main() {
        return last_ckpt.ok_or(TrainError::NoCheckpointWritten);
    }
    let plots = armt_metrics::plot_metrics(&run_dir.join("metrics.jsonl"), &run_dir.join("plots"), None)?;
    if let Some(p) = plots.first() {
        eprintln!(
            "{}: reward curves in {}",
            run.phase,
            p.parent().unwrap_or(Path::new(".")).display()
        );
    }
    last_ckpt.ok_or(TrainError::NoCheckpointWritten)
}

/// Saves the state before step `step + 1` (unless `last_ckpt` is it) and returns the
/// interruption error with the resume hint.
fn abandon_step(
    run: &GrpoRun,
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
            let state = TrainerState::capture(step, optimizer, loader_before, &run.phase, cfg.to_toml());
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
