//! Activation checkpointing without framework support (tch has no `torch.utils.checkpoint`).
//!
//! A [`Chain`] runs a sequence of layers with gradients off and keeps only each layer's input.
//! Its backward goes back layer by layer: the layer is run again from its (detached) input with
//! gradients on, and `sum(y · g)` is backpropagated, where `g` is the gradient arriving at the
//! layer's output. That puts exactly `g` on `y`, accumulates the layer's parameter gradients,
//! and leaves the gradient of the layer's input on the detached copy, which is the `g` of the
//! layer before. Peak memory: the inputs of all layers plus the activations of one.
//!
//! [`HiddenStates`] is what a training forward returns: the final hidden states with the graph
//! of whatever was not checkpointed (embeddings, final norm, patch embedding, merger), plus the
//! chains, so that [`HiddenStates::backward`] can continue the backward pass through them.

use tch::{Kind, Tensor};

/// One layer as a function of its input (the other inputs it needs are captured).
pub(crate) type LayerFn<'a> = Box<dyn Fn(&Tensor) -> Tensor + 'a>;

/// Whether autograd is recording (tch exposes no getter: a 1-element product tells).
pub fn grad_mode_enabled() -> bool {
    let probe = Tensor::zeros([1], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    (probe * 1.0).requires_grad()
}

/// Backpropagates `grad` into the graph of `y` (`y.backward(gradient=grad)` in PyTorch).
pub fn backward_with_grad(y: &Tensor, grad: &Tensor) {
    if y.requires_grad() {
        (y * grad.to_kind(y.kind())).sum(Kind::Float).backward();
    }
}

/// Layers whose activations are recomputed in the backward pass.
pub(crate) struct Chain<'a> {
    layers: Vec<LayerFn<'a>>,
    /// The input of each layer, computed without a graph.
    inputs: Vec<Tensor>,
}

impl<'a> Chain<'a> {
    /// Runs `layers` from `x` without a graph; returns the chain and the output as a leaf that
    /// requires grad, so the layers after the chain build their graph from it.
    pub(crate) fn run(x: &Tensor, layers: Vec<LayerFn<'a>>) -> (Self, Tensor) {
        let mut inputs = Vec::with_capacity(layers.len());
        let out = tch::no_grad(|| {
            let mut x = x.detach();
            for layer in &layers {
                let y = layer(&x);
                inputs.push(std::mem::replace(&mut x, y));
            }
            x
        });
        (Self { layers, inputs }, out.set_requires_grad(true))
    }

    /// Given the gradient at the chain's output, accumulates every layer's parameter gradients
    /// and returns the gradient at the chain's input.
    pub(crate) fn backward(self, grad_out: Tensor) -> Tensor {
        let mut g = grad_out;
        for (layer, x) in self.layers.iter().zip(self.inputs).rev() {
            let x = x.set_requires_grad(true);
            let y = tch::with_grad(|| layer(&x));
            backward_with_grad(&y, &g);
            g = x.grad();
            if !g.defined() {
                // The layer does not depend on its input (cannot happen for a residual block).
                g = x.zeros_like();
            }
        }
        g
    }
}

/// A checkpointed stretch of the model: the graph-attached tensor feeding the chain, the chain,
/// and the leaf that stands for the chain's output in the graph after it.
pub(crate) struct Stretch<'a> {
    pub(crate) input: Tensor,
    pub(crate) chain: Chain<'a>,
    pub(crate) output: Tensor,
}

impl Stretch<'_> {
    /// Continues the backward pass from the gradient accumulated on the output leaf.
    fn backward(self) {
        let g = self.output.grad();
        if !g.defined() {
            return; // nothing after the chain depended on it
        }
        let g_in = self.chain.backward(g);
        backward_with_grad(&self.input, &g_in);
    }
}

/// Final hidden states `[B, T, hidden]` of a training forward, with what its backward needs.
pub struct HiddenStates<'a> {
    /// Normed hidden states (graph-attached when any parameter requires grad).
    pub hidden: Tensor,
    /// Decoder layers (checkpointed), then the vision blocks (checkpointed), in backward order.
    pub(crate) stretches: Vec<Stretch<'a>>,
}

impl HiddenStates<'_> {
    /// Backpropagates `grad` (∂loss/∂hidden, same shape) into every parameter's `.grad`, through
    /// the checkpointed stretches too. Equals `hidden.backward(gradient=grad)` of a plain forward.
    pub fn backward(self, grad: &Tensor) {
        backward_with_grad(&self.hidden, grad);
        drop(self.hidden);
        for s in self.stretches {
            s.backward();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn grad_mode_is_detected() {
        assert!(grad_mode_enabled());
        assert!(!tch::no_grad(grad_mode_enabled));
    }

    #[test]
    fn chain_backward_equals_plain_backward() {
        tch::manual_seed(1);
        let opts = (Kind::Double, Device::Cpu);
        let w1 = Tensor::randn([4, 4], opts).set_requires_grad(true);
        let w2 = Tensor::randn([4, 4], opts).set_requires_grad(true);
        let x0 = Tensor::randn([3, 4], opts).set_requires_grad(true);
        let pre = Tensor::randn([4, 4], opts).set_requires_grad(true);
        let layers = || -> Vec<LayerFn<'_>> {
            vec![
                Box::new(|x: &Tensor| x + x.matmul(&w1).tanh()),
                Box::new(|x: &Tensor| x + x.matmul(&w2).sin()),
            ]
        };
        let loss = |y: &Tensor| (y * y).sum(Kind::Double);
        // Plain.
        let h = x0.matmul(&pre);
        let y = layers().iter().fold(h, |x, f| f(&x));
        loss(&y).backward();
        let want: Vec<Tensor> = [&w1, &w2, &pre, &x0].iter().map(|t| t.grad().copy()).collect();
        for t in [&w1, &w2, &pre, &x0] {
            let _ = t.grad().zero_();
        }
        // Checkpointed.
        let h = x0.matmul(&pre);
        let (chain, out) = Chain::run(&h, layers());
        loss(&out).backward();
        let s = Stretch {
            input: h,
            chain,
            output: out,
        };
        s.backward();
        for (t, w) in [&w1, &w2, &pre, &x0].iter().zip(&want) {
            assert!(t.grad().allclose(w, 1e-12, 1e-12, false));
        }
    }
}
