//! What can be wrong with one row of a dataset, by format. [`crate::DataError::Row`] names the
//! file and line; these say what is wrong with the row and keep the parser's error as source.

use std::path::PathBuf;

use serde_json::Value;

/// Why one row (a JSON line, a parquet row, an ARMBench item) cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    /// The line is not JSON of the expected shape.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("the file starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without BOM")]
    Bom,
    #[error(transparent)]
    Sample(#[from] SampleError),
    #[error(transparent)]
    ArmBench(#[from] ArmBenchError),
    #[error(transparent)]
    Parquet(#[from] ParquetRowError),
    #[error(transparent)]
    Conversation(#[from] ConversationError),
    #[error(transparent)]
    Document(#[from] DocumentError),
}

/// A loaded sample whose fields contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    #[error("empty `id`")]
    EmptyId,
    #[error("ground_truth `{ground_truth}` is not a candidate number 1..={candidates}")]
    NotACandidate { ground_truth: String, candidates: usize },
    #[error("ground_truth `{ground_truth}` must be true or false for a single judgment")]
    NotTrueOrFalse { ground_truth: String },
    #[error("a document task needs `document` with at least one page")]
    DocumentWithoutPages,
    #[error("an instruction task needs `response`")]
    InstructionWithoutResponse,
}

/// An ARMBench-VL item that cannot be judged as written.
#[derive(Debug, thiserror::Error)]
pub enum ArmBenchError {
    #[error("unsupported rm_tag `{rm_tag}` (single_rm, pair_rm, 2-way-pair_rm, 4-way-pair_rm)")]
    UnsupportedRmTag { rm_tag: String },
    #[error("gt {gt} is not a candidate number")]
    GtNotCandidate { gt: serde_json::Number },
    #[error("gt `{gt}` is not a candidate number")]
    GtTextNotCandidate {
        gt: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("gt {gt} does not fit rm_tag {rm_tag}")]
    GtDoesNotFit { gt: Value, rm_tag: String },
    #[error("rm_tag {rm_tag} needs {need} preds, the item has {have}")]
    TooFewPreds {
        rm_tag: String,
        need: usize,
        have: usize,
    },
    #[error("the item has no `images`")]
    NoImages,
    #[error("`constraints[0].value` is missing")]
    NoConstraintValue,
    #[error("duplicate idx {idx}")]
    DuplicateIdx { idx: String },
    #[error("image {} does not exist", path.display())]
    MissingImage { path: PathBuf },
}

/// A verl RL parquet row that does not map onto a sample.
#[derive(Debug, thiserror::Error)]
pub enum ParquetRowError {
    /// A required column (or nested field, e.g. `reward_model.ground_truth`) is absent.
    #[error("no `{field}`")]
    Missing { field: &'static str },
    #[error("data_source `{data_source}` has no task kind: add it to data.formats.sources (known: {known})")]
    UnknownSource { data_source: String, known: String },
    #[error("unknown rm_tag `{rm_tag}` (single_rm, pair_rm, 2-way-pair_rm, 4-way-pair_rm)")]
    UnknownRmTag { rm_tag: String },
    #[error("ground_truth `{ground_truth}` is neither a candidate number nor true/false")]
    GroundTruthNotJudgment { ground_truth: String },
    /// `ground_truth` is the cell as JSON.
    #[error("unsupported ground_truth {ground_truth}")]
    UnsupportedGroundTruth { ground_truth: Value },
    #[error("`prompt` must be a list of chat messages")]
    PromptNotList,
    #[error("prompt[{index}] has no `role`")]
    PromptWithoutRole { index: usize },
    #[error("prompt[{index}] has no text `content`")]
    PromptWithoutContent { index: usize },
    #[error("prompt[{index}]: role `{role}` in an RL prompt (only system/user)")]
    PromptRole { index: usize, role: String },
    #[error("`prompt` has no user message")]
    PromptWithoutUser,
    #[error("images[{index}]: writing into {}: {source}", dir.display())]
    ImageCache {
        index: usize,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("images[{index}] has neither bytes nor a path")]
    ImageWithoutSource { index: usize },
    #[error("images[{index}]: {} does not exist (image root {})", path.display(), root.display())]
    MissingImage {
        index: usize,
        path: PathBuf,
        root: PathBuf,
    },
    #[error("the prompt has {placeholders} <image> placeholder(s) but the row has {images} image(s)")]
    PlaceholderMismatch { placeholders: usize, images: usize },
    #[error("agent_name `{agent}` (expected tool_agent or single_turn_agent)")]
    UnknownAgent { agent: String },
    #[error("a document row needs extra_info.doc_id (or a `filename` in tools_kwargs)")]
    NoDocId,
}

/// A LLaMA-Factory conversation row that cannot be trained on.
#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    #[error("neither `messages` nor `conversations`")]
    NoTurns,
    #[error("the turns must be a list")]
    TurnsNotList,
    #[error("turn {turn} has no `{role_key}`")]
    TurnWithoutRole { turn: usize, role_key: &'static str },
    #[error("turn {turn}: unknown role `{role}`")]
    UnknownRole { turn: usize, role: String },
    #[error("turn {turn}: {source}")]
    Content {
        turn: usize,
        #[source]
        source: ContentError,
    },
    #[error("turn {turn}: a system turn must come first")]
    LateSystemTurn { turn: usize },
    #[error("no assistant turn to train on")]
    NoAssistantTurn,
    #[error("images entry {entry} is not a path")]
    ImageNotPath { entry: Value },
    #[error("`images` must be a list, got {images}")]
    ImagesNotList { images: Value },
    #[error("{placeholders} <image> placeholder(s) but {images} image(s)")]
    PlaceholderMismatch { placeholders: usize, images: usize },
    #[error("image {} does not exist", path.display())]
    MissingImage { path: PathBuf },
    #[error("`tools`: {source}")]
    Tools {
        #[source]
        source: serde_json::Error,
    },
}

/// A turn's content that is not text (or typed text and image parts).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ContentError {
    #[error("content part of type {part_type:?}")]
    UnknownPart { part_type: Option<String> },
    #[error("content must be text, got {content}")]
    NotText { content: Value },
}

/// A document whose pages cannot be found.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("document root {}: {source}", root.display())]
    Root {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("document `{name}`: no page images `{name}_<page>.(jpg|jpeg|png|webp)` in {}", root.display())]
    NoPages { name: String, root: PathBuf },
}

/// Why a path is not confined to a root ([`crate::validate::confined`]); the text follows the
/// path that the caller names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfineError {
    #[error("is outside the data root")]
    OutsideRoot,
    #[error("leaves the data root through `..`")]
    LeavesRoot,
    #[error("is an absolute path")]
    Absolute,
}

/// An image or page file of a dataset that fails the checks before training.
#[derive(Debug, thiserror::Error)]
pub enum ImageFileError {
    #[error("image {} {source} ({}); paths must stay inside the dataset's folder", path.display(), root.display())]
    NotConfined {
        path: PathBuf,
        root: PathBuf,
        #[source]
        source: ConfineError,
    },
    #[error("image {} does not exist (or is not a file)", path.display())]
    Missing { path: PathBuf },
    #[error("image {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: ImageProblem,
    },
}

/// Why an image fails its header or decode check ([`crate::validate::check_image`]).
#[derive(Debug, thiserror::Error)]
pub enum ImageProblem {
    #[error("{0}")]
    Open(#[source] std::io::Error),
    #[error("not an image in a known format (png, jpeg, webp, gif, bmp)")]
    UnknownFormat,
    #[error("unreadable header: {0}")]
    Header(#[source] image::ImageError),
    #[error(
        "its header says {width}×{height} pixels, above the limit ({max_side} pixels a side, {max_pixels} pixels in all)"
    )]
    TooLarge {
        width: u32,
        height: u32,
        max_side: u32,
        max_pixels: u64,
    },
    #[error("does not decode: {0}")]
    Decode(#[source] image::ImageError),
}
