//! Decoding against a preallocated, slot-addressed KV cache: the rollout engine's path.
//!
//! Layout per layer (allocated once, written in place):
//! - prefix `[groups, kv_heads, prefix_cap, head_dim]`: one block per GRPO group, holding the
//!   group's prompt. It is prefilled once and read by all `rows_per_group` rows of the group.
//! - suffix `[groups · rows_per_group, kv_heads, suffix_cap, head_dim]`: one slot per row, holding
//!   what the row added after the prompt (sampled tokens, tool turns). Row slot `s` belongs to
//!   group block `s / rows_per_group`.
//!
//! A row's keys are its block's prefix (first `prefix_len[block]` positions) followed by its own
//! suffix (first `suffix_len[slot]` positions). Slots and blocks are reused by later groups; only
//! the valid prefix of each is ever attended to.

use super::TextModel;
use crate::layers::rotate_half;
use tch::{Device, Kind, Tensor};

#[derive(Debug)]
struct SlotLayer {
    prefix_k: Tensor,
    prefix_v: Tensor,
    suffix_k: Tensor,
    suffix_v: Tensor,
}

/// Preallocated keys and values of every decoder layer, addressed by group block and row slot.
#[derive(Debug)]
pub struct SlotCache {
    layers: Vec<SlotLayer>,
    groups: i64,
    rows_per_group: i64,
    prefix_cap: i64,
    suffix_cap: i64,
    kv_heads: i64,
    head_dim: i64,
}

impl SlotCache {
    pub(crate) fn new(
        text: &TextModel,
        groups: i64,
        rows_per_group: i64,
        prefix_cap: i64,
        suffix_cap: i64,
        kind: Kind,
        device: Device,
    ) -> Self {
        let (kv_heads, head_dim) = text
            .layers
            .first()
            .map(|l| (l.self_attn.num_kv_heads, l.self_attn.head_dim))
            .unwrap_or((1, 1));
        let zeros = |n: i64, cap: i64| Tensor::zeros([n, kv_heads, cap, head_dim], (kind, device));
        let layers = (0..text.layers.len())
            .map(|_| SlotLayer {
                prefix_k: zeros(groups, prefix_cap),
                prefix_v: zeros(groups, prefix_cap),
                suffix_k: zeros(groups * rows_per_group, suffix_cap),
                suffix_v: zeros(groups * rows_per_group, suffix_cap),
            })
            .collect();
        Self {
            layers,
            groups,
            rows_per_group,
            prefix_cap,
            suffix_cap,
            kv_heads,
            head_dim,
        }
    }

    pub fn groups(&self) -> i64 {
        self.groups
    }

    pub fn rows_per_group(&self) -> i64 {
        self.rows_per_group
    }

    pub fn slots(&self) -> i64 {
        self.groups * self.rows_per_group
    }

    pub fn prefix_cap(&self) -> i64 {
        self.prefix_cap
    }

    pub fn suffix_cap(&self) -> i64 {
        self.suffix_cap
    }

    /// Token positions allocated (per layer, keys and values alike): the memory the cache holds.
    pub fn allocated_tokens(&self) -> i64 {
        self.groups * self.prefix_cap + self.slots() * self.suffix_cap
    }

    /// Grows every row slot to at least `cap` positions (kept contents; amortised by the caller
    /// asking for generous steps). Never shrinks.
    pub fn grow_suffix(&mut self, cap: i64) {
        if cap <= self.suffix_cap {
            return;
        }
        let _g = tch::no_grad_guard();
        for l in &mut self.layers {
            for t in [&mut l.suffix_k, &mut l.suffix_v] {
                let bigger = Tensor::zeros(
                    [
                        self.groups * self.rows_per_group,
                        self.kv_heads,
                        cap,
                        self.head_dim,
                    ],
                    (t.kind(), t.device()),
                );
                bigger.narrow(2, 0, self.suffix_cap).copy_(t);
                *t = bigger;
            }
        }
        self.suffix_cap = cap;
    }
}

/// Which rows a multi-token step (tool turns appended to some rows) runs, and where their keys go.
#[derive(Debug)]
pub struct AppendView {
    /// `[A]` row slot of each batch row.
    pub slots: Tensor,
    /// `[A]` group block of each batch row.
    pub blocks: Tensor,
    /// `[A, 1, S, prefix_view + suffix_view]` bool: which keys each query sees.
    pub mask: Tensor,
    pub prefix_view: i64,
    pub suffix_view: i64,
    /// `[N]` flat index (row · S + position) of each real (non-padding) new token.
    pub write_src: Tensor,
    /// `[N]` slot and `[N]` suffix position each real new token is written to.
    pub write_slot: Tensor,
    pub write_pos: Tensor,
}

/// One decode step: one new token for each of `A` rows.
#[derive(Debug)]
pub struct DecodeView {
    /// `[A]` row slot of each batch row.
    pub slots: Tensor,
    /// `[A]` suffix position the new token's key is written to.
    pub write_pos: Tensor,
    /// `[slots, 1, 1, prefix_view]` bool over ALL slots: valid prefix keys of the slot's block.
    pub prefix_mask: Tensor,
    /// `[slots, 1, 1, suffix_view]` bool over ALL slots: valid suffix keys (the new one included).
    pub suffix_mask: Tensor,
    pub prefix_view: i64,
    pub suffix_view: i64,
}

impl TextModel {
    fn rotated_qkv(&self, layer: usize, x: &Tensor, cos: &Tensor, sin: &Tensor) -> (Tensor, Tensor, Tensor) {
        let attn = &self.layers[layer].self_attn;
        let (b, s) = (x.size()[0], x.size()[1]);
        let heads = |t: Tensor, n: i64| t.view([b, s, n, attn.head_dim]).transpose(1, 2);
        let q = heads(attn.q_proj.forward(x), attn.num_heads);
        let k = heads(attn.k_proj.forward(x), attn.num_kv_heads);
        let v = heads(attn.v_proj.forward(x), attn.num_kv_heads);
        let (cos, sin) = (cos.unsqueeze(1), sin.unsqueeze(1));
        let q = &q * &cos + rotate_half(&q) * &sin;
        let k = &k * &cos + rotate_half(&k) * &sin;
        (q, k, v)
    }

    /// Runs the decoder layers with `attend(layer, normed_x, cos, sin, cache)` as the attention
    /// (before `o_proj`); returns the final normed hidden states.
    fn forward_with(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        cache: &mut SlotCache,
        mut attend: impl FnMut(&Self, usize, &Tensor, &Tensor, &Tensor, &mut SlotLayer) -> Tensor,
    ) -> Tensor {
        let (cos, sin) = self.rotary.cos_sin(positions);
        let (cos, sin) = (cos.to_kind(embeds.kind()), sin.to_kind(embeds.kind()));
        let (b, s) = (embeds.size()[0], embeds.size()[1]);
        let mut x = embeds.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let normed = layer.input_layernorm.forward(&x);
            let out = attend(self, i, &normed, &cos, &sin, &mut cache.layers[i]);
            let attn = layer.self_attn.o_proj.forward(&out.reshape([b, s, -1]));
            x = &x + attn;
            x = &x + layer.mlp.forward(&layer.post_attention_layernorm.forward(&x));
        }
        self.norm.forward(&x)
    }

    /// Prefills `embeds` (`[1, S, hidden]`, a chunk of one group's prompt starting at prompt
    /// position `start`) into group block `block`: keys are written in place, and each query
    /// attends causally to the block's first `start + S` positions.
    pub fn forward_prefix(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        cache: &mut SlotCache,
        block: i64,
        start: i64,
    ) -> Tensor {
        let s = embeds.size()[1];
        let total = start + s;
        let device = embeds.device();
        let q_idx = Tensor::arange(s, (Kind::Int64, device)).view([s, 1]) + start;
        let k_idx = Tensor::arange(total, (Kind::Int64, device)).view([1, total]);
        let mask = k_idx.le_tensor(&q_idx).view([1, 1, s, total]);
        self.forward_with(embeds, positions, cache, |model, i, x, cos, sin, layer| {
            let attn = &model.layers[i].self_attn;
            let (q, k, v) = model.rotated_qkv(i, x, cos, sin);
            layer
                .prefix_k
                .get(block)
                .narrow(1, start, s)
                .copy_(&k.squeeze_dim(0));
            layer
                .prefix_v
                .get(block)
                .narrow(1, start, s)
                .copy_(&v.squeeze_dim(0));
            let keys = layer.prefix_k.get(block).narrow(1, 0, total).unsqueeze(0);
            let values = layer.prefix_v.get(block).narrow(1, 0, total).unsqueeze(0);
            attention(
                attn.num_heads,
                attn.num_kv_heads,
                attn.head_dim,
                &q,
                &keys,
                &values,
                &mask,
            )
            .transpose(1, 2)
        })
    }

    /// Appends `embeds` (`[A, S, hidden]`, right-padded) to the row slots of `view`: keys of real
    /// tokens are written in place after each row's suffix; queries attend to their block's prompt
    /// and their row's suffix through `view.mask`.
    pub fn forward_append(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        cache: &mut SlotCache,
        view: &AppendView,
    ) -> Tensor {
        let (a, s) = (embeds.size()[0], embeds.size()[1]);
        self.forward_with(embeds, positions, cache, |model, i, x, cos, sin, layer| {
            let attn = &model.layers[i].self_attn;
            let (q, k, v) = model.rotated_qkv(i, x, cos, sin);
            for (new, buf) in [(&k, &mut layer.suffix_k), (&v, &mut layer.suffix_v)] {
                let flat = new
                    .transpose(1, 2)
                    .reshape([a * s, attn.num_kv_heads, attn.head_dim])
                    .index_select(0, &view.write_src);
                let _ = buf.index_put_(
                    &[Some(&view.write_slot), None, Some(&view.write_pos)],
                    &flat,
                    false,
                );
            }
            let gather = |prefix: &Tensor, suffix: &Tensor| {
                Tensor::cat(
                    &[
                        prefix
                            .index_select(0, &view.blocks)
                            .narrow(2, 0, view.prefix_view),
                        suffix.index_select(0, &view.slots).narrow(2, 0, view.suffix_view),
                    ],
                    2,
                )
            };
            let keys = gather(&layer.prefix_k, &layer.suffix_k);
            let values = gather(&layer.prefix_v, &layer.suffix_v);
            attention(
                attn.num_heads,
                attn.num_kv_heads,
                attn.head_dim,
                &q,
                &keys,
                &values,
                &view.mask,
            )
            .transpose(1, 2)
        })
    }

    /// One decode step for `A` rows (`embeds` `[A, 1, hidden]`). Each row's key is written in
    /// place at its suffix position; attention reads every group's prompt once for all rows of
    /// the group (the rows' queries are stacked against the shared prefix) and every row's own
    /// suffix, with one softmax over both.
    pub fn forward_decode(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        cache: &mut SlotCache,
        view: &DecodeView,
    ) -> Tensor {
        let (groups, n) = (cache.groups, cache.rows_per_group);
        let a = embeds.size()[0];
        self.forward_with(embeds, positions, cache, |model, i, x, cos, sin, layer| {
            let attn = &model.layers[i].self_attn;
            let (h, kvh, d) = (attn.num_heads, attn.num_kv_heads, attn.head_dim);
            let rep = h / kvh;
            let (q, k, v) = model.rotated_qkv(i, x, cos, sin);
            for (new, buf) in [(&k, &mut layer.suffix_k), (&v, &mut layer.suffix_v)] {
                let _ = buf.index_put_(
                    &[Some(&view.slots), None, Some(&view.write_pos)],
                    &new.squeeze_dim(2),
                    false,
                );
            }
            // Queries of all slots (zeros where a slot does not decode: computed, then dropped).
            let mut qf = Tensor::zeros([groups * n, h, d], (q.kind(), q.device()));
            let _ = qf.index_copy_(0, &view.slots, &q.squeeze_dim(2));
            let scale = (d as f64).powf(-0.5);
            let (pv, sv) = (view.prefix_view, view.suffix_view);
            // Prefix: [groups, kv, n·rep, d] @ [groups, kv, d, pv].
            let qg = qf
                .view([groups, n, kvh, rep, d])
                .permute([0, 2, 1, 3, 4])
                .reshape([groups, kvh, n * rep, d]);
            let pk = layer.prefix_k.narrow(2, 0, pv);
            let pvv = layer.prefix_v.narrow(2, 0, pv);
            let sp = (qg.matmul(&pk.transpose(2, 3)) * scale)
                .reshape([groups, kvh, n, rep, pv])
                .permute([0, 2, 1, 3, 4])
                .reshape([groups * n, kvh, rep, pv]);
            // Suffix: [slots, kv, rep, d] @ [slots, kv, d, sv].
            let qs = qf.view([groups * n, kvh, rep, d]);
            let sk = layer.suffix_k.narrow(2, 0, sv);
            let svv = layer.suffix_v.narrow(2, 0, sv);
            let ss = qs.matmul(&sk.transpose(2, 3)) * scale;
            let scores = Tensor::cat(
                &[
                    sp.masked_fill(&view.prefix_mask.logical_not(), f64::NEG_INFINITY),
                    ss.masked_fill(&view.suffix_mask.logical_not(), f64::NEG_INFINITY),
                ],
                -1,
            );
            let p = scores.softmax(-1, Kind::Float).to_kind(q.kind());
            let pp = p
                .narrow(-1, 0, pv)
                .reshape([groups, n, kvh, rep, pv])
                .permute([0, 2, 1, 3, 4])
                .reshape([groups, kvh, n * rep, pv]);
            let out_p = pp
                .matmul(&pvv)
                .reshape([groups, kvh, n, rep, d])
                .permute([0, 2, 1, 3, 4])
                .reshape([groups * n, kvh, rep, d]);
            let out_s = p.narrow(-1, pv, sv).matmul(&svv);
            (out_p + out_s)
                .reshape([groups * n, h, d])
                .index_select(0, &view.slots)
                .reshape([a, 1, h, d])
        })
    }
}

/// Masked attention with grouped key/value heads: `q` `[B, H, S, D]`, keys/values
/// `[B, KV, T, D]`, `mask` bool `[B or 1, 1, S, T]`. Returns `[B, H, S, D]`.
fn attention(
    heads: i64,
    kv_heads: i64,
    head_dim: i64,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
) -> Tensor {
    let rep = heads / kv_heads;
    let (k, v) = if rep > 1 {
        (
            k.repeat_interleave_self_int(rep, 1, None),
            v.repeat_interleave_self_int(rep, 1, None),
        )
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    let scale = (head_dim as f64).powf(-0.5);
    Tensor::scaled_dot_product_attention(q, &k, &v, Some(mask), 0.0, false, scale, false)
}
