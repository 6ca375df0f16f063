//! `POST /v1/chat/completions` without the server-side tool loop: one assistant turn from the
//! conversation as given (system, user, assistant and tool messages, rendered through the chat
//! template and tokenized as a whole, as vLLM does), stopping at the end-of-turn tokens and at
//! the request's `stop` strings. This is what `armt agent` / `armt eval --api-base` drive: the
//! caller runs the tools. Chosen by `"tool_loop": false` in the request, by `--no-tool-loop`, or
//! by a conversation that already has assistant or tool turns.
//!
//! Single-turn requests share the model thread's queue with the others: the queued job carries a
//! placeholder sample whose id names the request in [`TurnJobs`], where the reply is left.

use super::{bad, image_path, placeholder_sample, Front, Job, Refusal};
use armt_data::{Judgment, Sample, StopReason, TaskKind, Trajectory};
use armt_model::Qwen25Vl;
use armt_processing::{Content, ContentPart, ImageSource, Message, Processor};
use armt_rollout::{
    generate_turns, ModelGenerator, RolloutConfig, RolloutError, SamplingConfig, TemplateIds, TurnRequest,
};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Mutex};

/// What a single-turn request asks for.
#[derive(Clone)]
pub(super) struct TurnSpec {
    messages: Vec<Message>,
    max_tokens: Option<usize>,
    stop: Vec<String>,
    temperature: Option<f64>,
}

struct TurnReply {
    content: String,
    finish_reason: &'static str,
    stop_reason: Value,
    prompt_ids: Vec<i64>,
    completion_ids: Vec<i64>,
}

struct TurnJob {
    spec: TurnSpec,
    reply: Option<Result<TurnReply, String>>,
}

/// Single-turn requests in flight, by their placeholder sample's id.
#[derive(Default)]
pub(super) struct TurnJobs(Mutex<HashMap<String, TurnJob>>);

impl TurnJobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TurnJob>> {
        // A panicked holder leaves the map consistent (each access is one insert or remove).
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether a chat request is answered with one turn (the caller runs the tools).
pub(super) fn is_single_turn(body: &Value, front: &Front) -> bool {
    match body.get("tool_loop").and_then(Value::as_bool) {
        Some(loop_on) => !loop_on,
        None => {
            !front.tool_loop
                || body["messages"].as_array().is_some_and(|ms| {
                    ms.iter()
                        .any(|m| matches!(m["role"].as_str(), Some("assistant" | "tool")))
                })
        }
    }
}

fn parse_content(
    v: &Value,
    i: usize,
    front: &Front,
    id: u64,
    images: &mut Vec<PathBuf>,
) -> Result<Content, Refusal> {
    match v {
        Value::String(s) => Ok(Content::Text(s.clone())),
        Value::Null => Ok(Content::Text(String::new())),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (k, p) in parts.iter().enumerate() {
                match p["type"].as_str() {
                    Some("text") => out.push(ContentPart::Text(
                        p["text"]
                            .as_str()
                            .ok_or_else(|| bad(format!("messages[{i}].content[{k}].text must be a string")))?
                            .to_string(),
                    )),
                    Some("image_url") => {
                        let url = p["image_url"]["url"]
                            .as_str()
                            .or_else(|| p["image_url"].as_str())
                            .ok_or_else(|| {
                                bad(format!(
                                    "messages[{i}].content[{k}].image_url.url must be a string"
                                ))
                            })?;
                        let path = image_path(url, front, id, images.len())?;
                        images.push(path.clone());
                        out.push(ContentPart::Image(ImageSource::Path(path)));
                    }
                    other => {
                        return Err(bad(format!(
                            "messages[{i}].content[{k}]: unsupported part type {other:?}"
                        )))
                    }
                }
            }
            Ok(Content::Parts(out))
        }
        _ => Err(bad(format!(
            "messages[{i}].content must be text or a list of parts"
        ))),
    }
}

/// The request's conversation and settings (images saved to the upload folder, listed in `images`).
fn parse(body: &Value, front: &Front, id: u64, images: &mut Vec<PathBuf>) -> Result<TurnSpec, Refusal> {
    let msgs = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`messages` must be a list"))?;
    let mut messages = Vec::with_capacity(msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or("");
        if !matches!(role, "system" | "user" | "assistant" | "tool") {
            return Err(bad(format!(
                "messages[{i}].role must be system, user, assistant or tool, not {:?}",
                m["role"]
            )));
        }
        if m.get("tool_calls").is_some_and(|t| !t.is_null()) {
            return Err(bad(format!(
                "messages[{i}]: `tool_calls` is not supported; put the call in `content` as <tool_call> text"
            )));
        }
        messages.push(Message::new(
            role,
            parse_content(&m["content"], i, front, id, images)?,
        ));
    }
    if !messages.iter().any(|m| m.role == "user") {
        return Err(bad("the conversation needs a `user` message"));
    }
    let max_tokens = match body
        .get("max_tokens")
        .or_else(|| body.get("max_completion_tokens"))
    {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|&n| n > 0)
                .ok_or_else(|| bad("`max_tokens` must be a positive integer"))? as usize,
        ),
    };
    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .ok_or_else(|| bad("`stop` must be a string or a list of non-empty strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad("`stop` must be a string or a list of strings")),
    };
    let temperature = match body.get("temperature") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .filter(|t| (0.0..=100.0).contains(t))
                .ok_or_else(|| bad("`temperature` must be a number in [0, 100]"))?,
        ),
    };
    if body.get("n").is_some_and(|n| n.as_u64() != Some(1)) {
        return Err(bad("`n` must be 1"));
    }
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(bad("streaming is not supported"));
    }
    Ok(TurnSpec {
        messages,
        max_tokens,
        stop,
        temperature,
    })
}

/// Checks and queues a single-turn request, waits for its turn and shapes the completion.
pub(super) fn serve(body: &Value, front: &Front) -> Result<Value, Refusal> {
    let id = front.counter.fetch_add(1, Ordering::Relaxed);
    let mut images = Vec::new();
    let result = queue_and_wait(body, front, id, &mut images);
    // Uploaded images are only needed for the generation.
    for p in images.iter().filter(|p| p.starts_with(&front.upload_dir)) {
        let _ = std::fs::remove_file(p);
    }
    let reply = result?;
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(json!({
        "id": format!("chatcmpl-{id}"),
        "object": "chat.completion",
        "created": created,
        "model": body.get("model").cloned().unwrap_or(json!(front.model_name)),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content},
                     "finish_reason": reply.finish_reason, "stop_reason": reply.stop_reason}],
        "usage": {"prompt_tokens": reply.prompt_ids.len(), "completion_tokens": reply.completion_ids.len(),
                  "total_tokens": reply.prompt_ids.len() + reply.completion_ids.len()},
        "armt": {"prompt_token_ids": reply.prompt_ids, "completion_token_ids": reply.completion_ids},
    }))
}

fn queue_and_wait(
    body: &Value,
    front: &Front,
    id: u64,
    images: &mut Vec<PathBuf>,
) -> Result<TurnReply, Refusal> {
    let spec = parse(body, front, id, images)?;
    let mut sample = placeholder_sample(
        id,
        String::new(),
        Vec::new(),
        None,
        Judgment::Pair { candidates: 2 },
    );
    sample.id = format!("turn-{id}");
    let key = sample.id.clone();
    front
        .turn_jobs
        .lock()
        .insert(key.clone(), TurnJob { spec, reply: None });
    let (reply, answer) = mpsc::channel();
    let queued = match front.queue.try_send(Job { sample, reply }) {
        Ok(()) => Ok(()),
        Err(mpsc::TrySendError::Full(_)) => {
            Err(Refusal(429, "the request queue is full; retry later".into()))
        }
        Err(mpsc::TrySendError::Disconnected(_)) => Err(Refusal(503, "the model thread has stopped".into())),
    };
    let done = queued.and_then(|()| {
        answer
            .recv()
            .map_err(|_| Refusal(503, "the model thread has stopped".into()))?
            .map_err(|e| Refusal(500, e.to_string()))
    });
    let job = front.turn_jobs.lock().remove(&key);
    done?;
    match job.and_then(|j| j.reply) {
        Some(Ok(r)) => Ok(r),
        // Errors of the request itself (an over-long prompt, an unreadable image).
        Some(Err(e)) => Err(bad(e)),
        None => Err(Refusal(500, "the model thread left no reply".into())),
    }
}

/// A stand-in trajectory for a single-turn job (its reply is in [`TurnJobs`]).
fn done_marker(sample: &Sample) -> Trajectory {
    Trajectory {
        sample_id: sample.id.clone(),
        group_index: 0,
        task: TaskKind::Zoom,
        token_ids: Vec::new(),
        prompt_len: 0,
        loss_mask: Vec::new(),
        logprobs: Vec::new(),
        turns: Vec::new(),
        images: Vec::new(),
        final_text: String::new(),
        stop_reason: StopReason::Answered,
        reward: None,
    }
}

/// The model thread's batch: single-turn jobs are generated here (their replies left in
/// `jobs`), the others rolled out by `rollouts`; trajectories come back in `samples`' order.
pub(super) fn run_batch(
    samples: &[Sample],
    jobs: &TurnJobs,
    processor: &Processor,
    model: &Qwen25Vl,
    rollout: &RolloutConfig,
    mut rollouts: impl FnMut(&[Sample]) -> Result<Vec<Trajectory>, RolloutError>,
) -> Result<Vec<Trajectory>, RolloutError> {
    let specs: Vec<Option<TurnSpec>> = {
        let table = jobs.lock();
        samples
            .iter()
            .map(|s| table.get(&s.id).map(|j| j.spec.clone()))
            .collect()
    };
    let rest: Vec<Sample> = samples
        .iter()
        .zip(&specs)
        .filter(|(_, t)| t.is_none())
        .map(|(s, _)| s.clone())
        .collect();
    let mut rolled = if rest.is_empty() {
        Vec::new()
    } else {
        rollouts(&rest)?
    }
    .into_iter();
    let turns: Vec<(&Sample, TurnSpec)> = samples
        .iter()
        .zip(&specs)
        .filter_map(|(s, t)| t.clone().map(|t| (s, t)))
        .collect();
    if !turns.is_empty() {
        let replies = generate(&turns, processor, model, rollout)?;
        let mut table = jobs.lock();
        for ((s, _), r) in turns.iter().zip(replies) {
            if let Some(j) = table.get_mut(&s.id) {
                j.reply = Some(r);
            }
        }
    }
    samples
        .iter()
        .zip(&specs)
        .map(|(s, t)| match t {
            Some(_) => Ok(done_marker(s)),
            None => rolled.next().ok_or_else(|| {
                RolloutError::Invariant("the rollout returned fewer trajectories than requests".into())
            }),
        })
        .collect()
}

/// Generates the turns (one generator per temperature) and shapes each as OpenAI reports it.
fn generate(
    turns: &[(&Sample, TurnSpec)],
    processor: &Processor,
    model: &Qwen25Vl,
    rollout: &RolloutConfig,
) -> Result<Vec<Result<TurnReply, String>>, armt_rollout::RolloutError> {
    let tok = processor.tokenizer();
    let ids = TemplateIds::from_tokenizer(tok)?;
    let added: HashMap<String, u32> = tok
        .get_added_tokens_decoder()
        .into_iter()
        .map(|(id, t)| (t.content, id))
        .collect();
    // A stop string that is one added token (e.g. `</tool_call>`) stops generation there; any
    // other is cut from the text afterwards.
    let stop_token = |s: &str| added.get(s).map(|&i| i as i64);
    let mut out: Vec<Option<Result<TurnReply, String>>> = (0..turns.len()).map(|_| None).collect();
    let mut temps: Vec<f64> = turns
        .iter()
        .map(|(_, t)| t.temperature.unwrap_or(rollout.sampling.temperature))
        .collect();
    temps.sort_by(f64::total_cmp);
    temps.dedup();
    for temp in temps {
        let members: Vec<usize> = (0..turns.len())
            .filter(|&i| turns[i].1.temperature.unwrap_or(rollout.sampling.temperature) == temp)
            .collect();
        let requests: Vec<TurnRequest> = members
            .iter()
            .map(|&i| {
                let spec = &turns[i].1;
                let mut stop_ids = vec![ids.im_end, ids.endoftext];
                stop_ids.extend(spec.stop.iter().filter_map(|s| stop_token(s)));
                TurnRequest {
                    messages: spec.messages.clone(),
                    max_tokens: spec.max_tokens.unwrap_or(rollout.max_turn_tokens),
                    stop_ids,
                    key: turns[i].0.id.trim_start_matches("turn-").parse().unwrap_or(0),
                }
            })
            .collect();
        let sampling = SamplingConfig {
            temperature: temp,
            ..rollout.sampling.clone()
        };
        let mut generator = ModelGenerator::new(model, sampling, ids.endoftext);
        let outputs = generate_turns(processor, &mut generator, &requests, rollout)?;
        for ((&i, req), o) in members.iter().zip(&requests).zip(outputs) {
            out[i] = Some(match o {
                Ok(o) => shape(tok, &turns[i].1.stop, &req.stop_ids, &ids, o.prompt_ids, o.ids),
                Err(e) => Err(e.to_string()),
            });
        }
    }
    Ok(out
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err("no turn was generated".into())))
        .collect())
}

/// OpenAI's view of a generated turn: the content without its stop token or string,
/// `finish_reason`, and vLLM's `stop_reason` (the stop string, or null for end of turn).
fn shape(
    tok: &tokenizers::Tokenizer,
    stop: &[String],
    stop_ids: &[i64],
    ids: &TemplateIds,
    prompt_ids: Vec<i64>,
    completion: Vec<i64>,
) -> Result<TurnReply, String> {
    let (body, mut finish, mut stop_reason) = match completion.last() {
        Some(&last) if stop_ids.contains(&last) => {
            let reason = if last == ids.im_end || last == ids.endoftext {
                Value::Null
            } else {
                json!(tok.id_to_token(last as u32).unwrap_or_default())
            };
            (&completion[..completion.len() - 1], "stop", reason)
        }
        _ => (&completion[..], "length", Value::Null),
    };
    let body: Vec<u32> = body.iter().map(|&i| i as u32).collect();
    let mut content = tok.decode(&body, false).map_err(|e| format!("decoding: {e}"))?;
    // Stop strings that are not single tokens: the text ends before the first one.
    if let Some((at, s)) = stop
        .iter()
        .filter_map(|s| content.find(s.as_str()).map(|at| (at, s)))
        .min_by_key(|(at, _)| *at)
    {
        stop_reason = json!(s);
        finish = "stop";
        content.truncate(at);
    }
    Ok(TurnReply {
        content,
        finish_reason: finish,
        stop_reason,
        prompt_ids,
        completion_ids: completion,
    })
}
