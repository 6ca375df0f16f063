//! Chat data model, CHAT.json loading, and the hand-written chat-template renderer.
//!
//! The renderer implements `configs/chat_template.jinja`: the official Qwen2.5-VL template
//! (image placeholders, string-or-list content, default system "You are a helpful assistant.")
//! merged with Qwen2.5's Hermes tool-calling template (a `# Tools` system block, `<tool_call>`
//! blocks for assistant calls, consecutive tool messages grouped into one user turn of
//! `<tool_response>`s, which may contain images). Golden parity with transformers' Jinja
//! rendering is checked by the integration tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use crate::error::{ProcessingError, Result};
use crate::hermes;

/// The text the template puts in place of every image; expanded to one pad per merged patch later.
pub const IMAGE_PLACEHOLDER: &str = "<|vision_start|><|image_pad|><|vision_end|>";
/// The single pad token inside [`IMAGE_PLACEHOLDER`].
pub const IMAGE_PAD: &str = "<|image_pad|>";
/// Default system text of the Qwen2.5-VL template (also used before the `# Tools` block,
/// as ARM-Thinker's training template does; the text-only Qwen2.5 template says
/// "You are Qwen, created by Alibaba Cloud. You are a helpful assistant." instead).
pub const DEFAULT_SYSTEM: &str = "You are a helpful assistant.";

const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// One function call made by the assistant.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// Rendered with Python `json.dumps` spacing, keys in their original order.
    pub arguments: Value,
}

/// Where an image comes from.
#[derive(Debug, Clone)]
pub enum ImageSource {
    /// An image file (already resolved against the chat file's folder).
    Path(PathBuf),
    /// An in-memory image, e.g. the output of a tool during a rollout.
    Loaded(Arc<image::DynamicImage>),
}

/// One element of list content.
#[derive(Debug, Clone)]
pub enum ContentPart {
    Image(ImageSource),
    Text(String),
}

/// Message content: a plain string or a list of parts (as in HF / OpenAI messages).
#[derive(Debug, Clone)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl Content {
    /// Jinja truthiness of the content value: a non-empty string or a non-empty list.
    fn is_truthy(&self) -> bool {
        match self {
            Content::Text(s) => !s.is_empty(),
            Content::Parts(p) => !p.is_empty(),
        }
    }

    /// Images in order of appearance.
    pub fn images(&self) -> impl Iterator<Item = &ImageSource> {
        let parts: &[ContentPart] = match self {
            Content::Parts(p) => p,
            Content::Text(_) => &[],
        };
        parts.iter().filter_map(|p| match p {
            ContentPart::Image(src) => Some(src),
            ContentPart::Text(_) => None,
        })
    }
}

/// One chat message. `role` is one of system / user / assistant / tool.
#[derive(Debug, Clone)]
pub struct Message {
    pub role: String,
    pub content: Content,
    /// Only meaningful for assistant messages.
    pub tool_calls: Vec<ToolCall>,
}

impl Message {
    /// A message without tool calls.
    pub fn new(role: impl Into<String>, content: Content) -> Self {
        Self {
            role: role.into(),
            content,
            tool_calls: Vec::new(),
        }
    }
}

/// A chat as read from CHAT.json.
#[derive(Debug, Clone)]
pub struct Chat {
    pub messages: Vec<Message>,
    /// OpenAI-style function schemas; `None` or empty means the no-tools branch.
    pub tools: Option<Vec<Value>>,
    pub add_generation_prompt: bool,
}

fn chat_err(path: &Path, location: impl Into<String>, reason: impl Into<String>) -> ProcessingError {
    ProcessingError::Chat {
        path: path.to_path_buf(),
        location: location.into(),
        reason: reason.into(),
    }
}

impl Chat {
    /// Reads `{"messages": [...], "add_generation_prompt": bool, "tools": [...]}`.
    ///
    /// Image paths are resolved against the file's folder and must exist. Tool-call
    /// `arguments` given as a JSON string are parsed, so they render as an object, the way
    /// the model saw them in training. `add_generation_prompt` defaults to false (as in HF).
    pub fn from_json_file(path: &Path) -> Result<Chat> {
        let text = std::fs::read_to_string(path).map_err(|source| ProcessingError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if text.starts_with('\u{feff}') {
            return Err(chat_err(
                path,
                "start of file",
                "the file starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without BOM",
            ));
        }
        let root: Value = serde_json::from_str(&text).map_err(|source| ProcessingError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Self::from_value(&root, path, &base)
    }

    fn from_value(root: &Value, path: &Path, base: &Path) -> Result<Chat> {
        let obj = root
            .as_object()
            .ok_or_else(|| chat_err(path, "top level", "expected a JSON object with \"messages\""))?;
        let msgs = obj
            .get("messages")
            .ok_or_else(|| chat_err(path, "top level", "missing \"messages\""))?
            .as_array()
            .ok_or_else(|| chat_err(path, "messages", "must be a list"))?;
        let add_generation_prompt = match obj.get("add_generation_prompt") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(chat_err(
                    path,
                    "add_generation_prompt",
                    format!("must be a boolean, got {other}"),
                ))
            }
        };
        let tools = match obj.get("tools") {
            None | Some(Value::Null) => None,
            Some(Value::Array(a)) => {
                for (i, t) in a.iter().enumerate() {
                    if !t.is_object() {
                        return Err(chat_err(
                            path,
                            format!("tools[{i}]"),
                            "must be an object (a function schema)",
                        ));
                    }
                }
                Some(a.clone())
            }
            Some(_) => return Err(chat_err(path, "tools", "must be a list")),
        };
        let messages = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| parse_message(m, i, path, base))
            .collect::<Result<Vec<_>>>()?;
        Ok(Chat {
            messages,
            tools,
            add_generation_prompt,
        })
    }
}

fn parse_message(m: &Value, i: usize, path: &Path, base: &Path) -> Result<Message> {
    let loc = format!("messages[{i}]");
    let obj = m
        .as_object()
        .ok_or_else(|| chat_err(path, &loc, "must be an object"))?;
    let role = match obj.get("role") {
        Some(Value::String(r)) => r.clone(),
        Some(_) => return Err(chat_err(path, &loc, "\"role\" must be a string")),
        None => return Err(chat_err(path, &loc, "missing \"role\"")),
    };
    if !ROLES.contains(&role.as_str()) {
        return Err(chat_err(
            path,
            &loc,
            format!("bad role {role:?} (expected one of {ROLES:?})"),
        ));
    }
    let tool_calls = match obj.get("tool_calls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(calls)) => calls
            .iter()
            .enumerate()
            .map(|(j, c)| parse_tool_call(c, &format!("{loc}.tool_calls[{j}]"), path))
            .collect::<Result<Vec<_>>>()?,
        Some(_) => return Err(chat_err(path, &loc, "\"tool_calls\" must be a list")),
    };
    if !tool_calls.is_empty() && role != "assistant" {
        return Err(chat_err(
            path,
            &loc,
            format!("only assistant messages may have tool_calls, not {role:?}"),
        ));
    }
    let content = match obj.get("content") {
        Some(Value::String(s)) => Content::Text(s.clone()),
        Some(Value::Array(parts)) => Content::Parts(
            parts
                .iter()
                .enumerate()
                .map(|(j, p)| parse_part(p, &format!("{loc}.content[{j}]"), path, base))
                .collect::<Result<Vec<_>>>()?,
        ),
        // OpenAI writes `"content": null` for pure tool-call turns.
        None | Some(Value::Null) if !tool_calls.is_empty() => Content::Text(String::new()),
        None | Some(Value::Null) => return Err(chat_err(path, &loc, "missing \"content\"")),
        Some(_) => {
            return Err(chat_err(
                path,
                &loc,
                "\"content\" must be a string or a list of parts",
            ))
        }
    };
    Ok(Message {
        role,
        content,
        tool_calls,
    })
}

fn parse_tool_call(c: &Value, loc: &str, path: &Path) -> Result<ToolCall> {
    // Accept both `{"type": "function", "function": {...}}` and a bare `{name, arguments}`,
    // as the Hermes template does (`tool_call.function if defined`).
    let f = c.get("function").unwrap_or(c);
    let name = f
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| chat_err(path, loc, "missing string \"name\""))?
        .to_string();
    let arguments = match f.get("arguments") {
        Some(Value::String(s)) => serde_json::from_str(s).map_err(|e| {
            chat_err(
                path,
                loc,
                format!("\"arguments\" is a string but not valid JSON: {e}"),
            )
        })?,
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => {
            return Err(chat_err(
                path,
                loc,
                "\"arguments\" must be an object or a JSON string",
            ))
        }
        None => return Err(chat_err(path, loc, "missing \"arguments\"")),
    };
    Ok(ToolCall { name, arguments })
}

fn parse_part(p: &Value, loc: &str, path: &Path, base: &Path) -> Result<ContentPart> {
    let obj = p
        .as_object()
        .ok_or_else(|| chat_err(path, loc, "a content part must be an object"))?;
    let ty = obj.get("type").and_then(Value::as_str);
    let kind = match ty {
        Some(t) => t,
        // Parts without "type" are classified by key, like the VL template does.
        None if obj.contains_key("image") => "image",
        None if obj.contains_key("image_url") => "image_url",
        None if obj.contains_key("text") => "text",
        None => return Err(chat_err(path, loc, "part has no \"type\"")),
    };
    match kind {
        "text" => match obj.get("text") {
            Some(Value::String(s)) => Ok(ContentPart::Text(s.clone())),
            _ => Err(chat_err(path, loc, "text part needs a string \"text\"")),
        },
        "image" | "image_url" => {
            let raw = match (obj.get("image"), obj.get("image_url")) {
                (Some(Value::String(s)), _) => s.as_str(),
                (_, Some(Value::String(s))) => s.as_str(),
                (_, Some(Value::Object(u))) => u
                    .get("url")
                    .and_then(Value::as_str)
                    .ok_or_else(|| chat_err(path, loc, "\"image_url\" needs a string \"url\""))?,
                _ => {
                    return Err(chat_err(
                        path,
                        loc,
                        "image part needs a string \"image\" or \"image_url\"",
                    ))
                }
            };
            if raw.starts_with("data:") || raw.starts_with("http://") || raw.starts_with("https://") {
                return Err(chat_err(
                    path,
                    loc,
                    "only image file paths are supported (no data: or http URLs)",
                ));
            }
            let rel = raw.strip_prefix("file://").unwrap_or(raw);
            let full = base.join(rel);
            if !full.is_file() {
                return Err(chat_err(
                    path,
                    loc,
                    format!("image file {} does not exist", full.display()),
                ));
            }
            Ok(ContentPart::Image(ImageSource::Path(full)))
        }
        other => Err(chat_err(
            path,
            loc,
            format!("unknown part type {other:?} (expected \"text\", \"image\" or \"image_url\")"),
        )),
    }
}

fn render_content(out: &mut String, content: &Content) {
    match content {
        Content::Text(s) => out.push_str(s),
        Content::Parts(parts) => {
            for p in parts {
                match p {
                    ContentPart::Image(_) => out.push_str(IMAGE_PLACEHOLDER),
                    ContentPart::Text(t) => out.push_str(t),
                }
            }
        }
    }
}

/// Renders the chat exactly as `configs/chat_template.jinja` does, with one
/// `<|image_pad|>` per image (not yet expanded).
pub fn render_chat(messages: &[Message], tools: Option<&[Value]>, add_generation_prompt: bool) -> String {
    let tools = tools.filter(|t| !t.is_empty());
    let first_is_system = messages.first().is_some_and(|m| m.role == "system");
    let mut out = String::new();
    if let Some(tools) = tools {
        out.push_str("<|im_start|>system\n");
        match messages.first() {
            Some(m) if first_is_system => render_content(&mut out, &m.content),
            _ => out.push_str(DEFAULT_SYSTEM),
        }
        hermes::write_tools_block(&mut out, tools);
        out.push_str("<|im_end|>\n");
    } else if !messages.is_empty() && !first_is_system {
        out.push_str("<|im_start|>system\n");
        out.push_str(DEFAULT_SYSTEM);
        out.push_str("<|im_end|>\n");
    }
    for (i, m) in messages.iter().enumerate() {
        if i == 0 && first_is_system && tools.is_some() {
            continue; // already emitted in front of the tools block
        }
        match m.role.as_str() {
            "assistant" if !m.tool_calls.is_empty() => {
                out.push_str("<|im_start|>assistant");
                if m.content.is_truthy() {
                    out.push('\n');
                    render_content(&mut out, &m.content);
                }
                for tc in &m.tool_calls {
                    hermes::write_tool_call(&mut out, &tc.name, &tc.arguments);
                }
                out.push_str("<|im_end|>\n");
            }
            "tool" => {
                if i == 0 || messages[i - 1].role != "tool" {
                    out.push_str("<|im_start|>user");
                }
                out.push('\n');
                out.push_str(hermes::TOOL_RESPONSE_OPEN);
                out.push('\n');
                render_content(&mut out, &m.content);
                out.push('\n');
                out.push_str(hermes::TOOL_RESPONSE_CLOSE);
                if i + 1 == messages.len() || messages[i + 1].role != "tool" {
                    out.push_str("<|im_end|>\n");
                }
            }
            role => {
                out.push_str("<|im_start|>");
                out.push_str(role);
                out.push('\n');
                render_content(&mut out, &m.content);
                out.push_str("<|im_end|>\n");
            }
        }
    }
    if add_generation_prompt {
        out.push_str("<|im_start|>assistant\n");
    }
    out
}

/// Serialises like Python's `json.dumps(v, ensure_ascii=False)` (what transformers' `tojson`
/// filter calls): `", "` / `": "` separators, insertion key order, Python float repr.
pub fn write_py_json(out: &mut String, v: &Value) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                out.push_str(&py_float_repr(f));
            } else {
                out.push_str(&n.to_string());
            }
        }
        // serde_json escapes exactly `"`, `\`, and control characters (as \b \f \n \r \t or
        // \u00xx), leaving other non-ASCII text raw: the same as json.dumps(ensure_ascii=False).
        Value::String(s) => out.push_str(&Value::String(s.clone()).to_string()),
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_py_json(out, x);
            }
            out.push(']');
        }
        Value::Object(o) => {
            out.push('{');
            for (i, (k, x)) in o.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_py_json(out, x);
            }
            out.push('}');
        }
    }
}

/// Python's `repr(float)`: shortest round-trip digits; positional notation for decimal
/// exponents in [-4, 16), otherwise `d.ddde+XX` with at least two exponent digits.
fn py_float_repr(f: f64) -> String {
    if !f.is_finite() {
        // json.dumps writes these (allow_nan=True); JSON input can never contain them.
        return if f.is_nan() {
            "NaN".into()
        } else if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let sci = format!("{f:e}"); // shortest digits, e.g. "-1.25e-7", "1e16"
    let (mant, exp) = sci.split_once('e').expect("LowerExp always has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (sign, mant) = mant.strip_prefix('-').map_or(("", mant), |m| ("-", m));
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // position of the decimal point within `digits`
        let body = if point <= 0 {
            format!("0.{}{}", "0".repeat((-point) as usize), digits)
        } else if point as usize >= digits.len() {
            format!("{}{}.0", digits, "0".repeat(point as usize - digits.len()))
        } else {
            format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
        };
        format!("{sign}{body}")
    } else {
        let m = if digits.len() > 1 {
            format!("{}.{}", &digits[..1], &digits[1..])
        } else {
            digits
        };
        format!("{sign}{m}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn js(v: &str) -> String {
        let mut s = String::new();
        write_py_json(&mut s, &serde_json::from_str(v).unwrap());
        s
    }

    #[test]
    fn python_json_spacing_order_and_unicode() {
        // Expected strings are what CPython 3.11 json.dumps(..., ensure_ascii=False) prints.
        assert_eq!(
            js(r#"{"z": 1, "a": [1, 2.5, null, true], "é": "中文 \"q\"\n"}"#),
            "{\"z\": 1, \"a\": [1, 2.5, null, true], \"é\": \"中文 \\\"q\\\"\\n\"}"
        );
        assert_eq!(
            js("[1.0, 1e-5, 1e16, 123456789012345678.0, 0.0001, -0.5, 1.5e300, 100.0]"),
            "[1.0, 1e-05, 1e+16, 1.2345678901234568e+17, 0.0001, -0.5, 1.5e+300, 100.0]"
        );
        assert_eq!(js(r#""\u0001\u007f\t""#), "\"\\u0001\u{7f}\\t\"");
        assert_eq!(js("{}"), "{}");
        assert_eq!(js("[]"), "[]");
    }

    #[test]
    fn renders_vl_default_system_and_images() {
        let msgs = vec![Message::new(
            "user",
            Content::Parts(vec![
                ContentPart::Image(ImageSource::Path("a.png".into())),
                ContentPart::Text("What is this?".into()),
            ]),
        )];
        assert_eq!(
            render_chat(&msgs, None, true),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n\
             <|vision_start|><|image_pad|><|vision_end|>What is this?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn renders_tool_call_and_grouped_tool_responses() {
        let mut a = Message::new("assistant", Content::Text(String::new()));
        a.tool_calls.push(ToolCall {
            name: "zoom".into(),
            arguments: serde_json::json!({"bbox": [1, 2]}),
        });
        let msgs = vec![
            Message::new("user", Content::Text("hi".into())),
            a,
            Message::new("tool", Content::Text("r1".into())),
            Message::new("tool", Content::Text("r2".into())),
        ];
        let tools = vec![serde_json::json!({"type": "function"})];
        let s = render_chat(&msgs, Some(&tools), false);
        assert!(
            s.starts_with("<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n"),
            "{s}"
        );
        assert!(s.contains("<tools>\n{\"type\": \"function\"}\n</tools>"), "{s}");
        assert!(s.ends_with(
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<tool_call>\n{\"name\": \"zoom\", \
             \"arguments\": {\"bbox\": [1, 2]}}\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\nr1\n\
             </tool_response>\n<tool_response>\nr2\n</tool_response><|im_end|>\n"
        ), "{s}");
    }

    fn write_chat(name: &str, body: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("armt-proc-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("CHAT.json");
        std::fs::write(&p, body).unwrap();
        p
    }

    fn err_of(name: &str, body: &str) -> String {
        let p = write_chat(name, body);
        let e = Chat::from_json_file(&p).unwrap_err().to_string();
        assert!(
            e.contains(&p.display().to_string()),
            "error does not name the file: {e}"
        );
        e
    }

    #[test]
    fn chat_errors_name_file_message_and_part() {
        let e = err_of(
            "missing-img",
            r#"{"messages": [{"role": "user", "content": "x"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image", "image": "nope.png"}]}]}"#,
        );
        assert!(
            e.contains("messages[1].content[1]") && e.contains("nope.png"),
            "{e}"
        );
        let e = err_of(
            "bad-type",
            r#"{"messages": [{"role": "user", "content": [{"type": "audio"}]}]}"#,
        );
        assert!(e.contains("messages[0].content[0]") && e.contains("audio"), "{e}");
        let e = err_of("no-role", r#"{"messages": [{"content": "x"}]}"#);
        assert!(e.contains("messages[0]") && e.contains("role"), "{e}");
        let e = err_of(
            "bad-role",
            r#"{"messages": [{"role": "user", "content": "x"}, {"role": "robot", "content": "x"}]}"#,
        );
        assert!(e.contains("messages[1]") && e.contains("robot"), "{e}");
        let e = err_of("no-content", r#"{"messages": [{"role": "user"}]}"#);
        assert!(e.contains("messages[0]") && e.contains("content"), "{e}");
        let e = err_of(
            "bad-args",
            r#"{"messages": [{"role": "assistant", "content": null,
            "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}"#,
        );
        assert!(e.contains("messages[0].tool_calls[0]"), "{e}");
        let e = err_of("malformed", r#"{"messages": [ "#);
        assert!(e.contains("malformed JSON"), "{e}");
    }

    #[test]
    fn chat_parses_string_arguments_and_image_url() {
        let p = write_chat(
            "ok",
            r#"{"messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "img.png"}}, {"type": "text", "text": "q"}]},
            {"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{\"b\": 1, \"a\": 2}"}}]}],
            "add_generation_prompt": true}"#,
        );
        image::RgbImage::new(2, 2)
            .save(p.parent().unwrap().join("img.png"))
            .unwrap();
        let chat = Chat::from_json_file(&p).unwrap();
        assert!(chat.add_generation_prompt);
        assert_eq!(chat.messages[0].content.images().count(), 1);
        let mut s = String::new();
        write_py_json(&mut s, &chat.messages[1].tool_calls[0].arguments);
        assert_eq!(s, "{\"b\": 1, \"a\": 2}", "key order must be preserved");
    }
}
