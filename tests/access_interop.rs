//! Access control with the real binary and ffmpeg: a config file (`-c`)
//! with a publish key and signed play URLs; ffmpeg publishing with the
//! right and a wrong key, players over RTMP and HTTP-FLV with a valid and
//! an expired signature; `--check-config` naming the line of an error; no
//! key in the log; and a key file re-read on SIGHUP.

mod common;
mod support;

use common::*;
use sluice::auth::{sign, SignScheme};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const KEY: &str = "pub-key-0123456789";
const SECRET: &str = "play-secret-abcdef";

fn refused(peer: &mut Peer) -> String {
    let status = peer.wait(Duration::from_secs(15)).unwrap_or_else(|| {
        panic!(
            "{} was not refused (still running); stderr:\n{}",
            peer.name(),
            peer.stderr()
        )
    });
    let stderr = peer.stderr();
    assert!(
        !status.success(),
        "{} should have failed: exit {status}, stderr:\n{stderr}",
        peer.name()
    );
    stderr
}

#[test]
fn ffmpeg_with_keys_and_signed_urls() {
    let _ = (clip(), clip_packets());
    let dir = TestDir::new();
    let config = dir.join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "# flags given on the command line (--rtmp, --http) override these\n\
             rtmp = \"127.0.0.1:1\"\n\
             [app.live.publish]\nkeys = [\"{KEY}\"]\n\
             [app.live.play]\nsign = {{ secret = \"{SECRET}\" }}\n"
        ),
    )
    .unwrap();
    let server = Server::start(2, &["-c", config.to_str().unwrap()]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = sign(SignScheme::HmacSha256, SECRET, "live", "cam", now + 300);
    let expired = sign(SignScheme::HmacSha256, SECRET, "live", "cam", now - 5);
    let url = server.url("live", "cam");

    let mut player = play_ffmpeg(
        &format!("{url}?sign={good}"),
        &server.dir().join("player.flv"),
    );
    let mut http_player = play_ffmpeg(
        &format!("{}?sign={good}&wait=1", server.http_url("live", "cam")),
        &server.dir().join("http.flv"),
    );
    let mut expired_player = play_ffmpeg(
        &format!("{url}?sign={expired}"),
        &server.dir().join("expired.flv"),
    );
    let mut unsigned_http = play_ffmpeg(
        &format!("{}?wait=1", server.http_url("live", "cam")),
        &server.dir().join("unsigned.flv"),
    );
    let mut wrong = publish_ffmpeg(&format!("{url}?key=not-the-key"), clip());
    refused(&mut wrong);
    refused(&mut expired_player);
    let stderr = refused(&mut unsigned_http);
    assert!(stderr.contains("401"), "HTTP 401: {stderr}");
    // The refused peers are gone; the two signed players wait for the stream.
    api::wait_until(
        Duration::from_secs(10),
        "only the signed players left",
        || {
            let clients = api::clients(server.http_addr());
            let peers: Vec<_> = clients.iter().filter(|c| c["state"] != "http").collect();
            peers.len() == 2
                && peers
                    .iter()
                    .all(|c| c["state"] == "playing" && c["stream"] == "live/cam")
        },
    );

    let mut publisher = publish_ffmpeg(&format!("{url}?key={KEY}"), clip());
    let status = publisher
        .wait(Duration::from_secs(CLIP_SECS + 15))
        .expect("publisher finishes the clip");
    assert!(status.success(), "publisher: {}", publisher.stderr());
    for p in [&mut player, &mut http_player] {
        let end = p.wait_or_stop(PLAYER_END_GRACE);
        let got = packets(p.output().unwrap());
        assert!(
            got.len() > 100,
            "{} received {} packets; stderr:\n{}",
            p.name(),
            got.len(),
            p.stderr()
        );
        let _ = end;
    }
    let log = server.log();
    assert!(log.contains("publish denied stream=live/cam"), "{log}");
    assert!(log.contains("play denied stream=live/cam"), "{log}");
    for secret in [KEY, SECRET, "not-the-key", good.as_str(), expired.as_str()] {
        assert!(
            !log.contains(secret),
            "the log shows a credential: {secret}"
        );
    }
}

#[test]
fn check_config_names_the_line() {
    let dir = TestDir::new();
    let good = dir.join("good.toml");
    std::fs::write(
        &good,
        "workers = 2\nsecond_publisher = \"replace\"\n[app.live.publish]\nallow = [\"10.0.0.0/8\", \"2001:db8::/32\"]\nkeys = [\"k\"]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "workers = 2\n\n[app.live.publish]\nkeys = [\"k\"]\nsign = { secret = \"s\", scheme = \"sha1\" }\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--check-config")
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 5"), "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");
    // The same file given to -c stops the server before it listens.
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("-c")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 5"));
}

#[test]
fn sighup_reloads_the_key_file() {
    let dir = TestDir::new();
    let keys = dir.join("keys");
    std::fs::write(&keys, "# publishers\nfirst-key\n").unwrap();
    let config = dir.join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[app.live.publish]\nkey_file = {:?}\n",
            keys.to_str().unwrap()
        ),
    )
    .unwrap();
    let server = Server::start(1, &["-c", config.to_str().unwrap()]);
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], server.port()).into();
    let code = |name: &str| support::TestClient::connect(addr, "live").publish(name).1;
    assert_eq!(code("a?key=first-key"), "NetStream.Publish.Start");
    assert_eq!(code("b?key=second-key"), "NetStream.Publish.Unauthorized");
    std::fs::write(&keys, "second-key\n").unwrap();
    assert!(send_signal(server.pid().unwrap(), "HUP"));
    // Reloaded once the new key is taken.
    let mut tries = 0;
    api::wait_until(Duration::from_secs(10), "the new key taken", || {
        tries += 1;
        code(&format!("c{tries}?key=second-key")) == "NetStream.Publish.Start"
    });
    assert!(
        server.log().contains("reloaded key files (1 keys)"),
        "the reload is logged with its key count"
    );
    assert_eq!(code("d?key=first-key"), "NetStream.Publish.Unauthorized");
    assert!(!server.log().contains("second-key"));
}
