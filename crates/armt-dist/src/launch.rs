//! Who this process is, read the way PyTorch launchers say it: `torchrun` sets `RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT`; Slurm's `srun`
//! sets `SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID` (and the address of rank 0 comes from
//! `MASTER_ADDR`, as in PyTorch's Slurm recipes). Then [`init`] builds the process group.

use crate::nccl::Nccl;
use crate::rendezvous::Rendezvous;
use crate::tcp::Tcp;
use crate::{Communicator, DistError, SingleProcess};
use std::sync::Arc;
use std::time::Duration;

/// The port PyTorch launchers default to.
pub const DEFAULT_MASTER_PORT: u16 = 29500;

/// Where a process sits in the job, from the launcher's variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    /// Processes on this node (for the CPU-thread share).
    pub local_world_size: usize,
    /// Host of rank 0.
    pub master_addr: String,
    /// Port of the rendezvous rank 0 listens on (see [`LaunchEnv::from_vars`]).
    pub rendezvous_port: u16,
    /// CPUs the launcher gave each process, when it says (Slurm's `--cpus-per-task`).
    pub cpus_per_process: Option<usize>,
    /// Which launcher's variables were read ("torchrun", "slurm" or "none").
    pub launcher: &'static str,
}

impl LaunchEnv {
    /// One process, no launcher.
    pub fn single() -> Self {
        Self {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            local_world_size: 1,
            master_addr: "127.0.0.1".into(),
            rendezvous_port: DEFAULT_MASTER_PORT,
            cpus_per_process: None,
            launcher: "none",
        }
    }

    /// From the process environment.
    pub fn from_env() -> Result<Self, DistError> {
        Self::from_vars(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    /// From the variables `get` returns. torchrun's variables win when both launchers' are set
    /// (torchrun started by srun). torchrun's agent keeps its own store on `MASTER_PORT`
    /// (it says so with `TORCHELASTIC_USE_AGENT_STORE=True`); armt's rendezvous then listens
    /// on the next port up.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, DistError> {
        let num = |key: &str| -> Result<Option<usize>, DistError> {
            match get(key) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .map(Some)
                    .map_err(|_| DistError::Launch(format!("{key}={v:?} is not a non-negative integer"))),
            }
        };
        let cpus_per_process = num("SLURM_CPUS_PER_TASK")?;
        let (launcher, rank, world_size, local_rank, local_world) =
            if get("RANK").is_some() || get("WORLD_SIZE").is_some() {
                let rank = num("RANK")?.ok_or_else(|| {
                    DistError::Launch("WORLD_SIZE is set but RANK is not (torchrun sets both)".into())
                })?;
                let world = num("WORLD_SIZE")?.ok_or_else(|| {
                    DistError::Launch("RANK is set but WORLD_SIZE is not (torchrun sets both)".into())
                })?;
                let local_world = num("LOCAL_WORLD_SIZE")?;
                let local_rank = match num("LOCAL_RANK")? {
                    Some(l) => l,
                    None if world == 1 => 0,
                    None => {
                        return Err(DistError::Launch(format!(
                            "RANK={rank} WORLD_SIZE={world} but LOCAL_RANK is not set: it picks this \
                             process's GPU (torchrun sets it)"
                        )))
                    }
                };
                ("torchrun", rank, world, local_rank, local_world)
            } else if get("SLURM_PROCID").is_some() && get("SLURM_NTASKS").is_some() {
                let rank = num("SLURM_PROCID")?.unwrap_or(0);
                let world = num("SLURM_NTASKS")?.unwrap_or(1);
                let local_rank = num("SLURM_LOCALID")?.unwrap_or(0);
                let local_world = match num("SLURM_NTASKS_PER_NODE") {
                    Ok(Some(n)) => Some(n),
                    // SLURM_TASKS_PER_NODE reads like "8(x2)" or "4,3": the first count is this
                    // node's in the common uniform layouts; only the thread share uses it.
                    _ => get("SLURM_TASKS_PER_NODE").and_then(|v| {
                        v.split([',', '('])
                            .next()
                            .and_then(|s| s.trim().parse::<usize>().ok())
                    }),
                };
                ("slurm", rank, world, local_rank, local_world)
            } else {
                return Ok(Self::single());
            };
        if world_size == 0 {
            return Err(DistError::Launch("WORLD_SIZE is 0".into()));
        }
        if rank >= world_size {
            return Err(DistError::Launch(format!(
                "rank {rank} is not below the world size {world_size} ({launcher} variables)"
            )));
        }
        // Unknown: assume every process shares this node (the smaller, safe thread share).
        let local_world_size = local_world.unwrap_or(world_size);
        if local_rank >= local_world_size {
            return Err(DistError::Launch(format!(
                "LOCAL_RANK={local_rank} is not below LOCAL_WORLD_SIZE={local_world_size}"
            )));
        }
        if local_world_size > world_size {
            return Err(DistError::Launch(format!(
                "{local_world_size} processes per node but a world of {world_size}"
            )));
        }
        let master_addr = match get("MASTER_ADDR") {
            Some(a) => a,
            None if world_size == 1 => "127.0.0.1".into(),
            None => {
                return Err(DistError::Launch(format!(
                    "world size {world_size} but MASTER_ADDR is not set: export the host of rank 0 \
                     (under Slurm: MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1))"
                )))
            }
        };
        let master_port = match get("MASTER_PORT") {
            Some(p) => p
                .trim()
                .parse::<u16>()
                .map_err(|_| DistError::Launch(format!("MASTER_PORT={p:?} is not a port number")))?,
            None if world_size == 1 || launcher == "slurm" => DEFAULT_MASTER_PORT,
            None => return Err(DistError::Launch("MASTER_PORT is not set".into())),
        };
        let agent_store = get("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let rendezvous_port = if agent_store {
            master_port.checked_add(1).ok_or_else(|| {
                DistError::Launch("MASTER_PORT 65535 leaves no port for armt's rendezvous".into())
            })?
        } else {
            master_port
        };
        Ok(Self {
            rank,
            world_size,
            local_rank,
            local_world_size,
            master_addr,
            rendezvous_port,
            cpus_per_process,
            launcher,
        })
    }

    /// CPU threads this process should use: what the launcher granted, else an equal share of
    /// the node's CPUs among its processes (at least 1).
    pub fn cpu_threads(&self) -> usize {
        if let Some(n) = self.cpus_per_process {
            return n.max(1);
        }
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        (cpus / self.local_world_size.max(1)).max(1)
    }
}

/// Which collectives implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// NCCL when the model is on CUDA, TCP on the CPU; no group at all for one process.
    Auto,
    Nccl,
    Tcp,
}

impl std::str::FromStr for Backend {
    type Err = DistError;
    fn from_str(s: &str) -> Result<Self, DistError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Ok(Self::Auto),
            "nccl" => Ok(Self::Nccl),
            "tcp" | "gloo" => Ok(Self::Tcp),
            other => Err(DistError::Launch(format!(
                "dist backend `{other}`: expected auto, nccl or tcp"
            ))),
        }
    }
}

/// Builds the process group for `env`. `cuda_device` is the CUDA ordinal the model runs on
/// (None on the CPU). World size 1 with `Auto` is [`SingleProcess`]; an explicit backend at
/// world size 1 builds that backend anyway (to check it on one device).
pub fn init(
    env: &LaunchEnv,
    backend: Backend,
    cuda_device: Option<usize>,
    timeout: Duration,
) -> Result<Arc<dyn Communicator>, DistError> {
    let backend = match backend {
        Backend::Auto if env.world_size == 1 => return Ok(Arc::new(SingleProcess)),
        Backend::Auto if cuda_device.is_some() => Backend::Nccl,
        Backend::Auto => Backend::Tcp,
        b => b,
    };
    match backend {
        Backend::Nccl => {
            let device = cuda_device.ok_or_else(|| {
                DistError::Launch("the NCCL backend needs the model on CUDA (model.device)".into())
            })?;
            let rdzv = Rendezvous::connect(env, timeout, || Nccl::unique_id().map(|id| id.to_vec()))?;
            Ok(Arc::new(Nccl::new(env, device, rdzv, timeout)?))
        }
        _ => {
            let rdzv = Rendezvous::connect(env, timeout, || Ok(Vec::new()))?;
            Ok(Arc::new(Tcp::new(env, rdzv, timeout)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<LaunchEnv, DistError> {
        let m: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        LaunchEnv::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn torchrun_variables() {
        let e = env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "16"),
            ("LOCAL_RANK", "3"),
            ("LOCAL_WORLD_SIZE", "8"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ])
        .unwrap();
        assert_eq!(
            (e.rank, e.world_size, e.local_rank, e.local_world_size),
            (3, 16, 3, 8)
        );
        assert_eq!((e.master_addr.as_str(), e.rendezvous_port), ("node0", 29501));
        assert_eq!(e.launcher, "torchrun");
    }

    #[test]
    fn slurm_variables_and_torchrun_precedence() {
        let e = env(&[
            ("SLURM_PROCID", "9"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_TASKS_PER_NODE", "8(x2)"),
            ("SLURM_CPUS_PER_TASK", "12"),
            ("MASTER_ADDR", "10.0.0.1"),
        ])
        .unwrap();
        assert_eq!(
            (e.rank, e.world_size, e.local_rank, e.local_world_size),
            (9, 16, 1, 8)
        );
        assert_eq!(e.rendezvous_port, DEFAULT_MASTER_PORT);
        assert_eq!(e.cpu_threads(), 12);
        // torchrun inside an allocation: its variables describe the processes.
        let e = env(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap();
        assert_eq!((e.rank, e.world_size, e.launcher), (1, 2, "torchrun"));
        assert_eq!(env(&[]).unwrap(), LaunchEnv::single());
    }

    #[test]
    fn inconsistent_variables_are_named() {
        let msg = |v: &[(&str, &str)]| env(v).unwrap_err().to_string();
        assert!(msg(&[("RANK", "0")]).contains("WORLD_SIZE"));
        assert!(msg(&[("WORLD_SIZE", "2")]).contains("RANK"));
        let m = msg(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")]);
        assert!(m.contains("rank 2") && m.contains("world size 2"), "{m}");
        let m = msg(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")]);
        assert!(m.contains("MASTER_ADDR"), "{m}");
        let m = msg(&[("RANK", "x"), ("WORLD_SIZE", "2")]);
        assert!(m.contains("RANK=\"x\""), "{m}");
        let m = msg(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "1"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "1"),
        ]);
        assert!(m.contains("LOCAL_RANK=1"), "{m}");
        let m = msg(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "port"),
        ]);
        assert!(m.contains("MASTER_PORT"), "{m}");
    }
}
