//! The Hermes tool-call format: parsing the model's `<tool_call>` block, truncating tool text,
//! and the system prompt listing the tools.

use serde_json::Value;

/// One parsed call: `{"name": …, "arguments": {…}}` between `<tool_call>` tags.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedToolCall {
    pub name: String,
    /// Always a JSON object.
    pub arguments: Value,
}

use armt_processing::hermes::{CALL_FORMAT, TOOL_CALL_CLOSE as CLOSE, TOOL_CALL_OPEN as OPEN};

/// Appended to every parse error so the model can retry in the right format.
struct FormatHint;

impl std::fmt::Display for FormatHint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Write exactly one call as {CALL_FORMAT}")
    }
}
const FORMAT_HINT: FormatHint = FormatHint;

/// A malformed `<tool_call>`; its text (with the format hint) is what the model reads as the
/// tool response.
#[derive(Debug, thiserror::Error)]
pub enum ToolCallError {
    /// The turn ended on `</tool_call>` without an opening tag (found by the rollout engine,
    /// which stops generation at the closing tag).
    #[error("Error: no {OPEN} found.")]
    NoOpeningTag,
    #[error("Error: the tool call has no closing {CLOSE} tag. {}", FORMAT_HINT)]
    NoClosingTag,
    #[error("Error: the tool call is not valid JSON ({source}). {}", FORMAT_HINT)]
    Json {
        #[source]
        source: serde_json::Error,
    },
    #[error("Error: the tool call must be a JSON object, got {body}. {}", FORMAT_HINT)]
    NotObject { body: String },
    #[error("Error: the tool call needs a string \"name\". {}", FORMAT_HINT)]
    MissingName,
    #[error("Error: the tool call's \"arguments\" must be a JSON object. {}", FORMAT_HINT)]
    ArgumentsNotObject,
    #[error("Error: the tool call needs \"arguments\" (a JSON object). {}", FORMAT_HINT)]
    MissingArguments,
}

/// Parses the first `<tool_call>…</tool_call>` block of an assistant turn.
///
/// `None`: there is no `<tool_call>` (the turn is an answer). `Some(Err(e))`: the call is
/// malformed and `e`'s text is what the model should read as the tool response (verl's Hermes
/// parser silently drops such calls; telling the model lets it retry). Only the first call
/// counts, as ARM's agent runs `tool_calls[:1]`.
pub fn parse_tool_call(assistant_text: &str) -> Option<Result<ParsedToolCall, ToolCallError>> {
    let start = assistant_text.find(OPEN)? + OPEN.len();
    let rest = &assistant_text[start..];
    let Some(end) = rest.find(CLOSE) else {
        return Some(Err(ToolCallError::NoClosingTag));
    };
    let body = rest[..end].trim();
    Some(parse_body(body))
}

fn parse_body(body: &str) -> Result<ParsedToolCall, ToolCallError> {
    let v: Value = serde_json::from_str(body).map_err(|source| ToolCallError::Json { source })?;
    let Value::Object(mut obj) = v else {
        return Err(ToolCallError::NotObject { body: body.into() });
    };
    let name = match obj.remove("name") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        _ => return Err(ToolCallError::MissingName),
    };
    let arguments = match obj.remove("arguments") {
        Some(a @ Value::Object(_)) => a,
        // Some models write the arguments as a JSON string (OpenAI's wire format); accept it
        // when it holds an object.
        Some(Value::String(s)) => match serde_json::from_str::<Value>(&s) {
            Ok(a @ Value::Object(_)) => a,
            _ => return Err(ToolCallError::ArgumentsNotObject),
        },
        Some(_) => return Err(ToolCallError::ArgumentsNotObject),
        None => return Err(ToolCallError::MissingArguments),
    };
    Ok(ParsedToolCall { name, arguments })
}

/// The marker put where text was cut (ARM's "middle" truncation side).
pub const TRUNCATION_MARKER: &str = "...(truncated)...";

/// Keeps at most `max_chars` characters of `text` (plus the marker): the first half and the
/// last half, joined by `...(truncated)...`, like ARM's default `tool_response_truncate_side
/// = "middle"` (head `max//2`, tail the rest). Counts characters, never splits one.
pub fn truncate_tool_text(text: &str, max_chars: usize) -> String {
    let n = text.chars().count();
    if n <= max_chars {
        return text.to_string();
    }
    let head = max_chars / 2;
    let tail = max_chars - head;
    let head_end = text.char_indices().nth(head).map_or(text.len(), |(i, _)| i);
    let tail_start = text.char_indices().nth(n - tail).map_or(text.len(), |(i, _)| i);
    format!("{}{TRUNCATION_MARKER}{}", &text[..head_end], &text[tail_start..])
}

/// ARM-Thinker's `CommonSystemTemplate` with the tools' schemas, one per line, printed like
/// `json.dumps(schema, ensure_ascii=False)`. With no tools it is `"You are a helpful
/// assistant."`. Equals the system turn `armt_processing::render_chat` writes for the same
/// tools when the chat has no system message (checked by a test).
pub fn system_prompt(schemas: &[Value]) -> String {
    let mut out = String::from(armt_processing::DEFAULT_SYSTEM);
    if !schemas.is_empty() {
        armt_processing::hermes::write_tools_block(&mut out, schemas);
    }
    out
}

/// Python's `repr` of a JSON value (`[1, 2.5, 'a', True, None]`), for error texts that the
/// paper formats with f-strings of the raw arguments.
pub fn py_repr(v: &Value) -> String {
    let mut out = String::new();
    write_py_repr(&mut out, v);
    out
}

fn write_py_repr(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("None"),
        Value::Bool(b) => out.push_str(if *b { "True" } else { "False" }),
        Value::Number(_) => armt_processing::write_py_json(out, v),
        Value::String(s) => write_py_str(out, s),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_py_repr(out, x);
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_py_str(out, k);
                out.push_str(": ");
                write_py_repr(out, x);
            }
            out.push('}');
        }
    }
}

/// Python's str repr: single quotes unless the text has a `'` and no `"`.
fn write_py_str(out: &mut String, s: &str) {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(q);
}

/// Python's repr of a list of strings (`['original_image', 'observation_1']`).
pub(crate) fn py_str_list(items: &[String]) -> String {
    py_repr(&Value::Array(
        items.iter().map(|s| Value::String(s.clone())).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_first_call_only() {
        let t = "<think>hm</think>\n<tool_call>\n{\"name\": \"image_zoom_in_tool\", \"arguments\": {\"image\": \"original_image\", \"bbox_2d\": [1, 2, 3, 4]}}\n</tool_call><tool_call>{\"name\": \"other\", \"arguments\": {}}</tool_call>";
        let c = parse_tool_call(t).unwrap().unwrap();
        assert_eq!(c.name, "image_zoom_in_tool");
        assert_eq!(
            c.arguments,
            json!({"image": "original_image", "bbox_2d": [1, 2, 3, 4]})
        );
        // Argument key order survives (preserve_order), so re-rendering matches the model's text.
        let keys: Vec<_> = c.arguments.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, vec!["image", "bbox_2d"]);
    }

    #[test]
    fn no_call_is_none() {
        assert!(parse_tool_call("<think>x</think><answer>1</answer>").is_none());
        assert!(parse_tool_call("").is_none());
    }

    #[test]
    fn string_arguments_accepted() {
        let c =
            parse_tool_call("<tool_call>{\"name\": \"t\", \"arguments\": \"{\\\"a\\\": 1}\"}</tool_call>")
                .unwrap()
                .unwrap();
        assert_eq!(c.arguments, json!({"a": 1}));
    }

    #[test]
    fn malformed_calls_are_error_texts() {
        let e = parse_tool_call("<tool_call>{\"name\": \"t\", \"arguments\": {}}")
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("Error: the tool call has no closing </tool_call> tag. Write exactly one call as <tool_call>\n"), "{e}");
        let e = parse_tool_call("<tool_call>{\"name\": \"t\", \"arguments\": {</tool_call>")
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("Error: the tool call is not valid JSON ("), "{e}");
        let e = parse_tool_call("<tool_call>[1]</tool_call>")
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("Error: the tool call must be a JSON object, got [1]."),
            "{e}"
        );
        let e = parse_tool_call("<tool_call>{\"arguments\": {}}</tool_call>")
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("Error: the tool call needs a string \"name\"."),
            "{e}"
        );
        let e = parse_tool_call("<tool_call>{\"name\": \"t\"}</tool_call>")
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("Error: the tool call needs \"arguments\" (a JSON object)."),
            "{e}"
        );
        let e = parse_tool_call("<tool_call>{\"name\": \"t\", \"arguments\": [1]}</tool_call>")
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("Error: the tool call's \"arguments\" must be a JSON object."),
            "{e}"
        );
    }

    #[test]
    fn truncation_keeps_head_and_tail() {
        assert_eq!(truncate_tool_text("abcdef", 6), "abcdef");
        assert_eq!(truncate_tool_text("abcdefgh", 4), "ab...(truncated)...gh");
        // Odd limit: tail gets the extra char, as Python's text[-length//2:] does.
        assert_eq!(truncate_tool_text("abcdefgh", 5), "ab...(truncated)...fgh");
        // Multi-byte characters are counted, never split.
        assert_eq!(truncate_tool_text("ééééé", 2), "é...(truncated)...é");
        assert_eq!(truncate_tool_text("日本語テキスト", 3), "日...(truncated)...スト");
        assert_eq!(truncate_tool_text("abc", 0), "...(truncated)...");
    }

    #[test]
    fn python_repr() {
        assert_eq!(
            py_repr(&json!([1, 2.5, "a", true, null, 100.0])),
            "[1, 2.5, 'a', True, None, 100.0]"
        );
        assert_eq!(py_repr(&json!("it's")), "\"it's\"");
        assert_eq!(py_repr(&json!({"a": [1]})), "{'a': [1]}");
        assert_eq!(
            py_str_list(&["original_image".into(), "observation_1".into()]),
            "['original_image', 'observation_1']"
        );
    }

    #[test]
    fn system_prompt_texts() {
        assert_eq!(system_prompt(&[]), "You are a helpful assistant.");
        let s = system_prompt(&[
            json!({"type": "function", "function": {"name": "f", "description": "é", "parameters": {"type": "object", "properties": {"x": {"type": "number", "minimum": 0.5}}}}}),
        ]);
        assert_eq!(
            s,
            "You are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{\"type\": \"function\", \"function\": {\"name\": \"f\", \"description\": \"é\", \"parameters\": {\"type\": \"object\", \"properties\": {\"x\": {\"type\": \"number\", \"minimum\": 0.5}}}}}\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>"
        );
    }
}
