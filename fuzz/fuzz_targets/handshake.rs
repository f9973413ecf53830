//! The RTMP handshake (spec 5.2), both sides, with the input split at
//! fuzzer-chosen points: never a panic, never more consumed than the
//! handshake, and S0+S1+S2 exactly once.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_core::protocol::handshake::{ClientHandshake, HandshakeProgress, ServerHandshake};
use sluice_fuzz::{pieces, split_plan};

const SIZE: usize = 1 + 1536 + 1536;

fuzz_target!(|input: &[u8]| {
    let (sizes, data) = split_plan(input);
    let mut server = ServerHandshake::new(7);
    let mut src = BytesMut::new();
    let mut out = BytesMut::new();
    let mut fed = 0;
    for piece in pieces(&sizes, data) {
        src.extend_from_slice(piece);
        fed += piece.len();
        match server.handle_input(&mut src, &mut out) {
            Ok(HandshakeProgress::Done) => {
                assert_eq!(fed - src.len(), SIZE, "consumed exactly C0+C1+C2");
                assert_eq!(out.len(), SIZE, "S0+S1+S2 once");
                break;
            }
            Ok(HandshakeProgress::NeedMore) => {
                assert!(src.is_empty(), "NeedMore leaves nothing unconsumed");
                assert!(out.is_empty() || out.len() == SIZE);
            }
            Err(_) => break,
        }
    }

    // The same bytes as a server's S0 S1 S2, to a client with and without digest.
    for digest in [false, true] {
        let mut client = if digest {
            ClientHandshake::with_digest(3)
        } else {
            ClientHandshake::new(3)
        };
        let mut c0c1 = BytesMut::new();
        client.start(&mut c0c1);
        let mut src = BytesMut::new();
        let mut out = BytesMut::new();
        for piece in pieces(&sizes, data) {
            src.extend_from_slice(piece);
            match client.handle_input(&mut src, &mut out) {
                Ok(HandshakeProgress::Done) => break,
                Ok(HandshakeProgress::NeedMore) => {}
                Err(_) => break,
            }
        }
    }
});
