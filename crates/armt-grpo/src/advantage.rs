//! Group-relative outcome advantages (verl `compute_grpo_outcome_advantage`) and the
//! dynamic-sampling filter (DAPO: drop groups with zero reward variance).
//!
//! Rewards are one scalar per trajectory, so these work on slices; [`broadcast_advantages`]
//! turns the result into the per-token tensor the loss needs.

use crate::GrpoError;
use std::collections::HashMap;
use std::hash::Hash;
use tch::{Kind, Tensor};

fn check_lengths<K>(rewards: &[f64], groups: &[K]) -> Result<(), GrpoError> {
    if rewards.len() != groups.len() {
        return Err(GrpoError::Shape(format!(
            "{} rewards but {} group ids",
            rewards.len(),
            groups.len()
        )));
    }
    Ok(())
}

/// Indices of each group's members, groups in order of first appearance.
fn members<K: Hash + Eq>(groups: &[K]) -> Vec<Vec<usize>> {
    let mut slot: HashMap<&K, usize> = HashMap::new();
    let mut out: Vec<Vec<usize>> = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        let s = *slot.entry(g).or_insert_with(|| {
            out.push(Vec::new());
            out.len() - 1
        });
        out[s].push(i);
    }
    out
}

/// Per-trajectory advantages; `groups[i]` names the prompt trajectory `i` was sampled for.
///
/// With std: A_i = (r_i − mean_g) / (std_g + ε), std unbiased (n − 1).
/// Without (Dr.GRPO): A_i = r_i − mean_g.
/// A group of one has mean 0 and std 1, as in verl (its trajectory keeps its raw reward).
pub fn group_advantages<K: Hash + Eq>(
    rewards: &[f64],
    groups: &[K],
    norm_by_std: bool,
    epsilon: f64,
) -> Result<Vec<f64>, GrpoError> {
    check_lengths(rewards, groups)?;
    if let Some(i) = rewards.iter().position(|r| !r.is_finite()) {
        return Err(GrpoError::NonFiniteReward {
            index: i,
            value: rewards[i],
        });
    }
    let mut adv = vec![0.0; rewards.len()];
    for idx in members(groups) {
        let n = idx.len() as f64;
        let (mean, std) = if idx.len() == 1 {
            (0.0, 1.0)
        } else {
            let mean = idx.iter().map(|&i| rewards[i]).sum::<f64>() / n;
            // Unbiased, like torch.std.
            let var = idx.iter().map(|&i| (rewards[i] - mean).powi(2)).sum::<f64>() / (n - 1.0);
            (mean, var.sqrt())
        };
        for &i in &idx {
            adv[i] = if norm_by_std {
                (rewards[i] - mean) / (std + epsilon)
            } else {
                rewards[i] - mean
            };
        }
    }
    Ok(adv)
}

/// Dynamic sampling: true for trajectories whose group's rewards are not all equal (those
/// carry a learning signal). Groups of one are kept, as verl's DAPO filter keeps them.
pub fn informative_groups_mask<K: Hash + Eq>(rewards: &[f64], groups: &[K]) -> Result<Vec<bool>, GrpoError> {
    check_lengths(rewards, groups)?;
    let mut keep = vec![false; rewards.len()];
    for idx in members(groups) {
        let first = rewards[idx[0]];
        // Rule rewards are a handful of exact values, so exact equality is the right test.
        let varied = idx.len() == 1 || idx.iter().any(|&i| rewards[i] != first);
        for &i in &idx {
            keep[i] = varied;
        }
    }
    Ok(keep)
}

/// A_{i,t} = A_i · m_{i,t}: `[B]` advantages to `[B, T]` over the loss mask.
pub fn broadcast_advantages(advantages: &Tensor, mask: &Tensor) -> Result<Tensor, GrpoError> {
    let (b, m) = (advantages.size(), mask.size());
    if b.len() != 1 || m.len() != 2 || b[0] != m[0] {
        return Err(GrpoError::Shape(format!(
            "advantages {b:?} and mask {m:?}: want [B] and [B, T]"
        )));
    }
    let kind = advantages.kind();
    Ok(advantages.unsqueeze(-1) * mask.to_kind(kind))
}

/// Converts f64 advantages to a `[B]` tensor of `kind` on `device`.
pub fn advantages_tensor(adv: &[f64], kind: Kind, device: tch::Device) -> Tensor {
    Tensor::from_slice(adv).to_kind(kind).to_device(device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn advantages_by_hand() {
        // Group a: [1.5, 0.3, 0.3], mean 0.7, deviations [0.8, -0.4, -0.4], unbiased var
        // (0.64 + 0.16 + 0.16)/2 = 0.48, std 0.69282032. Group b: [1.0, 0.0], mean 0.5, std 0.70710678.
        let r = [1.5, 0.3, 1.0, 0.3, 0.0];
        let g = ["a", "a", "b", "a", "b"];
        let a = group_advantages(&r, &g, true, 1e-6).unwrap();
        let sa = 0.48f64.sqrt() + 1e-6;
        let sb = 0.5f64.sqrt() + 1e-6;
        close(&a, &[0.8 / sa, -0.4 / sa, 0.5 / sb, -0.4 / sa, -0.5 / sb], 1e-12);
        assert!((a[0] - 1.154699).abs() < 1e-5 && (a[4] + std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-5);
        // Dr.GRPO: mean-centred only.
        let a = group_advantages(&r, &g, false, 1e-6).unwrap();
        close(&a, &[0.8, -0.4, 0.5, -0.4, -0.5], 1e-12);
    }

    #[test]
    fn constant_and_singleton_groups() {
        // Equal rewards: 0 / (0 + ε) = 0. A group of one: mean 0, std 1 → r / (1 + ε).
        let a = group_advantages(&[1.0, 1.0, 1.0, 0.4], &[0, 0, 0, 1], true, 1e-6).unwrap();
        close(&a, &[0.0, 0.0, 0.0, 0.4 / (1.0 + 1e-6)], 1e-12);
        let a = group_advantages(&[0.4], &[7], false, 1e-6).unwrap();
        close(&a, &[0.4], 1e-12);
        assert!(group_advantages(&[1.0], &[0, 1], true, 1e-6).is_err());
        assert!(group_advantages(&[f64::NAN], &[0], true, 1e-6).is_err());
    }

    #[test]
    fn dynamic_sampling_drops_constant_groups() {
        let keep =
            informative_groups_mask(&[1.5, 1.5, 0.3, 1.0, 0.0, 0.0, 0.4], &[0, 0, 1, 1, 2, 2, 3]).unwrap();
        assert_eq!(keep, vec![false, false, true, true, false, false, true]);
    }

    #[test]
    fn broadcast_over_the_mask() {
        let adv = Tensor::from_slice(&[2.0f32, -1.0]);
        let mask = Tensor::from_slice(&[1u8, 1, 0, 0, 1, 1]).reshape([2, 3]);
        let a = broadcast_advantages(&adv, &mask).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(a.flatten(0, -1)).unwrap(),
            vec![2.0, 2.0, 0.0, -0.0, -1.0, -1.0]
        );
        assert!(broadcast_advantages(&adv, &mask.reshape([3, 2])).is_err());
    }
}
