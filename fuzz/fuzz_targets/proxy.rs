//! PROXY protocol headers (v1 and v2) as a trusted load balancer's
//! connection starts: `decode` and `starts_with_header` from the server's
//! own src/server/proxy.rs (a file of pure functions over bytes, compiled
//! here on its own with the `ppp` crate it calls). Besides "no panic": a
//! decoded header lies within the input and does not depend on the bytes
//! after it, every shorter prefix of it asks for more bytes, and nothing
//! past the spec's maxima is ever asked for.
#![no_main]

#[allow(dead_code, unreachable_pub)]
#[path = "../../src/server/proxy.rs"]
mod proxy;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let _ = proxy::starts_with_header(input);
    match proxy::decode(input) {
        Ok(Some(h)) => {
            assert!(h.len <= input.len() && h.len >= 8, "{h:?}");
            assert!(h.len <= proxy::V2_MAX_LEN);
            assert_eq!(
                proxy::decode(&input[..h.len]),
                Ok(Some(h)),
                "the header alone"
            );
            for n in 0..h.len {
                assert_eq!(
                    proxy::decode(&input[..n]),
                    Ok(None),
                    "a prefix of {n} bytes"
                );
            }
        }
        Ok(None) => assert!(
            input.len() < proxy::V2_MAX_LEN,
            "more than a header's maximum"
        ),
        Err(_) => {}
    }
});
