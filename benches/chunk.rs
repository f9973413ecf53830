//! Chunk stream throughput: decoding a realistic publish stream, and writing
//! media frames with `ChunkEncoder::encode` and `wire_form`.
//!
//! The stream mimics 720p30 at about 3 Mbit/s from OBS or ffmpeg: H.264 video
//! on csid 6 (12 KB frames on average, a 100 KB keyframe every 60 frames) and
//! AAC audio on csid 4 (about 370 bytes every 23 ms), 300 messages in
//! timestamp order, chunk size 4096.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice::protocol::chunk::{wire_form, ChunkDecoder, ChunkEncoder, ChunkLimits, Message};
use std::hint::black_box;

const CHUNK_SIZE: u32 = 4096;
const MESSAGES: usize = 300;

fn limits() -> ChunkLimits {
    ChunkLimits {
        max_message_len: 16 * 1024 * 1024,
        max_chunk_streams: 64,
        max_partial_bytes: 32 * 1024 * 1024,
    }
}

/// Deterministic filler bytes (xorshift), so nothing compresses or repeats.
fn payload(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn media(csid: u32, timestamp: u32, type_id: u8, len: usize, seed: u64) -> Message {
    Message {
        csid,
        timestamp,
        type_id,
        stream_id: 1,
        payload: payload(len, seed),
    }
}

/// The publish stream described in the module docs, as the messages sent.
fn publish_stream() -> Vec<Message> {
    let mut out = Vec::with_capacity(MESSAGES);
    let (mut video, mut audio) = (0u32, 0u32);
    while out.len() < MESSAGES {
        let video_ts = video * 1000 / 30;
        let audio_ts = audio * 1024 * 1000 / 44_100;
        if video_ts <= audio_ts {
            // Inter frames vary 8..16 KB around 12 KB.
            let len = if video % 60 == 0 {
                100_000
            } else {
                8_000 + (video as usize * 2_654_435_761) % 8_000
            };
            out.push(media(6, video_ts, 9, len, u64::from(video)));
            video += 1;
        } else {
            let len = 340 + (audio as usize * 40_503) % 60;
            out.push(media(4, audio_ts, 8, len, 1 << 32 | u64::from(audio)));
            audio += 1;
        }
    }
    out
}

fn encoded(msgs: &[Message]) -> BytesMut {
    let mut enc = ChunkEncoder::new();
    enc.set_chunk_size(CHUNK_SIZE);
    let mut buf = BytesMut::new();
    for m in msgs {
        enc.encode(m, &mut buf).expect("encodable");
    }
    buf
}

fn new_decoder() -> ChunkDecoder {
    let mut dec = ChunkDecoder::new(limits());
    dec.set_chunk_size(CHUNK_SIZE).unwrap();
    dec
}

fn decode(c: &mut Criterion) {
    let msgs = publish_stream();
    let input = encoded(&msgs);
    let mut group = c.benchmark_group("chunk_decode");
    group.throughput(Throughput::Bytes(input.len() as u64));

    // The whole stream in the buffer at once.
    group.bench_function("publish_stream_one_buffer", |b| {
        b.iter_batched(
            || input.clone(),
            |mut src| {
                let mut dec = new_decoder();
                let mut n = 0;
                while let Some(m) = dec.decode(&mut src).unwrap() {
                    black_box(&m);
                    n += 1;
                }
                assert_eq!(n, MESSAGES);
            },
            BatchSize::LargeInput,
        )
    });

    // As a server reads it: 64 KiB at a time appended to a read buffer,
    // decoding after each read (the append stands in for the read's copy).
    let frozen = input.clone().freeze();
    group.bench_function("publish_stream_64k_reads", |b| {
        b.iter(|| {
            let mut dec = new_decoder();
            let mut src = BytesMut::with_capacity(128 * 1024);
            let mut n = 0;
            for read in frozen.chunks(64 * 1024) {
                src.reserve(read.len());
                src.extend_from_slice(read);
                while let Some(m) = dec.decode(&mut src).unwrap() {
                    black_box(&m);
                    n += 1;
                }
            }
            assert_eq!(n, MESSAGES);
        })
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut enc = ChunkEncoder::new();
    enc.set_chunk_size(CHUNK_SIZE);
    for (name, len) in [("12k", 12_000), ("100k", 100_000)] {
        let m = media(6, 40_000, 9, len, 7);
        let mut group = c.benchmark_group(format!("chunk_encode_{name}"));
        group.throughput(Throughput::Bytes(len as u64));
        let mut dst = BytesMut::with_capacity(2 * len);
        group.bench_function("encode", |b| {
            b.iter(|| {
                dst.clear();
                enc.encode(black_box(&m), &mut dst).expect("encodable");
                black_box(dst.len())
            })
        });
        group.bench_function("wire_form", |b| {
            b.iter(|| wire_form(CHUNK_SIZE, black_box(&m)).expect("encodable"))
        });
        group.finish();
    }
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
