//! AMF3 decoding (references, traits, vectors, dictionaries) through the
//! AVM+ switch marker every AMF3 value in RTMP rides behind, with the same
//! round trip as the AMF0 target.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Vec::with_capacity(data.len() + 1);
    input.push(0x11);
    input.extend_from_slice(data);
    sluice_fuzz::amf_round_trip(&input);
});
