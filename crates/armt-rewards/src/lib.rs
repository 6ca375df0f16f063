//! ARM-Thinker's rule rewards, as pure functions of a trajectory record.
//!
//! * [`check_format`]: the last assistant turn must be exactly `<think>…</think><answer>…</answer>`
//!   with no `<tool_call>` (the paper's strict regex, `pair_rm_with_tool_reward_v8`).
//! * [`parse_verdict`]: `Overall Judgment: Answer X is better` for N-way pairs, `True`/`False` for a
//!   single response.
//! * [`stage1_reward`]: tool selection. `R_tool = R_f + R_try·1[right tool called]`.
//! * [`stage2_reward`]: accuracy and tool efficiency, scored as the paper's code scores it:
//!
//!   | outcome                                           | reward | decomposition        |
//!   |---------------------------------------------------|--------|----------------------|
//!   | bad format                                        | 0.0    | —                    |
//!   | wrong, no tool call                               | 0.3    | R_f                  |
//!   | wrong, ≥1 tool call                               | 0.4    | R_f + R_try          |
//!   | right, no successful tool result                  | 1.0    | R_f + R_a            |
//!   | right, ≥1 successful tool result                  | 1.5    | R_f + R_a + R_succ   |
//!
//!   with R_f = 0.3, R_try = 0.1, R_a = 0.7, R_succ = 0.5 (the decomposition is inferred from the
//!   released code, which hard-codes the five totals). An optional per-call cost for calls beyond
//!   what the task kind needs (off by default, as in the paper) rewards efficiency.
//!
//! Every value is configurable through [`RewardConfig`] (serde, unknown fields rejected).

use armt_data::{Judgment, Sample, TaskKind, Trajectory};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

pub mod routing;
pub use routing::{routed_reward, ROUTES};

#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    /// A setting outside what it accepts (the message names the key and its value).
    #[error("invalid reward config: {0}")]
    Config(String),
    /// The config's JSON does not parse or has unknown fields.
    #[error("invalid reward config: {0}")]
    Json(#[source] serde_json::Error),
    #[error("trajectory is for sample `{traj}` but was scored against sample `{sample}`")]
    SampleMismatch { traj: String, sample: String },
    #[error("sample `{id}`: ground truth `{gt}` does not fit its judgment {judgment:?}")]
    GroundTruth {
        id: String,
        gt: String,
        judgment: Judgment,
    },
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// Which tool names count as "the right tool" for each task kind. A name ending in `*` matches
/// every tool whose name starts with the part before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskTools {
    pub zoom: Vec<String>,
    pub document: Vec<String>,
    pub instruction: Vec<String>,
}

/// The 19 validators of the paper's `mmif_tool_config.yaml`.
pub const INSTRUCTION_VALIDATORS: [&str; 19] = [
    "check_whether_response_paragraph_number_in_range",
    "check_whether_response_sentence_number_in_range",
    "check_whether_each_paragraph_sentence_number_in_range",
    "check_whether_each_paragraph_sentence_number_in_range_list",
    "check_whether_response_word_count_in_range",
    "check_whether_each_paragraph_word_count_in_range",
    "check_whether_whole_response_not_contain_certain_substrings",
    "check_whether_whole_response_not_contain_certain_substring",
    "check_whether_each_sentence_begin_with_certain_substring",
    "check_whether_each_sentence_end_with_certain_substring",
    "check_whether_each_paragraph_begin_with_certain_substring",
    "check_whether_each_paragraph_end_with_certain_substring",
    "check_whether_whole_response_begin_with_certain_substring",
    "check_whether_whole_response_end_with_certain_substring",
    "check_whether_each_keyword_in_list_mentioned_in_range",
    "check_whether_total_keyword_in_list_mentioned_in_range",
    "check_percentage_number_precision_in_response",
    "check_number_precision_in_response",
    "check_whether_has_no_arabic_number_in_response",
];

impl Default for TaskTools {
    fn default() -> Self {
        Self {
            zoom: vec!["image_zoom_in_tool".into()],
            document: vec![
                "doc_page_retrieval_by_query".into(),
                "doc_page_retrieval_by_index".into(),
            ],
            instruction: INSTRUCTION_VALIDATORS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl TaskTools {
    pub fn for_task(&self, task: TaskKind) -> &[String] {
        match task {
            TaskKind::Zoom => &self.zoom,
            TaskKind::Document => &self.document,
            TaskKind::Instruction => &self.instruction,
        }
    }

    /// True when `tool` is one of the task kind's tools.
    pub fn is_right_tool(&self, task: TaskKind, tool: &str) -> bool {
        self.for_task(task).iter().any(|pat| match pat.strip_suffix('*') {
            Some(prefix) => tool.starts_with(prefix),
            None => pat == tool,
        })
    }
}

/// How many tool calls each task kind needs before the per-call cost starts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallBudget {
    pub zoom: usize,
    pub document: usize,
    pub instruction: usize,
}

impl Default for CallBudget {
    fn default() -> Self {
        // One zoom, one retrieval, one validator answer the typical question; more is exploration.
        Self {
            zoom: 1,
            document: 1,
            instruction: 1,
        }
    }
}

impl CallBudget {
    pub fn for_task(&self, task: TaskKind) -> usize {
        match task {
            TaskKind::Zoom => self.zoom,
            TaskKind::Document => self.document,
            TaskKind::Instruction => self.instruction,
        }
    }
}

/// Stage 1 (tool selection): `R_tool = R_f + R_try·1[right tool called]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Stage1Config {
    /// R_f: paid when the final turn has the required format.
    pub format: f32,
    /// R_try: paid when at least one call went to one of the task kind's tools.
    pub right_tool: f32,
    /// Paid (instead of `right_tool`) when the only calls were to other tools. The paper's stage-1
    /// formula rewards any attempt; set this to `right_tool` to reproduce it.
    pub other_tool: f32,
    /// Only pay the tool bonus when the format is right too, so that a policy cannot collect it
    /// by calling a tool and never answering.
    pub bonus_requires_format: bool,
}

impl Default for Stage1Config {
    fn default() -> Self {
        Self {
            format: 0.3,
            right_tool: 0.1,
            other_tool: 0.0,
            bonus_requires_format: true,
        }
    }
}

/// Stage 2 (accuracy + efficiency), the paper's v8 table plus an optional call cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Stage2Config {
    /// R_f: right format (bad format scores 0 in total, whatever else happened).
    pub format: f32,
    /// R_try: wrong verdict, but at least one tool call was made.
    pub tool_try: f32,
    /// R_a: right verdict.
    pub accuracy: f32,
    /// R_succ: right verdict and at least one successful tool result.
    pub tool_success: f32,
    /// Count a successful result only from one of the task kind's tools (the paper's code counts
    /// the zoom tool's success text for zoom data and the retrieval tools' for documents).
    pub success_needs_task_tool: bool,
    /// Subtracted per tool call beyond `free_calls` for the task kind (0 = the paper).
    pub call_cost: f32,
    pub free_calls: CallBudget,
}

impl Default for Stage2Config {
    fn default() -> Self {
        Self {
            format: 0.3,
            tool_try: 0.1,
            accuracy: 0.7,
            tool_success: 0.5,
            success_needs_task_tool: true,
            call_cost: 0.0,
            free_calls: CallBudget::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardConfig {
    pub stage1: Stage1Config,
    pub stage2: Stage2Config,
    pub task_tools: TaskTools,
    /// `data_source` → stage-2 reward route (see [`routing`]); only samples with a source use it.
    #[serde(default = "routing::default_sources")]
    pub sources: std::collections::BTreeMap<String, String>,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            stage1: Stage1Config::default(),
            stage2: Stage2Config::default(),
            task_tools: TaskTools::default(),
            sources: routing::default_sources(),
        }
    }
}

impl RewardConfig {
    /// Parses a JSON config; missing fields take the paper's values, unknown fields are errors.
    pub fn from_json(text: &str) -> Result<Self, RewardError> {
        let cfg: Self = serde_json::from_str(text).map_err(RewardError::Json)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), RewardError> {
        let s1 = &self.stage1;
        let s2 = &self.stage2;
        let values = [
            ("stage1.format", s1.format),
            ("stage1.right_tool", s1.right_tool),
            ("stage1.other_tool", s1.other_tool),
            ("stage2.format", s2.format),
            ("stage2.tool_try", s2.tool_try),
            ("stage2.accuracy", s2.accuracy),
            ("stage2.tool_success", s2.tool_success),
            ("stage2.call_cost", s2.call_cost),
        ];
        for (name, v) in values {
            if !v.is_finite() {
                return Err(RewardError::Config(format!("{name} = {v} is not finite")));
            }
        }
        if s2.call_cost < 0.0 {
            return Err(RewardError::Config(format!(
                "stage2.call_cost = {} must be >= 0 (it is subtracted)",
                s2.call_cost
            )));
        }
        routing::validate_sources(&self.sources)?;
        for task in [TaskKind::Zoom, TaskKind::Document, TaskKind::Instruction] {
            if self.task_tools.for_task(task).is_empty() {
                return Err(RewardError::Config(format!(
                    "task_tools has no tool for {task:?}"
                )));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Format and verdict parsing
// ---------------------------------------------------------------------------------------------

/// Why a final turn failed the format check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatProblem {
    /// Not exactly `<think>…</think><answer>…</answer>` (surrounding whitespace allowed).
    Shape,
    /// The final turn still contains `<tool_call>` or `</tool_call>`.
    ToolCallInFinalTurn,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatCheck {
    Ok { think: String, answer: String },
    Bad(FormatProblem),
}

impl FormatCheck {
    pub fn is_ok(&self) -> bool {
        matches!(self, FormatCheck::Ok { .. })
    }

    pub fn answer(&self) -> Option<&str> {
        match self {
            FormatCheck::Ok { answer, .. } => Some(answer),
            FormatCheck::Bad(_) => None,
        }
    }
}

fn strict_format_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?is)\A\s*<think>\s*(.*?)\s*</think>\s*<answer>\s*(.*?)\s*</answer>\s*\z").unwrap()
    })
}

/// Checks the last assistant turn: strict think/answer shape, no tool call.
pub fn check_format(final_text: &str) -> FormatCheck {
    // Checked first: a final turn that calls a tool is not an answer, whatever its shape.
    let lower = final_text.to_lowercase();
    if lower.contains("<tool_call>") || lower.contains("</tool_call>") {
        return FormatCheck::Bad(FormatProblem::ToolCallInFinalTurn);
    }
    match strict_format_re().captures(final_text) {
        Some(c) => FormatCheck::Ok {
            think: c[1].to_string(),
            answer: c[2].to_string(),
        },
        None => FormatCheck::Bad(FormatProblem::Shape),
    }
}

/// A parsed verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// `Answer X is better`, X in 1..=candidates.
    Candidate(usize),
    /// `Overall Judgment: True/False`.
    Truth(bool),
}

fn last_answer_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?is)<answer>(.*?)</answer>").unwrap())
}

fn pair_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?i)Answer\s*(\d+)\s*is\s*(?:the\s*)?(?:slightly\s*)?(?:better|preferred|correct)")
            .unwrap()
    })
}

fn single_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?i)Overall\s*Judgment\s*:\s*\**\s*(true|false)\b").unwrap())
}

/// Reads the verdict from `text`: from its last `<answer>…</answer>` block when it has one,
/// otherwise from the whole text. Pairs take the last `Answer X is better|preferred|correct`
/// with X a candidate number; a bare candidate number as the whole answer also counts (the
/// paper's v8 compares the raw answer with the ground truth when the phrase is missing).
/// Single judgments take the last `Overall Judgment: True|False`, or a bare `True`/`False`.
pub fn parse_verdict(text: &str, judgment: Judgment) -> Option<Verdict> {
    let body = last_answer_re()
        .captures_iter(text)
        .last()
        .map(|c| c.get(1).map_or("", |m| m.as_str()))
        .unwrap_or(text);
    let bare = body.trim().trim_end_matches('.').trim();
    match judgment {
        Judgment::Pair { candidates } => {
            let in_range = |k: usize| (1..=candidates).contains(&k);
            let phrased = pair_re()
                .captures_iter(body)
                .filter_map(|c| c[1].parse::<usize>().ok())
                .filter(|&k| in_range(k))
                .last();
            phrased
                .or_else(|| bare.parse::<usize>().ok().filter(|&k| in_range(k)))
                .map(Verdict::Candidate)
        }
        Judgment::Single => {
            let phrased = single_re()
                .captures_iter(body)
                .last()
                .map(|c| c[1].eq_ignore_ascii_case("true"));
            let bare_bool = || match bare.to_ascii_lowercase().as_str() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            };
            phrased.or_else(bare_bool).map(Verdict::Truth)
        }
    }
}

/// The right verdict of a sample, from its ground truth ("1", "2", … or "true"/"false").
pub fn expected_verdict(sample: &Sample) -> Result<Verdict, RewardError> {
    let gt = sample.ground_truth.trim().to_lowercase();
    let bad = || RewardError::GroundTruth {
        id: sample.id.clone(),
        gt: sample.ground_truth.clone(),
        judgment: sample.judgment,
    };
    match sample.judgment {
        Judgment::Pair { candidates } => gt
            .parse::<usize>()
            .ok()
            .filter(|k| (1..=candidates).contains(k))
            .map(Verdict::Candidate)
            .ok_or_else(bad),
        Judgment::Single => match gt.as_str() {
            "true" => Ok(Verdict::Truth(true)),
            "false" => Ok(Verdict::Truth(false)),
            _ => Err(bad()),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Rewards
// ---------------------------------------------------------------------------------------------

/// A reward and the parts it is made of, for logging. `total` is the sum of the positive parts
/// minus `call_cost`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RewardBreakdown {
    pub total: f32,
    /// R_f.
    pub format: f32,
    /// R_a.
    pub accuracy: f32,
    /// R_try (stage 2: wrong but tried a tool).
    pub tool_try: f32,
    /// R_succ (stage 2: right with a successful tool result).
    pub tool_success: f32,
    /// Stage 1: the tool-selection bonus.
    pub tool_bonus: f32,
    /// The efficiency cost that was subtracted (>= 0).
    pub call_cost: f32,
    pub format_ok: bool,
    /// Whether the verdict was right; None when no verdict could be read from the final turn.
    pub correct: Option<bool>,
    /// Tool calls that reached the environment (executed, or rejected with an error text).
    pub tool_calls: usize,
    /// Executed calls to one of the task kind's tools.
    pub right_tool_calls: usize,
    /// Calls whose result counts as a success for R_succ.
    pub successful_tool_calls: usize,
}

impl RewardBreakdown {
    /// Named parts, for per-component reward curves.
    pub fn parts(&self) -> [(&'static str, f32); 7] {
        [
            ("total", self.total),
            ("format", self.format),
            ("accuracy", self.accuracy),
            ("tool_try", self.tool_try),
            ("tool_success", self.tool_success),
            ("tool_bonus", self.tool_bonus),
            ("call_cost", self.call_cost),
        ]
    }
}

/// What the rewards need to know about a trajectory's calls and verdict.
struct Observed {
    format: FormatCheck,
    correct: Option<bool>,
    tool_calls: usize,
    right_tool_calls: usize,
    successful_any: usize,
    successful_right: usize,
}

fn observe(traj: &Trajectory, sample: &Sample, tools: &TaskTools) -> Result<Observed, RewardError> {
    if traj.sample_id != sample.id {
        return Err(RewardError::SampleMismatch {
            traj: traj.sample_id.clone(),
            sample: sample.id.clone(),
        });
    }
    let expected = expected_verdict(sample)?;
    let format = check_format(&traj.final_text);
    // Judge the answer block when the format holds, else the whole turn (for the accuracy metric).
    let verdict = match format.answer() {
        Some(a) => parse_verdict(a, sample.judgment),
        None => parse_verdict(&traj.final_text, sample.judgment),
    };
    // A malformed `<tool_call>` also got a tool response back (its error), which is what the
    // paper's code counts as an attempt (`<tool_response>` occurrences).
    let tool_calls = traj
        .turns
        .iter()
        .filter(|t| t.tool_call.is_some() || t.tool_error.is_some())
        .count();
    let right = |name: &str| tools.is_right_tool(sample.task, name);
    Ok(Observed {
        format,
        correct: verdict.map(|v| v == expected),
        tool_calls,
        right_tool_calls: traj.tool_calls().filter(|c| right(&c.name)).count(),
        successful_any: traj.tool_calls().filter(|c| c.success).count(),
        successful_right: traj.tool_calls().filter(|c| c.success && right(&c.name)).count(),
    })
}

/// Stage 1: `R_f·1[format] + bonus`, the bonus `right_tool` when a task-kind tool was called
/// (`other_tool` when only other tools were).
pub fn stage1_reward(
    traj: &Trajectory,
    sample: &Sample,
    cfg: &RewardConfig,
) -> Result<RewardBreakdown, RewardError> {
    let o = observe(traj, sample, &cfg.task_tools)?;
    let c = &cfg.stage1;
    let format_ok = o.format.is_ok();
    let format = if format_ok { c.format } else { 0.0 };
    let bonus_allowed = format_ok || !c.bonus_requires_format;
    let tool_bonus = match () {
        _ if !bonus_allowed => 0.0,
        _ if o.right_tool_calls > 0 => c.right_tool,
        // Any other attempt, malformed ones included (the paper's R_try counts attempts).
        _ if o.tool_calls > 0 => c.other_tool,
        _ => 0.0,
    };
    Ok(RewardBreakdown {
        total: format + tool_bonus,
        format,
        tool_bonus,
        format_ok,
        correct: o.correct,
        tool_calls: o.tool_calls,
        right_tool_calls: o.right_tool_calls,
        successful_tool_calls: o.successful_right,
        ..Default::default()
    })
}

/// Stage 2, the paper's v8 table (see the crate docs) minus
/// `call_cost·max(0, tool_calls − free_calls[task])` when the format holds.
pub fn stage2_reward(
    traj: &Trajectory,
    sample: &Sample,
    cfg: &RewardConfig,
) -> Result<RewardBreakdown, RewardError> {
    let o = observe(traj, sample, &cfg.task_tools)?;
    let c = &cfg.stage2;
    let successful = if c.success_needs_task_tool {
        o.successful_right
    } else {
        o.successful_any
    };
    let mut r = RewardBreakdown {
        format_ok: o.format.is_ok(),
        correct: o.correct,
        tool_calls: o.tool_calls,
        right_tool_calls: o.right_tool_calls,
        successful_tool_calls: successful,
        ..Default::default()
    };
    if !r.format_ok {
        // Bad format scores 0 outright: no cost either, since nothing lies below it in the table.
        return Ok(r);
    }
    r.format = c.format;
    // An unreadable verdict is a wrong one (v8 compares the raw answer, which then cannot match).
    if o.correct == Some(true) {
        r.accuracy = c.accuracy;
        if successful > 0 {
            r.tool_success = c.tool_success;
        }
    } else if o.tool_calls > 0 {
        r.tool_try = c.tool_try;
    }
    let extra = o.tool_calls.saturating_sub(c.free_calls.for_task(sample.task));
    r.call_cost = c.call_cost * extra as f32;
    r.total = r.format + r.accuracy + r.tool_try + r.tool_success - r.call_cost;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use armt_data::{StopReason, ToolCallRecord, Turn};

    const PAIR: Judgment = Judgment::Pair { candidates: 2 };

    fn sample(task: TaskKind, judgment: Judgment, gt: &str) -> Sample {
        Sample {
            id: "s1".into(),
            task,
            prompt: "Which answer is better?".into(),
            images: vec![],
            document: None,
            response: None,
            judgment,
            ground_truth: gt.into(),
            source: None,
        }
    }

    fn call(name: &str, success: bool) -> ToolCallRecord {
        ToolCallRecord {
            name: name.into(),
            arguments: serde_json::json!({}),
            result_text: if success {
                "This is the zoom-in image `observation_1`".into()
            } else {
                "Error: bad bbox".into()
            },
            result_images: vec![],
            success,
            reward: if success { 0.0 } else { -0.05 },
            duration_ms: 1.0,
        }
    }

    /// A trajectory with one tool turn per entry of `calls`, then `final_text` as the answer turn.
    fn traj(task: TaskKind, calls: Vec<ToolCallRecord>, final_text: &str) -> Trajectory {
        let mut turns: Vec<Turn> = calls
            .into_iter()
            .map(|c| Turn {
                assistant_text: "<think>look</think><tool_call>{}</tool_call>".into(),
                tool_call: Some(c),
                tool_error: None,
            })
            .collect();
        turns.push(Turn {
            assistant_text: final_text.into(),
            tool_call: None,
            tool_error: None,
        });
        Trajectory {
            sample_id: "s1".into(),
            group_index: 0,
            task,
            token_ids: vec![1, 2, 3],
            prompt_len: 1,
            loss_mask: vec![1, 1],
            logprobs: vec![-0.1, -0.2],
            turns,
            images: vec![],
            final_text: final_text.into(),
            stop_reason: StopReason::Answered,
            reward: None,
        }
    }

    const SAYS_2: &str = "<think>Answer 2 names the colour.</think>\
        <answer>Overall Judgment: Answer 2 is better (X must be either 1 or 2). </answer>";
    const SAYS_1: &str = "<think>hm</think>\n<answer>Overall Judgment: Answer 1 is better</answer>\n";

    #[test]
    fn format_accepts_the_strict_shape_only() {
        let ok = check_format("  <think> a\nb </think>\n<answer> Overall Judgment: True </answer>\n");
        assert_eq!(
            ok,
            FormatCheck::Ok {
                think: "a\nb".into(),
                answer: "Overall Judgment: True".into()
            }
        );
        assert_eq!(
            check_format("<THINK>x</THINK><ANSWER>y</ANSWER>").answer(),
            Some("y")
        );
        assert_eq!(
            check_format("<answer>y</answer>"),
            FormatCheck::Bad(FormatProblem::Shape)
        );
        assert_eq!(
            check_format("<think>x</think>"),
            FormatCheck::Bad(FormatProblem::Shape)
        );
        assert_eq!(
            check_format("Sure! <think>x</think><answer>y</answer>"),
            FormatCheck::Bad(FormatProblem::Shape)
        );
        assert_eq!(
            check_format("<think>x</think><answer>y</answer> trailing"),
            FormatCheck::Bad(FormatProblem::Shape)
        );
        assert_eq!(
            check_format("<think>x</think><answer>y"),
            FormatCheck::Bad(FormatProblem::Shape)
        );
        assert_eq!(
            check_format("<think>x <tool_call>{}</tool_call></think><answer>y</answer>"),
            FormatCheck::Bad(FormatProblem::ToolCallInFinalTurn)
        );
    }

    #[test]
    fn pair_verdicts_follow_the_papers_phrase() {
        let p = |t: &str| parse_verdict(t, PAIR);
        assert_eq!(p(SAYS_2), Some(Verdict::Candidate(2)));
        assert_eq!(
            p("<answer>answer 1 is the slightly preferred one</answer>"),
            Some(Verdict::Candidate(1))
        );
        assert_eq!(
            p("<answer>Answer1 is correct</answer>"),
            Some(Verdict::Candidate(1))
        );
        // The last phrase wins, and only the last answer block is read.
        assert_eq!(
            p("<answer>Answer 1 is better... no, Answer 2 is better</answer>"),
            Some(Verdict::Candidate(2))
        );
        assert_eq!(
            p("<answer>Answer 2 is better</answer> later <answer>Answer 1 is better</answer>"),
            Some(Verdict::Candidate(1))
        );
        // v8's raw-answer fallback.
        assert_eq!(p("<answer> 2. </answer>"), Some(Verdict::Candidate(2)));
        // Out-of-range candidates and missing verdicts.
        assert_eq!(p("<answer>Answer 3 is better</answer>"), None);
        assert_eq!(p("<answer>Both are fine</answer>"), None);
        assert_eq!(
            parse_verdict(
                "<answer>Answer 3 is better</answer>",
                Judgment::Pair { candidates: 4 }
            ),
            Some(Verdict::Candidate(3))
        );
        // Without an answer block the whole text is read.
        assert_eq!(p("I think Answer 1 is better"), Some(Verdict::Candidate(1)));
    }

    #[test]
    fn single_verdicts_read_true_or_false() {
        let s = |t: &str| parse_verdict(t, Judgment::Single);
        assert_eq!(
            s("<answer>Overall Judgment: True</answer>"),
            Some(Verdict::Truth(true))
        );
        assert_eq!(
            s("<answer>overall judgment:false.</answer>"),
            Some(Verdict::Truth(false))
        );
        assert_eq!(
            s("<answer>Overall Judgment: **False**</answer>"),
            Some(Verdict::Truth(false))
        );
        assert_eq!(s("<answer>TRUE</answer>"), Some(Verdict::Truth(true)));
        assert_eq!(s("<answer>Overall Judgment: Truely not</answer>"), None);
        assert_eq!(s("<answer>Answer 1 is better</answer>"), None);
    }

    #[test]
    fn stage2_reproduces_the_papers_table() {
        let cfg = RewardConfig::default();
        let s = sample(TaskKind::Zoom, PAIR, "2");
        let r2 = |t: Trajectory| stage2_reward(&t, &s, &cfg).unwrap();
        // Bad format: 0, even when right and with a successful zoom.
        let bad = r2(traj(
            TaskKind::Zoom,
            vec![call("image_zoom_in_tool", true)],
            "Answer 2 is better",
        ));
        assert_eq!((bad.total, bad.format_ok, bad.correct), (0.0, false, Some(true)));
        // Wrong, no tool: R_f.
        let r = r2(traj(TaskKind::Zoom, vec![], SAYS_1));
        assert_eq!((r.total, r.format, r.correct), (0.3, 0.3, Some(false)));
        // Wrong with a (failed) tool call: R_f + R_try.
        let r = r2(traj(
            TaskKind::Zoom,
            vec![call("image_zoom_in_tool", false)],
            SAYS_1,
        ));
        assert!((r.total - 0.4).abs() < 1e-6 && r.tool_try == 0.1, "{r:?}");
        // Right without a successful result: R_f + R_a.
        let r = r2(traj(
            TaskKind::Zoom,
            vec![call("image_zoom_in_tool", false)],
            SAYS_2,
        ));
        assert!((r.total - 1.0).abs() < 1e-6 && r.tool_success == 0.0, "{r:?}");
        let r = r2(traj(TaskKind::Zoom, vec![], SAYS_2));
        assert!((r.total - 1.0).abs() < 1e-6, "{r:?}");
        // Right with a successful zoom: R_f + R_a + R_succ.
        let r = r2(traj(
            TaskKind::Zoom,
            vec![
                call("image_zoom_in_tool", false),
                call("image_zoom_in_tool", true),
            ],
            SAYS_2,
        ));
        assert!((r.total - 1.5).abs() < 1e-6, "{r:?}");
        assert_eq!(
            (r.tool_calls, r.right_tool_calls, r.successful_tool_calls),
            (2, 2, 1)
        );
        // An unreadable verdict counts as wrong.
        let r = r2(traj(
            TaskKind::Zoom,
            vec![],
            "<think>x</think><answer>no idea</answer>",
        ));
        assert_eq!((r.total, r.correct), (0.3, None));
    }

    #[test]
    fn stage2_success_is_the_record_flag_of_a_task_tool() {
        let s = sample(TaskKind::Document, Judgment::Single, "false");
        let right = "<think>page 3 says no</think><answer>Overall Judgment: False</answer>";
        // A successful zoom on a document task is not the retrieval the reward asks for.
        let t = traj(TaskKind::Document, vec![call("image_zoom_in_tool", true)], right);
        let r = stage2_reward(&t, &s, &RewardConfig::default()).unwrap();
        assert!(
            (r.total - 1.0).abs() < 1e-6 && r.successful_tool_calls == 0,
            "{r:?}"
        );
        let mut cfg = RewardConfig::default();
        cfg.stage2.success_needs_task_tool = false;
        let r = stage2_reward(&t, &s, &cfg).unwrap();
        assert!((r.total - 1.5).abs() < 1e-6, "{r:?}");
        // The success text alone does not count: `success` does.
        let mut c = call("doc_page_retrieval_by_query", false);
        c.result_text = "Concatenated page images for query 'x'".into();
        let r = stage2_reward(
            &traj(TaskKind::Document, vec![c], right),
            &s,
            &RewardConfig::default(),
        )
        .unwrap();
        assert!((r.total - 1.0).abs() < 1e-6, "{r:?}");
    }

    #[test]
    fn stage2_call_cost_charges_calls_beyond_the_budget() {
        let mut cfg = RewardConfig::default();
        cfg.stage2.call_cost = 0.05;
        let s = sample(TaskKind::Zoom, PAIR, "2");
        let calls = || {
            vec![
                call("image_zoom_in_tool", true),
                call("image_zoom_in_tool", true),
                call("image_zoom_in_tool", false),
            ]
        };
        // 3 calls, 1 free: 1.5 − 2·0.05 = 1.4.
        let r = stage2_reward(&traj(TaskKind::Zoom, calls(), SAYS_2), &s, &cfg).unwrap();
        assert!(
            (r.total - 1.4).abs() < 1e-6 && (r.call_cost - 0.1).abs() < 1e-6,
            "{r:?}"
        );
        // A malformed call that got an error back is a call too: 4 calls → 1.5 − 3·0.05.
        let mut t = traj(TaskKind::Zoom, calls(), SAYS_2);
        t.turns.insert(
            0,
            Turn {
                assistant_text: "<tool_call>{oops</tool_call>".into(),
                tool_call: None,
                tool_error: Some("bad json".into()),
            },
        );
        let r = stage2_reward(&t, &s, &cfg).unwrap();
        assert!((r.total - 1.35).abs() < 1e-6 && r.tool_calls == 4, "{r:?}");
        // Within budget: no cost. Bad format: still 0.
        let r = stage2_reward(
            &traj(TaskKind::Zoom, vec![call("image_zoom_in_tool", true)], SAYS_2),
            &s,
            &cfg,
        )
        .unwrap();
        assert!((r.total - 1.5).abs() < 1e-6 && r.call_cost == 0.0);
        let r = stage2_reward(&traj(TaskKind::Zoom, calls(), "no tags"), &s, &cfg).unwrap();
        assert_eq!(r.total, 0.0);
    }

    #[test]
    fn stage1_rewards_format_and_the_right_tool() {
        let cfg = RewardConfig::default();
        let s = sample(TaskKind::Instruction, Judgment::Single, "true");
        let answer = "<think>checked</think><answer>Overall Judgment: False</answer>";
        let r1 = |t: Trajectory, c: &RewardConfig| stage1_reward(&t, &s, c).unwrap();
        // Format only (wrong verdict does not matter in stage 1).
        let r = r1(traj(TaskKind::Instruction, vec![], answer), &cfg);
        assert_eq!(
            (r.total, r.format, r.tool_bonus, r.correct),
            (0.3, 0.3, 0.0, Some(false))
        );
        // A validator call, even one that failed, earns the bonus: 0.4.
        let r = r1(
            traj(
                TaskKind::Instruction,
                vec![call("check_whether_response_word_count_in_range", false)],
                answer,
            ),
            &cfg,
        );
        assert!((r.total - 0.4).abs() < 1e-6 && r.tool_bonus == 0.1, "{r:?}");
        // The wrong tool earns nothing by default, the paper's "any tool" with other_tool = 0.1.
        let zoom_only = || {
            traj(
                TaskKind::Instruction,
                vec![call("image_zoom_in_tool", true)],
                answer,
            )
        };
        assert_eq!(r1(zoom_only(), &cfg).total, 0.3);
        let mut any = cfg.clone();
        any.stage1.other_tool = 0.1;
        assert!((r1(zoom_only(), &any).total - 0.4).abs() < 1e-6);
        // Bad format: no bonus unless configured otherwise.
        let bad = || {
            traj(
                TaskKind::Instruction,
                vec![call("check_number_precision_in_response", true)],
                "True",
            )
        };
        assert_eq!(r1(bad(), &cfg).total, 0.0);
        let mut loose = cfg.clone();
        loose.stage1.bonus_requires_format = false;
        assert_eq!(r1(bad(), &loose).total, 0.1);
    }

    #[test]
    fn task_tool_mapping_is_configurable() {
        let tools = TaskTools::default();
        assert!(tools.is_right_tool(TaskKind::Zoom, "image_zoom_in_tool"));
        assert!(tools.is_right_tool(TaskKind::Document, "doc_page_retrieval_by_index"));
        assert!(!tools.is_right_tool(TaskKind::Document, "image_zoom_in_tool"));
        assert!(tools.is_right_tool(
            TaskKind::Instruction,
            "check_whether_has_no_arabic_number_in_response"
        ));
        let cfg = RewardConfig::from_json(
            r#"{"task_tools": {"zoom": ["image_zoom_in_tool", "extract_text_*"]}, "stage2": {"call_cost": 0.02}}"#,
        )
        .unwrap();
        assert!(cfg
            .task_tools
            .is_right_tool(TaskKind::Zoom, "extract_text_from_image_with_mineru"));
        assert_eq!(cfg.task_tools.document, TaskTools::default().document);
        assert_eq!(
            (cfg.stage2.call_cost, cfg.stage2.accuracy, cfg.stage1.format),
            (0.02, 0.7, 0.3)
        );
    }

    #[test]
    fn config_rejects_unknown_and_invalid_fields() {
        let err = RewardConfig::from_json(r#"{"stage2": {"acuracy": 1.0}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("acuracy"), "{err}");
        assert!(RewardConfig::from_json(r#"{"stage2": {"call_cost": -0.1}}"#).is_err());
        assert!(RewardConfig::from_json(r#"{"task_tools": {"zoom": []}}"#).is_err());
        let json = serde_json::to_string(&RewardConfig::default()).unwrap();
        assert_eq!(RewardConfig::from_json(&json).unwrap(), RewardConfig::default());
    }

    #[test]
    fn mismatched_records_are_errors() {
        let s = sample(TaskKind::Zoom, PAIR, "2");
        let mut t = traj(TaskKind::Zoom, vec![], SAYS_2);
        t.sample_id = "other".into();
        assert!(matches!(
            stage2_reward(&t, &s, &RewardConfig::default()),
            Err(RewardError::SampleMismatch { .. })
        ));
        let bad_gt = sample(TaskKind::Zoom, PAIR, "3");
        let t = traj(TaskKind::Zoom, vec![], SAYS_2);
        assert!(matches!(
            stage1_reward(&t, &bad_gt, &RewardConfig::default()),
            Err(RewardError::GroundTruth { .. })
        ));
    }
}
