//! Tokenizer + image processor: CHAT → model inputs, as `Qwen2_5_VLProcessor` produces them.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::chat::{render_chat, Chat, ImageSource, IMAGE_PAD};
use crate::error::{ProcessingError, Result};
use crate::image_proc::ImageProcessor;

/// Model inputs for one chat.
#[derive(Debug, Clone)]
pub struct EncodedChat {
    /// Rendered template text, one `<|image_pad|>` per image (before expansion).
    pub text: String,
    pub input_ids: Vec<i64>,
    /// Row-major `[num_patches, patch_dim]`, all images concatenated in order of appearance.
    pub pixel_values: Vec<f32>,
    pub num_patches: usize,
    pub patch_dim: usize,
    /// One `[t, h, w]` (in patches) per image.
    pub image_grid_thw: Vec<[i64; 3]>,
}

/// Qwen2.5-VL processor: `tokenizer.json` + `preprocessor_config.json`.
pub struct Processor {
    tokenizer: Tokenizer,
    image_processor: ImageProcessor,
}

impl Processor {
    /// Loads `tokenizer.json` and `preprocessor_config.json` from a model folder.
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        Self::from_files(&dir.join("tokenizer.json"), &dir.join("preprocessor_config.json"))
    }

    pub fn from_files(tokenizer_json: &Path, preprocessor_json: &Path) -> Result<Self> {
        if !tokenizer_json.is_file() {
            return Err(ProcessingError::Io {
                path: tokenizer_json.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found"),
            });
        }
        let tokenizer =
            Tokenizer::from_file(tokenizer_json).map_err(|source| ProcessingError::Tokenizer {
                context: format!("loading {}", tokenizer_json.display()),
                source,
            })?;
        Ok(Self::new(
            tokenizer,
            ImageProcessor::from_file(preprocessor_json)?,
        ))
    }

    pub fn new(tokenizer: Tokenizer, image_processor: ImageProcessor) -> Self {
        Self {
            tokenizer,
            image_processor,
        }
    }

    /// The same processor with images capped at `max_pixels` (what `max_pixels=` does to the
    /// transformers processor); `min_pixels` is lowered to it when larger.
    pub fn with_max_pixels(self, max_pixels: usize) -> Self {
        let mut cfg = self.image_processor.config().clone();
        cfg.max_pixels = max_pixels;
        cfg.min_pixels = cfg.min_pixels.min(max_pixels);
        Self {
            tokenizer: self.tokenizer,
            image_processor: ImageProcessor::new(cfg),
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn image_processor(&self) -> &ImageProcessor {
        &self.image_processor
    }

    /// Renders, preprocesses every image, expands each `<|image_pad|>` to `t·h·w/merge²` pads,
    /// and tokenizes without adding special tokens (Qwen adds none anyway).
    pub fn encode_chat(&self, chat: &Chat) -> Result<EncodedChat> {
        let text = render_chat(&chat.messages, chat.tools.as_deref(), chat.add_generation_prompt);
        let mut pixel_values = Vec::new();
        let mut grids = Vec::new();
        let mut pads_per_image = Vec::new();
        let mut patch_dim = 0;
        let merge = self.image_processor.config().merge_size;
        for (i, m) in chat.messages.iter().enumerate() {
            for (k, src) in m.content.images().enumerate() {
                let location = format!("messages[{i}], image {k}");
                let processed = match src {
                    ImageSource::Path(p) => {
                        let img = image::open(p).map_err(|source| ProcessingError::Image {
                            path: p.clone(),
                            location: location.clone(),
                            header: too_large_header(p, &source),
                            source: Box::new(source),
                        })?;
                        self.image_processor.preprocess(&img)?
                    }
                    ImageSource::Loaded(img) => self.image_processor.preprocess(img)?,
                };
                patch_dim = processed.patch_dim;
                pads_per_image.push(processed.num_patches() / (merge * merge));
                grids.push(processed.grid_thw.map(|v| v as i64));
                pixel_values.extend_from_slice(&processed.pixel_values);
            }
        }
        let expanded = expand_image_pads(&text, &pads_per_image)?;
        let enc = self
            .tokenizer
            .encode(expanded.as_str(), false)
            .map_err(|source| ProcessingError::Tokenizer {
                context: "encoding the rendered chat".into(),
                source,
            })?;
        let num_patches = pixel_values.len().checked_div(patch_dim).unwrap_or(0);
        Ok(EncodedChat {
            text,
            input_ids: enc.get_ids().iter().map(|&id| id as i64).collect(),
            pixel_values,
            num_patches,
            patch_dim,
            image_grid_thw: grids,
        })
    }
}

/// Replaces the n-th `<|image_pad|>` by `pads[n]` copies. A mismatch between pads in the text
/// and images (e.g. a literal `<|image_pad|>` typed in a message) is an error, as in transformers.
fn expand_image_pads(text: &str, pads: &[usize]) -> Result<String> {
    let pieces: Vec<&str> = text.split(IMAGE_PAD).collect();
    if pieces.len() - 1 != pads.len() {
        return Err(ProcessingError::Chat {
            path: Default::default(),
            location: "rendered text".into(),
            reason: format!(
                "{} {IMAGE_PAD} tokens in the text but {} images; do not write {IMAGE_PAD} in message text",
                pieces.len() - 1,
                pads.len()
            ),
        });
    }
    let mut out = String::with_capacity(text.len() + pads.iter().sum::<usize>() * IMAGE_PAD.len());
    for (i, piece) in pieces.iter().enumerate() {
        out.push_str(piece);
        if let Some(&n) = pads.get(i) {
            for _ in 0..n {
                out.push_str(IMAGE_PAD);
            }
        }
    }
    Ok(out)
}

/// An image error, with the header's dimensions when the decoder refused the size (the bare
/// "Memory limit exceeded" does not say why).
fn too_large_header(path: &std::path::Path, e: &image::ImageError) -> Option<(u32, u32)> {
    if !matches!(e, image::ImageError::Limits(_)) {
        return None;
    }
    image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .ok()
        .and_then(|r| r.into_dimensions().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_model_files_are_named() {
        let dir = std::env::temp_dir().join(format!("armt-proc-nomodel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = Processor::from_model_dir(&dir)
            .err()
            .expect("empty dir must fail")
            .to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
    }

    #[test]
    fn expands_each_pad_by_its_count() {
        let s = expand_image_pads("a<|image_pad|>b<|image_pad|>", &[2, 1]).unwrap();
        assert_eq!(s, "a<|image_pad|><|image_pad|>b<|image_pad|>");
        assert!(expand_image_pads("a<|image_pad|>", &[]).is_err());
    }
}
