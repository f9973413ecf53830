//! Message payload parsers: aggregate messages (split without copying,
//! timestamps rebased), user control events (with a round trip) and the
//! 4-byte control values.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_core::protocol::chunk::Message;
use sluice_core::protocol::message::{read_u32, split_aggregate, UserControl};

fuzz_target!(|data: &[u8]| {
    let (ts, body) = match data.split_first() {
        Some((&b, rest)) => (u32::from(b) << 24 | 0x00_FF_FF, rest),
        None => (0, data),
    };
    let msg = Message {
        csid: 4,
        timestamp: ts,
        type_id: 22,
        stream_id: 1,
        payload: Bytes::copy_from_slice(body),
    };
    if let Ok(subs) = split_aggregate(&msg) {
        let total: usize = subs.iter().map(|m| m.payload.len()).sum();
        assert!(total <= body.len());
        if let Some(first) = subs.first() {
            assert_eq!(first.timestamp, ts, "rebased on the aggregate's timestamp");
        }
    }
    if let Ok(ev) = UserControl::decode(body) {
        if !matches!(ev, UserControl::Other(_)) {
            assert_eq!(UserControl::decode(&ev.encode()), Ok(ev));
        }
    }
    let _ = read_u32(1, body);
});
