//! A TLS player's write without sockets: 12,530 bytes of plaintext (what a
//! 3 Mbit/s player gets per write at the default budget: a video frame and
//! the audio that rides with it) through a rustls server connection into
//! records, drained into a buffer as the socket would take them. Once with
//! the provider the server uses (`certs::tls_provider`, aws-lc-rs) and once
//! with ring's, which it used before: the difference is the AES-GCM
//! (perf/README.md, "RTMPS: the AES-GCM of aws-lc").

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConnection, Connection, ServerConfig, ServerConnection};
use std::hint::black_box;
use std::io::Write;
use std::sync::Arc;

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

criterion_group!(benches, player_write);
criterion_main!(benches);
