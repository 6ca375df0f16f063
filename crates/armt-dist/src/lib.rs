//! The process group armt trains in: who this process is (rank, world size, local rank) and the
//! collectives data-parallel training needs, on tch tensors. One trait, [`Communicator`], with one
//! implementation per backend; the trainer holds an `Arc<dyn Communicator>` and never asks which.
//!
//! Backends: [`SingleProcess`] (world size 1: every collective is the identity, so a one-process
//! run behaves exactly as before data parallelism existed), [`tcp::Tcp`] (CPU tensors over TCP,
//! for tests and CPU runs) and [`nccl::Nccl`] (CUDA tensors). [`launch`] reads the launcher's
//! variables (torchrun, Slurm) and builds the group.

pub mod launch;
pub mod nccl;
mod rendezvous;
pub mod tcp;

pub use launch::{init, Backend, LaunchEnv};

mod local;

pub use local::{LocalCommunicator, LocalGroup};
use tch::Tensor;

/// The reduction an all-reduce or reduce-scatter applies elementwise across ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
}

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    /// The launcher's variables (RANK, WORLD_SIZE, ...) do not describe a valid process group.
    #[error("invalid launch environment: {0}")]
    Launch(String),
    /// A collective was called with tensors of the wrong shape, dtype or device.
    #[error("{op}: {reason}")]
    BadArgument { op: &'static str, reason: String },
    /// Another rank failed, left or timed out; this rank cannot continue.
    /// `source`: the socket error a broken TCP link gave, when there is one.
    #[error("rank {rank}: the process group is broken: {reason}")]
    PeerLost {
        rank: usize,
        reason: String,
        #[source]
        source: Option<std::io::Error>,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Collectives over all ranks of the group. Every rank must call the same collectives in the
/// same order with tensors of the same shape and dtype (as with NCCL and torch.distributed).
/// Tensors are updated in place; the call returns once the result may be read on this rank.
pub trait Communicator: Send + Sync {
    /// This process's index in the group, `0..world_size()`.
    fn rank(&self) -> usize;
    /// Number of processes in the group.
    fn world_size(&self) -> usize;
    /// This process's index among the processes of its node (selects the GPU).
    fn local_rank(&self) -> usize;
    /// `tensor = op(tensor over all ranks)`, on every rank.
    fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<(), DistError>;
    /// `output = op(input over all ranks)[rank-th chunk]`: `input` has `world_size()` times the
    /// elements of `output` (flat, contiguous).
    fn reduce_scatter(&self, input: &Tensor, output: &Tensor, op: ReduceOp) -> Result<(), DistError>;
    /// `output = concat(input of rank 0, .., input of rank N-1)` (flat, contiguous).
    fn all_gather(&self, input: &Tensor, output: &Tensor) -> Result<(), DistError>;
    /// `tensor = tensor of rank root`, on every rank.
    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<(), DistError>;
    /// Returns when every rank has called it.
    fn barrier(&self) -> Result<(), DistError>;

    /// True on the rank that owns the run's side effects (files, console, metrics).
    fn is_main(&self) -> bool {
        self.rank() == 0
    }
}

/// World size 1: each collective leaves its data as one process's reduction would.
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn local_rank(&self) -> usize {
        0
    }
    fn all_reduce(&self, _tensor: &Tensor, _op: ReduceOp) -> Result<(), DistError> {
        Ok(())
    }
    fn reduce_scatter(&self, input: &Tensor, output: &Tensor, _op: ReduceOp) -> Result<(), DistError> {
        if input.numel() != output.numel() {
            return Err(DistError::BadArgument {
                op: "reduce_scatter",
                reason: format!("input has {} elements, output {}", input.numel(), output.numel()),
            });
        }
        output.view(-1).f_copy_(&input.view(-1))?;
        Ok(())
    }
    fn all_gather(&self, input: &Tensor, output: &Tensor) -> Result<(), DistError> {
        self.reduce_scatter(input, output, ReduceOp::Sum)
            .map_err(|e| match e {
                DistError::BadArgument { reason, .. } => DistError::BadArgument {
                    op: "all_gather",
                    reason,
                },
                other => other,
            })
    }
    fn broadcast(&self, _tensor: &Tensor, root: usize) -> Result<(), DistError> {
        if root != 0 {
            return Err(DistError::BadArgument {
                op: "broadcast",
                reason: format!("root {root} in a group of 1"),
            });
        }
        Ok(())
    }
    fn barrier(&self) -> Result<(), DistError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn single_process_collectives_are_identities() {
        let c = SingleProcess;
        let t = Tensor::arange(6, (Kind::Float, tch::Device::Cpu));
        c.all_reduce(&t, ReduceOp::Sum).unwrap();
        assert_eq!(Vec::<f32>::try_from(&t).unwrap(), vec![0., 1., 2., 3., 4., 5.]);
        let out = Tensor::zeros([6], (Kind::Float, tch::Device::Cpu));
        c.reduce_scatter(&t, &out, ReduceOp::Sum).unwrap();
        assert_eq!(Vec::<f32>::try_from(&out).unwrap(), vec![0., 1., 2., 3., 4., 5.]);
        let bad = Tensor::zeros([5], (Kind::Float, tch::Device::Cpu));
        assert!(c.all_gather(&t, &bad).is_err());
        assert!(c.broadcast(&t, 1).is_err());
    }
}
