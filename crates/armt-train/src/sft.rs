//! Cold start: masked next-token loss on tool-use trajectories (the records `armt rollout`
//! writes), so the policy learns the format and the tools before GRPO.

use crate::batch::Example;
use crate::checkpoint::{self, TrainerState};
use crate::data_fingerprint::DataFingerprint;
use crate::data_parallel::DataParallel;
use crate::grpo_trainer::freeze_vision;
use crate::policy_logprobs::policy_logprobs;
use crate::{stop_requested, TrainConfig, TrainError};
use armt_data::Trajectory;
use armt_grpo::{EntropyGrad, LrSchedule};
use armt_metrics::MetricsLogger;
use armt_model::Qwen25Vl;
use armt_processing::Processor;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;
use tch::Kind;

/// Trajectory records → examples, loading and preprocessing their images (in the order of the
/// record's `images`, which is their order in the token sequence).
pub fn examples_from_trajectories(
    trajs: &[Trajectory],
    processor: &Processor,
) -> Result<Vec<Example>, TrainError> {
    let mut out = Vec::with_capacity(trajs.len());
    for t in trajs {
        let mut images = Vec::with_capacity(t.images.len());
        for (key, path) in &t.images {
            let img = image::open(path).map_err(|source| TrainError::TrajectoryImage {
                sample_id: t.sample_id.clone(),
                group_index: t.group_index,
                key: key.clone(),
                path: path.clone(),
                source: Box::new(source),
            })?;
            images.push(processor.image_processor().preprocess(&img)?);
        }
        out.push(Example {
            ids: t.token_ids.clone(),
            prompt_len: t.prompt_len,
            loss_mask: t.loss_mask.clone(),
            images,
        });
    }
    Ok(out)
}

pub struct SftRun<'a> {
    pub config: &'a TrainConfig,
    pub model: Qwen25Vl,
    pub model_dir: PathBuf,
    pub examples: Vec<Example>,
    pub run_dir: PathBuf,
    pub pad_id: i64,
    pub resume: Option<PathBuf>,
    /// The data-parallel group (`armt_dist::SingleProcess` for one process).
    pub comm: std::sync::Arc<dyn armt_dist::Communicator>,
}

/// Trains; returns the final checkpoint directory (a loadable model directory).
pub fn train_sft(mut run: SftRun) -> Result<PathBuf, TrainError> {
    let cfg = run.config;
    let s = &cfg.sft;
    let dp = DataParallel::new(run.comm.clone(), run.model.device());
    dp.check_divides("sft.batch", s.batch)?;
    if run.examples.is_empty() {
        return Err(TrainError::NothingToTrain { what: "SFT examples" });
    }
    let data = DataFingerprint::of_examples(&run.examples);
    std::fs::create_dir_all(&run.run_dir).map_err(|e| TrainError::Io {
        path: run.run_dir.clone(),
        source: e,
    })?;
    if cfg.model.freeze_vision {
        freeze_vision(&mut run.model);
    }
    let (mut optimizer, start, mut loader) = checkpoint::start_or_resume(
        &run.model,
        cfg,
        dp.comm(),
        run.resume.as_deref(),
        run.examples.len(),
        cfg.train.seed,
    )?;
    let schedule = LrSchedule {
        lr: s.lr,
        warmup_steps: s.warmup_steps,
        total_steps: s.steps.max(s.warmup_steps + 1),
        min_lr_ratio: 0.1,
        decay: armt_grpo::Decay::Cosine,
    };
    schedule.validate()?;
    let mut logger = match dp.is_main() {
        true => Some(MetricsLogger::create(&run.run_dir, Some(start as u64))?),
        false => None,
    };
    let bar = match dp.is_main() {
        true => ProgressBar::new(s.steps as u64),
        false => ProgressBar::hidden(),
    };
    bar.set_style(
        ProgressStyle::with_template("cold-start SFT {elapsed_precise} [{bar:30}] step {pos}/{len} {msg}")
            .expect("valid template"),
    );
    bar.set_position(start as u64);
    let mut last = run.resume.clone();
    let mut step = start;
    while step < s.steps {
        let started = Instant::now();
        let idx = loader.next_batch(s.batch);
        // Every rank knows the whole batch (so the normaliser is global) and trains its block.
        let tokens: usize = idx.iter().map(|&i| run.examples[i].num_trained()).sum();
        let local = &idx[dp.shard(idx.len())];
        optimizer.zero_grad();
        let mut loss_sum = 0.0;
        let mut bad_loss = None;
        for micro in local.chunks(s.micro_batch.max(1)) {
            let exs: Vec<&Example> = micro.iter().map(|&i| &run.examples[i]).collect();
            let lp = policy_logprobs(
                &run.model,
                &exs,
                run.pad_id,
                cfg.train.logit_chunk,
                EntropyGrad::Skip,
            )?;
            // Token-mean over the whole batch: micro-batch sums divided by the batch's token count.
            let loss = -(&lp.logp * &lp.mask).sum(Kind::Float) / tokens.max(1) as f64;
            let v = dp.checked_loss("sft", step + 1, loss.double_value(&[]));
            if !v.is_finite() {
                bad_loss = Some(v);
                continue;
            }
            loss_sum += v;
            lp.backward(&loss);
            optimizer.accumulate_grads()?;
        }
        dp.agree_finite(step + 1, "the SFT loss", bad_loss)?;
        let loss_sum = dp.sum(&[loss_sum])?[0];
        let (gn, lr) = optimizer.clip_and_step(cfg.optim.grad_clip, &schedule, step + 1)?;
        step += 1;
        let dt = started.elapsed().as_secs_f64();
        let m = BTreeMap::from([
            ("sft/loss".to_string(), loss_sum),
            ("sft/grad_norm".to_string(), gn),
            ("sft/lr".to_string(), lr),
            ("perf/step_time_s".to_string(), dt),
            (
                "perf/tokens_per_s".to_string(),
                idx.iter().map(|&i| run.examples[i].ids.len()).sum::<usize>() as f64 / dt,
            ),
        ]);
        if let Some(logger) = logger.as_mut() {
            logger.log(step as u64, &m)?;
        }
        bar.set_position(step as u64);
        if bar.is_hidden() && dp.is_main() && (step % 10 == 0 || step == s.steps) {
            eprintln!(
                "cold-start SFT step {step}/{}: loss {loss_sum:.3} lr {lr:.1e}",
                s.steps
            );
        }
        bar.set_message(format!("loss {loss_sum:.3} lr {lr:.1e}"));
        let stop = dp.agree_stop(stop_requested())?;
        if step % cfg.train.save_every.max(1) == 0 || step == s.steps || stop {
            let state = TrainerState::capture(step, &optimizer, &loader, "sft", cfg.to_toml(), &data);
            last = Some(checkpoint::save(
                &run.run_dir,
                &run.model,
                &run.model_dir,
                &optimizer,
                &state,
                cfg.train.keep_last,
            )?);
        }
        if stop {
            return Err(TrainError::Interrupted {
                what: "SFT step",
                step,
                signal: crate::stop_reason(),
                checkpoint: last.clone().unwrap_or_default(),
            });
        }
    }
    bar.finish();
    dp.finish()?;
    if !dp.is_main() {
        return last.ok_or(TrainError::NoCheckpointWritten);
    }
    let _ = armt_metrics::plot_metrics(
        &run.run_dir.join("metrics.jsonl"),
        &run.run_dir.join("plots"),
        None,
    );
    last.ok_or(TrainError::NoCheckpointWritten)
}
