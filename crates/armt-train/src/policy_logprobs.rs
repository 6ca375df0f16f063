//! Per-token log-probs of a micro-batch without `[B, T, V]` logits: the model stops at the hidden
//! states, only the positions the loss trains on go through the LM head, `train.logit_chunk` of
//! them at a time, recomputed in the backward ([`armt_grpo::ChunkedLogprobs`]). With
//! `model.grad_checkpointing` the decoder layers and vision blocks are recomputed as well.

use crate::batch::Example;
use crate::TrainError;
use armt_grpo::{ChunkedLogprobs, EntropyGrad};
use armt_model::{HiddenStates, Qwen25Vl};
use tch::{Device, Kind, Tensor};

/// Log-probs of a micro-batch with what their backward needs.
pub struct PolicyLogprobs<'m> {
    /// log π of each next token `[B, T-1]` (f32); 0 where the loss mask is 0.
    pub logp: Tensor,
    /// The loss mask `[B, T-1]` (f32).
    pub mask: Tensor,
    /// Entropies `[B, T-1]` (0 where the mask is 0), when asked.
    pub entropy: Option<Tensor>,
    hidden: HiddenStates<'m>,
    chunked: ChunkedLogprobs,
    /// Flat indices into `[B·T]` of the scored hidden states.
    rows: Tensor,
}

/// Loss positions of the micro-batch: flat indices into `[B, T-1]` (log-prob layout) and into
/// `[B, T]` (hidden-state layout), and the target ids.
fn loss_positions(examples: &[&Example], t: usize) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let (mut lp_idx, mut hidden_idx, mut targets) = (Vec::new(), Vec::new(), Vec::new());
    for (b, e) in examples.iter().enumerate() {
        for j in 0..e.ids.len().saturating_sub(1) {
            if e.trained(j) {
                lp_idx.push((b * (t - 1) + j) as i64);
                hidden_idx.push((b * t + j) as i64);
                targets.push(e.ids[j + 1]);
            }
        }
    }
    (lp_idx, hidden_idx, targets)
}

/// Forward of a micro-batch: see the module doc. Under `no_grad` it only computes values.
pub fn policy_logprobs<'m>(
    model: &'m Qwen25Vl,
    examples: &[&Example],
    pad_id: i64,
    chunk: i64,
    entropy: EntropyGrad,
) -> Result<PolicyLogprobs<'m>, TrainError> {
    let rows: Vec<&[i64]> = examples.iter().map(|e| e.ids.as_slice()).collect();
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    if t < 2 {
        return Err(TrainError::SequenceTooShort);
    }
    let (pv, grids) = match armt_rollout::pixel_batch(examples.iter().flat_map(|e| e.images.iter())) {
        Some((pv, grids)) => (Some(pv), grids),
        None => (None, Vec::new()),
    };
    let hidden = model.forward_rows_hidden(&rows, pv.as_ref(), &grids, pad_id)?;
    let device = hidden.hidden.device();
    let (lp_idx, hidden_idx, targets) = loss_positions(examples, t);
    let to_dev = |v: &[i64]| Tensor::from_slice(v).to_device(device);
    let (lp_idx, hidden_idx, targets) = (to_dev(&lp_idx), to_dev(&hidden_idx), to_dev(&targets));
    let width = hidden.hidden.size()[2];
    let selected = hidden.hidden.reshape([-1, width]).index_select(0, &hidden_idx);
    let chunked = ChunkedLogprobs::new(&selected, model.lm_head_weight(), &targets, chunk, entropy)?;
    let b = examples.len() as i64;
    let n = b * (t as i64 - 1);
    // Scattered into the padded layout the loss functions take; differentiable in the values.
    let spread = |v: &Tensor| {
        Tensor::zeros([n], (v.kind(), device))
            .index_put(&[Some(&lp_idx)], v, false)
            .view([b, t as i64 - 1])
    };
    let mut mask = Tensor::zeros([n], (Kind::Float, device));
    let _ = mask.index_fill_(0, &lp_idx, 1.0);
    Ok(PolicyLogprobs {
        logp: spread(&chunked.logp).to_kind(Kind::Float),
        mask: mask.view([b, t as i64 - 1]),
        entropy: chunked.entropy.as_ref().map(|e| spread(e).to_kind(Kind::Float)),
        hidden,
        chunked,
        rows: hidden_idx,
    })
}

impl PolicyLogprobs<'_> {
    /// Backpropagates `loss` (a function of [`Self::logp`] / [`Self::entropy`]) into the
    /// parameters: onto the log-prob leaves, then chunk by chunk through the LM head, then
    /// through the model (recomputing checkpointed layers).
    pub fn backward(self, loss: &Tensor) {
        if !loss.requires_grad() {
            return;
        }
        loss.backward();
        let Self {
            hidden,
            chunked,
            rows,
            ..
        } = self;
        if let Some(g_selected) = chunked.backward() {
            let size = hidden.hidden.size();
            let g = Tensor::zeros(
                [size[0] * size[1], size[2]],
                (g_selected.kind(), g_selected.device()),
            )
            .index_add(0, &rows, &g_selected)
            .view([size[0], size[1], size[2]]);
            hidden.backward(&g);
        }
    }
}

/// Log-probs of every example's next tokens (0 outside the loss mask), without grad, `micro`
/// sequences per forward: the old-policy and reference passes.
pub fn logprobs_rows_no_grad(
    model: &Qwen25Vl,
    examples: &[&Example],
    pad_id: i64,
    chunk: i64,
    micro: usize,
) -> Result<Vec<Vec<f32>>, TrainError> {
    let _g = tch::no_grad_guard();
    let mut out = Vec::with_capacity(examples.len());
    for group in examples.chunks(micro.max(1)) {
        let p = policy_logprobs(model, group, pad_id, chunk, EntropyGrad::Skip)?;
        let logp = p.logp.to_device(Device::Cpu);
        for (b, e) in group.iter().enumerate() {
            out.push(Vec::try_from(logp.get(b as i64).narrow(
                0,
                0,
                e.ids.len() as i64 - 1,
            ))?);
        }
    }
    Ok(out)
}
