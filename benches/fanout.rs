//! The fan-out path without sockets: one published frame built once
//! (classification, timestamp mapping, RTMP wire form) and queued to 1,000
//! subscriber queues, each then drained with one vectored write into a sink.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use sluice::protocol::session::MediaKind;
use sluice::server::base::ConnId;
use sluice::server::queue::{Item, OutQueue};
use sluice::server::stream::{Format, GopLimits, PublisherInfo, PublisherKind, Registry};
use std::hint::black_box;

const SUBSCRIBERS: usize = 1_000;

fn frame_payload(len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    v[0] = 0x27; // inter frame, AVC
    v[1] = 0x01; // NALU
    Bytes::from(v)
}

fn fanout(c: &mut Criterion) {
    let registry = Registry::new(
        4096,
        GopLimits {
            max_bytes: 4 << 20,
            max_frames: 2048,
        },
    );
    let (stream, _) = registry
        .publish(
            "live/bench",
            PublisherInfo {
                conn_id: ConnId(1),
                worker: 0,
                peer: "127.0.0.1:1".parse().unwrap(),
                kind: PublisherKind::Rtmp,
                since: std::time::SystemTime::now(),
            },
        )
        .unwrap();
    let mut g = c.benchmark_group("fanout");
    for len in [12_000usize, 100_000] {
        let payload = frame_payload(len);
        g.throughput(Throughput::Bytes((len * SUBSCRIBERS) as u64));
        g.bench_function(format!("push_and_queue_{len}B_to_{SUBSCRIBERS}"), |b| {
            let mut queues: Vec<OutQueue> = (0..SUBSCRIBERS).map(|_| OutQueue::default()).collect();
            let mut ts = 0u32;
            b.iter(|| {
                ts = ts.wrapping_add(33);
                let (frame, _) = stream
                    .push_from(ConnId(1), MediaKind::Video, ts, payload.clone())
                    .expect("connection 1 publishes");
                for q in &mut queues {
                    q.push(Item::Frame(frame.clone(), Format::Rtmp));
                }
                let mut sink = std::io::sink();
                for q in &mut queues {
                    while q.write_to(&mut sink).unwrap() > 0 {}
                }
                black_box(&queues);
            })
        });
        g.bench_function(format!("queue_only_{len}B_to_{SUBSCRIBERS}"), |b| {
            let (frame, _) = stream
                .push_from(ConnId(1), MediaKind::Video, 0, payload.clone())
                .expect("connection 1 publishes");
            b.iter_batched_ref(
                || {
                    (0..SUBSCRIBERS)
                        .map(|_| OutQueue::default())
                        .collect::<Vec<_>>()
                },
                |queues| {
                    for q in queues.iter_mut() {
                        q.push(Item::Frame(frame.clone(), Format::Rtmp));
                    }
                    black_box(queues);
                },
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
