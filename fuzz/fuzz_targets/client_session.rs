//! The client session relays run against other servers (push targets,
//! origins), fed what a hostile or broken server might send: after a real
//! handshake (with the crate's server session), the fuzz input is the
//! server's chunk stream, split at fuzzer-chosen points. The client asks for
//! a stream, publishes or plays and sends media as the events say, and
//! every event and byte is drained. Never a panic, and no amplification.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use sluice_core::protocol::client::{ClientConfig, ClientEvent, ClientSession};
use sluice_core::protocol::session::{MediaKind, ServerSession, SessionConfig};
use sluice_fuzz::{pieces, split_plan};
use std::time::Instant;

fuzz_target!(|input: &[u8]| {
    let (sizes, data) = split_plan(input);
    let now = Instant::now();
    let mut server = ServerSession::new(SessionConfig::default(), now, 1);
    let mut client = ClientSession::new(ClientConfig::new("live", "rtmp://h/live"), 2);
    // C0+C1 → S0+S1+S2 → C2 (+ connect).
    let mut c = BytesMut::new();
    while let Some(b) = client.poll_transmit() {
        c.extend_from_slice(&b);
    }
    server.handle_input(now, &mut c).expect("C0+C1");
    let mut s = BytesMut::new();
    while let Some(b) = server.poll_transmit() {
        s.extend_from_slice(&b);
    }
    client.handle_input(&mut s).expect("S0+S1+S2");
    let mut out_bytes = 0usize;
    let publish = data.first().is_some_and(|b| b & 1 == 0);
    let mut buf = BytesMut::new();
    for piece in pieces(&sizes, data) {
        buf.extend_from_slice(piece);
        let result = client.handle_input(&mut buf);
        while let Some(ev) = client.poll_event() {
            match ev {
                ClientEvent::Connected => client.create_stream(),
                ClientEvent::StreamCreated { stream_id } if publish => {
                    client.publish(stream_id, "cam");
                    client.send_media(
                        stream_id,
                        MediaKind::Video,
                        0,
                        Bytes::from_static(&[0x17, 0, 0, 0, 0]),
                    );
                }
                ClientEvent::StreamCreated { stream_id } => client.play(stream_id, "cam"),
                ClientEvent::Status { stream_id, .. } => client.delete_stream(stream_id),
                _ => {}
            }
        }
        while let Some(b) = client.poll_transmit() {
            out_bytes += b.len();
        }
        if result.is_err() {
            return;
        }
    }
    // Replies (acks, pongs, commands) are bounded by the input.
    assert!(
        out_bytes <= 64 * 1024 + 64 * data.len(),
        "{out_bytes} bytes out for {} in",
        data.len()
    );
});
