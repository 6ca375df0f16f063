use std::path::PathBuf;

/// Errors of loading tool configs and of tool set-up. (Errors of a call are not Rust errors:
/// they are [`crate::ToolOutput`]s whose text the model reads.)
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot read tool config {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("tool config {path}: {msg}")]
    Yaml { path: PathBuf, msg: String },
    #[error("tool config {path}: tools[{index}] ({entry}): {msg}")]
    Entry {
        path: PathBuf,
        index: usize,
        entry: String,
        msg: String,
    },
    #[error("invalid tool schema for `{name}`: {msg}")]
    Schema { name: String, msg: String },
    #[error("{0}")]
    Other(String),
}
