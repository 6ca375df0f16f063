//! Per-row sampling randomness. Every sampled token of a trajectory draws its uniform from a
//! counter-based hash of (row key, draw index), and the row key is a function of
//! (seed, step, global group index, row in group) alone. So a trajectory does not depend on which
//! other rows shared its batch, on how many rows ran at once, or on which data-parallel rank ran
//! it — only on those four numbers. The same hash runs on the host ([`RowRng::uniform`]) and on
//! the device over many rows at once ([`device_uniforms`]), in 64-bit integer tensor arithmetic
//! that never overflows, so both give bit-identical draws.

use tch::{Kind, Tensor};

/// The sampler's host-side stream for data-loader shuffles and seeds (not libtorch's global
/// generator, which other threads share): same seed, same draws; its state is one u64.
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

/// The random stream of one rollout row: `RowRng::new(seed, step, group, row)`, where `group` is
/// the GLOBAL index of the prompt in the step (the same on every data-parallel rank) and `row` its
/// sample index within the group (0..n).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRng {
    key: u64,
}

const MASK32: u64 = 0xFFFF_FFFF;
const MIX_A: u64 = 0x7FEB_352D;
const MIX_B: u64 = 0x846C_A68B;

/// `x · c mod 2³²` for `x, c < 2³²`, with every intermediate below 2⁴⁹ (so it is exact in i64
/// tensors too): split `x` into 16-bit halves.
fn mul32(x: u64, c: u64) -> u64 {
    let hi = ((x >> 16) * c) & 0xFFFF;
    ((hi << 16) + (x & 0xFFFF) * c) & MASK32
}

/// A 32-bit integer finaliser (the "lowbias32" xorshift-multiply hash).
fn mix32(mut x: u64) -> u64 {
    x ^= x >> 16;
    x = mul32(x, MIX_A);
    x ^= x >> 15;
    x = mul32(x, MIX_B);
    x ^ (x >> 16)
}

impl RowRng {
    pub fn new(seed: u64, step: u64, group: u64, row: u64) -> Self {
        let mut s = SplitMix64(seed);
        let a = s.next_u64() ^ step.wrapping_mul(0xD1B5_4A32_D192_ED03);
        let b = SplitMix64(a).next_u64() ^ group.wrapping_mul(0xA24B_AED4_963E_E407);
        let c = SplitMix64(b).next_u64() ^ row.wrapping_mul(0x9FB2_1C65_1E98_DF25);
        Self {
            key: SplitMix64(c).next_u64(),
        }
    }

    pub fn key(&self) -> u64 {
        self.key
    }

    /// Low and high 32-bit halves of the key (what the device hash takes).
    pub fn key_halves(&self) -> (i64, i64) {
        ((self.key & MASK32) as i64, (self.key >> 32) as i64)
    }

    /// The `draw`-th uniform of this row, in [0, 1) on a 2⁻²⁴ grid (exact in f32).
    pub fn uniform(&self, draw: u64) -> f32 {
        let (lo, hi) = (self.key & MASK32, self.key >> 32);
        let h = mix32(hi ^ mix32(lo ^ mix32(draw & MASK32)));
        (h >> 8) as f32 / (1u64 << 24) as f32
    }
}

fn mul32_t(x: &Tensor, c: u64) -> Tensor {
    let c = c as i64;
    let hi = (x.floor_divide_scalar(1 << 16) * c).bitwise_and(0xFFFF);
    (hi * (1i64 << 16) + x.bitwise_and(0xFFFF) * c).bitwise_and(MASK32 as i64)
}

fn mix32_t(x: &Tensor) -> Tensor {
    let x = x.bitwise_xor_tensor(&x.floor_divide_scalar(1 << 16));
    let x = mul32_t(&x, MIX_A);
    let x = x.bitwise_xor_tensor(&x.floor_divide_scalar(1 << 15));
    let x = mul32_t(&x, MIX_B);
    x.bitwise_xor_tensor(&x.floor_divide_scalar(1 << 16))
}

/// [`RowRng::uniform`] for many rows at once on their device: `key_lo`, `key_hi`, `draws` are
/// i64 `[A]` (key halves and draw indices, all below 2³²); returns f32 `[A]`.
pub fn device_uniforms(key_lo: &Tensor, key_hi: &Tensor, draws: &Tensor) -> Tensor {
    let h = mix32_t(&key_hi.bitwise_xor_tensor(&mix32_t(
        &key_lo.bitwise_xor_tensor(&mix32_t(&draws.bitwise_and(MASK32 as i64))),
    )));
    h.floor_divide_scalar(1 << 8).to_kind(Kind::Float) / (1u64 << 24) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_draws_equal_host_draws() {
        let rows: Vec<RowRng> = (0..5).map(|r| RowRng::new(42, 3, 7 + r, r)).collect();
        let (mut lo, mut hi, mut draws, mut want) = (vec![], vec![], vec![], vec![]);
        for (k, r) in rows.iter().enumerate() {
            for d in [0u64, 1, 2, 1000, (1 << 32) - 1] {
                let (l, h) = r.key_halves();
                lo.push(l);
                hi.push(h);
                draws.push(d as i64 + k as i64 % 2);
                want.push(r.uniform(d + k as u64 % 2));
            }
        }
        let got: Vec<f32> = Vec::try_from(device_uniforms(
            &Tensor::from_slice(&lo),
            &Tensor::from_slice(&hi),
            &Tensor::from_slice(&draws),
        ))
        .unwrap();
        assert_eq!(got, want);
        assert!(want.iter().all(|u| (0.0..1.0).contains(u)));
    }

    #[test]
    fn row_streams_differ_and_look_uniform() {
        let a = RowRng::new(1, 0, 0, 0);
        assert_ne!(a, RowRng::new(1, 0, 0, 1));
        assert_ne!(a, RowRng::new(1, 0, 1, 0));
        assert_ne!(a, RowRng::new(1, 1, 0, 0));
        assert_ne!(a, RowRng::new(2, 0, 0, 0));
        let n = 20_000;
        let mean: f64 = (0..n).map(|d| a.uniform(d) as f64).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
        let low = (0..n).filter(|&d| a.uniform(d) < 0.1).count() as f64 / n as f64;
        assert!((low - 0.1).abs() < 0.01, "P(u < 0.1) = {low}");
    }
}
