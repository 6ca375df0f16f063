//! Sharded optimizer state (ZeRO stages 0–2 as DeepSpeed defines them), built on one flat view of
//! the trainable parameters: every parameter, in name order, flattened and concatenated into `N`
//! elements, padded with zeros to a multiple of the number of partitions `P`. Partition `p` owns
//! the contiguous range `[p·S, (p+1)·S)` with `S = ⌈N / P⌉`. Masters, both AdamW moments and (at
//! stage 2) the fp32 gradients exist only for the owned range.
//!
//! - stage 0: `P = 1`, every rank owns everything; gradients all-reduced.
//! - stage 1: `P = world size`; gradients all-reduced (full fp32 buffer on every rank), each rank
//!   updates its range, the compute weights are all-gathered.
//! - stage 2: as stage 1, but each micro-batch's gradients are reduce-scattered, so a rank keeps
//!   only the fp32 gradients of its range.
//!
//! Because the flat order depends only on the parameter list, a checkpoint written with `P`
//! partitions is resumed with `P'` by reading, for the new owned range, the overlapping parts of
//! the old ones: concatenate and split.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// How much of the optimizer state each rank holds (DeepSpeed's `zero_optimization.stage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ZeroStage {
    /// Full masters, moments and gradients on every rank; gradients all-reduced.
    Replicated,
    /// Masters and moments partitioned; gradients all-reduced.
    ShardedState,
    /// Masters, moments and fp32 gradients partitioned; gradients reduce-scattered.
    ShardedGradients,
}

impl ZeroStage {
    /// `train.zero_stage`: 0, 1 or 2.
    pub fn from_index(stage: u8) -> Result<Self, crate::config::InvalidSetting> {
        match stage {
            0 => Ok(Self::Replicated),
            1 => Ok(Self::ShardedState),
            2 => Ok(Self::ShardedGradients),
            s => Err(crate::config::InvalidSetting {
                key: "train.zero_stage",
                value: s.to_string(),
                expected: "0, 1 or 2",
            }),
        }
    }

    pub fn index(self) -> u8 {
        match self {
            Self::Replicated => 0,
            Self::ShardedState => 1,
            Self::ShardedGradients => 2,
        }
    }

    /// Partitions of the optimizer state in a group of `world` ranks.
    pub fn partitions(self, world: usize) -> usize {
        match self {
            Self::Replicated => 1,
            Self::ShardedState | Self::ShardedGradients => world,
        }
    }
}

/// A contiguous run of one parameter inside a flat range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    pub param: usize,
    /// Offset inside the flattened parameter.
    pub param_offset: i64,
    /// Offset relative to the start of the range.
    pub range_offset: i64,
    pub len: i64,
}

/// The flat view of a parameter list, split into `partitions` equal ranges.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FlatLayout {
    pub names: Vec<String>,
    pub shapes: Vec<Vec<i64>>,
    /// Start of each parameter in the flat view.
    offsets: Vec<i64>,
    /// Elements of all parameters (without padding).
    pub numel: i64,
    pub partitions: i64,
    /// Elements per partition.
    pub shard: i64,
}

impl FlatLayout {
    pub fn new(params: &[(String, Vec<i64>)], partitions: usize) -> Self {
        let mut offsets = Vec::with_capacity(params.len());
        let mut numel = 0i64;
        for (_, shape) in params {
            offsets.push(numel);
            numel += shape.iter().product::<i64>();
        }
        let partitions = partitions.max(1) as i64;
        Self {
            names: params.iter().map(|p| p.0.clone()).collect(),
            shapes: params.iter().map(|p| p.1.clone()).collect(),
            offsets,
            numel,
            partitions,
            shard: (numel + partitions - 1) / partitions,
        }
    }

    /// The flat range partition `p` owns.
    pub fn range(&self, p: usize) -> (i64, i64) {
        let lo = p as i64 * self.shard;
        (lo, lo + self.shard)
    }

    /// Parameter pieces inside `[lo, hi)`, in flat order (padding has none).
    pub fn segments(&self, lo: i64, hi: i64) -> Vec<Segment> {
        let mut out = Vec::new();
        // First parameter whose end is past lo.
        let first = self.offsets.partition_point(|&o| o <= lo).saturating_sub(1);
        for i in first..self.offsets.len() {
            let start = self.offsets[i];
            let end = start + self.shapes[i].iter().product::<i64>();
            if start >= hi {
                break;
            }
            let (a, b) = (start.max(lo), end.min(hi));
            if a < b {
                out.push(Segment {
                    param: i,
                    param_offset: a - start,
                    range_offset: a - lo,
                    len: b - a,
                });
            }
        }
        out
    }

    /// Copies the parameters' elements in `[lo, lo + dst.numel())` into the flat `dst`
    /// (converting the kind); undefined tensors (a gradient the loss did not reach) and the
    /// padding leave `dst` as it was.
    pub fn gather_into(&self, tensors: &[Tensor], lo: i64, dst: &Tensor) {
        let hi = lo + dst.numel() as i64;
        for s in self.segments(lo, hi) {
            let t = &tensors[s.param];
            if !t.defined() {
                continue;
            }
            dst.narrow(0, s.range_offset, s.len)
                .copy_(&t.view(-1).narrow(0, s.param_offset, s.len));
        }
    }

    /// Copies the flat `src` (flat positions `[lo, lo + src.numel())`) into the parameters.
    pub fn scatter_from(&self, src: &Tensor, lo: i64, tensors: &[Tensor]) {
        let hi = lo + src.numel() as i64;
        for s in self.segments(lo, hi) {
            tensors[s.param]
                .view(-1)
                .narrow(0, s.param_offset, s.len)
                .copy_(&src.narrow(0, s.range_offset, s.len));
        }
    }

    /// Sub-ranges `[start, start + len)` of a partition, relative to its start, of at most
    /// `bucket` elements: the unit of one reduce-scatter or all-gather.
    pub fn buckets(&self, bucket: i64) -> Vec<(i64, i64)> {
        let bucket = bucket.max(1);
        (0..self.shard)
            .step_by(bucket as usize)
            .map(|s| (s, bucket.min(self.shard - s)))
            .collect()
    }
}

/// `optimizer/layout.json`: what a checkpoint's optimizer shards hold and how they are cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ShardedLayoutFile {
    /// Trainable parameters in flat order, with their shapes.
    pub params: Vec<(String, Vec<i64>)>,
    pub numel: i64,
    /// Number of `rank-*.safetensors` files.
    pub partitions: i64,
    /// Elements per file (the last one is zero-padded).
    pub shard: i64,
    pub zero_stage: u8,
    pub world_size: usize,
    /// Kind of the stored masters ("f32", "bf16", "f16").
    pub master_dtype: String,
}

pub(crate) const OPTIMIZER_DIR: &str = "optimizer";

pub(crate) fn layout_path(ckpt: &Path) -> PathBuf {
    ckpt.join(OPTIMIZER_DIR).join("layout.json")
}

pub(crate) fn shard_path(ckpt: &Path, part: usize, partitions: usize) -> PathBuf {
    ckpt.join(OPTIMIZER_DIR)
        .join(format!("rank-{part:05}-of-{partitions:05}.safetensors"))
}

pub(crate) fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "f32",
        Kind::BFloat16 => "bf16",
        Kind::Half => "f16",
        Kind::Double => "f64",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(p: usize) -> FlatLayout {
        // 3 + 4 + 2 = 9 elements.
        FlatLayout::new(
            &[
                ("a".into(), vec![3]),
                ("b".into(), vec![2, 2]),
                ("c".into(), vec![2]),
            ],
            p,
        )
    }

    #[test]
    fn partitions_cover_the_flat_view_with_padding() {
        let l = layout(2);
        assert_eq!((l.numel, l.shard), (9, 5));
        assert_eq!(l.range(1), (5, 10));
        // Partition 0: a[0..3], b[0..2]; partition 1: b[2..4], c[0..2], then one padding element.
        let seg = |p, po, ro, len| Segment {
            param: p,
            param_offset: po,
            range_offset: ro,
            len,
        };
        assert_eq!(l.segments(0, 5), vec![seg(0, 0, 0, 3), seg(1, 0, 3, 2)]);
        assert_eq!(l.segments(5, 10), vec![seg(1, 2, 0, 2), seg(2, 0, 2, 2)]);
        assert_eq!(l.segments(4, 6), vec![seg(1, 1, 0, 2)]);
        assert_eq!(layout(1).buckets(4), vec![(0, 4), (4, 4), (8, 1)]);
    }

    #[test]
    fn gather_then_scatter_round_trips() {
        let l = layout(3);
        let ts: Vec<Tensor> = [3i64, 4, 2]
            .iter()
            .enumerate()
            .map(|(i, &n)| Tensor::arange(n, (Kind::Float, tch::Device::Cpu)) + 10.0 * i as f64)
            .collect();
        let flat = Tensor::full([9], -1.0, (Kind::Float, tch::Device::Cpu));
        for p in 0..3 {
            let (lo, hi) = l.range(p);
            l.gather_into(&ts, lo, &flat.narrow(0, lo, hi - lo));
        }
        let want = [0., 1., 2., 10., 11., 12., 13., 20., 21.];
        assert_eq!(Vec::<f32>::try_from(&flat).unwrap(), want);
        let back: Vec<Tensor> = ts.iter().map(|t| t.zeros_like()).collect();
        l.scatter_from(&flat.narrow(0, 3, 5), 3, &back);
        assert_eq!(Vec::<f32>::try_from(&back[1]).unwrap(), vec![10., 11., 12., 13.]);
        assert_eq!(Vec::<f32>::try_from(&back[2]).unwrap(), vec![20., 0.]);
    }
}
