//! The HTTP/1.1 request parser the server runs (`src/server/http.rs`,
//! compiled here as it is): request heads of any bytes, and the WebSocket
//! handshake read from them. Besides "no panic": a complete head is no
//! longer than the input and its body length obeys the one rule (at most
//! `MAX_REQUEST_BODY`); a partial head is within `MAX_REQUEST_HEAD`;
//! refusals are 4xx or 5xx.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/server/http.rs"]
mod http;

fuzz_target!(|data: &[u8]| {
    match http::parse_request(data) {
        http::Parsed::Complete(req, n) => {
            assert!(n <= data.len() && n <= http::MAX_REQUEST_HEAD);
            assert!(req.body_len <= http::MAX_REQUEST_BODY);
            let _ = req.keep_alive();
            if let Ok(Some(key)) = req.websocket() {
                assert_eq!(key.len(), 24, "a key is base64 of 16 bytes");
                assert_eq!(http::websocket_accept(key).len(), 28);
            }
        }
        http::Parsed::Partial => assert!(data.len() <= http::MAX_REQUEST_HEAD),
        http::Parsed::Error(status, _) => assert!((400..600).contains(&status)),
    }
});
