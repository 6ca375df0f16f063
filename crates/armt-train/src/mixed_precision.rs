//! Mixed precision as DeepSpeed and FSDP do it: the model computes in its own dtype (bf16 on a
//! GPU), the optimizer keeps fp32 master weights, accumulates gradients in fp32 across
//! micro-batches, runs AdamW on the masters and copies them back, rounded, into the compute
//! weights. Without masters, an update smaller than half a bf16 step of a weight (|w| ≈ 0.02
//! → one step is 2⁻⁷·2⁻⁶ ≈ 1.2e-4; lr 2e-6 moves it by ~2e-6) rounds away and nothing learns.

use tch::Kind;

/// The precision of the master weights (`optim.master_dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MasterDtype {
    /// fp32 masters (the default; with f32 compute the masters are an fp32 copy).
    #[default]
    F32,
    /// No separate precision: masters in the compute dtype, so every update is rounded to it
    /// (what armt did before masters existed; kept to show the loss of small updates).
    Compute,
}

impl MasterDtype {
    /// `optim.master_dtype`: unset or "f32"/"fp32"/"float32" → fp32 masters; "none" or
    /// "compute" → the compute dtype. "bf16"/"f16" are accepted as "the compute dtype" and
    /// checked against it when the optimizer is built (see [`MasterDtype::resolve`]).
    pub fn parse(value: Option<&str>) -> Result<(Self, Option<Kind>), crate::config::InvalidSetting> {
        match value.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None | Some("f32" | "fp32" | "float32") => Ok((Self::F32, None)),
            Some("none" | "compute") => Ok((Self::Compute, None)),
            Some("bf16" | "bfloat16") => Ok((Self::Compute, Some(Kind::BFloat16))),
            Some("f16" | "fp16" | "float16") => Ok((Self::Compute, Some(Kind::Half))),
            Some(other) => Err(crate::config::InvalidSetting {
                key: "optim.master_dtype",
                value: other.to_string(),
                expected: "f32 (default), none (the compute dtype), bf16 or f16",
            }),
        }
    }

    /// The kind the masters are stored in, for compute weights of kind `compute`.
    pub fn resolve(self, compute: Kind) -> Kind {
        match self {
            Self::F32 => Kind::Float,
            Self::Compute => compute,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_config_values() {
        assert_eq!(MasterDtype::parse(None).unwrap(), (MasterDtype::F32, None));
        assert_eq!(MasterDtype::parse(Some("FP32")).unwrap().0, MasterDtype::F32);
        assert_eq!(MasterDtype::parse(Some("none")).unwrap().0, MasterDtype::Compute);
        assert_eq!(
            MasterDtype::parse(Some("bf16")).unwrap(),
            (MasterDtype::Compute, Some(Kind::BFloat16))
        );
        let err = MasterDtype::parse(Some("f8")).unwrap_err().to_string();
        assert!(err.contains("optim.master_dtype") && err.contains("f8"), "{err}");
        assert_eq!(MasterDtype::Compute.resolve(Kind::BFloat16), Kind::BFloat16);
        assert_eq!(MasterDtype::F32.resolve(Kind::BFloat16), Kind::Float);
    }
}
