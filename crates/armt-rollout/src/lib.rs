//! Multi-turn rollouts for GRPO: batched sampling with a KV cache on Qwen2.5-VL, Hermes tool
//! calls parsed as they appear and run in parallel, tool output (text and images) appended as
//! the chat template renders it, and a loss mask that keeps everything but the policy's own
//! tokens out of the loss.

mod engine;
mod filter;
mod generator;
mod remote;
mod rng;
mod turn;

pub use engine::{Rollout, RolloutEnv, RunOutcome, TemplateIds, DEFAULT_COT_PROMPT, LAST_TURN_MESSAGE};
pub use generator::{
    pixel_batch, sample, CachePlan, Chunk, Generator, ModelGenerator, Sampled, ScriptedGenerator,
};
pub use remote::{
    openai_messages, parse_reply, turn_text, ChatClient, ChatReply, ContextReport, RemoteConfig, RemoteError,
    RemoteGenerator,
};
pub use rng::{device_uniforms, RowRng, SplitMix64};
pub use turn::{encode_messages, generate_turns, TurnOutput, TurnRequest};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error(transparent)]
    Model(#[from] armt_model::ModelError),
    #[error(transparent)]
    Processing(#[from] armt_processing::ProcessingError),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A sample's image cannot be read or decoded.
    #[error("sample {sample}: image {path}: {source}")]
    Image {
        sample: String,
        path: std::path::PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// An observation image cannot be written next to the trajectories.
    #[error("saving {path}: {source}")]
    SaveImage {
        path: std::path::PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("the tokenizer has no `{0}` token")]
    MissingToken(String),
    #[error("{what}: {source}")]
    Tokenizer {
        what: &'static str,
        #[source]
        source: tokenizers::Error,
    },
    /// Settings or arguments the engine cannot run with (named in the message).
    #[error("rollout settings: {0}")]
    Settings(String),
    /// The engine and a generator disagree about their rows: a bug, not bad input.
    #[error("rollout engine invariant broken (a bug): {0}")]
    Invariant(String),
    /// The remote policy server failed (named in the message).
    #[error(transparent)]
    Remote(#[from] RemoteError),
}

/// How tokens are drawn. Same seed, same trajectories (on CPU).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// 0 means greedy.
    pub temperature: f64,
    pub top_p: f64,
    /// 0 disables top-k.
    pub top_k: usize,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        // ARM-Thinker's GRPO rollouts: temperature 1.0, no top-p/top-k filtering.
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            seed: 0,
        }
    }
}

/// Limits of one rollout (ARM-Thinker's training values as defaults).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutConfig {
    /// Rollouts per prompt (the GRPO group size).
    pub n: usize,
    /// Assistant turns; a tool call in the last one is not run, the model is told to answer.
    pub max_turns: usize,
    /// Tokens of the whole response (policy and tool tokens), like verl's response_length.
    pub max_response_tokens: usize,
    /// Tokens of one assistant turn.
    pub max_turn_tokens: usize,
    /// Prompt plus response.
    pub max_context: usize,
    /// Characters of tool text kept (head and tail).
    pub max_tool_text_chars: usize,
    /// Images per trajectory, the prompt's included.
    pub max_images: usize,
    /// Appended to the user prompt.
    pub cot_prompt: String,
    pub sampling: SamplingConfig,
    /// Rows decoding at once (a multiple of n is used: whole groups are admitted).
    pub max_rows: usize,
    /// KV-cache positions (per layer) the rollout may hold: each admitted group reserves its
    /// prompt once plus `n × (min(max_response_tokens, max_context) + 1)`; groups wait until
    /// that fits, and a prompt that can never fit is skipped (counted, not an error).
    pub max_batch_tokens: usize,
    /// Prompt tokens per prefill forward (long prompts are prefilled in chunks).
    pub prefill_chunk: usize,
    /// Decode steps between host reads of the rows' stop flags.
    pub sync_every: usize,
    /// A turn with `<tool_call>` but no parsable call ends the rollout (stop reason
    /// `malformed_tool_call`, reward 0), as in ARM-Thinker's training loop. Off: the parse
    /// error goes back to the model and the rollout goes on.
    pub end_on_malformed_call: bool,
    /// Tools see the prompt's images as the processor resized them (`smart_resize`, PIL
    /// bicubic), as ARM-Thinker's zoom does (`fetch_image` resizes first). Off: the original
    /// pixels (zoom crops keep detail the model's input lost).
    pub tools_see_resized_images: bool,
    /// Each assistant turn's tokens are replaced by its text tokenized afresh (before the tool
    /// turn that follows it, and the last one when the rollout ends), as a chat server
    /// re-renders the conversation (vLLM, `armt serve`): in-process evaluation then sees the
    /// contexts `armt eval --api-base` sends and records the same tokens. For evaluation only:
    /// the replaced tokens are not the ones sampled (log-prob 0), so not for training.
    pub retokenize_turns: bool,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            n: 16,
            max_turns: 5,
            max_response_tokens: 4096,
            max_turn_tokens: 2048,
            max_context: 16384,
            max_tool_text_chars: 4096,
            max_images: 8,
            cot_prompt: DEFAULT_COT_PROMPT.to_string(),
            sampling: SamplingConfig::default(),
            max_rows: 64,
            max_batch_tokens: 1 << 20,
            prefill_chunk: 2048,
            sync_every: 8,
            end_on_malformed_call: false,
            tools_see_resized_images: false,
            retokenize_turns: false,
        }
    }
}
