//! A tiny byte-level BPE tokenizer trained on what the default model will see.

use anyhow::{anyhow, Result};
use armt_data::Sample;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, Tokenizer,
    TokenizerBuilder,
};

use crate::expert::{expert_script, ExpertStyle};
use crate::tasks::{tools_used, FIXED_COT_PROMPT, SHORT_COT_PROMPT};

/// Special tokens (skipped by `decode(.., skip_special_tokens = true)`), in id order.
pub const SPECIAL_TOKENS: [&str; 8] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
];

/// Added tokens that are single ids but not special (they survive `skip_special_tokens`,
/// as `<tool_call>` does in Qwen2.5), in id order after [`SPECIAL_TOKENS`].
pub const ADDED_TOKENS: [&str; 8] = [
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
];

/// Default BPE vocabulary size (byte alphabet + merges, before the added tokens).
pub const DEFAULT_VOCAB: usize = 2048;

/// The ids of the tokens the model config and the rollout engine need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokenIds {
    pub endoftext: u32,
    pub im_start: u32,
    pub im_end: u32,
    pub vision_start: u32,
    pub vision_end: u32,
    pub vision_pad: u32,
    pub image_pad: u32,
    pub video_pad: u32,
    pub tool_call: u32,
    pub tool_call_end: u32,
    pub tool_response: u32,
    pub tool_response_end: u32,
    pub think: u32,
    pub think_end: u32,
    pub answer: u32,
    pub answer_end: u32,
}

impl SpecialTokenIds {
    /// Qwen2.5-VL's conventions: bos = `<|endoftext|>`, eos = `<|im_end|>`, pad = `<|endoftext|>`.
    pub fn bos(&self) -> u32 {
        self.endoftext
    }
    pub fn eos(&self) -> u32 {
        self.im_end
    }
    pub fn pad(&self) -> u32 {
        self.endoftext
    }
}

/// Looks up every token of [`SPECIAL_TOKENS`] and [`ADDED_TOKENS`] (error if one is missing).
pub fn special_token_ids(tok: &Tokenizer) -> Result<SpecialTokenIds> {
    let id = |s: &str| {
        tok.token_to_id(s)
            .ok_or_else(|| anyhow!("tokenizer has no token {s}"))
    };
    Ok(SpecialTokenIds {
        endoftext: id("<|endoftext|>")?,
        im_start: id("<|im_start|>")?,
        im_end: id("<|im_end|>")?,
        vision_start: id("<|vision_start|>")?,
        vision_end: id("<|vision_end|>")?,
        vision_pad: id("<|vision_pad|>")?,
        image_pad: id("<|image_pad|>")?,
        video_pad: id("<|video_pad|>")?,
        tool_call: id("<tool_call>")?,
        tool_call_end: id("</tool_call>")?,
        tool_response: id("<tool_response>")?,
        tool_response_end: id("</tool_response>")?,
        think: id("<think>")?,
        think_end: id("</think>")?,
        answer: id("<answer>")?,
        answer_end: id("</answer>")?,
    })
}

/// Fixed texts the default model sees besides the prompts: chat roles, the system/tools block
/// scaffolding, the per-turn requirements, tool responses and tool schemas (best-effort copies
/// of the paper's texts; pass the exact rendered system prompt as extra corpus for best
/// compression).
pub fn fixed_corpus() -> Vec<String> {
    let mut v: Vec<String> = vec![
        "system\nYou are a helpful assistant.\nuser\nassistant\n".into(),
        "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>".into(),
        "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>\n".into(),
        SHORT_COT_PROMPT.into(),
        FIXED_COT_PROMPT.into(),
        "**Important Requirement:**\nYou have reached the maximum number of tool calls and are not allowed to call any more tools. Please reason on the current situation and **must** give your final answer or judgment within `<answer>...</answer>`.".into(),
        "The given document is named `doc_00000`. The page indices in the combined image start from 1 at the top-left corner and increase horizontally from left to right, then continue to the next row from top to bottom.".into(),
        "{\"type\": \"function\", \"function\": {\"name\": \"image_zoom_in_tool\", \"description\": \"Zoom in on a region of an image using relative coordinates in [0, 1000]. For example, to zoom in on the center 50%, use [250, 250, 750, 750].\", \"parameters\": {\"type\": \"object\", \"properties\": {\"image\": {\"type\": \"string\", \"description\": \"The image to zoom in on: original_image or observation_1, observation_2, ...\"}, \"bbox_2d\": {\"type\": \"array\", \"description\": \"The bounding box [x1, y1, x2, y2] in relative coordinates [0, 1000].\"}}, \"required\": [\"image\", \"bbox_2d\"]}}}".into(),
        "{\"type\": \"function\", \"function\": {\"name\": \"doc_page_retrieval_by_query\", \"description\": \"Retrieve the most relevant page images of a document for a text query.\", \"parameters\": {\"type\": \"object\", \"properties\": {\"filename\": {\"type\": \"string\", \"description\": \"Document identifier used for retrieval.\"}, \"query\": {\"type\": \"string\", \"description\": \"The text query.\"}}, \"required\": [\"filename\", \"query\"]}}}".into(),
        "{\"type\": \"function\", \"function\": {\"name\": \"doc_page_retrieval_by_index\", \"description\": \"Retrieve one page image of a document by its 1-based index.\", \"parameters\": {\"type\": \"object\", \"properties\": {\"filename\": {\"type\": \"string\", \"description\": \"Document identifier used for retrieval.\"}, \"image_idx\": {\"type\": \"integer\", \"description\": \"The 1-based page index.\"}}, \"required\": [\"filename\", \"image_idx\"]}}}".into(),
        "This is the zoom-in image `observation_1`(zoomed in on the image original_image) after your tool call.\nContinue your reasoning process within `<think>...</think>`. If needed, you can continue to call available tools within `<tool_call>...</tool_call>`. If your final response to the original question is confirmed, put your final answer or judgment within `<answer>...</answer>`.".into(),
        "This is the zoom-in image `observation_2`(zoomed in on the image observation_1) after your tool call.".into(),
        "Concatenated page images for query 'tower' in 'doc_00001': pages [2, 1, 3]. If the retrieved pages don't seem relevant, you can try using a different or more specific query string to improve the results.".into(),
        "Page texts for query 'lake' in 'doc_00004': pages [3]. Here is page image #2 for document 'doc_00007'.".into(),
        "No relevant content found for 'bridge' in document 'doc_00010'. Maybe you should check your provided filename in your tool calling.".into(),
        "Check result: True\nCheck result: False\n".into(),
        "Cannot resolve text response key 'text_1'. Current text responses you have are: ['text_0']. ".into(),
        "Error: Unknown tool 'image_zoom_tool'\nError when executing tool: \nError: bbox_2d must satisfy x1<x2 and y1<y2, got [500, 500, 0, 0].".into(),
    ];
    for name in tools_used() {
        v.push(format!("{{\"type\": \"function\", \"function\": {{\"name\": \"{name}\", \"description\": \"\", \"parameters\": {{\"type\": \"object\", \"properties\": {{\"response\": {{\"type\": \"string\", \"description\": \"The key of the text response to check, e.g. text_0.\"}}}}, \"required\": [\"response\"]}}}}}}"));
    }
    v
}

/// The default corpus for `samples`: [`fixed_corpus`], every prompt and page text, and the
/// expert turns of both styles.
pub fn default_corpus(samples: &[Sample]) -> Vec<String> {
    let mut v = fixed_corpus();
    for s in samples {
        v.push(s.prompt.clone());
        if let Some(d) = &s.document {
            v.extend(d.pages.iter().map(|p| p.text.clone()));
        }
        for style in [ExpertStyle::Direct, ExpertStyle::Retry] {
            v.extend(expert_script(s, style, 0).into_iter().map(|t| t.text));
        }
    }
    v
}

/// [`build_tiny_tokenizer_with`] at [`DEFAULT_VOCAB`].
pub fn build_tiny_tokenizer(corpus: &[String]) -> Result<Tokenizer> {
    build_tiny_tokenizer_with(corpus, DEFAULT_VOCAB)
}

/// Trains a byte-level BPE (GPT-2 pre-tokenizer regex, no normalizer, all 256 byte symbols in
/// the alphabet, so any text round-trips) with `vocab_size` entries on `corpus`, then appends
/// [`SPECIAL_TOKENS`] (special) and [`ADDED_TOKENS`] (non-special) as single ids, after the
/// BPE vocabulary as in Qwen. The special strings are cut out of the corpus before training.
/// Deterministic: the same corpus and size give the same `tokenizer.json`.
pub fn build_tiny_tokenizer_with(corpus: &[String], vocab_size: usize) -> Result<Tokenizer> {
    build_tiny_tokenizer_opts(corpus, vocab_size, true)
}

/// As [`build_tiny_tokenizer_with`]; with `split_words` false the byte-level pre-tokenizer does
/// not split text into words first, so merges may cross spaces and punctuation: recurring
/// passages (the system prompt with its tool schemas, tool answers) become a few long tokens,
/// which keeps a tiny model's sequences short. Still byte-level, so any text round-trips.
pub fn build_tiny_tokenizer_opts(
    corpus: &[String],
    vocab_size: usize,
    split_words: bool,
) -> Result<Tokenizer> {
    build_tiny_tokenizer_with_words(corpus, vocab_size, split_words, &[], &[])
}

/// As [`build_tiny_tokenizer_opts`], plus `words` as added tokens that match whole words only
/// and `phrases` as added tokens that match wherever they occur (after [`ADDED_TOKENS`]): each
/// stays one token wherever it stands and is never merged with the text around it. Without
/// this, a merging BPE folds a value into phrase tokens ("is red." in one place, " red\nAnswer"
/// in another), and a tiny model cannot tell that the colour a tool showed is the colour a
/// candidate names. A phrase may end in a space (a word token may not: it must end at a word's
/// end), and decodes to exactly its text, so encoding round-trips.
pub fn build_tiny_tokenizer_with_words(
    corpus: &[String],
    vocab_size: usize,
    split_words: bool,
    words: &[String],
    phrases: &[String],
) -> Result<Tokenizer> {
    let alphabet = ByteLevel::alphabet().into_iter().collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .min_frequency(2)
        .show_progress(false)
        .initial_alphabet(alphabet)
        .build();
    let mut impl_ = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_normalizer(None)
    .with_pre_tokenizer(Some(ByteLevel::new(false, true, split_words).into()))
    .with_post_processor(None)
    .with_decoder(Some(ByteLevel::new(false, true, split_words).into()))
    .build()
    .map_err(|e| anyhow!("building tokenizer: {e}"))?;
    let pieces: Vec<String> = corpus.iter().flat_map(|line| split_out_specials(line)).collect();
    impl_
        .train(&mut trainer, pieces.iter())
        .map_err(|e| anyhow!("training BPE: {e}"))?;
    let mut tok = Tokenizer::from(impl_);
    let special: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|s| AddedToken::from(*s, true).normalized(false))
        .collect();
    tok.add_special_tokens(&special);
    let added: Vec<AddedToken> = ADDED_TOKENS
        .iter()
        .map(|s| AddedToken::from(*s, false).normalized(false))
        .collect();
    tok.add_tokens(&added);
    let words: Vec<AddedToken> = words
        .iter()
        .map(|w| {
            AddedToken::from(w.as_str(), false)
                .single_word(true)
                .normalized(false)
        })
        .collect();
    tok.add_tokens(&words);
    let phrases: Vec<AddedToken> = phrases
        .iter()
        .map(|p| AddedToken::from(p.as_str(), false).normalized(false))
        .collect();
    tok.add_tokens(&phrases);
    Ok(tok)
}

/// The parts of `line` between occurrences of the special/added token strings.
fn split_out_specials(line: &str) -> Vec<String> {
    let mut parts = vec![line.to_string()];
    for sp in SPECIAL_TOKENS.iter().chain(ADDED_TOKENS.iter()) {
        parts = parts
            .iter()
            .flat_map(|p| p.split(sp).map(str::to_string).collect::<Vec<_>>())
            .collect();
    }
    parts.retain(|p| !p.is_empty());
    parts
}

/// Vocabulary size including added tokens.
pub fn full_vocab_size(tok: &Tokenizer) -> usize {
    tok.get_vocab_size(true)
}
