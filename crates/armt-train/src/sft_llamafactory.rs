//! SFT examples from LLaMA-Factory conversations (ARM-Thinker's cold-start data): each
//! conversation rendered with the chat template (`configs/chat_template.jinja`, tools in the
//! system prompt), images expanded as the processor does, and the loss only on assistant turns —
//! their content and closing `<|im_end|>`, the tokens the policy itself writes in a rollout.

use crate::batch::Example;
use crate::TrainError;
use armt_data::formats::llamafactory::{SftConversation, SftRole};
use armt_processing::{render_chat, Content, ContentPart, ImageSource, Message, Processor, ToolCall};
use serde_json::Value;

/// Why a conversation does not make an SFT example.
#[derive(Debug, thiserror::Error)]
pub enum SftExampleError {
    #[error("turn {turn}: function_call is not JSON: {source}")]
    FunctionCallNotJson {
        turn: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("turn {turn}: function_call has no name")]
    FunctionCallWithoutName { turn: usize },
    #[error("image {}: {source}", path.display())]
    Image {
        path: std::path::PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error(transparent)]
    Processing(#[from] armt_processing::ProcessingError),
    /// The rendered chat has more image placeholders than the conversation has images.
    #[error("more image slots than images")]
    MoreSlotsThanImages,
    #[error("tokenizing: {source}")]
    Tokenizer {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("no assistant tokens to train on")]
    NoAssistantTokens,
}

/// A turn's text as message content: `<image>` placeholders become the next images in order.
fn content(text: &str, images: &mut impl Iterator<Item = std::path::PathBuf>) -> Content {
    if !text.contains("<image>") {
        return Content::Text(text.to_string());
    }
    let mut parts = Vec::new();
    for (k, piece) in text.split("<image>").enumerate() {
        if k > 0 {
            if let Some(p) = images.next() {
                parts.push(ContentPart::Image(ImageSource::Path(p)));
            }
        }
        if !piece.is_empty() {
            parts.push(ContentPart::Text(piece.to_string()));
        }
    }
    Content::Parts(parts)
}

/// The conversation as chat messages (a `function_call` turn becomes an assistant tool call).
pub fn conversation_messages(conv: &SftConversation) -> Result<Vec<Message>, SftExampleError> {
    let mut images = conv.images.clone().into_iter();
    let mut out = Vec::with_capacity(conv.turns.len());
    for (k, t) in conv.turns.iter().enumerate() {
        let m = match t.role {
            SftRole::System => Message::new("system", content(&t.text, &mut images)),
            SftRole::User => Message::new("user", content(&t.text, &mut images)),
            SftRole::Assistant => Message::new("assistant", content(&t.text, &mut images)),
            SftRole::Tool => Message::new("tool", content(&t.text, &mut images)),
            SftRole::FunctionCall => {
                let v: Value = serde_json::from_str(&t.text)
                    .map_err(|source| SftExampleError::FunctionCallNotJson { turn: k, source })?;
                let name = v["name"]
                    .as_str()
                    .ok_or(SftExampleError::FunctionCallWithoutName { turn: k })?;
                let mut m = Message::new("assistant", Content::Text(String::new()));
                m.tool_calls.push(ToolCall {
                    name: name.to_string(),
                    arguments: v
                        .get("arguments")
                        .cloned()
                        .unwrap_or(Value::Object(Default::default())),
                });
                m
            }
        };
        out.push(m);
    }
    Ok(out)
}

/// Character spans `[start, end)` of the rendered text the loss covers: each assistant turn's
/// content and its `<|im_end|>` (not the template's `<|im_start|>assistant\n` nor the newline).
pub fn assistant_spans(messages: &[Message], tools: Option<&[Value]>) -> Vec<(usize, usize)> {
    const HEADER: &str = "<|im_start|>assistant";
    let mut spans = Vec::new();
    for (k, m) in messages.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = render_chat(&messages[..k], tools, false).len();
        let through = render_chat(&messages[..=k], tools, false);
        let mut start = before + HEADER.len();
        if through[start..].starts_with('\n') {
            start += 1;
        }
        // Without the trailing "\n" after <|im_end|>.
        let end = through.len() - 1;
        spans.push((start, end));
    }
    spans
}

/// Converts conversations into SFT examples. `default_tools` are offered when a row declares no
/// `tools` of its own.
pub fn examples_from_conversations(
    convs: &[SftConversation],
    processor: &Processor,
    default_tools: Option<&[Value]>,
) -> Result<Vec<Example>, TrainError> {
    convs
        .iter()
        .map(|c| {
            example_from_conversation(c, processor, default_tools).map_err(|source| {
                TrainError::SftConversation {
                    id: c.id.clone(),
                    source: Box::new(source),
                }
            })
        })
        .collect()
}

fn example_from_conversation(
    conv: &SftConversation,
    processor: &Processor,
    default_tools: Option<&[Value]>,
) -> Result<Example, SftExampleError> {
    let messages = conversation_messages(conv)?;
    let tools = conv.tools.as_deref().or(default_tools);
    let text = render_chat(&messages, tools, false);
    let spans = assistant_spans(&messages, tools);
    let mut images = Vec::with_capacity(conv.images.len());
    for p in &conv.images {
        let img = image::open(p).map_err(|source| SftExampleError::Image {
            path: p.clone(),
            source,
        })?;
        images.push(processor.image_processor().preprocess(&img)?);
    }
    // Tokenise span by span (every boundary is at a special token or a newline the template
    // puts there, so this equals tokenising the whole text) to know which tokens are trained.
    let mut cuts = vec![(0usize, 0u8)];
    for &(s, e) in &spans {
        cuts.push((s, 1));
        cuts.push((e, 0));
    }
    cuts.push((text.len(), 0));
    let merge = processor.image_processor().config().merge_size;
    let mut next_image = 0usize;
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    for w in cuts.windows(2) {
        let (start, m) = w[0];
        let piece = &text[start..w[1].0];
        if piece.is_empty() {
            continue;
        }
        let mut expanded = String::with_capacity(piece.len());
        for (k, part) in piece.split("<|image_pad|>").enumerate() {
            if k > 0 {
                let img = images
                    .get(next_image)
                    .ok_or(SftExampleError::MoreSlotsThanImages)?;
                next_image += 1;
                let n = img.grid_thw.iter().product::<usize>() / (merge * merge);
                expanded.push_str(&"<|image_pad|>".repeat(n));
            }
            expanded.push_str(part);
        }
        let enc = processor
            .tokenizer()
            .encode(expanded.as_str(), false)
            .map_err(|source| SftExampleError::Tokenizer { source })?;
        ids.extend(enc.get_ids().iter().map(|&i| i as i64));
        mask.extend(std::iter::repeat_n(m, enc.get_ids().len()));
    }
    let prompt_len = mask
        .iter()
        .position(|&m| m == 1)
        .ok_or(SftExampleError::NoAssistantTokens)?;
    Ok(Example {
        ids,
        prompt_len,
        loss_mask: mask[prompt_len..].to_vec(),
        images,
    })
}
