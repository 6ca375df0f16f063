//! Finite checks on what a checkpoint holds: a NaN or infinity in the weights or the optimizer
//! state must never be saved (it would be resumed and trained on), and a damaged checkpoint
//! must be refused when it is loaded. The checks work on named tensors, whatever layout the
//! optimizer's `state()` has; second moments (`exp_avg_sq…`) must also be non-negative.

use std::path::Path;
use tch::{Kind, Tensor};

/// The first bad tensor found: its name, how many values are bad, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct BadTensor {
    pub name: String,
    pub count: i64,
    pub numel: i64,
    pub what: &'static str,
}

impl std::fmt::Display for BadTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` has {} {} value(s) of {}",
            self.name, self.count, self.what, self.numel
        )
    }
}

fn is_float(kind: Kind) -> bool {
    matches!(kind, Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16)
}

/// The first tensor with a NaN or infinite value (or, for a second moment, a negative one).
pub fn first_bad<'a>(tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>) -> Option<BadTensor> {
    let _g = tch::no_grad_guard();
    for (name, t) in tensors {
        if !t.defined() || !is_float(t.kind()) || t.numel() == 0 {
            continue;
        }
        let bad = t.isfinite().logical_not().sum(Kind::Int64).int64_value(&[]);
        if bad > 0 {
            return Some(BadTensor {
                name: name.to_string(),
                count: bad,
                numel: t.numel() as i64,
                what: "NaN or infinite",
            });
        }
        let short = name.rsplit('/').next().unwrap_or(name);
        if short.starts_with("exp_avg_sq") {
            let neg = t.lt(0.0).sum(Kind::Int64).int64_value(&[]);
            if neg > 0 {
                return Some(BadTensor {
                    name: name.to_string(),
                    count: neg,
                    numel: t.numel() as i64,
                    what: "negative (a second moment cannot be)",
                });
            }
        }
    }
    None
}

/// Names the newest checkpoint of `run_dir` (older than `before`, when given) for a message:
/// every listed checkpoint passed these checks when it was written.
pub fn last_good_hint(run_dir: &Path, before: Option<&Path>) -> String {
    let limit = before.and_then(|b| b.file_name()).map(|n| n.to_os_string());
    let last = crate::checkpoint::list(run_dir).into_iter().rev().find(|p| {
        limit
            .as_ref()
            .is_none_or(|l| p.file_name().is_some_and(|n| n < l.as_os_str()))
    });
    match last {
        Some(p) => format!(
            "the last good checkpoint is {} (resume with --resume={})",
            p.display(),
            p.display()
        ),
        None => format!("no good checkpoint exists in {}", run_dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nan_inf_and_negative_second_moments() {
        let ok = Tensor::from_slice(&[1.0f32, -2.0]);
        let nan = Tensor::from_slice(&[1.0f32, f32::NAN, f32::INFINITY]);
        let neg = Tensor::from_slice(&[1.0f32, -1e-3]);
        let ids = Tensor::from_slice(&[1i64, 2]);
        assert_eq!(first_bad([("a", &ok), ("ids", &ids)]), None);
        let b = first_bad([("a", &ok), ("b", &nan)]).unwrap();
        assert_eq!((b.name.as_str(), b.count, b.numel), ("b", 2, 3));
        assert!(first_bad([("exp_avg.w", &neg)]).is_none());
        let b = first_bad([("exp_avg_sq.w", &neg)]).unwrap();
        assert!(b.to_string().contains("negative"), "{b}");
        let bf = nan.to_kind(Kind::BFloat16);
        assert!(first_bad([("bf", &bf)]).is_some());
    }
}
