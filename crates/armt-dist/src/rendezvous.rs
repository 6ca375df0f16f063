//! The rendezvous at `MASTER_ADDR:port`: rank 0 listens, every other rank connects and says who
//! it is, and rank 0 answers each with the same payload (NCCL's unique id; nothing for TCP).
//! The connections stay open: the TCP backend moves its data over them, and the NCCL backend
//! watches them to notice a rank that died.

use crate::launch::LaunchEnv;
use crate::DistError;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const MAGIC: u32 = 0x4152_4d54; // "ARMT"
const VERSION: u32 = 1;

pub(crate) struct Rendezvous {
    /// Rank 0: a connection to each other rank (`links[r]`, none for itself). Other ranks: one
    /// connection, to rank 0 (`links[0]`).
    pub links: Vec<Option<TcpStream>>,
    /// What rank 0 handed out.
    pub payload: Vec<u8>,
}

impl Rendezvous {
    /// Joins the group; `make_payload` runs on rank 0 only. Gives up after `timeout`.
    pub fn connect(
        env: &LaunchEnv,
        timeout: Duration,
        make_payload: impl FnOnce() -> Result<Vec<u8>, DistError>,
    ) -> Result<Self, DistError> {
        let deadline = Instant::now() + timeout;
        let mut links: Vec<Option<TcpStream>> = (0..env.world_size).map(|_| None).collect();
        if env.rank == 0 {
            let payload = make_payload()?;
            if env.world_size > 1 {
                let listener =
                    TcpListener::bind(("0.0.0.0", env.rendezvous_port)).map_err(|e| DistError::Io {
                        context: format!(
                            "rank 0: listening for the other ranks on port {}",
                            env.rendezvous_port
                        ),
                        source: e,
                    })?;
                accept_all(&listener, env, deadline, &payload, &mut links)?;
            }
            Ok(Self { links, payload })
        } else {
            let mut s = connect_with_retry(env, deadline)?;
            let hello = [MAGIC, VERSION, env.rank as u32, env.world_size as u32];
            let bytes: Vec<u8> = hello.iter().flat_map(|x| x.to_le_bytes()).collect();
            write_all(&mut s, &bytes, 0, env.rank)?;
            let mut head = [0u8; 8];
            read_exact(&mut s, &mut head, 0, env.rank)?;
            let magic = u32::from_le_bytes(head[..4].try_into().unwrap());
            let len = u32::from_le_bytes(head[4..].try_into().unwrap()) as usize;
            if magic != MAGIC {
                return Err(DistError::Launch(format!(
                    "rank {}: {}:{} is not an armt rendezvous",
                    env.rank, env.master_addr, env.rendezvous_port
                )));
            }
            let mut payload = vec![0u8; len];
            read_exact(&mut s, &mut payload, 0, env.rank)?;
            links[0] = Some(s);
            Ok(Self { links, payload })
        }
    }
}

fn accept_all(
    listener: &TcpListener,
    env: &LaunchEnv,
    deadline: Instant,
    payload: &[u8],
    links: &mut [Option<TcpStream>],
) -> Result<(), DistError> {
    let io = |context: String| move |e: std::io::Error| DistError::Io { context, source: e };
    listener
        .set_nonblocking(true)
        .map_err(io("rank 0: rendezvous socket".into()))?;
    let mut joined = 1;
    while joined < env.world_size {
        let (mut s, addr) = match listener.accept() {
            Ok(x) => x,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let missing: Vec<String> = (1..env.world_size)
                        .filter(|&r| links[r].is_none())
                        .map(|r| r.to_string())
                        .collect();
                    return Err(DistError::PeerLost {
                        rank: 0,
                        reason: format!(
                            "rank(s) {} did not join the rendezvous on port {} in time",
                            missing.join(", "),
                            env.rendezvous_port
                        ),
                        source: None,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(io("rank 0: accepting a rank".into())(e)),
        };
        s.set_nonblocking(false)
            .map_err(io(format!("rank 0: connection from {addr}")))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io(format!("rank 0: connection from {addr}")))?;
        let mut hello = [0u8; 16];
        if read_exact(&mut s, &mut hello, usize::MAX, 0).is_err() {
            continue; // not a rank (a port scan, a stale client): ignore it
        }
        let word = |i: usize| u32::from_le_bytes(hello[4 * i..4 * i + 4].try_into().unwrap());
        if word(0) != MAGIC || word(1) != VERSION {
            continue;
        }
        let (rank, world) = (word(2) as usize, word(3) as usize);
        if world != env.world_size {
            return Err(DistError::Launch(format!(
                "rank {rank} (from {addr}) says the world size is {world}, rank 0 says {}",
                env.world_size
            )));
        }
        if rank == 0 || rank >= world || links[rank].is_some() {
            return Err(DistError::Launch(format!(
                "two processes claim rank {rank} (one from {addr}): check RANK / SLURM_PROCID"
            )));
        }
        let mut reply = Vec::with_capacity(8 + payload.len());
        reply.extend(MAGIC.to_le_bytes());
        reply.extend((payload.len() as u32).to_le_bytes());
        reply.extend(payload);
        write_all(&mut s, &reply, rank, 0)?;
        links[rank] = Some(s);
        joined += 1;
    }
    Ok(())
}

fn connect_with_retry(env: &LaunchEnv, deadline: Instant) -> Result<TcpStream, DistError> {
    let mut last = String::from("no address");
    loop {
        let addrs: Vec<SocketAddr> = match (env.master_addr.as_str(), env.rendezvous_port).to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => {
                last = format!("resolving MASTER_ADDR={}: {e}", env.master_addr);
                Vec::new()
            }
        };
        for a in &addrs {
            match TcpStream::connect_timeout(a, Duration::from_secs(2)) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => last = format!("{a}: {e}"),
            }
        }
        if Instant::now() > deadline {
            return Err(DistError::PeerLost {
                rank: env.rank,
                reason: format!(
                    "could not reach rank 0's rendezvous at {}:{} ({last})",
                    env.master_addr, env.rendezvous_port
                ),
                source: None,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The error for a failed read or write on the link to `peer`, seen from `me`.
pub(crate) fn link_error(e: std::io::Error, peer: usize, me: usize) -> DistError {
    let reason = match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            format!("rank {peer} did not answer in time (it may be stuck or far behind)")
        }
        ErrorKind::UnexpectedEof
        | ErrorKind::ConnectionReset
        | ErrorKind::BrokenPipe
        | ErrorKind::ConnectionAborted => {
            format!("rank {peer} exited or was killed")
        }
        _ => format!("link to rank {peer}: {e}"),
    };
    DistError::PeerLost {
        rank: me,
        reason,
        source: Some(e),
    }
}

pub(crate) fn write_all(s: &mut TcpStream, bytes: &[u8], peer: usize, me: usize) -> Result<(), DistError> {
    s.write_all(bytes).map_err(|e| link_error(e, peer, me))
}

pub(crate) fn read_exact(s: &mut TcpStream, buf: &mut [u8], peer: usize, me: usize) -> Result<(), DistError> {
    s.read_exact(buf).map_err(|e| link_error(e, peer, me))
}
