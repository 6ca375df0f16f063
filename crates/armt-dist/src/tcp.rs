//! Collectives over loopback (or any) TCP, for CPU runs and tests with several processes: a
//! star through rank 0, which reduces in rank order (so every rank gets bit-identical results,
//! and the same sum a single process accumulating rank 0's then rank 1's part would get).
//! Simple rather than fast: the GPU path is NCCL.
//!
//! Every message names its collective, its sequence number, dtype and element count, so ranks
//! that call collectives in different orders get an error naming both sides instead of garbage.
//! A rank that dies closes its sockets, and the others' next collective fails with
//! [`DistError::PeerLost`]; a rank that stops answering fails them after the timeout.

use crate::launch::LaunchEnv;
use crate::rendezvous::{read_exact, write_all, Rendezvous};
use crate::{Communicator, DistError, ReduceOp};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

pub struct Tcp {
    rank: usize,
    world_size: usize,
    local_rank: usize,
    /// Links and the sequence number of the next collective; one collective at a time.
    state: Mutex<State>,
}

struct State {
    links: Vec<Option<TcpStream>>,
    seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    AllReduce = 1,
    AllGather = 2,
    Broadcast = 3,
}

/// What a message is: checked on receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    op: u8,
    kind: u8,
    seq: u64,
    numel: u64,
}

impl Header {
    const LEN: usize = 18;
    fn bytes(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0] = self.op;
        b[1] = self.kind;
        b[2..10].copy_from_slice(&self.seq.to_le_bytes());
        b[10..18].copy_from_slice(&self.numel.to_le_bytes());
        b
    }
    fn parse(b: &[u8; Self::LEN]) -> Self {
        Self {
            op: b[0],
            kind: b[1],
            seq: u64::from_le_bytes(b[2..10].try_into().unwrap()),
            numel: u64::from_le_bytes(b[10..18].try_into().unwrap()),
        }
    }
}

fn kind_code(kind: Kind) -> Result<u8, DistError> {
    Ok(match kind {
        Kind::Float => 1,
        Kind::Double => 2,
        Kind::BFloat16 => 3,
        Kind::Half => 4,
        Kind::Int64 => 5,
        Kind::Int => 6,
        Kind::Uint8 => 7,
        Kind::Int8 => 8,
        Kind::Bool => 9,
        k => {
            return Err(DistError::BadArgument {
                op: "tcp",
                reason: format!("dtype {k:?} is not supported"),
            })
        }
    })
}

/// A flat, contiguous CPU copy of `t` as bytes.
fn to_bytes(t: &Tensor) -> Vec<u8> {
    let c = t.to_device(Device::Cpu).contiguous();
    let numel = c.numel();
    let mut buf = vec![0u8; numel * c.kind().elt_size_in_bytes()];
    c.copy_data_u8(&mut buf, numel);
    buf
}

impl Tcp {
    pub(crate) fn new(env: &LaunchEnv, rdzv: Rendezvous, timeout: Duration) -> Self {
        for s in rdzv.links.iter().flatten() {
            let _ = s.set_read_timeout(Some(timeout));
            let _ = s.set_write_timeout(Some(timeout));
            let _ = s.set_nodelay(true);
        }
        Self {
            rank: env.rank,
            world_size: env.world_size,
            local_rank: env.local_rank,
            state: Mutex::new(State {
                links: rdzv.links,
                seq: 0,
            }),
        }
    }

    fn send(&self, st: &mut State, peer: usize, h: Header, data: &[u8]) -> Result<(), DistError> {
        let link = st.links[peer].as_mut().expect("a link to every peer of the star");
        write_all(link, &h.bytes(), peer, self.rank)?;
        write_all(link, data, peer, self.rank)
    }

    fn recv(&self, st: &mut State, peer: usize, want: Header, elt: usize) -> Result<Vec<u8>, DistError> {
        let link = st.links[peer].as_mut().expect("a link to every peer of the star");
        let mut hb = [0u8; Header::LEN];
        read_exact(link, &mut hb, peer, self.rank)?;
        let got = Header::parse(&hb);
        if got != want {
            return Err(DistError::PeerLost {
                rank: self.rank,
                reason: format!(
                    "collectives out of step: rank {peer} sent {got:?} where rank {} expected {want:?} \
                     (every rank must call the same collectives in the same order)",
                    self.rank
                ),
                source: None,
            });
        }
        let mut buf = vec![0u8; want.numel as usize * elt];
        read_exact(link, &mut buf, peer, self.rank)?;
        Ok(buf)
    }

    /// `tensor = op over ranks`, with the flat contents exchanged through rank 0.
    fn reduce_through_root(&self, tensor: &Tensor, op: ReduceOp) -> Result<Tensor, DistError> {
        let kind = tensor.kind();
        let h = Header {
            op: Op::AllReduce as u8,
            kind: kind_code(kind)?,
            seq: 0,
            numel: tensor.numel() as u64,
        };
        let elt = kind.elt_size_in_bytes();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let h = Header { seq: st.seq, ..h };
        st.seq += 1;
        let numel = [tensor.numel() as i64];
        if self.rank == 0 {
            let mut acc = tensor.to_device(Device::Cpu).contiguous().view(-1).copy();
            for peer in 1..self.world_size {
                let bytes = self.recv(&mut st, peer, h, elt)?;
                let other = Tensor::f_from_data_size(&bytes, &numel, kind)?;
                acc = match op {
                    ReduceOp::Sum => acc.f_add(&other)?,
                    ReduceOp::Max => acc.f_maximum(&other)?,
                };
            }
            let out = to_bytes(&acc);
            for peer in 1..self.world_size {
                self.send(&mut st, peer, h, &out)?;
            }
            Ok(acc)
        } else {
            self.send(&mut st, 0, h, &to_bytes(tensor))?;
            let bytes = self.recv(&mut st, 0, h, elt)?;
            Ok(Tensor::f_from_data_size(&bytes, &numel, kind)?)
        }
    }
}

/// `dst = src` in place (dst's shape and device), outside autograd.
fn copy_into(dst: &Tensor, src: &Tensor) -> Result<(), DistError> {
    tch::no_grad(|| {
        dst.shallow_clone()
            .f_copy_(&src.f_view(dst.size().as_slice())?.f_to_device(dst.device())?)
            .map(|_| ())
    })?;
    Ok(())
}

impl Communicator for Tcp {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world_size
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }

    fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<(), DistError> {
        if self.world_size == 1 {
            return Ok(());
        }
        let out = self.reduce_through_root(tensor, op)?;
        copy_into(tensor, &out)
    }

    fn reduce_scatter(&self, input: &Tensor, output: &Tensor, op: ReduceOp) -> Result<(), DistError> {
        let n = output.numel();
        if input.numel() != n * self.world_size {
            return Err(DistError::BadArgument {
                op: "reduce_scatter",
                reason: format!(
                    "input has {} elements, output {n}, world size {}",
                    input.numel(),
                    self.world_size
                ),
            });
        }
        let full = if self.world_size == 1 {
            input.view(-1)
        } else {
            self.reduce_through_root(input, op)?
        };
        copy_into(output, &full.narrow(0, (self.rank * n) as i64, n as i64))
    }

    fn all_gather(&self, input: &Tensor, output: &Tensor) -> Result<(), DistError> {
        let n = input.numel();
        if output.numel() != n * self.world_size {
            return Err(DistError::BadArgument {
                op: "all_gather",
                reason: format!(
                    "input has {n} elements, output {}, world size {}",
                    output.numel(),
                    self.world_size
                ),
            });
        }
        if self.world_size == 1 {
            return copy_into(output, &input.view(-1));
        }
        let kind = input.kind();
        let elt = kind.elt_size_in_bytes();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let h = Header {
            op: Op::AllGather as u8,
            kind: kind_code(kind)?,
            seq: st.seq,
            numel: n as u64,
        };
        st.seq += 1;
        let all = if self.rank == 0 {
            let mut all = to_bytes(input);
            for peer in 1..self.world_size {
                all.extend(self.recv(&mut st, peer, h, elt)?);
            }
            let hall = Header {
                numel: (n * self.world_size) as u64,
                ..h
            };
            for peer in 1..self.world_size {
                self.send(&mut st, peer, hall, &all)?;
            }
            all
        } else {
            self.send(&mut st, 0, h, &to_bytes(input))?;
            let hall = Header {
                numel: (n * self.world_size) as u64,
                ..h
            };
            self.recv(&mut st, 0, hall, elt)?
        };
        drop(st);
        let t = Tensor::f_from_data_size(&all, &[(n * self.world_size) as i64], kind)?;
        copy_into(output, &t)
    }

    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<(), DistError> {
        if root >= self.world_size {
            return Err(DistError::BadArgument {
                op: "broadcast",
                reason: format!("root {root} in a group of {}", self.world_size),
            });
        }
        if self.world_size == 1 {
            return Ok(());
        }
        let kind = tensor.kind();
        let elt = kind.elt_size_in_bytes();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let h = Header {
            op: Op::Broadcast as u8,
            kind: kind_code(kind)?,
            seq: st.seq,
            numel: tensor.numel() as u64,
        };
        st.seq += 1;
        let numel = [tensor.numel() as i64];
        if self.rank == 0 {
            let data = if root == 0 {
                to_bytes(tensor)
            } else {
                self.recv(&mut st, root, h, elt)?
            };
            for peer in (1..self.world_size).filter(|&p| p != root) {
                self.send(&mut st, peer, h, &data)?;
            }
            if root != 0 {
                drop(st);
                copy_into(tensor, &Tensor::f_from_data_size(&data, &numel, kind)?)?;
            }
        } else if self.rank == root {
            self.send(&mut st, 0, h, &to_bytes(tensor))?;
        } else {
            let data = self.recv(&mut st, 0, h, elt)?;
            drop(st);
            copy_into(tensor, &Tensor::f_from_data_size(&data, &numel, kind)?)?;
        }
        Ok(())
    }

    fn barrier(&self) -> Result<(), DistError> {
        self.all_reduce(&Tensor::zeros([1], (Kind::Float, Device::Cpu)), ReduceOp::Sum)
    }
}
