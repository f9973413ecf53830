//! Running Sluice as a node behind load balancers (docs/deploying.md), each
//! against the real component:
//!
//! * the PROXY protocol, v1 and v2, from HAProxy (Debian's package) in
//!   front of the RTMP, RTMPS and HTTP listeners: access rules, the API,
//!   callbacks and logs see the client, not the balancer; a header from an
//!   untrusted peer, or none from a trusted one, closes the connection;
//! * `/healthz` and `/readyz`, without the API token;
//! * `--log-format json`: every line one object, fields parsed;
//! * systemd's readiness protocol (`READY=1`, `STOPPING=1`) on a socket of
//!   the test's own, as systemd would listen;
//! * a restart without cutting streams: SIGUSR2 to a running `sluice`
//!   starts the binary again beside it on the same ports (`--takeover`),
//!   the old process hands over, ffmpeg keeps publishing and its players
//!   keep playing, a player reaching the new process gets the stream from
//!   the old one, and an Enhanced RTMP publisher that announced Reconnect
//!   moves to the new process at a keyframe without a frame lost.

mod common;
mod support;

use common::callbacks::Callbacks;
use common::haproxy::{Haproxy, ProxyVersion, Route};
use common::{
    api, assert_same_from_first_keyframe, clip, clip_packets, free_port, packets, play_ffmpeg,
    publish_ffmpeg, send_signal, tail, wait_timeout, Server, TestDir,
};
use sluice::protocol::client::{ClientConfig, ClientEvent};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};
use support::{tcp_from, Received, Synth, TestClient, WAIT};

const CLIENT: [u8; 4] = [127, 0, 0, 5];
const OTHER_CLIENT: [u8; 4] = [127, 0, 0, 1];
const BALANCER: &str = "127.0.0.2";

fn ip(a: [u8; 4]) -> IpAddr {
    IpAddr::from(a)
}

/// Publishes the synthetic stream's headers and one GOP on `app/name`:
/// every player joining after gets them from the GOP cache at once.
fn publish_one_gop(rtmp: SocketAddr, app: &str, name: &str) -> TestClient {
    let mut publisher = TestClient::connect(rtmp, app);
    let (id, _) = publisher.publish(name);
    let mut synth = Synth::new(10, 200);
    for f in synth.headers() {
        publisher.send(id, &f);
    }
    for _ in 0..10 {
        for f in synth.next() {
            publisher.send(id, &f);
        }
    }
    publisher
}

/// Plays `live/cam` through `lb` from `from` and checks the cached GOP
/// arrives.
fn play_via(lb: SocketAddr, from: IpAddr) -> TestClient {
    let mut p = TestClient::connect_from(lb, from, "live");
    p.play("cam");
    let got = p.collect_media(WAIT, |got| support::has_video(got, 9));
    assert!(
        got.iter().any(|r| matches!(
            r,
            Received::Video {
                index: 0,
                key: true,
                ..
            }
        )),
        "the cached GOP from its keyframe: {got:?}"
    );
    p
}

/// The API's clients (on its own listener, `api`) at `ip`.
fn clients_at(api_addr: SocketAddr, ip: &str) -> Vec<serde_json::Value> {
    api::clients(api_addr)
        .into_iter()
        .filter(|c| {
            c["address"]
                .as_str()
                .is_some_and(|a| a.starts_with(&format!("{ip}:")))
        })
        .collect()
}

/// Sends `bytes` on `s` and waits (≤ 5 s) for the server to close it.
fn closed_after(mut s: TcpStream, bytes: &[u8]) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return true,
            Ok(_) => {}
        }
    }
    false
}

/// A self-signed certificate for 127.0.0.1, as files in `dir`.
fn self_signed(dir: &TestDir) -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("rcgen");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert.display().to_string(), key.display().to_string())
}

// ---------------------------------------------------------------------------------------
// PROXY protocol, from HAProxy
// ---------------------------------------------------------------------------------------

#[test]
fn haproxy_v1_and_v2_name_the_client_for_rules_api_callbacks_and_logs() {
    let dir = TestDir::new();
    let hooks = Callbacks::start();
    let config = dir.join("sluice.toml");
    // `live` is played only from 127.0.0.5; `open` by anyone.
    std::fs::write(
        &config,
        format!(
            "proxy_protocol = [\"{BALANCER}\"]\n\
             [app.live.play]\nallow = [\"127.0.0.5\"]\n\
             [app.live.hooks]\non_play = \"{}\"\n",
            hooks.url()
        ),
    )
    .unwrap();
    let (cert, key) = self_signed(&dir);
    let api_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let rtmps: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let server = Server::start(
        1,
        &[
            "-c",
            &config.display().to_string(),
            "--api",
            &api_addr.to_string(),
            "--rtmps",
            &rtmps.to_string(),
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
    );
    let rtmp: SocketAddr = ([127, 0, 0, 1], server.port()).into();
    let http = server.http_addr();
    let route = |to, version| Route {
        to,
        version,
        source: BALANCER,
    };
    let lb = Haproxy::start(&[
        route(rtmp, ProxyVersion::V1),
        route(rtmp, ProxyVersion::V2),
        route(http, ProxyVersion::V1),
        route(http, ProxyVersion::V2),
        route(rtmps, ProxyVersion::V2),
    ]);
    // A publisher straight to Sluice, from an untrusted address with no
    // header: plain connections work as ever.
    let _publisher = publish_one_gop(rtmp, "live", "cam");

    for (i, version) in [(0, 1), (1, 2)] {
        // Allowed: the rule sees 127.0.0.5, not the balancer's 127.0.0.2.
        let player = play_via(lb.addr(i), ip(CLIENT));
        let listed = clients_at(api_addr, "127.0.0.5");
        assert!(
            listed
                .iter()
                .any(|c| c["state"] == "playing" && c["protocol"] == "rtmp"),
            "v{version}: the API lists the client's address: {:?}",
            api::clients(api_addr)
        );
        assert!(
            clients_at(api_addr, BALANCER).is_empty(),
            "v{version}: nobody listed at the balancer's address: {:?}",
            api::clients(api_addr)
        );
        let body = hooks.wait_for(WAIT, "addr=127.0.0.5");
        assert!(body.contains("call=play"), "{body}");
        drop(player);
    }
    let log = server.log();
    assert!(
        log.contains("play start stream=live/cam conn=") && log.contains("peer=127.0.0.5:"),
        "the log names the client:\n{}",
        tail(&log, 30)
    );

    // Denied: through the same balancer, from another address.
    let mut denied = TestClient::connect_from(lb.addr(1), ip(OTHER_CLIENT), "live");
    let id = denied.create_stream();
    denied.session_mut().play(id, "cam");
    denied.wait_status("NetStream.Play.Failed");
    api::wait_until(WAIT, "the denial logged with the client's address", || {
        server
            .log()
            .lines()
            .any(|l| l.contains("play denied stream=live/cam") && l.contains("peer=127.0.0.1:"))
    });

    // HTTP-FLV through both versions: allowed from 127.0.0.5, 403 from
    // 127.0.0.1 (the balancer's address is in neither).
    for i in [2, 3] {
        let mut s = tcp_from(lb.addr(i), ip(CLIENT));
        s.write_all(b"GET /live/cam.flv HTTP/1.1\r\nHost: sluice\r\n\r\n")
            .unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200", "route {i}");
        api::wait_until(WAIT, "an HTTP-FLV player listed at 127.0.0.5", || {
            clients_at(api_addr, "127.0.0.5")
                .iter()
                .any(|c| c["protocol"] == "http" && c["state"] == "playing")
        });
        drop(s);
        let mut s = tcp_from(lb.addr(i), ip(OTHER_CLIENT));
        s.write_all(b"GET /live/cam.flv HTTP/1.1\r\nHost: sluice\r\n\r\n")
            .unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 403", "route {i}");
        // Health checks through the balancer work too.
        let (status, body) = api::request_text(lb.addr(i), "GET", "/healthz", "");
        assert_eq!((status, body.contains("ok")), (200, true), "route {i}");
    }

    // RTMPS: the v2 header comes before the TLS ClientHello; an ffmpeg
    // player (from 127.0.0.1) waits for a stream of `open`, listed at its
    // own address as an RTMPS client.
    let out = dir.join("rtmps.flv");
    let mut ffmpeg = play_ffmpeg(
        &format!("rtmps://127.0.0.1:{}/open/cam", lb.addr(4).port()),
        &out,
    );
    api::wait_until(WAIT, "the RTMPS player listed at 127.0.0.1", || {
        clients_at(api_addr, "127.0.0.1")
            .iter()
            .any(|c| c["protocol"] == "rtmps" && c["state"] == "playing")
    });
    ffmpeg.kill();

    // A header from an address not trusted: closed, and said why.
    let from_client = tcp_from(rtmp, ip(OTHER_CLIENT));
    assert!(closed_after(
        from_client,
        b"PROXY TCP4 198.51.100.7 127.0.0.1 5000 1935\r\n\x03"
    ));
    // A trusted address with no header: closed too.
    let from_balancer = tcp_from(rtmp, BALANCER.parse().unwrap());
    assert!(closed_after(from_balancer, &[0x03; 1537]));
    api::wait_until(WAIT, "both refusals logged", || {
        let log = server.log();
        log.contains("a PROXY protocol header from 127.0.0.1, which is not a trusted load balancer")
            && log.contains("from load balancer 127.0.0.2: no PROXY protocol header")
    });
    // The API's own listener takes no header, even from the balancer.
    let mut s = tcp_from(api_addr, BALANCER.parse().unwrap());
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(!lb.log().contains("SSL handshake failure"), "{}", lb.log());
}

// ---------------------------------------------------------------------------------------
// Health, logs, systemd
// ---------------------------------------------------------------------------------------

#[test]
fn healthz_and_readyz_answer_without_the_api_token() {
    let api_addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let server = Server::start(
        2,
        &["--api-token", "s3cret", "--api", &api_addr.to_string()],
    );
    for addr in [server.http_addr(), api_addr] {
        let (status, body) = api::request(addr, "GET", "/healthz", "");
        assert_eq!((status, &body["status"]), (200, &serde_json::json!("ok")));
        let (status, body) = api::request(addr, "GET", "/readyz", "");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "ready");
        assert_eq!(body["workers_listening"], 2);
        assert_eq!(body["draining"], false);
    }
    // The API itself still wants its token.
    assert_eq!(api::request(api_addr, "GET", "/api/server", "").0, 401);
}

/// `GET path` on a kept-alive connection: the status line and whether the
/// server closes the connection after the answer.
fn ask_kept(s: &mut TcpStream, path: &str) -> (String, bool) {
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        let n = s.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(i) = text.find("\r\n\r\n") {
            let len: usize = text[..i]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse().ok())
                })
                .unwrap_or(0);
            if buf.len() >= i + 4 + len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.lines().next().unwrap_or("").to_owned();
    let closes = text.to_ascii_lowercase().contains("connection: close");
    (status, closes)
}

#[test]
fn readyz_fails_on_the_old_process_once_it_hands_over() {
    let handover: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let server = Server::start(1, &["--handover", &handover.to_string()]);
    let http = server.http_addr();
    let addr: SocketAddr = ([127, 0, 0, 1], server.port()).into();
    // A publisher keeps the old process serving through the handover.
    let _publisher = publish_one_gop(addr, "live", "cam");
    // A balancer's kept-alive check connection to the old process.
    let mut check = TcpStream::connect(http).unwrap();
    let (status, closes) = ask_kept(&mut check, "/readyz");
    assert_eq!((status.as_str(), closes), ("HTTP/1.1 200 OK", false));

    send_signal(server.pid().unwrap(), "USR2");
    let _successor = Successor::from_log(&server);
    api::wait_until(WAIT, "the old process handing over", || {
        server.log().contains("handing over to a successor")
    });
    // The old process: not ready, and this answer is the connection's last.
    let (status, closes) = ask_kept(&mut check, "/readyz");
    assert_eq!(
        (status.as_str(), closes),
        ("HTTP/1.1 503 Service Unavailable", true)
    );
    // New connections reach the successor, which is ready.
    let (code, body) = api::request(http, "GET", "/readyz", "");
    assert_eq!(code, 200, "{body}");
}

#[test]
fn json_logs_are_one_object_per_line_with_the_fields_parsed() {
    let server = Server::start(1, &["--log-format", "json"]);
    let addr: SocketAddr = ([127, 0, 0, 1], server.port()).into();
    let publisher = publish_one_gop(addr, "live", "cam");
    drop(publisher);
    api::wait_until(WAIT, "the publisher's close logged", || {
        server.log().contains("publish stop stream=live/cam")
    });
    let log = server.log();
    let mut seen = 0;
    for line in log.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v[key].is_string(), "{key} in {line}");
        }
        assert!(v["fields"].is_object(), "{line}");
        let message = v["message"].as_str().unwrap();
        if message.starts_with("publish start stream=live/cam") {
            seen += 1;
            assert_eq!(v["fields"]["stream"], "live/cam", "{line}");
            assert!(v["fields"]["conn"].is_u64(), "{line}");
            assert!(
                v["fields"]["peer"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("127.0.0.1:")),
                "{line}"
            );
            assert_eq!(v["level"], "INFO");
            assert_eq!(v["target"], "sluice::server::rtmp_conn");
        }
    }
    assert_eq!(seen, 1, "the publish line, once:\n{log}");
}

#[test]
fn systemd_hears_ready_once_listening_and_stopping_on_sigterm() {
    let dir = TestDir::new();
    let socket_path = dir.join("notify");
    let notify = UnixDatagram::bind(&socket_path).unwrap();
    notify.set_read_timeout(Some(WAIT)).unwrap();
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--rtmp", &format!("127.0.0.1:{port}"), "--no-http"])
        .args(["--workers", "1"])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 within 10 s");
    assert_eq!(&buf[..n], b"READY=1");
    // Ready means listening: a connection is accepted at once.
    TcpStream::connect(("127.0.0.1", port)).expect("listening when READY=1 came");
    send_signal(child.id(), "TERM");
    let n = notify.recv(&mut buf).expect("STOPPING=1 on SIGTERM");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = wait_timeout(&mut child, WAIT).expect("exits");
    assert!(status.success(), "{status}");
}

// ---------------------------------------------------------------------------------------
// Restart without cutting streams
// ---------------------------------------------------------------------------------------

/// The successor a `sluice` started on SIGUSR2 (its pid from the old
/// process's log): stopped (SIGTERM, then SIGKILL) when dropped, so a failed
/// test leaves no process behind.
struct Successor(u32);

impl Successor {
    fn from_log(server: &Server) -> Successor {
        let pid = api::wait_for(WAIT, "the successor's pid in the log", || {
            let log = server.log();
            let at = log.find("started successor pid=")? + "started successor pid=".len();
            log[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        });
        Successor(pid)
    }

    fn alive(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}", self.0)).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.0))
                .unwrap_or_default()
                .contains(") Z ")
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        if self.alive() {
            send_signal(self.0, "TERM");
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.alive() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            if self.alive() {
                send_signal(self.0, "KILL");
            }
        }
    }
}

/// Waits (≤ `limit`) for the harness's process to exit; its status.
fn wait_exit(server: &mut Server, limit: Duration) -> std::process::ExitStatus {
    server.wait_exit(limit).unwrap_or_else(|| {
        panic!(
            "the old process still runs {limit:?} later; log:\n{}",
            tail(&server.log(), 40)
        )
    })
}

#[test]
fn sigusr2_hands_over_while_ffmpeg_publishes_and_players_play_on() {
    let handover: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut server = Server::start(2, &["--handover", &handover.to_string()]);
    let url = server.url("live", "cam");
    let dir = server.dir().path().to_path_buf();
    let mut publisher = publish_ffmpeg(&url, clip());
    server.wait_live("live/cam");
    let before = dir.join("before.flv");
    let mut player_before = play_ffmpeg(&url, &before);
    server.wait_players("live/cam", 1);
    thread::sleep(Duration::from_secs(1));

    send_signal(server.pid().unwrap(), "USR2");
    let successor = Successor::from_log(&server);
    api::wait_until(WAIT, "the old process handing over", || {
        server
            .log()
            .contains("handover: serving this process's streams")
    });
    // The ports are the successor's now: a player arriving gets the stream
    // from the old process through the handover listener.
    let after = dir.join("after.flv");
    let mut player_after = play_ffmpeg(&url, &after);
    let stream = api::wait_for(WAIT, "the stream pulled by the successor", || {
        server
            .stream("live/cam")
            .filter(|s| s["publisher"]["protocol"] == "handover")
    });
    assert_eq!(stream["players"]["total"], 1, "{stream}");

    // ffmpeg publishes to the end of its clip without an error; both
    // players get every packet from their first keyframe.
    let end = publisher.wait_or_stop(Duration::from_secs(30));
    publisher.assert_success(&end);
    for (player, file) in [(&mut player_before, &before), (&mut player_after, &after)] {
        let end = player.wait_or_stop(Duration::from_secs(20));
        player.assert_success(&end);
        let received = packets(file);
        let join = assert_same_from_first_keyframe(clip_packets(), &received);
        eprintln!("{}: {join:?}", file.display());
    }
    // The stream ended: the old process has nothing left and exits, long
    // before its handover deadline; the successor serves on.
    let status = wait_exit(&mut server, Duration::from_secs(15));
    assert!(status.success(), "{status}");
    assert!(successor.alive());
    let (code, body) = api::request(server.http_addr(), "GET", "/readyz", "");
    assert_eq!(code, 200, "the successor is ready: {body}");
    // The successor notices its predecessor is gone and stops pulling.
    api::wait_until(WAIT, "the successor's handover rule gone", || {
        server
            .log()
            .contains("takeover: the predecessor exited: no more pulls from it")
    });
    let log = server.log();
    assert!(
        log.contains("takeover: streams not live here are pulled"),
        "{}",
        tail(&log, 60)
    );
}

#[test]
fn an_enhanced_rtmp_publisher_moves_to_the_successor_at_a_keyframe_with_no_frame_lost() {
    let handover: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut server = Server::start(1, &["--handover", &handover.to_string()]);
    let addr: SocketAddr = ([127, 0, 0, 1], server.port()).into();

    // The project's own client: Enhanced RTMP, capsEx Reconnect.
    let enhanced = |addr: SocketAddr| {
        let mut config = ClientConfig::new("live", format!("rtmp://{addr}/live"));
        config.fourcc_list = vec!["avc1".into()];
        config.caps_ex = Some(0x01);
        TestClient::connect_with(addr, config)
    };
    let mut publisher = enhanced(addr);
    let (id, _) = publisher.publish("cam");
    let synth = Synth::new(15, 300);
    let headers = synth.headers();
    for f in &headers {
        publisher.send(id, f);
    }
    let mut sent = 0u32;
    let synth = std::cell::RefCell::new(synth);
    let send_gop = |p: &mut TestClient, id: u32, sent: &mut u32| {
        for _ in 0..15 {
            for f in synth.borrow_mut().next() {
                p.send(id, &f);
            }
            *sent += 1;
            thread::sleep(Duration::from_millis(10));
        }
    };
    send_gop(&mut publisher, id, &mut sent);
    let mut old_player = TestClient::connect(addr, "live");
    old_player.play("cam");

    send_signal(server.pid().unwrap(), "USR2");
    let _successor = Successor::from_log(&server);
    // A player on the successor, fed from the old process at first.
    api::wait_until(WAIT, "the old process handing over", || {
        server
            .log()
            .contains("handover: serving this process's streams")
    });
    let mut new_player = TestClient::connect(addr, "live");
    new_player.play("cam");
    // The reconnect request comes while frames flow on.
    let deadline = Instant::now() + WAIT;
    let mut asked = false;
    while !asked && Instant::now() < deadline {
        send_gop(&mut publisher, id, &mut sent);
        while let Some(ev) = publisher.next_event(Duration::from_millis(1)) {
            asked |= matches!(&ev, ClientEvent::Status { code, .. }
                if code == "NetConnection.Connect.ReconnectRequest");
        }
    }
    assert!(asked, "the publisher was asked to reconnect");
    // Reconnect as Enhanced RTMP says: a new connection (the successor has
    // the port), publish; frames go on meanwhile on the old connection;
    // at the next keyframe, headers and that keyframe on the new one,
    // nothing more on the old, which closes.
    let mut moved = enhanced(addr);
    let (new_id, _) = moved.publish("cam");
    send_gop(&mut publisher, id, &mut sent);
    let switch_at = sent;
    assert_eq!(switch_at % 15, 0, "the next frame is a keyframe");
    for f in &headers {
        moved.send(new_id, f);
    }
    send_gop(&mut moved, new_id, &mut sent);
    drop(publisher);
    for _ in 0..2 {
        send_gop(&mut moved, new_id, &mut sent);
    }
    let last = sent - 1;

    let got = new_player.collect_media(WAIT, |got| support::has_video(got, last));
    let videos: Vec<(u32, bool)> = got
        .iter()
        .filter_map(|r| match r {
            Received::Video { index, key, .. } => Some((*index, *key)),
            _ => None,
        })
        .collect();
    assert!(
        videos.first().is_some_and(|v| v.1),
        "starts at a keyframe: {videos:?}"
    );
    for w in videos.windows(2) {
        assert_eq!(
            w[1].0,
            w[0].0 + 1,
            "every video frame once, across the switch at {switch_at}: {videos:?}"
        );
    }
    assert_eq!(videos.last().map(|v| v.0), Some(last));
    assert!(
        videos.iter().any(|v| v.0 < switch_at) && videos.iter().any(|v| v.0 >= switch_at),
        "the player saw both sides of the switch: {videos:?}"
    );
    // The player on the old process got every frame up to the switch.
    let got = old_player.collect_media(WAIT, |got| support::has_video(got, switch_at - 1));
    assert!(support::has_video(&got, switch_at - 1));
    let log = server.log();
    assert!(
        log.contains("publish takeover stream=live/cam"),
        "{}",
        tail(&log, 60)
    );
    let status = wait_exit(&mut server, Duration::from_secs(15));
    assert!(status.success(), "{status}");
}
