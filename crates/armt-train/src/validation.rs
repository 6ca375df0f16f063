//! Greedy evaluation on held-out samples: what `armt eval` prints and what the trainers log as
//! `val/*` every `train.val_every` steps (verl's `test_freq`). Each trajectory is scored with the
//! stage-1 and stage-2 rewards; the report keeps, per task kind, accuracy, format, right-tool
//! rate, tool calls, stage-2 reward and the share of the most common verdict (1.0 means a
//! constant judge, whose accuracy is only the share of that verdict among the ground truths).

use crate::{TrainConfig, TrainError};
use armt_data::{Sample, TaskKind, Trajectory};
use armt_model::Qwen25Vl;
use armt_processing::Processor;
use armt_rewards::{check_format, parse_verdict, stage1_reward, stage2_reward, RewardConfig, Verdict};
use armt_rollout::{ModelGenerator, RolloutConfig, RolloutEnv, SamplingConfig, TemplateIds};
use armt_tools::ToolRegistry;
use std::collections::BTreeMap;

/// Rows rolled out together by [`Validator`].
const VAL_BATCH: usize = 64;

/// One evaluated sample.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalItem {
    pub task: TaskKind,
    pub correct: bool,
    pub format_ok: bool,
    pub right_tool: bool,
    pub tool_calls: usize,
    /// Stage-2 reward.
    pub reward: f64,
    /// The verdict as read from the final answer (`Answer 1`, `True`, …; `none` if unreadable).
    pub verdict: String,
}

/// Aggregates over one task kind (or all).
#[derive(Debug, Clone, PartialEq)]
pub struct KindSummary {
    pub n: usize,
    pub accuracy: f64,
    pub format: f64,
    pub right_tool: f64,
    pub tool_calls: f64,
    pub reward: f64,
    /// Share of the most common verdict (for "all": the mean over kinds, weighted by count,
    /// since verdicts of different kinds are not comparable).
    pub top_verdict_share: f64,
    /// The most common verdict (for "all": empty).
    pub top_verdict: String,
}

/// The items of one evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalReport {
    pub items: Vec<EvalItem>,
}

pub fn task_name(task: TaskKind) -> String {
    format!("{task:?}").to_lowercase()
}

fn verdict_label(v: Option<Verdict>) -> String {
    match v {
        Some(Verdict::Candidate(k)) => format!("Answer {k}"),
        Some(Verdict::Truth(t)) => if t { "True" } else { "False" }.to_string(),
        None => "none".to_string(),
    }
}

/// The most common label and its share of `labels` (ties: the first in sorted order).
fn top_share<'a>(labels: impl Iterator<Item = &'a str>) -> (String, f64) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut n = 0;
    for l in labels {
        *counts.entry(l).or_default() += 1;
        n += 1;
    }
    let best = counts.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)));
    match best {
        Some((l, &c)) => (l.to_string(), c as f64 / n as f64),
        None => (String::new(), f64::NAN),
    }
}

impl EvalReport {
    /// Scores one trajectory of `sample` and adds it; returns the stage-2 reward.
    pub fn add(
        &mut self,
        traj: &Trajectory,
        sample: &Sample,
        rewards: &RewardConfig,
    ) -> Result<f64, TrainError> {
        let s1 = stage1_reward(traj, sample, rewards)?;
        let s2 = stage2_reward(traj, sample, rewards)?;
        let format = check_format(&traj.final_text);
        let verdict = parse_verdict(format.answer().unwrap_or(&traj.final_text), sample.judgment);
        self.items.push(EvalItem {
            task: sample.task,
            correct: s2.correct == Some(true),
            format_ok: s2.format_ok,
            right_tool: s1.right_tool_calls > 0,
            tool_calls: s2.tool_calls,
            reward: s2.total as f64,
            verdict: verdict_label(verdict),
        });
        Ok(s2.total as f64)
    }

    /// The task kinds present, in a fixed order.
    pub fn kinds(&self) -> Vec<TaskKind> {
        let mut v: Vec<TaskKind> = Vec::new();
        for it in &self.items {
            if !v.contains(&it.task) {
                v.push(it.task);
            }
        }
        v.sort_by_key(|k| task_name(*k));
        v
    }

    /// Aggregates over `kind` (None: all items).
    pub fn summary(&self, kind: Option<TaskKind>) -> KindSummary {
        let items: Vec<&EvalItem> = self
            .items
            .iter()
            .filter(|it| kind.is_none_or(|k| it.task == k))
            .collect();
        let n = items.len();
        let mean = |f: &dyn Fn(&EvalItem) -> f64| {
            if n == 0 {
                f64::NAN
            } else {
                items.iter().map(|it| f(it)).sum::<f64>() / n as f64
            }
        };
        let (top_verdict, top_verdict_share) = match kind {
            Some(_) => top_share(items.iter().map(|it| it.verdict.as_str())),
            None => {
                let weighted: f64 = self
                    .kinds()
                    .into_iter()
                    .map(|k| {
                        let s = self.summary(Some(k));
                        s.top_verdict_share * s.n as f64
                    })
                    .sum();
                (String::new(), if n == 0 { f64::NAN } else { weighted / n as f64 })
            }
        };
        KindSummary {
            n,
            accuracy: mean(&|it| it.correct as u8 as f64),
            format: mean(&|it| it.format_ok as u8 as f64),
            right_tool: mean(&|it| it.right_tool as u8 as f64),
            tool_calls: mean(&|it| it.tool_calls as f64),
            reward: mean(&|it| it.reward),
            top_verdict_share,
            top_verdict,
        }
    }

    /// `{prefix}/accuracy`, `{prefix}/accuracy/<kind>`, … for the metrics logger.
    pub fn metrics(&self, prefix: &str) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        let mut put = |suffix: &str, s: &KindSummary| {
            m.insert(format!("{prefix}/accuracy{suffix}"), s.accuracy);
            m.insert(format!("{prefix}/format{suffix}"), s.format);
            m.insert(format!("{prefix}/right_tool_rate{suffix}"), s.right_tool);
            m.insert(format!("{prefix}/reward{suffix}"), s.reward);
            m.insert(format!("{prefix}/top_verdict_share{suffix}"), s.top_verdict_share);
        };
        put("", &self.summary(None));
        for k in self.kinds() {
            put(&format!("/{}", task_name(k)), &self.summary(Some(k)));
        }
        m
    }

    /// The table `armt eval` prints: one row per task kind, then all.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<12} {:>5} {:>9} {:>7} {:>10} {:>10} {:>8} {:>14}\n",
            "task", "n", "accuracy", "format", "right tool", "tool calls", "reward", "top verdict"
        );
        let rows = self
            .kinds()
            .into_iter()
            .map(|k| (task_name(k), self.summary(Some(k))))
            .chain(std::iter::once(("all".to_string(), self.summary(None))));
        for (name, s) in rows {
            let top = if s.top_verdict.is_empty() {
                format!("{:.2}", s.top_verdict_share)
            } else {
                format!("{:.2} {}", s.top_verdict_share, s.top_verdict)
            };
            out.push_str(&format!(
                "{name:<12} {:>5} {:>9.3} {:>7.3} {:>10.3} {:>10.2} {:>8.3} {top:>14}\n",
                s.n, s.accuracy, s.format, s.right_tool, s.tool_calls, s.reward
            ));
        }
        out
    }
}

/// Greedy rollouts of `samples` (`batch` at a time) scored with `rewards`; `each` sees every
/// trajectory with its sample and stage-2 reward (to write them out).
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    model: &Qwen25Vl,
    processor: &Processor,
    tools: &ToolRegistry,
    rollout: &RolloutConfig,
    rewards: &RewardConfig,
    samples: &[Sample],
    batch: usize,
    mut each: impl FnMut(&Trajectory, &Sample, f64) -> Result<(), TrainError>,
) -> Result<EvalReport, TrainError> {
    let _g = tch::no_grad_guard();
    let greedy = RolloutConfig {
        sampling: SamplingConfig {
            temperature: 0.0,
            seed: 0,
            ..rollout.sampling.clone()
        },
        ..rollout.clone()
    };
    let env = RolloutEnv {
        processor,
        tools,
        config: &greedy,
        image_dir: None,
    };
    let pad = TemplateIds::from_tokenizer(processor.tokenizer())?.endoftext;
    let mut report = EvalReport::default();
    for chunk in samples.chunks(batch.max(1)) {
        let mut generator = ModelGenerator::new(model, greedy.sampling.clone(), pad);
        for (r, sample) in env.run(&mut generator, chunk, 1, |_| {})?.into_iter().zip(chunk) {
            let reward = report.add(&r.trajectory, sample, rewards)?;
            each(&r.trajectory, sample, reward)?;
        }
    }
    Ok(report)
}

/// Validation during training: every `train.val_every` steps (and at the last step) a greedy
/// evaluation on `data.val`, logged as `val/*`.
pub struct Validator {
    samples: Vec<Sample>,
    every: usize,
    /// The latest report, printed when the stage ends.
    pub last: Option<EvalReport>,
}

impl Validator {
    /// None when `train.val_every` is 0 or there is no `data.val`.
    pub fn from_config(cfg: &TrainConfig) -> Result<Option<Self>, TrainError> {
        match (&cfg.data.val, cfg.train.val_every) {
            (Some(path), every) if every > 0 => Ok(Some(Self {
                samples: armt_data::read_samples(path)?,
                every,
                last: None,
            })),
            _ => Ok(None),
        }
    }

    /// Whether step `step` (1-based, just finished) of `total` is validated.
    pub fn due(&self, step: usize, total: usize) -> bool {
        step.is_multiple_of(self.every) || step == total
    }

    /// Evaluates `model` and returns the `val/*` metrics.
    pub fn run(
        &mut self,
        model: &Qwen25Vl,
        processor: &Processor,
        tools: &ToolRegistry,
        cfg: &TrainConfig,
    ) -> Result<BTreeMap<String, f64>, TrainError> {
        let report = evaluate(
            model,
            processor,
            tools,
            &cfg.rollout,
            &cfg.reward,
            &self.samples,
            VAL_BATCH,
            |_, _, _| Ok(()),
        )?;
        let m = report.metrics("val");
        self.last = Some(report);
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(task: TaskKind, correct: bool, verdict: &str) -> EvalItem {
        EvalItem {
            task,
            correct,
            format_ok: true,
            right_tool: correct,
            tool_calls: 1,
            reward: if correct { 1.5 } else { 0.4 },
            verdict: verdict.into(),
        }
    }

    #[test]
    fn summaries_count_per_kind_and_expose_a_constant_judge() {
        let report = EvalReport {
            items: vec![
                item(TaskKind::Zoom, true, "Answer 1"),
                item(TaskKind::Zoom, false, "Answer 1"),
                item(TaskKind::Zoom, true, "Answer 1"),
                item(TaskKind::Zoom, false, "Answer 1"),
                item(TaskKind::Instruction, true, "True"),
                item(TaskKind::Instruction, true, "False"),
            ],
        };
        let zoom = report.summary(Some(TaskKind::Zoom));
        assert_eq!(zoom.n, 4);
        assert_eq!(zoom.accuracy, 0.5);
        assert_eq!(
            (zoom.top_verdict.as_str(), zoom.top_verdict_share),
            ("Answer 1", 1.0)
        );
        let ins = report.summary(Some(TaskKind::Instruction));
        assert_eq!(ins.top_verdict_share, 0.5);
        assert_eq!(
            ins.top_verdict, "False",
            "ties go to the first label in sorted order"
        );
        let all = report.summary(None);
        assert_eq!(all.n, 6);
        assert!((all.accuracy - 4.0 / 6.0).abs() < 1e-12);
        // (4·1.0 + 2·0.5) / 6
        assert!((all.top_verdict_share - 5.0 / 6.0).abs() < 1e-12);
        let m = report.metrics("val");
        assert_eq!(m["val/accuracy/zoom"], 0.5);
        assert_eq!(m["val/accuracy/instruction"], 1.0);
        assert!((m["val/reward"] - (4.0 * 1.5 + 2.0 * 0.4) / 6.0).abs() < 1e-12);
        let table = report.table();
        assert!(
            table.contains("zoom") && table.contains("1.00 Answer 1"),
            "{table}"
        );
    }
}
