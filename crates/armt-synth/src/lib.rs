//! armt's built-in default: everything `armt train` needs when no model or data is given,
//! except the weights and the training loop.
//!
//! * [`generate_tasks`]: a synthetic ARM-Thinker task set — zoom (colour of a tiny dot in a
//!   named quadrant), document (a fact on one page of a 3–4 page document) and instruction
//!   (does `text_0` follow a simple constraint) — each a reward-model judgment, written as
//!   PNGs plus `tasks.jsonl` (readable by `armt_data::read_samples`).
//! * [`expert_turns`] / [`expert_script`]: the assistant turns an ideal agent writes (right
//!   tool, right arguments, right verdict) for the cold-start SFT.
//! * [`build_tiny_tokenizer`]: a deterministic byte-level BPE with Qwen's special tokens.
//! * [`tiny_model_files`]: `config.json` / `preprocessor_config.json` / tokenizer files of a
//!   tiny Qwen2.5-VL.

mod expert;
mod font;
mod model_files;
mod tasks;
mod tokenizer;

pub use expert::{
    answer_turn, expert_script, expert_turns, py_json, render_tool_call, tool_call_turn, verdict,
    ExpertStyle, ExpertTurn, ToolArgs,
};
pub use model_files::{
    padded_vocab_size, tiny_config, tiny_model_files, tiny_model_files_with, tiny_preprocessor_config,
    TinyModelSpec,
};
pub use tasks::{
    candidate_phrases, generate_tasks, generate_tasks_with, task_spec, tools_used, value_words, Constraint,
    DocFact, SynthConfig, TaskSpec, COLOURS, CORNER_DIVISOR, DOC_FACTS, DOC_NAMES, DOC_VALUES,
    FIXED_COT_PROMPT, INSTRUCTION_VALIDATORS, QUADRANTS, QUADRANT_BBOXES, SHORT_COT_PROMPT,
};
pub use tokenizer::{
    build_tiny_tokenizer, build_tiny_tokenizer_opts, build_tiny_tokenizer_with,
    build_tiny_tokenizer_with_words, default_corpus, fixed_corpus, full_vocab_size, special_token_ids,
    SpecialTokenIds, ADDED_TOKENS, DEFAULT_VOCAB, SPECIAL_TOKENS,
};
