//! One assistant turn per request, from a conversation given as chat messages: what an
//! OpenAI-compatible server does (vLLM, and `armt serve` when the caller runs the tool loop).
//! The messages are rendered through the chat template and tokenized as a whole, as such
//! servers do; requests are batched in one generator (each its own group of one row).

use crate::generator::{CachePlan, Chunk, Generator};
use crate::rng::RowRng;
use crate::{RolloutConfig, RolloutError};
use armt_processing::{render_chat, ImageSource, Message, Processor, IMAGE_PAD};

/// One generation request.
#[derive(Debug, Clone)]
pub struct TurnRequest {
    /// The conversation (system, user, assistant, tool), rendered with a generation prompt.
    pub messages: Vec<Message>,
    /// Most tokens to generate (the stop token included).
    pub max_tokens: usize,
    /// Token ids that end the turn (the end-of-turn tokens and any single-token stop strings).
    pub stop_ids: Vec<i64>,
    /// Names the request's random stream (`RowRng::new(seed, 0, key, 0)`).
    pub key: u64,
}

/// A generated turn: the prompt tokens and the generated ones (a stop token last when one ended it).
#[derive(Debug, Clone, PartialEq)]
pub struct TurnOutput {
    pub prompt_ids: Vec<i64>,
    pub ids: Vec<i64>,
}

/// The messages as model input: the template's text (generation prompt added), images
/// preprocessed and their pads expanded, tokenized as one text.
pub fn encode_messages(processor: &Processor, messages: &[Message]) -> Result<Chunk, RolloutError> {
    let text = render_chat(messages, None, true);
    let ip = processor.image_processor();
    let merge = ip.config().merge_size;
    let mut images = Vec::new();
    for m in messages {
        for src in m.content.images() {
            let processed = match src {
                ImageSource::Path(p) => {
                    let img = image::open(p).map_err(|source| RolloutError::Image {
                        sample: "request".into(),
                        path: p.clone(),
                        source,
                    })?;
                    ip.preprocess(&img)?
                }
                ImageSource::Loaded(img) => ip.preprocess(img)?,
            };
            images.push(processed);
        }
    }
    let mut pieces = text.split(IMAGE_PAD);
    let mut expanded = pieces.next().unwrap_or("").to_string();
    for (k, piece) in pieces.enumerate() {
        let img = images.get(k).ok_or_else(|| {
            RolloutError::Settings(format!(
                "the messages have more {IMAGE_PAD} than images: do not write {IMAGE_PAD} in message text"
            ))
        })?;
        expanded.push_str(&IMAGE_PAD.repeat(img.grid_thw.iter().product::<usize>() / (merge * merge)));
        expanded.push_str(piece);
    }
    let enc = processor
        .tokenizer()
        .encode(expanded.as_str(), false)
        .map_err(|source| RolloutError::Tokenizer {
            what: "tokenizing",
            source,
        })?;
    Ok(Chunk {
        ids: enc.get_ids().iter().map(|&i| i as i64).collect(),
        images,
        messages: messages.to_vec(),
    })
}

/// Generates one turn for each request with `generator` (prepared here; requests that share
/// `stop_ids` decode together). A request whose prompt leaves no room in `cfg.max_context`
/// gets an error of its own; `max_tokens` is cut to the room left and to `cfg.max_turn_tokens`.
pub fn generate_turns(
    processor: &Processor,
    generator: &mut dyn Generator,
    requests: &[TurnRequest],
    cfg: &RolloutConfig,
) -> Result<Vec<Result<TurnOutput, RolloutError>>, RolloutError> {
    let mut out: Vec<Option<Result<TurnOutput, RolloutError>>> = (0..requests.len()).map(|_| None).collect();
    let mut ready = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let chunk = match encode_messages(processor, &r.messages) {
            Ok(c) => c,
            Err(e) => {
                out[i] = Some(Err(e));
                continue;
            }
        };
        let room = cfg.max_context.saturating_sub(chunk.ids.len());
        let budget = r.max_tokens.min(room).min(cfg.max_turn_tokens);
        if budget == 0 {
            out[i] = Some(Err(RolloutError::Settings(format!(
                "a prompt of {} tokens leaves no room to generate (max_context {}, max_tokens {})",
                chunk.ids.len(),
                cfg.max_context,
                r.max_tokens
            ))));
            continue;
        }
        ready.push((i, chunk, budget));
    }
    // One decoding pass per stop set (the generator stops all its rows on the same ids).
    let mut sets: Vec<Vec<i64>> = ready
        .iter()
        .map(|(i, _, _)| sorted(&requests[*i].stop_ids))
        .collect();
    sets.sort();
    sets.dedup();
    for set in sets {
        let members: Vec<&(usize, Chunk, usize)> = ready
            .iter()
            .filter(|(i, _, _)| sorted(&requests[*i].stop_ids) == set)
            .collect();
        let plan = CachePlan {
            groups: members.len(),
            rows_per_group: 1,
            prefix_tokens: members.iter().map(|(_, c, _)| c.ids.len()).max().unwrap_or(1),
            suffix_tokens: members.iter().map(|(_, _, b)| *b).max().unwrap_or(1) + 1,
            turn_tokens: members.iter().map(|(_, _, b)| *b).max().unwrap_or(1),
            prefill_chunk: cfg.prefill_chunk,
            sync_every: cfg.sync_every,
        };
        generator.prepare(&plan)?;
        for (block, (i, chunk, budget)) in members.iter().enumerate() {
            let rng = RowRng::new(cfg.sampling.seed, 0, requests[*i].key, 0);
            generator.add_group(block, chunk, &[(*i, rng)])?;
            generator.begin_turn(*i, *budget)?;
        }
        let mut left = members.len();
        while left > 0 {
            let ended = generator.step(&set)?;
            if ended.is_empty() && left > 0 {
                continue;
            }
            for (i, sampled) in ended {
                let prompt = &members
                    .iter()
                    .find(|(k, _, _)| *k == i)
                    .ok_or_else(|| {
                        RolloutError::Invariant(format!("the generator returned unknown row {i}"))
                    })?
                    .1;
                out[i] = Some(Ok(TurnOutput {
                    prompt_ids: prompt.ids.clone(),
                    ids: sampled.ids,
                }));
                generator.release(i);
                left -= 1;
            }
        }
    }
    out.into_iter()
        .map(|o| o.ok_or_else(|| RolloutError::Invariant("a request got no turn".into())))
        .collect()
}

fn sorted(ids: &[i64]) -> Vec<i64> {
    let mut v = ids.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}
