//! Chunk writer then reader: any messages, chunk size and csids the
//! fuzzer picks, written by `ChunkEncoder` (per connection) and by
//! `wire_form` (shared media form), read back identical.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use sluice_core::protocol::chunk::{wire_form, ChunkDecoder, ChunkEncoder, ChunkLimits, Message};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let chunk_size = (u32::from(u16::from_le_bytes([data[0], data[1]])) % 8192).max(1)
        * if data[2] & 1 == 1 { 1 } else { 64 };
    let mut rest = &data[3..];
    let mut msgs = Vec::new();
    // Each message: csid (u16 -> 2..=65599 by adding), timestamp u32,
    // type, stream id byte, payload length byte (x 13), then payload bytes from a pattern.
    // At most 32 messages and 8 KiB of payload per input, so that chunk
    // sizes down to 1 byte stay cheap to run.
    let mut total = 0;
    while rest.len() >= 9 && msgs.len() < 32 && total < 8 * 1024 {
        let csid = 2 + u32::from(u16::from_le_bytes([rest[0], rest[1]])) % 65_598;
        let timestamp = u32::from_le_bytes([rest[2], rest[3], rest[4], rest[5]]);
        let type_id = match rest[6] {
            1 | 2 => 8, // would change the reader's state
            t => t,
        };
        let stream_id = u32::from(rest[7]);
        let len = usize::from(rest[8]) * 13;
        total += len;
        let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(rest[8])).collect();
        msgs.push(Message {
            csid,
            timestamp,
            type_id,
            stream_id,
            payload: Bytes::from(payload),
        });
        rest = &rest[9..];
    }
    let limits = ChunkLimits {
        max_message_len: 1 << 24,
        max_chunk_streams: 64,
        max_partial_bytes: 1 << 26,
    };
    let mut enc = ChunkEncoder::new();
    enc.set_chunk_size(chunk_size);
    let mut a = BytesMut::new();
    let mut b = BytesMut::new();
    for m in &msgs {
        enc.encode(m, &mut a).expect("an encodable message");
        b.extend_from_slice(
            &wire_form(chunk_size, m)
                .expect("an encodable message")
                .to_vec(),
        );
    }
    for mut wire in [a, b] {
        let mut dec = ChunkDecoder::new(limits);
        dec.set_chunk_size(chunk_size).unwrap();
        let mut got = Vec::new();
        while let Some(m) = dec.decode(&mut wire).expect("our own output decodes") {
            got.push(m);
        }
        assert!(wire.is_empty());
        assert_eq!(got, msgs);
    }
});
