//! ARMBench-VL items (doc §5.2): `idx`, `rm_tag` (`single_rm`, `pair_rm`, `2-way-pair_rm`,
//! `4-way-pair_rm`), `question`, `preds` (the candidates), `images` (relative to the track's
//! image root; the first is shown), `gt` (`"True"`/`"False"` or 1..4), optional `doc_id`
//! (documents) and `constraints` (instruction following: `constraints[0].value`).
//!
//! The prompts are the original evaluation's (`make_prompt_single_rm`,
//! `make_prompt_single_rm_mmif`, `make_prompt_pair_rm`, `make_prompt_4_way_pair_rm`, then the
//! fixed CoT instruction), and so is the answer extraction ([`extract_choice`]).

use super::{load_document, resolve, FormatOptions};
use crate::{ArmBenchError, DataError, Judgment, RowError, Sample, TaskKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// The per-turn instruction of the tool-using evaluation (`FIXED_COT_PROMPT`).
pub const FIXED_COT_PROMPT: &str = "**Important Requirement:**\nThe given image is `original_image`. You must output your reasoning inside `<think>...</think>`. After reasoning, either output the final answer within `<answer>...</answer>` or call a tool within `<tool_call>...</tool_call>`. You may call tools multiple times across turns to assist with judgment or verification, **but only one tool per turn**. If a tool call fails, you can retry or stop and give your final answer. Once no more tool calls are needed, provide your final answer or judgment within `<answer>...</answer>`.";

/// The instruction of the no-tool (direct) evaluation (`FIXED_COT_PROMPT_DIRECT`).
pub const FIXED_COT_PROMPT_DIRECT: &str = "**Important Requirement:**\nYou must output your reasoning inside `<think>...</think>`. After reasoning, You should output the your final answer or judgment within `<answer>...</answer>`.";

const IMAGE_SENTENCE: &str = "The given image is `original_image`.";

/// One benchmark item. Unknown fields are kept (they are written back with the result).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmBenchItem {
    pub idx: Value,
    pub rm_tag: String,
    pub question: String,
    pub preds: Vec<String>,
    #[serde(default)]
    pub images: Vec<String>,
    pub gt: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<Vec<Value>>,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

impl ArmBenchItem {
    /// The item's identity as text (`idx` may be a number or a string).
    pub fn key(&self) -> String {
        match &self.idx {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    pub fn judgment(&self) -> Result<Judgment, ArmBenchError> {
        match self.rm_tag.as_str() {
            "single_rm" => Ok(Judgment::Single),
            "pair_rm" | "2-way-pair_rm" => Ok(Judgment::Pair { candidates: 2 }),
            "4-way-pair_rm" => Ok(Judgment::Pair { candidates: 4 }),
            other => Err(ArmBenchError::UnsupportedRmTag { rm_tag: other.into() }),
        }
    }

    /// The ground truth as a choice (`"True"`/`"False"`, or the candidate number).
    pub fn gt_choice(&self) -> Result<Choice, ArmBenchError> {
        match (&self.gt, self.judgment()?) {
            (Value::Bool(b), Judgment::Single) => Ok(Choice::Truth(if *b { "True" } else { "False" }.into())),
            (Value::String(s), Judgment::Single) => Ok(Choice::Truth(capitalize(s.trim()))),
            (Value::Number(n), Judgment::Pair { .. }) => n
                .as_u64()
                .map(|k| Choice::Candidate(k as usize))
                .ok_or_else(|| ArmBenchError::GtNotCandidate { gt: n.clone() }),
            (Value::String(s), Judgment::Pair { .. }) => {
                s.trim()
                    .parse()
                    .map(Choice::Candidate)
                    .map_err(|source| ArmBenchError::GtTextNotCandidate {
                        gt: s.clone(),
                        source,
                    })
            }
            (gt, _) => Err(ArmBenchError::GtDoesNotFit {
                gt: gt.clone(),
                rm_tag: self.rm_tag.clone(),
            }),
        }
    }

    fn check(&self) -> Result<(), ArmBenchError> {
        let need = match self.judgment()? {
            Judgment::Single => 1,
            Judgment::Pair { candidates } => candidates,
        };
        if self.preds.len() < need {
            return Err(ArmBenchError::TooFewPreds {
                rm_tag: self.rm_tag.clone(),
                need,
                have: self.preds.len(),
            });
        }
        if self.images.is_empty() {
            return Err(ArmBenchError::NoImages);
        }
        if self
            .constraints
            .as_ref()
            .is_some_and(|c| c.first().and_then(|c| c.get("value")).is_none())
        {
            return Err(ArmBenchError::NoConstraintValue);
        }
        self.gt_choice().map(|_| ())
    }

    /// The judging prompt (without the per-turn instruction), as the original builds it:
    /// `<image>` tags removed.
    pub fn prompt(&self) -> Result<String, ArmBenchError> {
        let p = &self.preds;
        let text = match self.judgment()? {
            Judgment::Single => match &self.constraints {
                Some(c) => {
                    let value = c
                        .first()
                        .and_then(|c| c.get("value"))
                        .map(value_text)
                        .unwrap_or_default();
                    prompt_single_mmif(&self.question, &p[0], &value)
                }
                None => prompt_single(&self.question, &p[0]),
            },
            Judgment::Pair { candidates: 2 } => prompt_pair(&self.question, &p[0], &p[1]),
            Judgment::Pair { .. } => prompt_4_way(&self.question, &p[0], &p[1], &p[2], &p[3]),
        };
        Ok(text.replace("<image>\n", "").replace("<image>", ""))
    }

    /// The per-turn instruction for this item: for documents the image sentence names the
    /// document instead (the original's `doc_id_prompt`).
    pub fn instruction(&self, base: &str) -> String {
        match &self.doc_id {
            Some(doc) => {
                let name = doc.split(".pdf").next().unwrap_or(doc);
                base.replace(
                    IMAGE_SENTENCE,
                    &format!("The given document is named `{name}`. The page indices in the combined image start from 1 at the top-left corner and increase horizontally from left to right, then continue to the next row from top to bottom."),
                )
            }
            None => base.to_string(),
        }
    }

    pub fn task(&self) -> TaskKind {
        if self.doc_id.is_some() {
            TaskKind::Document
        } else if self.constraints.is_some() {
            TaskKind::Instruction
        } else {
            TaskKind::Zoom
        }
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Python's `str.capitalize`: first character upper, the rest lower.
fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c.flat_map(char::to_lowercase)).collect(),
        None => String::new(),
    }
}

fn prompt_single(instruction: &str, prediction: &str) -> String {
    format!(
        "You will receive a response(named as `resp_0`) which follows the user's instruction or requirement to the provided image (or document). Your Task is to judge whether the response is correct or not. If it is correct, you should mark it as `True`, otherwise `False` for you think the response is not correct.\n\n<start_of_instruction>\n{instruction}\n<end_of_instruction>\n\n<start_of_resp_0>\n{prediction}\n<end_of_resp_0>\n\n## Output Format (strict)\nYou should make the final judgment wrapped in <answer></answer> XML tags: <answer>Overall Judgment: True (or False)</answer>\n"
    )
}

fn prompt_single_mmif(instruction: &str, prediction: &str, constraint: &str) -> String {
    format!(
        "You will receive a response(named as `text_0`) which follows the user's instruction or requirement to the provided image. Your Task is to judge whether the response satisfies the constraint. If it does, you should mark it as `True`, otherwise `False` for you think the response does not satisfy the constraint.\n\n<start_of_instruction>\n{instruction}\n<end_of_instruction>\n\n<start_of_text_0>\n{prediction}\n<end_of_text_0>\n\n<start_of_constraint>\n{constraint}\n<end_of_constraint>\n\n## Output Format (strict)\nYou should make the final judgment wrapped in <answer></answer> XML tags: <answer>Overall Judgment: True (or False)</answer>\n"
    )
}

fn prompt_pair(instruction: &str, p1: &str, p2: &str) -> String {
    format!(
        "You will receive two responses (named as `resp_1` and `resp_2`) which follow the user's instruction or requirement to the provided image (or document). Your Task is to judge which response is better. Note that correctness is most important. If both are not correct, you should choose the one that is more better from other aspects.\n\n<start_of_instruction>\n{instruction}\n<end_of_instruction>\n\n<start_of_resp_1>\n{p1}\n<end_of_resp_1>\n\n<start_of_resp_2>\n{p2}\n<end_of_resp_2>\n\n## Output Format (strict)\nYou should make the final judgment wrapped in <answer></answer> XML tags: <answer>Overall Judgment: Answer X is better (X must be either 1 or 2). </answer>\n"
    )
}

fn prompt_4_way(instruction: &str, p1: &str, p2: &str, p3: &str, p4: &str) -> String {
    format!(
        "You will receive four responses (named as `resp_1`, `resp_2`, `resp_3`, `resp_4`) which follow the user's instruction or requirement to the provided image (or document). Your Task is to judge which response is better. Note that correctness is most important. If all are not correct, you should choose the one that is more better from other aspects.\n\n<start_of_instruction>\n{instruction}\n<end_of_instruction>\n\n<start_of_resp_1>\n{p1}\n<end_of_resp_1>\n\n<start_of_resp_2>\n{p2}\n<end_of_resp_2>\n\n<start_of_resp_3>\n{p3}\n<end_of_resp_3>\n\n<start_of_resp_4>\n{p4}\n<end_of_resp_4>\n\n## Output Format (strict)\nYou should make the final judgment wrapped in <answer></answer> XML tags: <answer>Overall Judgment: Answer X is better (X must be either 1, 2, 3, or 4). </answer>\n"
    )
}

/// A judge's choice as the original scores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Choice {
    Candidate(usize),
    /// `"True"`, `"False"`, or whatever else the single-judgment fallback produced.
    Truth(String),
}

/// The original's answer extraction.
/// - single: the first `\b(True|False)\b` inside the first `<answer>…</answer>`, capitalised.
///   Otherwise the original's fallback runs a pattern without a capture group, which always
///   matches the empty string, so the choice is `""`: extracted, and wrong.
/// - pair / 4-way: the last `Answer N is [the] [slightly] better|preferred`, else the last
///   `<answer> N </answer>`; None when neither is there.
pub fn extract_choice(text: &str, judgment: Judgment) -> Option<Choice> {
    match judgment {
        Judgment::Single => {
            let inner = first_answer_block(text);
            let found = inner.and_then(|s| first_true_false(s));
            Some(Choice::Truth(found.map(capitalize).unwrap_or_default()))
        }
        Judgment::Pair { .. } => last_better_phrase(text)
            .or_else(|| last_bare_answer(text))
            .map(Choice::Candidate),
    }
}

fn first_answer_block(text: &str) -> Option<&str> {
    let lower = text.to_ascii_lowercase();
    let start = lower.find("<answer>")? + "<answer>".len();
    let end = lower[start..].find("</answer>")? + start;
    Some(&text[start..end])
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The first whole word `true`/`false` (any case).
fn first_true_false(s: &str) -> Option<&str> {
    let lower = s.to_ascii_lowercase();
    let mut best: Option<(usize, usize)> = None;
    for w in ["true", "false"] {
        let mut from = 0;
        while let Some(p) = lower[from..].find(w) {
            let at = from + p;
            let before = lower[..at].chars().next_back().is_none_or(|c| !is_word(c));
            let after = lower[at + w.len()..].chars().next().is_none_or(|c| !is_word(c));
            if before && after {
                if best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, w.len()));
                }
                break;
            }
            from = at + w.len();
        }
    }
    best.map(|(at, len)| &s[at..at + len])
}

/// `Answer\s*(\d+)\s*is\s*(?:the\s*)?(?:slightly\s*)?(?:better|preferred)`, last match.
fn last_better_phrase(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    let b = lower.as_bytes();
    let mut found = None;
    let mut from = 0;
    while let Some(p) = lower[from..].find("answer") {
        let start = from + p;
        from = start + 1;
        let mut i = start + "answer".len();
        let skip_ws = |i: &mut usize| {
            while *i < b.len() && b[*i].is_ascii_whitespace() {
                *i += 1;
            }
        };
        skip_ws(&mut i);
        let d0 = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == d0 {
            continue;
        }
        let Ok(n) = lower[d0..i].parse::<usize>() else {
            continue;
        };
        skip_ws(&mut i);
        if !lower[i..].starts_with("is") {
            continue;
        }
        i += 2;
        skip_ws(&mut i);
        for opt in ["the", "slightly"] {
            if lower[i..].starts_with(opt) {
                let mut j = i + opt.len();
                skip_ws(&mut j);
                i = j;
            }
        }
        if lower[i..].starts_with("better") || lower[i..].starts_with("preferred") {
            found = Some(n);
        }
    }
    found
}

/// `<answer>\s*(\d+)\s*</answer>`, last match.
fn last_bare_answer(text: &str) -> Option<usize> {
    let lower = text.to_ascii_lowercase();
    let mut found = None;
    let mut from = 0;
    while let Some(p) = lower[from..].find("<answer>") {
        let start = from + p + "<answer>".len();
        from = start;
        let rest = &lower[start..];
        if let Some(end) = rest.find("</answer>") {
            let inner = rest[..end].trim();
            if !inner.is_empty() && inner.bytes().all(|c| c.is_ascii_digit()) {
                found = inner.parse().ok().or(found);
            }
        }
    }
    found
}

/// True when the file's first non-empty line is an ARMBench item (`rm_tag` and `preds`).
pub fn looks_like_armbench(path: &Path) -> Result<bool, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let first = text.lines().find(|l| !l.trim().is_empty());
    Ok(first
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .is_some_and(|v| v.get("rm_tag").is_some() && v.get("preds").is_some()))
}

/// Reads and checks ARMBench items.
pub fn read_items(path: &Path) -> Result<Vec<ArmBenchItem>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |source: RowError| DataError::Row {
            path: path.to_path_buf(),
            line: i + 1,
            source: Box::new(source),
        };
        let item: ArmBenchItem = serde_json::from_str(line).map_err(|e| err(e.into()))?;
        item.check().map_err(|e| err(e.into()))?;
        if !seen.insert(item.key()) {
            return Err(err(ArmBenchError::DuplicateIdx { idx: item.key() }.into()));
        }
        out.push(item);
    }
    Ok(out)
}

/// An item as a sample: prompt = the original's judging prompt, plus `instruction` (the
/// per-turn instruction, document-adapted) when given; the first image; the candidate as
/// `text_0` for instruction items; the document's pages (from `doc_root`) for document items.
pub fn item_sample(
    item: &ArmBenchItem,
    path: &Path,
    opts: &FormatOptions,
    instruction: Option<&str>,
) -> Result<Sample, RowError> {
    let mut prompt = item.prompt()?;
    if let Some(base) = instruction {
        prompt.push_str("\n\n");
        prompt.push_str(&item.instruction(base));
    }
    let image = resolve(&opts.image_root_for(path), &item.images[0]);
    if !image.is_file() {
        return Err(ArmBenchError::MissingImage { path: image }.into());
    }
    let task = item.task();
    let document = match &item.doc_id {
        Some(doc) => Some(load_document(&opts.doc_root_for(path), doc)?),
        None => None,
    };
    let ground_truth = match item.gt_choice()? {
        Choice::Candidate(k) => k.to_string(),
        Choice::Truth(t) => t.to_lowercase(),
    };
    let sample = Sample {
        id: item.key(),
        task,
        prompt,
        images: vec![image],
        document,
        response: (task == TaskKind::Instruction).then(|| item.preds[0].clone()),
        judgment: item.judgment()?,
        ground_truth,
        source: None,
    };
    crate::validate(&sample)?;
    Ok(sample)
}

/// An item as a sample for training or armt's own evaluation (armt appends its instruction).
pub fn item_to_sample(item: &ArmBenchItem, path: &Path, opts: &FormatOptions) -> Result<Sample, DataError> {
    item_sample(item, path, opts, None).map_err(|source| DataError::Item {
        path: path.to_path_buf(),
        idx: item.key(),
        source: Box::new(source),
    })
}
