//! What the turn loop needs from a policy: start a group of rows from one prompt, append context
//! (tool turns) to some rows, and decode the rows that are in an assistant turn.
//! [`ModelGenerator`] does it on the model with a preallocated slot cache (one prompt block per
//! group, one suffix slot per row); [`ScriptedGenerator`] replays fixed texts (tests, expert
//! demonstrations).

use crate::rng::{device_uniforms, RowRng};
use crate::{RolloutError, SamplingConfig};
use armt_model::{rope_index, AppendView, DecodeView, Qwen25Vl, SlotCache};
use armt_processing::ProcessedImage;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

/// Tokens to add to one row's context, with the images whose `<|image_pad|>` runs they contain.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    pub ids: Vec<i64>,
    pub images: Vec<ProcessedImage>,
    /// The same context as chat messages (the prompt's system and user messages, a tool turn's
    /// tool message), for generators that speak chat rather than tokens (a remote server).
    /// Empty where a chunk was made from tokens only.
    pub messages: Vec<armt_processing::Message>,
}

/// One sampled assistant turn: token ids and their log-probs under the sampling policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampled {
    pub ids: Vec<i64>,
    pub logprobs: Vec<f32>,
    /// The turn ended at its token budget although `ids` may be shorter: a remote server counts
    /// the tokens it generated, and its text re-tokenized here may count fewer.
    pub truncated: bool,
}

/// The sizes a run needs, fixed before its first group (the engine derives them from
/// `rollout.max_rows`, `rollout.max_batch_tokens` and the prompts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePlan {
    /// Group blocks resident at once.
    pub groups: usize,
    /// Rows per group (the GRPO group size n).
    pub rows_per_group: usize,
    /// Positions per prompt block (the longest admitted prompt).
    pub prefix_tokens: usize,
    /// Most positions a row adds after its prompt (sampled and tool tokens), plus one scratch.
    pub suffix_tokens: usize,
    /// Longest assistant turn.
    pub turn_tokens: usize,
    /// Prompt tokens per prefill forward.
    pub prefill_chunk: usize,
    /// Decode steps between host reads of the rows' stop flags.
    pub sync_every: usize,
}

impl CachePlan {
    /// KV positions the plan may allocate (prompt blocks and row slots, per layer).
    pub fn kv_tokens(&self) -> usize {
        self.groups * (self.prefix_tokens + self.rows_per_group * self.suffix_tokens)
    }
}

/// A policy the rollout loop drives. Rows are named by the caller (any distinct ids); a group's
/// rows live in group block `block` (`0..plan.groups`), which the caller reuses once all of the
/// group's rows are released.
pub trait Generator {
    /// Sizes the generator for a run; called once before the first group.
    fn prepare(&mut self, _plan: &CachePlan) -> Result<(), RolloutError> {
        Ok(())
    }

    /// Processes `prompt` once (its images through the vision tower once) into `block` and starts
    /// `rows` (id and random stream of each) from it.
    fn add_group(
        &mut self,
        block: usize,
        prompt: &Chunk,
        rows: &[(usize, RowRng)],
    ) -> Result<(), RolloutError>;

    /// Appends `chunks[i]` to row `rows[i]`'s context.
    fn append(&mut self, rows: &[usize], chunks: &[Chunk]) -> Result<(), RolloutError>;

    /// Starts the next assistant turn of `row`, at most `budget` (≥ 1) tokens.
    fn begin_turn(&mut self, row: usize, budget: usize) -> Result<(), RolloutError>;

    /// Decodes the rows in a turn for a few steps; returns the turns that ended (by a token of
    /// `stop_ids`, which is part of the turn, or by the budget), possibly none.
    fn step(&mut self, stop_ids: &[i64]) -> Result<Vec<(usize, Sampled)>, RolloutError>;

    /// The row is finished; its slot may be reused.
    fn release(&mut self, row: usize);

    /// Drops `row`'s last turn (ended, nothing appended after it) from its context, so that the
    /// next append replaces it (`rollout.retokenize_turns`).
    fn rewind_turn(&mut self, row: usize) -> Result<(), RolloutError> {
        Err(RolloutError::Settings(format!(
            "this generator cannot rewind a turn (row {row}): turn off rollout.retokenize_turns"
        )))
    }
}

/// Per-slot state on the device, updated in place by decode steps without host reads.
struct DeviceRows {
    /// Valid suffix positions.
    len: Tensor,
    /// Next M-RoPE position (text tokens use it on all three axes).
    pos: Tensor,
    /// Tokens sampled in the current turn.
    count: Tensor,
    budget: Tensor,
    done: Tensor,
    key_lo: Tensor,
    key_hi: Tensor,
    /// Uniforms drawn so far by the row (its trajectory's sampled-token index).
    draws: Tensor,
    /// `[slots, vocab]` f32: logits predicting each slot's next token.
    logits: Tensor,
    /// `[slots, turn_tokens + 1]`: the current turn's tokens and log-probs.
    out_tok: Tensor,
    out_lp: Tensor,
    /// `[groups]` prompt length of each block.
    prefix_len: Tensor,
    /// `[slots]` block of each slot.
    block_of_slot: Tensor,
}

/// Sampling on the model with a preallocated slot cache: a group's prompt is prefilled once into
/// its block and shared by its rows; each row writes its own tokens into its slot in place; a
/// decode step runs only the rows that are in a turn; rows in a tool call or finished cost nothing
/// but their (reused) slot. Sampling and stop checks run on the device; the host reads the stop
/// flags every `sync_every` steps.
pub struct ModelGenerator<'m> {
    model: &'m Qwen25Vl,
    sampling: SamplingConfig,
    pad_id: i64,
    /// Vision placeholder ids: only the processor writes them (each stands for an image
    /// embedding), so the policy is never allowed to sample one.
    banned: Tensor,
    plan: Option<CachePlan>,
    cache: Option<SlotCache>,
    dev: Option<DeviceRows>,
    slot_of_row: HashMap<usize, usize>,
    /// Host mirrors, exact whenever the slot is not decoding.
    len: Vec<i64>,
    next_pos: Vec<i64>,
    /// Sampled tokens not yet fed to the cache (the stop token of the last turn).
    pending: Vec<Vec<i64>>,
    block_prefix: Vec<i64>,
    /// Slots in a turn, and turns waiting to be pushed to the device (slot, budget).
    decoding: Vec<usize>,
    budgets: Vec<usize>,
    /// Suffix length and position of each slot when its current turn began.
    turn_base: Vec<(i64, i64)>,
    starting: Vec<(usize, usize)>,
}

impl<'m> ModelGenerator<'m> {
    pub fn new(model: &'m Qwen25Vl, sampling: SamplingConfig, pad_id: i64) -> Self {
        let banned = Tensor::from_slice(&[model.config.image_token_id, model.config.video_token_id])
            .to_device(model.device());
        Self {
            model,
            sampling,
            pad_id,
            banned,
            plan: None,
            cache: None,
            dev: None,
            slot_of_row: HashMap::new(),
            len: Vec::new(),
            next_pos: Vec::new(),
            pending: Vec::new(),
            block_prefix: Vec::new(),
            decoding: Vec::new(),
            budgets: Vec::new(),
            turn_base: Vec::new(),
            starting: Vec::new(),
        }
    }

    /// KV positions the cache holds now (per layer): at most the plan's [`CachePlan::kv_tokens`].
    pub fn allocated_kv_tokens(&self) -> usize {
        self.cache
            .as_ref()
            .map(|c| c.allocated_tokens() as usize)
            .unwrap_or(0)
    }

    fn parts(&mut self) -> Result<(&CachePlan, &mut SlotCache, &mut DeviceRows), RolloutError> {
        match (&self.plan, &mut self.cache, &mut self.dev) {
            (Some(p), Some(c), Some(d)) => Ok((p, c, d)),
            _ => Err(RolloutError::Invariant("the generator was not prepared".into())),
        }
    }

    fn slot(&self, row: usize) -> Result<usize, RolloutError> {
        self.slot_of_row
            .get(&row)
            .copied()
            .ok_or_else(|| RolloutError::Invariant(format!("row {row} is not in the generator")))
    }

    /// Grows the row slots (by doubling, up to the plan) so positions below `needed` exist.
    fn ensure_suffix(&mut self, needed: usize) -> Result<(), RolloutError> {
        let (plan, cache, _) = self.parts()?;
        let max = plan.suffix_tokens as i64;
        let needed = needed as i64;
        if needed > max {
            return Err(RolloutError::Invariant(format!(
                "a row needs {needed} cache positions, over the planned {max}"
            )));
        }
        if needed > cache.suffix_cap() {
            cache.grow_suffix((cache.suffix_cap() * 2).max(needed).max(64).min(max));
        }
        Ok(())
    }

    /// Pushes the turns begun since the last step to the device.
    fn flush_starts(&mut self) -> Result<(), RolloutError> {
        if self.starting.is_empty() {
            return Ok(());
        }
        let starting = std::mem::take(&mut self.starting);
        let device = self.model.device();
        let slots: Vec<i64> = starting.iter().map(|&(s, _)| s as i64).collect();
        let budgets: Vec<i64> = starting.iter().map(|&(_, b)| b as i64).collect();
        let (_, _, dev) = self.parts()?;
        let idx = Tensor::from_slice(&slots).to_device(device);
        let _ = dev.count.index_fill_(0, &idx, 0);
        let _ = dev.done.index_fill_(0, &idx, 0);
        let _ = dev
            .budget
            .index_copy_(0, &idx, &Tensor::from_slice(&budgets).to_device(device));
        for (s, b) in starting {
            self.decoding.push(s);
            self.budgets[s] = b;
            self.turn_base[s] = (self.len[s], self.next_pos[s]);
        }
        self.decoding.sort_unstable();
        Ok(())
    }

    /// One decode step of the rows `d` (a device index tensor of their slots).
    fn decode_once(
        &mut self,
        d: &Tensor,
        stop: &Tensor,
        prefix_mask: &Tensor,
        prefix_view: i64,
        suffix_view: i64,
    ) {
        let a = d.size()[0];
        let model = self.model;
        let sampling = self.sampling.clone();
        let banned = self.banned.shallow_clone();
        let (cache, dev) = match (&mut self.cache, &mut self.dev) {
            (Some(c), Some(dv)) => (c, dv),
            _ => return,
        };
        let logits = dev.logits.index_select(0, d);
        let u = device_uniforms(
            &dev.key_lo.index_select(0, d),
            &dev.key_hi.index_select(0, d),
            &dev.draws.index_select(0, d),
        );
        let (tok, lp) = sample(&logits, &sampling, &u, Some(&banned));
        let count = dev.count.index_select(0, d);
        let prev_done = dev.done.index_select(0, d);
        let live = prev_done.logical_not().to_kind(Kind::Int64);
        // Rows that ended earlier in this window write past their turn (ignored, overwritten).
        let _ = dev.out_tok.index_put_(&[Some(d), Some(&count)], &tok, false);
        let _ = dev.out_lp.index_put_(&[Some(d), Some(&count)], &lp, false);
        let count = count + &live;
        let _ = dev.count.index_copy_(0, d, &count);
        let draws = dev.draws.index_select(0, d) + &live;
        let _ = dev.draws.index_copy_(0, d, &draws);
        let ended = Tensor::isin(&tok, stop, false, false)
            .logical_or(&count.ge_tensor(&dev.budget.index_select(0, d)));
        let done = prev_done.logical_or(&ended);
        let _ = dev.done.index_copy_(0, d, &done);
        // Feed the token; a row that is done keeps its length (its write lands past the end).
        let advance = done.logical_not().to_kind(Kind::Int64);
        let len = dev.len.index_select(0, d);
        let pos = dev.pos.index_select(0, d);
        let suffix_mask = Tensor::arange(suffix_view, (Kind::Int64, len.device()))
            .view([1, suffix_view])
            .le_tensor(&dev.len.view([-1, 1]))
            .view([-1, 1, 1, suffix_view]);
        let view = DecodeView {
            slots: d.shallow_clone(),
            write_pos: len.shallow_clone(),
            prefix_mask: prefix_mask.shallow_clone(),
            suffix_mask,
            prefix_view,
            suffix_view,
        };
        let embeds = model.embed_text(&tok.view([a, 1]));
        let positions = pos.view([1, a, 1]).expand([3, a, 1], false);
        let hidden = model.forward_decode(&embeds, &positions, cache, &view);
        let next = model.logits(&hidden.view([a, -1])).to_kind(Kind::Float);
        let _ = dev.logits.index_copy_(0, d, &next);
        let _ = dev.len.index_copy_(0, d, &(len + &advance));
        let _ = dev.pos.index_copy_(0, d, &(pos + &advance));
    }
}

impl Generator for ModelGenerator<'_> {
    fn prepare(&mut self, plan: &CachePlan) -> Result<(), RolloutError> {
        let device = self.model.device();
        let slots = plan.groups * plan.rows_per_group;
        let cache = self.model.new_slot_cache(
            plan.groups as i64,
            plan.rows_per_group as i64,
            plan.prefix_tokens as i64,
            (plan.suffix_tokens as i64).min(64),
        );
        let s = slots as i64;
        let z = || Tensor::zeros([s], (Kind::Int64, device));
        let vocab = self.model.config.text.vocab_size as i64;
        let cols = plan.turn_tokens as i64 + 1;
        self.dev = Some(DeviceRows {
            len: z(),
            pos: z(),
            count: z(),
            budget: z(),
            done: Tensor::zeros([s], (Kind::Bool, device)),
            key_lo: z(),
            key_hi: z(),
            draws: z(),
            logits: Tensor::zeros([s, vocab], (Kind::Float, device)),
            out_tok: Tensor::zeros([s, cols], (Kind::Int64, device)),
            out_lp: Tensor::zeros([s, cols], (Kind::Float, device)),
            prefix_len: Tensor::zeros([plan.groups as i64], (Kind::Int64, device)),
            block_of_slot: Tensor::arange(s, (Kind::Int64, device))
                .floor_divide_scalar(plan.rows_per_group as i64),
        });
        self.cache = Some(cache);
        self.plan = Some(*plan);
        self.slot_of_row.clear();
        self.len = vec![0; slots];
        self.next_pos = vec![0; slots];
        self.pending = vec![Vec::new(); slots];
        self.block_prefix = vec![0; plan.groups];
        self.decoding.clear();
        self.budgets = vec![0; slots];
        self.turn_base = vec![(0, 0); slots];
        self.starting.clear();
        Ok(())
    }

    fn add_group(
        &mut self,
        block: usize,
        prompt: &Chunk,
        rows: &[(usize, RowRng)],
    ) -> Result<(), RolloutError> {
        let _g = tch::no_grad_guard();
        let device = self.model.device();
        let model = self.model;
        let (plan, cache, dev) = self.parts()?;
        let (n, chunk) = (plan.rows_per_group, plan.prefill_chunk.max(1) as i64);
        if block >= plan.groups || rows.len() > n || prompt.ids.is_empty() {
            return Err(RolloutError::Invariant(format!(
                "group block {block} with {} rows and {} prompt tokens does not fit the plan",
                rows.len(),
                prompt.ids.len()
            )));
        }
        let p = prompt.ids.len() as i64;
        if p > cache.prefix_cap() {
            return Err(RolloutError::Invariant(format!(
                "a prompt of {p} tokens is over the planned {}",
                cache.prefix_cap()
            )));
        }
        let merge = model.config.vision.spatial_merge_size as i64;
        let grids = grids_of(&prompt.images);
        let index = rope_index(&prompt.ids, &grids, model.config.image_token_id, merge)?;
        let mut flat_pos = vec![0i64; 3 * p as usize];
        for (j, q) in index.positions.iter().enumerate() {
            for axis in 0..3 {
                flat_pos[axis * p as usize + j] = q[axis];
            }
        }
        let positions = Tensor::from_slice(&flat_pos).view([3, 1, p]).to_device(device);
        let ids = Tensor::from_slice(&prompt.ids).view([1, p]).to_device(device);
        // The prompt's images go through the vision tower once, for all of the group's rows.
        let image_embeds = match pixel_batch(&prompt.images) {
            Some((pv, g)) => Some(model.encode_images(&pv.to_device(device), &g)?),
            None => None,
        };
        let embeds = model.embed(&ids, image_embeds.as_ref())?;
        let mut last = None;
        let mut start = 0;
        while start < p {
            let s = chunk.min(p - start);
            let h = model.forward_prefix(
                &embeds.narrow(1, start, s),
                &positions.narrow(2, start, s),
                cache,
                block as i64,
                start,
            );
            last = Some(h.get(0).get(s - 1));
            start += s;
        }
        let last = last.ok_or_else(|| RolloutError::Invariant("an empty prompt".into()))?;
        let logits = model.logits(&last.view([1, -1])).to_kind(Kind::Float);
        let slots: Vec<i64> = (0..rows.len()).map(|j| (block * n + j) as i64).collect();
        let idx = Tensor::from_slice(&slots).to_device(device);
        let r = rows.len() as i64;
        let _ = dev.logits.index_copy_(0, &idx, &logits.expand([r, -1], false));
        let next_pos = index.positions.len() as i64 + index.delta;
        let _ = dev.len.index_fill_(0, &idx, 0);
        let _ = dev.pos.index_fill_(0, &idx, next_pos);
        let _ = dev.draws.index_fill_(0, &idx, 0);
        let halves: Vec<(i64, i64)> = rows.iter().map(|(_, rng)| rng.key_halves()).collect();
        let lo: Vec<i64> = halves.iter().map(|h| h.0).collect();
        let hi: Vec<i64> = halves.iter().map(|h| h.1).collect();
        let _ = dev
            .key_lo
            .index_copy_(0, &idx, &Tensor::from_slice(&lo).to_device(device));
        let _ = dev
            .key_hi
            .index_copy_(0, &idx, &Tensor::from_slice(&hi).to_device(device));
        let _ = dev
            .prefix_len
            .index_fill_(0, &Tensor::from(block as i64).to_device(device).view([1]), p);
        self.block_prefix[block] = p;
        for (j, (row, _)) in rows.iter().enumerate() {
            let slot = block * n + j;
            self.slot_of_row.insert(*row, slot);
            self.len[slot] = 0;
            self.next_pos[slot] = next_pos;
            self.pending[slot].clear();
        }
        Ok(())
    }

    fn append(&mut self, rows: &[usize], chunks: &[Chunk]) -> Result<(), RolloutError> {
        let _g = tch::no_grad_guard();
        if rows.is_empty() {
            return Ok(());
        }
        let model = self.model;
        let device = model.device();
        let merge = model.config.vision.spatial_merge_size as i64;
        let mut slots = Vec::with_capacity(rows.len());
        let mut ids: Vec<Vec<i64>> = Vec::with_capacity(rows.len());
        let mut positions: Vec<Vec<[i64; 3]>> = Vec::with_capacity(rows.len());
        for (&row, chunk) in rows.iter().zip(chunks) {
            let slot = self.slot(row)?;
            if self.decoding.contains(&slot) || self.starting.iter().any(|&(s, _)| s == slot) {
                return Err(RolloutError::Invariant(format!("row {row} is in a turn")));
            }
            let mut row_ids = std::mem::take(&mut self.pending[slot]);
            row_ids.extend_from_slice(&chunk.ids);
            if row_ids.is_empty() {
                return Err(RolloutError::Invariant(format!("nothing to append to row {row}")));
            }
            let index = rope_index(
                &row_ids,
                &grids_of(&chunk.images),
                model.config.image_token_id,
                merge,
            )?;
            let base = self.next_pos[slot];
            positions.push(
                index
                    .positions
                    .iter()
                    .map(|p| [p[0] + base, p[1] + base, p[2] + base])
                    .collect(),
            );
            self.next_pos[slot] = base + index.positions.len() as i64 + index.delta;
            slots.push(slot);
            ids.push(row_ids);
        }
        let needed = slots
            .iter()
            .zip(&ids)
            .map(|(&s, r)| self.len[s] as usize + r.len() + 1)
            .max()
            .unwrap_or(0);
        self.ensure_suffix(needed)?;
        let a = rows.len() as i64;
        let w = ids.iter().map(Vec::len).max().unwrap_or(0) as i64;
        let (mut flat_ids, mut flat_pos) = (Vec::new(), vec![0i64; (3 * a * w) as usize]);
        let (mut src, mut wslot, mut wpos) = (Vec::new(), Vec::new(), Vec::new());
        for (r, row) in ids.iter().enumerate() {
            for j in 0..w as usize {
                flat_ids.push(row.get(j).copied().unwrap_or(self.pad_id));
                if let Some(p) = positions[r].get(j) {
                    for axis in 0..3 {
                        flat_pos[(axis * a as usize + r) * w as usize + j] = p[axis];
                    }
                    src.push(r as i64 * w + j as i64);
                    wslot.push(slots[r] as i64);
                    wpos.push(self.len[slots[r]] + j as i64);
                }
            }
        }
        let n = self.plan.as_ref().map(|p| p.rows_per_group).unwrap_or(1);
        let prefix_view = slots
            .iter()
            .map(|s| self.block_prefix[s / n])
            .max()
            .unwrap_or(1)
            .max(1);
        let suffix_view = needed as i64 - 1;
        let t = |v: &[i64]| Tensor::from_slice(v).to_device(device);
        let slots_i: Vec<i64> = slots.iter().map(|&s| s as i64).collect();
        let blocks: Vec<i64> = slots.iter().map(|&s| (s / n) as i64).collect();
        let plen: Vec<i64> = slots.iter().map(|&s| self.block_prefix[s / n]).collect();
        let lens: Vec<i64> = slots.iter().map(|&s| self.len[s]).collect();
        let kpos = |m: i64| Tensor::arange(m, (Kind::Int64, device)).view([1, 1, 1, m]);
        let prefix_mask = kpos(prefix_view)
            .lt_tensor(&t(&plen).view([a, 1, 1, 1]))
            .expand([a, 1, w, prefix_view], false);
        let query = Tensor::arange(w, (Kind::Int64, device)).view([1, 1, w, 1]);
        let suffix_mask = kpos(suffix_view).le_tensor(&(t(&lens).view([a, 1, 1, 1]) + query));
        let view = AppendView {
            slots: t(&slots_i),
            blocks: t(&blocks),
            mask: Tensor::cat(&[prefix_mask, suffix_mask], -1),
            prefix_view,
            suffix_view,
            write_src: t(&src),
            write_slot: t(&wslot),
            write_pos: t(&wpos),
        };
        let ids_t = Tensor::from_slice(&flat_ids).view([a, w]).to_device(device);
        let pos_t = Tensor::from_slice(&flat_pos).view([3, a, w]).to_device(device);
        let images: Vec<&ProcessedImage> = chunks.iter().flat_map(|c| c.images.iter()).collect();
        let image_embeds = match pixel_batch(images) {
            Some((pv, g)) => Some(model.encode_images(&pv.to_device(device), &g)?),
            None => None,
        };
        let embeds = model.embed(&ids_t, image_embeds.as_ref())?;
        let new_pos: Vec<i64> = slots.iter().map(|&s| self.next_pos[s]).collect();
        let (_, cache, dev) = self.parts()?;
        let hidden = model.forward_append(&embeds, &pos_t, cache, &view);
        let last: Vec<i64> = ids
            .iter()
            .enumerate()
            .map(|(r, row)| r as i64 * w + row.len() as i64 - 1)
            .collect();
        let picked = hidden.view([a * w, -1]).index_select(0, &t(&last));
        let logits = model.logits(&picked).to_kind(Kind::Float);
        let _ = dev.logits.index_copy_(0, &view.slots, &logits);
        let new_len: Vec<i64> = lens.iter().zip(&ids).map(|(l, r)| l + r.len() as i64).collect();
        let _ = dev.len.index_copy_(0, &view.slots, &t(&new_len));
        let _ = dev.pos.index_copy_(0, &view.slots, &t(&new_pos));
        for (k, &s) in slots.iter().enumerate() {
            self.len[s] = new_len[k];
        }
        Ok(())
    }

    fn begin_turn(&mut self, row: usize, budget: usize) -> Result<(), RolloutError> {
        let slot = self.slot(row)?;
        let turn_tokens = self.plan.as_ref().map(|p| p.turn_tokens).unwrap_or(0);
        if budget == 0 || budget > turn_tokens || !self.pending[slot].is_empty() {
            return Err(RolloutError::Invariant(format!(
                "row {row} cannot start a turn of {budget} tokens (at most {turn_tokens}, after its context)"
            )));
        }
        self.starting.push((slot, budget));
        Ok(())
    }

    fn step(&mut self, stop_ids: &[i64]) -> Result<Vec<(usize, Sampled)>, RolloutError> {
        let _g = tch::no_grad_guard();
        self.flush_starts()?;
        if self.decoding.is_empty() {
            return Ok(Vec::new());
        }
        let device = self.model.device();
        let plan = *self.parts()?.0;
        let n = plan.rows_per_group;
        // Steps until the next host read: the sync interval, or sooner when a row's budget ends.
        let min_left = self
            .decoding
            .iter()
            .map(|&s| self.budgets[s])
            .min()
            .unwrap_or(1)
            .max(1);
        let window = plan.sync_every.max(1).min(min_left);
        // Slot positions written in the window stay below max_len + window (+1: the scratch).
        let max_len = self.decoding.iter().map(|&s| self.len[s]).max().unwrap_or(0) as usize;
        self.ensure_suffix(max_len + window + 1)?;
        let prefix_view = self
            .decoding
            .iter()
            .map(|&s| self.block_prefix[s / n])
            .max()
            .unwrap_or(1)
            .max(1);
        let d_slots: Vec<i64> = self.decoding.iter().map(|&s| s as i64).collect();
        let d = Tensor::from_slice(&d_slots).to_device(device);
        let stop = Tensor::from_slice(stop_ids).to_device(device);
        let prefix_mask = {
            let dev = self.parts()?.2;
            Tensor::arange(prefix_view, (Kind::Int64, device))
                .view([1, prefix_view])
                .lt_tensor(&dev.prefix_len.index_select(0, &dev.block_of_slot).view([-1, 1]))
                .view([-1, 1, 1, prefix_view])
        };
        for k in 0..window {
            self.decode_once(&d, &stop, &prefix_mask, prefix_view, (max_len + k + 1) as i64);
        }
        // The one host read of the window: which rows ended, and how many tokens each has.
        let dev = self.parts()?.2;
        let done: Vec<bool> = Vec::try_from(dev.done.index_select(0, &d).to_device(Device::Cpu))?;
        let count: Vec<i64> = Vec::try_from(dev.count.index_select(0, &d).to_device(Device::Cpu))?;
        let ended: Vec<usize> = (0..d_slots.len()).filter(|&k| done[k]).collect();
        let mut out = Vec::new();
        if !ended.is_empty() {
            let idx: Vec<i64> = ended.iter().map(|&k| d_slots[k]).collect();
            let width = ended.iter().map(|&k| count[k]).max().unwrap_or(0);
            let idx_t = Tensor::from_slice(&idx).to_device(device);
            let toks: Vec<i64> = Vec::try_from(
                dev.out_tok
                    .index_select(0, &idx_t)
                    .narrow(1, 0, width)
                    .to_device(Device::Cpu)
                    .reshape([-1]),
            )?;
            let lps: Vec<f32> = Vec::try_from(
                dev.out_lp
                    .index_select(0, &idx_t)
                    .narrow(1, 0, width)
                    .to_device(Device::Cpu)
                    .reshape([-1]),
            )?;
            let rows_of_slot: HashMap<usize, usize> =
                self.slot_of_row.iter().map(|(&r, &s)| (s, r)).collect();
            for (e, &k) in ended.iter().enumerate() {
                let slot = d_slots[k] as usize;
                let c = count[k] as usize;
                let w = width as usize;
                let ids = toks[e * w..e * w + c].to_vec();
                let logprobs = lps[e * w..e * w + c].to_vec();
                // All but the last token were fed; the last waits for the next append.
                let (base_len, base_pos) = self.turn_base[slot];
                self.len[slot] = base_len + c as i64 - 1;
                self.next_pos[slot] = base_pos + c as i64 - 1;
                self.pending[slot] = ids.last().copied().into_iter().collect();
                self.budgets[slot] = 0;
                out.push((
                    rows_of_slot[&slot],
                    Sampled {
                        ids,
                        logprobs,
                        truncated: false,
                    },
                ));
            }
        }
        for k in 0..d_slots.len() {
            if !done[k] {
                let slot = d_slots[k] as usize;
                let (base_len, base_pos) = self.turn_base[slot];
                self.len[slot] = base_len + count[k];
                self.next_pos[slot] = base_pos + count[k];
                self.budgets[slot] = self.budgets[slot].saturating_sub(window);
            }
        }
        let ended_slots: Vec<usize> = ended.iter().map(|&k| d_slots[k] as usize).collect();
        self.decoding.retain(|s| !ended_slots.contains(s));
        Ok(out)
    }

    fn release(&mut self, row: usize) {
        if let Some(slot) = self.slot_of_row.remove(&row) {
            self.decoding.retain(|&s| s != slot);
            self.starting.retain(|&(s, _)| s != slot);
            self.pending[slot].clear();
        }
    }

    /// Back to where the last turn began: its cache positions are left stale (masked by the
    /// row's length, overwritten by the next append) and its unfed stop token is dropped.
    fn rewind_turn(&mut self, row: usize) -> Result<(), RolloutError> {
        let slot = self.slot(row)?;
        if self.decoding.contains(&slot) || self.starting.iter().any(|&(s, _)| s == slot) {
            return Err(RolloutError::Invariant(format!("row {row} is in a turn")));
        }
        let (len, pos) = self.turn_base[slot];
        self.len[slot] = len;
        self.next_pos[slot] = pos;
        self.pending[slot].clear();
        Ok(())
    }
}

fn grids_of(images: &[ProcessedImage]) -> Vec<[i64; 3]> {
    images
        .iter()
        .map(|im| {
            [
                im.grid_thw[0] as i64,
                im.grid_thw[1] as i64,
                im.grid_thw[2] as i64,
            ]
        })
        .collect()
}

/// The pixels of `images` stacked in order (`[patches, patch_dim]`) with their grids, as the
/// vision tower takes them; None for no images.
pub fn pixel_batch<'a>(
    images: impl IntoIterator<Item = &'a ProcessedImage>,
) -> Option<(Tensor, Vec<[i64; 3]>)> {
    let mut pixels = Vec::new();
    let mut grids = Vec::new();
    let mut dim = 0;
    for im in images {
        pixels.extend_from_slice(&im.pixel_values);
        grids.push([
            im.grid_thw[0] as i64,
            im.grid_thw[1] as i64,
            im.grid_thw[2] as i64,
        ]);
        dim = im.patch_dim as i64;
    }
    (!grids.is_empty()).then(|| (Tensor::from_slice(&pixels).view([-1, dim]), grids))
}

/// Draws one token per row of `logits` (`[A, V]`) with temperature, top-k and top-p, all in f32 on
/// the logits' device, by inverse CDF at `uniforms` (`[A]` f32 in [0, 1)), and returns it with its
/// log-prob under the temperature-scaled full distribution (what the trainer recomputes as the old
/// policy's log-prob). Temperature 0 means greedy. `banned` ids are never drawn (their mass still
/// counts in the log-prob, as the trainer's recomputation sees the full distribution).
pub fn sample(
    logits: &Tensor,
    cfg: &SamplingConfig,
    uniforms: &Tensor,
    banned: Option<&Tensor>,
) -> (Tensor, Tensor) {
    let t = if cfg.temperature > 0.0 {
        cfg.temperature
    } else {
        1.0
    };
    let full = logits.to_kind(Kind::Float) / t;
    let logp = full.log_softmax(-1, Kind::Float);
    let scaled = match banned {
        Some(b) => full.index_fill(1, b, f64::NEG_INFINITY),
        None => full.shallow_clone(),
    };
    let tokens = if cfg.temperature <= 0.0 {
        scaled.argmax(-1, false)
    } else {
        let mut filtered = scaled;
        let vocab = filtered.size()[1];
        if cfg.top_k > 0 && (cfg.top_k as i64) < vocab {
            let (top, _) = filtered.topk(cfg.top_k as i64, -1, true, true);
            let kth = top.narrow(1, cfg.top_k as i64 - 1, 1);
            filtered = filtered.masked_fill(&filtered.lt_tensor(&kth), f64::NEG_INFINITY);
        }
        if cfg.top_p < 1.0 {
            // Keep the smallest set of tokens whose probability reaches top_p (always the first).
            let (sorted, idx) = filtered.sort(-1, true);
            let probs = sorted.softmax(-1, Kind::Float);
            let before = probs.cumsum(-1, Kind::Float) - &probs;
            let remove_sorted = before.ge(cfg.top_p);
            let remove = remove_sorted.scatter(-1, &idx, &remove_sorted);
            filtered = filtered.masked_fill(&remove, f64::NEG_INFINITY);
        }
        let cdf = filtered.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
        // Scale u by the f32 total (not exactly 1), so the draw never runs past the last token.
        let total = cdf.narrow(1, vocab - 1, 1);
        let u = uniforms.to_kind(Kind::Float).view([-1, 1]) * &total;
        // First index whose cumulative probability exceeds u (never a filtered, zero-mass token).
        let idx = u
            .searchsorted(&cdf, false, true, "right", None::<&Tensor>)
            .squeeze_dim(-1);
        idx.clamp_max(vocab - 1)
    };
    let chosen = logp.gather(-1, &tokens.unsqueeze(-1), false).squeeze_dim(-1);
    (tokens, chosen)
}

/// Replays fixed assistant texts: row `r`'s k-th turn is `turns[r][k]`, tokenized as given
/// (log-prob 0). Used by tests and to turn expert demonstrations into trajectories.
pub struct ScriptedGenerator {
    turns: Vec<Vec<Vec<i64>>>,
    next: Vec<usize>,
    in_turn: Vec<(usize, usize)>,
    /// Everything appended to each row (its prompt first), for inspection.
    pub appended: Vec<Vec<Chunk>>,
    /// Turns rewound per row (each rewind's replacement opens the next appended chunk).
    pub rewound: Vec<usize>,
}

impl ScriptedGenerator {
    /// `turns[r]`: the token ids of row r's assistant turns, each ending with its stop token.
    pub fn new(turns: Vec<Vec<Vec<i64>>>) -> Self {
        let n = turns.len();
        Self {
            turns,
            next: vec![0; n],
            in_turn: Vec::new(),
            appended: vec![Vec::new(); n],
            rewound: vec![0; n],
        }
    }

    fn check(&self, row: usize) -> Result<(), RolloutError> {
        if row < self.turns.len() {
            Ok(())
        } else {
            Err(RolloutError::Invariant(format!("no script for row {row}")))
        }
    }
}

impl Generator for ScriptedGenerator {
    fn add_group(
        &mut self,
        _block: usize,
        prompt: &Chunk,
        rows: &[(usize, RowRng)],
    ) -> Result<(), RolloutError> {
        for (r, _) in rows {
            self.check(*r)?;
            self.appended[*r].push(prompt.clone());
        }
        Ok(())
    }

    fn append(&mut self, rows: &[usize], chunks: &[Chunk]) -> Result<(), RolloutError> {
        for (&r, c) in rows.iter().zip(chunks) {
            self.check(r)?;
            self.appended[r].push(c.clone());
        }
        Ok(())
    }

    fn begin_turn(&mut self, row: usize, budget: usize) -> Result<(), RolloutError> {
        self.check(row)?;
        self.in_turn.push((row, budget));
        Ok(())
    }

    fn step(&mut self, stop_ids: &[i64]) -> Result<Vec<(usize, Sampled)>, RolloutError> {
        let mut out = Vec::new();
        for (r, budget) in std::mem::take(&mut self.in_turn) {
            let turn = self.turns[r].get(self.next[r]).cloned().unwrap_or_default();
            self.next[r] += 1;
            let mut ids = Vec::new();
            for t in turn {
                ids.push(t);
                if ids.len() >= budget || stop_ids.contains(&t) {
                    break;
                }
            }
            out.push((
                r,
                Sampled {
                    logprobs: vec![0.0; ids.len()],
                    ids,
                    truncated: false,
                },
            ));
        }
        Ok(out)
    }

    fn release(&mut self, _row: usize) {}

    fn rewind_turn(&mut self, row: usize) -> Result<(), RolloutError> {
        self.check(row)?;
        self.rewound[row] += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RowRng;

    #[test]
    fn greedy_picks_the_argmax_with_its_log_prob() {
        let logits = Tensor::from_slice(&[0.0f32, 2.0, 1.0, 3.0, 0.0, 0.0]).view([2, 3]);
        let cfg = SamplingConfig {
            temperature: 0.0,
            ..SamplingConfig::default()
        };
        let (tok, lp) = sample(&logits, &cfg, &Tensor::from_slice(&[0.5f32, 0.5]), None);
        assert_eq!(Vec::<i64>::try_from(tok).unwrap(), vec![1, 0]);
        let lp: Vec<f32> = Vec::try_from(lp).unwrap();
        let z0 = (1.0f32 + 2f32.exp() + 1f32.exp()).ln();
        assert!((lp[0] - (2.0 - z0)).abs() < 1e-6);
    }

    #[test]
    fn sampled_frequencies_follow_the_distribution_with_top_k_and_top_p() {
        let rng = RowRng::new(0, 0, 0, 0);
        let n = 4000;
        let u: Vec<f32> = (0..n).map(|d| rng.uniform(d)).collect();
        let u = Tensor::from_slice(&u);
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]
        let logits = Tensor::from_slice(&[3.0f32, 2.0, 1.0, -0.2])
            .view([1, 4])
            .repeat([n as i64, 1]);
        let freq = |cfg: &SamplingConfig| {
            let toks: Vec<i64> = Vec::try_from(sample(&logits, cfg, &u, None).0).unwrap();
            let mut f = [0f64; 4];
            for t in toks {
                f[t as usize] += 1.0 / n as f64;
            }
            f
        };
        let base = SamplingConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        };
        let p: Vec<f64> = {
            let e: Vec<f64> = [3.0f64, 2.0, 1.0, -0.2].iter().map(|x| x.exp()).collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|x| x / z).collect()
        };
        let f = freq(&base);
        for k in 0..4 {
            assert!((f[k] - p[k]).abs() < 0.03, "token {k}: {} vs {}", f[k], p[k]);
        }
        let f = freq(&SamplingConfig {
            top_k: 2,
            ..base.clone()
        });
        assert!(f[2] == 0.0 && f[3] == 0.0);
        assert!((f[0] - p[0] / (p[0] + p[1])).abs() < 0.03);
        // 0.64 < 0.7, so the second token is still in; the third is out.
        let f = freq(&SamplingConfig {
            top_p: 0.7,
            ..base.clone()
        });
        assert!(f[2] == 0.0 && f[3] == 0.0 && f[1] > 0.2);
    }
}
