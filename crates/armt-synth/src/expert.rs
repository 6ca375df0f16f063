//! Scripted expert turns for the cold start: what an ideal agent writes, turn by turn.

use armt_data::Sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use crate::tasks::{task_spec, TaskSpec, COLOURS, QUADRANTS, QUADRANT_BBOXES};

/// How the scripted agent behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertStyle {
    /// One right tool call, then the answer (2 turns).
    Direct,
    /// A wrong first call (zoom: another quadrant; document: a wrong page by index;
    /// instruction: the right validator on a non-existent text key `text_1`, which errors),
    /// a remark on it, the right call, then the answer (3 turns). Adds diversity and shows
    /// recovery.
    Retry,
    /// No tool: a verdict drawn at random (1 turn). A judge that answers without looking: part
    /// of the tiny default's cold start, so that the SFT model often skips the tool and RL has
    /// the tool's value to discover (the verdict is chance without it).
    Guess,
}

/// One scripted assistant turn.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertTurn {
    /// The full assistant text, exactly as the policy should write it.
    pub text: String,
    /// The call in `text`, if any: (tool name, arguments).
    pub tool_call: Option<(String, Value)>,
}

/// Renders JSON the way Python's `json.dumps` does (", " and ": " separators, key order kept,
/// non-ASCII kept), which is how Qwen's template and the paper's trajectories write calls.
pub fn py_json(v: &Value) -> String {
    let mut out = String::new();
    write_py_json(&mut out, v);
    out
}

use armt_processing::write_py_json;

/// Tool arguments in the order they are written (the schema's order).
pub type ToolArgs = Vec<(&'static str, Value)>;

/// Renders `{"name": …, "arguments": {…}}` with `json.dumps` spacing, arguments in order.
pub fn render_tool_call(name: &str, arguments: &[(&str, Value)]) -> String {
    let mut out = format!(
        "{{\"name\": {}, \"arguments\": {{",
        Value::String(name.to_string())
    );
    for (i, (k, v)) in arguments.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&Value::String(k.to_string()).to_string());
        out.push_str(": ");
        write_py_json(&mut out, v);
    }
    out.push_str("}}");
    out
}

/// `<think>…</think>\n<tool_call>\n{"name": …, "arguments": …}\n</tool_call>`
pub fn tool_call_turn(think: &str, name: &str, arguments: &[(&str, Value)]) -> ExpertTurn {
    let value = Value::Object(
        arguments
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    );
    ExpertTurn {
        text: format!(
            "<think>{think}</think>\n<tool_call>\n{}\n</tool_call>",
            render_tool_call(name, arguments)
        ),
        tool_call: Some((name.to_string(), value)),
    }
}

/// `<think>…</think><answer>Overall Judgment: …</answer>`
pub fn answer_turn(think: &str, verdict: &str) -> ExpertTurn {
    ExpertTurn {
        text: format!("<think>{think}</think><answer>Overall Judgment: {verdict}</answer>"),
        tool_call: None,
    }
}

/// The verdict text for a ground truth: `Answer X is better` or `True`/`False`.
pub fn verdict(sample: &Sample) -> String {
    let gt = sample.ground_truth.trim().to_lowercase();
    match gt.as_str() {
        "true" => "True".into(),
        "false" => "False".into(),
        k => format!("Answer {k} is better"),
    }
}

/// The texts of [`expert_script`] with [`ExpertStyle::Direct`].
pub fn expert_turns(sample: &Sample) -> Vec<String> {
    expert_script(sample, ExpertStyle::Direct, 0)
        .into_iter()
        .map(|t| t.text)
        .collect()
}

/// The scripted turns for `sample` (empty if the sample was not made by this crate).
/// `seed` only picks the wrong first call of [`ExpertStyle::Retry`] and the verdict of
/// [`ExpertStyle::Guess`].
/// The final turn's verdict is the sample's ground truth, except for [`ExpertStyle::Guess`].
pub fn expert_script(sample: &Sample, style: ExpertStyle, seed: u64) -> Vec<ExpertTurn> {
    let Some(spec) = task_spec(sample) else {
        return Vec::new();
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ fxhash(&sample.id));
    let gt_idx = sample
        .ground_truth
        .trim()
        .parse::<usize>()
        .unwrap_or(1)
        .clamp(1, 2)
        - 1;
    let v = verdict(sample);
    let mut turns = Vec::new();
    if style == ExpertStyle::Guess {
        let guess = match spec {
            TaskSpec::Instruction { .. } => ["True", "False"][rng.gen_range(0..2)].to_string(),
            _ => format!("Answer {} is better", rng.gen_range(1..=2)),
        };
        turns.push(answer_turn("I will judge without a tool.", &guess));
        return turns;
    }
    match spec {
        TaskSpec::Zoom { quadrant, candidates } => {
            let place = format!("{} corner", QUADRANTS[quadrant]);
            let zoom = |q: usize| -> ToolArgs {
                vec![
                    ("image", json!("original_image")),
                    ("bbox_2d", json!(QUADRANT_BBOXES[q])),
                ]
            };
            if style == ExpertStyle::Retry {
                let wrong_q = (quadrant + rng.gen_range(1..4)) % 4;
                turns.push(tool_call_turn(
                    &format!("The dot in the {place} is too small to see. I will zoom in on it."),
                    "image_zoom_in_tool",
                    &zoom(wrong_q),
                ));
                turns.push(tool_call_turn(
                    &format!(
                        "That region is the {} corner, not the {place}. I will zoom in on the {place}.",
                        QUADRANTS[wrong_q]
                    ),
                    "image_zoom_in_tool",
                    &zoom(quadrant),
                ));
            } else {
                turns.push(tool_call_turn(
                    &format!("The dot in the {place} is too small to see. I will zoom in on the {place}."),
                    "image_zoom_in_tool",
                    &zoom(quadrant),
                ));
            }
            let right = &candidates[gt_idx];
            debug_assert!(COLOURS.iter().any(|c| c.0 == right));
            let seen = tool_shows(right);
            turns.push(answer_turn(&compare_candidates(&seen, right, &candidates), &v));
        }
        TaskSpec::Document {
            name,
            subject,
            candidates,
            ..
        } => {
            let doc = sample.document.as_ref().expect("document task has a document");
            let by_query: ToolArgs = vec![("filename", json!(name)), ("query", json!(subject))];
            if style == ExpertStyle::Retry {
                let fact_page = doc
                    .pages
                    .iter()
                    .position(|p| p.text.to_lowercase().contains(&subject))
                    .unwrap_or(0);
                let n = doc.pages.len();
                let wrong = (fact_page + rng.gen_range(1..n)) % n;
                turns.push(tool_call_turn(
                    &format!(
                        "I need the page about the {subject}. I will look at page {}.",
                        wrong + 1
                    ),
                    "doc_page_retrieval_by_index",
                    &[("filename", json!(name)), ("image_idx", json!(wrong + 1))],
                ));
                turns.push(tool_call_turn(
                    &format!(
                        "Page {} is not about the {subject}. I will search the document for the {subject}.",
                        wrong + 1
                    ),
                    "doc_page_retrieval_by_query",
                    &by_query,
                ));
            } else {
                turns.push(tool_call_turn(
                    &format!("I need the page about the {subject}. I will search the document for it."),
                    "doc_page_retrieval_by_query",
                    &by_query,
                ));
            }
            let value = |c: &str| c.split_whitespace().next().unwrap_or_default().to_string();
            let right = value(&candidates[gt_idx]);
            let values = [value(&candidates[0]), value(&candidates[1])];
            let seen = tool_shows(&right);
            turns.push(answer_turn(&compare_candidates(&seen, &right, &values), &v));
        }
        TaskSpec::Instruction { constraint, .. } => {
            let (name, args) = constraint.validator();
            if style == ExpertStyle::Retry {
                // A call with the wrong text key: the tool answers with an error, the expert fixes it.
                let mut bad = args.clone();
                bad[0].1 = json!("text_1");
                turns.push(tool_call_turn(
                    &format!("I will check {} of the response.", constraint.what()),
                    name,
                    &bad,
                ));
                turns.push(tool_call_turn(
                    "The response is named text_0, not text_1. I will check text_0.",
                    name,
                    &args,
                ));
            } else {
                turns.push(tool_call_turn(
                    &format!("I will check {} of text_0.", constraint.what()),
                    name,
                    &args,
                ));
            }
            turns.push(answer_turn(&tool_shows(&v), &v));
        }
    }
    turns
}

/// How the expert states what the tool showed, the same words for every task kind ("The tool
/// shows red." / "40." / "False."): the value is then the only thing the reasoning's first
/// sentence depends on. With a sentence per kind ("The page says" for a document, "The check
/// result is" for a validator), a seed's cold start took the document's text answer for a
/// validator's for over a thousand steps and wrote "The check result is False." after a page.
fn tool_shows(value: &str) -> String {
    format!("The tool shows {value}.")
}

/// The expert's comparison of what the tool showed (`seen`, whose value is `value`) with each
/// candidate in turn, stopping at the one that agrees: "Answer 1 is blue vs red, different.
/// Answer 2 is red vs red, same, so Answer 2 is better." Each step is one a small model can take
/// in one look: the candidate's value from its line in the prompt (one token, label and value:
/// see [`crate::candidate_phrases`]), then the two values side by side as the same kind of token
/// (so "same" is the equality of two tokens, not of a phrase token and a value), then the index
/// of the answer just named; matching every candidate against the tool's value at once stayed at
/// chance.
fn compare_candidates<S: AsRef<str>>(seen: &str, value: &str, candidates: &[S]) -> String {
    let mut text = seen.to_string();
    for (k, c) in candidates.iter().enumerate() {
        let c = c.as_ref();
        if c == value {
            text.push_str(&format!(
                " Answer {} is {c} vs {value}, same, so Answer {} is better.",
                k + 1,
                k + 1
            ));
            break;
        }
        text.push_str(&format!(" Answer {} is {c} vs {value}, different.", k + 1));
    }
    text
}

fn fxhash(s: &str) -> u64 {
    // FNV-1a: stable across runs and platforms (unlike std's RandomState).
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
