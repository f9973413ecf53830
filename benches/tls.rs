//! What TLS costs the server, without sockets.
//!
//! * `tls_player_write`: a TLS player's write. 12,530 bytes of plaintext
//!   (what a 3 Mbit/s player gets per write at the default budget: a video
//!   frame and the audio that rides with it) go through a rustls server
//!   connection into records, drained into a buffer as the socket would
//!   take them. Once with the provider the server uses
//!   (`certs::tls_provider`, aws-lc-rs) and once with ring's, which it used
//!   before: the difference is the AES-GCM (perf/README.md, "RTMPS: the
//!   AES-GCM of aws-lc").
//! * `tls_handshake`: the server's side of one full TLS 1.3 handshake, with
//!   the configuration the RTMPS and HTTPS listeners use
//!   (`server::tls::server_config`, certificates loaded from PEM files as
//!   `--tls-cert` loads them), for an ECDSA P-256 and an RSA 2048
//!   certificate and each key exchange a client may ask for first: X25519
//!   (ffmpeg with OpenSSL 3.0, OBS), the hybrid post-quantum X25519MLKEM768
//!   (current browsers, OpenSSL 3.5) and P-256. Only the server's calls are
//!   timed (reading the client's flights, processing them, writing its
//!   own, session tickets included); the client's side runs between them
//!   untimed. It is what a burst of reconnecting players (a restart behind
//!   a load balancer) costs a worker per player, next to the writes above.
//!   The last case finds the client's certificate among 1,000.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, Connection, NamedGroup, ServerConfig, ServerConnection,
};
use sluice::certs::TlsFiles;
use sluice::server::tls::{server_config, CertResolver};
use std::hint::black_box;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Plaintext bytes per write (`perf/run`'s "bytes/write syscall" for plain
/// RTMP players at the default budget).
const WRITE: usize = 12_530;

/// Moves what `from` has to send into `to`.
fn carry(from: &mut Connection, to: &mut Connection) {
    let mut bytes = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut bytes).unwrap();
    }
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        to.read_tls(&mut rest).unwrap();
    }
    to.process_new_packets().unwrap();
}

/// A server connection with `provider`, after a handshake in memory with
/// the relay's client that takes any certificate (TLS 1.3, its first
/// suite: AES-256-GCM, as OpenSSL's clients and ffmpeg's ask). The
/// server's provider alone seals what the server writes.
fn established(provider: Arc<CryptoProvider>) -> ServerConnection {
    let ck = rcgen::generate_simple_self_signed(vec!["bench.sluice.test".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let server_config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    let client_config = sluice::relay::ClientTls::new(None).unwrap().insecure;
    let name = ServerName::try_from("bench.sluice.test").unwrap();
    let mut server = Connection::Server(ServerConnection::new(Arc::new(server_config)).unwrap());
    let mut client = Connection::Client(ClientConnection::new(client_config, name).unwrap());
    while client.is_handshaking() || server.is_handshaking() {
        carry(&mut client, &mut server);
        carry(&mut server, &mut client);
    }
    match server {
        Connection::Server(s) => s,
        Connection::Client(_) => unreachable!(),
    }
}

fn player_write(c: &mut Criterion) {
    let payload = vec![0x5a_u8; WRITE];
    let mut g = c.benchmark_group("tls_player_write");
    g.throughput(Throughput::Bytes(WRITE as u64));
    for (name, provider) in [
        ("aws_lc_rs", sluice::certs::tls_provider()),
        ("ring", Arc::new(rustls::crypto::ring::default_provider())),
    ] {
        let mut server = established(provider);
        let mut socket = Vec::with_capacity(64 * 1024);
        g.bench_function(name, |b| {
            b.iter(|| {
                server.writer().write_all(&payload).unwrap();
                socket.clear();
                while server.wants_write() {
                    server.write_tls(&mut socket).unwrap();
                }
                black_box(socket.len())
            })
        });
    }
    g.finish();
}

/// A certificate for `names` (`bench.sluice.test` when none) with a key of
/// `alg`, written as PEM files into `dir` under `name`, and its DER.
fn cert_files(
    dir: &std::path::Path,
    name: &str,
    alg: &'static rcgen::SignatureAlgorithm,
    names: &[String],
) -> (TlsFiles, rustls::pki_types::CertificateDer<'static>) {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    let names = match names {
        [] => vec!["bench.sluice.test".to_owned()],
        some => some.to_vec(),
    };
    let cert = rcgen::CertificateParams::new(names)
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let crt: PathBuf = dir.join(format!("{name}.crt"));
    let pem: PathBuf = dir.join(format!("{name}.key"));
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&pem, key.serialize_pem()).unwrap();
    let files = TlsFiles {
        pairs: vec![(crt, pem)],
        dir: None,
    };
    (files, cert.der().clone())
}

/// A TLS 1.3 client that offers only `group` and trusts only `cert`; with
/// `resume`, it keeps the server's session tickets and resumes with them
/// (as browsers do), otherwise every handshake is a full one (as ffmpeg's,
/// a new TLS context per connection).
fn client_offering(
    group: &'static dyn SupportedKxGroup,
    cert: rustls::pki_types::CertificateDer<'static>,
    resume: bool,
) -> Arc<ClientConfig> {
    let provider = CryptoProvider {
        kx_groups: vec![group],
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Arc::new(config)
}

/// What the server saw of one handshake.
struct Seen {
    /// The time the server's calls took.
    spent: Duration,
    group: NamedGroup,
    resumed: bool,
}

/// One handshake of a new client connection with a new server connection.
fn timed_handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> Seen {
    let name = ServerName::try_from("bench.sluice.test").unwrap();
    let mut c = ClientConnection::new(client.clone(), name).unwrap();
    let started = Instant::now();
    let mut s = ServerConnection::new(server.clone()).unwrap();
    let mut spent = started.elapsed();
    let mut wire = Vec::with_capacity(16 * 1024);
    while c.is_handshaking() || s.is_handshaking() || s.wants_write() {
        wire.clear();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        let started = Instant::now();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            s.read_tls(&mut rest).unwrap();
        }
        s.process_new_packets().unwrap();
        wire.clear();
        while s.wants_write() {
            s.write_tls(&mut wire).unwrap();
        }
        spent += started.elapsed();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            c.read_tls(&mut rest).unwrap();
        }
        c.process_new_packets().unwrap();
    }
    Seen {
        spent,
        group: s.negotiated_key_exchange_group().unwrap().name(),
        resumed: s.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
    }
}

fn handshake(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("sluice-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = [
        ("ecdsa_p256", &rcgen::PKCS_ECDSA_P256_SHA256),
        ("rsa2048", &rcgen::PKCS_RSA_SHA256),
    ];
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let mut g = c.benchmark_group("tls_handshake");
    g.sample_size(30);
    for (key_name, alg) in keys {
        let (files, cert) = cert_files(&dir, key_name, alg, &[]);
        let server = server_config(Arc::new(CertResolver::new(files).unwrap()));
        for want in [
            NamedGroup::X25519,
            NamedGroup::X25519MLKEM768,
            NamedGroup::secp256r1,
        ] {
            let group = *provider
                .kx_groups
                .iter()
                .find(|g| g.name() == want)
                .expect("the provider offers the group");
            for resume in [false, true] {
                // A resumed handshake signs nothing: once is enough.
                if resume && (key_name != "ecdsa_p256" || want != NamedGroup::X25519) {
                    continue;
                }
                let client = client_offering(group, cert.clone(), resume);
                // The handshake is really what it is named (the group, full
                // or resumed, the certificate verified), or the figure
                // would be of something else.
                let first = timed_handshake(&server, &client);
                assert_eq!((first.group, first.resumed), (want, false));
                let second = timed_handshake(&server, &client);
                assert_eq!((second.group, second.resumed), (want, resume));
                let kind = if resume { "/resumed" } else { "" };
                g.bench_function(format!("{key_name}/{want:?}{kind}"), |b| {
                    b.iter_custom(|iters| {
                        (0..iters)
                            .map(|_| timed_handshake(&server, &client).spent)
                            .sum()
                    })
                });
            }
        }
    }
    // One name among many: a `--tls-dir` of 1,000 certificates (one per
    // customer's domain, say), the client's the last in load order. The
    // server finds it through its index of names (server::tls), so this
    // costs what one certificate does; checking each certificate in turn,
    // as before the index, took 180 µs with 200 of them.
    let many = dir.join("many");
    std::fs::create_dir_all(&many).unwrap();
    let ecdsa = &rcgen::PKCS_ECDSA_P256_SHA256;
    for i in 0..999 {
        let names = [format!("n{i}.other.test"), format!("*.w{i}.other.test")];
        cert_files(&many, &format!("a{i:04}"), ecdsa, &names);
    }
    let (_, cert) = cert_files(&many, "zz-bench", ecdsa, &[]);
    let files = TlsFiles {
        pairs: Vec::new(),
        dir: Some(many),
    };
    let resolver = CertResolver::new(files).unwrap();
    let server = server_config(Arc::new(resolver));
    let client = client_offering(rustls::crypto::aws_lc_rs::kx_group::X25519, cert, false);
    // The client verifies the certificate it gets: it is the right one.
    assert_eq!(timed_handshake(&server, &client).group, NamedGroup::X25519);
    g.bench_function("ecdsa_p256/X25519/sni_among_1000", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| timed_handshake(&server, &client).spent)
                .sum()
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, player_write, handshake);
criterion_main!(benches);
