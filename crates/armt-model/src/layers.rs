//! The small building blocks both towers share. Weights are created zero-initialised: they are
//! always overwritten by the checkpoint, so spending time on random init would be wasted.

use tch::{nn, Kind, Tensor};

/// `y = x Wᵀ + b`, weight `[out, in]` as in PyTorch's `nn.Linear`.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(p: nn::Path, in_dim: usize, out_dim: usize, bias: bool) -> Self {
        let weight = p.var("weight", &[out_dim as i64, in_dim as i64], nn::Init::Const(0.));
        let bias = bias.then(|| p.var("bias", &[out_dim as i64], nn::Init::Const(0.)));
        Self { weight, bias }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// RMSNorm as transformers computes it: normalise in f32, cast back, then scale by the weight.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    pub fn new(p: nn::Path, dim: usize, eps: f64) -> Self {
        Self {
            weight: p.var("weight", &[dim as i64], nn::Init::Const(1.)),
            eps,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x32 = x.to_kind(Kind::Float);
        let var = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = (x32 * (var + self.eps).rsqrt()).to_kind(kind);
        &self.weight * normed
    }
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct SwiGluMlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl SwiGluMlp {
    pub fn new(p: nn::Path, hidden: usize, intermediate: usize, bias: bool) -> Self {
        Self {
            gate_proj: Linear::new(&p / "gate_proj", hidden, intermediate, bias),
            up_proj: Linear::new(&p / "up_proj", hidden, intermediate, bias),
            down_proj: Linear::new(&p / "down_proj", intermediate, hidden, bias),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj
            .forward(&(self.gate_proj.forward(x).silu() * self.up_proj.forward(x)))
    }
}

/// `rotate_half(x) = cat(-x2, x1)` over the last dimension.
pub fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[x2.neg(), x1], -1)
}
