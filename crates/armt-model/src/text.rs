//! The Qwen2 decoder (`model.*` in hub checkpoints): pre-norm layers with grouped-query attention
//! (q/k/v with bias, o without), SwiGLU MLP, and multimodal rotary positions.

use crate::checkpointing::{Chain, LayerFn, Stretch};
use crate::config::TextConfig;
use crate::layers::{rotate_half, Linear, RmsNorm, SwiGluMlp};
use crate::rope::MultimodalRotary;
use tch::{nn, Tensor};

mod slots;
pub use slots::{AppendView, DecodeView, SlotCache};

/// Keys and values of one layer for the tokens seen so far: `[B, kv_heads, T, head_dim]`.
#[derive(Debug, Default)]
pub struct LayerCache {
    pub k: Option<Tensor>,
    pub v: Option<Tensor>,
}

#[derive(Debug)]
struct TextAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
}

impl TextAttention {
    fn new(p: nn::Path, cfg: &TextConfig) -> Self {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        Self {
            q_proj: Linear::new(&p / "q_proj", h, cfg.num_attention_heads * d, true),
            k_proj: Linear::new(&p / "k_proj", h, cfg.num_key_value_heads * d, true),
            v_proj: Linear::new(&p / "v_proj", h, cfg.num_key_value_heads * d, true),
            o_proj: Linear::new(&p / "o_proj", cfg.num_attention_heads * d, h, false),
            num_heads: cfg.num_attention_heads as i64,
            num_kv_heads: cfg.num_key_value_heads as i64,
            head_dim: d as i64,
        }
    }

    /// `x`: `[B, S, hidden]`; `cos`/`sin`: `[B, S, head_dim]` in x's dtype; `mask`: additive
    /// `[B, 1, S, T]` or None for plain causal attention over the S new tokens alone.
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor {
        let (b, s) = (x.size()[0], x.size()[1]);
        let heads = |t: Tensor, n: i64| t.view([b, s, n, self.head_dim]).transpose(1, 2);
        let q = heads(self.q_proj.forward(x), self.num_heads);
        let k = heads(self.k_proj.forward(x), self.num_kv_heads);
        let v = heads(self.v_proj.forward(x), self.num_kv_heads);
        let (cos, sin) = (cos.unsqueeze(1), sin.unsqueeze(1));
        let q = &q * &cos + rotate_half(&q) * &sin;
        let mut k = &k * &cos + rotate_half(&k) * &sin;
        let mut v = v;
        if let Some(cache) = cache {
            if let (Some(pk), Some(pv)) = (&cache.k, &cache.v) {
                k = Tensor::cat(&[pk, &k], 2);
                v = Tensor::cat(&[pv, &v], 2);
            }
            cache.k = Some(k.shallow_clone());
            cache.v = Some(v.shallow_clone());
        }
        // GQA: each key/value head serves num_heads / num_kv_heads query heads; SDPA's
        // enable_gqa reads them in place instead of materialising repeated K/V.
        let gqa = self.num_heads != self.num_kv_heads;
        let scale = (self.head_dim as f64).powf(-0.5);
        let out = match mask {
            Some(m) => Tensor::scaled_dot_product_attention(&q, &k, &v, Some(m), 0.0, false, scale, gqa),
            None => {
                // No mask: flash / memory-efficient kernels are eligible on GPU.
                Tensor::scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, s > 1, scale, gqa)
            }
        };
        self.o_proj.forward(&out.transpose(1, 2).reshape([b, s, -1]))
    }
}

#[derive(Debug)]
struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: TextAttention,
    post_attention_layernorm: RmsNorm,
    mlp: SwiGluMlp,
}

impl DecoderLayer {
    fn new(p: nn::Path, cfg: &TextConfig) -> Self {
        Self {
            input_layernorm: RmsNorm::new(&p / "input_layernorm", cfg.hidden_size, cfg.rms_norm_eps),
            self_attn: TextAttention::new(&p / "self_attn", cfg),
            post_attention_layernorm: RmsNorm::new(
                &p / "post_attention_layernorm",
                cfg.hidden_size,
                cfg.rms_norm_eps,
            ),
            mlp: SwiGluMlp::new(&p / "mlp", cfg.hidden_size, cfg.intermediate_size, false),
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut LayerCache>,
    ) -> Tensor {
        let x = x + self
            .self_attn
            .forward(&self.input_layernorm.forward(x), cos, sin, mask, cache);
        &x + self.mlp.forward(&self.post_attention_layernorm.forward(&x))
    }
}

/// Embeddings, decoder layers and the final norm.
#[derive(Debug)]
pub struct TextModel {
    pub embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    rotary: MultimodalRotary,
}

impl TextModel {
    pub fn new(p: nn::Path, cfg: &TextConfig) -> Self {
        let embed_tokens = (&p / "embed_tokens").var(
            "weight",
            &[cfg.vocab_size as i64, cfg.hidden_size as i64],
            nn::Init::Const(0.),
        );
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(&p / "layers" / i, cfg))
            .collect();
        let rotary = MultimodalRotary::new(cfg.head_dim, cfg.rope_theta, &cfg.mrope_section, p.device());
        Self {
            embed_tokens,
            layers,
            norm: RmsNorm::new(&p / "norm", cfg.hidden_size, cfg.rms_norm_eps),
            rotary,
        }
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn embed(&self, input_ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false)
    }

    /// `embeds`: `[B, S, hidden]`, `positions`: `[3, B, S]`; returns normed hidden states.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
        mut cache: Option<&mut [LayerCache]>,
    ) -> Tensor {
        let (cos, sin) = self.rotary.cos_sin(positions);
        // Tables are computed in f32 and applied in the activations' dtype, as transformers does.
        let (cos, sin) = (cos.to_kind(embeds.kind()), sin.to_kind(embeds.kind()));
        let mut x = embeds.shallow_clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c[i]);
            x = layer.forward(&x, &cos, &sin, mask, layer_cache);
        }
        self.norm.forward(&x)
    }

    /// [`Self::forward_embeds`] without a KV cache, the decoder layers checkpointed: returns the
    /// normed hidden states (graph from the last layer's output on) and the layers' stretch.
    pub(crate) fn forward_embeds_checkpointed<'a>(
        &'a self,
        embeds: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
    ) -> (Tensor, Stretch<'a>) {
        let (cos, sin) = self.rotary.cos_sin(positions);
        let (cos, sin) = (cos.to_kind(embeds.kind()), sin.to_kind(embeds.kind()));
        let layers: Vec<LayerFn<'a>> = self
            .layers
            .iter()
            .map(|layer| {
                let (cos, sin) = (cos.shallow_clone(), sin.shallow_clone());
                let mask = mask.map(|m| m.shallow_clone());
                Box::new(move |x: &Tensor| layer.forward(x, &cos, &sin, mask.as_ref(), None)) as LayerFn<'a>
            })
            .collect();
        let (chain, last) = Chain::run(embeds, layers);
        let hidden = self.norm.forward(&last);
        (
            hidden,
            Stretch {
                input: embeds.shallow_clone(),
                chain,
                output: last,
            },
        )
    }
}
