//! Prompt lengths without decoding pixels, for filtering a dataset before training (verl's
//! `filter_overlong_prompts`): the rendered prompt's text tokens plus each image's pads, counted
//! from the image's header and the processor's `smart_resize`.

use crate::engine::{suffix_tokens, RolloutEnv};
use crate::RolloutError;
use armt_data::Sample;
use armt_processing::{render_chat, smart_resize, IMAGE_PAD};

impl RolloutEnv<'_> {
    /// Tokens of `sample`'s prompt as the rollout encodes it (system prompt with the tools, the
    /// user turn with its images and instruction, the generation prompt).
    pub fn prompt_len(&self, sample: &Sample) -> Result<usize, RolloutError> {
        let messages = self.prompt_messages(sample);
        let text = render_chat(&messages, Some(&self.tools.schemas()), true);
        let c = self.processor.image_processor().config();
        let mut pads = 0;
        for p in &sample.images {
            let (w, h) = image::image_dimensions(p).map_err(|source| RolloutError::Image {
                sample: sample.id.clone(),
                path: p.clone(),
                source,
            })?;
            let (h, w) = if c.do_resize {
                smart_resize(
                    h as usize,
                    w as usize,
                    c.patch_size * c.merge_size,
                    c.min_pixels,
                    c.max_pixels,
                )?
            } else {
                (h as usize, w as usize)
            };
            pads += (h / c.patch_size) * (w / c.patch_size) / (c.merge_size * c.merge_size);
        }
        // One pad per image stands in the text; the image's pads replace it.
        let text_tokens = self
            .processor
            .tokenizer()
            .encode(text.replace(IMAGE_PAD, "").as_str(), false)
            .map_err(|source| RolloutError::Tokenizer {
                what: "tokenizing",
                source,
            })?
            .len();
        Ok(text_tokens + pads)
    }

    /// Indices of the samples whose prompts can never be rolled out with `n` rows (not below
    /// `rollout.max_context`, or one group over `rollout.max_batch_tokens`: the rollout would
    /// skip them), or are longer than `max_prompt_tokens` (when given).
    pub fn overlong_prompts(
        &self,
        samples: &[Sample],
        n: usize,
        max_prompt_tokens: Option<usize>,
    ) -> Result<Vec<usize>, RolloutError> {
        let cfg = self.config;
        let suffix = suffix_tokens(cfg);
        let mut out = Vec::new();
        for (k, s) in samples.iter().enumerate() {
            let len = self.prompt_len(s)?;
            if len >= cfg.max_context
                || len + n * suffix > cfg.max_batch_tokens
                || max_prompt_tokens.is_some_and(|m| len > m)
            {
                out.push(k);
            }
        }
        Ok(out)
    }
}
