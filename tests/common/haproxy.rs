//! HAProxy (Debian's `haproxy` package) as a real TCP load balancer in front
//! of Sluice, for the PROXY protocol tests: one foreground HAProxy per test,
//! every file in its own [`TestDir`], under `timeout -s KILL` like every peer.
//!
//! Each [`Route`] is one `frontend` on a fresh loopback port forwarding
//! (`mode tcp`) to one Sluice address, with `send-proxy` (v1) or
//! `send-proxy-v2` (v2), its connections to Sluice made from `source`
//! (a loopback address such as 127.0.0.2, so a test can tell the balancer's
//! address from its clients').

use super::{free_port, require_tool, send_signal, tail, wait_timeout, TestDir};
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Hard deadline for an HAProxy process (it runs under `timeout -s KILL`).
const HAPROXY_HARD_TIMEOUT: Duration = Duration::from_secs(600);
const HAPROXY_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Which PROXY protocol version a route sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
}

/// One frontend → one backend server.
#[derive(Debug, Clone)]
pub struct Route {
    pub to: SocketAddr,
    pub version: ProxyVersion,
    /// The address HAProxy connects to Sluice from.
    pub source: &'static str,
}

/// A running HAProxy; the frontends' ports are in the order of the routes.
pub struct Haproxy {
    wrapper: Option<Child>,
    ports: Vec<u16>,
    log_path: PathBuf,
    dir: TestDir,
}

fn config(routes: &[(u16, Route)]) -> String {
    let mut c = String::from(
        "# Written by tests/common/haproxy.rs for one test.\n\
         global\n    log stderr format short local0 info\n\
         defaults\n    mode tcp\n    log global\n    option tcplog\n\
         \x20   timeout connect 5s\n    timeout client 120s\n    timeout server 120s\n",
    );
    for (i, (port, r)) in routes.iter().enumerate() {
        let send = match r.version {
            ProxyVersion::V1 => "send-proxy",
            ProxyVersion::V2 => "send-proxy-v2",
        };
        c.push_str(&format!(
            "frontend f{i}\n    bind 127.0.0.1:{port}\n    default_backend b{i}\n\
             backend b{i}\n    server s{i} {} {send} source {}\n",
            r.to, r.source
        ));
    }
    c
}

impl Haproxy {
    /// Starts HAProxy with one frontend per route and waits (≤ 10 s) until
    /// each accepts a TCP connection. The frontends' ports are picked free
    /// and then bound by HAProxy, so another test can take one in between:
    /// HAProxy then fails to bind and exits, while the connection check
    /// reaches the other listener. A start whose HAProxy is gone shortly
    /// after is tried again on fresh ports (three tries).
    pub fn start(routes: &[Route]) -> Haproxy {
        for _ in 0..2 {
            let mut h = Self::start_once(routes);
            thread::sleep(Duration::from_millis(300));
            let exited = h.wrapper.as_mut().and_then(|w| w.try_wait().ok().flatten());
            let Some(status) = exited else {
                return h;
            };
            // Reaped: nothing for Drop to stop.
            h.wrapper = None;
            eprintln!(
                "haproxy exited after its start ({status}), ports {:?} taken? trying again; log:\n{}",
                h.ports,
                tail(&h.log(), 10)
            );
        }
        Self::start_once(routes)
    }

    fn start_once(routes: &[Route]) -> Haproxy {
        let binary = require_tool("haproxy");
        require_tool("timeout");
        let dir = TestDir::new();
        let conf = dir.join("haproxy.cfg");
        let log_path = dir.join("haproxy.log");
        let ports: Vec<u16> = routes.iter().map(|_| free_port()).collect();
        let numbered: Vec<(u16, Route)> =
            ports.iter().copied().zip(routes.iter().cloned()).collect();
        fs::write(&conf, config(&numbered)).expect("write haproxy.cfg");
        let log = fs::File::create(&log_path).expect("create haproxy log");
        let wrapper = Command::new("timeout")
            .arg("--foreground")
            .arg("-s")
            .arg("KILL")
            .arg(format!("{}s", HAPROXY_HARD_TIMEOUT.as_secs()))
            .arg(&binary)
            .arg("-db") // foreground, no daemon
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {binary}: {e}"));
        let mut h = Haproxy {
            wrapper: Some(wrapper),
            ports,
            log_path,
            dir,
        };
        let deadline = Instant::now() + HAPROXY_READY_TIMEOUT;
        for &port in &h.ports.clone() {
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            loop {
                if let Some(status) = h.wrapper.as_mut().and_then(|w| w.try_wait().ok().flatten()) {
                    panic!(
                        "haproxy exited during startup with {status}; log:\n{}",
                        tail(&h.log(), 40)
                    );
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "haproxy does not listen on {addr}; log:\n{}",
                    tail(&h.log(), 40)
                );
                thread::sleep(Duration::from_millis(25));
            }
        }
        h
    }

    /// The frontend address of route `i`.
    pub fn addr(&self, i: usize) -> SocketAddr {
        ([127, 0, 0, 1], self.ports[i]).into()
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn dir(&self) -> &TestDir {
        &self.dir
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut w) = self.wrapper.take() {
            // SIGALRM makes `timeout` SIGKILL HAProxy, then exit.
            send_signal(w.id(), "ALRM");
            if wait_timeout(&mut w, Duration::from_secs(3)).is_none() {
                let _ = w.kill();
                let _ = w.wait();
            }
        }
        if thread::panicking() {
            eprintln!("[harness] haproxy log:\n{}", tail(&self.log(), 40));
        }
    }
}
