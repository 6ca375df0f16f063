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
    /// An image file could not be opened or decoded.
    #[error("cannot load image {path} (referenced at {location}): {reason}")]
    Image {
        path: PathBuf,
        location: String,
        reason: String,
    },
    /// An image is outside what `smart_resize` accepts.
    #[error("invalid image size {height}x{width} (height x width): {reason}")]
    ImageSize {
        height: usize,
        width: usize,
        reason: String,
    },
    /// The image processor configuration is inconsistent.
    #[error("invalid image processor config: {0}")]
    Config(String),
    /// The tokenizer failed to load or to encode.
    #[error("tokenizer error ({context}): {message}")]
    Tokenizer { context: String, message: String },
}

/// Crate-wide result alias.
pub type Result<T> = std::result::Result<T, ProcessingError>;
