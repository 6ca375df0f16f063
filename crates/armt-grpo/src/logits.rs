//! Per-token log-probs and entropies from `[B, T, V]` logits.
//!
//! With V ≈ 152k (Qwen2.5), one `[T, V]` float32 slice of a few thousand positions is already
//! gigabytes, so positions are processed in chunks: each chunk is upcast to float32 on its own,
//! and log π(y) is read as z_y − logsumexp(z) instead of gathering from a full log-softmax
//! (which would be a second `[B, T, V]` tensor).

use crate::GrpoError;
use tch::{Kind, Tensor};

/// Whether and how [`logprobs_and_entropy`] computes entropy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntropyGrad {
    /// Not at all.
    Skip,
    /// For the metric only: no graph is kept (the entropy coefficient is 0).
    NoGrad,
    /// With gradient, for an entropy bonus.
    Grad,
}

fn float_kind(k: Kind) -> Kind {
    // Half-precision logits are upcast: log-probs feed exp(log ρ), where bf16 rounding shows.
    if k == Kind::Double {
        Kind::Double
    } else {
        Kind::Float
    }
}

/// log π(y_t) = z_{t,y_t} − logsumexp_v z_{t,v}, for logits `[..., V]` and ids `[...]`.
pub fn logprobs_from_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor, GrpoError> {
    let size = logits.size();
    if size.len() < 2 || targets.size()[..] != size[..size.len() - 1] {
        return Err(GrpoError::Shape(format!(
            "logits {size:?} and targets {:?}: want [..., V] and [...]",
            targets.size()
        )));
    }
    let z = logits.to_kind(float_kind(logits.kind()));
    let picked = z
        .gather(-1, &targets.to_kind(Kind::Int64).unsqueeze(-1), false)
        .squeeze_dim(-1);
    Ok(picked - z.logsumexp(-1, false))
}

/// H_t = logsumexp(z_t) − Σ_v softmax(z_t)_v · z_{t,v}  (= −Σ p log p).
pub fn entropy_from_logits(logits: &Tensor) -> Tensor {
    let z = logits.to_kind(float_kind(logits.kind()));
    let p = z.softmax(-1, z.kind());
    z.logsumexp(-1, false) - (p * &z).sum_dim_intlist(-1, false, z.kind())
}

/// Log-probs of `targets` `[B, T]` (and optionally entropies) from logits `[B, T, V]`, `chunk`
/// positions at a time along T.
pub fn logprobs_and_entropy(
    logits: &Tensor,
    targets: &Tensor,
    chunk: i64,
    entropy: EntropyGrad,
) -> Result<(Tensor, Option<Tensor>), GrpoError> {
    let size = logits.size();
    if size.len() != 3 || targets.size() != size[..2] {
        return Err(GrpoError::Shape(format!(
            "logits {size:?} and targets {:?}: want [B, T, V] and [B, T]",
            targets.size()
        )));
    }
    if chunk < 1 {
        return Err(GrpoError::Shape(format!("chunk = {chunk} must be >= 1")));
    }
    let t = size[1];
    let mut logps = Vec::new();
    let mut ents = Vec::new();
    let mut start = 0;
    while start < t {
        let len = chunk.min(t - start);
        let z = logits.narrow(1, start, len);
        logps.push(logprobs_from_logits(&z, &targets.narrow(1, start, len))?);
        match entropy {
            EntropyGrad::Skip => {}
            EntropyGrad::NoGrad => ents.push(tch::no_grad(|| entropy_from_logits(&z.detach()))),
            EntropyGrad::Grad => ents.push(entropy_from_logits(&z)),
        }
        start += len;
    }
    let h = (entropy != EntropyGrad::Skip).then(|| Tensor::cat(&ents, 1));
    Ok((Tensor::cat(&logps, 1), h))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    #[test]
    fn logprob_and_entropy_by_hand() {
        // Row 1: z = ln[1, 2, 3] → p = [1/6, 1/3, 1/2]; row 2: uniform over 3.
        let z = Tensor::from_slice(&[0.0f64, 2f64.ln(), 3f64.ln(), 0.0, 0.0, 0.0]).reshape([1, 2, 3]);
        let y = Tensor::from_slice(&[2i64, 0]).reshape([1, 2]);
        let (lp, h) = logprobs_and_entropy(&z, &y, 1, EntropyGrad::NoGrad).unwrap();
        let lp = vals(&lp);
        assert!(
            (lp[0] - 0.5f64.ln()).abs() < 1e-12 && (lp[1] + 3f64.ln()).abs() < 1e-12,
            "{lp:?}"
        );
        // −Σ p ln p = (1/6)ln6 + (1/3)ln3 + (1/2)ln2 = 1.0114043; uniform: ln 3
        let h = vals(&h.unwrap());
        assert!(
            (h[0] - 1.0114043).abs() < 1e-6 && (h[1] - 3f64.ln()).abs() < 1e-12,
            "{h:?}"
        );
    }

    #[test]
    fn chunks_match_log_softmax_and_gradients_flow() {
        tch::manual_seed(3);
        let z = (Tensor::randn([2, 5, 7], (Kind::Float, tch::Device::Cpu)) * 3.0).set_requires_grad(true);
        let y = Tensor::randint(7, [2, 5], (Kind::Int64, tch::Device::Cpu));
        let reference = z
            .log_softmax(-1, Kind::Float)
            .gather(-1, &y.unsqueeze(-1), false)
            .squeeze_dim(-1);
        let (whole, h_whole) = logprobs_and_entropy(&z, &y, 5, EntropyGrad::Grad).unwrap();
        let (chunked, h_chunked) = logprobs_and_entropy(&z, &y, 2, EntropyGrad::Grad).unwrap();
        assert!(
            whole.allclose(&reference, 1e-6, 1e-6, false) && chunked.allclose(&reference, 1e-6, 1e-6, false)
        );
        let p = z.softmax(-1, Kind::Float);
        let h_ref = -(&p * p.log()).sum_dim_intlist(-1, false, Kind::Float);
        assert!(h_whole.unwrap().allclose(&h_ref, 1e-5, 1e-5, false));
        // Gradient of Σ log π(y) wrt z is onehot(y) − softmax(z).
        (chunked.sum(Kind::Float) + h_chunked.unwrap().sum(Kind::Float) * 0.0).backward();
        let want = y.one_hot(7).to_kind(Kind::Float) - &p;
        assert!(z.grad().allclose(&want, 1e-5, 1e-5, false));
        // bf16 logits come back as float32.
        let (lp, h) =
            logprobs_and_entropy(&z.detach().to_kind(Kind::BFloat16), &y, 3, EntropyGrad::Skip).unwrap();
        assert!(lp.kind() == Kind::Float && h.is_none());
        assert!(logprobs_and_entropy(&z, &y.narrow(1, 0, 4), 2, EntropyGrad::Skip).is_err());
    }
}
