//! LLaMA-Factory SFT rows, the form ARM-Thinker's cold-start set uses: a JSON array (or JSONL)
//! of objects with either `messages` (`role`/`content`, OpenAI style) or `conversations`
//! (ShareGPT `from`/`value`), an `images` list matched in order to the `<image>` placeholders
//! in the turns, and optionally `system` and `tools` (a JSON string or list of schemas).
//! Tool calls and tool responses are usually plain text in the turns (`<tool_call>…` inside
//! assistant turns, `<tool_response>…` inside user turns); the `function_call` /
//! `observation` roles are read too.

use crate::{ContentError, ConversationError, DataError, RowError};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SftRole {
    System,
    User,
    Assistant,
    /// A structured function call (`function_call`): `text` is `{"name", "arguments"}` JSON.
    FunctionCall,
    /// A tool's output (`observation` / `tool`).
    Tool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SftTurn {
    pub role: SftRole,
    /// The turn's text with its `<image>` placeholders.
    pub text: String,
}

/// One SFT conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct SftConversation {
    /// `id` when the row has one, else its position.
    pub id: String,
    pub turns: Vec<SftTurn>,
    /// Resolved image paths, in placeholder order.
    pub images: Vec<PathBuf>,
    /// Tool schemas for the system prompt (None: the row declares none).
    pub tools: Option<Vec<Value>>,
}

fn role_of(s: &str) -> Option<SftRole> {
    Some(match s {
        "system" => SftRole::System,
        "user" | "human" => SftRole::User,
        "assistant" | "gpt" => SftRole::Assistant,
        "function_call" => SftRole::FunctionCall,
        "observation" | "tool" | "function" => SftRole::Tool,
        _ => return None,
    })
}

fn content_text(v: &Value) -> Result<String, ContentError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        // OpenAI-style parts: text kept, image parts become placeholders.
        Value::Array(parts) => {
            let mut s = String::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("text") => s.push_str(p.get("text").and_then(Value::as_str).unwrap_or("")),
                    Some("image") | Some("image_url") => s.push_str("<image>"),
                    other => {
                        return Err(ContentError::UnknownPart {
                            part_type: other.map(String::from),
                        })
                    }
                }
            }
            Ok(s)
        }
        other => Err(ContentError::NotText {
            content: other.clone(),
        }),
    }
}

fn parse_row(row: &Value, index: usize, base: &Path) -> Result<SftConversation, ConversationError> {
    let (list, role_key, text_key) = if let Some(m) = row.get("messages") {
        (m, "role", "content")
    } else if let Some(c) = row.get("conversations") {
        (c, "from", "value")
    } else {
        return Err(ConversationError::NoTurns);
    };
    let list = list.as_array().ok_or(ConversationError::TurnsNotList)?;
    let mut turns = Vec::with_capacity(list.len() + 1);
    if let Some(sys) = row.get("system").and_then(Value::as_str) {
        turns.push(SftTurn {
            role: SftRole::System,
            text: sys.to_string(),
        });
    }
    for (k, t) in list.iter().enumerate() {
        let role_name = t
            .get(role_key)
            .or_else(|| t.get("role"))
            .and_then(Value::as_str)
            .ok_or(ConversationError::TurnWithoutRole { turn: k, role_key })?;
        let role = role_of(role_name).ok_or_else(|| ConversationError::UnknownRole {
            turn: k,
            role: role_name.into(),
        })?;
        let text = content_text(
            t.get(text_key)
                .or_else(|| t.get("content"))
                .unwrap_or(&Value::Null),
        )
        .map_err(|source| ConversationError::Content { turn: k, source })?;
        if role == SftRole::System && !turns.is_empty() {
            return Err(ConversationError::LateSystemTurn { turn: k });
        }
        turns.push(SftTurn { role, text });
    }
    if !turns
        .iter()
        .any(|t| matches!(t.role, SftRole::Assistant | SftRole::FunctionCall))
    {
        return Err(ConversationError::NoAssistantTurn);
    }
    let images: Vec<PathBuf> = match row.get("images") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .or_else(|| v.get("path").and_then(Value::as_str))
                    .map(|p| super::resolve(base, p))
                    .ok_or_else(|| ConversationError::ImageNotPath { entry: v.clone() })
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ConversationError::ImagesNotList {
                images: other.clone(),
            })
        }
    };
    let placeholders: usize = turns.iter().map(|t| t.text.matches("<image>").count()).sum();
    if placeholders != images.len() {
        return Err(ConversationError::PlaceholderMismatch {
            placeholders,
            images: images.len(),
        });
    }
    for p in &images {
        if !p.is_file() {
            return Err(ConversationError::MissingImage { path: p.clone() });
        }
    }
    let tools = match row.get("tools") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.trim().is_empty() => None,
        Some(Value::String(s)) => {
            Some(serde_json::from_str::<Value>(s).map_err(|source| ConversationError::Tools { source })?)
        }
        Some(v) => Some(v.clone()),
    }
    .map(|v| match v {
        Value::Array(a) => a,
        one => vec![one],
    });
    let id = match row.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(v @ Value::Number(_)) => v.to_string(),
        _ => index.to_string(),
    };
    Ok(SftConversation {
        id,
        turns,
        images,
        tools,
    })
}

/// Reads a LLaMA-Factory dataset file: a JSON array (`.json`) or one object per line (`.jsonl`).
/// Image paths resolve against `image_root` (default: the file's folder).
pub fn read_conversations(path: &Path, image_root: Option<&Path>) -> Result<Vec<SftConversation>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let base = image_root
        .map(Path::to_path_buf)
        .unwrap_or_else(|| path.parent().unwrap_or(Path::new(".")).to_path_buf());
    let row_err = |line: usize, source: RowError| DataError::Row {
        path: path.to_path_buf(),
        line,
        source: Box::new(source),
    };
    let rows: Vec<(usize, Value)> = if text.trim_start().starts_with('[') {
        let all: Vec<Value> = serde_json::from_str(&text).map_err(|e| row_err(e.line(), e.into()))?;
        // In a JSON array, "line" is the element's 1-based position.
        all.into_iter().enumerate().map(|(i, v)| (i + 1, v)).collect()
    } else {
        let mut rows = Vec::new();
        for (i, l) in text.lines().enumerate() {
            if l.trim().is_empty() {
                continue;
            }
            rows.push((
                i + 1,
                serde_json::from_str(l).map_err(|e| row_err(i + 1, e.into()))?,
            ));
        }
        rows
    };
    rows.iter()
        .enumerate()
        .map(|(i, (line, v))| parse_row(v, i, &base).map_err(|e| row_err(*line, e.into())))
        .collect()
}

/// True when the file looks like LLaMA-Factory rows (`messages` or `conversations`) rather
/// than armt trajectories.
pub fn looks_like_llamafactory(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let t = text.trim_start();
    if t.starts_with('[') {
        return true;
    }
    t.lines()
        .next()
        .and_then(|l| serde_json::from_str::<Value>(l).ok())
        .is_some_and(|v| v.get("messages").is_some() || v.get("conversations").is_some())
}
