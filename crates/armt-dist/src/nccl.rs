//! NCCL collectives on CUDA tensors, through cudarc's raw bindings with `libnccl.so` and
//! `libcuda.so` opened at run time (so the binary builds and runs without CUDA; only a CUDA run
//! that asks for NCCL needs them).
//!
//! **Stream.** Each collective is enqueued on the stream torch computes on, read from libtorch
//! itself (`c10::cuda::getCurrentCUDAStream`, which libc10_cuda.so exports; tch has no binding
//! for it): a collective is ordered after the kernels that produced its input and before those
//! that read its output, with no device synchronisation. If that symbol cannot be found, the
//! legacy default stream is used, which is the stream torch computes on unless a program sets
//! another (tch never does).
//!
//! **Failures.** NCCL waits forever for a peer that died. The rendezvous connections stay open
//! and a watchdog thread per link reads them: when a peer's process ends, its link closes; the
//! watchdog marks the group broken (the next collective returns [`DistError::PeerLost`]) and,
//! if the process has not ended by itself within a grace period (it may be blocked inside a
//! kernel waiting for the dead peer), aborts the communicator and exits with the message, as
//! torch's NCCL watchdog does.

use crate::launch::LaunchEnv;
use crate::rendezvous::Rendezvous;
use crate::{Communicator, DistError, ReduceOp};
use cudarc::nccl::{result, sys};
use std::ffi::{c_void, CStr};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tch::{Device, Kind, Tensor};

/// Set once the run's last collective is done: from then on a peer leaving is expected.
static FINISHED: AtomicBool = AtomicBool::new(false);

/// What the NCCL group of this process runs on (set when it is built).
static DESCRIPTION: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// One line about this process's NCCL group (version, device, stream), if it has one.
pub fn description() -> Option<String> {
    DESCRIPTION.get().cloned()
}

/// Marks this process's part in the group as done (its last collective returned): peers that
/// exit from now on are not an error.
pub fn mark_finished() {
    FINISHED.store(true, Ordering::SeqCst);
}

struct RawComm(sys::ncclComm_t);
// NCCL communicators may be used from any thread as long as calls on one are not concurrent;
// the Mutex around it in `Nccl` serialises them.
unsafe impl Send for RawComm {}
unsafe impl Sync for RawComm {}

struct RawStream(sys::cudaStream_t);
unsafe impl Send for RawStream {}
unsafe impl Sync for RawStream {}

pub struct Nccl {
    rank: usize,
    world_size: usize,
    local_rank: usize,
    device: usize,
    comm: Mutex<RawComm>,
    stream: RawStream,
    /// Where the stream came from, for `describe`.
    stream_source: &'static str,
    broken: Arc<Mutex<Option<String>>>,
}

fn nccl_error(e: result::NcclError, what: &str, rank: usize) -> DistError {
    let text = unsafe {
        let p = sys::ncclGetErrorString(e.0);
        if p.is_null() {
            format!("{:?}", e.0)
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    };
    DistError::PeerLost {
        rank,
        reason: format!("NCCL {what}: {text}"),
        source: None,
    }
}

fn nccl_kind(kind: Kind) -> Result<sys::ncclDataType_t, DistError> {
    use sys::ncclDataType_t as T;
    Ok(match kind {
        Kind::Float => T::ncclFloat32,
        Kind::Double => T::ncclFloat64,
        Kind::BFloat16 => T::ncclBfloat16,
        Kind::Half => T::ncclFloat16,
        Kind::Int64 => T::ncclInt64,
        Kind::Int => T::ncclInt32,
        Kind::Uint8 | Kind::Bool => T::ncclUint8,
        Kind::Int8 => T::ncclInt8,
        k => {
            return Err(DistError::BadArgument {
                op: "nccl",
                reason: format!("dtype {k:?} is not supported"),
            })
        }
    })
}

fn nccl_op(op: ReduceOp) -> sys::ncclRedOp_t {
    match op {
        ReduceOp::Sum => sys::ncclRedOp_t::ncclSum,
        ReduceOp::Max => sys::ncclRedOp_t::ncclMax,
    }
}

/// The layout of `c10::cuda::CUDAStream` (a `c10::Stream`: device type and index, then the
/// stream id): trivially copyable and 16 bytes, so C++ returns it by value in two registers,
/// as it returns this `repr(C)` struct.
#[repr(C)]
#[derive(Clone, Copy)]
struct C10Stream {
    device_type: i8,
    device_index: i8,
    id: i64,
}

/// Torch's current CUDA stream on `device` (None when libc10_cuda's symbols are not there).
fn torch_current_stream(device: usize) -> Option<sys::cudaStream_t> {
    type GetCurrent = unsafe extern "C" fn(i8) -> C10Stream;
    type StreamOf = unsafe extern "C" fn(*const C10Stream) -> *mut c_void;
    unsafe {
        // Already loaded by libtorch_cuda; opening it again only takes a reference.
        let lib = libloading::Library::new("libc10_cuda.so").ok()?;
        let get: libloading::Symbol<GetCurrent> = lib.get(b"_ZN3c104cuda20getCurrentCUDAStreamEa\0").ok()?;
        let stream_of: libloading::Symbol<StreamOf> =
            lib.get(b"_ZNK3c104cuda10CUDAStream6streamEv\0").ok()?;
        let s = get(device as i8);
        if s.device_index as usize != device {
            return None;
        }
        let raw = stream_of(&s);
        // Keep the library loaded for the life of the process (it is libtorch's own).
        std::mem::forget(lib);
        Some(raw as sys::cudaStream_t)
    }
}

impl Nccl {
    /// A fresh NCCL unique id (rank 0 hands it to the others through the rendezvous).
    pub fn unique_id() -> Result<[u8; 128], DistError> {
        check_nccl_loadable()?;
        let id = result::get_uniqueid().map_err(|e| nccl_error(e, "ncclGetUniqueId", 0))?;
        Ok(id.internal.map(|c| c as u8))
    }

    pub(crate) fn new(
        env: &LaunchEnv,
        device: usize,
        rdzv: Rendezvous,
        timeout: Duration,
    ) -> Result<Self, DistError> {
        check_nccl_loadable()?;
        if rdzv.payload.len() != 128 {
            return Err(DistError::Launch(format!(
                "rank {}: the rendezvous handed out {} bytes, not an NCCL id",
                env.rank,
                rdzv.payload.len()
            )));
        }
        bind_device(device, env.rank)?;
        let mut id = sys::ncclUniqueId { internal: [0; 128] };
        for (d, s) in id.internal.iter_mut().zip(&rdzv.payload) {
            *d = *s as std::ffi::c_char;
        }
        let mut comm: sys::ncclComm_t = std::ptr::null_mut();
        unsafe { result::comm_init_rank(&mut comm, env.world_size as i32, id, env.rank as i32) }
            .map_err(|e| nccl_error(e, "ncclCommInitRank", env.rank))?;
        let (stream, stream_source) = match torch_current_stream(device) {
            Some(s) => (s, "torch's current stream"),
            None => (std::ptr::null_mut(), "the legacy default stream"),
        };
        let broken = Arc::new(Mutex::new(None));
        let grace = timeout.min(Duration::from_secs(30));
        for (peer, link) in rdzv.links.into_iter().enumerate() {
            if let Some(link) = link {
                spawn_watchdog(link, peer, env.rank, comm, broken.clone(), grace);
            }
        }
        let nccl = Self {
            rank: env.rank,
            world_size: env.world_size,
            local_rank: env.local_rank,
            device,
            comm: Mutex::new(RawComm(comm)),
            stream: RawStream(stream),
            stream_source,
            broken,
        };
        let _ = DESCRIPTION.set(nccl.describe());
        Ok(nccl)
    }

    /// One line: NCCL version, device, and which stream the collectives run on.
    pub fn describe(&self) -> String {
        let version = result::get_nccl_version().unwrap_or(0);
        format!(
            "NCCL {}.{}.{} on cuda:{}, rank {}/{}, collectives on {} ({:?})",
            version / 10000,
            (version / 100) % 100,
            version % 100,
            self.device,
            self.rank,
            self.world_size,
            self.stream_source,
            self.stream.0
        )
    }

    fn check(&self, t: &Tensor, op: &'static str) -> Result<(*mut c_void, sys::ncclDataType_t), DistError> {
        if let Some(why) = self.broken.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return Err(DistError::PeerLost {
                rank: self.rank,
                reason: why,
                source: None,
            });
        }
        if t.device() != Device::Cuda(self.device) {
            return Err(DistError::BadArgument {
                op,
                reason: format!(
                    "tensor on {:?}, the NCCL group on cuda:{}",
                    t.device(),
                    self.device
                ),
            });
        }
        if !t.is_contiguous() {
            return Err(DistError::BadArgument {
                op,
                reason: "the tensor is not contiguous".into(),
            });
        }
        Ok((t.data_ptr(), nccl_kind(t.kind())?))
    }
}

/// Makes `device`'s primary context (the one the CUDA runtime and torch use) current on this
/// thread, so ncclCommInitRank picks that GPU.
fn bind_device(device: usize, rank: usize) -> Result<(), DistError> {
    use cudarc::driver::result as drv;
    check_cuda_driver()?;
    let err =
        |what: &str, e: cudarc::driver::DriverError| DistError::Launch(format!("rank {rank}: {what}: {e:?}"));
    drv::init().map_err(|e| err("cuInit", e))?;
    let dev = drv::device::get(device as i32).map_err(|e| err(&format!("CUDA device {device}"), e))?;
    unsafe {
        let ctx = drv::primary_ctx::retain(dev).map_err(|e| err("cuDevicePrimaryCtxRetain", e))?;
        drv::ctx::set_current(ctx).map_err(|e| err("cuCtxSetCurrent", e))?;
    }
    Ok(())
}

/// libcuda.so opens (cudarc panics on a missing library; this turns it into an error).
fn check_cuda_driver() -> Result<(), DistError> {
    if unsafe { cudarc::driver::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(DistError::Launch(
            "the NCCL backend needs the CUDA driver (libcuda.so), which this machine does not have".into(),
        ))
    }
}

/// libnccl.so opens (cudarc panics on a missing library; this turns it into an error).
fn check_nccl_loadable() -> Result<(), DistError> {
    check_cuda_driver()?;
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(DistError::Launch(
            "libnccl.so was not found: install NCCL (pip's nvidia-nccl-cu13; scripts/setup links \
             $ARMT_CACHE/lib/libnccl.so to it) or put it on LD_LIBRARY_PATH"
                .into(),
        ))
    }
}

fn spawn_watchdog(
    mut link: std::net::TcpStream,
    peer: usize,
    me: usize,
    comm: sys::ncclComm_t,
    broken: Arc<Mutex<Option<String>>>,
    grace: Duration,
) {
    let comm = RawComm(comm);
    let _ = link.set_read_timeout(None);
    std::thread::spawn(move || {
        let comm = comm;
        let mut byte = [0u8; 1];
        // Nothing is ever sent on the link after the rendezvous: a read returns only when the
        // peer's process is gone.
        let _ = link.read(&mut byte);
        if FINISHED.load(Ordering::SeqCst) {
            return;
        }
        let why = format!("rank {peer} exited or was killed");
        *broken.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        std::thread::sleep(grace);
        if FINISHED.load(Ordering::SeqCst) {
            return;
        }
        eprintln!(
            "Error: rank {me}: the process group is broken: {why}; stopping this rank too \
             (after {}s waiting for it to stop by itself)",
            grace.as_secs()
        );
        unsafe {
            let _ = sys::ncclCommAbort(comm.0);
        }
        std::process::exit(1);
    });
}

impl Communicator for Nccl {
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
        let (ptr, kind) = self.check(tensor, "all_reduce")?;
        let comm = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        unsafe { result::all_reduce(ptr, ptr, tensor.numel(), kind, nccl_op(op), comm.0, self.stream.0) }
            .map_err(|e| nccl_error(e, "all_reduce", self.rank))?;
        Ok(())
    }

    fn reduce_scatter(&self, input: &Tensor, output: &Tensor, op: ReduceOp) -> Result<(), DistError> {
        let (src, kind) = self.check(input, "reduce_scatter")?;
        let (dst, kind_out) = self.check(output, "reduce_scatter")?;
        if input.numel() != output.numel() * self.world_size || kind != kind_out {
            return Err(DistError::BadArgument {
                op: "reduce_scatter",
                reason: format!(
                    "input {} x {:?}, output {} x {:?}, world size {}",
                    input.numel(),
                    input.kind(),
                    output.numel(),
                    output.kind(),
                    self.world_size
                ),
            });
        }
        let comm = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        unsafe { result::reduce_scatter(src, dst, output.numel(), kind, nccl_op(op), comm.0, self.stream.0) }
            .map_err(|e| nccl_error(e, "reduce_scatter", self.rank))?;
        Ok(())
    }

    fn all_gather(&self, input: &Tensor, output: &Tensor) -> Result<(), DistError> {
        let (src, kind) = self.check(input, "all_gather")?;
        let (dst, kind_out) = self.check(output, "all_gather")?;
        if output.numel() != input.numel() * self.world_size || kind != kind_out {
            return Err(DistError::BadArgument {
                op: "all_gather",
                reason: format!(
                    "input {} x {:?}, output {} x {:?}, world size {}",
                    input.numel(),
                    input.kind(),
                    output.numel(),
                    output.kind(),
                    self.world_size
                ),
            });
        }
        let comm = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        unsafe { result::all_gather(src, dst, input.numel(), kind, comm.0, self.stream.0) }
            .map_err(|e| nccl_error(e, "all_gather", self.rank))?;
        Ok(())
    }

    fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<(), DistError> {
        if root >= self.world_size {
            return Err(DistError::BadArgument {
                op: "broadcast",
                reason: format!("root {root} in a group of {}", self.world_size),
            });
        }
        let (ptr, kind) = self.check(tensor, "broadcast")?;
        let comm = self.comm.lock().unwrap_or_else(|p| p.into_inner());
        unsafe { result::broadcast(ptr, ptr, tensor.numel(), kind, root as i32, comm.0, self.stream.0) }
            .map_err(|e| nccl_error(e, "broadcast", self.rank))?;
        Ok(())
    }

    fn barrier(&self) -> Result<(), DistError> {
        let t = Tensor::zeros([1], (Kind::Float, Device::Cuda(self.device)));
        self.all_reduce(&t, ReduceOp::Sum)?;
        // Reading the value waits for the all-reduce, hence for every rank.
        let _ = t.f_double_value(&[0])?;
        Ok(())
    }
}

impl Drop for Nccl {
    fn drop(&mut self) {
        mark_finished();
        let comm = self.comm.get_mut().unwrap_or_else(|p| p.into_inner());
        unsafe {
            let _ = result::comm_destroy(comm.0);
        }
    }
}
