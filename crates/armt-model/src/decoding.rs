//! The rollout engine's model surface: a preallocated slot cache (see `text/slots.rs`) and the
//! three passes that fill and read it (prompt prefill per group, tool-turn appends per row,
//! one-token decode steps), each returning final hidden states for [`Qwen25Vl::logits`].

use crate::model::Qwen25Vl;
use crate::text::{AppendView, DecodeView, SlotCache};
use tch::Tensor;

impl Qwen25Vl {
    /// A cache of `groups` prompt blocks of `prefix_cap` positions and `groups · rows_per_group`
    /// row slots of `suffix_cap` positions, in the model's dtype and device.
    pub fn new_slot_cache(
        &self,
        groups: i64,
        rows_per_group: i64,
        prefix_cap: i64,
        suffix_cap: i64,
    ) -> SlotCache {
        SlotCache::new(
            self.text(),
            groups,
            rows_per_group,
            prefix_cap,
            suffix_cap,
            self.kind(),
            self.device(),
        )
    }

    /// Prefills a chunk of one group's prompt (`embeds` `[1, S, hidden]` at `positions`
    /// `[3, 1, S]`, prompt offset `start`) into `block`. Returns hidden states `[1, S, hidden]`.
    pub fn forward_prefix(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        cache: &mut SlotCache,
        block: i64,
        start: i64,
    ) -> Tensor {
        self.text().forward_prefix(embeds, positions, cache, block, start)
    }

    /// Appends right-padded chunks to row slots (tool turns). Returns `[A, S, hidden]`.
    pub fn forward_append(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        cache: &mut SlotCache,
        view: &AppendView,
    ) -> Tensor {
        self.text().forward_append(embeds, positions, cache, view)
    }

    /// One token per decoding row. Returns `[A, 1, hidden]`.
    pub fn forward_decode(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        cache: &mut SlotCache,
        view: &DecodeView,
    ) -> Tensor {
        self.text().forward_decode(embeds, positions, cache, view)
    }
}

impl Qwen25Vl {
    /// Token embeddings of text-only ids, without the image-token count check (and its host
    /// sync) of [`Qwen25Vl::embed`]: for decode steps, whose tokens are never image pads.
    pub fn embed_text(&self, input_ids: &Tensor) -> Tensor {
        self.text().embed(input_ids)
    }
}
