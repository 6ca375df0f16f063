//! Multimodal rotary positions (M-RoPE). Text tokens advance all three axes (t, h, w) together;
//! the merged tokens of an image share one t and take their row and column as h and w, so an
//! image occupies a small square of positions and the text after it resumes past its extent.

use crate::ModelError;
use tch::{Device, Kind, Tensor};

/// Per-token `(t, h, w)` positions of one sequence and the offset that continues them when
/// decoding: the next token at cache index `i` gets position `i + delta` on all axes.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeIndex {
    pub positions: Vec<[i64; 3]>,
    pub delta: i64,
}

/// Computes the positions of `input_ids` (one sequence, no padding) whose `<|image_pad|>` runs
/// belong, in order, to images of grids `image_grid_thw` (in patches, before merging).
/// Position of an image token = (0, row, col) + (text so far); text resumes at max + 1.
pub fn rope_index(
    input_ids: &[i64],
    image_grid_thw: &[[i64; 3]],
    image_token_id: i64,
    spatial_merge_size: i64,
) -> Result<RopeIndex, ModelError> {
    let mut positions: Vec<[i64; 3]> = Vec::with_capacity(input_ids.len());
    let mut next = 0i64; // max position so far + 1
    let mut st = 0usize;
    for (k, &[t, h, w]) in image_grid_thw.iter().enumerate() {
        let ed = input_ids[st..]
            .iter()
            .position(|&id| id == image_token_id)
            .map(|p| p + st)
            .ok_or_else(|| {
                ModelError::Input(format!(
                    "{} images given but the text has image tokens for only {k}",
                    image_grid_thw.len()
                ))
            })?;
        for i in 0..(ed - st) as i64 {
            positions.push([next + i; 3]);
        }
        let base = next + (ed - st) as i64;
        let (lh, lw) = (h / spatial_merge_size, w / spatial_merge_size);
        let n = (t * lh * lw) as usize;
        if ed + n > input_ids.len() || input_ids[ed..ed + n].iter().any(|&id| id != image_token_id) {
            return Err(ModelError::Input(format!(
                "image {k} (grid {t}x{h}x{w}) needs {n} consecutive image tokens at index {ed}"
            )));
        }
        // Still images: every frame has temporal position 0 (second_per_grid_t = 0).
        for _frame in 0..t {
            for r in 0..lh {
                for c in 0..lw {
                    positions.push([base, base + r, base + c]);
                }
            }
        }
        next = base + lh.max(lw).max(if t > 0 { 1 } else { 0 });
        st = ed + n;
    }
    if input_ids[st..].contains(&image_token_id) {
        return Err(ModelError::Input(format!(
            "the text has more image tokens than the {} images given",
            image_grid_thw.len()
        )));
    }
    for i in 0..(input_ids.len() - st) as i64 {
        positions.push([next + i; 3]);
    }
    let max = positions
        .iter()
        .flat_map(|p| p.iter().copied())
        .max()
        .unwrap_or(-1);
    Ok(RopeIndex {
        positions,
        delta: max + 1 - input_ids.len() as i64,
    })
}

/// Rotary tables of the decoder: `inv_freq[j] = θ^(-2j/d)`, with the half-dimension split
/// between the t, h and w axes by `mrope_section`.
#[derive(Debug)]
pub struct MultimodalRotary {
    inv_freq: Tensor,
    mrope_section: Vec<i64>,
}

impl MultimodalRotary {
    pub fn new(head_dim: usize, theta: f64, mrope_section: &[usize], device: Device) -> Self {
        let half = (head_dim / 2) as i64;
        let exponents = Tensor::arange(half, (Kind::Float, device)) * 2.0 / head_dim as f64;
        let inv_freq = Tensor::from(theta)
            .to_kind(Kind::Float)
            .to_device(device)
            .pow(&exponents)
            .reciprocal();
        Self {
            inv_freq,
            mrope_section: mrope_section.iter().map(|&s| s as i64).collect(),
        }
    }

    /// `positions` is `[3, B, S]` (i64). Returns `(cos, sin)` of shape `[B, S, head_dim]` in f32.
    pub fn cos_sin(&self, positions: &Tensor) -> (Tensor, Tensor) {
        // freqs[a, b, s, j] = pos[a, b, s] * inv_freq[j]
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let mut chunks = Vec::with_capacity(3);
        let mut start = 0;
        for (axis, &len) in self.mrope_section.iter().enumerate() {
            chunks.push(freqs.get(axis as i64 % 3).narrow(-1, start, len));
            start += len;
        }
        let selected = Tensor::cat(&chunks, -1);
        let emb = Tensor::cat(&[&selected, &selected], -1);
        (emb.cos(), emb.sin())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_only_positions_are_a_plain_range() {
        let r = rope_index(&[1, 2, 3, 4], &[], 9, 2).unwrap();
        assert_eq!(r.positions, vec![[0; 3], [1; 3], [2; 3], [3; 3]]);
        assert_eq!(r.delta, 0);
    }

    #[test]
    fn worked_example_from_the_reference_notes() {
        // 4 text tokens, a 56x56 image (grid 1x4x4 -> 2x2 merged tokens), 3 text tokens.
        const P: i64 = 151655;
        let ids = [10, 11, 12, 13, P, P, P, P, 14, 15, 16];
        let r = rope_index(&ids, &[[1, 4, 4]], P, 2).unwrap();
        let expected: Vec<[i64; 3]> = vec![
            [0; 3],
            [1; 3],
            [2; 3],
            [3; 3],
            [4, 4, 4],
            [4, 4, 5],
            [4, 5, 4],
            [4, 5, 5],
            [6; 3],
            [7; 3],
            [8; 3],
        ];
        assert_eq!(r.positions, expected);
        assert_eq!(r.delta, -2);
    }

    #[test]
    fn image_token_count_mismatch_is_an_error() {
        const P: i64 = 7;
        assert!(rope_index(&[1, P, P, 2], &[[1, 4, 4]], P, 2).is_err());
        assert!(rope_index(&[1, P, P, P, P, 2, P], &[[1, 4, 4]], P, 2).is_err());
        assert!(rope_index(&[1, 2], &[[1, 4, 4]], P, 2).is_err());
    }

    #[test]
    fn mrope_selects_axes_by_section() {
        // head_dim 8 -> 4 frequencies split [1, 2, 1] over (t, h, w).
        let rot = MultimodalRotary::new(8, 10000.0, &[1, 2, 1], Device::Cpu);
        let pos = Tensor::from_slice(&[5i64, 7, 11]).view([3, 1, 1]);
        let (cos, _) = rot.cos_sin(&pos);
        let inv: Vec<f64> = (0..4).map(|j| 10000f64.powf(-(2.0 * j as f64) / 8.0)).collect();
        let expect = [5.0 * inv[0], 7.0 * inv[1], 7.0 * inv[2], 11.0 * inv[3]];
        for (d, e) in expect.iter().chain(expect.iter()).enumerate() {
            let got = cos.double_value(&[0, 0, d as i64]);
            assert!((got - e.cos()).abs() < 1e-5, "dim {d}: {got} vs {}", e.cos());
        }
    }
}
