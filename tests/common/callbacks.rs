//! A callback server for the hooks tests: answers every request 200
//! (allowed) and keeps each request's body.

use super::api;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// Bodies are form-encoded: `call=play&app=live&name=cam&addr=...`.
pub struct Callbacks {
    pub addr: SocketAddr,
    pub bodies: Arc<Mutex<Vec<String>>>,
}

impl Callbacks {
    pub fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let got = bodies.clone();
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                let got = got.clone();
                thread::spawn(move || {
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while let Ok(n) = s.read(&mut chunk) {
                        if n == 0 {
                            break;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        let Some(i) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let len: usize = text[..i]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .and_then(|v| v.trim().parse().ok())
                            })
                            .unwrap_or(0);
                        if buf.len() >= i + 4 + len {
                            got.lock()
                                .unwrap()
                                .push(text[i + 4..i + 4 + len].to_owned());
                            let _ = s.write_all(
                                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                            );
                            break;
                        }
                    }
                });
            }
        });
        Callbacks { addr, bodies }
    }

    /// The callback URL, `http://ADDR/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The first body that contains `needle`, waiting up to `limit`.
    pub fn wait_for(&self, limit: Duration, needle: &str) -> String {
        api::wait_for(limit, &format!("a callback with {needle}"), || {
            self.bodies
                .lock()
                .unwrap()
                .iter()
                .find(|b| b.contains(needle))
                .cloned()
        })
    }
}
