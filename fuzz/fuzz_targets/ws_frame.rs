//! The WebSocket frame decoder ws-flv clients reach (`src/server/http.rs`,
//! compiled here as it is): frames of any bytes, decoded until one is
//! incomplete or an error. Besides "no panic": a frame consumes at most its
//! header and `MAX_WS_CLIENT_MESSAGE` bytes, a ping carries at most 125
//! bytes, and an error's close status is 1002 or 1009.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/server/http.rs"]
mod http;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match http::decode_ws_frame(&mut buf) {
            Ok(Some(frame)) => {
                let used = before - buf.len();
                assert!(used >= 6 && used <= 14 + http::MAX_WS_CLIENT_MESSAGE);
                if let http::WsFrame::Ping(p) = frame {
                    assert!(p.len() <= 125);
                }
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "nothing consumed for a partial frame");
                break;
            }
            Err(e) => {
                assert!(matches!(e.close_code(), 1002 | 1009));
                break;
            }
        }
    }
});
