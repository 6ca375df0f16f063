//! Joining the process group the launcher started (`torchrun --no-python armt ...`, `srun armt
//! ...`), and `armt dist-check`: one collective correctness check and an all-reduce bandwidth
//! measurement, for a GPU check of the NCCL path.

use crate::forward::parse_device;
use anyhow::{bail, Context, Result};
use armt_dist::{Backend, Communicator, LaunchEnv, ReduceOp};
use armt_train::TrainConfig;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// Reads the launcher's variables, gives this rank its GPU (`cuda:LOCAL_RANK`) and its share of
/// the CPUs, and builds the group (`dist.backend`). One process without a launcher gets the
/// single-process group and nothing changes.
pub fn setup(cfg: &mut TrainConfig) -> Result<Arc<dyn Communicator>> {
    let env = LaunchEnv::from_env()?;
    let backend: Backend = cfg.dist.backend.parse()?;
    if env.world_size > 1 {
        cap_cpu_threads(env.cpu_threads());
    }
    let device = parse_device(cfg.model.device.as_deref()).context("model.device")?;
    let cuda = match device {
        Device::Cuda(_) if env.world_size > 1 || backend != Backend::Auto => {
            // Each rank drives the GPU of its local rank, whatever index the config names.
            cfg.model.device = Some(format!("cuda:{}", env.local_rank));
            Some(env.local_rank)
        }
        Device::Cuda(i) => Some(i),
        _ => None,
    };
    let comm =
        armt_dist::init(&env, backend, cuda, Duration::from_secs(cfg.dist.timeout_s)).with_context(|| {
            match env.launcher {
                "none" => "building a one-process group".to_string(),
                l => format!(
                    "joining the process group (rank {} of {}, from {l}'s variables)",
                    env.rank, env.world_size
                ),
            }
        })?;
    if let Some(line) = armt_dist::nccl::description().filter(|_| comm.is_main()) {
        eprintln!("armt: {line}");
    }
    if env.world_size > 1 && comm.is_main() {
        eprintln!(
            "armt: {} ranks ({}), {} CPU threads per rank, collectives over {}",
            env.world_size,
            env.launcher,
            env.cpu_threads(),
            if cuda.is_some() && backend != Backend::Tcp {
                "NCCL"
            } else {
                "TCP"
            }
        );
    }
    Ok(comm)
}

/// torch's intra-op pool and rayon's global pool (tools, tokenizer) to `n` threads each.
fn cap_cpu_threads(n: usize) {
    tch::set_num_threads(n as i32);
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // Read when rayon's global pool starts, which no code has used yet at this point.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// Runs `f` on rank 0 first, then (once it is done) on the others: for work that creates
/// shared files the other ranks then only read.
pub fn main_first<T>(comm: &Arc<dyn Communicator>, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if comm.is_main() {
        let out = f()?;
        comm.barrier()?;
        Ok(out)
    } else {
        comm.barrier()?;
        f()
    }
}

#[derive(clap::Args)]
pub struct DistCheckArgs {
    /// auto, nccl or tcp.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// cpu, cuda or cuda:N (default: cuda if available); with several ranks, cuda:LOCAL_RANK.
    #[arg(long)]
    device: Option<String>,
    /// Size of the buffer whose all-reduce is timed, in MiB.
    #[arg(long, default_value_t = 1024)]
    mib: i64,
    /// Timed all-reduces (after 2 warm-up ones).
    #[arg(long, default_value_t = 10)]
    iters: usize,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Checks all-reduce (sum, max), reduce-scatter, all-gather and broadcast against their
/// definitions on this group, then times an f32 all-reduce of `--mib` MiB and prints its
/// algorithm and bus bandwidth (bus = algorithm × 2(N−1)/N, as nccl-tests reports it).
pub fn run_check(args: DistCheckArgs) -> Result<()> {
    let mut cfg = TrainConfig::default();
    cfg.dist.backend = args.backend.clone();
    cfg.model.device = args.device.clone();
    let comm = setup(&mut cfg)?;
    let device = parse_device(cfg.model.device.as_deref())?;
    let (w, r) = (comm.world_size() as f64, comm.rank() as f64);
    let opts = (Kind::Float, device);
    let t = Tensor::arange(8, opts) + r;
    comm.all_reduce(&t, ReduceOp::Sum)?;
    let want = Tensor::arange(8, opts) * w + w * (w - 1.0) / 2.0;
    let sum_err = (&t - &want).abs().max().double_value(&[]);
    let m = Tensor::full([4], r, opts);
    comm.all_reduce(&m, ReduceOp::Max)?;
    let max_err = (&m - (w - 1.0)).abs().max().double_value(&[]);
    let n = comm.world_size() as i64;
    let input = Tensor::arange(4 * n, opts) * (r + 1.0);
    let out = Tensor::zeros([4], opts);
    comm.reduce_scatter(&input, &out, ReduceOp::Sum)?;
    let rs_want = Tensor::arange_start(4 * comm.rank() as i64, 4 * (comm.rank() as i64 + 1), opts)
        * (w * (w + 1.0) / 2.0);
    let rs_err = (&out - rs_want).abs().max().double_value(&[]);
    let g = Tensor::full([3], r, opts);
    let gathered = Tensor::zeros([3 * n], opts);
    comm.all_gather(&g, &gathered)?;
    let g_want = Tensor::arange(n, opts).repeat_interleave_self_int(3, None, None);
    let ag_err = (&gathered - g_want).abs().max().double_value(&[]);
    let b = Tensor::full([5], r + 1.0, (Kind::BFloat16, device));
    comm.broadcast(&b, 0)?;
    let bc_err = (b.to_kind(Kind::Float) - 1.0).abs().max().double_value(&[]);
    comm.barrier()?;
    let worst = [sum_err, max_err, rs_err, ag_err, bc_err]
        .into_iter()
        .fold(0.0, f64::max);
    if comm.is_main() {
        println!(
            "collectives: all_reduce sum {sum_err:e} max {max_err:e}, reduce_scatter {rs_err:e}, \
             all_gather {ag_err:e}, broadcast {bc_err:e} (max abs error over {} ranks)",
            comm.world_size()
        );
    }
    if worst != 0.0 {
        bail!(
            "rank {}: a collective gave a wrong result (max abs error {worst:e})",
            comm.rank()
        );
    }

    let elems = args.mib * (1 << 20) / 4;
    let buf = Tensor::ones([elems], opts);
    for _ in 0..2 {
        comm.all_reduce(&buf, ReduceOp::Sum)?;
    }
    sync(device);
    comm.barrier()?;
    let t0 = Instant::now();
    for _ in 0..args.iters.max(1) {
        comm.all_reduce(&buf, ReduceOp::Sum)?;
    }
    sync(device);
    let per = t0.elapsed().as_secs_f64() / args.iters.max(1) as f64;
    let bytes = (elems * 4) as f64;
    let algbw = bytes / per / 1e9;
    let busbw = algbw * 2.0 * (w - 1.0) / w;
    if comm.is_main() {
        println!(
            "all_reduce f32 {} MiB over {} rank(s) on {:?}: {:.3} ms, algbw {algbw:.1} GB/s, busbw {busbw:.1} GB/s",
            args.mib,
            comm.world_size(),
            device,
            per * 1e3
        );
    }
    comm.barrier()?;
    armt_dist::nccl::mark_finished();
    Ok(())
}
