//! AMF0 decoding (with the AVM+ switch into AMF3) and a round trip: what
//! decodes, encodes; that encoding decodes to values that encode to the same
//! bytes again (byte equality, so NaN is compared exactly).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_fuzz::amf_round_trip(data);
});
