//! HTTP callbacks against a real callback server started by the test
//! (std only): allow, deny, rename by 3xx Location, 500, a timeout, a 1 MB
//! body, an endless head, a 10 KB Location, a redirect to another server, JSON (SRS-style) hooks, notifications, and the
//! proof that a hung callback delays only its own connection.
//!
//! The callback server decides by the stream name's prefix: `allow`,
//! `deny` (403), `rename` (302 to `renamed`), `err` (500), `hang` (no answer
//! for 30 s), `big` (200 with a 1 MB body), `head` (an endless header).

mod common;
mod support;

use sluice::config::FileConfig;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use support::*;

/// The callback server: every request body it got, in order.
struct Callbacks {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<String>>>,
}

impl Callbacks {
    fn start() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let g = g.clone();
                thread::spawn(move || serve(s, &g));
            }
        });
        Callbacks { addr, got }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn bodies(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until a body containing `needle` arrived.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(b) = self.bodies().into_iter().find(|b| b.contains(needle)) {
                return b;
            }
            assert!(
                Instant::now() < deadline,
                "no callback with {needle:?}: {:?}",
                self.bodies()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

fn serve(mut s: TcpStream, got: &Mutex<Vec<String>>) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let body = loop {
        let Ok(n) = s.read(&mut chunk) else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(i) = text.find("\r\n\r\n") {
            let len: usize = text[..i]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= i + 4 + len {
                break text[i + 4..i + 4 + len].to_owned();
            }
        }
    };
    got.lock().unwrap().push(body.clone());
    // The stream name: `name=` in a form, `"stream":"` in JSON.
    let name = body
        .split('&')
        .find_map(|kv| kv.strip_prefix("name="))
        .map(str::to_owned)
        .or_else(|| {
            let i = body.find("\"stream\":\"")? + 10;
            Some(body[i..].split('"').next()?.to_owned())
        })
        .filter(|n| !n.is_empty())
        .or_else(|| {
            // on_connect has no stream name: decide by `who=` in the app's query.
            body.split('&')
                .find_map(|kv| kv.strip_prefix("who="))
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let json = body.starts_with('{');
    let _ = if name.starts_with("allow") {
        let b = if json { "{\"code\":0}" } else { "ok" };
        write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )
    } else if name.starts_with("deny") && json {
        write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{{\"code\":403}}"
        )
    } else if name.starts_with("deny") {
        write!(s, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    } else if name.starts_with("rename") {
        write!(
            s,
            "HTTP/1.1 302 Found\r\nLocation: renamed\r\nContent-Length: 0\r\n\r\n"
        )
    } else if name.starts_with("longloc") {
        let loc = "x".repeat(10 * 1024);
        write!(
            s,
            "HTTP/1.1 302 Found\r\nLocation: {loc}\r\nContent-Length: 0\r\n\r\n"
        )
    } else if name.starts_with("remote") {
        write!(
            s,
            "HTTP/1.1 302 Found\r\nLocation: rtmp://elsewhere/live/x\r\nContent-Length: 0\r\n\r\n"
        )
    } else if name.starts_with("err") {
        write!(s, "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
    } else if name.starts_with("hang") {
        thread::sleep(Duration::from_secs(30));
        Ok(())
    } else if name.starts_with("big") {
        let body = vec![b'x'; 1 << 20];
        write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .and_then(|_| s.write_all(&body))
    } else if name.starts_with("head") {
        let _ = write!(s, "HTTP/1.1 200 OK\r\n");
        let line = format!("X-Filler: {}\r\n", "y".repeat(1000));
        (0..1024).try_for_each(|_| s.write_all(line.as_bytes()))
    } else {
        write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    };
}

fn server_with(hooks: &str, workers: usize) -> sluice::server::RunningServer {
    let f = FileConfig::parse(hooks).expect("valid hooks");
    start_server(workers, |c| c.access = f.access())
}

fn publish_code(addr: SocketAddr, name: &str) -> (TestClient, u32, String, Duration) {
    let mut c = TestClient::connect(addr, "live");
    let t = Instant::now();
    let (id, code) = c.publish(name);
    (c, id, code, t.elapsed())
}

#[test]
fn publish_callbacks_allow_deny_rename_fail() {
    let cb = Callbacks::start();
    let server = server_with(
        &format!(
            "[app.live.hooks]\non_publish = \"{}\"\non_publish_done = \"{}\"\ntimeout = 1\n",
            cb.url(),
            cb.url()
        ),
        2,
    );
    let addr = server.local_addr();
    let (mut allowed, id, code, _) = publish_code(addr, "allow-1?token=abc");
    assert_eq!(code, "NetStream.Publish.Start");
    let form = cb.wait_for("name=allow-1");
    assert!(form.starts_with("call=publish&app=live&name=allow-1&addr=127.0.0.1&clientid="));
    assert!(form.contains("&tcurl=rtmp%3A%2F%2F"), "{form}");
    assert!(form.ends_with("&token=abc"), "{form}");

    assert_eq!(
        publish_code(addr, "deny-1").2,
        "NetStream.Publish.Unauthorized"
    );
    assert_eq!(
        publish_code(addr, "err-1").2,
        "NetStream.Publish.Unauthorized"
    );
    let (_, _, code, took) = publish_code(addr, "big-1");
    assert_eq!(code, "NetStream.Publish.Start", "a 1 MB body is not read");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(
        publish_code(addr, "head-1").2,
        "NetStream.Publish.Unauthorized",
        "a head over the limit denies"
    );
    assert_eq!(
        publish_code(addr, "longloc-1").2,
        "NetStream.Publish.Unauthorized",
        "a 10 KB Location is no stream name"
    );
    assert_eq!(
        publish_code(addr, "remote-1").2,
        "NetStream.Publish.Unauthorized",
        "redirects to another server are not followed"
    );
    let (_, _, code, took) = publish_code(addr, "hang-1");
    assert_eq!(code, "NetStream.Publish.Unauthorized");
    assert!(
        took >= Duration::from_millis(900),
        "timed out after {took:?}"
    );

    // A redirect renames: players of live/renamed get the stream.
    let mut player = TestClient::connect(addr, "live");
    player.play("renamed");
    let (mut renamed, rid, code, _) = publish_code(addr, "rename-1");
    assert_eq!(code, "NetStream.Publish.Start");
    let mut synth = Synth::new(10, 1000);
    for f in synth.headers() {
        renamed.send(rid, &f);
    }
    for _ in 0..12 {
        for f in synth.next() {
            renamed.send(rid, &f);
        }
    }
    let got = player.collect_media(WAIT, |g| has_video(g, 11));
    assert!(has_video(&got, 11), "the renamed stream plays: {got:?}");

    allowed.delete_stream(id);
    cb.wait_for("call=publish_done&app=live&name=allow-1");
    server.stop();
}

#[test]
fn hung_callback_delays_only_its_own_connection() {
    let cb = Callbacks::start();
    // One worker: the hung request's connection shares the loop with
    // everything else.
    let server = server_with(
        &format!(
            "[app.live.hooks]\non_publish = \"{}\"\ntimeout = 6\n",
            cb.url()
        ),
        1,
    );
    let addr = server.local_addr();
    let mut player = TestClient::connect(addr, "live");
    player.play("allow-main");
    let (mut publisher, id, code, _) = publish_code(addr, "allow-main");
    assert_eq!(code, "NetStream.Publish.Start");
    let mut synth = Synth::new(10, 1000);
    for f in synth.headers() {
        publisher.send(id, &f);
    }

    // Ask for a publish whose callback hangs, without waiting.
    let mut hung = TestClient::connect(addr, "live");
    let hid = hung.create_stream();
    hung.session_mut().publish(hid, "hang-2");
    hung.flush();
    let hung_since = Instant::now();
    cb.wait_for("name=hang-2");

    // Meanwhile: frames flow to the player and other publishes and plays
    // are answered at once.
    let mut last = 0;
    for round in 0..3 {
        let t = Instant::now();
        for _ in 0..10 {
            for f in synth.next() {
                publisher.send(id, &f);
            }
        }
        last += 10;
        let want = last - 1;
        let got = player.collect_media(WAIT, |g| has_video(g, want));
        assert!(has_video(&got, want), "round {round}: frames stopped");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "round {round}: frames took {:?} while a callback hangs",
            t.elapsed()
        );
        let (_, _, code, took) = publish_code(addr, &format!("allow-other-{round}"));
        assert_eq!(code, "NetStream.Publish.Start");
        assert!(took < Duration::from_secs(1), "publish took {took:?}");
        let mut p = TestClient::connect(addr, "live");
        let t = Instant::now();
        p.play("allow-main");
        assert!(t.elapsed() < Duration::from_secs(1));
    }
    assert!(
        hung_since.elapsed() < Duration::from_secs(5),
        "the checks ran while the callback was hanging"
    );
    // The hung one is denied when its callback times out.
    hung.wait_status("NetStream.Publish.Unauthorized");
    let waited = hung_since.elapsed();
    assert!(waited >= Duration::from_millis(5500), "{waited:?}");
    server.stop();
}

#[test]
fn play_callbacks_over_rtmp_and_http() {
    let cb = Callbacks::start();
    let server = server_with(
        &format!(
            "[app.live.hooks]\non_play = \"{}\"\non_play_done = \"{}\"\ntimeout = 1\n",
            cb.url(),
            cb.url()
        ),
        1,
    );
    let addr = server.local_addr();
    let mut c = TestClient::connect(addr, "live");
    c.play("allow-p");
    let mut d = TestClient::connect(addr, "live");
    let id = d.create_stream();
    d.session_mut().play(id, "deny-p");
    d.flush();
    d.wait_status("NetStream.Play.Failed");
    let http = server.addrs().http.unwrap();
    let status = |path: &str| {
        let mut s = TcpStream::connect(http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n])
            .split(' ')
            .nth(1)
            .unwrap()
            .to_owned()
    };
    assert_eq!(status("/live/deny-h.flv?wait=1"), "403");
    assert_eq!(status("/live/err-h.flv?wait=1"), "403");
    assert_eq!(status("/live/allow-h.flv?wait=1"), "200");
    cb.wait_for("call=play&app=live&name=allow-h");
    drop(c);
    cb.wait_for("call=play_done&app=live&name=allow-p");
    server.stop();
}

#[test]
fn json_hooks_srs_style() {
    let cb = Callbacks::start();
    let server = server_with(
        &format!(
            "[app.live.hooks]\non_publish = \"{}\"\njson = true\ntimeout = 1\n",
            cb.url()
        ),
        1,
    );
    let addr = server.local_addr();
    assert_eq!(
        publish_code(addr, "allow-j?x=1").2,
        "NetStream.Publish.Start"
    );
    let body = cb.wait_for("\"stream\":\"allow-j\"");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["action"], "on_publish");
    assert_eq!(v["app"], "live");
    assert_eq!(v["param"], "?x=1");
    assert_eq!(
        publish_code(addr, "deny-j").2,
        "NetStream.Publish.Unauthorized",
        "code 403 in a 200 denies"
    );
    server.stop();
}

#[test]
fn callbacks_run_after_keys() {
    let cb = Callbacks::start();
    let server = server_with(
        &format!(
            "[app.live.publish]\nkeys = [\"k\"]\n[app.live.hooks]\non_publish = \"{}\"\n",
            cb.url()
        ),
        1,
    );
    let addr = server.local_addr();
    assert_eq!(
        publish_code(addr, "allow-k?key=wrong").2,
        "NetStream.Publish.Unauthorized"
    );
    assert!(
        cb.bodies().is_empty(),
        "no callback for a request the keys refuse"
    );
    assert_eq!(
        publish_code(addr, "allow-k?key=k").2,
        "NetStream.Publish.Start"
    );
    server.stop();
}

#[test]
fn connect_callback_accepts_or_rejects() {
    let cb = Callbacks::start();
    let server = server_with(
        &format!(
            "[app.live.hooks]\non_connect = \"{}\"\non_done = \"{}\"\ntimeout = 1\n",
            cb.url(),
            cb.url()
        ),
        1,
    );
    let addr = server.local_addr();
    let mut ok = TestClient::try_connect(addr, "live?who=allow-c").expect("allowed");
    let form = cb.wait_for("call=connect&app=live&name=&addr=127.0.0.1");
    assert!(form.ends_with("&who=allow-c"), "{form}");
    assert_eq!(ok.publish("cam").1, "NetStream.Publish.Start");
    let refused = TestClient::try_connect(addr, "live?who=deny-c")
        .err()
        .expect("refused");
    assert!(
        refused.contains("NetConnection.Connect.Rejected"),
        "{refused}"
    );
    let refused = TestClient::try_connect(addr, "live?who=hang-c")
        .err()
        .expect("refused");
    assert!(
        refused.contains("NetConnection.Connect.Rejected"),
        "{refused}"
    );
    // Applications without on_connect connect at once.
    assert!(TestClient::try_connect(addr, "other").is_ok());
    drop(ok);
    cb.wait_for("call=done&app=live");
    server.stop();
}

/// Video on demand asks the same `on_play` callback as live streams, with
/// the file's path as the stream name: a file the callback denies is
/// refused over RTMP (Play.Failed) and HTTP (403), one it allows plays.
#[test]
fn play_callbacks_guard_files_too() {
    let cb = Callbacks::start();
    let dir = common::TestDir::new();
    for name in ["allow-v.flv", "deny-v.flv"] {
        std::fs::copy(common::clip(), dir.join(name)).unwrap();
    }
    let server = server_with(
        &format!(
            "[app.vod.vod]\ndir = {:?}\n[app.vod.hooks]\non_play = \"{}\"\ntimeout = 1\n",
            dir.path().display().to_string(),
            cb.url()
        ),
        1,
    );
    let addr = server.local_addr();
    let mut c = TestClient::connect(addr, "vod");
    c.play("allow-v.flv");
    cb.wait_for("call=play&app=vod&name=allow-v.flv");
    let mut d = TestClient::connect(addr, "vod");
    let id = d.create_stream();
    d.session_mut().play(id, "deny-v.flv");
    d.flush();
    d.wait_status("NetStream.Play.Failed");
    cb.wait_for("call=play&app=vod&name=deny-v.flv");
    let http = server.addrs().http.unwrap();
    let status = |path: &str| {
        let mut s = TcpStream::connect(http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n])
            .split(' ')
            .nth(1)
            .unwrap()
            .to_owned()
    };
    assert_eq!(status("/vod/deny-v.flv"), "403");
    assert_eq!(status("/vod/allow-v.flv"), "200");
    server.stop();
}
