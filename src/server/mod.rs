//! The server: sockets, workers and the stream registry (everything the
//! sans-IO [`crate::protocol`] core leaves out).
//!
//! [`Server::bind`] opens, for each worker, one SO_REUSEPORT listener per
//! address (RTMP, HTTP, the API's own if set; the kernel spreads connections
//! across workers), and [`Server::run`] runs one thread per worker until
//! [`ShutdownHandle::shutdown`].

mod access;
pub mod api;
pub mod base;
pub mod batch_file;
mod conn;
mod console;
mod ctx;
pub mod disk;
#[cfg(feature = "fault-injection")]
mod fault;
pub mod flv;
pub mod health;
pub mod hls;
pub mod http;
mod http_conn;
mod pacing;
mod player;
pub mod proxy;
pub mod queue;
pub mod record;
mod relay_conn;
pub mod relays;
mod rendition;
mod rtmp_conn;
pub mod shared;
pub mod stats;
pub mod stream;
mod tasks;
pub mod tls;
mod transport;
pub mod vod;
pub mod worker;

use crate::config::Config;
use shared::ListenerKind;
use shared::{Shared, WorkerHandle};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use stream::{GopLimits, Registry, MAX_WORKERS};
use worker::{Listener, Worker};

/// Pending connections the kernel queues per listener before accept.
const LISTEN_BACKLOG: i32 = 1024;

/// Where a server listens.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub rtmp: SocketAddr,
    pub http: Option<SocketAddr>,
    pub api: Option<SocketAddr>,
    pub rtmps: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
}

/// A bound, not yet running server.
pub struct Server {
    shared: Arc<Shared>,
    workers: Vec<Worker>,
    addrs: Addrs,
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

    /// Hands over to a successor sharing the ports (see
    /// [`Shared::hand_over`]): this process stops accepting, serves what it
    /// has until it ends or `handover_timeout`, then stops.
    pub fn hand_over(&self) {
        self.0.hand_over();
    }

    /// Loads the TLS certificate files again: new handshakes get the new
    /// certificates, established connections keep going. Returns how many
    /// certificates are loaded.
    pub fn reload_tls(&self) -> Result<usize, String> {
        match &self.0.tls {
            Some(t) => t.resolver.reload(),
            None => Err("TLS is not configured".into()),
        }
    }

    /// Reads the access key files again (`key_file`); on an error the old
    /// keys stay. Returns how many keys the files hold.
    pub fn reload_access(&self) -> Result<usize, String> {
        self.0.auth.reload()
    }

    /// Reloads when a certificate file changed since the last load.
    pub fn reload_tls_if_changed(&self) -> Option<Result<usize, String>> {
        self.0
            .tls
            .as_ref()
            .and_then(|t| t.resolver.reload_if_changed())
    }
}

/// A server running on its own threads (for tests and embedding).
pub struct RunningServer {
    shared: Arc<Shared>,
    handle: ShutdownHandle,
    threads: Vec<JoinHandle<()>>,
    addrs: Addrs,
}

impl RunningServer {
    /// The RTMP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs.rtmp
    }

    /// Every address the server listens on.
    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    /// Process-wide counters.
    pub fn stats(&self) -> &stats::Stats {
        &self.shared.stats
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

    /// Reloads the TLS certificates (what SIGHUP does in the binary).
    pub fn reload_tls(&self) -> Result<usize, String> {
        self.handle.reload_tls()
    }

    /// Reads the access key files again (what SIGHUP does in the binary).
    pub fn reload_access(&self) -> Result<usize, String> {
        self.handle.reload_access()
    }

    /// Shuts down and waits for every worker to return (and the disk
    /// threads to finish the recordings' files).
    pub fn stop(self) {
        self.handle.shutdown();
        for t in self.threads {
            let _ = t.join();
        }
        finish_disk_work(&self.shared);
    }
}

/// Fails when another process listens on `addr`. SO_REUSEPORT would let a
/// second Sluice (same user) share the port silently and receive half the
/// connections; an exclusive bind first turns that into "address in use".
fn check_port_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))
}

fn listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("{addr}: {e}")))?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// One listener per worker on `addr` (port 0: the first picks, the rest
/// share). `takeover`: another Sluice may hold the port already (the one
/// this process replaces, `--takeover`): share it rather than refuse.
fn listeners(
    addr: SocketAddr,
    n: usize,
    takeover: bool,
) -> io::Result<(SocketAddr, Vec<std::net::TcpListener>)> {
    if !takeover {
        check_port_free(addr)?;
    }
    let first = listener(addr)?;
    let local = first.local_addr()?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(listener(local)?);
    }
    Ok((local, all))
}

impl Server {
    /// Binds every listener of every worker.
    pub fn bind(mut config: Config) -> io::Result<Server> {
        config.workers = config.workers.clamp(1, MAX_WORKERS);
        let n = config.workers;
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let auth = crate::auth::Auth::new(config.access.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = if config.rtmps_addr.is_some() || config.https_addr.is_some() {
            let resolver = Arc::new(
                tls::CertResolver::new(config.tls.clone())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            );
            Some(shared::Tls {
                config: tls::server_config(resolver.clone()),
                resolver,
            })
        } else {
            None
        };
        type Listeners = Vec<(ListenerKind, bool, std::net::TcpListener)>;
        let mut per_worker: Vec<Listeners> = (0..n).map(|_| Vec::new()).collect();
        let mut bind = |addr: Option<SocketAddr>, kind, tls| -> io::Result<Option<SocketAddr>> {
            let Some(addr) = addr else { return Ok(None) };
            let (local, ls) = listeners(addr, n, config.takeover)?;
            for (w, l) in per_worker.iter_mut().zip(ls) {
                w.push((kind, tls, l));
            }
            Ok(Some(local))
        };
        let rtmp =
            bind(Some(config.rtmp_addr), ListenerKind::Rtmp, false)?.unwrap_or(config.rtmp_addr);
        let http = bind(config.http_addr, ListenerKind::Http, false)?;
        let api = bind(config.api_addr, ListenerKind::Api, false)?;
        let rtmps = bind(config.rtmps_addr, ListenerKind::Rtmp, true)?;
        let https = bind(config.https_addr, ListenerKind::Http, true)?;
        let addrs = Addrs {
            rtmp,
            http,
            api,
            rtmps,
            https,
        };
        let mut polls = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..n {
            let poll = mio::Poll::new()?;
            let waker = mio::Waker::new(poll.registry(), worker::WAKER)?;
            handles.push(WorkerHandle::new(waker));
            polls.push(poll);
        }
        let registry = Registry::new(
            config.chunk_size,
            GopLimits {
                max_bytes: config.gop_cache_bytes,
                max_frames: config.gop_cache_frames,
            },
        )
        .with_hls(Arc::new(hls::HlsPolicy::new(&config)));
        let relays = relays::Relays::new(&config).map_err(io::Error::other)?;
        let hooks = if auth.has_hooks() {
            Some(Arc::new(crate::hooks::Pool::new(
                crate::hooks::HOOK_THREADS,
            )?))
        } else {
            None
        };
        let disk = Arc::new(disk::DiskPool::new(config.disk_threads, disk::DISK_QUEUE)?);
        let recordings = record::Recordings::new(&config, &auth, disk.clone(), hooks.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let shared = Arc::new(Shared::new(
            config, registry, handles, tls, auth, hooks, relays, disk, recordings,
        ));
        let workers = polls
            .into_iter()
            .zip(per_worker)
            .enumerate()
            .map(|(i, (poll, ls))| {
                let ls = ls
                    .into_iter()
                    .map(|(kind, tls, l)| Listener {
                        kind,
                        tls,
                        handover: false,
                        socket: mio::net::TcpListener::from_std(l),
                    })
                    .collect();
                Worker::new(i, poll, ls, shared.clone())
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Server {
            shared,
            workers,
            addrs,
        })
    }

    /// The RTMP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs.rtmp
    }

    /// Every address the server listens on.
    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shared.clone())
    }

    /// Starts one thread per worker and returns at once.
    pub fn spawn(self) -> io::Result<RunningServer> {
        let handle = self.shutdown_handle();
        let addrs = self.addrs;
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
            addrs,
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
        finish_disk_work(&running.shared);
        Ok(())
    }
}

/// After the workers stopped (their recordings were finished): waits for
/// the disk threads to write, sync and close what was queued, within
/// [`crate::config::SHUTDOWN_DISK_TIMEOUT`].
fn finish_disk_work(shared: &Shared) {
    let pending = shared.disk.pending();
    if pending == 0 {
        return;
    }
    log::info!("waiting for {pending} disk jobs (recordings being finished)");
    if !shared.disk.wait_idle(crate::config::SHUTDOWN_DISK_TIMEOUT) {
        log::warn!(
            "{} disk jobs still pending after {:?}: exiting without them (a recording may miss its tail or, for FLV, its index)",
            shared.disk.pending(),
            crate::config::SHUTDOWN_DISK_TIMEOUT
        );
    }
}
