//! A real ffmpeg publish session (client-to-server bytes, recorded with
//! `tests/data/capture_publish.py`) fed to a server session whole, byte by
//! byte and in random splits: the events are the same every time.

use bytes::BytesMut;
use proptest::prelude::*;
use sluice::media::{classify_video, FrameClass};
use sluice::protocol::session::{Event, MediaKind, ServerSession, SessionConfig};
use std::time::Instant;

const RECORDED: &[u8] = include_bytes!("data/ffmpeg_publish.bin");

/// Feeds `RECORDED` in pieces of the given sizes (the rest in one piece),
/// accepting the publish when asked, and returns every event.
fn events(splits: &[usize]) -> Vec<Event> {
    let now = Instant::now();
    let mut server = ServerSession::new(SessionConfig::default(), now, 1);
    let mut buf = BytesMut::new();
    let mut events = Vec::new();
    let mut at = 0;
    let mut sizes = splits.iter().copied().chain(std::iter::repeat(usize::MAX));
    while at < RECORDED.len() {
        let n = sizes.next().unwrap().max(1).min(RECORDED.len() - at);
        buf.extend_from_slice(&RECORDED[at..at + n]);
        at += n;
        // As the server does: feed again after answering a publish request,
        // since the session pauses at the decision.
        loop {
            server
                .handle_input(now, &mut buf)
                .expect("a real ffmpeg session is valid");
            while server.poll_transmit().is_some() {}
            let mut decided = false;
            while let Some(e) = server.poll_event() {
                if let Event::PublishRequested(r) = &e {
                    server.accept_publish(r.stream_id);
                    decided = true;
                }
                events.push(e);
            }
            if !decided {
                break;
            }
        }
    }
    events
}

#[test]
fn recorded_ffmpeg_publish_decodes_to_the_expected_events() {
    let ev = events(&[]);
    assert!(matches!(&ev[0], Event::Connected { app, .. } if app == "live"));
    assert!(matches!(&ev[1], Event::PublishRequested(r) if r.name == "rec"));
    let media: Vec<(MediaKind, &[u8])> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Media { kind, payload, .. } => Some((*kind, &payload[..])),
            _ => None,
        })
        .collect();
    // The server logged 152 frames for this capture.
    assert_eq!(media.len(), 152);
    assert_eq!(media[0].0, MediaKind::Data, "onMetaData first");
    let video: Vec<FrameClass> = media
        .iter()
        .filter(|(k, _)| *k == MediaKind::Video)
        .map(|(_, p)| classify_video(p).class)
        .collect();
    assert_eq!(video[0], FrameClass::SequenceHeader);
    assert_eq!(video[1], FrameClass::Keyframe);
    assert_eq!(
        video.iter().filter(|c| **c == FrameClass::Keyframe).count(),
        2,
        "-g 30 over 2 s"
    );
    assert!(matches!(ev.last(), Some(Event::PublishStopped { .. })));
}

#[test]
fn recorded_ffmpeg_publish_byte_by_byte_matches_whole() {
    let ones = vec![1; RECORDED.len()];
    assert_eq!(events(&ones), events(&[]));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn recorded_ffmpeg_publish_in_random_splits_matches_whole(
        splits in proptest::collection::vec(1usize..5000, 1..200)
    ) {
        prop_assert_eq!(events(&splits), events(&[]));
    }
}
