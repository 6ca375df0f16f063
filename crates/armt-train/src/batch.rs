//! Turning trajectories into training tensors: right-padded micro-batches and the per-token
//! log-probs of what the policy wrote.

use crate::TrainError;
use armt_grpo::{logprobs_and_entropy, EntropyGrad};
use armt_model::Qwen25Vl;
use armt_processing::ProcessedImage;
use tch::{Kind, Tensor};

/// One sequence to train on: ids, the response mask, and the images of the sequence in order.
#[derive(Debug, Clone)]
pub struct Example {
    pub ids: Vec<i64>,
    pub prompt_len: usize,
    /// Per response token: 1 where the policy wrote it (and the loss applies).
    pub loss_mask: Vec<u8>,
    pub images: Vec<ProcessedImage>,
}

impl Example {
    /// Loss positions: position j predicts token j + 1.
    pub(crate) fn trained(&self, j: usize) -> bool {
        let t = j + 1;
        t >= self.prompt_len && t < self.ids.len() && self.loss_mask[t - self.prompt_len] == 1
    }

    pub fn num_trained(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m == 1).count()
    }
}

/// Forward of a micro-batch: log-probs `[B, T-1]` of each next token (f32), the loss mask
/// `[B, T-1]` (f32), and optionally entropies.
pub fn token_logprobs(
    model: &Qwen25Vl,
    examples: &[&Example],
    pad_id: i64,
    chunk: i64,
    entropy: EntropyGrad,
) -> Result<(Tensor, Tensor, Option<Tensor>), TrainError> {
    let rows: Vec<&[i64]> = examples.iter().map(|e| e.ids.as_slice()).collect();
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(0) as i64;
    let (pv, grids) = match armt_rollout::pixel_batch(examples.iter().flat_map(|e| e.images.iter())) {
        Some((pv, grids)) => (Some(pv), grids),
        None => (None, Vec::new()),
    };
    let logits = model.forward_rows(&rows, pv.as_ref(), &grids, pad_id)?;
    let logits = logits.narrow(1, 0, t - 1);
    let mut targets = Vec::with_capacity(examples.len() * (t as usize - 1));
    let mut mask = Vec::with_capacity(targets.capacity());
    for e in examples {
        for j in 0..(t as usize - 1) {
            targets.push(e.ids.get(j + 1).copied().unwrap_or(pad_id));
            mask.push(if e.trained(j) { 1f32 } else { 0f32 });
        }
    }
    let device = logits.device();
    let b = examples.len() as i64;
    let targets = Tensor::from_slice(&targets).view([b, t - 1]).to_device(device);
    let mask = Tensor::from_slice(&mask).view([b, t - 1]).to_device(device);
    let (logp, ent) = logprobs_and_entropy(&logits, &targets, chunk, entropy)?;
    Ok((logp.to_kind(Kind::Float), mask, ent))
}

/// Pads per-example vectors `[len_i]` to a `[B, T]` f32 tensor.
pub fn pad_rows(rows: &[&[f32]], t: usize, device: tch::Device) -> Tensor {
    let mut flat = Vec::with_capacity(rows.len() * t);
    for r in rows {
        flat.extend_from_slice(&r[..r.len().min(t)]);
        flat.extend(std::iter::repeat_n(0f32, t.saturating_sub(r.len())));
    }
    Tensor::from_slice(&flat)
        .view([rows.len() as i64, t as i64])
        .to_device(device)
}
