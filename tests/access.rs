//! Access control through a running server (real loopback sockets, the
//! crate's own client, raw HTTP): keys, signed URLs, address rules, the
//! second-publisher policy across workers, and slowed failures.

mod support;

use sluice::auth::{sign, SignScheme};
use sluice::config::{FileConfig, PublisherPolicy};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;

fn rules(toml: &str) -> sluice::auth::AccessConfig {
    FileConfig::parse(toml).expect("valid rules").access()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// GET `path` over HTTP; the status code and whether a body began.
fn http_get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Enough for the head (and the FLV header when streaming).
    while !got.windows(4).any(|w| w == b"\r\n\r\n") || got.len() < 64 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&got);
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {head:?}"));
    (status, got)
}

fn publish_code(addr: SocketAddr, app: &str, name: &str) -> String {
    let mut c = TestClient::connect(addr, app);
    c.publish(name).1
}

fn play_code(addr: SocketAddr, app: &str, name: &str) -> String {
    let mut c = TestClient::connect(addr, app);
    let id = c.create_stream();
    c.session_mut().play(id, name);
    c.flush();
    match c.wait_for("play status", |e| {
        matches!(e, sluice::protocol::client::ClientEvent::Status { code, .. }
            if code.starts_with("NetStream.Play.") && code != "NetStream.Play.Reset")
    }) {
        sluice::protocol::client::ClientEvent::Status { code, .. } => code,
        _ => unreachable!(),
    }
}

#[test]
fn publish_needs_the_right_key() {
    let server = start_server(1, |c| {
        c.access = rules("[app.live.publish]\nkeys = [\"right\"]\n");
    });
    let addr = server.local_addr();
    assert_eq!(
        publish_code(addr, "live", "cam?key=right"),
        "NetStream.Publish.Start"
    );
    assert_eq!(
        publish_code(addr, "live", "cam2?key=wrong"),
        "NetStream.Publish.Unauthorized"
    );
    assert_eq!(
        publish_code(addr, "live", "cam3"),
        "NetStream.Publish.Unauthorized"
    );
    // OBS style: the key in the server URL (the app's query).
    assert_eq!(
        publish_code(addr, "live?key=right", "cam4"),
        "NetStream.Publish.Start"
    );
    // Other applications and playing are open.
    assert_eq!(publish_code(addr, "open", "cam"), "NetStream.Publish.Start");
    assert_eq!(play_code(addr, "live", "cam"), "NetStream.Play.Start");
    server.stop();
}

#[test]
fn a_denied_client_can_try_again_on_the_same_connection() {
    let server = start_server(1, |c| {
        c.access = rules("[app.live.publish]\nkeys = [\"right\"]\n");
    });
    let mut c = TestClient::connect(server.local_addr(), "live");
    assert_eq!(
        c.publish("cam?key=nope").1,
        "NetStream.Publish.Unauthorized"
    );
    assert_eq!(c.publish("cam?key=right").1, "NetStream.Publish.Start");
    server.stop();
}

#[test]
fn signed_urls_hmac_and_md5() {
    let server = start_server(1, |c| {
        c.access = rules(
            "[app.live.publish]\nsign = { secret = \"pub-secret\" }\n\
             [app.live.play]\nsign = { secret = \"nodemedia2017privatekey\", scheme = \"md5\" }\n",
        );
    });
    let addr = server.local_addr();
    let now = unix_now();
    let good = sign(
        SignScheme::HmacSha256,
        "pub-secret",
        "live",
        "cam",
        now + 60,
    );
    let expired = sign(SignScheme::HmacSha256, "pub-secret", "live", "cam", now - 1);
    let other_name = sign(SignScheme::HmacSha256, "pub-secret", "live", "x", now + 60);
    assert_eq!(
        publish_code(addr, "live", &format!("cam?sign={expired}")),
        "NetStream.Publish.Unauthorized"
    );
    assert_eq!(
        publish_code(addr, "live", &format!("cam?sign={other_name}")),
        "NetStream.Publish.Unauthorized"
    );
    let mut publisher = TestClient::connect(addr, "live");
    assert_eq!(
        publisher.publish(&format!("cam?sign={good}")).1,
        "NetStream.Publish.Start"
    );
    let play = sign(
        SignScheme::Md5,
        "nodemedia2017privatekey",
        "live",
        "cam",
        now + 60,
    );
    let play_expired = sign(
        SignScheme::Md5,
        "nodemedia2017privatekey",
        "live",
        "cam",
        now - 10,
    );
    assert_eq!(
        play_code(addr, "live", &format!("cam?sign={play}")),
        "NetStream.Play.Start"
    );
    assert_eq!(
        play_code(addr, "live", &format!("cam?sign={play_expired}")),
        "NetStream.Play.Failed"
    );
    assert_eq!(play_code(addr, "live", "cam"), "NetStream.Play.Failed");
    // HTTP-FLV: 401 without credentials, 403 with wrong ones, 200 with a
    // valid signature.
    let http = server.addrs().http.unwrap();
    assert_eq!(http_get(http, "/live/cam.flv").0, 401);
    assert_eq!(
        http_get(http, &format!("/live/cam.flv?sign={play_expired}")).0,
        403
    );
    let (status, body) = http_get(http, &format!("/live/cam.flv?sign={play}"));
    assert_eq!(status, 200);
    assert!(
        body.windows(3).any(|w| w == b"FLV"),
        "an FLV header follows"
    );
    server.stop();
}

#[test]
fn address_rules_are_checked_first() {
    let server = start_server(1, |c| {
        c.access = rules(
            "[app.live.publish]\nallow = [\"10.0.0.0/8\", \"::1\"]\nkeys = [\"k\"]\n\
             [app.live.play]\ndeny = [\"127.0.0.0/8\"]\n\
             [app.lan.publish]\nallow = [\"127.0.0.1/32\", \"2001:db8::/32\"]\n",
        );
    });
    let addr = server.local_addr();
    // 127.0.0.1 is not in 10.0.0.0/8 nor ::1: the right key does not help.
    assert_eq!(
        publish_code(addr, "live", "cam?key=k"),
        "NetStream.Publish.Unauthorized"
    );
    assert_eq!(play_code(addr, "live", "cam"), "NetStream.Play.Failed");
    let http = server.addrs().http.unwrap();
    assert_eq!(http_get(http, "/live/cam.flv").0, 403);
    assert_eq!(publish_code(addr, "lan", "cam"), "NetStream.Publish.Start");
    server.stop();
}

#[test]
fn key_file_is_reloaded() {
    let dir = std::env::temp_dir().join(format!("sluice-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("keys");
    std::fs::write(&file, "first\n").unwrap();
    let toml = format!(
        "[app.live.publish]\nkey_file = {:?}\n",
        file.display().to_string()
    );
    let server = start_server(1, |c| c.access = rules(&toml));
    let addr = server.local_addr();
    assert_eq!(
        publish_code(addr, "live", "a?key=first"),
        "NetStream.Publish.Start"
    );
    std::fs::write(&file, "second\n").unwrap();
    assert_eq!(server.reload_access(), Ok(1));
    assert_eq!(
        publish_code(addr, "live", "b?key=second"),
        "NetStream.Publish.Start"
    );
    assert_eq!(
        publish_code(addr, "live", "c?key=first"),
        "NetStream.Publish.Unauthorized"
    );
    let _ = std::fs::remove_dir_all(&dir);
    server.stop();
}

#[test]
fn repeated_failures_are_answered_more_slowly() {
    let server = start_server(1, |c| {
        c.access = rules("[app.live.publish]\nkeys = [\"k\"]\n");
    });
    let addr = server.local_addr();
    let timed = |name: &str| {
        let mut c = TestClient::connect(addr, "live");
        let id = c.create_stream();
        let t = Instant::now();
        c.session_mut().publish(id, name);
        c.flush();
        c.wait_status("NetStream.Publish.Unauthorized");
        t.elapsed()
    };
    let first = timed("a?key=x");
    let second = timed("b?key=x");
    let third = timed("c?key=x");
    assert!(first < Duration::from_millis(200), "first: {first:?}");
    assert!(second >= Duration::from_millis(200), "second: {second:?}");
    assert!(third >= Duration::from_millis(450), "third: {third:?}");
    // Meanwhile the right key still works at once? It is delayed only when
    // wrong: a right key is answered now.
    let t = Instant::now();
    assert_eq!(
        publish_code(addr, "live", "d?key=k"),
        "NetStream.Publish.Start"
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    server.stop();
}

/// Connects clients until one lands on `worker`; misses are kept in `spares`.
fn connect_on_worker(
    server: &sluice::server::RunningServer,
    worker: usize,
    spares: &mut Vec<TestClient>,
) -> TestClient {
    for _ in 0..64 {
        let before = server.connections_per_worker();
        let c = TestClient::connect(server.local_addr(), "live");
        let after = server.connections_per_worker();
        if after[worker] > before[worker] {
            return c;
        }
        spares.push(c);
    }
    panic!("no connection landed on worker {worker} in 64 tries");
}

fn second_publisher(policy: PublisherPolicy) {
    let server = start_server(2, |c| c.second_publisher = policy);
    let mut spares = Vec::new();
    let mut player = connect_on_worker(&server, 0, &mut spares);
    player.play("cam");
    let mut first = connect_on_worker(&server, 0, &mut spares);
    let mut second = connect_on_worker(&server, 1, &mut spares);
    let (id1, code) = first.publish("cam");
    assert_eq!(code, "NetStream.Publish.Start");
    let mut synth = Synth::new(10, 2000);
    for f in synth.headers() {
        first.send(id1, &f);
    }
    for f in synth.next() {
        first.send(id1, &f);
    }
    let (id2, code) = second.publish("cam");
    match policy {
        PublisherPolicy::Reject => {
            assert_eq!(code, "NetStream.Publish.BadName");
            assert!(!first.closed);
        }
        PublisherPolicy::Replace => {
            assert_eq!(code, "NetStream.Publish.Start");
            // The first publisher is closed by its own worker.
            let deadline = Instant::now() + WAIT;
            while !first.closed && Instant::now() < deadline {
                first.read_once(Duration::from_millis(100));
            }
            assert!(first.closed, "the replaced publisher was disconnected");
            // The player gets the new publisher's stream (its frames are
            // numbered from 50, the first's stopped below 10).
            let mut synth = Synth::new(10, 2000);
            for f in synth.headers() {
                second.send(id2, &f);
            }
            for _ in 0..50 {
                synth.next();
            }
            for _ in 0..20 {
                for f in synth.next() {
                    second.send(id2, &f);
                }
            }
            let got = player.collect_media(WAIT, |g| has_video(g, 69));
            assert!(has_video(&got, 69), "the player receives the new publisher");
        }
    }
    server.stop();
}

#[test]
fn second_publisher_rejected_across_workers() {
    second_publisher(PublisherPolicy::Reject);
}

#[test]
fn second_publisher_replaces_across_workers() {
    second_publisher(PublisherPolicy::Replace);
}
