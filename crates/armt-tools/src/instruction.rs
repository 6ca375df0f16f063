//! The 19 instruction validators (ARM-Thinker's MMIF tools): each checks one verifiable
//! constraint on a named text of the context (`text_0` = the candidate response) and answers
//! `Check result: True|False` plus a `Reason:` line (the paper gives only the verdict; the
//! reason lets the model see *why* without re-counting).

use std::sync::OnceLock;

use regex::Regex;
use serde_json::{json, Map, Value};

use crate::error::ArgError;
use crate::parse::py_str_list;
use crate::text::{clean_text, normalize_for_matching, paragraphs, split_sentences, word_count};
use crate::{InstanceId, Tool, ToolContext, ToolOutput};

/// Which constraint a validator checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstructionCheck {
    ParagraphNumberInRange,
    SentenceNumberInRange,
    EachParagraphSentenceNumberInRange,
    EachParagraphSentenceNumberInRangeList,
    WordCountInRange,
    EachParagraphWordCountInRange,
    NotContainSubstrings,
    NotContainSubstring,
    EachSentenceBeginsWith,
    EachSentenceEndsWith,
    EachParagraphBeginsWith,
    EachParagraphEndsWith,
    ResponseBeginsWith,
    ResponseEndsWith,
    EachKeywordMentionedInRange,
    TotalKeywordsMentionedInRange,
    PercentagePrecision,
    NumberPrecision,
    NoArabicNumber,
}

use InstructionCheck as C;

/// The parameters (besides `response`) a check takes, with the descriptions its schema shows.
enum Params {
    Bounds(&'static str, &'static str),
    Ranges,
    Substrings,
    Substring(&'static str),
    Keywords(&'static str, &'static str),
    Precision(&'static str),
    Nothing,
}

/// Per check: Python class name (as in the paper's YAML), function name, description.
/// The first column is what `class_name` in a tool YAML maps to.
pub const INSTRUCTION_CHECKS: [(InstructionCheck, &str, &str, &str); 19] = [
    (C::ParagraphNumberInRange, "ParagraphNumberInRangeTool", "check_whether_response_paragraph_number_in_range", "Checks if the total number of paragraphs in the response is within a specified range [lower_bound, upper_bound]."),
    (C::SentenceNumberInRange, "SentenceNumberInRangeTool", "check_whether_response_sentence_number_in_range", "Checks if the total number of sentences in the response is within a specified range [lower_bound, upper_bound]."),
    (C::EachParagraphSentenceNumberInRange, "EachParagraphSentenceNumberInRangeTool", "check_whether_each_paragraph_sentence_number_in_range", "Checks if the sentence count of each paragraph in the response is within a specified range [lower_bound, upper_bound]."),
    (C::EachParagraphSentenceNumberInRangeList, "EachParagraphSentenceNumberInRangeListTool", "check_whether_each_paragraph_sentence_number_in_range_list", "Checks if each paragraph's sentence count matches a corresponding range in a list. The number of paragraphs must equal the number of ranges."),
    (C::WordCountInRange, "WordCountInRangeTool", "check_whether_response_word_count_in_range", "Checks if the total word count of the response is within a specified range [lower_bound, upper_bound]."),
    (C::EachParagraphWordCountInRange, "EachParagraphWordCountInRangeTool", "check_whether_each_paragraph_word_count_in_range", "Checks if the word count of each paragraph in the response is within a specified range [lower_bound, upper_bound]."),
    (C::NotContainSubstrings, "NotContainSubstringsTool", "check_whether_whole_response_not_contain_certain_substrings", "Checks if the response does not contain any of the substrings from a given list."),
    (C::NotContainSubstring, "NotContainSubstringTool", "check_whether_whole_response_not_contain_certain_substring", "Checks if the response does not contain a specific substring."),
    (C::EachSentenceBeginsWith, "EachSentenceBeginsWithTool", "check_whether_each_sentence_begin_with_certain_substring", "Checks if every sentence in the response begins with a specific substring (case-insensitive)."),
    (C::EachSentenceEndsWith, "EachSentenceEndsWithTool", "check_whether_each_sentence_end_with_certain_substring", "Checks if every sentence in the response ends with a specific substring (case-insensitive)."),
    (C::EachParagraphBeginsWith, "EachParagraphBeginsWithTool", "check_whether_each_paragraph_begin_with_certain_substring", "Checks if every paragraph in the response begins with a specific substring (case-insensitive)."),
    (C::EachParagraphEndsWith, "EachParagraphEndsWithTool", "check_whether_each_paragraph_end_with_certain_substring", "Checks if every paragraph in the response ends with a specific substring (case-insensitive)."),
    (C::ResponseBeginsWith, "ResponseBeginsWithTool", "check_whether_whole_response_begin_with_certain_substring", "Checks if the entire response begins with a specific substring (case-insensitive)."),
    (C::ResponseEndsWith, "ResponseEndsWithTool", "check_whether_whole_response_end_with_certain_substring", "Checks if the entire response ends with a specific substring (case-insensitive)."),
    (C::EachKeywordMentionedInRange, "EachKeywordMentionedInRangeTool", "check_whether_each_keyword_in_list_mentioned_in_range", "Checks if the count of each individual keyword from a list falls within a specified range. Matches whole words, case-insensitively."),
    (C::TotalKeywordsMentionedInRange, "TotalKeywordsMentionedInRangeTool", "check_whether_total_keyword_in_list_mentioned_in_range", "Checks if the total count of all keywords from a list falls within a specified range. Matches whole words, case-insensitively."),
    (C::PercentagePrecision, "PercentagePrecisionTool", "check_percentage_number_precision_in_response", "Checks if all numbers followed by a '%' sign have a specific number of decimal places."),
    (C::NumberPrecision, "NumberPrecisionTool", "check_number_precision_in_response", "Checks if all numbers with a decimal point have a specific number of decimal places (integers are not checked)."),
    (C::NoArabicNumber, "NoArabicNumberTool", "check_whether_has_no_arabic_number_in_response", "Checks if the response contains no standalone Arabic numbers (e.g., 123, 3.14, 1,000)."),
];

impl InstructionCheck {
    /// The check a YAML `class_name` names (dotted Python path or bare class name).
    pub fn from_class_name(class: &str) -> Option<Self> {
        let short = class.rsplit('.').next().unwrap_or(class);
        INSTRUCTION_CHECKS.iter().find(|e| e.1 == short).map(|e| e.0)
    }

    fn entry(self) -> &'static (InstructionCheck, &'static str, &'static str, &'static str) {
        INSTRUCTION_CHECKS
            .iter()
            .find(|e| e.0 == self)
            .expect("every check is in the table")
    }

    /// The function name the paper gives this check.
    pub fn default_name(self) -> &'static str {
        self.entry().2
    }

    fn params(self) -> Params {
        match self {
            C::ParagraphNumberInRange => Params::Bounds(
                "The minimum allowed number of paragraphs.",
                "The maximum allowed number of paragraphs.",
            ),
            C::SentenceNumberInRange => Params::Bounds(
                "The minimum allowed number of sentences.",
                "The maximum allowed number of sentences.",
            ),
            C::EachParagraphSentenceNumberInRange => Params::Bounds(
                "The minimum allowed sentences per paragraph.",
                "The maximum allowed sentences per paragraph.",
            ),
            C::EachParagraphSentenceNumberInRangeList => Params::Ranges,
            C::WordCountInRange => Params::Bounds(
                "The minimum allowed word count.",
                "The maximum allowed word count.",
            ),
            C::EachParagraphWordCountInRange => Params::Bounds(
                "The minimum allowed word count per paragraph.",
                "The maximum allowed word count per paragraph.",
            ),
            C::NotContainSubstrings => Params::Substrings,
            C::NotContainSubstring => {
                Params::Substring("The substring that should not appear in the response.")
            }
            C::EachSentenceBeginsWith => {
                Params::Substring("The substring that each sentence must start with.")
            }
            C::EachSentenceEndsWith => Params::Substring("The substring that each sentence must end with."),
            C::EachParagraphBeginsWith => {
                Params::Substring("The substring that each paragraph must start with.")
            }
            C::EachParagraphEndsWith => Params::Substring("The substring that each paragraph must end with."),
            C::ResponseBeginsWith => Params::Substring("The substring that the response must start with."),
            C::ResponseEndsWith => Params::Substring("The substring that the response must end with."),
            C::EachKeywordMentionedInRange => Params::Keywords(
                "The minimum number of times each keyword must appear.",
                "The maximum number of times each keyword must appear.",
            ),
            C::TotalKeywordsMentionedInRange => Params::Keywords(
                "The minimum total number of times the keywords must appear.",
                "The maximum total number of times the keywords must appear.",
            ),
            C::PercentagePrecision => {
                Params::Precision("The required number of decimal places for percentages.")
            }
            C::NumberPrecision => Params::Precision("The required number of decimal places for all numbers."),
            C::NoArabicNumber => Params::Nothing,
        }
    }

    /// The full schema (`items`, `minimum` included) under the paper's name and description.
    pub fn default_schema(self) -> Value {
        let (_, _, name, description) = *self.entry();
        let mut props = Map::new();
        let mut required = vec!["response"];
        props.insert("response".into(), json!({"type": "string", "description": "Text name to be checked (e.g., 'text_0', 'text_1', 'text_2', etc.)"}));
        let int = |d: &str| json!({"type": "integer", "minimum": 0, "description": d});
        match self.params() {
            Params::Bounds(lo, hi) => {
                props.insert("lower_bound".into(), int(lo));
                props.insert("upper_bound".into(), int(hi));
                required.extend(["lower_bound", "upper_bound"]);
            }
            Params::Ranges => {
                props.insert("ranges".into(), json!({"type": "array", "description": "A list of [lower_bound, upper_bound] pairs, one for each paragraph.",
                    "items": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 2, "maxItems": 2}}));
                required.push("ranges");
            }
            Params::Substrings => {
                props.insert("substrings".into(), json!({"type": "array", "description": "A list of substrings that should not appear in the response.", "items": {"type": "string"}}));
                required.push("substrings");
            }
            Params::Substring(d) => {
                props.insert("substring".into(), json!({"type": "string", "description": d}));
                required.push("substring");
            }
            Params::Keywords(lo, hi) => {
                props.insert("keywords".into(), json!({"type": "array", "description": "A list of keywords to count.", "items": {"type": "string"}}));
                props.insert("lower_bound_times".into(), int(lo));
                props.insert("upper_bound_times".into(), int(hi));
                required.extend(["keywords", "lower_bound_times", "upper_bound_times"]);
            }
            Params::Precision(d) => {
                props.insert("precision".into(), int(d));
                required.push("precision");
            }
            Params::Nothing => {}
        }
        json!({"type": "function", "function": {"name": name, "description": description,
            "parameters": {"type": "object", "properties": props, "required": required}}})
    }
}

/// One validator tool.
pub struct InstructionTool {
    check: InstructionCheck,
    schema: Value,
    name: String,
    /// Append the `Reason:` line (armt's default); off reproduces the original's bare verdict.
    reason: bool,
}

impl InstructionTool {
    pub fn new(check: InstructionCheck, schema: Option<Value>) -> Self {
        let schema = schema.unwrap_or_else(|| check.default_schema());
        let name = crate::function_name(&schema, check.default_name());
        Self {
            check,
            schema,
            name,
            reason: true,
        }
    }

    /// With `false` the output is only `Check result: True|False`, as the original's validators give.
    pub fn with_reason(mut self, reason: bool) -> Self {
        self.reason = reason;
        self
    }

    pub fn check(&self) -> InstructionCheck {
        self.check
    }
}

impl Tool for InstructionTool {
    fn name(&self) -> &str {
        &self.name
    }

    fn schema(&self) -> &Value {
        &self.schema
    }

    fn execute(&self, _instance: InstanceId, args: &Value, ctx: &ToolContext) -> ToolOutput {
        let key = match args.get("response") {
            Some(Value::String(s)) if !s.trim().is_empty() => s.trim(),
            _ => return ToolOutput::error("Error: missing required parameter 'response'."),
        };
        let Some(text) = ctx.text(key) else {
            return ToolOutput::error(format!(
                "Error when executing tool: Cannot resolve text response key '{key}'. Current text responses you have are: {}. ",
                py_str_list(&ctx.text_keys())
            ));
        };
        match evaluate(self.check, text, args) {
            Ok((passed, reason)) => {
                let verdict = if passed { "True" } else { "False" };
                let mut o = ToolOutput::ok(if self.reason {
                    format!("Check result: {verdict}\nReason: {reason}")
                } else {
                    format!("Check result: {verdict}")
                });
                o.metrics.insert("check_result".into(), Value::Bool(passed));
                o
            }
            Err(e) => ToolOutput::error(e.to_string()),
        }
    }
}

fn int_arg(args: &Value, name: &'static str) -> Result<i64, ArgError> {
    let v = args
        .get(name)
        .filter(|v| !v.is_null())
        .ok_or(ArgError::Missing { name })?;
    let n = match v {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    n.ok_or(ArgError::NotInteger { name })
}

fn str_arg<'a>(args: &'a Value, name: &'static str) -> Result<&'a str, ArgError> {
    match args.get(name) {
        None | Some(Value::Null) => Err(ArgError::Missing { name }),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ArgError::NotString { name }),
    }
}

/// A list of strings; a lone string counts as a list of one (a common model slip).
fn str_list_arg(args: &Value, name: &'static str) -> Result<Vec<String>, ArgError> {
    match args.get(name) {
        None | Some(Value::Null) => Err(ArgError::Missing { name }),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(String::from))
            .collect::<Option<Vec<_>>>()
            .ok_or(ArgError::NotStringList { name }),
        Some(_) => Err(ArgError::NotStringList { name }),
    }
}

fn ranges_arg(args: &Value) -> Result<Vec<(i64, i64)>, ArgError> {
    let a = match args.get("ranges") {
        None | Some(Value::Null) => return Err(ArgError::Missing { name: "ranges" }),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ArgError::BadRanges),
    };
    a.iter()
        .map(|r| match r.as_array().map(Vec::as_slice) {
            Some([lo, hi]) => match (lo.as_i64(), hi.as_i64()) {
                (Some(lo), Some(hi)) => Ok((lo, hi)),
                _ => Err(ArgError::BadRanges),
            },
            _ => Err(ArgError::BadRanges),
        })
        .collect()
}

/// A short quote of `s` for reasons.
fn snip(s: &str) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= 60 {
        format!("\"{one_line}\"")
    } else {
        format!("\"{}…\"", one_line.chars().take(60).collect::<String>())
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// The paper's verse detector: mostly short lines, or lines ending in a dash, over 60%.
fn is_poetry(paragraph: &str) -> bool {
    let lines: Vec<&str> = paragraph.split('\n').collect();
    if lines.len() < 2 {
        return false;
    }
    let n = lines.len() as f64;
    let short = lines.iter().filter(|l| l.trim().chars().count() < 60).count() as f64;
    let dash = lines.iter().filter(|l| l.trim().ends_with('-')).count() as f64;
    let spaced_dash = lines.iter().filter(|l| l.trim().ends_with(" -")).count() as f64;
    short / n * 0.4 + dash / n * 0.4 + spaced_dash / n * 0.2 > 0.6
}

/// Sentences of a paragraph, or its lines if it is verse.
fn paragraph_units(p: &str) -> (usize, &'static str) {
    if is_poetry(p) {
        (p.lines().filter(|l| !l.trim().is_empty()).count(), "line")
    } else {
        (split_sentences(p).len(), "sentence")
    }
}

fn count_keyword(text: &str, kw: &str) -> usize {
    if kw.is_empty() {
        return 0;
    }
    let esc = regex::escape(kw);
    // Hashtags have no word boundary before `#`; match them literally.
    let pat = if kw.starts_with('#') {
        format!("(?i){esc}")
    } else {
        format!(r"(?i)\b{esc}\b")
    };
    Regex::new(&pat).map_or(0, |re| re.find_iter(text).count())
}

fn in_range(n: i64, lo: i64, hi: i64) -> bool {
    lo <= n && n <= hi
}

/// Runs a check: `Ok((passed, reason))`, or `Err` for bad arguments (its text for the model).
fn evaluate(check: InstructionCheck, response: &str, args: &Value) -> Result<(bool, String), ArgError> {
    let clean = clean_text(response);
    let bounds = |lo: &'static str, hi: &'static str| -> Result<(i64, i64), ArgError> {
        Ok((int_arg(args, lo)?, int_arg(args, hi)?))
    };
    Ok(match check {
        C::ParagraphNumberInRange | C::SentenceNumberInRange | C::WordCountInRange => {
            let (lo, hi) = bounds("lower_bound", "upper_bound")?;
            let (n, unit) = match check {
                C::ParagraphNumberInRange => (paragraphs(&clean).len(), "paragraph"),
                C::SentenceNumberInRange => (split_sentences(&clean).len(), "sentence"),
                _ => (word_count(&clean), "word"),
            };
            (
                in_range(n as i64, lo, hi),
                format!(
                    "the response has {}; the required range is [{lo}, {hi}].",
                    plural(n, unit)
                ),
            )
        }
        C::EachParagraphSentenceNumberInRange | C::EachParagraphWordCountInRange => {
            let (lo, hi) = bounds("lower_bound", "upper_bound")?;
            let paras = paragraphs(&clean);
            let mut counts = Vec::new();
            for (i, p) in paras.iter().enumerate() {
                let (n, unit) = if check == C::EachParagraphWordCountInRange {
                    (word_count(p), "word")
                } else {
                    paragraph_units(p)
                };
                if !in_range(n as i64, lo, hi) {
                    return Ok((
                        false,
                        format!(
                            "paragraph {} has {}; the required range is [{lo}, {hi}].",
                            i + 1,
                            plural(n, unit)
                        ),
                    ));
                }
                counts.push(n.to_string());
            }
            let unit = if check == C::EachParagraphWordCountInRange {
                "words"
            } else {
                "sentences"
            };
            (
                true,
                format!(
                    "all {} have {lo} to {hi} {unit} (counts: [{}]).",
                    plural(paras.len(), "paragraph"),
                    counts.join(", ")
                ),
            )
        }
        C::EachParagraphSentenceNumberInRangeList => {
            let ranges = ranges_arg(args)?;
            let paras = paragraphs(&clean);
            if paras.len() != ranges.len() {
                return Ok((
                    false,
                    format!(
                        "the response has {} but {} were given.",
                        plural(paras.len(), "paragraph"),
                        plural(ranges.len(), "range")
                    ),
                ));
            }
            for (i, (p, (lo, hi))) in paras.iter().zip(&ranges).enumerate() {
                let n = split_sentences(p).len();
                if !in_range(n as i64, *lo, *hi) {
                    return Ok((
                        false,
                        format!(
                            "paragraph {} has {}; its required range is [{lo}, {hi}].",
                            i + 1,
                            plural(n, "sentence")
                        ),
                    ));
                }
            }
            (
                true,
                format!(
                    "each of the {} is within its range.",
                    plural(paras.len(), "paragraph")
                ),
            )
        }
        C::NotContainSubstrings | C::NotContainSubstring => {
            let subs = if check == C::NotContainSubstring {
                vec![str_arg(args, "substring")?.to_string()]
            } else {
                str_list_arg(args, "substrings")?
            };
            let lower = clean.to_lowercase();
            let found: Vec<String> = subs
                .iter()
                .filter(|s| lower.contains(&s.to_lowercase()))
                .cloned()
                .collect();
            if found.is_empty() {
                (
                    true,
                    "none of the given substrings appears in the response.".into(),
                )
            } else {
                (false, format!("the response contains {}.", py_str_list(&found)))
            }
        }
        C::EachSentenceBeginsWith
        | C::EachSentenceEndsWith
        | C::EachParagraphBeginsWith
        | C::EachParagraphEndsWith => {
            let sub = normalize_for_matching(str_arg(args, "substring")?);
            let (units, unit) = match check {
                C::EachSentenceBeginsWith | C::EachSentenceEndsWith => (split_sentences(&clean), "sentence"),
                _ => (paragraphs(&clean), "paragraph"),
            };
            let begins = matches!(check, C::EachSentenceBeginsWith | C::EachParagraphBeginsWith);
            let verb = if begins { "begin" } else { "end" };
            for (i, u) in units.iter().enumerate() {
                let n = normalize_for_matching(u);
                let ok = if begins {
                    n.starts_with(&sub)
                } else {
                    n.ends_with(&sub)
                };
                if !ok {
                    return Ok((
                        false,
                        format!("{unit} {} ({}) does not {verb} with \"{sub}\".", i + 1, snip(u)),
                    ));
                }
            }
            (
                true,
                format!("all {} {verb} with \"{sub}\".", plural(units.len(), unit)),
            )
        }
        C::ResponseBeginsWith | C::ResponseEndsWith => {
            let sub = normalize_for_matching(str_arg(args, "substring")?);
            let n = normalize_for_matching(response);
            let begins = check == C::ResponseBeginsWith;
            let verb = if begins { "begin" } else { "end" };
            let ok = if begins {
                n.starts_with(&sub)
            } else {
                n.ends_with(&sub)
            };
            let part = if begins {
                snip(
                    &n.chars()
                        .take(sub.chars().count().max(1) + 20)
                        .collect::<String>(),
                )
            } else {
                let k = n.chars().count().saturating_sub(sub.chars().count() + 20);
                snip(&n.chars().skip(k).collect::<String>())
            };
            let does = if ok { "does" } else { "does not" };
            (
                ok,
                format!("the response {does} {verb} with \"{sub}\" (it {verb}s {part})."),
            )
        }
        C::EachKeywordMentionedInRange | C::TotalKeywordsMentionedInRange => {
            let kws = str_list_arg(args, "keywords")?;
            let (lo, hi) = bounds("lower_bound_times", "upper_bound_times")?;
            let counts: Vec<usize> = kws.iter().map(|k| count_keyword(&clean, k)).collect();
            let listing = kws
                .iter()
                .zip(&counts)
                .map(|(k, c)| format!("\"{k}\": {c}"))
                .collect::<Vec<_>>()
                .join(", ");
            if check == C::TotalKeywordsMentionedInRange {
                let total: usize = counts.iter().sum();
                (
                    in_range(total as i64, lo, hi),
                    format!(
                        "the keywords appear {} in total ({listing}); the required range is [{lo}, {hi}].",
                        plural(total, "time")
                    ),
                )
            } else {
                let ok = counts.iter().all(|&c| in_range(c as i64, lo, hi));
                (
                    ok,
                    format!("keyword counts: {listing}; each must be in [{lo}, {hi}]."),
                )
            }
        }
        C::PercentagePrecision | C::NumberPrecision => {
            let p = int_arg(args, "precision")?;
            static PCT: OnceLock<Regex> = OnceLock::new();
            static NUM: OnceLock<Regex> = OnceLock::new();
            let (re, what) = if check == C::PercentagePrecision {
                (
                    PCT.get_or_init(|| Regex::new(r"(\d+\.\d+)%").expect("valid regex")),
                    "decimal percentage",
                )
            } else {
                (
                    NUM.get_or_init(|| Regex::new(r"\d+\.\d+").expect("valid regex")),
                    "decimal number",
                )
            };
            let found: Vec<&str> = re.find_iter(&clean).map(|m| m.as_str()).collect();
            let decimals = |s: &str| {
                s.trim_end_matches('%')
                    .split_once('.')
                    .map_or(0, |(_, d)| d.chars().count()) as i64
            };
            match found.iter().find(|s| decimals(s) != p) {
                Some(bad) => (
                    false,
                    format!("\"{bad}\" has {} decimal places, not {p}.", decimals(bad)),
                ),
                None if found.is_empty() => (true, format!("the response has no {what} to check.")),
                None => (
                    true,
                    format!("all {} have {p} decimal places.", plural(found.len(), what)),
                ),
            }
        }
        C::NoArabicNumber => {
            static RE: OnceLock<Regex> = OnceLock::new();
            let re = RE.get_or_init(|| Regex::new(r"\b\d+\b").expect("valid regex"));
            match re.find(&clean) {
                Some(m) => (
                    false,
                    format!("the response contains the number \"{}\".", m.as_str()),
                ),
                None => (true, "the response contains no Arabic numerals.".into()),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_with(check: InstructionCheck, response: &str, args: Value) -> ToolOutput {
        let mut ctx = ToolContext::new();
        ctx.set_text("text_0", response);
        let mut a = args;
        a.as_object_mut()
            .unwrap()
            .insert("response".into(), json!("text_0"));
        InstructionTool::new(check, None).execute(InstanceId::fresh(), &a, &ctx)
    }

    fn expect(check: InstructionCheck, response: &str, args: Value, want: &str) {
        let o = run_with(check, response, args);
        assert!(o.success, "{}", o.text);
        assert_eq!(o.reward, 0.0);
        assert_eq!(o.text, want);
    }

    const TEXT: &str = "First sentence here. Second one!\n\nThird sentence? Yes.\n\n  Final paragraph.  ";

    #[test]
    fn table_is_complete_and_unique() {
        let mut names: Vec<_> = INSTRUCTION_CHECKS.iter().map(|e| e.2).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 19);
        assert_eq!(
            InstructionCheck::from_class_name("verl.tools.instruction_following_tool.NoArabicNumberTool"),
            Some(C::NoArabicNumber)
        );
        assert_eq!(
            InstructionCheck::from_class_name("NumberPrecisionTool"),
            Some(C::NumberPrecision)
        );
        assert_eq!(InstructionCheck::from_class_name("Nope"), None);
    }

    #[test]
    fn counts() {
        let b = |lo: i64, hi: i64| json!({"lower_bound": lo, "upper_bound": hi});
        expect(
            C::ParagraphNumberInRange,
            TEXT,
            b(1, 3),
            "Check result: True\nReason: the response has 3 paragraphs; the required range is [1, 3].",
        );
        expect(
            C::ParagraphNumberInRange,
            TEXT,
            b(4, 9),
            "Check result: False\nReason: the response has 3 paragraphs; the required range is [4, 9].",
        );
        expect(
            C::SentenceNumberInRange,
            TEXT,
            b(5, 5),
            "Check result: True\nReason: the response has 5 sentences; the required range is [5, 5].",
        );
        expect(
            C::WordCountInRange,
            TEXT,
            b(0, 5),
            "Check result: False\nReason: the response has 10 words; the required range is [0, 5].",
        );
        expect(
            C::EachParagraphSentenceNumberInRange,
            TEXT,
            b(1, 2),
            "Check result: True\nReason: all 3 paragraphs have 1 to 2 sentences (counts: [2, 2, 1]).",
        );
        expect(
            C::EachParagraphSentenceNumberInRange,
            TEXT,
            b(2, 2),
            "Check result: False\nReason: paragraph 3 has 1 sentence; the required range is [2, 2].",
        );
        // Verse: lines are counted.
        expect(
            C::EachParagraphSentenceNumberInRange,
            "Roses are red -\nViolets are blue -\nSugar is sweet -",
            b(3, 3),
            "Check result: True\nReason: all 1 paragraph have 3 to 3 sentences (counts: [3]).",
        );
        // Short lines alone do not make verse (the paper's score tops out at 0.4 for them).
        expect(
            C::EachParagraphSentenceNumberInRange,
            "Roses are red\nViolets are blue\nSugar is sweet",
            b(3, 3),
            "Check result: False\nReason: paragraph 1 has 1 sentence; the required range is [3, 3].",
        );
        expect(
            C::EachParagraphWordCountInRange,
            TEXT,
            b(2, 5),
            "Check result: True\nReason: all 3 paragraphs have 2 to 5 words (counts: [5, 3, 2]).",
        );
        expect(
            C::EachParagraphWordCountInRange,
            TEXT,
            b(3, 5),
            "Check result: False\nReason: paragraph 3 has 2 words; the required range is [3, 5].",
        );
        expect(
            C::EachParagraphSentenceNumberInRangeList,
            TEXT,
            json!({"ranges": [[2, 2], [1, 2], [1, 1]]}),
            "Check result: True\nReason: each of the 3 paragraphs is within its range.",
        );
        expect(
            C::EachParagraphSentenceNumberInRangeList,
            TEXT,
            json!({"ranges": [[2, 2], [3, 4], [1, 1]]}),
            "Check result: False\nReason: paragraph 2 has 2 sentences; its required range is [3, 4].",
        );
        expect(
            C::EachParagraphSentenceNumberInRangeList,
            TEXT,
            json!({"ranges": [[1, 2]]}),
            "Check result: False\nReason: the response has 3 paragraphs but 1 range were given.",
        );
    }

    #[test]
    fn substrings_and_affixes() {
        expect(
            C::NotContainSubstrings,
            TEXT,
            json!({"substrings": ["FINAL", "zebra"]}),
            "Check result: False\nReason: the response contains ['FINAL'].",
        );
        expect(
            C::NotContainSubstrings,
            TEXT,
            json!({"substrings": ["zebra"]}),
            "Check result: True\nReason: none of the given substrings appears in the response.",
        );
        expect(
            C::NotContainSubstring,
            TEXT,
            json!({"substring": "second"}),
            "Check result: False\nReason: the response contains ['second'].",
        );
        expect(
            C::EachSentenceBeginsWith,
            "Yes we can. Yes indeed!",
            json!({"substring": "yes"}),
            "Check result: True\nReason: all 2 sentences begin with \"yes\".",
        );
        expect(
            C::EachSentenceBeginsWith,
            "Yes we can. No way.",
            json!({"substring": "Yes"}),
            "Check result: False\nReason: sentence 2 (\"No way.\") does not begin with \"yes\".",
        );
        expect(
            C::EachSentenceEndsWith,
            "It is done. All is done.",
            json!({"substring": "done."}),
            "Check result: True\nReason: all 2 sentences end with \"done\".",
        );
        expect(C::EachParagraphBeginsWith, TEXT, json!({"substring": "first"}), "Check result: False\nReason: paragraph 2 (\"Third sentence? Yes.\") does not begin with \"first\".");
        expect(
            C::EachParagraphEndsWith,
            "A end\n\nB END...",
            json!({"substring": "end"}),
            "Check result: True\nReason: all 2 paragraphs end with \"end\".",
        );
        expect(C::ResponseBeginsWith, TEXT, json!({"substring": "...first sentence"}), "Check result: True\nReason: the response does begin with \"first sentence\" (it begins \"first sentence here. second one!\").");
        expect(C::ResponseEndsWith, TEXT, json!({"substring": "Paragraph"}), "Check result: True\nReason: the response does end with \"paragraph\" (it ends \"ence? yes. final paragraph\").");
        expect(C::ResponseEndsWith, TEXT, json!({"substring": "yes"}), "Check result: False\nReason: the response does not end with \"yes\" (it ends \"yes. final paragraph\").");
    }

    #[test]
    fn keywords_and_numbers() {
        let t = "The cat sat. A category is not a cat. #Cats and #cats! CAT";
        let k = |kw: Value, lo: i64, hi: i64| json!({"keywords": kw, "lower_bound_times": lo, "upper_bound_times": hi});
        expect(
            C::EachKeywordMentionedInRange,
            t,
            k(json!(["cat", "#cats"]), 2, 3),
            "Check result: True\nReason: keyword counts: \"cat\": 3, \"#cats\": 2; each must be in [2, 3].",
        );
        expect(
            C::EachKeywordMentionedInRange,
            t,
            k(json!(["cat", "dog"]), 1, 3),
            "Check result: False\nReason: keyword counts: \"cat\": 3, \"dog\": 0; each must be in [1, 3].",
        );
        expect(C::TotalKeywordsMentionedInRange, t, k(json!("cat"), 4, 9), "Check result: False\nReason: the keywords appear 3 times in total (\"cat\": 3); the required range is [4, 9].");
        expect(C::TotalKeywordsMentionedInRange, t, k(json!(["cat", "sat"]), 4, 4), "Check result: True\nReason: the keywords appear 4 times in total (\"cat\": 3, \"sat\": 1); the required range is [4, 4].");
        expect(
            C::PercentagePrecision,
            "Up 12.50% and 3.10%, 7% flat.",
            json!({"precision": 2}),
            "Check result: True\nReason: all 2 decimal percentages have 2 decimal places.",
        );
        expect(
            C::PercentagePrecision,
            "Up 12.5% and 3.10%.",
            json!({"precision": 2}),
            "Check result: False\nReason: \"12.5%\" has 1 decimal places, not 2.",
        );
        expect(
            C::PercentagePrecision,
            "Up 12%.",
            json!({"precision": 2}),
            "Check result: True\nReason: the response has no decimal percentage to check.",
        );
        expect(
            C::NumberPrecision,
            "Pi is 3.14, e is 2.718, 10 apples.",
            json!({"precision": 2}),
            "Check result: False\nReason: \"2.718\" has 3 decimal places, not 2.",
        );
        expect(
            C::NumberPrecision,
            "Pi is 3.14 and 10 apples.",
            json!({"precision": "2"}),
            "Check result: True\nReason: all 1 decimal number have 2 decimal places.",
        );
        expect(
            C::NoArabicNumber,
            "Twenty cats.",
            json!({}),
            "Check result: True\nReason: the response contains no Arabic numerals.",
        );
        expect(
            C::NoArabicNumber,
            "Twenty cats, or 20.",
            json!({}),
            "Check result: False\nReason: the response contains the number \"20\".",
        );
        expect(
            C::NoArabicNumber,
            "Model A3 is fine.",
            json!({}),
            "Check result: True\nReason: the response contains no Arabic numerals.",
        );
    }

    #[test]
    fn bad_arguments() {
        let err = |check, args: Value, want: &str| {
            let o = run_with(check, TEXT, args);
            assert!(!o.success);
            assert_eq!(o.reward, -0.05);
            assert_eq!(o.text, want);
        };
        err(
            C::WordCountInRange,
            json!({"upper_bound": 3}),
            "Error: missing required parameter 'lower_bound'.",
        );
        err(
            C::WordCountInRange,
            json!({"lower_bound": "few", "upper_bound": 3}),
            "Error: 'lower_bound' must be an integer.",
        );
        err(
            C::WordCountInRange,
            json!({"lower_bound": 1.5, "upper_bound": 3}),
            "Error: 'lower_bound' must be an integer.",
        );
        err(
            C::NotContainSubstring,
            json!({"substring": 3}),
            "Error: 'substring' must be a string.",
        );
        err(
            C::NotContainSubstrings,
            json!({"substrings": [1]}),
            "Error: 'substrings' must be a list of strings.",
        );
        err(
            C::EachParagraphSentenceNumberInRangeList,
            json!({"ranges": [[1]]}),
            "Error: 'ranges' must be a list of [lower_bound, upper_bound] pairs of integers.",
        );
        err(
            C::EachParagraphSentenceNumberInRangeList,
            json!({}),
            "Error: missing required parameter 'ranges'.",
        );
        err(
            C::PercentagePrecision,
            json!({}),
            "Error: missing required parameter 'precision'.",
        );
        err(
            C::EachKeywordMentionedInRange,
            json!({"keywords": ["a"], "lower_bound_times": 1}),
            "Error: missing required parameter 'upper_bound_times'.",
        );
        // The response key.
        let mut ctx = ToolContext::new();
        ctx.set_text("text_0", "hi");
        let t = InstructionTool::new(C::NoArabicNumber, None);
        let o = t.execute(InstanceId::fresh(), &json!({"response": "text_1"}), &ctx);
        assert_eq!(o.text, "Error when executing tool: Cannot resolve text response key 'text_1'. Current text responses you have are: ['text_0']. ");
        assert!(!o.success);
        let o = t.execute(InstanceId::fresh(), &json!({}), &ctx);
        assert_eq!(o.text, "Error: missing required parameter 'response'.");
        let o = t.execute(
            InstanceId::fresh(),
            &json!({"response": "text_0"}),
            &ToolContext::new(),
        );
        assert_eq!(o.text, "Error when executing tool: Cannot resolve text response key 'text_0'. Current text responses you have are: []. ");
    }

    #[test]
    fn default_schemas_keep_full_json_schema() {
        let s = C::EachParagraphSentenceNumberInRangeList.default_schema();
        assert_eq!(
            s["function"]["parameters"]["properties"]["ranges"]["items"]["items"],
            json!({"type": "integer", "minimum": 0})
        );
        assert_eq!(
            s["function"]["parameters"]["required"],
            json!(["response", "ranges"])
        );
        let s = C::NoArabicNumber.default_schema();
        assert_eq!(s["function"]["parameters"]["required"], json!(["response"]));
    }
}
