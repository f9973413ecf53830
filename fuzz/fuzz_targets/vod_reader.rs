//! The video on demand readers: any bytes as an MP4 or FLV file to
//! `vod::Reader` (the reads it asks for answered from the input, as the
//! disk threads answer them), optionally after a seek; for MP4, the HLS VOD
//! plan, playlist, init segment and first built segment of what it indexed.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_core::vod::{hls, Container, Limits, Reader, Step};

fuzz_target!(|input: &[u8]| {
    let Some((&mode, file)) = input.split_first() else {
        return;
    };
    let container = if mode & 1 == 0 {
        Container::Mp4
    } else {
        Container::Flv
    };
    // Small limits, so the fuzzer reaches them.
    let limits = Limits {
        read_size: 4096,
        max_box: 1 << 20,
        max_samples: 10_000,
        max_sample: 1 << 20,
    };
    let len = file.len() as u64;
    let mut r = Reader::new(container, len, limits);
    if mode & 2 != 0 {
        r.seek(u64::from(mode >> 2) * 250);
    }
    // Every step makes progress: a read, a frame or the end, so a bounded
    // index means a bounded number of steps.
    let mut steps = 0usize;
    loop {
        steps += 1;
        assert!(steps <= 1_000_000, "the reader does not end");
        match r.poll() {
            Ok(Step::Read(req)) => {
                // Never beyond the end of the file.
                assert!(req.offset + req.len as u64 <= len, "a read past the end");
                let a = req.offset as usize;
                let data = Bytes::copy_from_slice(&file[a..a + req.len]);
                if r.handle_read(req, data).is_err() {
                    return;
                }
            }
            Ok(Step::Frame(_)) | Ok(Step::Seeked { .. }) => {}
            Ok(Step::Wait) => panic!("Wait with no read in flight"),
            Ok(Step::End) | Err(_) => break,
        }
    }
    if let Some(movie) = r.movie().cloned() {
        if let Ok(plan) = hls::Plan::new(&movie, hls::TARGET_SEGMENT_MS) {
            let _ = plan.playlist("f.mp4", "");
            if plan.layout == hls::Layout::Built {
                let _ = hls::init(&movie);
                let reads = hls::segment_reads(&movie, &plan, 0);
                let data: Vec<(u64, Bytes)> = reads
                    .iter()
                    .filter_map(|q| {
                        let a = usize::try_from(q.offset).ok()?;
                        let b = a.checked_add(q.len)?;
                        Some((q.offset, Bytes::copy_from_slice(file.get(a..b)?)))
                    })
                    .collect();
                let _ = hls::segment(&movie, &plan, 0, &data);
            }
        }
    }
});
