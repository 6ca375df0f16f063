//! Log-probs (and entropies) straight from hidden states, `chunk` positions at a time, without
//! ever holding more than one chunk's `[chunk, V]` logits — in the forward *and* in the backward.
//!
//! Computing `[B, T, V]` logits and chunking only the log-softmax (as [`crate::logits`] does)
//! bounds nothing under autograd: every chunk's logits and softmax stay saved for the backward.
//! Here the forward runs with gradients off and returns leaves; after the loss has been
//! backpropagated onto those leaves, [`ChunkedLogprobs::backward`] recomputes each chunk with
//! gradients on and backpropagates `Σ (∂L/∂log π) · log π + (∂L/∂H) · H` of the chunk alone. The
//! LM head's weight gradient accumulates chunk by chunk; the hidden-state gradient is returned.
//! Peak memory: O(chunk × V), as verl's fused/chunked log-prob kernels aim for.

use crate::logits::{entropy_from_logits, logprobs_from_logits};
use crate::{EntropyGrad, GrpoError};
use tch::{Kind, Tensor};

/// Per-position log π(y) (and H) of selected hidden states, with a recomputing backward.
#[derive(Debug)]
pub struct ChunkedLogprobs {
    /// log π(y_n) `[N]`, float32 (float64 for float64 inputs); a leaf that requires grad when a backward will follow.
    pub logp: Tensor,
    /// H_n `[N]`, float32, when asked; requires grad only with [`EntropyGrad::Grad`].
    pub entropy: Option<Tensor>,
    /// The hidden states `[N, hidden]` detached; requires grad when a backward will follow.
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    chunk: i64,
    entropy_grad: bool,
}

/// Whether autograd is recording (a 1-element product tells; tch has no getter).
fn grad_mode_enabled() -> bool {
    let probe = Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    (probe * 1.0).requires_grad()
}

impl ChunkedLogprobs {
    /// `hidden` `[N, hidden]` (the positions to score), `weight` the LM head `[V, hidden]`,
    /// `targets` `[N]`: log π(y_n) = z_{n,y_n} − logsumexp_v z_{n,v} with z = hidden · Wᵀ,
    /// computed in float32 `chunk` rows at a time.
    pub fn new(
        hidden: &Tensor,
        weight: &Tensor,
        targets: &Tensor,
        chunk: i64,
        entropy: EntropyGrad,
    ) -> Result<Self, GrpoError> {
        let (hs, ws) = (hidden.size(), weight.size());
        if hs.len() != 2 || ws.len() != 2 || hs[1] != ws[1] || targets.size() != [hs[0]] {
            return Err(GrpoError::Shape(format!(
                "hidden {hs:?}, LM head {ws:?}, targets {:?}: want [N, H], [V, H], [N]",
                targets.size()
            )));
        }
        if chunk < 1 {
            return Err(GrpoError::Shape(format!("chunk = {chunk} must be >= 1")));
        }
        let needs_grad = grad_mode_enabled() && (hidden.requires_grad() || weight.requires_grad());
        let n = hs[0];
        let targets = targets.to_kind(Kind::Int64);
        let (mut logps, mut ents) = (Vec::new(), Vec::new());
        tch::no_grad(|| -> Result<(), GrpoError> {
            let mut start = 0;
            while start < n {
                let len = chunk.min(n - start);
                let z = hidden.narrow(0, start, len).linear::<Tensor>(weight, None);
                logps.push(logprobs_from_logits(&z, &targets.narrow(0, start, len))?);
                if entropy != EntropyGrad::Skip {
                    ents.push(entropy_from_logits(&z));
                }
                start += len;
            }
            Ok(())
        })?;
        let cat = |v: &[Tensor]| {
            if v.is_empty() {
                Tensor::zeros([0], (Kind::Float, hidden.device()))
            } else {
                Tensor::cat(v, 0)
            }
        };
        let entropy_grad = needs_grad && entropy == EntropyGrad::Grad;
        Ok(Self {
            logp: cat(&logps).set_requires_grad(needs_grad),
            entropy: (entropy != EntropyGrad::Skip).then(|| cat(&ents).set_requires_grad(entropy_grad)),
            hidden: hidden
                .detach()
                .set_requires_grad(needs_grad && hidden.requires_grad()),
            weight: weight.shallow_clone(),
            targets,
            chunk,
            entropy_grad,
        })
    }

    /// Call after the loss's backward has reached [`Self::logp`] (and [`Self::entropy`]):
    /// recomputes each chunk with gradients on, accumulates the LM head's gradient, and returns
    /// ∂loss/∂hidden `[N, hidden]` (None when the hidden states need no gradient).
    pub fn backward(self) -> Option<Tensor> {
        let g_logp = self.logp.grad();
        let g_ent = self
            .entropy
            .as_ref()
            .filter(|_| self.entropy_grad)
            .map(|e| e.grad());
        let g_ent = g_ent.filter(|g| g.defined());
        if g_logp.defined() || g_ent.is_some() {
            let n = self.hidden.size()[0];
            let mut start = 0;
            while start < n {
                let len = self.chunk.min(n - start);
                tch::with_grad(|| {
                    let z = self
                        .hidden
                        .narrow(0, start, len)
                        .linear::<Tensor>(&self.weight, None);
                    let mut terms = Vec::new();
                    if g_logp.defined() {
                        let lp = logprobs_from_logits(&z, &self.targets.narrow(0, start, len))
                            .expect("shapes checked in new");
                        terms.push((lp * g_logp.narrow(0, start, len)).sum(Kind::Float));
                    }
                    if let Some(g) = &g_ent {
                        terms.push((entropy_from_logits(&z) * g.narrow(0, start, len)).sum(Kind::Float));
                    }
                    let objective = terms.into_iter().reduce(|a, b| a + b).expect("at least one term");
                    if objective.requires_grad() {
                        objective.backward();
                    }
                });
                start += len;
            }
        }
        let g = self.hidden.grad();
        if g.defined() {
            Some(g)
        } else if self.hidden.requires_grad() {
            Some(self.hidden.zeros_like())
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn values_and_gradients_equal_the_full_computation() {
        tch::manual_seed(5);
        let opts = (Kind::Double, Device::Cpu);
        let (n, h, v) = (7i64, 5i64, 11i64);
        let hidden0 = Tensor::randn([n, h], opts).set_requires_grad(true);
        let weight = Tensor::randn([v, h], opts).set_requires_grad(true);
        let targets = Tensor::randint(v, [n], (Kind::Int64, Device::Cpu));
        let coef = Tensor::randn([n], opts);
        // The loss: any function of log π and H (here a weighted sum).
        let loss = |lp: &Tensor, ent: &Tensor| (lp * &coef).sum(Kind::Double) - (ent * 0.3).sum(Kind::Double);

        // Full: [N, V] logits with their graph.
        let hidden = &hidden0 * 2.0; // a graph before the hidden states
        let z = hidden.linear::<Tensor>(&weight, None);
        let lp_full = z
            .log_softmax(-1, Kind::Double)
            .gather(-1, &targets.unsqueeze(-1), false)
            .squeeze_dim(-1);
        let p = z.softmax(-1, Kind::Double);
        let ent_full = -(&p * p.log()).sum_dim_intlist(-1, false, Kind::Double);
        loss(&lp_full, &ent_full).backward();
        let (gw, gh) = (weight.grad().copy(), hidden0.grad().copy());
        let _ = weight.grad().zero_();
        let _ = hidden0.grad().zero_();

        // Chunked: 3 rows at a time, recomputed in the backward.
        let hidden = &hidden0 * 2.0;
        let c = ChunkedLogprobs::new(&hidden, &weight, &targets, 3, EntropyGrad::Grad).unwrap();
        assert!(c.logp.allclose(&lp_full, 1e-9, 1e-9, false));
        assert!(c.entropy.as_ref().unwrap().allclose(&ent_full, 1e-9, 1e-9, false));
        loss(&c.logp, c.entropy.as_ref().unwrap()).backward();
        let g_hidden = c.backward().unwrap();
        (&hidden * g_hidden.to_kind(Kind::Double))
            .sum(Kind::Double)
            .backward();
        // Double inputs: log-probs are computed in f64 there, so the match is tight.
        assert!(weight.grad().allclose(&gw, 1e-6, 1e-9, false), "LM head gradient");
        assert!(hidden0.grad().allclose(&gh, 1e-6, 1e-9, false), "hidden gradient");

        // Without grad: values only, no leaves that want gradients.
        let c =
            tch::no_grad(|| ChunkedLogprobs::new(&hidden, &weight, &targets, 4, EntropyGrad::Skip)).unwrap();
        assert!(!c.logp.requires_grad() && c.entropy.is_none() && c.backward().is_none());
        assert!(
            ChunkedLogprobs::new(&hidden, &weight, &targets.narrow(0, 0, 3), 2, EntropyGrad::Skip).is_err()
        );
    }
}
