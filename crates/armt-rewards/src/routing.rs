//! The original's reward routing by `data_source` (doc §3.1, §3.5): each source of ARM-Thinker's
//! RL data is scored by its own reward function. `reward.sources` maps a source to a route name
//! (exact key, else the longest key the source contains, as `"mmif" in data_source` does);
//! samples without a source, or with one no key matches, get armt's stage rewards.
//!
//! | route             | original file                     | table                                              |
//! |-------------------|-----------------------------------|----------------------------------------------------|
//! | `armt`            | —                                 | [`stage2_reward`] with `reward.stage2`             |
//! | `v8`              | `pair_rm_with_tool_reward_v8.py`  | bad format 0; wrong 0.3 / 0.4 with a call; right 1.0 / 1.5 with a success |
//! | `llava_critic_v1` | `llava_critic_reward.py`          | bad format 0; format ok: wrong 0.3, right 1.5       |
//! | `llava_critic_v2` | `llava_critic_reward_v2.py`       | ok+right 1.5, bad+right 1.0, ok+wrong 0.5, bad+wrong 0 |
//! | `accuracy`        | `llava_critic_reward_v3.py`, `val_*` | 1 if right else 0                               |
//! | `mmif`            | `mmif.py`                          | `<answer>Overall Judgment: True|False</answer>` equal to the truth: 1, else 0 |
//!
//! Routing applies to stage 2 only: the original released no stage-1 reward, so stage 1 always
//! uses [`stage1_reward`].

use crate::{
    check_format, observe, stage1_reward, stage2_reward, RewardBreakdown, RewardConfig, RewardError, Verdict,
};
use armt_data::{Sample, Trajectory};
use regex::Regex;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// A reward function selectable by name.
pub type RouteFn = fn(&Trajectory, &Sample, &RewardConfig) -> Result<RewardBreakdown, RewardError>;

/// Every route, by name.
pub const ROUTES: [(&str, RouteFn); 6] = [
    ("armt", stage2_reward),
    ("v8", v8_reward),
    ("llava_critic_v1", llava_critic_v1_reward),
    ("llava_critic_v2", llava_critic_v2_reward),
    ("accuracy", accuracy_reward),
    ("mmif", mmif_reward),
];

pub fn route_by_name(name: &str) -> Option<RouteFn> {
    ROUTES.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The original's routing, with its training script's settings (`REWARD_MODEL_VERSION=v8`,
/// `LC_REWARD_VERSION=v2`).
pub fn default_sources() -> BTreeMap<String, String> {
    [
        ("deepeyes_crop", "v8"),
        ("llava_critic", "llava_critic_v2"),
        ("mp_docvqa", "v8"),
        ("mmif", "mmif"),
        ("val_deepeyes_crop", "accuracy"),
        ("val_llava_critic", "accuracy"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The route name `source` takes under `sources`.
pub fn route_for<'a>(sources: &'a BTreeMap<String, String>, source: &str) -> Option<&'a str> {
    if let Some(r) = sources.get(source) {
        return Some(r);
    }
    sources
        .iter()
        .filter(|(k, _)| source.contains(k.as_str()))
        .max_by_key(|(k, _)| k.len())
        .map(|(_, r)| r.as_str())
}

/// The reward of a trajectory at `stage`: stage 1 → [`stage1_reward`]; stage 2 → the route of the
/// sample's source when `reward.sources` has one, else [`stage2_reward`]; 0 for a rollout ended
/// by a malformed tool call.
pub fn routed_reward(
    stage: u8,
    traj: &Trajectory,
    sample: &Sample,
    cfg: &RewardConfig,
) -> Result<RewardBreakdown, RewardError> {
    // A rollout ended by a malformed tool call (`rollout.end_on_malformed_call`) earns nothing,
    // whatever the stage or route: ARM-Thinker's last turn then holds `<tool_call>`, which fails
    // its format check, and every route scores a failed format 0.
    if traj.stop_reason == armt_data::StopReason::MalformedToolCall {
        return breakdown(traj, sample, cfg, |_, _, _, _| 0.0);
    }
    if stage == 1 {
        return stage1_reward(traj, sample, cfg);
    }
    let name = sample.source.as_deref().and_then(|s| route_for(&cfg.sources, s));
    match name {
        None => stage2_reward(traj, sample, cfg),
        Some(n) => {
            let f = route_by_name(n)
                .ok_or_else(|| RewardError::Config(format!("reward.sources: unknown route `{n}`")))?;
            f(traj, sample, cfg)
        }
    }
}

/// Checks that every route named in `sources` exists.
pub(crate) fn validate_sources(sources: &BTreeMap<String, String>) -> Result<(), RewardError> {
    for (src, r) in sources {
        if route_by_name(r).is_none() {
            let known: Vec<&str> = ROUTES.iter().map(|(n, _)| *n).collect();
            return Err(RewardError::Config(format!(
                "reward.sources.{src} = `{r}` is not a route (known: {})",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

/// A breakdown with the observed facts filled in and a given total.
fn breakdown(
    traj: &Trajectory,
    sample: &Sample,
    cfg: &RewardConfig,
    total: impl FnOnce(bool, Option<bool>, usize, usize) -> f32,
) -> Result<RewardBreakdown, RewardError> {
    let o = observe(traj, sample, &cfg.task_tools)?;
    let format_ok = o.format.is_ok();
    let t = total(format_ok, o.correct, o.tool_calls, o.successful_right);
    Ok(RewardBreakdown {
        total: t,
        format_ok,
        correct: o.correct,
        tool_calls: o.tool_calls,
        right_tool_calls: o.right_tool_calls,
        successful_tool_calls: o.successful_right,
        ..Default::default()
    })
}

/// `pair_rm_with_tool_reward_v8` (and `mp_docvqa_reward_v1`, the same table): a successful call
/// is one the task's tool answered with its success text (zoom-in image, retrieved pages).
pub fn v8_reward(
    traj: &Trajectory,
    sample: &Sample,
    cfg: &RewardConfig,
) -> Result<RewardBreakdown, RewardError> {
    let mut r = breakdown(traj, sample, cfg, |ok, correct, calls, succ| {
        match (ok, correct == Some(true)) {
            (false, _) => 0.0,
            (true, false) if calls > 0 => 0.4,
            (true, false) => 0.3,
            (true, true) if succ > 0 => 1.5,
            (true, true) => 1.0,
        }
    })?;
    if r.format_ok {
        r.format = 0.3;
        if r.correct == Some(true) {
            r.accuracy = 0.7;
            r.tool_success = if r.successful_tool_calls > 0 { 0.5 } else { 0.0 };
        } else if r.tool_calls > 0 {
            r.tool_try = 0.1;
        }
    }
    Ok(r)
}

pub fn llava_critic_v1_reward(
    traj: &Trajectory,
    sample: &Sample,
    cfg: &RewardConfig,
) -> Result<RewardBreakdown, RewardError> {
    breakdown(traj, sample, cfg, |ok, correct, _, _| {
        match (ok, correct == Some(true)) {
            (false, _) => 0.0,
            (true, false) => 0.3,
            (true, true) => 1.5,
        }
    })
}

/// v2 reads the verdict from `<answer>` when the format holds, else from the whole last turn,
/// which is what [`observe`] does.
pub fn llava_critic_v2_reward(
    traj: &Trajectory,
    sample: &Sample,
    cfg: &RewardConfig,
) -> Result<RewardBreakdown, RewardError> {
    breakdown(traj, sample, cfg, |ok, correct, _, _| {
        match (ok, correct == Some(true)) {
            (true, true) => 1.5,
            (false, true) => 1.0,
            (true, false) => 0.5,
            (false, false) => 0.0,
        }
    })
}

pub fn accuracy_reward(
    traj: &Trajectory,
    sample: &Sample,
    cfg: &RewardConfig,
) -> Result<RewardBreakdown, RewardError> {
    breakdown(
        traj,
        sample,
        cfg,
        |_, correct, _, _| if correct == Some(true) { 1.0 } else { 0.0 },
    )
}

fn mmif_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?i)<answer>Overall Judgment:\s*(True|False)</answer>").unwrap())
}

/// `mmif.py`: the first `<answer>Overall Judgment: True|False</answer>` of the last turn against
/// the truth, no format or tool terms.
pub fn mmif_reward(
    traj: &Trajectory,
    sample: &Sample,
    cfg: &RewardConfig,
) -> Result<RewardBreakdown, RewardError> {
    let expected = crate::expected_verdict(sample)?;
    let said = mmif_re()
        .captures(&traj.final_text)
        .map(|c| Verdict::Truth(c[1].eq_ignore_ascii_case("true")));
    let mut r = breakdown(traj, sample, cfg, |_, _, _, _| 0.0)?;
    r.correct = said.map(|v| v == expected);
    r.total = if r.correct == Some(true) { 1.0 } else { 0.0 };
    r.format_ok = check_format(&traj.final_text).is_ok();
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use armt_data::{Judgment, StopReason, TaskKind, ToolCallRecord, Turn};

    fn sample(source: &str, judgment: Judgment, gt: &str) -> Sample {
        Sample {
            id: "s".into(),
            task: TaskKind::Zoom,
            prompt: "q".into(),
            images: vec![],
            document: None,
            response: None,
            judgment,
            ground_truth: gt.into(),
            source: Some(source.into()),
        }
    }

    /// `calls` zoom calls (successful or not), then `final_text`.
    fn traj(calls: &[bool], final_text: &str) -> Trajectory {
        let mut turns: Vec<Turn> = calls
            .iter()
            .map(|&ok| Turn {
                assistant_text: "<tool_call>{}</tool_call>".into(),
                tool_call: Some(ToolCallRecord {
                    name: "image_zoom_in_tool".into(),
                    arguments: serde_json::json!({}),
                    result_text: if ok {
                        "This is the zoom-in image".into()
                    } else {
                        "Error: x".into()
                    },
                    result_images: vec![],
                    success: ok,
                    reward: 0.0,
                    duration_ms: 0.0,
                }),
                tool_error: None,
            })
            .collect();
        turns.push(Turn {
            assistant_text: final_text.into(),
            tool_call: None,
            tool_error: None,
        });
        Trajectory {
            sample_id: "s".into(),
            group_index: 0,
            task: TaskKind::Zoom,
            token_ids: vec![1, 2],
            prompt_len: 1,
            loss_mask: vec![1],
            logprobs: vec![0.0],
            turns,
            images: vec![],
            final_text: final_text.into(),
            stop_reason: StopReason::Answered,
            reward: None,
        }
    }

    const RIGHT: &str = "<think>t</think><answer>Overall Judgment: Answer 1 is better</answer>";
    const WRONG: &str = "<think>t</think><answer>Overall Judgment: Answer 2 is better</answer>";
    const BAD_RIGHT: &str = "Answer 1 is better";

    fn total(source: &str, calls: &[bool], text: &str) -> f32 {
        let cfg = RewardConfig::default();
        routed_reward(
            2,
            &traj(calls, text),
            &sample(source, Judgment::Pair { candidates: 2 }, "1"),
            &cfg,
        )
        .unwrap()
        .total
    }

    #[test]
    fn a_rollout_ended_by_a_malformed_call_earns_nothing() {
        let cfg = RewardConfig {
            stage1: crate::Stage1Config {
                bonus_requires_format: false,
                ..Default::default()
            },
            ..Default::default()
        };
        // A successful zoom earlier and a right verdict in the text: still 0, at both stages and
        // under every route (the same rollout ended normally earns something at each).
        let mut t = traj(&[true], RIGHT);
        t.stop_reason = StopReason::MalformedToolCall;
        for source in ["deepeyes_crop", "llava_critic", "none"] {
            let s = sample(source, Judgment::Pair { candidates: 2 }, "1");
            for stage in [1, 2] {
                assert_eq!(
                    routed_reward(stage, &t, &s, &cfg).unwrap().total,
                    0.0,
                    "{source} stage {stage}"
                );
                assert!(
                    routed_reward(stage, &traj(&[true], RIGHT), &s, &cfg)
                        .unwrap()
                        .total
                        > 0.0
                );
            }
        }
    }

    #[test]
    fn v8_table() {
        // pair_rm_with_tool_reward_v8: 0 / 0.3 / 0.4 / 1.0 / 1.5.
        assert_eq!(total("deepeyes_crop", &[true], BAD_RIGHT), 0.0);
        assert_eq!(total("deepeyes_crop", &[], WRONG), 0.3);
        assert_eq!(total("deepeyes_crop", &[false], WRONG), 0.4);
        assert_eq!(total("deepeyes_crop", &[false], RIGHT), 1.0);
        assert_eq!(total("deepeyes_crop", &[true], RIGHT), 1.5);
        assert_eq!(total("mp_docvqa", &[true], RIGHT), 1.5);
    }

    #[test]
    fn llava_critic_tables_and_accuracy() {
        // Default LC version v2: ok+right 1.5, bad+right 1.0, ok+wrong 0.5, bad+wrong 0.
        assert_eq!(total("llava_critic", &[], RIGHT), 1.5);
        assert_eq!(total("llava_critic", &[], BAD_RIGHT), 1.0);
        assert_eq!(total("llava_critic", &[], WRONG), 0.5);
        assert_eq!(total("llava_critic", &[], "no verdict"), 0.0);
        assert_eq!(total("val_llava_critic", &[true], RIGHT), 1.0);
        assert_eq!(total("val_llava_critic", &[true], WRONG), 0.0);
        let mut cfg = RewardConfig::default();
        cfg.sources
            .insert("llava_critic".into(), "llava_critic_v1".into());
        let r = |t| {
            routed_reward(
                2,
                &traj(&[], t),
                &sample("llava_critic", Judgment::Pair { candidates: 2 }, "1"),
                &cfg,
            )
        };
        assert_eq!(
            (
                r(RIGHT).unwrap().total,
                r(WRONG).unwrap().total,
                r(BAD_RIGHT).unwrap().total
            ),
            (1.5, 0.3, 0.0)
        );
    }

    #[test]
    fn mmif_and_matching() {
        let cfg = RewardConfig::default();
        let s = sample("mmif_v3_train", Judgment::Single, "false");
        let r = |t| routed_reward(2, &traj(&[], t), &s, &cfg).unwrap().total;
        assert_eq!(r("<answer>Overall Judgment: False</answer>"), 1.0);
        // mmif.py's regex has no room for a trailing period or think tags it does not need.
        assert_eq!(r("<answer>Overall Judgment: False.</answer>"), 0.0);
        assert_eq!(r("<answer>Overall Judgment: True</answer>"), 0.0);
        assert_eq!(route_for(&cfg.sources, "val_deepeyes_crop"), Some("accuracy"));
        assert_eq!(route_for(&cfg.sources, "unknown"), None);
        // No source: armt's stage-2 reward; stage 1 always the tool reward.
        let mut plain = sample("x", Judgment::Pair { candidates: 2 }, "1");
        plain.source = None;
        let t = traj(&[true], RIGHT);
        assert_eq!(
            routed_reward(2, &t, &plain, &cfg).unwrap(),
            stage2_reward(&t, &plain, &cfg).unwrap()
        );
        let s1 = sample("deepeyes_crop", Judgment::Pair { candidates: 2 }, "1");
        assert_eq!(
            routed_reward(1, &t, &s1, &cfg).unwrap(),
            stage1_reward(&t, &s1, &cfg).unwrap()
        );
        let mut bad = cfg.clone();
        bad.sources.insert("x".into(), "nope".into());
        assert!(bad.validate().unwrap_err().to_string().contains("nope"));
    }
}
