//! The TCP backend: ranks as threads of one test process, each with its own rendezvous
//! connection on a free loopback port, checked against the collectives' definitions.

use armt_dist::{init, Backend, Communicator, DistError, LaunchEnv, ReduceOp};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn env(rank: usize, world: usize, port: u16) -> LaunchEnv {
    LaunchEnv {
        rank,
        world_size: world,
        local_rank: rank,
        local_world_size: world,
        master_addr: "127.0.0.1".into(),
        rendezvous_port: port,
        cpus_per_process: None,
        launcher: "torchrun",
    }
}

/// Runs `f(comm)` on `world` ranks (threads); returns their results in rank order.
fn on_ranks<T: Send + 'static>(
    world: usize,
    f: impl Fn(Arc<dyn Communicator>) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let port = free_port();
    let f = Arc::new(f);
    let handles: Vec<_> = (0..world)
        .map(|r| {
            let f = f.clone();
            std::thread::spawn(move || {
                let comm = init(&env(r, world, port), Backend::Tcp, None, Duration::from_secs(20)).unwrap();
                f(comm)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).view(-1)).unwrap()
}

#[test]
fn collectives_match_their_definitions() {
    let world = 3;
    let out = on_ranks(world, move |c| {
        let r = c.rank() as f64;
        let opts = (Kind::Float, Device::Cpu);
        // rank r holds [r, r+1, ..., r+5] (shaped 2x3: shapes survive).
        let t = (Tensor::arange(6, opts) + r).view([2, 3]);
        c.all_reduce(&t, ReduceOp::Sum).unwrap();
        let sum = values(&t);
        let m = Tensor::from_slice(&[r, -r, 10.0 * r]);
        c.all_reduce(&m, ReduceOp::Max).unwrap();
        let max = values(&m);
        let input = Tensor::arange(6, opts) * (r + 1.0);
        let rs = Tensor::zeros([2], opts);
        c.reduce_scatter(&input, &rs, ReduceOp::Sum).unwrap();
        let g_in = Tensor::full([2], r, (Kind::Int64, Device::Cpu));
        let g_out = Tensor::zeros([2 * world as i64], (Kind::Int64, Device::Cpu));
        c.all_gather(&g_in, &g_out).unwrap();
        let b = Tensor::full([4], r + 7.0, (Kind::BFloat16, Device::Cpu));
        c.broadcast(&b, 2).unwrap();
        c.barrier().unwrap();
        (c.rank(), sum, max, values(&rs), values(&g_out), values(&b))
    });
    for (rank, sum, max, rs, gathered, b) in out {
        // Σ_r (i + r) = 3i + 3.
        assert_eq!(sum, (0..6).map(|i| 3.0 * i as f64 + 3.0).collect::<Vec<_>>());
        assert_eq!(max, vec![2.0, 0.0, 20.0]);
        // Σ_r i(r+1) = 6i; rank k keeps elements 2k, 2k+1.
        let want: Vec<f64> = (2 * rank..2 * rank + 2).map(|i| 6.0 * i as f64).collect();
        assert_eq!(rs, want, "rank {rank}");
        assert_eq!(gathered, vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0]);
        assert_eq!(b, vec![9.0; 4]);
    }
}

#[test]
fn a_rank_that_leaves_fails_the_others_promptly() {
    let t0 = Instant::now();
    let out = on_ranks(2, |c| {
        if c.rank() == 1 {
            // Leaves without taking part: its sockets close with the communicator.
            drop(c);
            return None;
        }
        let t = Tensor::ones([3], (Kind::Float, Device::Cpu));
        Some(c.all_reduce(&t, ReduceOp::Sum))
    });
    let err = out[0].as_ref().unwrap().as_ref().unwrap_err();
    assert!(
        matches!(err, DistError::PeerLost { .. }) && err.to_string().contains("rank 1 exited"),
        "{err}"
    );
    // The socket's error is kept as the source.
    let io = std::error::Error::source(err).and_then(|s| s.downcast_ref::<std::io::Error>());
    assert!(io.is_some(), "{err:?}");
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn mismatched_collectives_are_reported() {
    let out = on_ranks(2, |c| {
        let t = Tensor::ones([3], (Kind::Float, Device::Cpu));
        if c.rank() == 0 {
            c.all_reduce(&t, ReduceOp::Sum).err().map(|e| e.to_string())
        } else {
            let bigger = Tensor::ones([4], (Kind::Float, Device::Cpu));
            c.all_reduce(&bigger, ReduceOp::Sum).err().map(|e| e.to_string())
        }
    });
    let msg = out[0].clone().unwrap();
    assert!(msg.contains("out of step") && msg.contains("rank 1"), "{msg}");
}
