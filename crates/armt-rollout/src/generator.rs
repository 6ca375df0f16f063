//! What the turn loop needs from a policy: append context (prompt, tool responses) to some
//! rows, and sample each row's next assistant turn. [`ModelGenerator`] does it on the model with
//! one batched KV cache; [`ScriptedGenerator`] replays fixed texts (tests, expert demonstrations).

use crate::{RolloutError, SamplingConfig};
use armt_model::{rope_index, KvCache, Qwen25Vl};
use armt_processing::ProcessedImage;
use tch::{Device, Kind, Tensor};

/// Tokens to add to one row's context, with the images whose `<|image_pad|>` runs they contain.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    pub ids: Vec<i64>,
    pub images: Vec<ProcessedImage>,
}

/// One sampled assistant turn: token ids and their log-probs under the sampling policy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampled {
    pub ids: Vec<i64>,
    pub logprobs: Vec<f32>,
}

/// A policy the rollout loop drives. Rows are fixed at creation (`0..batch`).
pub trait Generator {
    /// Appends `chunks[i]` to row `rows[i]`'s context.
    fn append(&mut self, rows: &[usize], chunks: &[Chunk]) -> Result<(), RolloutError>;

    /// Samples the next turn of each row in `rows`, at most `budgets[i]` tokens, stopping after
    /// any of `stop_ids`. The stop token is part of the turn.
    fn generate(
        &mut self,
        rows: &[usize],
        budgets: &[usize],
        stop_ids: &[i64],
    ) -> Result<Vec<Sampled>, RolloutError>;
}

/// Sampling on the model: one KV cache for the whole batch. Rows grow by different amounts, so
/// every append or decode step adds the same number of slots to every row and marks the slots a
/// row did not use as padding (masked out as keys). Each row keeps its own M-RoPE position.
pub struct ModelGenerator<'m> {
    model: &'m Qwen25Vl,
    cache: KvCache,
    batch: usize,
    /// `[batch, slots]` bool: which cache slots hold real tokens.
    valid: Option<Tensor>,
    /// Next M-RoPE position of each row (text continues at max position + 1).
    next_pos: Vec<i64>,
    /// Logits `[V]` (f32) that predict each row's next token.
    last_logits: Vec<Option<Tensor>>,
    /// Sampled tokens not yet fed to the cache (the stop token of the last turn).
    pending: Vec<Vec<i64>>,
    sampling: SamplingConfig,
    /// One random stream per row, keyed by the row's index in the whole step's batch (see
    /// [`ModelGenerator::with_first_row`]): a row draws the same tokens whatever else is in
    /// its batch, so N data-parallel ranks sample what one process would.
    rngs: Vec<SplitMix64>,
    pad_id: i64,
    /// Vision placeholder ids: only the processor writes them (each stands for an image
    /// embedding), so the policy is never allowed to sample one.
    banned: Tensor,
}

/// The sampler's own random stream (not libtorch's global generator, which other threads and
/// dropout-free-but-random ops share): same seed, same draws, and its state is one u64 to
/// checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

impl<'m> ModelGenerator<'m> {
    pub fn new(model: &'m Qwen25Vl, batch: usize, sampling: SamplingConfig, pad_id: i64) -> Self {
        let banned = Tensor::from_slice(&[model.config.image_token_id, model.config.video_token_id])
            .to_device(model.device());
        Self {
            banned,
            rngs: row_streams(sampling.seed, 0, batch),
            model,
            cache: model.new_cache(),
            batch,
            valid: None,
            next_pos: vec![0; batch],
            last_logits: (0..batch).map(|_| None).collect(),
            pending: vec![Vec::new(); batch],
            sampling,
            pad_id,
        }
    }

    /// Row `r` of this batch is row `first + r` of the step's whole batch (its random stream
    /// is that row's).
    pub fn with_first_row(mut self, first: usize) -> Self {
        self.rngs = row_streams(self.sampling.seed, first, self.batch);
        self
    }

    /// Runs `ids` (`[batch, width]`, right-padded per row to `lens`) through the cache at the
    /// given positions; returns the logits at each row's last real token (rows with len 0: None).
    fn feed(
        &mut self,
        ids: &[Vec<i64>],
        positions: &[Vec<[i64; 3]>],
        images: Vec<&ProcessedImage>,
    ) -> Result<Vec<Option<Tensor>>, RolloutError> {
        let device = self.model.device();
        let width = ids.iter().map(Vec::len).max().unwrap_or(0);
        if width == 0 {
            return Ok((0..self.batch).map(|_| None).collect());
        }
        let mut flat_ids = Vec::with_capacity(self.batch * width);
        let mut flat_pos = vec![0i64; 3 * self.batch * width];
        let mut valid = Vec::with_capacity(self.batch * width);
        for (r, row) in ids.iter().enumerate() {
            for j in 0..width {
                flat_ids.push(row.get(j).copied().unwrap_or(self.pad_id));
                valid.push(j < row.len());
                if let Some(p) = positions[r].get(j) {
                    for a in 0..3 {
                        flat_pos[(a * self.batch + r) * width + j] = p[a];
                    }
                }
            }
        }
        let b = self.batch as i64;
        let w = width as i64;
        let ids_t = Tensor::from_slice(&flat_ids).view([b, w]).to_device(device);
        let pos_t = Tensor::from_slice(&flat_pos).view([3, b, w]).to_device(device);
        let valid_t = Tensor::from_slice(&valid).view([b, w]).to_device(device);
        let image_embeds = match pixel_batch(images) {
            Some((pv, grids)) => Some(self.model.encode_images(&pv, &grids)?),
            None => None,
        };
        let embeds = self.model.embed(&ids_t, image_embeds.as_ref())?;
        let all_valid = match &self.valid {
            Some(v) => Tensor::cat(&[v, &valid_t], 1),
            None => valid_t,
        };
        let hidden = self
            .model
            .forward_cached(&embeds, &pos_t, Some(&all_valid), &mut self.cache);
        self.valid = Some(all_valid);
        // One LM-head matmul for all rows' last real positions: per-row products would read the
        // whole head matrix once per row, which dominates decoding for large vocabularies.
        let last: Vec<i64> = ids
            .iter()
            .enumerate()
            .filter(|(_, row)| !row.is_empty())
            .map(|(r, row)| r as i64 * w + row.len() as i64 - 1)
            .collect();
        let index = Tensor::from_slice(&last).to_device(device);
        let picked = hidden.view([b * w, -1]).index_select(0, &index);
        let logits = self.model.logits(&picked).to_kind(Kind::Float);
        let mut k = 0;
        let mut out = Vec::with_capacity(self.batch);
        for row in ids {
            if row.is_empty() {
                out.push(None);
            } else {
                out.push(Some(logits.get(k)));
                k += 1;
            }
        }
        Ok(out)
    }
}

impl Generator for ModelGenerator<'_> {
    fn append(&mut self, rows: &[usize], chunks: &[Chunk]) -> Result<(), RolloutError> {
        let _g = tch::no_grad_guard();
        let merge = self.model.config.vision.spatial_merge_size as i64;
        let image_token = self.model.config.image_token_id;
        let mut ids = vec![Vec::new(); self.batch];
        let mut positions = vec![Vec::new(); self.batch];
        // Images in the order their pad tokens appear in the flattened [batch, width] ids.
        let mut order: Vec<(usize, &ProcessedImage)> = Vec::new();
        for (&r, chunk) in rows.iter().zip(chunks) {
            let mut row_ids = std::mem::take(&mut self.pending[r]);
            row_ids.extend_from_slice(&chunk.ids);
            let grids: Vec<[i64; 3]> = chunk
                .images
                .iter()
                .map(|im| {
                    [
                        im.grid_thw[0] as i64,
                        im.grid_thw[1] as i64,
                        im.grid_thw[2] as i64,
                    ]
                })
                .collect();
            let index = rope_index(&row_ids, &grids, image_token, merge)?;
            let base = self.next_pos[r];
            positions[r] = index
                .positions
                .iter()
                .map(|p| [p[0] + base, p[1] + base, p[2] + base])
                .collect();
            self.next_pos[r] = base + index.positions.len() as i64 + index.delta;
            order.extend(chunk.images.iter().map(|im| (r, im)));
            ids[r] = row_ids;
        }
        order.sort_by_key(|(r, _)| *r); // stable: keeps each row's own order
        let logits = self.feed(&ids, &positions, order.into_iter().map(|(_, im)| im).collect())?;
        for &r in rows {
            if let Some(l) = &logits[r] {
                self.last_logits[r] = Some(l.shallow_clone());
            }
        }
        Ok(())
    }

    fn generate(
        &mut self,
        rows: &[usize],
        budgets: &[usize],
        stop_ids: &[i64],
    ) -> Result<Vec<Sampled>, RolloutError> {
        let _g = tch::no_grad_guard();
        let mut out = vec![Sampled::default(); rows.len()];
        let mut active: Vec<usize> = (0..rows.len()).filter(|&i| budgets[i] > 0).collect();
        for &i in &active {
            if !self.pending[rows[i]].is_empty() || self.last_logits[rows[i]].is_none() {
                return Err(RolloutError::State(format!(
                    "row {} has no context to continue from",
                    rows[i]
                )));
            }
        }
        while !active.is_empty() {
            let logits = Tensor::stack(
                &active
                    .iter()
                    .map(|&i| self.last_logits[rows[i]].as_ref().unwrap().shallow_clone())
                    .collect::<Vec<_>>(),
                0,
            );
            let uniforms: Vec<f64> = active.iter().map(|&i| self.rngs[rows[i]].next_f64()).collect();
            let (tokens, logprobs) = sample(&logits, &self.sampling, &uniforms, Some(&self.banned));
            let tokens: Vec<i64> = Vec::try_from(tokens.to_device(Device::Cpu))?;
            let logprobs: Vec<f32> = Vec::try_from(logprobs.to_device(Device::Cpu))?;
            let mut step_ids = vec![Vec::new(); self.batch];
            let mut step_pos = vec![Vec::new(); self.batch];
            let mut still = Vec::with_capacity(active.len());
            for (k, &i) in active.iter().enumerate() {
                let r = rows[i];
                out[i].ids.push(tokens[k]);
                out[i].logprobs.push(logprobs[k]);
                let done = stop_ids.contains(&tokens[k]) || out[i].ids.len() >= budgets[i];
                if done {
                    // Fed with the next append, so the turn's last token costs no extra step.
                    self.pending[r].push(tokens[k]);
                    self.last_logits[r] = None;
                } else {
                    step_ids[r] = vec![tokens[k]];
                    step_pos[r] = vec![[self.next_pos[r]; 3]];
                    self.next_pos[r] += 1;
                    still.push(i);
                }
            }
            if !still.is_empty() {
                let logits = self.feed(&step_ids, &step_pos, Vec::new())?;
                for &i in &still {
                    self.last_logits[rows[i]] = logits[rows[i]].as_ref().map(|l| l.shallow_clone());
                }
            }
            active = still;
        }
        Ok(out)
    }
}

/// Streams for global rows `first..first + n` of a step seeded `seed`: row g's stream starts at
/// a SplitMix64 output of (seed, g), so streams of different rows do not overlap in practice.
fn row_streams(seed: u64, first: usize, n: usize) -> Vec<SplitMix64> {
    (first..first + n)
        .map(|g| SplitMix64(SplitMix64(seed ^ (g as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03)).next_u64()))
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

/// Draws one token per row of `logits` (`[A, V]`, f32) with temperature, top-k and top-p, by
/// inverse CDF at `uniforms[row]` in [0, 1), and returns it with its log-prob under the
/// temperature-scaled full distribution (what the trainer recomputes as the old policy's
/// log-prob). Temperature 0 means greedy. `banned` ids are never drawn (their mass still counts
/// in the log-prob, as the trainer's recomputation sees the full distribution).
pub fn sample(
    logits: &Tensor,
    cfg: &SamplingConfig,
    uniforms: &[f64],
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
        let mut filtered = scaled.shallow_clone();
        let vocab = filtered.size()[1];
        if cfg.top_k > 0 && (cfg.top_k as i64) < vocab {
            let (top, _) = filtered.topk(cfg.top_k as i64, -1, true, true);
            let kth = top.narrow(1, cfg.top_k as i64 - 1, 1);
            filtered = filtered.masked_fill(&filtered.lt_tensor(&kth), f64::NEG_INFINITY);
        }
        if cfg.top_p < 1.0 {
            // Keep the smallest set of tokens whose probability reaches top_p (always the first).
            let (sorted, idx) = filtered.sort(-1, true);
            let cum = sorted.softmax(-1, Kind::Float).cumsum(-1, Kind::Float);
            let shifted = &cum - sorted.softmax(-1, Kind::Float);
            let remove_sorted = shifted.ge(cfg.top_p);
            let remove = remove_sorted.scatter(-1, &idx, &remove_sorted);
            filtered = filtered.masked_fill(&remove, f64::NEG_INFINITY);
        }
        let cdf = filtered
            .to_kind(Kind::Double)
            .softmax(-1, Kind::Double)
            .cumsum(-1, Kind::Double);
        let u = Tensor::from_slice(uniforms).to_device(cdf.device()).view([-1, 1]);
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
    /// Everything appended to each row, for inspection.
    pub appended: Vec<Vec<Chunk>>,
}

impl ScriptedGenerator {
    /// `turns[r]`: the token ids of row r's assistant turns, each ending with its stop token.
    pub fn new(turns: Vec<Vec<Vec<i64>>>) -> Self {
        let n = turns.len();
        Self {
            turns,
            next: vec![0; n],
            appended: vec![Vec::new(); n],
        }
    }
}

impl Generator for ScriptedGenerator {
    fn append(&mut self, rows: &[usize], chunks: &[Chunk]) -> Result<(), RolloutError> {
        for (&r, c) in rows.iter().zip(chunks) {
            self.appended[r].push(c.clone());
        }
        Ok(())
    }

    fn generate(
        &mut self,
        rows: &[usize],
        budgets: &[usize],
        stop_ids: &[i64],
    ) -> Result<Vec<Sampled>, RolloutError> {
        let mut out = Vec::with_capacity(rows.len());
        for (&r, &budget) in rows.iter().zip(budgets) {
            let turn = self.turns[r].get(self.next[r]).cloned().unwrap_or_default();
            self.next[r] += 1;
            let mut ids = Vec::new();
            for t in turn {
                ids.push(t);
                if ids.len() >= budget || stop_ids.contains(&t) {
                    break;
                }
            }
            out.push(Sampled {
                logprobs: vec![0.0; ids.len()],
                ids,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_argmax_with_its_log_prob() {
        let logits = Tensor::from_slice(&[0.0f32, 2.0, 1.0, 3.0, 0.0, 0.0]).view([2, 3]);
        let cfg = SamplingConfig {
            temperature: 0.0,
            ..SamplingConfig::default()
        };
        let (tok, lp) = sample(&logits, &cfg, &[0.5, 0.5], None);
        assert_eq!(Vec::<i64>::try_from(tok).unwrap(), vec![1, 0]);
        let lp: Vec<f32> = Vec::try_from(lp).unwrap();
        let z0 = (1.0f32 + 2f32.exp() + 1f32.exp()).ln();
        assert!((lp[0] - (2.0 - z0)).abs() < 1e-6);
    }

    #[test]
    fn top_k_and_top_p_exclude_unlikely_tokens() {
        let mut rng = SplitMix64(0);
        let u: Vec<f64> = (0..2000).map(|_| rng.next_f64()).collect();
        // probabilities ~ [0.64, 0.24, 0.09, 0.03]
        let logits = Tensor::from_slice(&[3.0f32, 2.0, 1.0, -0.2])
            .view([1, 4])
            .repeat([2000, 1]);
        let k2 = SamplingConfig {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
            seed: 0,
        };
        let toks: Vec<i64> = Vec::try_from(sample(&logits, &k2, &u, None).0).unwrap();
        assert!(toks.iter().all(|&t| t < 2));
        assert!(toks.contains(&1));
        let p = SamplingConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.7,
            seed: 0,
        };
        let toks: Vec<i64> = Vec::try_from(sample(&logits, &p, &u, None).0).unwrap();
        // 0.64 < 0.7, so the second token is still in; the third is out.
        assert!(toks.iter().all(|&t| t < 2) && toks.contains(&1));
    }
}
