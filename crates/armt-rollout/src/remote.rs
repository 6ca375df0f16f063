//! [`RemoteGenerator`]: the turn loop's policy is any OpenAI-compatible server (vLLM, SGLang,
//! lmdeploy, `armt serve`), as ARM-Thinker's evaluation drives one. Each assistant turn is one
//! `POST {api_base}/chat/completions` with the row's conversation so far in OpenAI form (images as
//! base64 data URLs, tool turns as `tool` messages, images first), stopping at `</tool_call>`;
//! the tools run here, in the engine, exactly as for the in-process model.
//!
//! The server renders the messages through its chat template and tokenizes the text, so the
//! tokens a turn adds to the row here are the reply's text re-tokenized with the local tokenizer
//! (log-prob 0). When the server reports the prompt tokens it generated from (`armt serve` does,
//! under `armt.prompt_token_ids`), every reply is checked against the context the loop built:
//! [`RemoteGenerator::context_report`].

use crate::engine::TemplateIds;
use crate::generator::{Chunk, Generator, Sampled};
use crate::rng::RowRng;
use crate::RolloutError;
use armt_processing::hermes::{TOOL_CALL_CLOSE, TOOL_CALL_OPEN};
use armt_processing::{Content, ContentPart, ImageSource, Message};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// Where and how to ask.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// The server's OpenAI base URL, e.g. `http://127.0.0.1:8000/v1` (`/chat/completions` is
    /// appended).
    pub api_base: String,
    /// The served model's name (the request's `model`).
    pub model: String,
    /// Sent as `Authorization: Bearer …` when given.
    pub api_key: Option<String>,
    /// 0: greedy.
    pub temperature: f64,
    pub top_p: f64,
    /// Per request, connection to last byte.
    pub timeout: Duration,
    /// Further attempts after a connection error, a timeout, 429 or a 5xx (ARM-Thinker: 3).
    pub retries: usize,
    /// Role of tool messages: `tool` (ARM-Thinker's default; the chat template wraps them in
    /// `<tool_response>`) or `user` (for servers whose template has no tool role, as the
    /// original does for SGLang).
    pub tool_role: String,
    /// Requests in flight at once (the server batches them).
    pub concurrency: usize,
}

impl RemoteConfig {
    pub fn new(api_base: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            api_base: api_base.into(),
            model: model.into(),
            api_key: None,
            temperature: 0.0,
            top_p: 1.0,
            timeout: Duration::from_secs(600),
            retries: 3,
            tool_role: "tool".into(),
            concurrency: 16,
        }
    }

    /// The chat-completions URL.
    pub fn url(&self) -> String {
        format!("{}/chat/completions", self.api_base.trim_end_matches('/'))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// No answer: connection refused, reset, timed out (after the retries).
    #[error("POST {url}: {source} (after {attempts} attempt(s))")]
    Transport {
        url: String,
        attempts: usize,
        #[source]
        source: Box<ureq::Error>,
    },
    /// The server answered with an error status.
    #[error("POST {url}: HTTP {status} (after {attempts} attempt(s)): {body}")]
    Status {
        url: String,
        status: u16,
        attempts: usize,
        body: String,
    },
    /// The server answered 200 with something that is not a chat completion.
    #[error("POST {url}: not a chat completion ({reason}): {body}")]
    Reply {
        url: String,
        reason: String,
        body: String,
    },
    #[error("reading image {path}: {source}")]
    ReadImage {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding a tool's image as PNG: {0}")]
    EncodeImage(#[source] image::ImageError),
    #[error("tokenizing the server's reply: {0}")]
    Tokenize(#[source] tokenizers::Error),
    #[error("tool_role must be `tool` or `user`, not `{0}`")]
    ToolRole(String),
}

/// One chat completion, as far as the turn loop needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatReply {
    pub content: String,
    /// `stop` or `length` (anything else is treated as `stop`).
    pub finish_reason: String,
    /// vLLM's and `armt serve`'s `stop_reason`: the stop string (or token id) that ended the
    /// turn, null for end-of-sequence. `None`: the server does not report it.
    pub stop_reason: Option<Value>,
    /// The prompt tokens the server generated from (`armt serve`'s `armt.prompt_token_ids`).
    pub prompt_token_ids: Option<Vec<i64>>,
}

/// A blocking OpenAI chat-completions client with retries.
pub struct ChatClient {
    agent: ureq::Agent,
    url: String,
    api_key: Option<String>,
    retries: usize,
}

impl ChatClient {
    pub fn new(cfg: &RemoteConfig) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Self {
            agent,
            url: cfg.url(),
            api_key: cfg.api_key.clone(),
            retries: cfg.retries,
        }
    }

    /// POSTs `body`; retries connection errors, timeouts, 429 and 5xx with exponential backoff
    /// (0.5 s, 1 s, 2 s, … at most 8 s).
    pub fn complete(&self, body: &Value) -> Result<ChatReply, RemoteError> {
        let text = body.to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self
                .agent
                .post(&self.url)
                .header("Content-Type", "application/json");
            if let Some(key) = &self.api_key {
                req = req.header("Authorization", format!("Bearer {key}"));
            }
            let retry = match req.send(text.as_str()) {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    let body = resp
                        .body_mut()
                        .with_config()
                        .limit(256 << 20)
                        .read_to_string()
                        .unwrap_or_else(|e| format!("(unreadable body: {e})"));
                    if status == 200 {
                        return parse_reply(&self.url, &body);
                    }
                    let err = RemoteError::Status {
                        url: self.url.clone(),
                        status,
                        attempts: attempt,
                        body: clip(&body, 2000),
                    };
                    if status == 429 || status >= 500 {
                        err
                    } else {
                        return Err(err);
                    }
                }
                Err(e) => RemoteError::Transport {
                    url: self.url.clone(),
                    attempts: attempt,
                    source: Box::new(e),
                },
            };
            if attempt > self.retries {
                return Err(retry);
            }
            let wait = Duration::from_millis(500u64 << (attempt - 1).min(4));
            eprintln!("remote: {retry}; retrying in {:.1} s", wait.as_secs_f64());
            std::thread::sleep(wait);
        }
    }
}

fn clip(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Reads the first choice of a chat completion.
pub fn parse_reply(url: &str, body: &str) -> Result<ChatReply, RemoteError> {
    let bad = |reason: &str| RemoteError::Reply {
        url: url.to_string(),
        reason: reason.to_string(),
        body: clip(body, 2000),
    };
    let v: Value = serde_json::from_str(body).map_err(|_| bad("not JSON"))?;
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or_else(|| bad("no choices[0]"))?;
    let content = match choice.get("message").and_then(|m| m.get("content")) {
        Some(Value::String(s)) => s.clone(),
        // No content (e.g. the server moved everything into tool_calls): an empty turn, as
        // ARM-Thinker's agent gets "Failed to obtain Answer".
        Some(Value::Null) | None => String::new(),
        Some(_) => return Err(bad("choices[0].message.content is not a string")),
    };
    let finish_reason = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .unwrap_or("stop")
        .to_string();
    let prompt_token_ids = v
        .get("armt")
        .and_then(|a| a.get("prompt_token_ids"))
        .and_then(Value::as_array)
        .map(|ids| ids.iter().filter_map(Value::as_i64).collect());
    Ok(ChatReply {
        content,
        finish_reason,
        stop_reason: choice.get("stop_reason").cloned(),
        prompt_token_ids,
    })
}

/// The assistant text a reply stands for, as the in-process loop would hold it: cut right after
/// the first `</tool_call>` (only the first call runs, as in ARM-Thinker), or with `</tool_call>`
/// put back when the server stopped on it (OpenAI servers leave the stop string out). Returns
/// the text and whether the turn ended with a tool call.
pub fn turn_text(reply: &ChatReply) -> (String, bool) {
    let mut text = reply.content.clone();
    if let Some(k) = text.find(TOOL_CALL_CLOSE) {
        text.truncate(k + TOOL_CALL_CLOSE.len());
        return (text, true);
    }
    if reply.finish_reason == "length" {
        return (text, false);
    }
    let stopped_on_close = match &reply.stop_reason {
        Some(Value::String(s)) => s == TOOL_CALL_CLOSE,
        // The server reports its stop reason, and it was something else (null: end of sequence).
        Some(_) => false,
        // Not reported: the turn stopped on the close tag if a call is open at its end.
        None => text
            .rfind(TOOL_CALL_OPEN)
            .is_some_and(|open| text.rfind(TOOL_CALL_CLOSE).is_none_or(|close| close < open)),
    };
    if stopped_on_close {
        text.push_str(TOOL_CALL_CLOSE);
    }
    (text, stopped_on_close)
}

/// A data URL of image bytes.
fn data_url(bytes: &[u8]) -> String {
    let mime = match armt_data::formats::image_extension(bytes) {
        "jpg" => "jpeg",
        "img" => "png",
        other => other,
    };
    format!(
        "data:image/{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

fn image_url(src: &ImageSource) -> Result<String, RemoteError> {
    match src {
        // The file's own bytes: the server decodes them as this process did.
        ImageSource::Path(p) => {
            std::fs::read(p)
                .map(|b| data_url(&b))
                .map_err(|source| RemoteError::ReadImage {
                    path: p.clone(),
                    source,
                })
        }
        // A tool's image: PNG, lossless.
        ImageSource::Loaded(img) => {
            let mut bytes = Vec::new();
            img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
                .map_err(RemoteError::EncodeImage)?;
            Ok(data_url(&bytes))
        }
    }
}

/// `messages` in OpenAI form; tool messages get `tool_role`.
pub fn openai_messages(messages: &[Message], tool_role: &str) -> Result<Vec<Value>, RemoteError> {
    messages
        .iter()
        .map(|m| {
            let role = if m.role == "tool" {
                tool_role
            } else {
                m.role.as_str()
            };
            let content = match &m.content {
                Content::Text(t) => json!(t),
                Content::Parts(parts) => Value::Array(
                    parts
                        .iter()
                        .map(|p| match p {
                            ContentPart::Text(t) => Ok(json!({"type": "text", "text": t})),
                            ContentPart::Image(src) => {
                                Ok(json!({"type": "image_url", "image_url": {"url": image_url(src)?}}))
                            }
                        })
                        .collect::<Result<_, RemoteError>>()?,
                ),
            };
            Ok(json!({"role": role, "content": content}))
        })
        .collect()
}

struct RemoteRow {
    /// The conversation so far, in OpenAI form.
    messages: Vec<Value>,
    /// The token context the loop built for this row (prompt, turns re-tokenized, tool turns).
    context: Vec<i64>,
    /// The last assistant turn's text, added to `messages` when the next tool turn arrives.
    last_turn: Option<String>,
}

/// How the server's prompts compared with the contexts the loop built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContextReport {
    pub requests: usize,
    /// Replies that carried the server's prompt tokens.
    pub checked: usize,
    /// Of those, prompts that differed from the loop's context.
    pub differing: usize,
}

/// The turn loop's policy on an OpenAI-compatible server: see the module docs.
pub struct RemoteGenerator<'t> {
    cfg: RemoteConfig,
    client: ChatClient,
    tokenizer: &'t tokenizers::Tokenizer,
    ids: TemplateIds,
    rows: HashMap<usize, RemoteRow>,
    in_turn: Vec<(usize, usize)>,
    report: ContextReport,
}

impl<'t> RemoteGenerator<'t> {
    /// `tokenizer`: the served model's (the loop counts tokens and budgets with it).
    pub fn new(cfg: RemoteConfig, tokenizer: &'t tokenizers::Tokenizer) -> Result<Self, RolloutError> {
        if cfg.tool_role != "tool" && cfg.tool_role != "user" {
            return Err(RemoteError::ToolRole(cfg.tool_role.clone()).into());
        }
        Ok(Self {
            client: ChatClient::new(&cfg),
            ids: TemplateIds::from_tokenizer(tokenizer)?,
            cfg,
            tokenizer,
            rows: HashMap::new(),
            in_turn: Vec::new(),
            report: ContextReport::default(),
        })
    }

    pub fn context_report(&self) -> ContextReport {
        self.report
    }

    fn row(&mut self, row: usize) -> Result<&mut RemoteRow, RolloutError> {
        self.rows
            .get_mut(&row)
            .ok_or_else(|| RolloutError::Invariant(format!("row {row} is not in the generator")))
    }

    fn request(&self, messages: &[Value], budget: usize) -> Value {
        let mut body = json!({
            "model": self.cfg.model,
            "messages": messages,
            "max_tokens": budget,
            "temperature": self.cfg.temperature,
            "stop": [TOOL_CALL_CLOSE],
            "n": 1,
        });
        if self.cfg.top_p < 1.0 {
            body["top_p"] = json!(self.cfg.top_p);
        }
        body
    }

    /// The reply as a sampled turn: its text re-tokenized, ending with `</tool_call>` or
    /// `<|im_end|>` as the in-process model's turn would, or marked truncated.
    fn sampled(&self, reply: &ChatReply) -> Result<(String, Sampled), RolloutError> {
        let (text, call) = turn_text(reply);
        let enc = self
            .tokenizer
            .encode(text.as_str(), false)
            .map_err(RemoteError::Tokenize)?;
        let mut ids: Vec<i64> = enc.get_ids().iter().map(|&i| i as i64).collect();
        let mut truncated = false;
        if call {
            if ids.last() != Some(&self.ids.tool_call_end) {
                return Err(RolloutError::Settings(format!(
                    "the tokenizer does not encode `{TOOL_CALL_CLOSE}` as its own token"
                )));
            }
        } else if reply.finish_reason == "length" {
            truncated = true;
        } else {
            ids.push(self.ids.im_end);
        }
        Ok((
            text,
            Sampled {
                logprobs: vec![0.0; ids.len()],
                ids,
                truncated,
            },
        ))
    }
}

impl Generator for RemoteGenerator<'_> {
    fn add_group(
        &mut self,
        _block: usize,
        prompt: &Chunk,
        rows: &[(usize, RowRng)],
    ) -> Result<(), RolloutError> {
        if prompt.messages.is_empty() {
            return Err(RolloutError::Invariant(
                "a remote generator needs the prompt as chat messages".into(),
            ));
        }
        let messages = openai_messages(&prompt.messages, &self.cfg.tool_role)?;
        for (r, _) in rows {
            self.rows.insert(
                *r,
                RemoteRow {
                    messages: messages.clone(),
                    context: prompt.ids.clone(),
                    last_turn: None,
                },
            );
        }
        Ok(())
    }

    fn append(&mut self, rows: &[usize], chunks: &[Chunk]) -> Result<(), RolloutError> {
        let tool_role = self.cfg.tool_role.clone();
        for (&r, chunk) in rows.iter().zip(chunks) {
            let msgs = openai_messages(&chunk.messages, &tool_role)?;
            let row = self.row(r)?;
            if let Some(text) = row.last_turn.take() {
                row.messages.push(json!({"role": "assistant", "content": text}));
            }
            row.messages.extend(msgs);
            row.context.extend_from_slice(&chunk.ids);
        }
        Ok(())
    }

    fn begin_turn(&mut self, row: usize, budget: usize) -> Result<(), RolloutError> {
        self.row(row)?;
        self.in_turn.push((row, budget));
        Ok(())
    }

    /// Sends every row's turn (up to `concurrency` requests in flight) and returns them all.
    fn step(&mut self, _stop_ids: &[i64]) -> Result<Vec<(usize, Sampled)>, RolloutError> {
        let turns = std::mem::take(&mut self.in_turn);
        let mut out = Vec::with_capacity(turns.len());
        for batch in turns.chunks(self.cfg.concurrency.max(1)) {
            let bodies: Vec<Value> = batch
                .iter()
                .map(|&(r, budget)| self.request(&self.rows[&r].messages, budget))
                .collect();
            let client = &self.client;
            let replies: Vec<Result<ChatReply, RemoteError>> = std::thread::scope(|s| {
                let handles: Vec<_> = bodies
                    .iter()
                    .map(|b| s.spawn(move || client.complete(b)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("a request thread panicked"))
                    .collect()
            });
            for (&(r, _), reply) in batch.iter().zip(replies) {
                let reply = reply?;
                let (text, sampled) = self.sampled(&reply)?;
                self.report.requests += 1;
                let row = self.rows.get_mut(&r).expect("rows in a turn exist");
                if let Some(server) = &reply.prompt_token_ids {
                    self.report.checked += 1;
                    if *server != row.context {
                        self.report.differing += 1;
                        let at = server
                            .iter()
                            .zip(&row.context)
                            .take_while(|(a, b)| a == b)
                            .count();
                        eprintln!(
                            "remote: the server's prompt ({} tokens) differs from the loop's context ({} tokens) from token {at}",
                            server.len(),
                            row.context.len()
                        );
                    }
                }
                row.context.extend_from_slice(&sampled.ids);
                row.last_turn = Some(text);
                out.push((r, sampled));
            }
        }
        Ok(out)
    }

    fn release(&mut self, row: usize) {
        self.rows.remove(&row);
        self.in_turn.retain(|&(r, _)| r != row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(content: &str, finish: &str, stop: Option<Value>) -> ChatReply {
        ChatReply {
            content: content.into(),
            finish_reason: finish.into(),
            stop_reason: stop,
            prompt_token_ids: None,
        }
    }

    #[test]
    fn turn_text_restores_the_stop_string_and_cuts_after_the_first_call() {
        let call = "<think>zoom</think>\n<tool_call>\n{\"name\": \"z\", \"arguments\": {}}\n";
        // vLLM / armt serve: the stop string is reported and left out of the content.
        assert_eq!(
            turn_text(&reply(call, "stop", Some(json!("</tool_call>")))),
            (format!("{call}</tool_call>"), true)
        );
        // End of sequence with an open tag: not a finished call.
        assert_eq!(
            turn_text(&reply(call, "stop", Some(Value::Null))),
            (call.to_string(), false)
        );
        // A server that does not report stop_reason: an open call at the end means it stopped on it.
        assert_eq!(
            turn_text(&reply(call, "stop", None)),
            (format!("{call}</tool_call>"), true)
        );
        // A server that ignores `stop`: only the first call is kept.
        let two = format!("{call}</tool_call> more <tool_call>x</tool_call>");
        assert_eq!(
            turn_text(&reply(&two, "stop", None)),
            (format!("{call}</tool_call>"), true)
        );
        // An answer, and a turn cut by the token limit.
        let answer = "<think>ok</think><answer>1</answer>";
        assert_eq!(
            turn_text(&reply(answer, "stop", None)),
            (answer.to_string(), false)
        );
        assert_eq!(turn_text(&reply(call, "length", None)), (call.to_string(), false));
    }

    #[test]
    fn replies_are_read_or_refused_with_the_url_and_body() {
        let ok = r#"{"choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "length", "stop_reason": null}], "armt": {"prompt_token_ids": [1, 2]}}"#;
        let r = parse_reply("http://x/v1/chat/completions", ok).unwrap();
        assert_eq!(r.content, "hi");
        assert_eq!(r.finish_reason, "length");
        assert_eq!(r.stop_reason, Some(Value::Null));
        assert_eq!(r.prompt_token_ids, Some(vec![1, 2]));
        let err = parse_reply("http://x/v1/chat/completions", r#"{"object": "error"}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("http://x/v1/chat/completions") && err.contains("no choices[0]"),
            "{err}"
        );
        assert!(err.contains(r#"{"object": "error"}"#), "{err}");
    }

    #[test]
    fn a_dead_server_is_named_after_the_retries() {
        // A port nobody listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cfg = RemoteConfig::new(format!("http://127.0.0.1:{port}/v1/"), "m");
        cfg.retries = 1;
        let err = ChatClient::new(&cfg)
            .complete(&json!({}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("POST http://127.0.0.1:{port}/v1/chat/completions"))
                && err.contains("2 attempt"),
            "{err}"
        );
    }
}
