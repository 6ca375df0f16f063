use std::path::PathBuf;
use std::sync::Arc;

/// Errors of loading tool configs and of tool set-up. (Errors of a call are not Rust errors:
/// they are [`crate::ToolOutput`]s whose text the model reads.)
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("cannot read tool config {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tool config {path}: {source}")]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    /// One `tools[index]` entry of a config cannot be built; `entry` names it (function name
    /// and class).
    #[error("tool config {path}: tools[{index}] ({entry}): {source}")]
    Entry {
        path: PathBuf,
        index: usize,
        entry: String,
        #[source]
        source: ToolSpecError,
    },
    #[error("invalid tool schema for `{name}`: {source}")]
    Schema {
        name: String,
        #[source]
        source: SchemaError,
    },
    #[error("duplicate tool name `{name}`")]
    DuplicateName { name: String },
}

/// Why one tool, as a config entry describes it ([`crate::ToolSpec`]), cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum ToolSpecError {
    #[error(
        "unknown tool class `{class}` (known: ImageZoomInTool, DocPageSearchTool, DocPageByIndexTool and the 19 instruction validators, e.g. ParagraphNumberInRangeTool)"
    )]
    UnknownClass { class: String },
    /// The entry's `config:` or `tool_schema:` (`field`) is not expressible as JSON.
    #[error("{field}: {source}")]
    NotJson {
        field: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// The `config:` does not deserialize into the tool's config (unknown key, wrong type).
    #[error("config: {source}")]
    Config {
        #[source]
        source: serde_json::Error,
    },
    #[error("config: type `{kind}` is not supported (only `native`)")]
    UnsupportedType { kind: String },
    #[error("config: unknown scorer `{scorer}` (built in: bm25)")]
    UnknownScorer { scorer: String },
    #[error("config: retrieve_k, max_side and max_concat_pixels must be positive")]
    NotPositive,
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("duplicate tool name `{name}`")]
    DuplicateName { name: String },
}

/// What is wrong with a tool schema (the shape the prompt and the tools rely on).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("tool_schema must be a mapping")]
    NotMapping,
    #[error("tool_schema: unknown key `{key}`")]
    UnknownKey { key: String },
    #[error("tool_schema.type must be `function`")]
    NotFunction,
    #[error("tool_schema.function must be a mapping")]
    FunctionNotMapping,
    #[error("tool_schema.function: unknown key `{key}`")]
    UnknownFunctionKey { key: String },
    #[error("tool_schema.function.name must be a non-empty string")]
    MissingName,
    #[error("tool `{tool}`: function.description must be a string")]
    DescriptionNotString { tool: String },
    #[error("tool `{tool}`: function.parameters must be a mapping")]
    ParametersNotMapping { tool: String },
    #[error("tool `{tool}`: parameters.type must be `object`")]
    ParametersNotObject { tool: String },
    #[error("tool `{tool}`: parameters.properties must be a mapping")]
    PropertiesNotMapping { tool: String },
    #[error("tool `{tool}`: property `{property}` needs a string `type`")]
    PropertyWithoutType { tool: String, property: String },
    #[error("tool `{tool}`: parameters.required must be a list")]
    RequiredNotList { tool: String },
    #[error("tool `{tool}`: parameters.required must list strings")]
    RequiredNotStrings { tool: String },
    #[error("tool `{tool}`: required parameter `{param}` is not in properties")]
    RequiredNotInProperties { tool: String, param: String },
}

/// An image or page a tool asked the [`crate::ToolContext`] for that it cannot give. The
/// text reaches the model: it names files by their file name only, never the host's
/// directories.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ContextError {
    /// The image file cannot be opened or decoded (shared: a slot decodes at most once, and
    /// every later caller gets the same error).
    #[error("cannot load image {name}: {source}")]
    ImageLoad {
        name: String,
        #[source]
        source: Arc<image::ImageError>,
    },
    /// `page` is 1-based.
    #[error("page {page} does not exist")]
    NoSuchPage { page: usize },
}

/// A tool call's arguments a tool cannot run with; the text (the paper's where it has one) is
/// the tool output the model reads.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum ArgError {
    #[error("Error: missing required parameter '{name}'.")]
    Missing { name: &'static str },
    #[error("Error: '{name}' must be an integer.")]
    NotInteger { name: &'static str },
    #[error("Error: '{name}' must be a string.")]
    NotString { name: &'static str },
    #[error("Error: '{name}' must be a list of strings.")]
    NotStringList { name: &'static str },
    #[error("Error: 'ranges' must be a list of [lower_bound, upper_bound] pairs of integers.")]
    BadRanges,
    #[error("Error: there is no document in this task to retrieve pages from.")]
    NoDocument,
    #[error("Error: image parameter is missing.")]
    MissingImage,
    /// `repr` is Python's repr of the argument, as the paper's f-strings print it.
    #[error("Error: bbox_2d must be a list of 4 numbers, got {repr}.")]
    BboxNotFourNumbers { repr: String },
    #[error("Error: bbox_2d contains non-numeric values: {repr}.")]
    BboxNotNumeric { repr: String },
    #[error("Error: bbox_2d[{index}]={value} out of range [0,1000], full bbox={repr}.")]
    BboxOutOfRange {
        index: usize,
        value: String,
        repr: String,
    },
    #[error("Error: bbox_2d must satisfy x1<x2 and y1<y2, got {repr}.")]
    BboxNotOrdered { repr: String },
}
