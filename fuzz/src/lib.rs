//! Helpers shared by the fuzz targets.

/// Splits fuzzer input into a plan of read sizes and the data itself, so a
/// target can feed the data the way sockets deliver it: in pieces whose
/// boundaries the fuzzer chooses.
///
/// Layout: byte 0 = n (low 4 bits: 0..=15 piece sizes follow), then n
/// little-endian u16 sizes, then the data. Sizes are used in turn, cycling;
/// a size of 0 means "the rest". With n = 0 the data arrives in one piece.
pub fn split_plan(input: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&head, rest)) = input.split_first() else {
        return (Vec::new(), input);
    };
    let n = usize::from(head & 0x0F);
    if rest.len() < 2 * n {
        return (Vec::new(), rest);
    }
    let (sizes, data) = rest.split_at(2 * n);
    let sizes = sizes
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    (sizes, data)
}

/// The pieces of `data` under `sizes` (see [`split_plan`]).
pub fn pieces<'a>(sizes: &[usize], mut data: &'a [u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    while !data.is_empty() {
        let want = match sizes.get(i % sizes.len().max(1)) {
            Some(&0) | None => data.len(),
            Some(&n) => n.min(data.len()),
        };
        let (piece, rest) = data.split_at(want);
        out.push(piece);
        data = rest;
        i += 1;
    }
    out
}

/// A plan header that feeds `data` in one piece (for seeds).
pub fn whole(data: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8];
    v.extend_from_slice(data);
    v
}

/// Decodes `input` as AMF0; if it decodes, checks the round trip.
pub fn amf_round_trip(input: &[u8]) {
    use bytes::BytesMut;
    use sluice_core::protocol::amf::{decode_all, encode, AmfLimits};
    let limits = AmfLimits::default();
    let Ok(values) = decode_all(input, &limits) else {
        return;
    };
    let mut once = BytesMut::new();
    for v in &values {
        encode(v, &mut once);
    }
    // References resolved on decode are written inline: the encoding may
    // hold more values than the input, never deeper ones.
    let relaxed = AmfLimits {
        max_values: usize::MAX,
        ..limits
    };
    let again = decode_all(&once, &relaxed).expect("our own encoding decodes");
    let mut twice = BytesMut::new();
    for v in &again {
        encode(v, &mut twice);
    }
    assert_eq!(once, twice, "encode(decode(encode(v))) == encode(v)");
}
