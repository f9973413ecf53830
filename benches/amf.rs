//! AMF0 decode throughput on the two payloads a server decodes most: the
//! `connect` command (once per connection) and `@setDataFrame` metadata (once
//! per publish, re-sent to every player), both as FFmpeg/OBS send them.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::protocol::amf::{decode_all, encode, Amf0Value, AmfLimits};
use std::hint::black_box;

fn connect_command() -> Vec<Amf0Value> {
    vec![
        Amf0Value::string("connect"),
        Amf0Value::Number(1.0),
        Amf0Value::object([
            ("app", Amf0Value::string("live")),
            ("flashVer", Amf0Value::string("FMLE/3.0")),
            ("tcUrl", Amf0Value::string("rtmp://127.0.0.1/live")),
            ("fpad", Amf0Value::Boolean(false)),
            ("capabilities", Amf0Value::Number(15.0)),
            ("audioCodecs", Amf0Value::Number(3191.0)),
            ("videoCodecs", Amf0Value::Number(252.0)),
            ("videoFunction", Amf0Value::Number(1.0)),
            ("objectEncoding", Amf0Value::Number(0.0)),
        ]),
    ]
}

/// `@setDataFrame("onMetaData", {...})` with the fields FFmpeg's FLV muxer
/// writes for a 720p30 H.264/AAC stream.
fn set_data_frame() -> Vec<Amf0Value> {
    let fields: Vec<(String, Amf0Value)> = [
        ("duration", Amf0Value::Number(0.0)),
        ("width", Amf0Value::Number(1280.0)),
        ("height", Amf0Value::Number(720.0)),
        ("videodatarate", Amf0Value::Number(2500.0)),
        ("framerate", Amf0Value::Number(30.0)),
        ("videocodecid", Amf0Value::Number(7.0)),
        ("audiodatarate", Amf0Value::Number(128.0)),
        ("audiosamplerate", Amf0Value::Number(44100.0)),
        ("audiosamplesize", Amf0Value::Number(16.0)),
        ("stereo", Amf0Value::Boolean(true)),
        ("audiocodecid", Amf0Value::Number(10.0)),
        ("major_brand", Amf0Value::string("isom")),
        ("minor_version", Amf0Value::string("512")),
        ("compatible_brands", Amf0Value::string("isomiso2avc1mp41")),
        ("encoder", Amf0Value::string("Lavf59.27.100")),
        ("filesize", Amf0Value::Number(0.0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    vec![
        Amf0Value::string("@setDataFrame"),
        Amf0Value::string("onMetaData"),
        Amf0Value::EcmaArray(fields),
    ]
}

fn encode_all(values: &[Amf0Value]) -> Vec<u8> {
    let mut dst = BytesMut::new();
    for v in values {
        encode(v, &mut dst);
    }
    dst.to_vec()
}

fn decode(c: &mut Criterion) {
    let limits = AmfLimits::default();
    let mut group = c.benchmark_group("amf0_decode");
    for (name, values) in [
        ("connect", connect_command()),
        ("setDataFrame_onMetaData", set_data_frame()),
    ] {
        let bytes = encode_all(&values);
        assert_eq!(decode_all(&bytes, &limits).as_ref(), Ok(&values));
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| decode_all(black_box(&bytes), &limits));
        });
    }
    group.finish();
}

fn encode_bench(c: &mut Criterion) {
    let values = connect_command();
    let len = encode_all(&values).len();
    let mut group = c.benchmark_group("amf0_encode");
    group.throughput(Throughput::Bytes(len as u64));
    group.bench_function("connect", |b| {
        let mut dst = BytesMut::with_capacity(len);
        b.iter(|| {
            dst.clear();
            for v in black_box(&values) {
                encode(v, &mut dst);
            }
            black_box(dst.len())
        });
    });
    group.finish();
}

criterion_group!(benches, decode, encode_bench);
criterion_main!(benches);
