//! A client and a server session wired back to back, no sockets, on a
//! virtual clock: connect → createStream → publish / play → deleteStream,
//! and the state and deadline rules around them.

use bytes::{Bytes, BytesMut};
use sluice::protocol::amf::{self, Amf0Value};
use sluice::protocol::client::{ClientConfig, ClientEvent, ClientSession};
use sluice::protocol::message::UserControl;
use sluice::protocol::session::{
    Event, MediaKind, PublishRejection, ServerSession, SessionConfig, SessionError,
};
use std::time::{Duration, Instant};

struct Pair {
    server: ServerSession,
    client: ClientSession,
    to_server: BytesMut,
    to_client: BytesMut,
    now: Instant,
    server_events: Vec<Event>,
    client_events: Vec<ClientEvent>,
}

impl Pair {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            server: ServerSession::new(SessionConfig::default(), now, 7),
            client: ClientSession::new(ClientConfig::new("live", "rtmp://127.0.0.1/live"), 9),
            to_server: BytesMut::new(),
            to_client: BytesMut::new(),
            now,
            server_events: Vec::new(),
            client_events: Vec::new(),
        }
    }

    /// Moves bytes both ways until neither side has anything to say.
    fn pump(&mut self) -> Result<(), SessionError> {
        loop {
            let mut moved = false;
            while let Some(b) = self.client.poll_transmit() {
                self.to_server.extend_from_slice(&b);
                moved = true;
            }
            self.server.handle_input(self.now, &mut self.to_server)?;
            while let Some(b) = self.server.poll_transmit() {
                self.to_client.extend_from_slice(&b);
                moved = true;
            }
            self.client.handle_input(&mut self.to_client)?;
            while let Some(e) = self.server.poll_event() {
                self.server_events.push(e);
            }
            while let Some(e) = self.client.poll_event() {
                self.client_events.push(e);
            }
            if !moved {
                return Ok(());
            }
        }
    }

    fn connected() -> Self {
        let mut p = Self::new();
        p.pump().unwrap();
        assert!(
            p.client_events.contains(&ClientEvent::Connected),
            "{:?}",
            p.client_events
        );
        assert!(p.server.is_connected());
        p.client_events.clear();
        p.server_events.clear();
        p
    }

    fn created_stream(&mut self) -> u32 {
        self.client.create_stream();
        self.pump().unwrap();
        let id = self
            .client_events
            .iter()
            .find_map(|e| match e {
                ClientEvent::StreamCreated { stream_id } => Some(*stream_id),
                _ => None,
            })
            .expect("createStream answered");
        self.client_events.clear();
        id
    }

    fn statuses(&self) -> Vec<String> {
        self.client_events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Status { code, .. } => Some(code.clone()),
                _ => None,
            })
            .collect()
    }
}

fn set_data_frame() -> Bytes {
    let mut p = BytesMut::new();
    amf::encode(&Amf0Value::string("@setDataFrame"), &mut p);
    amf::encode(&Amf0Value::string("onMetaData"), &mut p);
    amf::encode(
        &Amf0Value::EcmaArray(vec![("width".into(), Amf0Value::Number(640.0))]),
        &mut p,
    );
    p.freeze()
}

#[test]
fn connect_publish_media_and_delete_stream() {
    let mut p = Pair::connected();
    let id = p.created_stream();
    assert_eq!(
        id, 1,
        "the first stream gets id 1, the shared wire form's id"
    );

    p.client.publish(id, "cam?key=abc");
    p.pump().unwrap();
    let req = match p.server_events.as_slice() {
        [Event::PublishRequested(r)] => r.clone(),
        other => panic!("expected a publish request, got {other:?}"),
    };
    assert_eq!(
        (req.app.as_str(), req.name.as_str(), req.query.as_str()),
        ("live", "cam", "key=abc")
    );
    p.server_events.clear();

    p.server.accept_publish(id);
    p.pump().unwrap();
    assert_eq!(p.statuses(), ["NetStream.Publish.Start"]);

    p.client
        .send_media(id, MediaKind::Data, 0, set_data_frame());
    let keyframe = Bytes::from_static(&[0x17, 0x01, 0, 0, 0, 0xAA, 0xBB]);
    p.client
        .send_media(id, MediaKind::Video, 40, keyframe.clone());
    p.pump().unwrap();
    match p.server_events.as_slice() {
        [Event::Media {
            kind: MediaKind::Data,
            payload: meta,
            ..
        }, Event::Media {
            kind: MediaKind::Video,
            timestamp: 40,
            payload,
            ..
        }] => {
            let values = amf::decode_all(meta, &Default::default()).unwrap();
            assert_eq!(
                values[0].as_str(),
                Some("onMetaData"),
                "@setDataFrame stripped"
            );
            assert_eq!(payload, &keyframe);
        }
        other => panic!("expected metadata then video, got {other:?}"),
    }
    p.server_events.clear();

    p.client.delete_stream(id);
    p.pump().unwrap();
    assert_eq!(p.server_events, [Event::PublishStopped { stream_id: id }]);
}

#[test]
fn play_start_sequence_and_unpublish_notice() {
    let mut p = Pair::connected();
    let id = p.created_stream();
    p.client.play(id, "cam");
    p.pump().unwrap();
    assert!(matches!(p.server_events.as_slice(), [Event::PlayRequested(r)] if r.name == "cam"));
    p.server.accept_play(id, true);
    p.pump().unwrap();
    assert_eq!(
        p.statuses(),
        ["NetStream.Play.Reset", "NetStream.Play.Start"]
    );
    assert!(p
        .client_events
        .contains(&ClientEvent::UserControl(UserControl::StreamBegin(id))));
    assert!(
        p.client_events.iter().any(|e| matches!(e,
            ClientEvent::Media { kind: MediaKind::Data, payload, .. }
                if amf::decode_all(payload, &Default::default()).unwrap()[0].as_str() == Some("|RtmpSampleAccess"))),
        "|RtmpSampleAccess sent"
    );
    p.client_events.clear();

    p.server.notify_unpublished(id);
    p.pump().unwrap();
    assert_eq!(p.statuses(), ["NetStream.Play.UnpublishNotify"]);
    assert!(p
        .client_events
        .contains(&ClientEvent::UserControl(UserControl::StreamEof(id))));
    p.client_events.clear();

    p.server.notify_published(id);
    p.pump().unwrap();
    assert_eq!(p.statuses(), ["NetStream.Play.PublishNotify"]);

    p.server_events.clear();
    p.client.delete_stream(id);
    p.pump().unwrap();
    assert_eq!(p.server_events, [Event::PlayStopped { stream_id: id }]);
}

#[test]
fn second_publisher_is_answered_bad_name() {
    let mut p = Pair::connected();
    let id = p.created_stream();
    p.client.publish(id, "cam");
    p.pump().unwrap();
    p.server.reject_publish(id, PublishRejection::BadName);
    p.pump().unwrap();
    assert_eq!(p.statuses(), ["NetStream.Publish.BadName"]);
}

#[test]
fn names_with_traversal_or_control_bytes_are_refused_without_asking_the_server() {
    for bad in [
        "../etc/passwd",
        "a/../b",
        "nul\0byte",
        "bell\x07",
        "/abs",
        &"x".repeat(64 * 1024),
    ] {
        let mut p = Pair::connected();
        let id = p.created_stream();
        p.client.publish(id, bad);
        p.pump().unwrap();
        assert!(
            p.server_events.is_empty(),
            "{bad:?} reached the server: {:?}",
            p.server_events
        );
        assert_eq!(p.statuses(), ["NetStream.Publish.BadName"], "{bad:?}");
    }
}

#[test]
fn unknown_call_with_transaction_id_gets_result_null() {
    let mut p = Pair::connected();
    let txid = p.client.send_command(0, "_checkbw", &[Amf0Value::Null]);
    p.pump().unwrap();
    assert!(txid > 1.0);
    assert!(
        p.client_events
            .iter()
            .any(|e| matches!(e, ClientEvent::Command { name, .. } if name == "_result")),
        "{:?}",
        p.client_events
    );
}

#[test]
fn create_stream_is_capped_per_connection() {
    let mut p = Pair::connected();
    let cap = SessionConfig::default().max_message_streams;
    for _ in 0..(cap + 5) {
        p.client.create_stream();
    }
    p.pump().unwrap();
    let created = p
        .client_events
        .iter()
        .filter(|e| matches!(e, ClientEvent::StreamCreated { .. }))
        .count();
    let errors = p
        .client_events
        .iter()
        .filter(|e| matches!(e, ClientEvent::Command { name, .. } if name == "_error"))
        .count();
    assert_eq!((created as u32, errors as u32), (cap, 5));
}

#[test]
fn connect_twice_is_a_protocol_error() {
    let mut p = Pair::connected();
    p.client.send_command(
        0,
        "connect",
        &[Amf0Value::object([("app", Amf0Value::string("live"))])],
    );
    assert!(matches!(p.pump(), Err(SessionError::Protocol(_))));
}

#[test]
fn handshake_and_connect_share_one_absolute_deadline() {
    let mut p = Pair::new();
    // Handshake completes (connect is sent), but pretend the server never
    // saw connect: a fresh server fed only the handshake.
    let now = p.now;
    let mut server = ServerSession::new(SessionConfig::default(), now, 1);
    let mut c0c1 = BytesMut::new();
    while let Some(b) = p.client.poll_transmit() {
        c0c1.extend_from_slice(&b);
    }
    // Dribble a byte a second: each read is "activity", the deadline still holds.
    let deadline = SessionConfig::default().handshake_timeout;
    let mut t = now;
    let mut closed_at = None;
    for b in c0c1.iter().take(60) {
        t += Duration::from_secs(1);
        let mut one = BytesMut::from(&[*b][..]);
        server.handle_input(t, &mut one).unwrap();
        if server.handle_timeout(t).is_err() {
            closed_at = Some(t);
            break;
        }
    }
    assert_eq!(closed_at, Some(now + deadline));
}

#[test]
fn silent_peer_is_pinged_then_closed() {
    let mut p = Pair::connected();
    let cfg = SessionConfig::default();
    p.now += cfg.ping_interval;
    p.server.handle_timeout(p.now).unwrap();
    p.pump().unwrap();
    assert!(
        p.client_events
            .iter()
            .any(|e| matches!(e, ClientEvent::UserControl(UserControl::PingRequest(_)))),
        "pinged"
    );
    // The client answered (PingResponse), so the clock restarts.
    p.now += cfg.ping_interval / 2;
    p.server.handle_timeout(p.now).unwrap();
    // Now silence for the whole ping timeout.
    p.now += cfg.ping_timeout;
    assert!(p.server.handle_timeout(p.now).is_err());
}

#[test]
fn acknowledges_at_the_peer_window() {
    let mut p = Pair::connected();
    let id = p.created_stream();
    p.client.publish(id, "cam");
    p.pump().unwrap();
    p.server.accept_publish(id);
    p.pump().unwrap();
    p.client_events.clear();
    // The client announced a 2.5 MB window: 100 x 30 kB crosses it once.
    for i in 0..100u32 {
        p.client.send_media(
            id,
            MediaKind::Audio,
            i * 20,
            Bytes::from(vec![0xAF; 30_000]),
        );
        p.pump().unwrap();
    }
    let acks: Vec<u32> = p
        .client_events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Acknowledgement(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(acks.len(), 1, "{acks:?}");
    assert!(acks[0] >= 2_500_000 && u64::from(acks[0]) <= p.server.bytes_received());
}

#[test]
fn media_sent_before_the_publish_answer_waits_for_it() {
    let mut p = Pair::connected();
    let id = p.created_stream();
    p.client.publish(id, "cam");
    // No waiting for Publish.Start: media right behind the command.
    p.client.send_media(
        id,
        MediaKind::Video,
        0,
        Bytes::from_static(&[0x17, 0x00, 0, 0, 0, 1]),
    );
    p.pump().unwrap();
    assert!(matches!(
        p.server_events.as_slice(),
        [Event::PublishRequested(_)]
    ));
    assert!(p.server.is_awaiting_decision());
    p.server_events.clear();
    p.server.accept_publish(id);
    // The server feeds the bytes it kept once it has decided.
    p.pump().unwrap();
    assert!(
        matches!(
            p.server_events.as_slice(),
            [Event::Media {
                kind: MediaKind::Video,
                ..
            }]
        ),
        "{:?}",
        p.server_events
    );
}

#[test]
fn client_answers_set_peer_bandwidth_with_its_window() {
    use sluice::protocol::chunk::{ChunkDecoder, ChunkEncoder, ChunkLimits};
    use sluice::protocol::message;
    let mut p = Pair::connected();
    // The server's chunk stream continues with its own encoder state: a new
    // csid-2 message from a fresh encoder starts with a type-0 header.
    let enc = ChunkEncoder::new();
    let mut wire = BytesMut::new();
    enc.encode(&message::set_peer_bandwidth(1_000_000, 2), &mut wire)
        .unwrap();
    p.client.handle_input(&mut wire).unwrap();
    let mut sent = BytesMut::new();
    while let Some(b) = p.client.poll_transmit() {
        sent.extend_from_slice(&b);
    }
    let mut dec = ChunkDecoder::new(ChunkLimits {
        max_message_len: 1 << 20,
        max_chunk_streams: 8,
        max_partial_bytes: 1 << 20,
    });
    let msg = dec.decode(&mut sent).unwrap().expect("a reply");
    assert_eq!(msg.type_id, 5, "Window Acknowledgement Size");
    assert_eq!(&msg.payload[..], &1_000_000u32.to_be_bytes());
    // The same window again needs no answer.
    enc.encode(&message::set_peer_bandwidth(1_000_000, 2), &mut wire)
        .unwrap();
    p.client.handle_input(&mut wire).unwrap();
    assert!(p.client.poll_transmit().is_none());
}

/// Video on demand: play's arguments reach the server; StreamIsRecorded
/// precedes StreamBegin; seek, pause and SetBufferLength come out as
/// events with their values; the server's answers are Seek.Notify then
/// Play.Start, and at the end onPlayStatus Play.Complete then Play.Stop.
#[test]
fn recorded_stream_commands_and_notices() {
    use sluice::protocol::session::PlayRejection;
    let mut p = Pair::connected();
    let id = p.created_stream();
    p.client
        .play_with(id, "movie.mp4?k=1", 1500.0, 4000.0, false);
    p.pump().unwrap();
    let req = match p.server_events.as_slice() {
        [Event::PlayRequested(r)] => r.clone(),
        other => panic!("expected a play request, got {other:?}"),
    };
    assert_eq!(req.name, "movie.mp4");
    assert_eq!(
        (req.start, req.duration, req.reset),
        (1500.0, 4000.0, false)
    );
    p.server_events.clear();

    p.server.accept_play_recorded(id, req.reset);
    p.pump().unwrap();
    let controls: Vec<&UserControl> = p
        .client_events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::UserControl(u) => Some(u),
            _ => None,
        })
        .collect();
    assert_eq!(
        controls,
        [
            &UserControl::StreamIsRecorded(id),
            &UserControl::StreamBegin(id)
        ]
    );
    assert_eq!(p.statuses(), ["NetStream.Play.Start"], "no Play.Reset");
    p.client_events.clear();

    p.client.set_buffer_length(id, 2500);
    p.client.seek(id, 3210.0);
    p.client.pause(id, true, 4000.0);
    p.client.seek(id, f64::NAN);
    p.pump().unwrap();
    assert_eq!(
        p.server_events,
        [
            Event::BufferLength {
                stream_id: id,
                millis: 2500
            },
            Event::Seek {
                stream_id: id,
                position_ms: 3210.0
            },
            Event::Pause {
                stream_id: id,
                paused: true,
                position_ms: 4000.0
            },
            Event::Seek {
                stream_id: id,
                position_ms: 0.0
            },
        ]
    );
    assert_eq!(p.statuses(), ["NetStream.Pause.Notify"]);
    p.client_events.clear();

    p.server.notify_seek(id, 3000);
    p.pump().unwrap();
    assert_eq!(
        p.statuses(),
        ["NetStream.Seek.Notify", "NetStream.Play.Start"]
    );
    p.client_events.clear();

    p.server.notify_complete(id, 6000, 12345);
    p.pump().unwrap();
    let play_status = p.client_events.iter().find_map(|e| match e {
        ClientEvent::Media {
            kind: MediaKind::Data,
            payload,
            ..
        } => amf::decode_all(payload, &Default::default()).ok(),
        _ => None,
    });
    let play_status = play_status.expect("onPlayStatus");
    assert_eq!(play_status[0].as_str(), Some("onPlayStatus"));
    assert_eq!(
        play_status[1].get("code").and_then(|c| c.as_str()),
        Some("NetStream.Play.Complete")
    );
    assert_eq!(
        play_status[1].get("duration").and_then(|c| c.as_number()),
        Some(6.0)
    );
    assert_eq!(p.statuses(), ["NetStream.Play.Stop"]);
    assert!(p
        .client_events
        .contains(&ClientEvent::UserControl(UserControl::StreamEof(id))));
    p.client_events.clear();

    // Still playing: a seek back works; a failure ends the play.
    p.server.notify_seek(id, 0);
    p.server
        .notify_failed(id, "truncated file: the file shrank");
    p.server.notify_seek(id, 0);
    p.pump().unwrap();
    assert_eq!(
        p.statuses(),
        [
            "NetStream.Seek.Notify",
            "NetStream.Play.Start",
            "NetStream.Play.Failed"
        ]
    );
    let described = p
        .client
        .last_status()
        .and_then(|s| s.get("description").cloned());
    assert_eq!(
        described
            .and_then(|d| d.as_str().map(str::to_owned))
            .as_deref(),
        Some("truncated file: the file shrank")
    );

    // A play refused with a reason.
    p.client_events.clear();
    let id2 = p.created_stream();
    p.client.play(id2, "missing.mp4");
    p.pump().unwrap();
    p.server
        .reject_play_because(id2, PlayRejection::StreamNotFound, "no such file");
    p.pump().unwrap();
    assert_eq!(p.statuses(), ["NetStream.Play.StreamNotFound"]);
}

#[test]
fn seek_on_a_stream_that_is_not_playing_fails_at_once() {
    let mut p = Pair::connected();
    let id = p.created_stream();
    p.client.seek(id, 1000.0);
    p.pump().unwrap();
    assert!(p.server_events.is_empty(), "{:?}", p.server_events);
    assert_eq!(p.statuses(), ["NetStream.Seek.Failed"]);
}
