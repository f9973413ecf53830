//! The chunk stream reader (spec 5.3) with the input split at fuzzer-chosen
//! points. Checks: never a panic; the read buffer and the reassembly bytes
//! stay within their bounds whatever the headers declare; and when neither
//! run fails, the messages are the same as when the input arrives whole,
//! unless the split run had to guess a peer's extended-timestamp habit from
//! fewer than 4 bytes (`ChunkDecoder::guesses`, docs/hardening.md case 44):
//! bytes consistent with both habits then decode by where they were cut.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_core::protocol::chunk::{
    ChunkDecoder, ChunkError, ChunkLimits, Message, MAX_CHUNK_HEADER_LEN, ZERO_COPY_WAIT_MAX,
};
use sluice_fuzz::{pieces, split_plan};

const LIMITS: ChunkLimits = ChunkLimits {
    max_message_len: 1 << 20,
    max_chunk_streams: 16,
    max_partial_bytes: 2 << 20,
};

fn run(parts: &[&[u8]]) -> Result<(Vec<Message>, u64), ChunkError> {
    let mut decoder = ChunkDecoder::new(LIMITS);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for p in parts {
        buf.extend_from_slice(p);
        while let Some(m) = decoder.decode(&mut buf)? {
            // What the session does with the two messages that change the reader.
            if m.payload.len() >= 4 {
                let v =
                    u32::from_be_bytes([m.payload[0], m.payload[1], m.payload[2], m.payload[3]]);
                match m.type_id {
                    1 => decoder.set_chunk_size(v)?,
                    2 => decoder.abort(v),
                    _ => {}
                }
            }
            assert!(m.payload.len() <= LIMITS.max_message_len as usize);
            out.push(m);
        }
        assert!(
            buf.len() <= ZERO_COPY_WAIT_MAX + MAX_CHUNK_HEADER_LEN,
            "{} bytes left unconsumed",
            buf.len()
        );
        assert!(decoder.partial_bytes() <= LIMITS.max_partial_bytes);
    }
    Ok((out, decoder.guesses()))
}

fuzz_target!(|input: &[u8]| {
    let (sizes, data) = split_plan(input);
    let split = run(&pieces(&sizes, data));
    let whole = run(&[data]);
    if let (Ok((a, 0)), Ok((b, _))) = (split, whole) {
        assert_eq!(a, b, "split and whole input decode alike");
    }
});
