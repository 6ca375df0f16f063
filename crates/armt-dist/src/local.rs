//! An in-process group: N communicators for N threads of one process, meeting in shared memory.
//! It exists so that sharded-optimizer and data-parallel code can be tested with 2 or 3 ranks
//! without sockets or GPUs; it is a test and debugging backend, not a production one.
//!
//! Every collective is two barrier phases: each rank deposits a CPU copy of its input in its
//! slot, all wait, each rank reads what it needs from every slot, all wait again (so no slot is
//! overwritten while another rank still reads it). Reductions run over the slots in rank order
//! on every rank, so all ranks get bit-identical results. Arguments are checked against every
//! rank's deposit after the first barrier, so a mismatch is an error on all ranks, never a hang.
//! A rank that panics or stops calling collectives does hang the others (std's barrier has no
//! timeout): tests that use this backend should keep their ranks in lockstep.

use crate::{Communicator, DistError, ReduceOp};
use std::sync::{Arc, Barrier, Mutex};
use tch::{Device, Kind, Tensor};

struct Shared {
    slots: Mutex<Vec<Option<Tensor>>>,
    barrier: Barrier,
}

/// Builds the communicators of an in-process group.
pub struct LocalGroup;

impl LocalGroup {
    /// `n` communicators, rank `i` at index `i`; give each to its own thread.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(n: usize) -> Vec<LocalCommunicator> {
        assert!(n >= 1, "a group has at least one rank");
        let shared = Arc::new(Shared {
            slots: Mutex::new((0..n).map(|_| None).collect()),
            barrier: Barrier::new(n),
        });
        (0..n)
            .map(|rank| LocalCommunicator {
                rank,
                world: n,
                shared: shared.clone(),
            })
            .collect()
    }
}

/// One rank of a [`LocalGroup`].
pub struct LocalCommunicator {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
}

/// What one rank deposited: a contiguous CPU copy, or nothing (broadcast's non-roots).
fn cpu_copy(t: &Tensor) -> Result<Tensor, DistError> {
    Ok(t.f_to_device(Device::Cpu)?.f_contiguous()?.copy())
}

impl LocalCommunicator {
    /// Deposits `value`, waits for all ranks, runs `read` over all deposits, waits again.
    fn exchange<R>(
        &self,
        value: Option<Tensor>,
        read: impl FnOnce(&[Option<Tensor>]) -> Result<R, DistError>,
    ) -> Result<R, DistError> {
        self.shared.slots.lock().expect("slots lock")[self.rank] = value;
        self.shared.barrier.wait();
        let result = {
            let slots = self.shared.slots.lock().expect("slots lock");
            read(&slots)
        };
        self.shared.barrier.wait();
        result
    }

    /// Every deposit has the same kind and element count as rank 0's.
    fn check_uniform(op: &'static str, slots: &[Option<Tensor>]) -> Result<(Kind, i64), DistError> {
        let first = slots[0].as_ref().expect("rank 0 deposited");
        let (kind, numel) = (first.kind(), first.numel() as i64);
        for (r, s) in slots.iter().enumerate() {
            let s = s.as_ref().expect("every rank deposited");
            if s.kind() != kind || s.numel() as i64 != numel {
                return Err(DistError::BadArgument {
                    op,
                    reason: format!(
                        "rank {r} passed {} elements of {:?}, rank 0 {numel} of {kind:?}",
                        s.numel(),
                        s.kind()
                    ),
                });
            }
        }
        Ok((kind, numel))
    }

    /// Elementwise `op` over the ranks' flat deposits, narrowed to `[start, start + len)`.
    fn reduce(slots: &[Option<Tensor>], op: ReduceOp, start: i64, len: i64) -> Result<Tensor, DistError> {
        let part = |s: &Option<Tensor>| -> Result<Tensor, DistError> {
            Ok(s.as_ref()
                .expect("every rank deposited")
                .f_view(-1)?
                .f_narrow(0, start, len)?)
        };
        let mut acc = part(&slots[0])?.copy();
        for s in &slots[1..] {
            let x = part(s)?;
            acc = match op {
                ReduceOp::Sum => acc.f_add(&x)?,
                ReduceOp::Max => acc.f_maximum(&x)?,
            };
        }
        Ok(acc)
    }
}

fn copy_into(dst: &Tensor, src: &Tensor) -> Result<(), DistError> {
    let src = src.f_to_device(dst.device())?;
    dst.f_view(-1)?.f_copy_(&src.f_view(-1)?)?;
    Ok(())
}

impl Communicator for LocalCommunicator {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn local_rank(&self) -> usize {
        self.rank
    }

    fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<(), DistError> {
        let mine = cpu_copy(tensor)?;
        let reduced = self.exchange(Some(mine), |slots| {
            let (_, numel) = Self::check_uniform("all_reduce", slots)?;
            Self::reduce(slots, op, 0, numel)
        })?;
        copy_into(tensor, &reduced)
    }

    fn reduce_scatter(&self, input: &Tensor, output: &Tensor, op: ReduceOp) -> Result<(), DistError> {
        let out_len = output.numel() as i64;
        let mine = cpu_copy(input)?;
        let rank = self.rank as i64;
        let world = self.world as i64;
        let part = self.exchange(Some(mine), |slots| {
            let (_, numel) = Self::check_uniform("reduce_scatter", slots)?;
            if numel != out_len * world {
                return Err(DistError::BadArgument {
                    op: "reduce_scatter",
                    reason: format!("input has {numel} elements, output {out_len} × {world} ranks"),
                });
            }
            Self::reduce(slots, op, rank * out_len, out_len)
        })?;
        copy_into(output, &part)
    }

    fn all_gather(&self, input: &Tensor, output: &Tensor) -> Result<(), DistError> {
        let out_len = output.numel() as i64;
        let world = self.world as i64;
        let mine = cpu_copy(input)?;
        let gathered = self.exchange(Some(mine), |slots| {
            let (_, numel) = Self::check_uniform("all_gather", slots)?;
            if numel * world != out_len {
                return Err(DistError::BadArgument {
                    op: "all_gather",
                    reason: format!("input has {numel} elements × {world} ranks, output {out_len}"),
                });
            }
            let parts: Vec<Tensor> = slots
                .iter()
                .map(|s| s.as_ref().expect("every rank deposited").view(-1))
                .collect();
            Ok(Tensor::f_cat(&parts, 0)?)
        })?;
        copy_into(output, &gathered)
    }

    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<(), DistError> {
        if root >= self.world {
            return Err(DistError::BadArgument {
                op: "broadcast",
                reason: format!("root {root} in a group of {}", self.world),
            });
        }
        // Every rank deposits (so the shapes can be checked); only the root's is read.
        let mine = cpu_copy(tensor)?;
        let value = self.exchange(Some(mine), |slots| {
            Self::check_uniform("broadcast", slots)?;
            Ok(slots[root].as_ref().expect("root deposited").shallow_clone())
        })?;
        if self.rank != root {
            copy_into(tensor, &value)?;
        }
        Ok(())
    }

    fn barrier(&self) -> Result<(), DistError> {
        self.shared.barrier.wait();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f(rank, comm)` on one thread per rank; returns the results in rank order.
    fn on_ranks<R: Send + 'static>(
        n: usize,
        f: impl Fn(usize, LocalCommunicator) -> R + Send + Sync + 'static,
    ) -> Vec<R> {
        let f = Arc::new(f);
        let handles: Vec<_> = LocalGroup::new(n)
            .into_iter()
            .enumerate()
            .map(|(r, c)| {
                let f = f.clone();
                std::thread::spawn(move || f(r, c))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    fn vals(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.to_kind(Kind::Float)).unwrap()
    }

    /// Rank r's input: [r*10 + 0, r*10 + 1, ..] (6 elements), so every element and rank differ.
    fn input(r: usize) -> Tensor {
        Tensor::arange(6, (Kind::Float, Device::Cpu)) + (r as f64) * 10.0
    }

    #[test]
    fn all_reduce_sums_and_maxes_over_three_ranks() {
        let out = on_ranks(3, |r, c| {
            let s = input(r);
            c.all_reduce(&s, ReduceOp::Sum).unwrap();
            let m = input(r) * if r == 1 { -1.0 } else { 1.0 };
            c.all_reduce(&m, ReduceOp::Max).unwrap();
            (vals(&s), vals(&m))
        });
        for (s, m) in out {
            // Σ_r (10r + i) = 30 + 3i; max over {i, -(10+i), 20+i} = 20 + i.
            assert_eq!(s, vec![30., 33., 36., 39., 42., 45.]);
            assert_eq!(m, vec![20., 21., 22., 23., 24., 25.]);
        }
    }

    #[test]
    fn reduce_scatter_gives_each_rank_its_chunk_of_the_sum() {
        let out = on_ranks(3, |r, c| {
            let o = Tensor::zeros([2], (Kind::Float, Device::Cpu));
            c.reduce_scatter(&input(r), &o, ReduceOp::Sum).unwrap();
            vals(&o)
        });
        assert_eq!(out, vec![vec![30., 33.], vec![36., 39.], vec![42., 45.]]);
    }

    #[test]
    fn all_gather_concatenates_in_rank_order() {
        let out = on_ranks(2, |r, c| {
            let i = Tensor::from_slice(&[r as f32, r as f32 + 0.5]);
            let o = Tensor::zeros([4], (Kind::Float, Device::Cpu));
            c.all_gather(&i, &o).unwrap();
            vals(&o)
        });
        for o in out {
            assert_eq!(o, vec![0., 0.5, 1., 1.5]);
        }
    }

    #[test]
    fn broadcast_copies_the_roots_tensor_and_keeps_the_kind() {
        let out = on_ranks(3, |r, c| {
            let t = input(r).to_kind(Kind::BFloat16);
            c.broadcast(&t, 2).unwrap();
            c.barrier().unwrap();
            (t.kind(), vals(&t))
        });
        for (k, v) in out {
            assert_eq!(k, Kind::BFloat16);
            assert_eq!(v, vec![20., 21., 22., 23., 24., 25.]);
        }
    }

    #[test]
    fn mismatched_arguments_fail_on_every_rank_instead_of_hanging() {
        let out = on_ranks(2, |r, c| {
            let t = Tensor::zeros([3 + r as i64], (Kind::Float, Device::Cpu));
            let bad_sum = c.all_reduce(&t, ReduceOp::Sum).is_err();
            let o = Tensor::zeros([4], (Kind::Float, Device::Cpu));
            let bad_scatter = c
                .reduce_scatter(&Tensor::zeros([6], (Kind::Float, Device::Cpu)), &o, ReduceOp::Sum)
                .is_err();
            let bad_root = c.broadcast(&t, 5).is_err();
            (bad_sum, bad_scatter, bad_root)
        });
        assert_eq!(out, vec![(true, true, true); 2]);
    }

    #[test]
    fn one_rank_group_behaves_as_a_single_process() {
        let c = LocalGroup::new(1).pop().unwrap();
        let t = input(0);
        c.all_reduce(&t, ReduceOp::Sum).unwrap();
        assert_eq!(vals(&t), vec![0., 1., 2., 3., 4., 5.]);
        let o = Tensor::zeros([6], (Kind::Float, Device::Cpu));
        c.all_gather(&t, &o).unwrap();
        assert_eq!(vals(&o), vals(&t));
    }
}
