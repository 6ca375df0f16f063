//! Qwen2.5-VL input processing for armt: chat template (Qwen2.5-VL + Hermes tool calling),
//! PIL-exact image preprocessing, placeholder expansion and tokenization, matching
//! transformers' `Qwen2_5_VLProcessor` with the PIL-backed `Qwen2VLImageProcessor`.
//!
//! Entry points: [`Chat::from_json_file`] (CHAT.json), [`Processor::from_model_dir`] and
//! [`Processor::encode_chat`] (→ [`EncodedChat`]: input ids, pixel patches, grids),
//! [`render_chat`] for the prompt text alone (rollouts), [`ImageProcessor`] for tool images.
//!
//! Parity tests (`tests/transformers_parity.rs`) compare against references made by transformers
//! (`scripts/make-refs`, run by `scripts/test` and on first use by plain `cargo test`).
//!
//! Known limit: JPEG files are decoded by the `image` crate, whose decoder differs from PIL's
//! libjpeg-turbo (chroma upsampling, IDCT rounding), so JPEG inputs are close but not bit-equal;
//! PNG and in-memory images are bit-exact.

mod chat;
mod error;
pub mod hermes;
mod image_proc;
mod processor;

pub use chat::{
    render_chat, write_py_json, Chat, Content, ContentPart, ImageSource, Message, ToolCall, DEFAULT_SYSTEM,
    IMAGE_PAD, IMAGE_PLACEHOLDER,
};
pub use error::{ProcessingError, Result};
pub use image_proc::{convert_to_rgb, smart_resize, ImageProcessor, ImageProcessorConfig, ProcessedImage};
pub use processor::{EncodedChat, Processor};
