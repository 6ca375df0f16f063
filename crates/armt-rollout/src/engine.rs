//! The think–act–observe loop over a batch of trajectories: sample a turn for every live row,
//! run the tool calls in parallel, append the tool turns exactly as the chat template renders
//! them, and go on until each row answers or reaches a limit.

use crate::generator::{CachePlan, Chunk, Generator, Sampled};
use crate::rng::RowRng;
use crate::{RolloutConfig, RolloutError};
use armt_data::{Sample, StopReason, ToolCallRecord, Trajectory, Turn};
use armt_processing::hermes::{TOOL_CALL_CLOSE, TOOL_RESPONSE_CLOSE, TOOL_RESPONSE_OPEN};
use armt_processing::{render_chat, Content, ContentPart, ImageSource, Message, ProcessedImage, Processor};
use armt_tools::{parse_tool_call, truncate_tool_text, ToolContext, ToolRegistry};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Instant;

/// Told to the model instead of running its tool call in the last allowed turn (ARM-Thinker's text).
pub const LAST_TURN_MESSAGE: &str = "**Important Requirement:**\nYou have reached the maximum number of tool calls and are not allowed to call any more tools. Please reason on the current situation and **must** give your final answer or judgment within `<answer>...</answer>`.";

/// Appended to the user's prompt (ARM-Thinker's per-turn instruction).
pub const DEFAULT_COT_PROMPT: &str = "**Important Requirement:**\nThe given image is `original_image`. You must output your reasoning inside `<think>...</think>`. After reasoning, either output the final answer within `<answer>...</answer>` or call a tool within `<tool_call>...</tool_call>`. You may call tools multiple times across turns to assist with judgment or verification, **but only one tool per turn**. If a tool call fails, you can retry or stop and give your final answer. Once no more tool calls are needed, provide your final answer or judgment within `<answer>...</answer>`.";

/// One finished rollout: the record, and the images of its token sequence in order (the
/// trainer needs their pixels to recompute log-probs).
#[derive(Debug, Clone)]
pub struct Rollout {
    /// Index of the sample (in the `samples` given to the run) this row rolled out.
    pub group: usize,
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
                .ok_or_else(|| RolloutError::MissingToken(t.to_string()))
        };
        Ok(Self {
            im_end: id("<|im_end|>")?,
            endoftext: id("<|endoftext|>")?,
            tool_call_end: id(TOOL_CALL_CLOSE)?,
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
    sample_index: usize,
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
    /// Token budget of the current turn.
    budget: usize,
    /// The last turn was re-tokenized (`retokenize_turns`): the generator rewinds it before the
    /// next append, which starts with the new tokens.
    rewind: bool,
}

impl Row<'_> {
    fn into_rollout(self) -> Rollout {
        let final_text = self
            .turns
            .last()
            .map(|t| t.assistant_text.clone())
            .unwrap_or_default();
        Rollout {
            group: self.sample_index,
            trajectory: Trajectory {
                sample_id: self.sample.id.clone(),
                group_index: self.group_index,
                task: self.sample.task,
                token_ids: self.ids,
                prompt_len: self.prompt_len,
                loss_mask: self.mask,
                logprobs: self.logprobs,
                turns: self.turns,
                images: self.image_keys,
                final_text,
                stop_reason: self.stop.unwrap_or(StopReason::MaxTokens),
                reward: None,
            },
            images: self.images,
        }
    }
}

/// A prompt that fits: its sample's index, its tokens and images, and the decoded images (for
/// the tools).
type Prompt = (usize, Chunk, Vec<Arc<image::DynamicImage>>);

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
                .ok_or_else(|| RolloutError::Invariant("more image slots than images".into()))?;
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
            .map_err(|source| RolloutError::Tokenizer {
                what: "tokenizing",
                source,
            })?;
        Ok(Chunk {
            ids: enc.get_ids().iter().map(|&i| i as i64).collect(),
            images: processed,
            messages: Vec::new(),
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
            let img = image::open(p).map_err(|source| RolloutError::Image {
                sample: sample.id.clone(),
                path: p.clone(),
                source,
            })?;
            // The model's input is the same either way (resizing is idempotent).
            let img = match self.config.tools_see_resized_images {
                true => self.processor.image_processor().resized(&img)?,
                false => img,
            };
            images.push(Arc::new(img));
        }
        let mut chunk = self.encode_text_with_images(&text, &images)?;
        // As chat messages: the system prompt the template writes for the tools, then the user.
        chunk.messages = std::iter::once(Message::new(
            "system",
            Content::Text(armt_tools::system_prompt(&schemas)),
        ))
        .chain(messages)
        .collect();
        Ok((chunk, images))
    }

    /// The tool turn as the chat template renders it after an assistant turn that ended with
    /// `</tool_call>`: close the assistant turn, the tool response (images first, then text)
    /// inside a user turn, and open the next assistant turn.
    fn tool_turn_text(&self, n_images: usize, text: &str) -> String {
        let mut s = format!("<|im_end|>\n<|im_start|>user\n{TOOL_RESPONSE_OPEN}\n");
        for _ in 0..n_images {
            s.push_str("<|vision_start|><|image_pad|><|vision_end|>");
        }
        s.push_str(text);
        s.push_str(&format!(
            "\n{TOOL_RESPONSE_CLOSE}<|im_end|>\n<|im_start|>assistant\n"
        ));
        s
    }

    /// Runs `n` rollouts of each sample with `generator` (step 0, groups numbered from 0): see
    /// [`RolloutEnv::run_keyed`]. `progress` is called with the number of finished rows.
    pub fn run(
        &self,
        generator: &mut dyn Generator,
        samples: &[Sample],
        n: usize,
        progress: impl FnMut(usize),
    ) -> Result<Vec<Rollout>, RolloutError> {
        Ok(self.run_keyed(generator, samples, n, 0, None, progress)?.rollouts)
    }

    /// Runs `n` rollouts of each sample. Row j of sample k samples from
    /// `RowRng::new(config.sampling.seed, step, groups[k], j)` (`groups`: the samples' global
    /// indices, e.g. across data-parallel ranks; None: 0, 1, …), so trajectories do not depend
    /// on batching. Groups are queued and admitted as `max_rows` / `max_batch_tokens` allow; a
    /// prompt that can never fit is skipped and reported in [`RunOutcome::skipped`].
    pub fn run_keyed(
        &self,
        generator: &mut dyn Generator,
        samples: &[Sample],
        n: usize,
        step: u64,
        groups: Option<&[u64]>,
        mut progress: impl FnMut(usize),
    ) -> Result<RunOutcome, RolloutError> {
        let cfg = self.config;
        let ids = TemplateIds::from_tokenizer(self.processor.tokenizer())?;
        self.check_run_settings(n, samples.len(), groups)?;
        // Prompts (tokenized, images decoded once per sample), and which ones fit.
        let (kept, skipped) = self.admissible_prompts(samples, n)?;
        if kept.is_empty() {
            return Ok(RunOutcome {
                rollouts: Vec::new(),
                skipped,
            });
        }
        let plan = self.cache_plan(&kept, n);
        generator.prepare(&plan)?;
        let mut agents = AgentLoop {
            env: self,
            generator,
            kept: &kept,
            rows: rows_for(samples, &kept, n),
            names: RowNames::new(&kept, n),
            schedule: Schedule::new(kept.len(), plan.groups),
            n,
            step,
            groups,
            ids,
        };
        // Decode windows; turns that end go to the tools (on their own threads, while the other
        // rows keep decoding); tool turns come back as appends.
        std::thread::scope(|scope| -> Result<(), RolloutError> {
            let (tx, rx) = mpsc::channel::<ToolDone>();
            let tools = self.tools;
            let mut spawn_tool = |i: usize, call: armt_tools::ParsedToolCall, ctx: ToolContext| {
                let tx = tx.clone();
                scope.spawn(move || {
                    let (res, ctx) = run_tool(tools, call, ctx);
                    // The receiver outlives the scope's threads.
                    let _ = tx.send((i, res, ctx));
                });
            };
            loop {
                agents.admit_waiting_groups()?;
                if agents.schedule.finished == agents.rows.len() {
                    break;
                }
                let mut ends = TurnEnds::default();
                if agents.schedule.decoding > 0 {
                    agents.decode_window(&mut spawn_tool, &mut ends)?;
                } else if agents.schedule.in_tools > 0 {
                    // Nothing to decode: wait for a tool.
                    let done = rx
                        .recv()
                        .map_err(|_| RolloutError::Invariant("a tool thread vanished".into()))?;
                    agents.schedule.in_tools -= 1;
                    ends.tool_done.push(done);
                } else if agents.schedule.waiting.is_empty() {
                    return Err(RolloutError::Invariant("rows left with nothing to run".into()));
                }
                while let Ok(done) = rx.try_recv() {
                    agents.schedule.in_tools -= 1;
                    ends.tool_done.push(done);
                }
                agents.continue_after_tools(ends.tool_done, &mut ends.ended)?;
                agents.retire(ends.ended);
                progress(agents.schedule.finished);
            }
            Ok(())
        })?;
        let mut rows = agents.rows;

        if cfg.retokenize_turns {
            // The last turn too, so the record holds every turn as a server hands it back.
            for r in rows.iter_mut() {
                self.retokenize_last_turn(r)?;
            }
        }
        let rollouts = rows.into_iter().map(Row::into_rollout).collect();
        Ok(RunOutcome { rollouts, skipped })
    }

    /// The samples' prompts, and the indices of those that can never fit (prompt not below
    /// `max_context`, or one group over `max_batch_tokens`), which are skipped with a logged count.
    fn check_run_settings(
        &self,
        n: usize,
        samples: usize,
        groups: Option<&[u64]>,
    ) -> Result<(), RolloutError> {
        let cfg = self.config;
        if n == 0 || cfg.max_rows < n || cfg.max_response_tokens == 0 || cfg.max_turn_tokens == 0 {
            return Err(RolloutError::Settings(format!(
                "rollout: n = {n}, max_rows = {}, max_response_tokens = {}, max_turn_tokens = {}: \
                 need n >= 1, max_rows >= n and non-zero token limits",
                cfg.max_rows, cfg.max_response_tokens, cfg.max_turn_tokens
            )));
        }
        match groups {
            Some(g) if g.len() != samples => Err(RolloutError::Settings(format!(
                "{} group indices for {samples} samples",
                g.len()
            ))),
            _ => Ok(()),
        }
    }

    fn admissible_prompts(
        &self,
        samples: &[Sample],
        n: usize,
    ) -> Result<(Vec<Prompt>, Vec<usize>), RolloutError> {
        let cfg = self.config;
        let suffix = suffix_tokens(cfg);
        let mut kept: Vec<Prompt> = Vec::new();
        let mut skipped = Vec::new();
        for (k, sample) in samples.iter().enumerate() {
            let (chunk, images) = self.prompt_chunk(sample)?;
            let len = chunk.ids.len();
            if len >= cfg.max_context || len + n * suffix > cfg.max_batch_tokens {
                skipped.push(k);
                continue;
            }
            kept.push((k, chunk, images));
        }
        if !skipped.is_empty() {
            eprintln!(
                "rollout: skipped {} of {} prompts too long for max_context {} / max_batch_tokens {}",
                skipped.len(),
                samples.len(),
                cfg.max_context,
                cfg.max_batch_tokens
            );
        }
        Ok((kept, skipped))
    }

    /// Resident groups and cache sizes: as many whole groups as `max_rows` rows and
    /// `max_batch_tokens` KV positions (longest prompt + n row slots each) allow.
    fn cache_plan(&self, kept: &[Prompt], n: usize) -> CachePlan {
        let cfg = self.config;
        let suffix = suffix_tokens(cfg);
        let prefix = kept.iter().map(|(_, c, _)| c.ids.len()).max().unwrap_or(1);
        CachePlan {
            groups: (cfg.max_rows / n)
                .min(kept.len())
                .min(cfg.max_batch_tokens / (prefix + n * suffix))
                .max(1),
            rows_per_group: n,
            prefix_tokens: prefix,
            suffix_tokens: suffix,
            turn_tokens: cfg.max_turn_tokens,
            prefill_chunk: cfg.prefill_chunk,
            sync_every: cfg.sync_every,
        }
    }

    /// Tokens the row's next turn may take (≥ 1 while the row is live: appends that would leave
    /// no room end the row instead).
    fn turn_budget(&self, r: &Row) -> usize {
        let cfg = self.config;
        let used = r.ids.len() - r.prompt_len;
        cfg.max_response_tokens
            .saturating_sub(used)
            .min(cfg.max_context.saturating_sub(r.ids.len()))
            .min(cfg.max_turn_tokens)
    }

    /// Records what the policy wrote in a turn; sets the row's stop reason if it ended, or returns
    /// the tool call it made (parsed, or the parse error to send back).
    fn record_turn(
        &self,
        r: &mut Row,
        s: &Sampled,
        budget: usize,
        ids: &TemplateIds,
    ) -> Result<Option<Result<armt_tools::ParsedToolCall, armt_tools::ToolCallError>>, RolloutError> {
        let cfg = self.config;
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
            .map_err(|source| RolloutError::Tokenizer {
                what: "decoding",
                source,
            })?;
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
                return Ok(Some(
                    parse_tool_call(&text).unwrap_or(Err(armt_tools::ToolCallError::NoOpeningTag)),
                ));
            }
        } else if last == Some(ids.im_end) || last == Some(ids.endoftext) {
            r.stop = Some(if r.forced_last {
                StopReason::MaxTurns
            } else {
                StopReason::Answered
            });
        } else if s.ids.len() >= budget || s.truncated {
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
        Ok(None)
    }

    /// The tool turn after a call (its result, an error, or the last-turn message), recorded in
    /// the row; None when it does not fit the row's limits (the row ends).
    fn tool_turn(&self, r: &mut Row, res: ToolResult) -> Result<Option<Chunk>, RolloutError> {
        let cfg = self.config;
        let (text, images): (String, Vec<Arc<image::DynamicImage>>) = match res {
            ToolResult::LastTurn => {
                r.forced_last = true;
                (LAST_TURN_MESSAGE.to_string(), Vec::new())
            }
            ToolResult::Malformed(text) => {
                if let Some(t) = r.turns.last_mut() {
                    t.tool_error = Some(text.clone());
                }
                if cfg.end_on_malformed_call {
                    r.stop = Some(StopReason::MalformedToolCall);
                    return Ok(None);
                }
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
                                armt_data::formats::file_safe(&r.sample.id),
                                r.group_index
                            ));
                            img.save(&p).map_err(|source| RolloutError::SaveImage {
                                path: p.clone(),
                                source,
                            })?;
                            p
                        }
                        None => PathBuf::new(),
                    };
                    r.image_keys.push((key.clone(), path));
                    saved.push(key.clone());
                }
                if let Some(turn) = r.turns.last_mut() {
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
                }
                (text, images)
            }
        };
        let mut chunk = self.encode_text_with_images(&self.tool_turn_text(images.len(), &text), &images)?;
        chunk.messages = vec![tool_message(&images, text)];
        let retokenized = match cfg.retokenize_turns {
            true => self.retokenize_last_turn(r)?,
            false => None,
        };
        let used = r.ids.len() - r.prompt_len;
        if r.ids.len() + chunk.ids.len() >= cfg.max_context {
            r.stop = Some(StopReason::ContextFull);
            return Ok(None);
        }
        // The response (policy and tool tokens, as verl's response_length) stays within its
        // limit, with room for at least one more policy token.
        if used + chunk.ids.len() >= cfg.max_response_tokens {
            r.stop = Some(StopReason::MaxTokens);
            return Ok(None);
        }
        r.ids.extend_from_slice(&chunk.ids);
        r.mask.extend(std::iter::repeat_n(0u8, chunk.ids.len()));
        r.logprobs.extend(std::iter::repeat_n(0.0f32, chunk.ids.len()));
        r.images.extend(chunk.images.iter().cloned());
        if let Some(turn) = retokenized {
            r.rewind = true;
            chunk.ids.splice(0..0, turn);
        }
        Ok(Some(chunk))
    }

    /// Replaces the row's last turn (the trailing policy tokens) by its text tokenized afresh;
    /// returns the new tokens when they differ (the generator must then rewind the turn).
    fn retokenize_last_turn(&self, r: &mut Row) -> Result<Option<Vec<i64>>, RolloutError> {
        let n = r.mask.iter().rev().take_while(|&&m| m == 1).count();
        let start = r.ids.len() - n;
        let old: Vec<u32> = r.ids[start..].iter().map(|&t| t as u32).collect();
        let tok = self.processor.tokenizer();
        let text = tok
            .decode(&old, false)
            .map_err(|source| RolloutError::Tokenizer {
                what: "decoding",
                source,
            })?;
        let new: Vec<i64> = tok
            .encode(text.as_str(), false)
            .map_err(|source| RolloutError::Tokenizer {
                what: "tokenizing",
                source,
            })?
            .get_ids()
            .iter()
            .map(|&t| t as i64)
            .collect();
        if new == r.ids[start..] {
            return Ok(None);
        }
        r.ids.truncate(start);
        r.mask.truncate(start - r.prompt_len);
        r.logprobs.truncate(start - r.prompt_len);
        r.ids.extend_from_slice(&new);
        r.mask.extend(std::iter::repeat_n(1u8, new.len()));
        r.logprobs.extend(std::iter::repeat_n(0.0f32, new.len()));
        Ok(Some(new))
    }
}

/// A tool turn as a chat message: its images first, then its text (ARM-Thinker's order).
fn tool_message(images: &[Arc<image::DynamicImage>], text: String) -> Message {
    let content = if images.is_empty() {
        Content::Text(text)
    } else {
        let mut parts: Vec<ContentPart> = images
            .iter()
            .map(|img| ContentPart::Image(ImageSource::Loaded(img.clone())))
            .collect();
        parts.push(ContentPart::Text(text));
        Content::Parts(parts)
    };
    Message::new("tool", content)
}

/// Cache positions one row may add after its prompt: the response limit (or the context), plus
/// one scratch position for decode writes past a finished turn.
pub(crate) fn suffix_tokens(cfg: &RolloutConfig) -> usize {
    cfg.max_response_tokens.min(cfg.max_context) + 1
}

/// One record per row, group-major over the kept prompts (row index = prompt · n + j).
fn rows_for<'s>(samples: &'s [Sample], kept: &[Prompt], n: usize) -> Vec<Row<'s>> {
    let mut rows: Vec<Row> = Vec::with_capacity(kept.len() * n);
    for (k, chunk, images) in kept {
        let sample = &samples[*k];
        for g in 0..n {
            let mut ctx = ToolContext::from_sample(sample);
            let mut image_keys = Vec::new();
            for (i, img) in images.iter().enumerate() {
                let key = if i == 0 {
                    "original_image".to_string()
                } else {
                    format!("original_image_{i}")
                };
                ctx.add_image(key.clone(), img.clone());
                image_keys.push((key, sample.images[i].clone()));
            }
            rows.push(Row {
                sample,
                sample_index: *k,
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
                budget: 0,
                rewind: false,
            });
        }
    }
    rows
}

/// A tool turn that has ended: the row, what the tool (or the loop, in its place) answered,
/// and the row's tool context, back from the tool thread.
type ToolDone = (usize, ToolResult, ToolContext);

/// The two names of a row: the loop's (its index in `rows`) and the generator's (sample index
/// · n + j, stable whatever prompts were skipped).
struct RowNames {
    n: usize,
    kept_samples: Vec<usize>,
    index_of: std::collections::HashMap<usize, usize>,
}

impl RowNames {
    fn new(kept: &[Prompt], n: usize) -> Self {
        let mut names = Self {
            n,
            kept_samples: kept.iter().map(|p| p.0).collect(),
            index_of: Default::default(),
        };
        names.index_of = (0..kept.len() * n).map(|i| (names.id(i), i)).collect();
        names
    }

    /// The generator's name of row `i`.
    fn id(&self, i: usize) -> usize {
        self.kept_samples[i / self.n] * self.n + i % self.n
    }

    /// The row the generator calls `id`.
    fn index(&self, id: usize) -> Result<usize, RolloutError> {
        self.index_of
            .get(&id)
            .copied()
            .ok_or_else(|| RolloutError::Invariant(format!("the generator returned unknown row {id}")))
    }
}

/// Where the rows are: groups waiting for a cache block, rows decoding, rows in their tools,
/// rows finished. A group holds its block until all its rows are finished.
struct Schedule {
    waiting: VecDeque<usize>,
    free_blocks: Vec<usize>,
    block_of_group: Vec<usize>,
    /// Unfinished rows per block.
    rows_left: Vec<usize>,
    finished: usize,
    decoding: usize,
    in_tools: usize,
}

impl Schedule {
    fn new(prompts: usize, blocks: usize) -> Self {
        Self {
            waiting: (0..prompts).collect(),
            free_blocks: (0..blocks).rev().collect(),
            block_of_group: vec![usize::MAX; prompts],
            rows_left: vec![0; blocks],
            finished: 0,
            decoding: 0,
            in_tools: 0,
        }
    }
}

/// What one pass of the loop ended: turns whose tool answer is ready, and finished rows.
#[derive(Default)]
struct TurnEnds {
    tool_done: Vec<ToolDone>,
    ended: Vec<usize>,
}

/// The state of one [`RolloutEnv::run_keyed`] call, with one handler per thing that happens to
/// a row: its group is admitted, a turn ends in decoding, its tool answers, it finishes.
struct AgentLoop<'e, 'a, 's> {
    env: &'e RolloutEnv<'a>,
    generator: &'e mut dyn Generator,
    kept: &'e [Prompt],
    rows: Vec<Row<'s>>,
    names: RowNames,
    schedule: Schedule,
    n: usize,
    step: u64,
    groups: Option<&'e [u64]>,
    ids: TemplateIds,
}

impl AgentLoop<'_, '_, '_> {
    /// Waiting groups take free cache blocks; each of their rows starts its first turn with its
    /// own random stream.
    fn admit_waiting_groups(&mut self) -> Result<(), RolloutError> {
        let n = self.n;
        while let (Some(&k), Some(&block)) = (self.schedule.waiting.front(), self.schedule.free_blocks.last())
        {
            self.schedule.waiting.pop_front();
            self.schedule.free_blocks.pop();
            self.schedule.block_of_group[k] = block;
            self.schedule.rows_left[block] = n;
            let (sample_index, chunk, _) = &self.kept[k];
            let global = self
                .groups
                .map(|g| g[*sample_index])
                .unwrap_or(*sample_index as u64);
            let seed = self.env.config.sampling.seed;
            let members: Vec<(usize, RowRng)> = (0..n)
                .map(|j| {
                    (
                        self.names.id(k * n + j),
                        RowRng::new(seed, self.step, global, j as u64),
                    )
                })
                .collect();
            self.generator.add_group(block, chunk, &members)?;
            for j in 0..n {
                self.begin_turn(k * n + j)?;
            }
        }
        Ok(())
    }

    fn begin_turn(&mut self, i: usize) -> Result<(), RolloutError> {
        self.rows[i].budget = self.env.turn_budget(&self.rows[i]);
        self.generator.begin_turn(self.names.id(i), self.rows[i].budget)?;
        self.schedule.decoding += 1;
        Ok(())
    }

    /// One decode window. A turn that ends with an answer or a budget finishes its row; one that
    /// ends in a tool call goes to `spawn_tool`, or, in the last allowed turn or malformed,
    /// straight back as a refusal.
    fn decode_window(
        &mut self,
        spawn_tool: &mut dyn FnMut(usize, armt_tools::ParsedToolCall, ToolContext),
        ends: &mut TurnEnds,
    ) -> Result<(), RolloutError> {
        let stop_ids = [self.ids.im_end, self.ids.endoftext, self.ids.tool_call_end];
        for (id, sampled) in self.generator.step(&stop_ids)? {
            let i = self.names.index(id)?;
            self.schedule.decoding -= 1;
            let budget = self.rows[i].budget;
            let Some(parsed) = self
                .env
                .record_turn(&mut self.rows[i], &sampled, budget, &self.ids)?
            else {
                ends.ended.push(i);
                continue;
            };
            let last = self.rows[i].turns.len() >= self.env.config.max_turns;
            let ctx = std::mem::take(&mut self.rows[i].ctx);
            match (last, parsed) {
                (true, _) => ends.tool_done.push((i, ToolResult::LastTurn, ctx)),
                (false, Err(e)) => ends
                    .tool_done
                    .push((i, ToolResult::Malformed(e.to_string()), ctx)),
                (false, Ok(call)) => {
                    self.schedule.in_tools += 1;
                    spawn_tool(i, call, ctx);
                }
            }
        }
        Ok(())
    }

    /// Answered tool turns (in row order, so the result does not depend on thread timing)
    /// become one batched append and a new turn each, or finish their rows (pushed to `ended`).
    fn continue_after_tools(
        &mut self,
        mut tool_done: Vec<ToolDone>,
        ended: &mut Vec<usize>,
    ) -> Result<(), RolloutError> {
        let (mut append_rows, mut append_chunks) = (Vec::new(), Vec::new());
        tool_done.sort_by_key(|(i, _, _)| *i);
        for (i, res, ctx) in tool_done {
            self.rows[i].ctx = ctx;
            match self.env.tool_turn(&mut self.rows[i], res)? {
                Some(chunk) => {
                    append_rows.push(i);
                    append_chunks.push(chunk);
                }
                None => ended.push(i),
            }
        }
        if append_rows.is_empty() {
            return Ok(());
        }
        for &i in &append_rows {
            if std::mem::take(&mut self.rows[i].rewind) {
                self.generator.rewind_turn(self.names.id(i))?;
            }
        }
        let append_ids: Vec<usize> = append_rows.iter().map(|&i| self.names.id(i)).collect();
        self.generator.append(&append_ids, &append_chunks)?;
        for &i in &append_rows {
            self.begin_turn(i)?;
        }
        Ok(())
    }

    /// Finished rows leave the generator; a group's block is free once all its rows are.
    fn retire(&mut self, ended: Vec<usize>) {
        for i in ended {
            self.generator.release(self.names.id(i));
            let block = self.schedule.block_of_group[i / self.n];
            self.schedule.rows_left[block] -= 1;
            if self.schedule.rows_left[block] == 0 {
                self.schedule.free_blocks.push(block);
            }
            self.schedule.finished += 1;
        }
    }
}

/// What [`RolloutEnv::run_keyed`] returns: the rollouts of the admitted prompts (group-major,
/// `n` per prompt, `Rollout::group` naming the sample) and the indices of skipped samples.
#[derive(Debug)]
pub struct RunOutcome {
    pub rollouts: Vec<Rollout>,
    pub skipped: Vec<usize>,
}

/// Runs one tool call against its row's context (on a tool thread). A panicking tool still
/// answers (with an error), or the loop would wait for it forever.
fn run_tool(
    tools: &ToolRegistry,
    call: armt_tools::ParsedToolCall,
    mut ctx: ToolContext,
) -> (ToolResult, ToolContext) {
    let started = Instant::now();
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tools.call(&call, &mut ctx)))
        .unwrap_or_else(|_| {
            armt_tools::ToolOutput::error(format!("Error: the tool '{}' failed.", call.name))
        });
    let ms = started.elapsed().as_secs_f64() * 1e3;
    (
        ToolResult::Ran {
            call,
            out: Box::new(out),
            ms,
        },
        ctx,
    )
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
