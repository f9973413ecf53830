//! RTMPS and HTTPS: certificates made here with rcgen (no key is committed),
//! real peers (ffmpeg over rtmps:// and https://) compared packet by packet
//! with the published clip, SNI checked with a rustls client that records the
//! certificate the server presented (and checks the server's signature with
//! it), reload by SIGHUP, by changed files and in process, and the ways a
//! wrong or unfinished handshake ends.

mod common;
mod support;

use common::{
    assert_same_from_first_keyframe, clip, clip_packets, compare_from_first_keyframe, free_port,
    play_ffmpeg, publish_ffmpeg, received_packets, send_signal, wait_all_or_stop, wait_publisher,
    Peer, Server, TestDir, PLAYER_END_GRACE,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use sluice::server::tls::TlsFiles;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};
use support::{assert_complete_from_keyframe, has_video, start_server, Synth, TestClient, WAIT};

// ---------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------

/// A self-signed certificate and its key, written as PEM files.
struct Cert {
    cert: PathBuf,
    key: PathBuf,
    /// The certificate's DER, to compare with what a client was served.
    der: Vec<u8>,
}

/// Makes a self-signed certificate for `names` and writes `DIR/STEM.crt` and
/// `DIR/STEM.key` (through a temporary file and a rename, as certificate
/// renewal tools do, so a reload never sees half a file).
fn make_cert(dir: &Path, stem: &str, names: &[&str]) -> Cert {
    make_cert_as(dir, stem, "crt", names)
}

fn make_cert_as(dir: &Path, stem: &str, ext: &str, names: &[&str]) -> Cert {
    make_cert_with(
        dir,
        stem,
        ext,
        names,
        rcgen::KeyPair::generate().expect("rcgen"),
    )
}

/// The same with `key` (an RSA one, say).
fn make_cert_with(dir: &Path, stem: &str, ext: &str, names: &[&str], key: rcgen::KeyPair) -> Cert {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let signed = rcgen::CertificateParams::new(names)
        .expect("rcgen")
        .self_signed(&key)
        .expect("rcgen");
    let cert = dir.join(format!("{stem}.{ext}"));
    let key_file = dir.join(format!("{stem}.key"));
    replace_file(&cert, signed.pem().as_bytes());
    replace_file(&key_file, key.serialize_pem().as_bytes());
    Cert {
        cert,
        key: key_file,
        der: signed.der().to_vec(),
    }
}

fn replace_file(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).unwrap_or_else(|e| panic!("{}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// `--tls-cert C --tls-key K` for each certificate, in order.
fn cert_args(certs: &[&Cert]) -> Vec<String> {
    certs
        .iter()
        .flat_map(|c| {
            [
                "--tls-cert".to_string(),
                c.cert.display().to_string(),
                "--tls-key".to_string(),
                c.key.display().to_string(),
            ]
        })
        .collect()
}

fn pairs(certs: &[&Cert]) -> TlsFiles {
    TlsFiles {
        pairs: certs
            .iter()
            .map(|c| (c.cert.clone(), c.key.clone()))
            .collect(),
        dir: None,
    }
}

/// A one-worker server with both TLS ports (RTMPS and HTTPS) on `certs`
/// (the first the default), and whatever else `more` sets.
fn tls_ports_server(
    certs: &[&Cert],
    more: impl FnOnce(&mut sluice::config::Config),
) -> sluice::server::RunningServer {
    let files = pairs(certs);
    start_server(1, |c| {
        c.rtmps_addr = Some("127.0.0.1:0".parse().unwrap());
        c.https_addr = Some("127.0.0.1:0".parse().unwrap());
        c.tls = files;
        more(c);
    })
}

// ---------------------------------------------------------------------------------------
// A rustls client that records the certificate it was served
// ---------------------------------------------------------------------------------------

/// Accepts any certificate but remembers the end-entity one, and checks the
/// handshake signatures with it (so the server holds that certificate's key).
/// Where [`Recorder`] puts the DER of the certificate it was shown.
type Seen = Arc<Mutex<Option<Vec<u8>>>>;

#[derive(Debug)]
struct Recorder {
    seen: Seen,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap() = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client configuration whose verifier records the served certificate.
fn recording_client() -> (Arc<ClientConfig>, Seen) {
    recording_client_with(rustls::crypto::aws_lc_rs::default_provider())
}

/// The same with the cryptography of `provider` (its key exchange groups
/// in its order of preference).
fn recording_client_with(provider: rustls::crypto::CryptoProvider) -> (Arc<ClientConfig>, Seen) {
    let provider = Arc::new(provider);
    let seen = Arc::new(Mutex::new(None));
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Recorder {
            seen: seen.clone(),
            provider,
        }))
        .with_no_client_auth();
    (Arc::new(config), seen)
}

/// SNI `name`, or none (the client connects by IP address, as encoders do).
fn server_name(sni: Option<&str>) -> ServerName<'static> {
    match sni {
        Some(n) => ServerName::try_from(n.to_string()).expect("DNS name"),
        None => ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    }
}

/// Completes a TLS handshake with `addr` (SNI `sni`) and returns the DER of
/// the certificate the server presented.
fn served_cert(addr: SocketAddr, sni: Option<&str>) -> Vec<u8> {
    let (config, seen) = recording_client();
    handshake(addr, sni, config);
    let der = seen.lock().unwrap().take();
    der.expect("the verifier saw a certificate")
}

/// A finished TLS handshake with `addr` (SNI `sni`) as `config`'s client.
fn handshake(
    addr: SocketAddr,
    sni: Option<&str>,
    config: Arc<ClientConfig>,
) -> rustls::ClientConnection {
    let mut sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut conn = rustls::ClientConnection::new(config, server_name(sni)).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .unwrap_or_else(|e| panic!("TLS handshake with {addr} (SNI {sni:?}): {e}"));
    }
    conn
}

/// Which of `certs` (by label) the server presented for `sni`.
fn which(addr: SocketAddr, sni: Option<&str>, certs: &[(&str, &Cert)]) -> String {
    let der = served_cert(addr, sni);
    certs
        .iter()
        .find(|(_, c)| c.der == der)
        .map_or_else(|| "an unknown certificate".into(), |(l, _)| l.to_string())
}

/// The bytes of a TLS 1.3 ClientHello as rustls sends it.
fn client_hello() -> Vec<u8> {
    let (config, _) = recording_client();
    let mut conn =
        rustls::ClientConnection::new(config, server_name(Some("a.sluice.test"))).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    assert_eq!(hello[0], 0x16, "a handshake record");
    hello
}

/// Sends `bytes` and reads until the server closes the connection; returns
/// how long that took from the first byte sent (None: still open after
/// `limit`) and what the server sent.
fn time_to_close(addr: SocketAddr, bytes: &[u8], limit: Duration) -> (Option<Duration>, Vec<u8>) {
    let mut sock = TcpStream::connect(addr).expect("connect");
    let t0 = Instant::now();
    sock.write_all(bytes).expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(t0.elapsed());
        if left.is_zero() {
            return (None, got);
        }
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.read(&mut buf) {
            Ok(0) => return (Some(t0.elapsed()), got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            // Reset: closed with unread input.
            Err(_) => return (Some(t0.elapsed()), got),
        }
    }
}

/// Polls `f` every 50 ms until it holds or `limit` passes.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------
// Key exchange
// ---------------------------------------------------------------------------------------

/// The server takes the client's preferred key exchange: a client that
/// lists the hybrid post-quantum X25519MLKEM768 first (current browsers,
/// OpenSSL 3.5) gets it, one that lists X25519 first gets X25519, on both
/// TLS ports; a TLS 1.2 client that lists it first gets its next choice
/// (the hybrid is TLS 1.3 only). Each handshake uses a new client
/// configuration: a resumed session would exchange no key.
#[test]
fn the_key_exchange_is_the_clients_first_choice_post_quantum_included() {
    use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
    use rustls::NamedGroup;
    use rustls::ProtocolVersion::{TLSv1_2, TLSv1_3};
    let dir = TestDir::new();
    let a = make_cert(dir.path(), "a", &["a.sluice.test"]);
    let server = tls_ports_server(&[&a], |_| {});
    let addrs = server.addrs();
    let client = |groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>| {
        let mut p = default_provider();
        p.kx_groups = groups;
        recording_client_with(p).0
    };
    let tls12 = || {
        let mut p = default_provider();
        p.kx_groups = vec![kx_group::X25519MLKEM768, kx_group::SECP256R1];
        let config = ClientConfig::builder_with_provider(Arc::new(p))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Recorder {
                seen: Arc::new(Mutex::new(None)),
                provider: Arc::new(default_provider()),
            }))
            .with_no_client_auth();
        Arc::new(config)
    };
    for addr in [addrs.rtmps.unwrap(), addrs.https.unwrap()] {
        for (config, version, want) in [
            (
                client(vec![kx_group::X25519MLKEM768, kx_group::X25519]),
                TLSv1_3,
                Some(NamedGroup::X25519MLKEM768),
            ),
            (
                client(vec![kx_group::X25519, kx_group::X25519MLKEM768]),
                TLSv1_3,
                Some(NamedGroup::X25519),
            ),
            (
                client(vec![kx_group::SECP256R1, kx_group::X25519]),
                TLSv1_3,
                Some(NamedGroup::secp256r1),
            ),
            (tls12(), TLSv1_2, Some(NamedGroup::secp256r1)),
        ] {
            let conn = handshake(addr, Some("a.sluice.test"), config);
            let got = conn.negotiated_key_exchange_group().map(|g| g.name());
            assert_eq!(
                (conn.protocol_version(), got),
                (Some(version), want),
                "{addr}"
            );
        }
    }
    server.stop();
}

// ---------------------------------------------------------------------------------------
// SNI
// ---------------------------------------------------------------------------------------

#[test]
fn sni_picks_the_certificate_for_the_name_and_the_first_for_none() {
    let dir = TestDir::new();
    let a = make_cert(dir.path(), "a", &["a.sluice.test"]);
    let b = make_cert(dir.path(), "b", &["b.sluice.test", "b2.sluice.test"]);
    let w = make_cert(dir.path(), "w", &["*.wild.sluice.test"]);
    let server = tls_ports_server(&[&a, &b, &w], |_| {});
    let addrs = server.addrs();
    let certs = [("a", &a), ("b", &b), ("w", &w)];
    for (port, addr) in [
        ("rtmps", addrs.rtmps.unwrap()),
        ("https", addrs.https.unwrap()),
    ] {
        for (sni, want) in [
            (Some("a.sluice.test"), "a"),
            (Some("b.sluice.test"), "b"),
            (Some("b2.sluice.test"), "b"),
            (Some("B.Sluice.Test"), "b"),
            (Some("cam.wild.sluice.test"), "w"),
            (Some("unknown.sluice.test"), "a"),
            (Some("deeper.cam.wild.sluice.test"), "a"),
            (None, "a"),
        ] {
            assert_eq!(
                which(addr, sni, &certs),
                want,
                "{port}: SNI {sni:?} should get certificate {want}"
            );
        }
    }
    server.stop();
}

#[test]
fn tls_dir_pairs_come_after_the_files_in_name_order() {
    let dir = TestDir::new();
    let certs_dir = dir.join("certs");
    std::fs::create_dir(&certs_dir).unwrap();
    let b = make_cert(&certs_dir, "b", &["b.sluice.test"]);
    let a = make_cert_as(&certs_dir, "a", "pem", &["a.sluice.test"]);
    // A certificate without a key is skipped, not an error.
    let lone = make_cert(&certs_dir, "c", &["c.sluice.test"]);
    std::fs::remove_file(&lone.key).unwrap();
    let f = make_cert(dir.path(), "f", &["f.sluice.test"]);
    let certs = [("a", &a), ("b", &b), ("f", &f)];

    // Only the directory: its first by name is the default.
    let d = certs_dir.clone();
    let server = start_server(1, |c| {
        c.rtmps_addr = Some("127.0.0.1:0".parse().unwrap());
        c.tls = TlsFiles {
            pairs: vec![],
            dir: Some(d),
        };
    });
    let rtmps = server.addrs().rtmps.unwrap();
    assert_eq!(which(rtmps, None, &certs), "a");
    assert_eq!(which(rtmps, Some("b.sluice.test"), &certs), "b");
    assert_eq!(which(rtmps, Some("c.sluice.test"), &certs), "a");
    server.stop();

    // A file pair and the directory: the file is the default.
    let mut files = pairs(&[&f]);
    files.dir = Some(certs_dir);
    let server = start_server(1, |c| {
        c.https_addr = Some("127.0.0.1:0".parse().unwrap());
        c.tls = files;
    });
    let https = server.addrs().https.unwrap();
    assert_eq!(which(https, None, &certs), "f");
    assert_eq!(which(https, Some("a.sluice.test"), &certs), "a");
    assert_eq!(which(https, Some("b.sluice.test"), &certs), "b");
    server.stop();
}

// ---------------------------------------------------------------------------------------
// RTMPS with the crate's own client (in process)
// ---------------------------------------------------------------------------------------

fn tls_client(server: &sluice::server::RunningServer, sni: Option<&str>) -> TestClient {
    let (config, _) = recording_client();
    TestClient::connect_tls(
        server.addrs().rtmps.unwrap(),
        "live",
        config,
        server_name(sni),
    )
}

/// An RTMPS publisher, RTMPS and RTMP players: every frame reaches every
/// player, including a late RTMPS joiner whose cached GOP (~1.5 MB) is more
/// than the TLS buffer limit, so the encrypt-and-write loop has to go round.
#[test]
fn rtmps_publisher_reaches_rtmps_and_rtmp_players_with_every_frame() {
    let dir = TestDir::new();
    let a = make_cert(dir.path(), "a", &["a.sluice.test"]);
    let files = pairs(&[&a]);
    let server = start_server(1, |c| {
        c.rtmps_addr = Some("127.0.0.1:0".parse().unwrap());
        c.tls = files;
    });
    let mut tls_player = tls_client(&server, Some("a.sluice.test"));
    tls_player.play("cam");
    let mut plain_player = TestClient::connect(server.local_addr(), "live");
    plain_player.play("cam");

    let mut publisher = tls_client(&server, None);
    let (id, code) = publisher.publish("cam");
    assert_eq!(code, "NetStream.Publish.Start");
    let mut synth = Synth::new(60, 25_000);
    for f in synth.headers() {
        publisher.send(id, &f);
    }
    for _ in 0..90 {
        for f in synth.next() {
            publisher.send(id, &f);
        }
    }
    for (name, p) in [("rtmps", &mut tls_player), ("rtmp", &mut plain_player)] {
        let got = p.collect_media(WAIT, |g| has_video(g, 89));
        assert_complete_from_keyframe(&got, 89);
        assert!(
            matches!(got[3], support::Received::Video { index: 0, .. }),
            "{name} player saw the stream from its start: {:?}",
            &got[3]
        );
    }
    // Joins in the second GOP (frames 60..): gets it whole from the cache.
    let t0 = Instant::now();
    let mut late = tls_client(&server, None);
    late.play("cam");
    let got = late.collect_media(WAIT, |g| has_video(g, 89));
    assert_complete_from_keyframe(&got, 89);
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(1500),
        "a late RTMPS joiner took {took:?} to get a 30-frame cached GOP over loopback"
    );
    server.stop();
}

/// In process: a reload (what SIGHUP calls) gives new handshakes the new
/// certificate while an established RTMPS player keeps receiving; a reload
/// of files that do not load keeps the old certificate.
#[test]
fn reload_serves_the_new_certificate_while_an_old_player_keeps_streaming() {
    let dir = TestDir::new();
    let old = make_cert(dir.path(), "site", &["live.sluice.test"]);
    let files = pairs(&[&old]);
    let server = start_server(1, |c| {
        c.rtmps_addr = Some("127.0.0.1:0".parse().unwrap());
        c.tls = files;
    });
    let rtmps = server.addrs().rtmps.unwrap();
    let mut player = tls_client(&server, Some("live.sluice.test"));
    player.play("cam");
    let mut publisher = TestClient::connect(server.local_addr(), "live");
    let (id, _) = publisher.publish("cam");
    let mut synth = Synth::new(30, 8_000);
    for f in synth.headers() {
        publisher.send(id, &f);
    }
    for _ in 0..30 {
        for f in synth.next() {
            publisher.send(id, &f);
        }
    }
    let mut got = player.collect_media(WAIT, |g| has_video(g, 29));

    let new = make_cert(dir.path(), "site", &["live.sluice.test"]);
    assert_eq!(server.reload_tls(), Ok(1));
    let certs = [("old", &old), ("new", &new)];
    assert_eq!(which(rtmps, Some("live.sluice.test"), &certs), "new");
    assert_eq!(which(rtmps, None, &certs), "new");

    // A broken key: the reload fails and the certificate in use stays.
    let new_key = std::fs::read(&new.key).unwrap();
    std::fs::write(&new.key, b"-----BEGIN PRIVATE KEY-----\nnot a key\n").unwrap();
    assert!(server.reload_tls().is_err());
    assert_eq!(which(rtmps, None, &certs), "new");
    // A key that is not the certificate's (a renewal that replaced one of
    // the two files): refused too, where it would fail every handshake.
    let other = make_cert(dir.path(), "other", &["other.sluice.test"]);
    std::fs::copy(&other.key, &new.key).unwrap();
    let refused = server.reload_tls().unwrap_err();
    assert!(
        refused.contains("is not the private key of the certificate in"),
        "{refused}"
    );
    assert_eq!(which(rtmps, None, &certs), "new");
    replace_file(&new.key, &new_key);
    assert_eq!(server.reload_tls(), Ok(1));
    assert_eq!(which(rtmps, None, &certs), "new");

    for _ in 0..60 {
        for f in synth.next() {
            publisher.send(id, &f);
        }
    }
    got.extend(player.collect_media(WAIT, |g| has_video(g, 89)));
    assert_complete_from_keyframe(&got, 89);
    server.stop();
}

// ---------------------------------------------------------------------------------------
// Wrong protocol on a port, unfinished handshakes, the handshake cap
// ---------------------------------------------------------------------------------------

/// Quick here: well under the 10 s handshake and HTTP request timeouts the
/// server runs with, so only a protocol error can have closed it.
const QUICK: Duration = Duration::from_secs(2);

#[test]
fn plain_on_tls_and_tls_on_plain_close_quickly() {
    let dir = TestDir::new();
    let a = make_cert(dir.path(), "a", &["a.sluice.test"]);
    let server = tls_ports_server(&[&a], |_| {});
    let addrs = server.addrs();
    let mut c0c1 = vec![0u8; 1 + 1536];
    c0c1[0] = 3;
    let get = b"GET /live/cam.flv HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec();
    let hello = client_hello();
    let cases: [(&str, SocketAddr, &[u8]); 4] = [
        ("RTMP C0+C1 on the RTMPS port", addrs.rtmps.unwrap(), &c0c1),
        ("HTTP GET on the HTTPS port", addrs.https.unwrap(), &get),
        ("TLS ClientHello on the RTMP port", addrs.rtmp, &hello),
        (
            "TLS ClientHello on the HTTP port",
            addrs.http.unwrap(),
            &hello,
        ),
    ];
    let failures_before = server
        .stats()
        .handshake_failures
        .load(std::sync::atomic::Ordering::Relaxed);
    for (what, addr, bytes) in cases {
        let (closed, reply) = time_to_close(addr, bytes, Duration::from_secs(12));
        let took = closed.unwrap_or_else(|| panic!("{what}: still open after 12 s"));
        assert!(took < QUICK, "{what}: closed only after {took:?}");
        eprintln!(
            "[tls] {what}: closed after {took:?}, {} bytes back",
            reply.len()
        );
        if what.contains("on the RTMPS") || what.contains("on the HTTPS") {
            // A TLS alert record (content type 21), if anything.
            assert!(
                reply.is_empty() || reply[0] == 21,
                "{what}: expected nothing or a TLS alert, got {:?}",
                &reply[..reply.len().min(16)]
            );
        }
    }
    let failures = server
        .stats()
        .handshake_failures
        .load(std::sync::atomic::Ordering::Relaxed)
        - failures_before;
    assert!(
        failures >= 2,
        "the two failed TLS handshakes are counted as handshake failures ({failures})"
    );
    // The ports still work.
    assert_eq!(which(addrs.rtmps.unwrap(), None, &[("a", &a)]), "a");
    assert_eq!(which(addrs.https.unwrap(), None, &[("a", &a)]), "a");
    server.stop();
}

#[test]
fn unfinished_client_hello_is_closed_at_the_deadline() {
    let dir = TestDir::new();
    let a = make_cert(dir.path(), "a", &["a.sluice.test"]);
    let deadline = Duration::from_secs(2);
    let server = tls_ports_server(&[&a], |c| {
        c.handshake_timeout = deadline;
        c.http_request_timeout = deadline;
    });
    let addrs = server.addrs();
    let hello = client_hello();
    let half = &hello[..hello.len() / 2];
    let threads: Vec<_> = [
        (
            "half a ClientHello on RTMPS",
            addrs.rtmps.unwrap(),
            half.to_vec(),
        ),
        (
            "half a ClientHello on HTTPS",
            addrs.https.unwrap(),
            half.to_vec(),
        ),
        ("nothing on RTMPS", addrs.rtmps.unwrap(), vec![]),
        ("nothing on HTTPS", addrs.https.unwrap(), vec![]),
    ]
    .into_iter()
    .map(|(what, addr, bytes)| {
        std::thread::spawn(move || (what, time_to_close(addr, &bytes, Duration::from_secs(15)).0))
    })
    .collect();
    for t in threads {
        let (what, closed) = t.join().unwrap();
        let took = closed.unwrap_or_else(|| panic!("{what}: still open after 15 s"));
        eprintln!("[tls] {what}: closed after {took:?}");
        // Deadlines are checked every 500 ms.
        assert!(
            took >= deadline - Duration::from_millis(100)
                && took < deadline + Duration::from_millis(1500),
            "{what}: closed after {took:?}, the deadline is {deadline:?}"
        );
    }
    server.stop();
}

#[test]
fn handshakes_beyond_the_cap_are_refused_until_one_finishes() {
    let dir = TestDir::new();
    let a = make_cert(dir.path(), "a", &["a.sluice.test"]);
    let server = tls_ports_server(&[&a], |c| {
        c.max_tls_handshakes_per_worker = 2;
    });
    let addrs = server.addrs();
    // Two handshakes that never finish (one per TLS port: the cap is per
    // worker, not per port).
    let hello = client_hello();
    let mut stuck = Vec::new();
    for addr in [addrs.rtmps.unwrap(), addrs.https.unwrap()] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&hello[..10]).unwrap();
        stuck.push(s);
    }
    assert!(
        eventually(WAIT, || server.connections_per_worker()[0] == 2),
        "both pending handshakes accepted"
    );
    // A third is closed at once, without a ServerHello.
    let (closed, reply) = time_to_close(addrs.rtmps.unwrap(), &hello, Duration::from_secs(5));
    let took = closed.expect("third handshake refused");
    assert!(
        took < QUICK && reply.is_empty(),
        "refused after {took:?}, got {} bytes",
        reply.len()
    );
    // Plain RTMP is not capped.
    let mut plain = TestClient::connect(server.local_addr(), "live");
    plain.create_stream();
    // One stuck client gives up: there is room for one handshake again.
    drop(stuck.pop());
    assert!(
        eventually(WAIT, || server.connections_per_worker()[0] == 2),
        "the closed pending handshake is gone"
    );
    assert_eq!(which(addrs.rtmps.unwrap(), None, &[("a", &a)]), "a");
    // Finished handshakes do not count: a second full one works too.
    let mut done = tls_client(&server, None);
    done.create_stream();
    assert_eq!(which(addrs.https.unwrap(), None, &[("a", &a)]), "a");
    server.stop();
}

#[test]
fn a_burst_of_handshakes_is_read_over_several_iterations_and_every_one_completes() {
    // An RSA 2048 certificate: 0.35 ms of the server's time per handshake
    // in a release build, more here, so forty of them are far more than
    // one loop iteration may spend on handshakes (2 ms).
    let dir = TestDir::new();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let rsa = make_cert_with(dir.path(), "rsa", "crt", &["rsa.sluice.test"], key);
    let server = tls_ports_server(&[&rsa], |_| {});
    let addr = server.addrs().rtmps.unwrap();
    let (config, _) = recording_client();
    // Every ClientHello is sent before any reply is read: they arrive
    // together, as a burst of joiners' do.
    let mut clients: Vec<(TcpStream, rustls::ClientConnection)> = (0..40)
        .map(|_| {
            let mut sock = TcpStream::connect(addr).expect("connect");
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut conn =
                rustls::ClientConnection::new(config.clone(), server_name(None)).unwrap();
            while conn.wants_write() {
                conn.write_tls(&mut sock).unwrap();
            }
            (sock, conn)
        })
        .collect();
    for (i, (sock, conn)) in clients.iter_mut().enumerate() {
        while conn.is_handshaking() {
            conn.complete_io(sock)
                .unwrap_or_else(|e| panic!("handshake {i}: {e}"));
        }
    }
    let stats = server.stats();
    let deferred = stats.handshakes_deferred.load(Ordering::Relaxed);
    assert!(
        deferred > 0,
        "forty RSA handshakes at once fit one iteration's handshake time"
    );
    assert_eq!(stats.handshake_failures.load(Ordering::Relaxed), 0);
    eprintln!("{deferred} handshake reads put off to a later iteration");
    drop(clients);
    server.stop();
}

// ---------------------------------------------------------------------------------------
// Real peers: ffmpeg over rtmps:// and https://, the binary, SIGHUP
// ---------------------------------------------------------------------------------------

/// The sluice binary with RTMPS and HTTPS on free ports and `certs`.
struct TlsServer {
    server: Server,
    rtmps: u16,
    https: u16,
}

impl TlsServer {
    fn start(workers: usize, certs: &[&Cert]) -> TlsServer {
        let (rtmps, https) = (free_port(), free_port());
        let mut args = vec![
            "--rtmps".to_string(),
            format!("127.0.0.1:{rtmps}"),
            "--https".to_string(),
            format!("127.0.0.1:{https}"),
        ];
        args.extend(cert_args(certs));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start(workers, &args);
        TlsServer {
            server,
            rtmps,
            https,
        }
    }

    fn rtmps_url(&self, name: &str) -> String {
        format!("rtmps://127.0.0.1:{}/live/{name}", self.rtmps)
    }

    fn https_url(&self, name: &str) -> String {
        format!("https://127.0.0.1:{}/live/{name}.flv", self.https)
    }

    fn rtmps_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.rtmps).into()
    }

    fn out(&self, name: &str) -> PathBuf {
        self.server.dir().join(name)
    }
}

/// Every player got the clip packet for packet: the first `from_start` of
/// them (connected before the publisher) from its very first frame, the
/// others from the keyframe they joined on.
fn assert_players_got_the_clip(players: &mut [Peer], from_start: usize, published_end: Instant) {
    let ends = wait_all_or_stop(players, PLAYER_END_GRACE);
    for (i, (player, end)) in players.iter().zip(&ends).enumerate() {
        let received = received_packets(player, end, published_end);
        let join = compare_from_first_keyframe(clip_packets(), &received, 0)
            .unwrap_or_else(|e| panic!("{} ({}): {e}", player.name(), player.command_line()));
        assert!(
            i >= from_start || (join.video_from == 0 && join.received_video_from == 0),
            "{} ({}) connected before the publisher but missed the start: {join:?}",
            player.name(),
            player.command_line()
        );
        eprintln!("[tls] {}: {join:?}", player.command_line());
    }
}

/// Starts ffmpeg players of `live/cam` and waits until the server has them
/// all waiting for the stream (`/api/clients`); none may have exited.
fn start_players(s: &TlsServer, urls: &[(String, PathBuf)]) -> Vec<Peer> {
    let mut players: Vec<Peer> = urls.iter().map(|(u, o)| play_ffmpeg(u, o)).collect();
    s.server.wait_players("live/cam", players.len());
    for p in &mut players {
        assert!(
            p.is_running(),
            "{} exited early; stderr:\n{}",
            p.command_line(),
            p.stderr()
        );
    }
    players
}

/// HTTP-FLV answers 404 for a stream that is not live: HTTPS players join
/// once the publisher is on (and start on the cached keyframe).
fn wait_live(s: &TlsServer, name: &str) {
    let live = eventually(Duration::from_secs(10), || {
        let Ok(mut sock) = TcpStream::connect(s.server.http_addr()) else {
            return false;
        };
        let _ = sock.set_read_timeout(Some(Duration::from_secs(2)));
        let v = http_get_json(&mut sock, "/api/streams");
        v["streams"].as_array().is_some_and(|all| {
            all.iter().any(|st| {
                st["name"] == format!("live/{name}") && st["live"] == true && !st["video"].is_null()
            })
        })
    });
    assert!(
        live,
        "stream {name} not live 10 s after the publisher started"
    );
}

/// `GET PATH` with `Connection: close` on `stream`; the JSON body (Null if
/// there is none).
fn http_get_json(stream: &mut impl ReadWrite, path: &str) -> serde_json::Value {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if stream.write_all(req.as_bytes()).is_err() || stream.flush().is_err() {
        return serde_json::Value::Null;
    }
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => resp.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&resp);
    text.split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or_default()
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

#[test]
fn ffmpeg_publishes_over_rtmps_to_rtmps_rtmp_and_https_flv_players() {
    let dir = TestDir::new();
    let a = make_cert(dir.path(), "a", &["a.sluice.test"]);
    let s = TlsServer::start(2, &[&a]);
    clip();
    let mut players = start_players(
        &s,
        &[
            (s.rtmps_url("cam"), s.out("rtmps.flv")),
            (s.server.url("live", "cam"), s.out("rtmp.flv")),
        ],
    );
    let mut publisher = publish_ffmpeg(&s.rtmps_url("cam"), clip());
    wait_live(&s, "cam");
    players.push(play_ffmpeg(&s.https_url("cam"), &s.out("https.flv")));
    let published_end = wait_publisher(&mut publisher);
    assert_players_got_the_clip(&mut players, 2, published_end);
}

#[test]
fn ffmpeg_publishes_over_rtmp_to_rtmps_players() {
    let dir = TestDir::new();
    let a = make_cert(dir.path(), "a", &["a.sluice.test"]);
    let s = TlsServer::start(2, &[&a]);
    clip();
    let mut players = start_players(
        &s,
        &[
            (s.rtmps_url("cam"), s.out("rtmps1.flv")),
            (s.rtmps_url("cam"), s.out("rtmps2.flv")),
            (s.rtmps_url("cam"), s.out("rtmps3.flv")),
        ],
    );
    let mut publisher = publish_ffmpeg(&s.server.url("live", "cam"), clip());
    wait_live(&s, "cam");
    players.push(play_ffmpeg(&s.https_url("cam"), &s.out("https.flv")));
    let published_end = wait_publisher(&mut publisher);
    // TLS players are written from memory: with no plain player, nothing
    // went to the workers' batch files and no sendfile was made.
    let text = s.server.metrics();
    for name in ["sluice_batch_file_bytes", "sluice_sendfile_calls_total"] {
        let sum: f64 = ["0", "1"]
            .iter()
            .filter_map(|w| common::api::metric(&text, name, &[("worker", w)]))
            .sum();
        assert_eq!(sum, 0.0, "{name}");
    }
    let written: f64 = ["0", "1"]
        .iter()
        .filter_map(|w| common::api::metric(&text, "sluice_write_calls_total", &[("worker", w)]))
        .sum();
    assert!(written > 0.0, "the players were written to");
    assert_players_got_the_clip(&mut players, 3, published_end);
}

/// Replace the files, SIGHUP: a new client gets the new certificate at once
/// while an ffmpeg RTMPS player that connected before keeps streaming and
/// gets every packet.
#[test]
fn sighup_reload_new_clients_get_the_new_certificate_old_player_keeps_streaming() {
    let dir = TestDir::new();
    let old = make_cert(dir.path(), "site", &["live.sluice.test"]);
    let s = TlsServer::start(1, &[&old]);
    clip();
    let mut player = play_ffmpeg(&s.rtmps_url("cam"), &s.out("player.flv"));
    s.server.wait_players("live/cam", 1);
    let mut publisher = publish_ffmpeg(&s.server.url("live", "cam"), clip());
    // The player is streaming (over RTMPS) when the certificate changes.
    common::api::wait_until(Duration::from_secs(10), "the player streaming", || {
        s.server
            .players_of("live/cam")
            .first()
            .is_some_and(|c| c["protocol"] == "rtmps" && c["bytes_out"].as_u64() > Some(200_000))
    });
    assert!(player.is_running(), "player: {}", player.stderr());

    let new = make_cert(dir.path(), "site", &["live.sluice.test"]);
    let certs = [("old", &old), ("new", &new)];
    let sent = Instant::now();
    assert!(send_signal(s.server.pid().unwrap(), "HUP"));
    // The file watcher would notice too, but only after up to 2 s.
    assert!(
        eventually(Duration::from_millis(1500), || which(
            s.rtmps_addr(),
            Some("live.sluice.test"),
            &certs
        ) == "new"),
        "a new client still gets the old certificate {:?} after SIGHUP",
        sent.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(2), || s
            .server
            .log()
            .contains("SIGHUP: reloaded 1 TLS certificates")),
        "the reload is logged"
    );
    assert_eq!(which(s.rtmps_addr(), None, &certs), "new");

    let published_end = wait_publisher(&mut publisher);
    let end = player.wait_or_stop(PLAYER_END_GRACE);
    let received = received_packets(&player, &end, published_end);
    assert_same_from_first_keyframe(clip_packets(), &received);
}

#[test]
fn a_key_that_is_not_the_certificates_stops_the_server_at_start() {
    let dir = TestDir::new();
    let site = make_cert(dir.path(), "site", &["live.sluice.test"]);
    let other = make_cert(dir.path(), "other", &["other.sluice.test"]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["--rtmp", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(["--rtmps", "127.0.0.1:0", "--workers", "1"])
        .arg("--tls-cert")
        .arg(&site.cert)
        .arg("--tls-key")
        .arg(&other.key)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot start:")
            && stderr.contains("is not the private key of the certificate in")
            && stderr.contains("site.crt"),
        "{stderr}"
    );
}

/// No signal: replaced files are picked up by the watcher (every 2 s).
#[test]
fn changed_certificate_files_are_picked_up_without_a_signal() {
    let dir = TestDir::new();
    let old = make_cert(dir.path(), "site", &["live.sluice.test"]);
    let s = TlsServer::start(1, &[&old]);
    let https: SocketAddr = ([127, 0, 0, 1], s.https).into();
    let certs_old = [("old", &old)];
    assert_eq!(which(https, None, &certs_old), "old");
    // mtimes have a coarse clock on some filesystems: make the change visible.
    sleep(Duration::from_millis(50));
    let new = make_cert(dir.path(), "site", &["live.sluice.test"]);
    let certs = [("old", &old), ("new", &new)];
    assert!(
        eventually(Duration::from_secs(6), || which(https, None, &certs)
            == "new"),
        "the new certificate is not served 6 s after the files changed"
    );
    assert!(s.server.log().contains("certificate files changed"));
}

/// The API over HTTPS, with SNI, counts the HTTPS connection asking.
#[test]
fn https_serves_the_api() {
    let dir = TestDir::new();
    let a = make_cert(dir.path(), "a", &["a.sluice.test"]);
    let s = TlsServer::start(1, &[&a]);
    let (config, _) = recording_client();
    let sock = TcpStream::connect(("127.0.0.1", s.https)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let conn = rustls::ClientConnection::new(config, server_name(Some("a.sluice.test"))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let v = http_get_json(&mut tls, "/api/server");
    assert_eq!(
        v["connections"]["https"], 1,
        "the API counts this HTTPS connection: {v}"
    );
}
