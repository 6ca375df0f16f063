//! The think–act–observe loop over a batch of trajectories: sample a turn for every live row,
//! run the tool calls in parallel, append the tool turns exactly as the chat template renders
//! them, and go on until each row answers or reaches a limit.

use crate::generator::{Chunk, Generator};
use crate::{RolloutConfig, RolloutError};
use armt_data::{Sample, StopReason, ToolCallRecord, Trajectory, Turn};
use armt_processing::{render_chat, Content, ContentPart, ImageSource, Message, ProcessedImage, Processor};
use armt_tools::{parse_tool_call, truncate_tool_text, ToolContext, ToolRegistry};
use rayon::prelude::*;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Told to the model instead of running its tool call in the last allowed turn (ARM-Thinker's text).
pub const LAST_TURN_MESSAGE: &str = "**Important Requirement:**\nYou have reached the maximum number of tool calls and are not allowed to call any more tools. Please reason on the current situation and **must** give your final answer or judgment within `<answer>...</answer>`.";

/// Appended to the user's prompt (ARM-Thinker's per-turn instruction).
pub const DEFAULT_COT_PROMPT: &str = "**Important Requirement:**\nThe given image is `original_image`. You must output your reasoning inside `<think>...</think>`. After reasoning, either output the final answer within `<answer>...</answer>` or call a tool within `<tool_call>...</tool_call>`. You may call tools multiple times across turns to assist with judgment or verification, **but only one tool per turn**. If a tool call fails, you can retry or stop and give your final answer. Once no more tool calls are needed, provide your final answer or judgment within `<answer>...</answer>`.";

/// One finished rollout: the record, and the images of its token sequence in order (the
/// trainer needs their pixels to recompute log-probs).
#[derive(Debug, Clone)]
pub struct Rollout {
    pub trajectory: Trajectory,
    pub images: Vec<ProcessedImage>,
}

/// Special token ids the loop needs, looked up in the tokenizer.
#[derive(Debug, Clone, Copy)]
pub struct TemplateIds {
    pub im_end: i64,
    pub endoftext: i64,
    pub tool_call_end: i64,
    pub image_pad: i64,
}

impl TemplateIds {
    pub fn from_tokenizer(tok: &tokenizers::Tokenizer) -> Result<Self, RolloutError> {
        let id = |t: &str| {
            tok.token_to_id(t)
                .map(|i| i as i64)
                .ok_or_else(|| RolloutError::State(format!("the tokenizer has no `{t}` token")))
        };
        Ok(Self {
            im_end: id("<|im_end|>")?,
            endoftext: id("<|endoftext|>")?,
            tool_call_end: id("</tool_call>")?,
            image_pad: id("<|image_pad|>")?,
        })
    }
}

/// Everything a rollout batch needs besides the policy.
pub struct RolloutEnv<'a> {
    pub processor: &'a Processor,
    pub tools: &'a ToolRegistry,
    pub config: &'a RolloutConfig,
    /// Where observation images are saved (`None`: kept in memory only).
    pub image_dir: Option<PathBuf>,
}

struct Row<'s> {
    sample: &'s Sample,
    group_index: usize,
    ids: Vec<i64>,
    prompt_len: usize,
    mask: Vec<u8>,
    logprobs: Vec<f32>,
    turns: Vec<Turn>,
    ctx: ToolContext,
    image_keys: Vec<(String, PathBuf)>,
    images: Vec<ProcessedImage>,
    /// Set when the row is finished.
    stop: Option<StopReason>,
    /// The model was told this is its last turn.
    forced_last: bool,
}

impl<'a> RolloutEnv<'a> {
    fn encode_text_with_images(
        &self,
        text: &str,
        images: &[Arc<image::DynamicImage>],
    ) -> Result<Chunk, RolloutError> {
        let ip = self.processor.image_processor();
        let merge = ip.config().merge_size;
        let mut processed = Vec::with_capacity(images.len());
        let mut expanded = String::with_capacity(text.len());
        let mut pieces = text.split("<|image_pad|>");
        expanded.push_str(pieces.next().unwrap_or(""));
        for (k, piece) in pieces.enumerate() {
            let img = images
                .get(k)
                .ok_or_else(|| RolloutError::State("more image slots than images".into()))?;
            let p = ip.preprocess(img)?;
            let n = p.grid_thw.iter().product::<usize>() / (merge * merge);
            for _ in 0..n {
                expanded.push_str("<|image_pad|>");
            }
            expanded.push_str(piece);
            processed.push(p);
        }
        let enc = self
            .processor
            .tokenizer()
            .encode(expanded.as_str(), false)
            .map_err(|e| RolloutError::State(format!("tokenizing: {e}")))?;
        Ok(Chunk {
            ids: enc.get_ids().iter().map(|&i| i as i64).collect(),
            images: processed,
        })
    }

    /// The first messages of a sample: its images, prompt and the per-turn instruction.
    pub fn prompt_messages(&self, sample: &Sample) -> Vec<Message> {
        let mut parts: Vec<ContentPart> = sample
            .images
            .iter()
            .map(|p| ContentPart::Image(ImageSource::Path(p.clone())))
            .collect();
        let mut text = sample.prompt.clone();
        if !self.config.cot_prompt.is_empty() {
            text.push_str("\n\n");
            text.push_str(&self.config.cot_prompt);
        }
        parts.push(ContentPart::Text(text));
        vec![Message::new("user", Content::Parts(parts))]
    }

    fn prompt_chunk(&self, sample: &Sample) -> Result<(Chunk, Vec<Arc<image::DynamicImage>>), RolloutError> {
        let messages = self.prompt_messages(sample);
        let schemas = self.tools.schemas();
        let text = render_chat(&messages, Some(&schemas), true);
        let mut images = Vec::new();
        for p in &sample.images {
            let img = image::open(p).map_err(|e| {
                RolloutError::Data(format!("sample {}: image {}: {e}", sample.id, p.display()))
            })?;
            images.push(Arc::new(img));
        }
        Ok((self.encode_text_with_images(&text, &images)?, images))
    }

    /// The tool turn as the chat template renders it after an assistant turn that ended with
    /// `</tool_call>`: close the assistant turn, the tool response (images first, then text)
    /// inside a user turn, and open the next assistant turn.
    fn tool_turn_text(&self, n_images: usize, text: &str) -> String {
        let mut s = String::from("<|im_end|>\n<|im_start|>user\n<tool_response>\n");
        for _ in 0..n_images {
            s.push_str("<|vision_start|><|image_pad|><|vision_end|>");
        }
        s.push_str(text);
        s.push_str("\n</tool_response><|im_end|>\n<|im_start|>assistant\n");
        s
    }

    /// Runs `n` rollouts of each sample with `generator` (whose rows are `samples.len() * n`,
    /// sample-major). `progress` is called with the number of finished rows.
    pub fn run(
        &self,
        generator: &mut dyn Generator,
        samples: &[Sample],
        n: usize,
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<Rollout>, RolloutError> {
        let cfg = self.config;
        let ids = TemplateIds::from_tokenizer(self.processor.tokenizer())?;
        let mut rows: Vec<Row> = Vec::with_capacity(samples.len() * n);
        let mut prompt_chunks = Vec::new();
        for sample in samples {
            let (chunk, images) = self.prompt_chunk(sample)?;
            for g in 0..n {
                let mut ctx = ToolContext::from_sample(sample);
                for (k, img) in images.iter().enumerate() {
                    let key = if k == 0 {
                        "original_image".to_string()
                    } else {
                        format!("original_image_{k}")
                    };
                    ctx.add_image(key, img.clone());
                }
                let image_keys = sample
                    .images
                    .iter()
                    .enumerate()
                    .map(|(k, p)| {
                        (
                            if k == 0 {
                                "original_image".to_string()
                            } else {
                                format!("original_image_{k}")
                            },
                            p.clone(),
                        )
                    })
                    .collect();
                rows.push(Row {
                    sample,
                    group_index: g,
                    ids: chunk.ids.clone(),
                    prompt_len: chunk.ids.len(),
                    mask: Vec::new(),
                    logprobs: Vec::new(),
                    turns: Vec::new(),
                    ctx,
                    image_keys,
                    images: chunk.images.clone(),
                    stop: None,
                    forced_last: false,
                });
                prompt_chunks.push(chunk.clone());
            }
        }
        for r in &rows {
            if r.prompt_len >= cfg.max_context {
                return Err(RolloutError::Data(format!(
                    "sample {}: the prompt has {} tokens, over max_context {}",
                    r.sample.id, r.prompt_len, cfg.max_context
                )));
            }
        }
        let all: Vec<usize> = (0..rows.len()).collect();
        generator.append(&all, &prompt_chunks)?;

        let stop_ids = [ids.im_end, ids.endoftext, ids.tool_call_end];
        let mut finished = 0;
        loop {
            let live: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].stop.is_none()).collect();
            if live.is_empty() {
                break;
            }
            let budgets: Vec<usize> = live
                .iter()
                .map(|&i| {
                    let r = &rows[i];
                    let used = r.ids.len() - r.prompt_len;
                    cfg.max_response_tokens
                        .saturating_sub(used)
                        .min(cfg.max_context.saturating_sub(r.ids.len()))
                        .min(cfg.max_turn_tokens)
                })
                .collect();
            let sampled = generator.generate(&live, &budgets, &stop_ids)?;

            // Record what the policy wrote and decide each row's next step.
            let mut calls: Vec<(usize, Result<armt_tools::ParsedToolCall, String>)> = Vec::new();
            for ((&i, s), &budget) in live.iter().zip(&sampled).zip(&budgets) {
                let r = &mut rows[i];
                r.ids.extend_from_slice(&s.ids);
                r.mask.extend(std::iter::repeat_n(1u8, s.ids.len()));
                r.logprobs.extend_from_slice(&s.logprobs);
                let body: Vec<u32> = s
                    .ids
                    .iter()
                    .filter(|&&t| t != ids.im_end && t != ids.endoftext)
                    .map(|&t| t as u32)
                    .collect();
                let text = self
                    .processor
                    .tokenizer()
                    .decode(&body, false)
                    .map_err(|e| RolloutError::State(format!("decoding: {e}")))?;
                let last = s.ids.last().copied();
                r.turns.push(Turn {
                    assistant_text: text.clone(),
                    tool_call: None,
                    tool_error: None,
                });
                if last == Some(ids.tool_call_end) {
                    if r.forced_last {
                        r.stop = Some(StopReason::MaxTurns);
                    } else {
                        calls.push((
                            i,
                            parse_tool_call(&text)
                                .unwrap_or_else(|| Err("Error: no <tool_call> found.".into())),
                        ));
                    }
                } else if last == Some(ids.im_end) || last == Some(ids.endoftext) {
                    r.stop = Some(if r.forced_last {
                        StopReason::MaxTurns
                    } else {
                        StopReason::Answered
                    });
                } else if s.ids.len() >= budget {
                    let used = r.ids.len() - r.prompt_len;
                    r.stop = Some(
                        if r.ids.len() >= cfg.max_context && used < cfg.max_response_tokens {
                            StopReason::ContextFull
                        } else {
                            StopReason::MaxTokens
                        },
                    );
                } else {
                    r.stop = Some(StopReason::Answered);
                }
            }

            // Run the calls (in parallel across rows), or tell the model its turns are up.
            // As ARM-Thinker: a call in the max_turns-th turn is not run; the model is told to answer.
            let turn_limit_reached = |r: &Row| r.turns.len() >= cfg.max_turns;
            // Each call gets its row's tool context (moved out and back, so nothing is copied).
            let jobs: Vec<(
                usize,
                Result<armt_tools::ParsedToolCall, String>,
                ToolContext,
                bool,
            )> = calls
                .into_iter()
                .map(|(i, parsed)| {
                    let last = turn_limit_reached(&rows[i]);
                    (i, parsed, std::mem::take(&mut rows[i].ctx), last)
                })
                .collect();
            let results: Vec<(usize, ToolResult, ToolContext)> = jobs
                .into_par_iter()
                .map(|(i, parsed, mut ctx, last)| {
                    let res = if last {
                        ToolResult::LastTurn
                    } else {
                        match parsed {
                            Err(text) => ToolResult::Malformed(text),
                            Ok(call) => {
                                let started = Instant::now();
                                let out = self.tools.call(&call, &mut ctx);
                                ToolResult::Ran {
                                    call,
                                    out: Box::new(out),
                                    ms: started.elapsed().as_secs_f64() * 1e3,
                                }
                            }
                        }
                    };
                    (i, res, ctx)
                })
                .collect();

            let mut append_rows = Vec::new();
            let mut append_chunks = Vec::new();
            for (i, res, ctx) in results {
                let r = &mut rows[i];
                r.ctx = ctx;
                let (text, images): (String, Vec<Arc<image::DynamicImage>>) = match res {
                    ToolResult::LastTurn => {
                        r.forced_last = true;
                        (LAST_TURN_MESSAGE.to_string(), Vec::new())
                    }
                    ToolResult::Malformed(text) => {
                        r.turns.last_mut().unwrap().tool_error = Some(text.clone());
                        (text, Vec::new())
                    }
                    ToolResult::Ran { call, out, ms } => {
                        let text = truncate_tool_text(&out.text, cfg.max_tool_text_chars);
                        let room = cfg.max_images.saturating_sub(r.images.len());
                        let (mut images, mut keys) = (out.images.clone(), out.image_keys.clone());
                        let mut text = text;
                        if images.len() > room {
                            images.truncate(room);
                            keys.truncate(room);
                            text.push_str(&format!(
                                "\n(Only {room} more image(s) allowed in this conversation: the rest were not shown.)"
                            ));
                        }
                        let mut saved = Vec::new();
                        for (img, key) in images.iter().zip(&keys) {
                            let path = match &self.image_dir {
                                Some(dir) => {
                                    let p = dir.join(format!(
                                        "{}-{}-{key}.png",
                                        sanitize(&r.sample.id),
                                        r.group_index
                                    ));
                                    img.save(&p).map_err(|e| {
                                        RolloutError::Data(format!("saving {}: {e}", p.display()))
                                    })?;
                                    p
                                }
                                None => PathBuf::new(),
                            };
                            r.image_keys.push((key.clone(), path));
                            saved.push(key.clone());
                        }
                        let turn = r.turns.last_mut().unwrap();
                        if !out.success {
                            turn.tool_error = Some(text.clone());
                        }
                        turn.tool_call = Some(ToolCallRecord {
                            name: call.name,
                            arguments: call.arguments,
                            result_text: text.clone(),
                            result_images: saved,
                            success: out.success,
                            reward: out.reward,
                            duration_ms: ms,
                        });
                        (text, images)
                    }
                };
                let chunk =
                    self.encode_text_with_images(&self.tool_turn_text(images.len(), &text), &images)?;
                if r.ids.len() + chunk.ids.len() >= cfg.max_context {
                    r.stop = Some(StopReason::ContextFull);
                    continue;
                }
                r.ids.extend_from_slice(&chunk.ids);
                r.mask.extend(std::iter::repeat_n(0u8, chunk.ids.len()));
                r.logprobs.extend(std::iter::repeat_n(0.0f32, chunk.ids.len()));
                r.images.extend(chunk.images.iter().cloned());
                append_rows.push(i);
                append_chunks.push(chunk);
            }
            if !append_rows.is_empty() {
                generator.append(&append_rows, &append_chunks)?;
            }
            let done = rows.iter().filter(|r| r.stop.is_some()).count();
            if done > finished {
                finished = done;
                progress(finished);
            }
        }

        Ok(rows
            .into_iter()
            .map(|r| {
                let final_text = r
                    .turns
                    .last()
                    .map(|t| t.assistant_text.clone())
                    .unwrap_or_default();
                Rollout {
                    trajectory: Trajectory {
                        sample_id: r.sample.id.clone(),
                        group_index: r.group_index,
                        task: r.sample.task,
                        token_ids: r.ids,
                        prompt_len: r.prompt_len,
                        loss_mask: r.mask,
                        logprobs: r.logprobs,
                        turns: r.turns,
                        images: r.image_keys,
                        final_text,
                        stop_reason: r.stop.unwrap_or(StopReason::MaxTokens),
                        reward: None,
                    },
                    images: r.images,
                }
            })
            .collect())
    }
}

enum ToolResult {
    LastTurn,
    Malformed(String),
    Ran {
        call: armt_tools::ParsedToolCall,
        out: Box<armt_tools::ToolOutput>,
        ms: f64,
    },
}

fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}
