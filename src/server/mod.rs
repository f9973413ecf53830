//! The server: sockets, workers and the stream registry (everything the
//! sans-IO [`crate::protocol`] core leaves out).
//!
//! [`Server::bind`] opens one SO_REUSEPORT listener per worker on the same
//! address (the kernel spreads connections across them), [`Server::run`]
//! runs one thread per worker until [`ShutdownHandle::shutdown`].

pub mod queue;
pub mod stream;
pub mod worker;

use crate::config::Config;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use stream::{GopLimits, Registry, MAX_WORKERS};
use worker::{Shared, Worker, WorkerHandle};

/// Pending connections the kernel queues per listener before accept.
const LISTEN_BACKLOG: i32 = 1024;

/// A bound, not yet running server.
pub struct Server {
    shared: Arc<Shared>,
    workers: Vec<Worker>,
    local_addr: SocketAddr,
}

/// Stops a running server gracefully; cheap to clone and send to threads.
#[derive(Clone)]
pub struct ShutdownHandle(Arc<Shared>);

impl ShutdownHandle {
    /// Stop accepting, tell publishers and players the stream ended, flush,
    /// and let every worker return.
    pub fn shutdown(&self) {
        self.0.shutdown();
    }
}

/// A server running on its own threads (for tests and embedding).
pub struct RunningServer {
    shared: Arc<Shared>,
    handle: ShutdownHandle,
    threads: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl RunningServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// Connections each worker holds now.
    pub fn connections_per_worker(&self) -> Vec<usize> {
        self.shared
            .workers
            .iter()
            .map(|w| w.connections.load(Ordering::Relaxed))
            .collect()
    }

    /// Panics caught while handling a connection since start. Each closed
    /// that one connection (logged with its state) instead of the worker;
    /// anything but 0 is a bug.
    pub fn panics(&self) -> u64 {
        self.shared.panics.load(Ordering::Relaxed)
    }

    /// Streams the registry knows (live, or awaited by players).
    pub fn stream_count(&self) -> usize {
        self.shared.registry.len()
    }

    /// Shuts down and waits for every worker to return.
    pub fn stop(self) {
        self.handle.shutdown();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

impl Server {
    /// Binds one listener per worker (port 0 picks a free port shared by all).
    pub fn bind(mut config: Config) -> io::Result<Server> {
        config.workers = config.workers.clamp(1, MAX_WORKERS);
        let first = listener(config.rtmp_addr)?;
        let local_addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..config.workers {
            listeners.push(listener(local_addr)?);
        }
        let mut polls = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..config.workers {
            let poll = mio::Poll::new()?;
            let waker = mio::Waker::new(poll.registry(), mio::Token(usize::MAX - 2))?;
            handles.push(WorkerHandle {
                waker,
                inbox: Mutex::new(Vec::new()),
                connections: AtomicUsize::new(0),
            });
            polls.push(poll);
        }
        let registry = Registry::new(
            config.chunk_size,
            GopLimits {
                max_bytes: config.gop_cache_bytes,
                max_frames: config.gop_cache_frames,
            },
        );
        let shared = Arc::new(Shared {
            config,
            registry,
            workers: handles,
            shutdown: AtomicBool::new(false),
            next_conn_id: AtomicU64::new(1),
            panics: AtomicU64::new(0),
        });
        let workers = polls
            .into_iter()
            .zip(listeners)
            .enumerate()
            .map(|(i, (poll, l))| {
                Worker::new(i, poll, mio::net::TcpListener::from_std(l), shared.clone())
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Server {
            shared,
            workers,
            local_addr,
        })
    }

    /// The address the listeners are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shared.clone())
    }

    /// Starts one thread per worker and returns at once.
    pub fn spawn(self) -> io::Result<RunningServer> {
        let handle = self.shutdown_handle();
        let local_addr = self.local_addr;
        let threads = self
            .workers
            .into_iter()
            .enumerate()
            .map(|(i, w)| {
                std::thread::Builder::new()
                    .name(format!("sluice-worker-{i}"))
                    .spawn(move || w.run())
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(RunningServer {
            shared: self.shared.clone(),
            handle,
            threads,
            local_addr,
        })
    }

    /// Runs until shut down.
    pub fn run(self) -> io::Result<()> {
        let running = self.spawn()?;
        for t in running.threads {
            if t.join().is_err() {
                log::error!("a worker thread panicked");
            }
        }
        Ok(())
    }
}
