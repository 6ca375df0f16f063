//! `armt serve --model DIR [--tools T.yaml] [--port P]`: the trained judge over HTTP.
//!
//! - `POST /v1/chat/completions`: OpenAI-compatible; one user message (text, images as data URLs
//!   or file paths under `--image-root`); the tool loop runs here and the trajectory comes back
//!   under `armt` next to the answer.
//! - `POST /v1/judge`: `{question, images, candidates, text_0?}` → the verdict, a per-candidate
//!   preference and the tool trace, posed with ARMBench-VL's prompts.
//!
//! Handler threads parse and check requests (400 with the reason), then put them in a bounded
//! queue (429 when full). The model thread takes what is queued — up to `--max-batch` requests,
//! waiting a moment for more — and rolls them out as one batch through the rollout engine.
//!
//! With `--no-tool-loop` (or `"tool_loop": false`, or a conversation that already has assistant
//! or tool turns) chat completions are one assistant turn, as vLLM answers: see `serve/turn.rs`.

mod turn;

use crate::forward::{parse_device, parse_dtype};
use anyhow::{Context, Result};
use armt_data::formats::armbench::{extract_choice, ArmBenchItem, Choice, FIXED_COT_PROMPT};
use armt_data::{Judgment, Sample, TaskKind, Trajectory};
use armt_model::Qwen25Vl;
use armt_processing::Processor;
use armt_rollout::{ModelGenerator, RolloutConfig, RolloutEnv, RolloutError, SamplingConfig, TemplateIds};
use armt_tools::ToolRegistry;
use base64::Engine;
use serde_json::{json, Value};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Checkpoint directory.
    #[arg(long)]
    model: PathBuf,
    /// Tool config YAML (default: no tools).
    #[arg(long)]
    tools: Option<PathBuf>,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Rollout limits from this config's [rollout] (default: armt's defaults).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Folders requests may name image files in (repeatable); without one, only data URLs.
    #[arg(long)]
    image_root: Vec<PathBuf>,
    /// Requests rolled out together.
    #[arg(long, default_value_t = 8)]
    max_batch: usize,
    /// Requests waiting beyond the running batch; more get 429.
    #[arg(long, default_value_t = 64)]
    queue: usize,
    /// Connection-handling threads.
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// Sampling temperature of every request (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    #[arg(long)]
    device: Option<String>,
    #[arg(long)]
    dtype: Option<String>,
    /// Chat completions generate one assistant turn from the messages as given (the caller runs
    /// the tools, e.g. `armt agent`), unless a request says `"tool_loop": true`.
    #[arg(long)]
    no_tool_loop: bool,
}

/// A checked request waiting for the model.
struct Job {
    sample: Sample,
    /// The batch's error is shared by every request of the batch.
    reply: mpsc::Sender<Result<Trajectory, Arc<RolloutError>>>,
}

enum JobKind {
    Chat,
    Judge(Judgment),
}

/// A request the server refuses, with the HTTP status and reason.
struct Refusal(u16, String);

fn bad(msg: impl Into<String>) -> Refusal {
    Refusal(400, msg.into())
}

/// What handler threads share.
struct Front {
    queue: SyncSender<Job>,
    roots: Vec<PathBuf>,
    upload_dir: PathBuf,
    counter: AtomicU64,
    model_name: String,
    system: String,
    /// Chat completions run the tool loop unless a request says otherwise.
    tool_loop: bool,
    turn_jobs: turn::TurnJobs,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let cfg = match &args.config {
        Some(p) => armt_train::TrainConfig::load(Some(p), &[])?,
        None => armt_train::TrainConfig::default(),
    };
    let tools = match &args.tools {
        Some(t) => ToolRegistry::from_yaml_file(t)?,
        None => ToolRegistry::new(),
    };
    let device = parse_device(args.device.as_deref())?;
    let kind = parse_dtype(args.dtype.as_deref(), device)?;
    let processor = Processor::from_model_dir(&args.model)?;
    let model = Qwen25Vl::load(&args.model, device, kind)?;
    let rollout = RolloutConfig {
        // Chat requests carry their own text; judge requests get the instruction appended below.
        cot_prompt: String::new(),
        sampling: SamplingConfig {
            temperature: args.temperature,
            seed: 0,
            ..cfg.rollout.sampling.clone()
        },
        ..cfg.rollout.clone()
    };
    let roots = args
        .image_root
        .iter()
        .map(|r| std::fs::canonicalize(r).with_context(|| format!("--image-root {}", r.display())))
        .collect::<Result<Vec<_>>>()?;
    let upload_dir = std::env::temp_dir().join(format!("armt-serve-{}", std::process::id()));
    std::fs::create_dir_all(&upload_dir)?;
    let server = Arc::new(
        tiny_http::Server::http(format!("{}:{}", args.host, args.port))
            .map_err(|e| anyhow::anyhow!("binding {}:{}: {e}", args.host, args.port))?,
    );
    let (tx, rx) = mpsc::sync_channel::<Job>(args.queue);
    let front = Arc::new(Front {
        queue: tx,
        roots,
        upload_dir,
        counter: AtomicU64::new(0),
        model_name: args
            .model
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        system: crate::messages::system_text(&tools.schemas()),
        tool_loop: !args.no_tool_loop,
        turn_jobs: turn::TurnJobs::default(),
    });
    for _ in 0..args.threads.max(1) {
        let (server, front) = (server.clone(), front.clone());
        std::thread::spawn(move || {
            while let Ok(req) = server.recv() {
                handle(req, &front);
            }
        });
    }
    println!("armt serve: listening on http://{}", server.server_addr());
    use std::io::Write;
    std::io::stdout().flush()?;
    let pad = TemplateIds::from_tokenizer(processor.tokenizer())?.endoftext;
    let env = RolloutEnv {
        processor: &processor,
        tools: &tools,
        config: &rollout,
        image_dir: None,
    };
    model_loop(&rx, args.max_batch.max(1), |samples| {
        turn::run_batch(
            samples,
            &front.turn_jobs,
            &processor,
            &model,
            &rollout,
            |samples| {
                let mut generator = ModelGenerator::new(&model, rollout.sampling.clone(), pad);
                env.run(&mut generator, samples, 1, |_| {})
                    .map(|rs| rs.into_iter().map(|r| r.trajectory).collect())
            },
        )
    });
    Ok(())
}

/// Takes batches off the queue until every sender is gone.
fn model_loop(
    rx: &Receiver<Job>,
    max_batch: usize,
    mut run: impl FnMut(&[Sample]) -> Result<Vec<Trajectory>, RolloutError>,
) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        // Requests that arrive together go in one batch.
        let deadline = Instant::now() + Duration::from_millis(10);
        while jobs.len() < max_batch {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let samples: Vec<Sample> = jobs.iter().map(|j| j.sample.clone()).collect();
        eprintln!("armt serve: rolling out a batch of {} request(s)", samples.len());
        match run(&samples) {
            Ok(trajs) => {
                for (j, t) in jobs.into_iter().zip(trajs) {
                    let _ = j.reply.send(Ok(t));
                }
            }
            Err(e) => {
                let e = Arc::new(e);
                for j in jobs {
                    let _ = j.reply.send(Err(Arc::clone(&e)));
                }
            }
        }
    }
}

fn respond(req: tiny_http::Request, status: u16, body: &Value) {
    let header = tiny_http::Header::from_bytes("Content-Type", "application/json").expect("valid header");
    let _ = req.respond(
        tiny_http::Response::from_string(body.to_string())
            .with_status_code(status)
            .with_header(header),
    );
}

fn handle(mut req: tiny_http::Request, front: &Front) {
    let route = (
        req.method().as_str().to_string(),
        req.url().split('?').next().unwrap_or("").to_string(),
    );
    let result = match (route.0.as_str(), route.1.as_str()) {
        ("POST", "/v1/chat/completions") | ("POST", "/v1/judge") => read_json(&mut req).and_then(|body| {
            if route.1 == "/v1/chat/completions" && turn::is_single_turn(&body, front) {
                turn::serve(&body, front)
            } else {
                serve(&route.1, &body, front)
            }
        }),
        (_, "/v1/chat/completions") | (_, "/v1/judge") => Err(Refusal(405, "use POST".into())),
        _ => Err(Refusal(404, format!("no route {} {}", route.0, route.1))),
    };
    match result {
        Ok(v) => respond(req, 200, &v),
        Err(Refusal(code, msg)) => respond(
            req,
            code,
            &json!({"error": {"message": msg, "type": match code { 429 => "rate_limit_error", 500.. => "server_error", _ => "invalid_request_error" }, "code": code}}),
        ),
    }
}

/// Largest request body accepted (images come inline as data URLs).
const MAX_BODY: u64 = 64 << 20;

fn read_json(req: &mut tiny_http::Request) -> Result<Value, Refusal> {
    let mut body = Vec::new();
    req.as_reader()
        .take(MAX_BODY + 1)
        .read_to_end(&mut body)
        .map_err(|e| bad(format!("reading the body: {e}")))?;
    if body.len() as u64 > MAX_BODY {
        return Err(Refusal(413, format!("the body is over {MAX_BODY} bytes")));
    }
    serde_json::from_slice(&body).map_err(|e| bad(format!("the body is not JSON: {e}")))
}

/// Checks a request, queues it, waits for its trajectory and shapes the answer.
fn serve(route: &str, body: &Value, front: &Front) -> Result<Value, Refusal> {
    let id = front.counter.fetch_add(1, Ordering::Relaxed);
    let (sample, kind) = match route {
        "/v1/judge" => judge_sample(body, front, id)?,
        _ => (chat_sample(body, front, id)?, JobKind::Chat),
    };
    let (reply, answer) = mpsc::channel();
    let judgment = match &kind {
        JobKind::Judge(j) => Some(*j),
        JobKind::Chat => None,
    };
    match front.queue.try_send(Job {
        sample: sample.clone(),
        reply,
    }) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            return Err(Refusal(429, "the request queue is full; retry later".into()))
        }
        Err(TrySendError::Disconnected(_)) => {
            return Err(Refusal(503, "the model thread has stopped".into()))
        }
    }
    let traj = answer.recv();
    // Uploaded images are only needed for the rollout.
    for p in sample.images.iter().filter(|p| p.starts_with(&front.upload_dir)) {
        let _ = std::fs::remove_file(p);
    }
    let traj = traj
        .map_err(|_| Refusal(503, "the model thread has stopped".into()))?
        .map_err(|e| Refusal(500, e.to_string()))?;
    let trajectory = crate::messages::trajectory_messages(&sample, &traj, &front.system, None);
    let tool_calls: Vec<Value> = traj
        .tool_calls()
        .map(|c| json!({"name": c.name, "arguments": c.arguments, "result": c.result_text, "success": c.success}))
        .collect();
    Ok(match judgment {
        None => {
            let completion = traj.response_len();
            json!({
                "id": format!("chatcmpl-{id}"),
                "object": "chat.completion",
                "created": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                "model": body.get("model").cloned().unwrap_or(json!(front.model_name)),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": traj.final_text},
                             "finish_reason": if matches!(traj.stop_reason, armt_data::StopReason::Answered) { "stop" } else { "length" }}],
                "usage": {"prompt_tokens": traj.prompt_len, "completion_tokens": completion, "total_tokens": traj.token_ids.len()},
                "armt": {"trajectory": trajectory, "tool_calls": tool_calls, "stop_reason": traj.stop_reason},
            })
        }
        Some(j) => {
            let choice = extract_choice(&traj.final_text, j);
            let preference: Value = match (&choice, j) {
                (Some(Choice::Candidate(k)), Judgment::Pair { candidates }) => {
                    json!((1..=candidates)
                        .map(|c| if c == *k { 1.0 } else { 0.0 })
                        .collect::<Vec<f64>>())
                }
                (Some(Choice::Truth(t)), Judgment::Single) if t == "True" => json!([1.0]),
                (Some(Choice::Truth(t)), Judgment::Single) if t == "False" => json!([0.0]),
                _ => Value::Null,
            };
            json!({
                "verdict": choice.map(|c| match c { Choice::Candidate(k) => json!(k), Choice::Truth(t) => json!(t) }),
                "preference": preference,
                "answer": traj.final_text,
                "tool_calls": tool_calls,
                "trajectory": trajectory,
                "stop_reason": traj.stop_reason,
            })
        }
    })
}

/// An image reference from a request: a data URL (written to the upload folder) or a file path
/// that must lie under one of the configured roots.
fn image_path(url: &str, front: &Front, id: u64, k: usize) -> Result<PathBuf, Refusal> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest
            .split_once(',')
            .ok_or_else(|| bad("a data URL without a comma"))?;
        if !meta.ends_with(";base64") || !meta.starts_with("image/") {
            return Err(bad("data URLs must be `data:image/<type>;base64,…`"));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| bad(format!("image {k}: bad base64: {e}")))?;
        image::load_from_memory(&bytes).map_err(|e| bad(format!("image {k}: not a readable image: {e}")))?;
        let ext = armt_data::formats::image_extension(&bytes);
        let p = front.upload_dir.join(format!("req{id}-{k}.{ext}"));
        std::fs::write(&p, &bytes).map_err(|e| Refusal(500, format!("saving image {k}: {e}")))?;
        return Ok(p);
    }
    let raw = url.strip_prefix("file://").unwrap_or(url);
    if front.roots.is_empty() {
        return Err(bad(
            "file paths are not allowed: the server has no --image-root (send a data URL)",
        ));
    }
    let p = std::fs::canonicalize(raw).map_err(|e| bad(format!("image {k}: {raw}: {e}")))?;
    if !front.roots.iter().any(|r| p.starts_with(r)) {
        return Err(bad(format!(
            "image {k}: {raw} is outside the configured image roots"
        )));
    }
    image::open(&p).map_err(|e| bad(format!("image {k}: {raw}: {e}")))?;
    Ok(p)
}

fn placeholder_sample(
    id: u64,
    prompt: String,
    images: Vec<PathBuf>,
    text_0: Option<String>,
    judgment: Judgment,
) -> Sample {
    Sample {
        id: format!("req{id}"),
        task: if text_0.is_some() {
            TaskKind::Instruction
        } else {
            TaskKind::Zoom
        },
        prompt,
        images,
        document: None,
        response: text_0,
        judgment,
        // Not scored: requests have no ground truth.
        ground_truth: match judgment {
            Judgment::Single => "true".into(),
            Judgment::Pair { .. } => "1".into(),
        },
        source: None,
    }
}

fn text_0(body: &Value) -> Result<Option<String>, Refusal> {
    match body.get("text_0") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad("`text_0` must be a string")),
    }
}

fn chat_sample(body: &Value, front: &Front, id: u64) -> Result<Sample, Refusal> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`messages` must be a list"))?;
    let users: Vec<&Value> = messages.iter().filter(|m| m["role"] == "user").collect();
    if users.len() != 1
        || messages
            .iter()
            .any(|m| !matches!(m["role"].as_str(), Some("user") | Some("system")))
    {
        return Err(bad(
            "send one `user` message (and optionally `system`): the tool loop runs on the server",
        ));
    }
    let (mut text, mut images) = (String::new(), Vec::new());
    match &users[0]["content"] {
        Value::String(s) => text.push_str(s),
        Value::Array(parts) => {
            for (k, p) in parts.iter().enumerate() {
                match p["type"].as_str() {
                    Some("text") => text.push_str(
                        p["text"]
                            .as_str()
                            .ok_or_else(|| bad(format!("content[{k}].text must be a string")))?,
                    ),
                    Some("image_url") => {
                        let url = p["image_url"]["url"]
                            .as_str()
                            .or_else(|| p["image_url"].as_str())
                            .ok_or_else(|| bad(format!("content[{k}].image_url.url must be a string")))?;
                        images.push(image_path(url, front, id, images.len())?);
                    }
                    other => return Err(bad(format!("content[{k}]: unsupported part type {other:?}"))),
                }
            }
        }
        _ => {
            return Err(bad(
                "the user message's `content` must be text or a list of parts",
            ))
        }
    }
    // `temperature` and `max_tokens` are not per request: one sampler serves the whole batch, so
    // the server's --temperature and --config limits apply.
    Ok(placeholder_sample(
        id,
        text,
        images,
        text_0(body)?,
        Judgment::Pair { candidates: 2 },
    ))
}

fn judge_sample(body: &Value, front: &Front, id: u64) -> Result<(Sample, JobKind), Refusal> {
    let question = body
        .get("question")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("`question` must be a string"))?;
    let candidates: Vec<String> = body
        .get("candidates")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`candidates` must be a list of strings"))?
        .iter()
        .map(|c| {
            c.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad("`candidates` must be a list of strings"))
        })
        .collect::<Result<_, _>>()?;
    let rm_tag = match candidates.len() {
        1 => "single_rm",
        2 => "pair_rm",
        4 => "4-way-pair_rm",
        n => return Err(bad(format!("{n} candidates: give 1 (true/false), 2 or 4"))),
    };
    let urls = body
        .get("images")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("`images` must be a list"))?;
    let images = urls
        .iter()
        .enumerate()
        .map(|(k, u)| {
            image_path(
                u.as_str()
                    .ok_or_else(|| bad(format!("images[{k}] must be a string")))?,
                front,
                id,
                k,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let item = ArmBenchItem {
        idx: json!(id),
        rm_tag: rm_tag.into(),
        question: question.into(),
        preds: candidates,
        images: Vec::new(),
        gt: Value::Null,
        doc_id: None,
        constraints: body
            .get("constraint")
            .and_then(Value::as_str)
            .map(|c| vec![json!({"value": c})]),
        rest: Default::default(),
    };
    let judgment = item.judgment().map_err(|e| bad(e.to_string()))?;
    let prompt = format!(
        "{}\n\n{}",
        item.prompt().map_err(|e| bad(e.to_string()))?,
        FIXED_COT_PROMPT
    );
    let text_0 = text_0(body)?.or_else(|| item.constraints.as_ref().map(|_| item.preds[0].clone()));
    Ok((
        placeholder_sample(id, prompt, images, text_0, judgment),
        JobKind::Judge(judgment),
    ))
}
