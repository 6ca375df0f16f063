//! ARM-Thinker's agent tools behind one trait shaped like verl's `BaseTool`.
//!
//! The rollout engine uses this crate in four steps per assistant turn:
//!
//! 1. [`parse_tool_call`] on the assistant text: `None` means the turn is an answer;
//!    `Some(Err(e))` is a malformed call ([`ToolCallError`]) whose text goes back to the model as
//!    the tool response; `Some(Ok(call))` is the (first) call.
//! 2. [`ToolRegistry::call`] runs it against the trajectory's [`ToolContext`] (built once per
//!    trajectory with [`ToolContext::from_sample`]). It never panics: unknown tools, bad
//!    arguments and tool failures come back as a [`ToolOutput`] whose `text` is the error the
//!    model reads (`success == false`, `reward == -0.05`, the ARM convention). Images the tool
//!    returns are registered in the context as `observation_k`; their keys are in
//!    [`ToolOutput::image_keys`].
//! 3. [`truncate_tool_text`] to the configured length (head and tail kept).
//! 4. The prompt's system block is [`system_prompt`] of [`ToolRegistry::schemas`], identical
//!    to what `armt_processing::render_chat` emits for the same tools.
//!
//! Tools are `Send + Sync` and keep no per-call state outside the context, so one registry
//! can serve many trajectories from rayon threads at once (each with its own context).
//!
//! Tool configs (`configs/tools/*.yaml`) have verl's shape: `tools: [{class_name, config,
//! tool_schema}]`, class names either the paper's dotted Python paths
//! (`verl.tools.image_zoom_in_tool.ImageZoomInTool`) or bare (`ImageZoomInTool`).
//!
//! ```
//! use std::sync::Arc;
//! use armt_tools::{parse_tool_call, system_prompt, ToolContext, ToolRegistry};
//!
//! let yaml = "tools:\n  - class_name: verl.tools.image_zoom_in_tool.ImageZoomInTool\n";
//! let tools = ToolRegistry::from_yaml_str(yaml, "inline.yaml".as_ref()).unwrap();
//! assert!(system_prompt(&tools.schemas()).contains("\"name\": \"image_zoom_in_tool\""));
//!
//! let mut ctx = ToolContext::new(); // or ToolContext::from_sample(&sample)
//! ctx.add_image("original_image", Arc::new(image::DynamicImage::new_rgb8(640, 480)));
//! let turn = "<think>Look closer.</think>\n<tool_call>\n{\"name\": \"image_zoom_in_tool\", \
//!             \"arguments\": {\"image\": \"original_image\", \"bbox_2d\": [0, 0, 500, 500]}}\n</tool_call>";
//! let call = parse_tool_call(turn).unwrap().unwrap();
//! let out = tools.call(&call, &mut ctx);
//! assert!(out.success);
//! assert_eq!(out.image_keys, ["observation_1"]);
//! assert_eq!((out.images[0].width(), out.images[0].height()), (320, 240));
//! ```

mod context;
mod document;
mod error;
mod instruction;
mod parse;
mod registry;
mod text;
mod zoom;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{Map, Value};

pub use context::ToolContext;
pub use document::{Bm25Scorer, DocConfig, DocOutputMode, DocPageByIndexTool, DocPageSearchTool, PageScorer};
pub use error::{ContextError, SchemaError, ToolError, ToolSpecError};
pub use instruction::{InstructionCheck, InstructionTool, INSTRUCTION_CHECKS};
pub use parse::{
    parse_tool_call, py_repr, system_prompt, truncate_tool_text, ParsedToolCall, ToolCallError,
    TRUNCATION_MARKER,
};
pub use registry::{ToolRegistry, ToolSpec};
pub use text::split_sentences;
pub use zoom::{ImageZoomInTool, ZoomConfig};

/// The function name a tool schema declares (`schema.function.name`), else `fallback`.
pub(crate) fn function_name(schema: &Value, fallback: &str) -> String {
    schema["function"]["name"]
        .as_str()
        .unwrap_or(fallback)
        .to_string()
}

/// Step reward for a failed call (validation or execution), the ARM tools' convention.
pub const FAILURE_REWARD: f32 = -0.05;

/// What one tool call produced.
#[derive(Clone)]
pub struct ToolOutput {
    /// The text the model reads (not yet truncated; see [`truncate_tool_text`]).
    pub text: String,
    /// Images the model sees before the text, in order.
    pub images: Vec<Arc<image::DynamicImage>>,
    /// The keys `images` were registered under (`observation_k`). Filled by
    /// [`ToolRegistry::call`]; empty when a tool's `execute` is called directly.
    pub image_keys: Vec<String>,
    /// Tool-level step reward: 0.0 on success, [`FAILURE_REWARD`] on failure.
    pub reward: f32,
    /// True when the tool did what was asked (the text is not an error).
    pub success: bool,
    /// Per-call metrics (always has `"success"`).
    pub metrics: Map<String, Value>,
}

// By hand: the derived Debug would print every pixel of the images.
impl std::fmt::Debug for ToolOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sizes: Vec<(u32, u32)> = self.images.iter().map(|i| (i.width(), i.height())).collect();
        f.debug_struct("ToolOutput")
            .field("text", &self.text)
            .field("images", &sizes)
            .field("image_keys", &self.image_keys)
            .field("reward", &self.reward)
            .field("success", &self.success)
            .field("metrics", &self.metrics)
            .finish()
    }
}

impl ToolOutput {
    /// A successful, text-only output.
    pub fn ok(text: impl Into<String>) -> Self {
        Self::with_success(text.into(), true, 0.0)
    }

    /// A failed call: the error text goes to the model, reward [`FAILURE_REWARD`].
    pub fn error(text: impl Into<String>) -> Self {
        Self::with_success(text.into(), false, FAILURE_REWARD)
    }

    fn with_success(text: String, success: bool, reward: f32) -> Self {
        let mut metrics = Map::new();
        metrics.insert("success".into(), Value::Bool(success));
        Self {
            text,
            images: Vec::new(),
            image_keys: Vec::new(),
            reward,
            success,
            metrics,
        }
    }

    /// Adds an image (builder style).
    pub fn with_image(mut self, img: Arc<image::DynamicImage>) -> Self {
        self.images.push(img);
        self
    }
}

/// Identifies one tool instance (verl's `instance_id`), unique within the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InstanceId(pub u64);

impl InstanceId {
    /// A fresh id; the default [`Tool::create`] uses it.
    pub fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        InstanceId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// One tool, shaped like verl's `BaseTool`: `create` an instance for a trajectory, `execute`
/// calls on it, `release` it. ARM's tools hold no per-instance state (everything they read is
/// in the [`ToolContext`], which the caller passes to every call), so the defaults of
/// `create`/`release` suffice for them; a stateful tool would key its state by the id.
pub trait Tool: Send + Sync {
    /// The function name the model calls (`schema.function.name`).
    fn name(&self) -> &str;

    /// `{"type": "function", "function": {"name", "description", "parameters"}}`, complete
    /// (nested `items`, `minimum`, … kept) — this is what the system prompt shows.
    fn schema(&self) -> &Value;

    /// Starts an instance for one trajectory. Errors are reported to the model as text.
    fn create(&self, _ctx: &ToolContext) -> Result<InstanceId, ToolError> {
        Ok(InstanceId::fresh())
    }

    /// Runs one call. Never panics on any `arguments`: bad ones give an error output.
    /// The first returned image will be registered as `ctx.next_observation_key()`.
    fn execute(&self, instance: InstanceId, arguments: &Value, ctx: &ToolContext) -> ToolOutput;

    /// Ends the instance.
    fn release(&self, _instance: InstanceId) {}
}
