//! A whole server session fed a command sequence: after a real handshake,
//! the fuzz input is the client's chunk stream (split at fuzzer-chosen
//! points), as captured from ffmpeg and GStreamer in the seeds. Publish and
//! play requests are accepted or refused as the input's bytes say, the clock
//! advances, and every event and reply is drained. Never a panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_core::protocol::handshake::{ClientHandshake, HandshakeProgress};
use sluice_core::protocol::session::{
    Event, PlayRejection, PublishRejection, ServerSession, SessionConfig,
};
use sluice_fuzz::{pieces, split_plan};
use std::time::{Duration, Instant};

fuzz_target!(|input: &[u8]| {
    let (sizes, data) = split_plan(input);
    let mut now = Instant::now();
    let mut session = ServerSession::new(SessionConfig::default(), now, 1);
    // Handshake with the crate's client.
    let mut client = ClientHandshake::new(2);
    let mut buf = BytesMut::new();
    client.start(&mut buf);
    session.handle_input(now, &mut buf).expect("C0+C1");
    let mut s = BytesMut::new();
    while let Some(b) = session.poll_transmit() {
        s.extend_from_slice(&b);
    }
    let mut c2 = BytesMut::new();
    assert_eq!(
        client.handle_input(&mut s, &mut c2).expect("S0+S1+S2"),
        HandshakeProgress::Done
    );
    session.handle_input(now, &mut c2).expect("C2");

    let mut decide = data.iter().rev().copied().cycle();
    let mut buf = BytesMut::new();
    let mut out_bytes = 0usize;
    for (i, piece) in pieces(&sizes, data).into_iter().enumerate() {
        buf.extend_from_slice(piece);
        let result = session.handle_input(now, &mut buf);
        while let Some(ev) = session.poll_event() {
            let yes = decide.next().unwrap_or(0) & 1 == 0;
            match ev {
                Event::PublishRequested(r) => {
                    if yes {
                        session.accept_publish(r.stream_id);
                    } else {
                        session.reject_publish(r.stream_id, PublishRejection::BadName);
                    }
                }
                Event::PlayRequested(r) => {
                    if yes {
                        session.accept_play(r.stream_id, r.reset);
                        session.notify_published(r.stream_id);
                    } else {
                        session.reject_play(r.stream_id, PlayRejection::StreamNotFound);
                    }
                }
                Event::PublishStopped { .. } | Event::PlayStopped { stream_id: _ } => {}
                _ => {}
            }
        }
        while let Some(b) = session.poll_transmit() {
            out_bytes += b.len();
        }
        if result.is_err() {
            return;
        }
        if i % 3 == 2 {
            now += Duration::from_secs(7);
            if session.handle_timeout(now).is_err() {
                return;
            }
        }
    }
    session.notify_unpublished(1);
    session.notify_shutdown();
    while let Some(b) = session.poll_transmit() {
        out_bytes += b.len();
    }
    // Replies are bounded by the input: no amplification beyond a constant
    // per byte (a connect reply is ~400 bytes for a ~150-byte connect).
    assert!(
        out_bytes <= 64 * 1024 + 64 * data.len(),
        "{out_bytes} bytes out for {} in",
        data.len()
    );
});
