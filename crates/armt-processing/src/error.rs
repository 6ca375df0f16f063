//! Error type of the crate. Every variant names the file / message / argument involved,
//! because these errors surface in the CLI where the user must find the faulty input.

use std::path::PathBuf;

/// Errors from image preprocessing, chat parsing/rendering and tokenization.
#[derive(Debug, thiserror::Error)]
pub enum ProcessingError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file is not valid JSON or does not have the expected shape.
    #[error("malformed JSON in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A chat file is structurally wrong (bad role, missing content, unknown part type, ...).
    #[error("{path}: {location}: {reason}")]
    Chat {
        path: PathBuf,
        /// e.g. `messages[2].content[1]`
        location: String,
        reason: String,
    },
    /// An image file could not be opened or decoded; `header` is its size when the header was
    /// readable but decoding hit the size limits.
    #[error(
        "cannot load image {path} (referenced at {location}): {source}{}",
        header.map(|(w, h)| format!(": its header says {w}×{h} pixels, too large to decode")).unwrap_or_default()
    )]
    Image {
        path: PathBuf,
        location: String,
        #[source]
        source: Box<image::ImageError>,
        header: Option<(u32, u32)>,
    },
    /// An image is outside what `smart_resize` accepts.
    #[error("invalid image size {height}x{width} (height x width): {reason}")]
    ImageSize {
        height: usize,
        width: usize,
        reason: String,
    },
    /// The image processor configuration (`path`) is inconsistent or unsupported.
    #[error("invalid image processor config: {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    /// The tokenizer failed to load or to encode.
    #[error("tokenizer error ({context}): {source}")]
    Tokenizer {
        context: String,
        #[source]
        source: tokenizers::Error,
    },
}

/// Crate-wide result alias.
pub type Result<T> = std::result::Result<T, ProcessingError>;
