//! Up-front checks: every config value within its valid range (the message gives the range),
//! the whole dataset before step 1, and the tool config against the task kinds in the data.
//! A degenerate setting (temperature 0, `top_p = 0`, no response tokens, β₁ ≥ 1, ε = 0 …)
//! would otherwise train nothing, or write NaN, and exit 0.

use crate::{InvalidSetting, TrainConfig, TrainError};
use armt_data::validate::{validate_samples, DatasetCheck, ImageCheck};
use armt_data::{Sample, TaskKind};
use armt_rewards::RewardConfig;
use armt_tools::ToolRegistry;
use std::path::Path;

/// A closed or open numeric interval, shown in messages as written here.
struct Range {
    lo: f64,
    lo_open: bool,
    hi: f64,
    hi_open: bool,
}

impl Range {
    fn contains(&self, v: f64) -> bool {
        v.is_finite()
            && (if self.lo_open { v > self.lo } else { v >= self.lo })
            && (if self.hi_open { v < self.hi } else { v <= self.hi })
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let num = |x: f64| {
            if x.is_infinite() {
                "inf".to_string()
            } else {
                format!("{x}")
            }
        };
        write!(
            f,
            "{}{}, {}{}",
            if self.lo_open { "(" } else { "[" },
            num(self.lo),
            num(self.hi),
            if self.hi_open { ")" } else { "]" }
        )
    }
}

const INF: f64 = f64::INFINITY;

/// `[lo, hi]`, `(lo, hi]`, `[lo, hi)`, `(lo, hi)`.
fn closed(lo: f64, hi: f64) -> Range {
    Range {
        lo,
        lo_open: false,
        hi,
        hi_open: false,
    }
}
fn open_closed(lo: f64, hi: f64) -> Range {
    Range {
        lo,
        lo_open: true,
        hi,
        hi_open: false,
    }
}
fn closed_open(lo: f64, hi: f64) -> Range {
    Range {
        lo,
        lo_open: false,
        hi,
        hi_open: true,
    }
}
fn open(lo: f64, hi: f64) -> Range {
    Range {
        lo,
        lo_open: true,
        hi,
        hi_open: true,
    }
}

/// Every range check of the config; returns all violations in one error.
pub fn check_config(cfg: &TrainConfig) -> Result<(), TrainError> {
    let r = &cfg.rollout;
    let s = &r.sampling;
    let o = &cfg.optim;
    let a = &o.adamw;
    let t = &cfg.train;
    let sft = &cfg.sft;
    let b = &cfg.builtin;
    let int = |v: usize| v as f64;
    let checks: Vec<(&str, f64, Range, &str)> = vec![
        (
            "rollout.sampling.temperature",
            s.temperature,
            open_closed(0.0, 100.0),
            "GRPO needs sampled, differing rollouts (0 is greedy: every group would be identical)",
        ),
        ("rollout.sampling.top_p", s.top_p, open_closed(0.0, 1.0), ""),
        (
            "rollout.n",
            int(r.n),
            closed(2.0, 4096.0),
            "GRPO compares rollouts within a group",
        ),
        ("rollout.max_turns", int(r.max_turns), closed(1.0, 1000.0), ""),
        (
            "rollout.max_response_tokens",
            int(r.max_response_tokens),
            closed(1.0, 1e7),
            "",
        ),
        (
            "rollout.max_turn_tokens",
            int(r.max_turn_tokens),
            closed(1.0, 1e7),
            "",
        ),
        ("rollout.max_context", int(r.max_context), closed(2.0, 1e8), ""),
        (
            "rollout.max_tool_text_chars",
            int(r.max_tool_text_chars),
            closed(1.0, 1e8),
            "",
        ),
        ("rollout.max_images", int(r.max_images), closed(1.0, 1e4), ""),
        ("optim.lr", o.lr, open(0.0, INF), ""),
        ("optim.min_lr_ratio", o.min_lr_ratio, closed(0.0, 1.0), ""),
        (
            "optim.grad_clip",
            o.grad_clip,
            closed_open(0.0, INF),
            "0 turns clipping off",
        ),
        ("optim.adamw.beta1", a.beta1, closed_open(0.0, 1.0), ""),
        ("optim.adamw.beta2", a.beta2, closed_open(0.0, 1.0), ""),
        (
            "optim.adamw.eps",
            a.eps,
            open_closed(0.0, 1.0),
            "0 divides by zero where a gradient is zero",
        ),
        ("optim.adamw.weight_decay", a.weight_decay, closed(0.0, 1.0), ""),
        ("train.steps", int(t.steps), closed(1.0, 1e9), ""),
        ("train.save_every", int(t.save_every), closed(1.0, 1e9), ""),
        ("train.keep_last", int(t.keep_last), closed(1.0, 1e6), ""),
        ("train.logit_chunk", t.logit_chunk as f64, closed(1.0, 1e9), ""),
        ("sft.steps", int(sft.steps), closed(1.0, 1e9), ""),
        ("sft.lr", sft.lr, open(0.0, INF), ""),
        ("sft.batch", int(sft.batch), closed(1.0, 1e7), ""),
        ("sft.micro_batch", int(sft.micro_batch), closed(1.0, 1e7), ""),
        (
            "builtin.train_tasks",
            int(b.train_tasks),
            closed(3.0, 1e6),
            "one task of each kind at least",
        ),
        (
            "builtin.val_tasks",
            int(b.val_tasks),
            closed(3.0, 1e6),
            "one task of each kind at least",
        ),
        ("builtin.read_steps", int(b.read_steps), closed(0.0, 1e9), ""),
        (
            "builtin.direct_traces",
            int(b.direct_traces),
            closed(0.0, 100.0),
            "",
        ),
        (
            "builtin.guess_traces",
            int(b.guess_traces),
            closed(0.0, 100.0),
            "",
        ),
    ];
    let mut bad: Vec<String> = checks
        .into_iter()
        .filter(|(_, v, range, _)| !range.contains(*v))
        .map(|(name, v, range, why)| {
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            };
            format!("{name} = {v}: must be in {range}{why}")
        })
        .collect();
    if r.max_turn_tokens > r.max_response_tokens {
        bad.push(format!(
            "rollout.max_turn_tokens = {} exceeds rollout.max_response_tokens = {}: must be in [1, {}]",
            r.max_turn_tokens, r.max_response_tokens, r.max_response_tokens
        ));
    }
    if let Err(e) = check_device(cfg.model.device.as_deref(), cfg.model.dtype.as_deref()) {
        bad.push(e.to_string());
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(TrainError::InvalidSettings { problems: bad })
    }
}

/// [`check_tools_for_tasks`] for a run of `stage`: in stage 1 the right-tool reward of a task
/// kind without its tool could never be earned, so that is an error; in stage 2 the judge may
/// answer without a tool (ARM-Thinker's RL offers only the zoom tool for all its data), so it is
/// a warning. A tool config with no tools at all is an error in both.
fn check_tools_for_stage(
    stage: u8,
    reward: &RewardConfig,
    tools: &ToolRegistry,
    samples: &[Sample],
    tools_origin: &str,
) -> Result<(), TrainError> {
    match check_tools_for_tasks(reward, tools, samples, tools_origin) {
        Err(TrainError::ToolsMissingForTasks { problems }) if stage != 1 => {
            eprintln!(
                "armt: warning: {}; those tasks can only be answered without a tool",
                problems.join("; ")
            );
            Ok(())
        }
        other => other,
    }
}

/// `model.device` and `model.dtype` spelled as the CLI accepts them (availability is checked
/// when the device is opened).
fn check_device(device: Option<&str>, dtype: Option<&str>) -> Result<(), InvalidSetting> {
    if let Some(d) = device {
        let ok = d == "cpu"
            || d == "cuda"
            || d.strip_prefix("cuda:")
                .is_some_and(|n| n.parse::<usize>().is_ok());
        if !ok {
            return Err(InvalidSetting {
                key: "model.device",
                value: d.into(),
                expected: "cpu, cuda or cuda:N",
            });
        }
    }
    if let Some(k) = dtype {
        if !["f32", "float32", "bf16", "bfloat16"].contains(&k) {
            return Err(InvalidSetting {
                key: "model.dtype",
                value: k.into(),
                expected: "f32 or bf16",
            });
        }
    }
    Ok(())
}

/// Every task kind in the data must have at least one of its reward-config tools
/// (`reward.task_tools`) in the tool registry: otherwise the right-tool reward (stage 1) and
/// the tool-success reward (stage 2) can never be earned for it.
pub fn check_tools_for_tasks(
    reward: &RewardConfig,
    tools: &ToolRegistry,
    samples: &[Sample],
    tools_origin: &str,
) -> Result<(), TrainError> {
    let names = tools.names();
    if names.is_empty() {
        return Err(TrainError::NoTools {
            origin: tools_origin.to_string(),
        });
    }
    let mut bad = Vec::new();
    for kind in [TaskKind::Zoom, TaskKind::Document, TaskKind::Instruction] {
        let count = samples.iter().filter(|s| s.task == kind).count();
        if count == 0 {
            continue;
        }
        if !names.iter().any(|n| reward.task_tools.is_right_tool(kind, n)) {
            bad.push(format!(
                "{count} {} task(s) need one of [{}] (reward.task_tools), but {tools_origin} has only [{}]",
                kind_name(kind),
                reward.task_tools.for_task(kind).join(", "),
                names.join(", ")
            ));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(TrainError::ToolsMissingForTasks { problems: bad })
    }
}

fn kind_name(k: TaskKind) -> &'static str {
    match k {
        TaskKind::Zoom => "zoom",
        TaskKind::Document => "document",
        TaskKind::Instruction => "instruction",
    }
}

/// The whole dataset read from `origin` (images decoded, confined to its folder), then the
/// tools against its task kinds.
pub fn check_dataset(
    cfg: &TrainConfig,
    samples: &[Sample],
    origin: &Path,
    tools: &ToolRegistry,
    tools_origin: &str,
) -> Result<(), TrainError> {
    if samples.is_empty() {
        return Err(TrainError::NoSamples {
            path: origin.to_path_buf(),
        });
    }
    let mut check = DatasetCheck::for_file(origin);
    check.extra_roots = cfg.data.formats.data_roots(origin);
    check.images = ImageCheck::Decode;
    validate_samples(samples, &check)?;
    check_tools_for_stage(cfg.stage, &cfg.reward, tools, samples, tools_origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(overrides: &[&str]) -> String {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        TrainConfig::load(None, &o).unwrap_err().to_string()
    }

    #[test]
    fn degenerate_settings_are_refused_with_their_range() {
        for (o, want) in [
            (
                "rollout.sampling.temperature=0",
                "temperature = 0: must be in (0, 100]",
            ),
            (
                "rollout.sampling.temperature=-1",
                "temperature = -1: must be in (0, 100]",
            ),
            (
                "rollout.sampling.temperature=nan",
                "temperature = NaN: must be in (0, 100]",
            ),
            ("rollout.sampling.top_p=0", "top_p = 0: must be in (0, 1]"),
            (
                "rollout.max_response_tokens=0",
                "max_response_tokens = 0: must be in [1, 10000000]",
            ),
            ("optim.grad_clip=-1", "grad_clip = -1: must be in [0, inf)"),
            ("optim.adamw.beta1=2", "beta1 = 2: must be in [0, 1)"),
            ("optim.adamw.eps=0", "eps = 0: must be in (0, 1]"),
            ("optim.lr=0", "optim.lr = 0: must be in (0, inf)"),
            ("model.device=gpu", "model.device = `gpu`"),
        ] {
            let e = err(&[o]);
            assert!(e.contains(want), "{o}: `{want}` not in {e}");
        }
        assert!(TrainConfig::load(None, &[]).is_ok());
    }

    #[test]
    fn a_task_kind_without_its_tool_is_refused() {
        let yaml = "tools:\n- class_name: verl.tools.image_zoom_in_tool.ImageZoomInTool\n  config: {type: native}\n  tool_schema:\n    type: function\n    function:\n      name: zoom_renamed\n      description: zoom\n      parameters: {type: object, properties: {}, required: []}\n";
        let tools = ToolRegistry::from_yaml_str(yaml, Path::new("t.yaml"));
        let tools = match tools {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        let s: Sample = serde_json::from_str(
            r#"{"id": "a", "task": "zoom", "prompt": "q", "images": ["x.png"], "judgment": {"type": "pair", "candidates": 2}, "ground_truth": "1"}"#,
        )
        .unwrap();
        let e = check_tools_for_tasks(&RewardConfig::default(), &tools, &[s], "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1 zoom task(s) need one of [image_zoom_in_tool]") && e.contains("[zoom_renamed]"),
            "{e}"
        );
    }
}
