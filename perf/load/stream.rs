//! The generated stream: 720p30 H.264 + AAC shaped like an encoder's output
//! at about 3 Mbit/s (keyframe every 2 s, five times a P-frame), with every
//! audio and video payload stamped so a player can check it.
//!
//! ```text
//!  video: 17|27 01 00 00 00 | NALU length u32 | 65|41 | STAMP | fill...
//!  audio: AF 01             | STAMP | fill...
//!  STAMP: magic "SLCE" u32 | seq u32 | sent_ns u64 | payload length u32   (big endian)
//! ```
//! `seq` counts video and audio frames separately from 0; `sent_ns` is the
//! publisher's wall clock (nanoseconds since the UNIX epoch) when it queued
//! the frame; every fill byte is [`fill_byte`] of the kind and seq, so a
//! player verifies the whole payload with one pass and no table.

use bytes::{BufMut, Bytes, BytesMut};
use sluice::protocol::amf::{self, Amf0Value};
use sluice::protocol::session::MediaKind;

/// Marks a stamped payload.
pub const MAGIC: u32 = 0x534C_4345;
/// Bytes of the stamp.
pub const STAMP_LEN: usize = 20;
/// Offset of the stamp in a video payload (AVC header, NALU length, NAL header).
pub const VIDEO_STAMP_AT: usize = 5 + 4 + 1;
/// Offset of the stamp in an audio payload (AAC header).
pub const AUDIO_STAMP_AT: usize = 2;

/// SPS and PPS of a 1280x720 High-profile x264 stream, so servers that parse
/// the AVC decoder configuration (node-media-server, nginx-rtmp's codec
/// module) see a real one.
const SPS: &[u8] = &[
    0x67, 0x64, 0x00, 0x1f, 0xac, 0xd9, 0x40, 0x50, 0x05, 0xbb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00,
    0x10, 0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x83, 0x19, 0x60,
];
const PPS: &[u8] = &[0x68, 0xeb, 0xe3, 0xcb, 0x22, 0xc0];

/// Which elementary stream a stamped frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    Video,
    Audio,
}

/// What a stamp says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub seq: u32,
    pub sent_ns: u64,
}

/// The byte every fill position of frame `seq` of `track` holds.
pub fn fill_byte(track: Track, seq: u32) -> u8 {
    let salt = match track {
        Track::Video => 0x3B,
        Track::Audio => 0xA5,
    };
    (seq as u8).wrapping_mul(31).wrapping_add(salt)
}

/// Why a payload failed its check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StampError {
    /// Too short or no magic: not one of ours, or mangled at the front.
    NoStamp,
    /// The stamped length differs from the received one.
    Length { stamped: u32, got: usize },
    /// A fill byte differs.
    Fill,
}

/// Reads and verifies a stamped payload. `Ok(None)` for payloads that carry
/// no stamp by design (sequence headers, metadata).
pub fn check(track: Track, payload: &[u8]) -> Result<Option<(Stamp, bool)>, StampError> {
    let (at, key) = match track {
        Track::Video => {
            if payload.len() >= 2 && payload[1] == 0 {
                return Ok(None); // AVC sequence header
            }
            (VIDEO_STAMP_AT, payload.first().is_some_and(|b| b >> 4 == 1))
        }
        Track::Audio => {
            if payload.len() >= 2 && payload[1] == 0 {
                return Ok(None); // AAC sequence header
            }
            (AUDIO_STAMP_AT, false)
        }
    };
    let Some(s) = payload.get(at..at + STAMP_LEN) else {
        return Err(StampError::NoStamp);
    };
    let be32 = |i: usize| u32::from_be_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    if be32(0) != MAGIC {
        return Err(StampError::NoStamp);
    }
    let seq = be32(4);
    let mut ns = [0u8; 8];
    ns.copy_from_slice(&s[8..16]);
    let sent_ns = u64::from_be_bytes(ns);
    let stamped = be32(16);
    if stamped as usize != payload.len() {
        return Err(StampError::Length {
            stamped,
            got: payload.len(),
        });
    }
    let fill = fill_byte(track, seq);
    if !all_equal(&payload[at + STAMP_LEN..], fill) {
        return Err(StampError::Fill);
    }
    Ok(Some((Stamp { seq, sent_ns }, key)))
}

/// True when every byte is `v`. No early exit, so it compiles to wide
/// vector compares: a player checks 3 Mbit/s x 2,000 of payload on one core.
fn all_equal(bytes: &[u8], v: u8) -> bool {
    bytes.iter().fold(0u8, |acc, &b| acc | (b ^ v)) == 0
}

/// One frame to publish.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: MediaKind,
    /// RTMP timestamp, milliseconds from the start of the stream.
    pub timestamp: u32,
    /// When to send it, nanoseconds of media time from the start.
    #[allow(dead_code)] // the limit program paces by it; the publisher asks the generator
    pub due_ns: u64,
    pub payload: Bytes,
}

/// Shape of the generated stream.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub fps: u32,
    /// Frames per GOP (keyframe interval).
    pub gop: u32,
    /// Total bitrate, bits per second, audio included.
    pub bitrate: u64,
    /// Keyframe size as a multiple of a P-frame.
    pub key_ratio: u32,
    /// Audio: AAC at 44.1 kHz, 1024 samples per frame, this many bytes each.
    pub audio_bytes: usize,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            fps: 30,
            gop: 60,
            bitrate: 3_000_000,
            key_ratio: 5,
            audio_bytes: 372,
        }
    }
}

/// Audio frame duration in nanoseconds (1024 samples at 44.1 kHz).
const AUDIO_FRAME_NS: u64 = 1024 * 1_000_000_000 / 44_100;

impl Shape {
    /// (keyframe bytes, P-frame bytes) for the bitrate.
    pub fn video_sizes(&self) -> (usize, usize) {
        let audio_bps = self.audio_bytes as u64 * 8 * 1_000_000_000 / AUDIO_FRAME_NS;
        let video_bps = self.bitrate.saturating_sub(audio_bps).max(8 * 1000);
        let gop_bytes = video_bps / 8 * u64::from(self.gop) / u64::from(self.fps);
        let units = u64::from(self.gop - 1 + self.key_ratio);
        let p = (gop_bytes / units) as usize;
        let min = VIDEO_STAMP_AT + STAMP_LEN;
        ((p * self.key_ratio as usize).max(min), p.max(min))
    }
}

/// Produces the stream frame by frame, in send order.
pub struct Generator {
    shape: Shape,
    key_bytes: usize,
    p_bytes: usize,
    video_seq: u32,
    audio_seq: u32,
}

impl Generator {
    pub fn new(shape: Shape) -> Self {
        let (key_bytes, p_bytes) = shape.video_sizes();
        Self {
            shape,
            key_bytes,
            p_bytes,
            video_seq: 0,
            audio_seq: 0,
        }
    }

    /// Metadata, AVC and AAC sequence headers.
    pub fn headers(&self) -> Vec<Frame> {
        let (kb, pb) = (self.key_bytes, self.p_bytes);
        let mut meta = BytesMut::new();
        amf::encode(&Amf0Value::string("@setDataFrame"), &mut meta);
        amf::encode(&Amf0Value::string("onMetaData"), &mut meta);
        let avg = (kb + pb * (self.shape.gop as usize - 1)) as f64 / f64::from(self.shape.gop);
        amf::encode(
            &Amf0Value::EcmaArray(vec![
                ("width".into(), Amf0Value::Number(1280.0)),
                ("height".into(), Amf0Value::Number(720.0)),
                (
                    "framerate".into(),
                    Amf0Value::Number(f64::from(self.shape.fps)),
                ),
                ("videocodecid".into(), Amf0Value::Number(7.0)),
                (
                    "videodatarate".into(),
                    Amf0Value::Number(avg * 8.0 * f64::from(self.shape.fps) / 1000.0),
                ),
                ("audiocodecid".into(), Amf0Value::Number(10.0)),
                ("audiosamplerate".into(), Amf0Value::Number(44100.0)),
                ("encoder".into(), Amf0Value::string("sluice-load")),
            ]),
            &mut meta,
        );
        let mut avc = BytesMut::new();
        avc.put_slice(&[0x17, 0x00, 0, 0, 0]);
        // AVCDecoderConfigurationRecord: version, profile, compat, level, 4-byte lengths.
        avc.put_slice(&[0x01, SPS[1], SPS[2], SPS[3], 0xFF, 0xE1]);
        avc.put_u16(SPS.len() as u16);
        avc.put_slice(SPS);
        avc.put_u8(1);
        avc.put_u16(PPS.len() as u16);
        avc.put_slice(PPS);
        vec![
            Frame {
                kind: MediaKind::Data,
                timestamp: 0,
                due_ns: 0,
                payload: meta.freeze(),
            },
            Frame {
                kind: MediaKind::Video,
                timestamp: 0,
                due_ns: 0,
                payload: avc.freeze(),
            },
            Frame {
                kind: MediaKind::Audio,
                timestamp: 0,
                due_ns: 0,
                // AAC LC, 44.1 kHz, stereo.
                payload: Bytes::from_static(&[0xAF, 0x00, 0x12, 0x10]),
            },
        ]
    }

    /// Media time of the next frame, in nanoseconds.
    pub fn next_due_ns(&self) -> u64 {
        let v = u64::from(self.video_seq) * 1_000_000_000 / u64::from(self.shape.fps);
        let a = u64::from(self.audio_seq) * AUDIO_FRAME_NS;
        v.min(a)
    }

    /// The next frame, stamped with `now_ns` (wall clock).
    pub fn next(&mut self, now_ns: u64) -> Frame {
        let v_due = u64::from(self.video_seq) * 1_000_000_000 / u64::from(self.shape.fps);
        let a_due = u64::from(self.audio_seq) * AUDIO_FRAME_NS;
        if v_due <= a_due {
            let seq = self.video_seq;
            self.video_seq += 1;
            let key = seq % self.shape.gop == 0;
            let len = if key { self.key_bytes } else { self.p_bytes };
            let mut p = BytesMut::with_capacity(len);
            p.put_slice(&[if key { 0x17 } else { 0x27 }, 0x01, 0, 0, 0]);
            p.put_u32((len - 9) as u32);
            p.put_u8(if key { 0x65 } else { 0x41 });
            put_stamp(&mut p, seq, now_ns, len);
            p.resize(len, fill_byte(Track::Video, seq));
            Frame {
                kind: MediaKind::Video,
                timestamp: (v_due / 1_000_000) as u32,
                due_ns: v_due,
                payload: p.freeze(),
            }
        } else {
            let seq = self.audio_seq;
            self.audio_seq += 1;
            let len = self.shape.audio_bytes.max(AUDIO_STAMP_AT + STAMP_LEN);
            let mut p = BytesMut::with_capacity(len);
            p.put_slice(&[0xAF, 0x01]);
            put_stamp(&mut p, seq, now_ns, len);
            p.resize(len, fill_byte(Track::Audio, seq));
            Frame {
                kind: MediaKind::Audio,
                timestamp: (a_due / 1_000_000) as u32,
                due_ns: a_due,
                payload: p.freeze(),
            }
        }
    }
}

fn put_stamp(p: &mut BytesMut, seq: u32, now_ns: u64, len: usize) {
    p.put_u32(MAGIC);
    p.put_u32(seq);
    p.put_u64(now_ns);
    p.put_u32(len as u32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_shape_is_about_three_megabits() {
        let mut g = Generator::new(Shape::default());
        let mut bytes = 0u64;
        loop {
            let f = g.next(0);
            if f.due_ns >= 10_000_000_000 {
                break;
            }
            bytes += f.payload.len() as u64;
        }
        let bps = bytes * 8 / 10;
        assert!((2_900_000..=3_100_000).contains(&bps), "{bps} bit/s");
    }

    #[test]
    fn frames_come_in_time_order_with_keyframes_every_gop() {
        let mut g = Generator::new(Shape::default());
        let mut last = 0;
        let mut keys = Vec::new();
        for _ in 0..500 {
            let f = g.next(7);
            assert!(f.due_ns >= last);
            last = f.due_ns;
            if f.kind == MediaKind::Video {
                let (s, key) = check(Track::Video, &f.payload).unwrap().unwrap();
                assert_eq!(s.sent_ns, 7);
                if key {
                    keys.push(s.seq);
                }
            }
        }
        assert_eq!(&keys[..3], &[0, 60, 120]);
    }

    #[test]
    fn a_stamped_payload_round_trips() {
        let mut g = Generator::new(Shape::default());
        let v = g.next(123_456_789);
        assert_eq!(v.kind, MediaKind::Video);
        assert_eq!(
            check(Track::Video, &v.payload),
            Ok(Some((
                Stamp {
                    seq: 0,
                    sent_ns: 123_456_789
                },
                true
            )))
        );
        let a = g.next(5);
        assert_eq!(a.kind, MediaKind::Audio);
        let (s, key) = check(Track::Audio, &a.payload).unwrap().unwrap();
        assert_eq!((s.seq, s.sent_ns, key), (0, 5, false));
    }

    #[test]
    fn a_changed_byte_or_length_is_caught() {
        let mut g = Generator::new(Shape::default());
        let v = g.next(1).payload.to_vec();
        let mut bad = v.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(check(Track::Video, &bad), Err(StampError::Fill));
        assert!(matches!(
            check(Track::Video, &v[..v.len() - 1]),
            Err(StampError::Length { .. })
        ));
        let mut nomagic = v;
        nomagic[VIDEO_STAMP_AT] = 0;
        assert_eq!(check(Track::Video, &nomagic), Err(StampError::NoStamp));
    }

    #[test]
    fn sequence_headers_carry_no_stamp() {
        let g = Generator::new(Shape::default());
        let h = g.headers();
        assert_eq!(check(Track::Video, &h[1].payload), Ok(None));
        assert_eq!(check(Track::Audio, &h[2].payload), Ok(None));
    }
}
