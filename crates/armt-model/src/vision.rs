//! The Qwen2.5-VL vision tower: patch embedding, blocks with window attention (full attention
//! on `fullatt_block_indexes`), 2-D rotary embeddings, and the patch merger that maps each 2x2
//! block of patches to one token of the decoder's width.
//!
//! Row order matters everywhere: the processor emits patches frame by frame, then 2x2 merge
//! block by block (row-major), then within the block; rotary positions, windows and the merger
//! all assume that order.

use crate::checkpointing::{Chain, LayerFn, Stretch};
use crate::config::VisionConfig;
use crate::layers::{rotate_half, Linear, RmsNorm, SwiGluMlp};
use crate::ModelError;
use std::rc::Rc;
use tch::{nn, Device, Kind, Tensor};

/// Hard-coded in transformers for every norm of the vision tower.
const VISION_RMS_EPS: f64 = 1e-6;

#[derive(Debug)]
struct VisionAttention {
    qkv: Linear,
    proj: Linear,
    num_heads: i64,
    head_dim: i64,
}

impl VisionAttention {
    fn new(p: nn::Path, cfg: &VisionConfig) -> Self {
        let h = cfg.hidden_size;
        Self {
            qkv: Linear::new(&p / "qkv", h, 3 * h, true),
            proj: Linear::new(&p / "proj", h, h, true),
            num_heads: cfg.num_heads as i64,
            head_dim: (h / cfg.num_heads) as i64,
        }
    }

    /// `x`: `[S, hidden]`; attention only within each `segments` range.
    fn forward(&self, x: &Tensor, segments: &Segments, cos: &Tensor, sin: &Tensor) -> Tensor {
        let s = x.size()[0];
        let qkv = self
            .qkv
            .forward(x)
            .view([s, 3, self.num_heads, self.head_dim])
            .permute([1, 0, 2, 3]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        // Rotary in f32, as transformers does for the vision tower, then back to the weights' dtype.
        let kind = q.kind();
        let (cos, sin) = (cos.unsqueeze(-2), sin.unsqueeze(-2));
        let rot = |t: &Tensor| {
            let t32 = t.to_kind(Kind::Float);
            (&t32 * &cos + rotate_half(&t32) * &sin).to_kind(kind)
        };
        let (q, k) = (rot(&q), rot(&k));
        let out = segments.attention(&q, &k, &v);
        self.proj.forward(&out.reshape([s, -1]))
    }
}

#[derive(Debug)]
struct VisionBlock {
    norm1: RmsNorm,
    norm2: RmsNorm,
    attn: VisionAttention,
    mlp: SwiGluMlp,
}

impl VisionBlock {
    fn new(p: nn::Path, cfg: &VisionConfig) -> Self {
        Self {
            norm1: RmsNorm::new(&p / "norm1", cfg.hidden_size, VISION_RMS_EPS),
            norm2: RmsNorm::new(&p / "norm2", cfg.hidden_size, VISION_RMS_EPS),
            attn: VisionAttention::new(&p / "attn", cfg),
            mlp: SwiGluMlp::new(&p / "mlp", cfg.hidden_size, cfg.intermediate_size, true),
        }
    }

    fn forward(&self, x: &Tensor, segments: &Segments, cos: &Tensor, sin: &Tensor) -> Tensor {
        let x = x + self.attn.forward(&self.norm1.forward(x), segments, cos, sin);
        &x + self.mlp.forward(&self.norm2.forward(&x))
    }
}

/// `merger`: RMSNorm, then each 2x2 block's four rows concatenated and passed through
/// Linear → GELU (exact) → Linear to the decoder's hidden size.
#[derive(Debug)]
struct PatchMerger {
    ln_q: RmsNorm,
    mlp0: Linear,
    mlp2: Linear,
    merged_dim: i64,
}

impl PatchMerger {
    fn new(p: nn::Path, cfg: &VisionConfig) -> Self {
        let merged = cfg.hidden_size * cfg.spatial_merge_size * cfg.spatial_merge_size;
        let mlp = &p / "mlp";
        Self {
            ln_q: RmsNorm::new(&p / "ln_q", cfg.hidden_size, VISION_RMS_EPS),
            mlp0: Linear::new(&mlp / 0, merged, merged, true),
            mlp2: Linear::new(&mlp / 2, merged, cfg.out_hidden_size, true),
            merged_dim: merged as i64,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let x = self.ln_q.forward(x).view([-1, self.merged_dim]);
        self.mlp2.forward(&self.mlp0.forward(&x).gelu("none"))
    }
}

/// The vision tower (`visual.*`).
#[derive(Debug)]
pub struct VisionTransformer {
    patch_embed: Tensor,
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    cfg: VisionConfig,
    inv_freq: Vec<f64>,
}

impl VisionTransformer {
    pub fn new(p: nn::Path, cfg: &VisionConfig) -> Self {
        let patch_embed = (&p / "patch_embed" / "proj").var(
            "weight",
            &[
                cfg.hidden_size as i64,
                cfg.in_chans as i64,
                cfg.temporal_patch_size as i64,
                cfg.patch_size as i64,
                cfg.patch_size as i64,
            ],
            nn::Init::Const(0.),
        );
        let blocks = (0..cfg.depth)
            .map(|i| VisionBlock::new(&p / "blocks" / i, cfg))
            .collect();
        // Rotary over half the head dimension: half for row positions, half for columns.
        let dim = cfg.hidden_size / cfg.num_heads / 2;
        let inv_freq = (0..dim / 2)
            .map(|j| 1.0 / cfg.rope_theta.powf((2 * j) as f64 / dim as f64))
            .collect();
        Self {
            patch_embed,
            blocks,
            merger: PatchMerger::new(&p / "merger", cfg),
            cfg: cfg.clone(),
            inv_freq,
        }
    }

    /// `pixel_values`: `[patches, C·T·P·P]` in processor order; `grid_thw`: per image (t, h, w)
    /// in patches. Returns `[patches / merge², out_hidden_size]`, one row per decoder token.
    pub fn forward(&self, pixel_values: &Tensor, grid_thw: &[[i64; 3]]) -> Result<Tensor, ModelError> {
        let p = self.prepare(pixel_values, grid_thw)?;
        let mut x = p.x.shallow_clone();
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(&x, p.segments_of(i, &self.cfg), &p.cos, &p.sin);
        }
        Ok(self.finish(&x, &p.window_index))
    }

    /// [`Self::forward`] with the blocks checkpointed: the merged tokens (graph from the last
    /// block's output on) and the blocks' stretch.
    pub(crate) fn forward_checkpointed<'a>(
        &'a self,
        pixel_values: &Tensor,
        grid_thw: &[[i64; 3]],
    ) -> Result<(Tensor, Stretch<'a>), ModelError> {
        let p = Rc::new(self.prepare(pixel_values, grid_thw)?);
        let layers: Vec<LayerFn<'a>> = self
            .blocks
            .iter()
            .enumerate()
            .map(|(i, block)| {
                let p = Rc::clone(&p);
                let cfg = &self.cfg;
                Box::new(move |x: &Tensor| block.forward(x, p.segments_of(i, cfg), &p.cos, &p.sin))
                    as LayerFn<'a>
            })
            .collect();
        let (chain, last) = Chain::run(&p.x, layers);
        let merged = self.finish(&last, &p.window_index);
        Ok((
            merged,
            Stretch {
                input: p.x.shallow_clone(),
                chain,
                output: last,
            },
        ))
    }

    /// Checks the input, embeds the patches and orders them by window; rotary tables and the
    /// attention segments of both block kinds.
    fn prepare(&self, pixel_values: &Tensor, grid_thw: &[[i64; 3]]) -> Result<BlockInputs, ModelError> {
        let device = self.patch_embed.device();
        let kind = self.patch_embed.kind();
        let unit = (self.cfg.spatial_merge_size * self.cfg.spatial_merge_size) as i64;
        let n: i64 = grid_thw.iter().map(|g| g[0] * g[1] * g[2]).sum();
        let size = pixel_values.size();
        let patch_dim = self.patch_embed.size()[1..].iter().product::<i64>();
        if size.len() != 2 || size[0] != n || size[1] != patch_dim {
            return Err(ModelError::Input(format!(
                "pixel_values has shape {size:?}, the image grids need [{n}, {patch_dim}]"
            )));
        }
        let m = self.cfg.spatial_merge_size as i64;
        if grid_thw.iter().any(|g| g[1] % m != 0 || g[2] % m != 0) {
            return Err(ModelError::Input(format!(
                "image grid {grid_thw:?} not divisible by the merge size {m}"
            )));
        }
        // Conv3d with kernel == stride over exactly one patch is a matmul with the flattened kernel.
        let w = self.patch_embed.reshape([self.patch_embed.size()[0], -1]);
        let x = pixel_values.to_device(device).to_kind(kind).matmul(&w.tr());

        let rope = self.rotary_table(grid_thw, device);
        let (window_index, cu_window) = window_index(grid_thw, &self.cfg);
        let window_index = Tensor::from_slice(&window_index).to_device(device);
        let hidden = x.size()[1];
        let x = x
            .view([n / unit, unit, hidden])
            .index_select(0, &window_index)
            .view([n, hidden]);
        let rope = rope
            .view([n / unit, unit, -1])
            .index_select(0, &window_index)
            .view([n, -1]);
        let emb = Tensor::cat(&[&rope, &rope], -1);
        let (cos, sin) = (emb.cos(), emb.sin());

        // Full attention is per frame: one segment for each (image, frame).
        let mut full = vec![0i64];
        for g in grid_thw {
            for _ in 0..g[0] {
                full.push(full.last().unwrap() + g[1] * g[2]);
            }
        }
        Ok(BlockInputs {
            x,
            cos,
            sin,
            full: Segments::new(&full, device),
            windows: Segments::new(&cu_window, device),
            window_index,
        })
    }

    /// The merger, then the merged tokens back in the processor's order.
    fn finish(&self, x: &Tensor, window_index: &Tensor) -> Tensor {
        self.merger
            .forward(x)
            .index_select(0, &window_index.argsort(0, false))
    }

    /// Per patch, the (row, col) rotary angles: `[patches, head_dim / 2]`, rows first.
    fn rotary_table(&self, grid_thw: &[[i64; 3]], device: Device) -> Tensor {
        let m = self.cfg.spatial_merge_size as i64;
        let nf = self.inv_freq.len();
        let mut out: Vec<f32> = Vec::new();
        for &[t, h, w] in grid_thw {
            let mut frame = Vec::with_capacity((h * w) as usize * 2 * nf);
            for br in 0..h / m {
                for bc in 0..w / m {
                    for mr in 0..m {
                        for mc in 0..m {
                            let (r, c) = (br * m + mr, bc * m + mc);
                            // Angles in f32 as torch computes `outer(arange, inv_freq_f32)`.
                            frame.extend(self.inv_freq.iter().map(|f| r as f32 * *f as f32));
                            frame.extend(self.inv_freq.iter().map(|f| c as f32 * *f as f32));
                        }
                    }
                }
            }
            for _ in 0..t {
                out.extend_from_slice(&frame);
            }
        }
        Tensor::from_slice(&out)
            .view([-1, 2 * nf as i64])
            .to_device(device)
    }
}

/// What every block of one forward shares: the window-ordered patch embeddings (the first
/// block's input), rotary tables and the attention segments.
struct BlockInputs {
    x: Tensor,
    cos: Tensor,
    sin: Tensor,
    full: Segments,
    windows: Segments,
    window_index: Tensor,
}

impl BlockInputs {
    fn segments_of(&self, block: usize, cfg: &VisionConfig) -> &Segments {
        if cfg.fullatt_block_indexes.contains(&block) {
            &self.full
        } else {
            &self.windows
        }
    }
}

/// Order of merge units grouped by attention window, and the window boundaries in patches.
/// Windows are `window_size / merge / patch` merge units square, tiled from the top-left; edge
/// windows are smaller. Returns (window_index, cu_window_seqlens without empty windows).
fn window_index(grid_thw: &[[i64; 3]], cfg: &VisionConfig) -> (Vec<i64>, Vec<i64>) {
    let m = cfg.spatial_merge_size as i64;
    let unit = m * m;
    let ws = (cfg.window_size / cfg.spatial_merge_size / cfg.patch_size) as i64;
    let mut index = Vec::new();
    let mut cu = vec![0i64];
    let mut offset = 0i64;
    for &[t, h, w] in grid_thw {
        let (lh, lw) = (h / m, w / m);
        // transformers pads to a multiple of ws, adding a whole (empty) window when already a
        // multiple; empty windows vanish below, so ceil division gives the same tiling.
        let (nwh, nww) = ((lh + ws - 1) / ws, (lw + ws - 1) / ws);
        for f in 0..t {
            for wr in 0..nwh {
                for wc in 0..nww {
                    let mut count = 0;
                    for r in wr * ws..((wr + 1) * ws).min(lh) {
                        for c in wc * ws..((wc + 1) * ws).min(lw) {
                            index.push(offset + f * lh * lw + r * lw + c);
                            count += 1;
                        }
                    }
                    if count > 0 {
                        cu.push(cu.last().unwrap() + count * unit);
                    }
                }
            }
        }
        offset += t * lh * lw;
    }
    (index, cu)
}

/// Attention restricted to contiguous row segments (windows or frames), computed in one batched
/// SDPA call: segments are gathered into a padded `[n, max_len]` batch with a key mask.
#[derive(Debug)]
struct Segments {
    single: bool,
    n: i64,
    max_len: i64,
    gather: Tensor,
    /// None when every segment has the same length (no padding, so no mask: the fused SDPA
    /// kernels stay eligible).
    key_mask: Option<Tensor>,
    valid: Tensor,
}

impl Segments {
    fn new(cu: &[i64], device: Device) -> Self {
        let lens: Vec<i64> = cu.windows(2).map(|p| p[1] - p[0]).filter(|&l| l > 0).collect();
        let starts: Vec<i64> = cu.windows(2).filter(|p| p[1] > p[0]).map(|p| p[0]).collect();
        let n = lens.len() as i64;
        let max_len = lens.iter().copied().max().unwrap_or(0);
        let mut gather = Vec::with_capacity((n * max_len) as usize);
        let mut mask = Vec::with_capacity((n * max_len) as usize);
        let mut valid = Vec::new();
        for (s, (&start, &len)) in starts.iter().zip(&lens).enumerate() {
            for j in 0..max_len {
                gather.push(if j < len { start + j } else { start });
                mask.push(j < len);
                if j < len {
                    valid.push(s as i64 * max_len + j);
                }
            }
        }
        Self {
            single: n == 1,
            n,
            max_len,
            gather: Tensor::from_slice(&gather).to_device(device),
            key_mask: lens.iter().any(|&l| l != max_len).then(|| {
                Tensor::from_slice(&mask)
                    .view([n, 1, 1, max_len])
                    .to_device(device)
            }),
            valid: Tensor::from_slice(&valid).to_device(device),
        }
    }

    /// q, k, v: `[S, heads, head_dim]` → `[S, heads, head_dim]`.
    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let head_dim = q.size()[2];
        let scale = (head_dim as f64).powf(-0.5);
        if self.single {
            let t = |x: &Tensor| x.transpose(0, 1).unsqueeze(0);
            let o = Tensor::scaled_dot_product_attention::<Tensor>(
                &t(q),
                &t(k),
                &t(v),
                None,
                0.0,
                false,
                scale,
                false,
            );
            return o.squeeze_dim(0).transpose(0, 1);
        }
        let heads = q.size()[1];
        let batch = |x: &Tensor| {
            x.index_select(0, &self.gather)
                .view([self.n, self.max_len, heads, head_dim])
                .transpose(1, 2)
        };
        let o = Tensor::scaled_dot_product_attention(
            &batch(q),
            &batch(k),
            &batch(v),
            self.key_mask.as_ref(),
            0.0,
            false,
            scale,
            false,
        );
        o.transpose(1, 2)
            .reshape([self.n * self.max_len, heads, head_dim])
            .index_select(0, &self.valid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(window_size: usize) -> VisionConfig {
        serde_json::from_str(&format!(
            r#"{{"depth": 1, "hidden_size": 8, "intermediate_size": 8, "num_heads": 2,
                "out_hidden_size": 8, "window_size": {window_size}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn windows_tile_merge_units_from_the_top_left() {
        // 112 px windows = 4x4 merge units; a 6x6-unit image (12x12 patches) has windows of
        // 4x4, 4x2, 2x4 and 2x2 units.
        let (index, cu) = window_index(&[[1, 12, 12]], &cfg(112));
        assert_eq!(cu, vec![0, 64, 96, 128, 144]);
        assert_eq!(&index[..5], &[0, 1, 2, 3, 6]);
        let mut sorted = index.clone();
        sorted.sort();
        assert_eq!(sorted, (0..36).collect::<Vec<_>>());
        // A 4x4-unit image is exactly one window (transformers' extra padding window is empty).
        let (_, cu) = window_index(&[[1, 8, 8]], &cfg(112));
        assert_eq!(cu, vec![0, 64]);
    }

    #[test]
    fn segmented_attention_equals_per_segment_attention() {
        tch::manual_seed(0);
        let (s, h, d) = (7i64, 2i64, 4i64);
        let q = Tensor::randn([s, h, d], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([s, h, d], (Kind::Float, Device::Cpu));
        let v = Tensor::randn([s, h, d], (Kind::Float, Device::Cpu));
        // Unequal segments (padded, with a key mask) and equal ones (no mask at all).
        for cu in [[0i64, 3, 7], [0, 2, 4]] {
            let segments = Segments::new(&cu, Device::Cpu);
            assert_eq!(segments.key_mask.is_some(), cu == [0, 3, 7]);
            let got = segments.attention(&q, &k, &v);
            for (a, b) in cu.windows(2).map(|w| (w[0], w[1])) {
                let part = |x: &Tensor| x.narrow(0, a, b - a);
                let scores =
                    part(&q).transpose(0, 1).matmul(&part(&k).permute([1, 2, 0])) / (d as f64).sqrt();
                let expect = scores
                    .softmax(-1, Kind::Float)
                    .matmul(&part(&v).transpose(0, 1))
                    .transpose(0, 1);
                let diff = (got.narrow(0, a, b - a) - expect).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "segment {a}..{b}: {diff}");
            }
        }
    }
}
