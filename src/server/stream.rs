//! Live streams: the registry shared by all workers, each stream's GOP cache
//! and latest headers, and the frames published into it.
//!
//! Locking: the registry's map is locked only when a stream or player starts
//! or stops. Each stream's own lock is taken once per published frame by the
//! publisher's worker (to append to the GOP cache and read which workers have
//! players) and once per join by the joining player's worker (to snapshot the
//! cache and register interest). Both happen in one critical section, and
//! every frame and publish/unpublish notice carries a sequence number, so a
//! joiner never misses nor duplicates a frame. Lock order: registry, then
//! stream (a multitrack stream before its renditions, see [`RenditionLink`]).

use super::base::{ConnId, StreamId};
use super::hls::{HlsPolicy, StreamHls, HLS_LINGER};
use crate::media::{self, Codec, FrameClass, MediaInfo};
use crate::protocol::chunk::{self, EncodeError, Message};
use crate::protocol::session::{is_metadata, MediaKind};
use crate::wire::WireForm;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

/// The message stream id every shared RTMP wire form is built for. The
/// session hands out ids from 1, so nearly every player plays on 1; a player
/// on another id gets per-player headers around the same payload slices.
pub const SHARED_MESSAGE_STREAM_ID: u32 = 1;

/// Most workers a process runs: interest is a 64-bit mask.
pub const MAX_WORKERS: usize = 64;

/// The worker indices whose bit is set in `mask`.
pub(crate) fn workers_in(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if mask == 0 {
            return None;
        }
        let w = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        Some(w)
    })
}

/// A timestamp step backwards beyond this (ms), within one publisher, is a
/// discontinuity (audio and video interleave a few tens of ms out of order).
const MAX_BACKWARD_STEP_MS: i32 = 1_000;
/// A forward step beyond this (ms) is a discontinuity: an encoder restart or
/// clock jump, which players would otherwise wait out.
const MAX_FORWARD_STEP_MS: i32 = 15_000;

/// What a [`Frame`] holds beyond its payload and chunk headers, conservatively:
/// the `Frame` in its `Arc`, the RTMP form's piece list and header
/// allocation, and the FLV and WebSocket forms a player may build (a
/// header, a trailer and a piece list each), with the allocator's
/// smallest chunk for each allocation. Every bound on frames (GOP cache,
/// player queues, header stores) counts a frame as its bytes plus this, so
/// that a flood of 1-byte frames is bounded by what it really holds
/// (docs/hardening.md case 40).
pub const FRAME_OVERHEAD: usize = std::mem::size_of::<Frame>()
    + 16 // the Arc's counts
    + 6 * MIN_ALLOCATION // the Arc, three forms' headers, two trailers
    + 3 * 4 * std::mem::size_of::<Bytes>(); // three piece lists

/// The smallest chunk glibc's malloc hands out (and roughly what each
/// allocation costs beyond its bytes).
const MIN_ALLOCATION: usize = 32;

/// Most header frames a stream keeps for joiners (metadata, and a
/// sequence header and a metadata packet per track and FourCC). A
/// multitrack stream with four video and eight audio tracks needs ~25;
/// 4,000 FourCCs' metadata packets kept 32 MB (docs/hardening.md case 38).
pub const MAX_STREAM_HEADERS: usize = 32;
/// Most bytes (counted as [`Frame::cost`]) a stream's header frames hold:
/// every joiner receives them all before its first keyframe. Real headers
/// are a few KiB in all.
pub const MAX_STREAM_HEADER_BYTES: usize = 1024 * 1024;
/// Largest single header frame kept for joiners (onMetaData, a sequence
/// header); a larger one is passed to the players already there, but not
/// kept. onMetaData is a few hundred bytes, an HEVC sequence header a few
/// KiB.
pub const MAX_HEADER_FRAME_BYTES: usize = 64 * 1024;

/// Which header a frame is the latest of, for late joiners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderSlot {
    /// onMetaData.
    Metadata,
    /// Decoder configuration (sequence header) of a track.
    Config { kind: MediaKind, track: u8 },
    /// Enhanced RTMP per-track metadata (HDR colour info, multichannel
    /// config). Keyed by codec too: ffmpeg sends a second video track's
    /// Metadata packet without a multitrack header (so as track 0), and it
    /// must not replace the first track's.
    TrackMetadata {
        kind: MediaKind,
        track: u8,
        codec: Codec,
    },
}

/// One published message, shared by every player on every worker.
#[derive(Debug)]
pub struct Frame {
    /// Position in the stream's sequence of frames and notices.
    pub seq: u64,
    pub kind: MediaKind,
    pub info: MediaInfo,
    /// Output timeline (the publisher's, resynchronised on discontinuities).
    pub timestamp: u32,
    pub payload: Bytes,
    /// The latest-header slot this frame fills, if it is a header.
    pub header: Option<HeaderSlot>,
    /// A player may start (or resume after skipping) here: a keyframe of
    /// the default video track (track 0; any track until the publisher has
    /// sent track 0 video), or any audio frame of a stream that has no video.
    pub start_point: bool,
    /// The RTMP chunked form on [`SHARED_MESSAGE_STREAM_ID`], built once.
    pub rtmp: WireForm,
    /// The FLV tag form, built by the first HTTP-FLV player that needs it.
    flv: OnceLock<WireForm>,
    /// The FLV tag in a WebSocket binary message, likewise.
    ws: OnceLock<WireForm>,
}

/// How a player receives frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Rtmp,
    Flv,
    WsFlv,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Rtmp, Format::Flv, Format::WsFlv];

    pub fn name(self) -> &'static str {
        match self {
            Format::Rtmp => "rtmp",
            Format::Flv => "http-flv",
            Format::WsFlv => "ws-flv",
        }
    }

    /// Its place in [`Format::ALL`] (for tables indexed by format).
    pub(super) fn index(self) -> usize {
        self as usize
    }
}

impl Frame {
    /// What this frame holds in memory: payload, chunk headers and
    /// [`FRAME_OVERHEAD`]. Bounds count this, never the payload alone.
    pub fn cost(&self) -> usize {
        self.rtmp.len() + std::mem::size_of_val(self.rtmp.pieces()) + FRAME_OVERHEAD
    }

    /// This frame's shared wire form for `format` (built at most once).
    pub fn form(&self, format: Format) -> &WireForm {
        match format {
            Format::Rtmp => &self.rtmp,
            Format::Flv => self.flv.get_or_init(|| {
                super::flv::tag_form(self.kind.type_id(), self.timestamp, &self.payload, false)
            }),
            Format::WsFlv => self.ws.get_or_init(|| {
                super::flv::tag_form(self.kind.type_id(), self.timestamp, &self.payload, true)
            }),
        }
    }

    /// The RTMP wire form for a player on `stream_id` at `chunk_size` (a
    /// published payload always fits the length field, so this cannot
    /// fail for a frame of a stream).
    pub fn rtmp_for(&self, chunk_size: u32, stream_id: u32) -> Result<WireForm, EncodeError> {
        chunk::wire_form(
            chunk_size,
            &Message {
                csid: self.kind.csid(),
                timestamp: self.timestamp,
                type_id: self.kind.type_id(),
                stream_id,
                payload: self.payload.clone(),
            },
        )
    }
}

/// Classifies a payload and names the header slot it fills.
fn describe(kind: MediaKind, payload: &[u8]) -> (MediaInfo, Option<HeaderSlot>) {
    let info = match kind {
        MediaKind::Video => media::classify_video(payload),
        MediaKind::Audio => media::classify_audio(payload),
        MediaKind::Data => MediaInfo {
            class: FrameClass::Other,
            codec: media::Codec::Unknown,
            track: 0,
        },
    };
    let slot = match (kind, info.class) {
        (MediaKind::Data, _) if is_metadata(payload) => Some(HeaderSlot::Metadata),
        (MediaKind::Data, _) => None,
        (_, FrameClass::SequenceHeader) => Some(HeaderSlot::Config {
            kind,
            track: info.track,
        }),
        (_, FrameClass::Metadata) => Some(HeaderSlot::TrackMetadata {
            kind,
            track: info.track,
            codec: info.codec,
        }),
        _ => None,
    };
    (info, slot)
}

/// How a stream's publisher reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublisherKind {
    Rtmp,
    Rtmps,
    /// A relay pulling the stream from an origin.
    Pull,
    /// A successor's pull from the process it replaces (`--takeover`): a
    /// publisher arriving here takes the stream over at its first frame.
    Handover,
}

impl PublisherKind {
    pub fn name(self) -> &'static str {
        match self {
            PublisherKind::Rtmp => "rtmp",
            PublisherKind::Rtmps => "rtmps",
            PublisherKind::Pull => "pull",
            PublisherKind::Handover => "handover",
        }
    }
}

/// Who publishes a stream.
#[derive(Debug, Clone)]
pub struct PublisherInfo {
    pub conn_id: ConnId,
    pub worker: usize,
    pub peer: SocketAddr,
    pub kind: PublisherKind,
    pub since: std::time::SystemTime,
}

/// What the stream's headers and metadata say about its media (for the API).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaSummary {
    pub video_codec: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// From onMetaData `framerate`, else measured.
    pub frame_rate: Option<f64>,
    pub audio_codec: Option<String>,
    pub sample_rate: Option<u32>,
    pub channels: Option<u8>,
}

/// Bitrate and frame rate over the last few seconds.
#[derive(Debug)]
struct RateWindow {
    start: Instant,
    bytes: u64,
    video_frames: u64,
    /// (bits per second, video frames per second) of the last full window.
    last: Option<(f64, f64)>,
}

/// How long a rate window lasts.
const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(3);

impl RateWindow {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            bytes: 0,
            video_frames: 0,
            last: None,
        }
    }

    fn add(&mut self, now: Instant, bytes: usize, video: bool) {
        self.bytes += bytes as u64;
        self.video_frames += u64::from(video);
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= RATE_WINDOW {
            let secs = elapsed.as_secs_f64();
            self.last = Some((
                self.bytes as f64 * 8.0 / secs,
                self.video_frames as f64 / secs,
            ));
            *self = Self {
                start: now,
                bytes: 0,
                video_frames: 0,
                last: self.last,
            };
        }
    }
}

/// Maps a publisher's timestamps onto the stream's output timeline: unchanged
/// while they run smoothly (so relays and players see the publisher's own
/// timestamps), resynchronised to continue from the last output timestamp on a
/// jump, a step backwards, or a new publisher. Arithmetic is serial (RFC 1982)
/// on 32-bit milliseconds, so the 2^32 wrap is not a discontinuity.
#[derive(Debug, Default)]
struct Timeline {
    offset: u32,
    last_in: Option<u32>,
    last_out: Option<u32>,
}

impl Timeline {
    fn map(&mut self, ts: u32) -> u32 {
        let resync = match self.last_in {
            Some(prev) => {
                let step = ts.wrapping_sub(prev) as i32;
                !(-MAX_BACKWARD_STEP_MS..=MAX_FORWARD_STEP_MS).contains(&step)
            }
            // A new publisher on a stream that already played: continue.
            None => self.last_out.is_some(),
        };
        if resync {
            let next = self.last_out.unwrap_or(0).wrapping_add(1);
            self.offset = next.wrapping_sub(ts);
        }
        self.last_in = Some(ts);
        let out = ts.wrapping_add(self.offset);
        self.last_out = Some(out);
        out
    }

    fn new_publisher(&mut self) {
        self.last_in = None;
    }
}

/// The frames from the latest keyframe on, bounded in frames and in what
/// they hold ([`Frame::cost`]).
#[derive(Debug, Default)]
struct GopCache {
    frames: Vec<Arc<Frame>>,
    /// The sum of the frames' [`Frame::cost`].
    bytes: usize,
}

impl GopCache {
    fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }
}

/// Bounds on a stream's GOP cache.
#[derive(Debug, Clone, Copy)]
pub struct GopLimits {
    pub max_bytes: usize,
    pub max_frames: usize,
}

/// A stream's mutable state, behind its lock.
#[derive(Debug)]
pub struct StreamState {
    publisher: Option<PublisherInfo>,
    /// Players per worker.
    players: [u32; MAX_WORKERS],
    gop: GopCache,
    /// Latest header frames, one per slot, bounded by
    /// [`MAX_STREAM_HEADERS`] and [`MAX_STREAM_HEADER_BYTES`].
    headers: Vec<Arc<Frame>>,
    /// Header frames not kept (over a bound), for one log line per stream.
    headers_refused: u64,
    next_seq: u64,
    has_video: bool,
    /// Video track 0 (the default track) seen from the current publisher.
    has_default_video: bool,
    timeline: Timeline,
    /// Frames published by the current publisher, for logs.
    pub frames_in: u64,
    pub bytes_in: u64,
    /// Players per format (rtmp, http-flv, ws-flv).
    players_by_format: [u32; 3],
    has_audio: bool,
    media: MediaSummary,
    rate: RateWindow,
    /// When the last publisher left (the stream lingers for its HLS
    /// viewers a while, see [`Registry::sweep`]).
    unpublished_at: Option<Instant>,
    /// A publisher waiting to take the stream over from a successor's
    /// handover pull (`Registry::await_takeover`): when the pull's
    /// publication ends, players are not told the stream ended.
    takeover: Option<ConnId>,
    /// The renditions (`NAME~N`) made of this stream's video tracks,
    /// replaced whole when one starts or ends (the publisher's worker takes
    /// a reference per frame, see [`Stream::renditions`]).
    renditions: Arc<Vec<RenditionLink>>,
}

/// A rendition of a multitrack stream (docs/codecs.md, "Renditions"): its
/// video track `track` alone, re-wrapped for players without multitrack
/// support, published as a stream of its own while `publisher` publishes
/// the parent. Lock order: the parent stream, then the rendition's.
#[derive(Debug, Clone)]
pub struct RenditionLink {
    /// Video track id in the parent.
    pub track: u8,
    /// The parent's audio track it carries: `track` when the parent has an
    /// audio track of that id, else 0.
    pub audio_track: u8,
    /// The parent's publisher (the rendition's too).
    pub publisher: ConnId,
    /// The first parent frame (by sequence number) re-wrapped as it is
    /// published; the earlier ones the rendition needs are in `seed`.
    pub from_seq: u64,
    /// The parent's latest headers (in send order) and cached GOP when the
    /// rendition started: the publisher's worker re-wraps them before the
    /// frame `from_seq`, so that the rendition gets every frame in order
    /// from one worker (an instant start for its players).
    pub seed: Arc<Mutex<Vec<Arc<Frame>>>>,
    /// The rendition's stream.
    pub stream: Arc<Stream>,
}

impl StreamState {
    /// Bit w set: worker w has players (or pushes) of this stream.
    pub fn interest(&self) -> u64 {
        self.players
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .fold(0u64, |m, (w, _)| m | (1 << w))
    }

    fn player_count(&self) -> u32 {
        self.players.iter().sum()
    }

    /// Players watching (relays pushing the stream are not counted).
    pub fn viewers(&self) -> u32 {
        self.players_by_format.iter().sum()
    }

    fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Who publishes now.
    pub fn publisher(&self) -> Option<&PublisherInfo> {
        self.publisher.as_ref()
    }

    /// Players of each format.
    pub fn players(&self, format: Format) -> u32 {
        self.players_by_format[format.index()]
    }

    /// What the headers and metadata say, with the measured frame rate
    /// when metadata gives none.
    pub fn media(&self) -> MediaSummary {
        let mut m = self.media.clone();
        if m.frame_rate.is_none() {
            m.frame_rate = self.rate.last.map(|(_, fps)| fps).filter(|f| *f > 0.0);
        }
        m
    }

    /// Measured bitrate in, bits per second (None until a window completes).
    pub fn bitrate_in(&self) -> Option<f64> {
        self.rate.last.map(|(bps, _)| bps)
    }

    /// GOP cache size: frames, and what they hold in bytes ([`Frame::cost`]).
    pub fn gop_cache(&self) -> (usize, usize) {
        (self.gop.frames.len(), self.gop.bytes)
    }

    /// Whether audio / video have been seen from the current publisher.
    pub fn has_audio_video(&self) -> (bool, bool) {
        (self.has_audio, self.has_video)
    }

    /// The renditions made of this stream: (video track, stream name).
    pub fn rendition_keys(&self) -> Vec<(u8, String)> {
        self.renditions
            .iter()
            .map(|r| (r.track, r.stream.key.clone()))
            .collect()
    }

    /// True when a kept sequence header configures track `track` of `kind`
    /// (a multitrack one may configure several).
    fn has_config(&self, kind: MediaKind, track: u8) -> bool {
        self.headers.iter().any(|f| {
            f.kind == kind
                && matches!(f.header, Some(HeaderSlot::Config { .. }))
                && match kind {
                    MediaKind::Audio => media::audio_tracks(&f.payload),
                    _ => media::video_tracks(&f.payload),
                }
                .any(|t| t.info.track == track)
        })
    }

    /// The audio and video tracks the current publisher has sent a
    /// sequence header for: (kind, track id, codec), video first, by id.
    pub fn tracks(&self) -> Vec<(MediaKind, u8, Codec)> {
        let mut v: Vec<_> = self
            .headers
            .iter()
            .filter_map(|h| match h.header {
                Some(HeaderSlot::Config { kind, track }) => Some((kind, track, h.info.codec)),
                _ => None,
            })
            .collect();
        v.sort_by_key(|(kind, track, _)| (*kind != MediaKind::Video, *track));
        v
    }
}

/// One live stream name (APP/NAME).
#[derive(Debug)]
pub struct Stream {
    pub id: StreamId,
    /// `app/name`.
    pub key: String,
    chunk_size: u32,
    gop_limits: GopLimits,
    state: Mutex<StreamState>,
    /// Bytes written to this stream's players.
    pub bytes_out: AtomicU64,
    /// Frames skipped for slow players.
    pub frames_dropped: AtomicU64,
    /// HLS of this stream, from its first publisher on (when its
    /// application packages HLS and the memory budget admitted it).
    hls: OnceLock<StreamHls>,
    /// The recording of this stream, while one runs (or failed and is
    /// shown until the publisher leaves).
    pub(crate) recorder: RecorderSlot,
    /// True while the stream has renditions: the publisher's worker looks
    /// them up (under the lock) only then.
    has_renditions: AtomicBool,
}

/// A stream's recording as the stream sees it: something that takes its
/// frames (and, for MP4 from the HLS packager, the packager's output) and
/// is finished when the stream ends. `record::Recorder` is the one kind;
/// the stream holds it through this trait so that this module, which the
/// recorder builds on, does not depend on it.
pub(crate) trait Recording: Send {
    /// Stopped by an error: nothing more is written.
    fn stopped(&self) -> bool;
    /// Written from the stream's HLS packager's output.
    fn takes_hls(&self) -> bool;
    fn on_frame(&mut self, frame: &Arc<Frame>);
    fn on_output(&mut self, out: &crate::cmaf::Output, p: &crate::cmaf::Packager);
    /// Its state for the API.
    fn json(&self) -> serde_json::Value;
    /// True when an error stopped it.
    fn failed(&self) -> bool;
    /// The stream ended or the API stopped it: the file is finished.
    fn finish(self: Box<Self>, why: &str);
    /// A stopped recording replaced by a new one.
    fn release(self: Box<Self>);
}

/// A stream's recording, when one runs. `active` spares the lock on every
/// frame of a stream that is not recorded.
#[derive(Default)]
pub(crate) struct RecorderSlot {
    active: AtomicBool,
    inner: Mutex<Option<Box<dyn Recording>>>,
}

impl std::fmt::Debug for RecorderSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.active.load(Ordering::Relaxed) {
            "RecorderSlot(recording)"
        } else {
            "RecorderSlot(idle)"
        })
    }
}

type RecordingGuard<'a> = MutexGuard<'a, Option<Box<dyn Recording>>>;

impl RecorderSlot {
    pub(crate) fn lock_any(&self) -> RecordingGuard<'_> {
        super::base::locked(&self.inner)
    }

    /// The lock, only while a recording runs.
    pub(crate) fn lock_active(&self) -> Option<RecordingGuard<'_>> {
        self.active.load(Ordering::Acquire).then(|| self.lock_any())
    }

    /// Puts `r` in the slot (under its lock, `slot`) and marks it active.
    pub(crate) fn install(&self, mut slot: RecordingGuard<'_>, r: Box<dyn Recording>) {
        *slot = Some(r);
        self.active.store(true, Ordering::Release);
    }

    pub(crate) fn take(&self) -> Option<Box<dyn Recording>> {
        let r = self.lock_any().take();
        self.active.store(false, Ordering::Release);
        r
    }
}

/// What a publish or unpublish tells the workers with players.
#[derive(Debug, Clone, Copy)]
pub struct Notice {
    pub seq: u64,
    /// Bit w set: worker w has players of this stream.
    pub interest: u64,
}

/// What a joining player needs, taken atomically with its registration.
#[derive(Debug)]
pub struct JoinSnapshot {
    pub live: bool,
    /// Latest metadata and sequence headers, in send order.
    pub headers: Vec<Arc<Frame>>,
    /// Frames from the latest keyframe on (empty when none is cached).
    pub gop: Vec<Arc<Frame>>,
    /// The first sequence number the player must take from live delivery.
    pub next_seq: u64,
    /// True when the stream has no video: start with the next audio frame.
    pub audio_only: bool,
}

impl Stream {
    fn lock(&self) -> MutexGuard<'_, StreamState> {
        // A panic while holding the lock cannot leave the state half-written
        // in a way later frames would trip over: keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes one message from publisher `conn_id`: classifies it, maps
    /// its timestamp, builds its RTMP wire form once, updates the headers
    /// and GOP cache, and returns the shared frame with the workers that
    /// must receive it (bit w: worker w). None (the frame dropped) when
    /// that connection no longer publishes the stream (replaced by
    /// another), checked under the stream's lock.
    pub fn push_from(
        &self,
        conn_id: ConnId,
        kind: MediaKind,
        timestamp: u32,
        payload: Bytes,
    ) -> Option<(Arc<Frame>, u64)> {
        let (info, header) = describe(kind, &payload);
        // A header is kept for the stream's life: its own allocation, not a
        // slice pinning the read buffer it arrived in.
        let payload = match header {
            Some(_) => Bytes::copy_from_slice(&payload),
            None => payload,
        };
        let mut st = self.lock();
        if st.publisher.as_ref().map(|p| p.conn_id) != Some(conn_id) {
            return None;
        }
        st.frames_in += 1;
        st.bytes_in += payload.len() as u64;
        match kind {
            MediaKind::Video => st.has_video = true,
            MediaKind::Audio => st.has_audio = true,
            MediaKind::Data => {}
        }
        st.rate
            .add(Instant::now(), payload.len(), kind == MediaKind::Video);
        if let Some(slot) = header.filter(|_| payload.len() <= MAX_HEADER_FRAME_BYTES) {
            summarize(&mut st.media, slot, &info, &payload);
        }
        let timestamp = st.timeline.map(timestamp);
        // Multitrack: a message may carry several tracks (the frame type is
        // shared), so look for track 0 among them, not just the first.
        let default_track = kind == MediaKind::Video
            && (info.track == 0 || media::video_tracks(&payload).any(|t| t.info.track == 0));
        if default_track {
            st.has_default_video = true;
        }
        let start_point = match kind {
            MediaKind::Video => {
                info.class == FrameClass::Keyframe && (default_track || !st.has_default_video)
            }
            MediaKind::Audio => !st.has_video,
            MediaKind::Data => false,
        };
        let rtmp = chunk::wire_form(
            self.chunk_size,
            &Message {
                csid: kind.csid(),
                timestamp,
                type_id: kind.type_id(),
                stream_id: SHARED_MESSAGE_STREAM_ID,
                payload: payload.clone(),
            },
        )
        // The chunk decoder's length field holds what the wire form can
        // carry: unreachable, but a refusal, not a panic.
        .ok()?;
        let frame = Arc::new(Frame {
            seq: st.take_seq(),
            kind,
            info,
            timestamp,
            payload,
            header,
            start_point,
            rtmp,
            flv: OnceLock::new(),
            ws: OnceLock::new(),
        });
        if let Some(slot) = header {
            self.keep_header(&mut st, slot, &frame);
            if matches!(
                slot,
                HeaderSlot::Config {
                    kind: MediaKind::Video,
                    ..
                }
            ) {
                // Frames before a new decoder configuration cannot follow it.
                st.gop.clear();
            }
        } else if kind == MediaKind::Video && start_point {
            // Other tracks' keyframes sent just before this one, at the same
            // time, belong to the new GOP: a joiner starts every track on a
            // keyframe when the publisher aligns them.
            let keep = st
                .gop
                .frames
                .iter()
                .rev()
                .take_while(|f| {
                    f.timestamp == timestamp
                        && (f.kind != MediaKind::Video || f.info.class == FrameClass::Keyframe)
                })
                .count();
            let from = st.gop.frames.len() - keep;
            let kept: Vec<Arc<Frame>> = st.gop.frames.drain(from..).collect();
            st.gop.clear();
            st.gop.bytes = kept.iter().map(|f| f.cost()).sum::<usize>() + frame.cost();
            st.gop.frames.extend(kept);
            st.gop.frames.push(frame.clone());
        } else if !st.gop.frames.is_empty() {
            st.gop.bytes += frame.cost();
            st.gop.frames.push(frame.clone());
            if st.gop.bytes > self.gop_limits.max_bytes
                || st.gop.frames.len() > self.gop_limits.max_frames
            {
                log::debug!(
                    "{}: GOP cache over its bounds ({} frames, {} bytes); emptied until the next keyframe",
                    self.key,
                    st.gop.frames.len(),
                    st.gop.bytes
                );
                st.gop.clear();
            }
        }
        let interest = st.interest();
        Some((frame, interest))
    }

    /// Keeps `frame` as the latest header of `slot`, within the store's
    /// bounds: a frame over [`MAX_HEADER_FRAME_BYTES`], or one that would
    /// take the store past [`MAX_STREAM_HEADERS`] or
    /// [`MAX_STREAM_HEADER_BYTES`], is not kept (players already there got
    /// it; joiners do not), and the slot's older frame goes with it.
    fn keep_header(&self, st: &mut StreamState, slot: HeaderSlot, frame: &Arc<Frame>) {
        st.headers.retain(|h| h.header != Some(slot));
        let held: usize = st.headers.iter().map(|h| h.cost()).sum();
        let fits = frame.payload.len() <= MAX_HEADER_FRAME_BYTES
            && st.headers.len() < MAX_STREAM_HEADERS
            && held + frame.cost() <= MAX_STREAM_HEADER_BYTES;
        if fits {
            st.headers.push(frame.clone());
            return;
        }
        if st.headers_refused == 0 {
            log::info!(
                "{}: a header frame of {} bytes ({slot:?}) not kept for joiners: the stream keeps {} headers of {held} bytes (limits {MAX_STREAM_HEADERS} headers, {MAX_STREAM_HEADER_BYTES} bytes, {MAX_HEADER_FRAME_BYTES} bytes each)",
                self.key,
                frame.payload.len(),
                st.headers.len(),
            );
        }
        st.headers_refused += 1;
    }

    /// Starts rendition `stream` of video track `track`, published by
    /// `publisher` (see [`RenditionLink`]): under this stream's lock, so
    /// that no frame is missed nor re-wrapped twice, the link takes the
    /// latest headers and the cached GOP as its seed and the next sequence
    /// number as its first. False (nothing done) when `publisher` no longer
    /// publishes this stream, it has sent no sequence header for that video
    /// track, or the rendition is running already.
    pub fn attach_rendition(&self, track: u8, stream: Arc<Stream>, publisher: ConnId) -> bool {
        let mut st = self.lock();
        if st.publisher.as_ref().map(|p| p.conn_id) != Some(publisher)
            || st
                .renditions
                .iter()
                .any(|r| r.track == track && r.publisher == publisher)
        {
            return false;
        }
        if !st.has_config(MediaKind::Video, track) {
            return false;
        }
        let audio_track = if st.has_config(MediaKind::Audio, track) {
            track
        } else {
            0
        };
        let mut seed = st.headers.clone();
        seed.sort_by_key(|f| header_rank(f));
        seed.extend(st.gop.frames.iter().cloned());
        let link = RenditionLink {
            track,
            audio_track,
            publisher,
            from_seq: st.next_seq,
            seed: Arc::new(Mutex::new(seed)),
            stream,
        };
        let mut list = Vec::clone(&st.renditions);
        list.push(link);
        st.renditions = Arc::new(list);
        self.has_renditions.store(true, Ordering::Release);
        true
    }

    /// True when the publisher has sent a sequence header for video track
    /// `track`.
    pub fn has_video_track(&self, track: u8) -> bool {
        self.lock().has_config(MediaKind::Video, track)
    }

    /// The renditions made of this stream (None, without locking, when
    /// there are none).
    pub fn renditions(&self) -> Option<Arc<Vec<RenditionLink>>> {
        if !self.has_renditions.load(Ordering::Acquire) {
            return None;
        }
        Some(self.lock().renditions.clone())
    }

    /// Forgets the renditions published by `publisher` and returns them
    /// (their publication must end).
    pub fn take_renditions(&self, publisher: ConnId) -> Vec<RenditionLink> {
        let mut st = self.lock();
        let (gone, kept): (Vec<_>, Vec<_>) = st
            .renditions
            .iter()
            .cloned()
            .partition(|r| r.publisher == publisher);
        if !gone.is_empty() {
            self.has_renditions
                .store(!kept.is_empty(), Ordering::Release);
            st.renditions = Arc::new(kept);
        }
        gone
    }

    /// Latest header frames (for a player resuming after a skip).
    pub fn headers(&self) -> Vec<Arc<Frame>> {
        self.lock().headers.clone()
    }

    /// The stream's HLS, when it is packaged.
    pub(crate) fn hls(&self) -> Option<&StreamHls> {
        self.hls.get()
    }

    /// True while the stream must stay known without publisher or player:
    /// HLS viewers were served and its end is recent (they read the end of
    /// the playlist; a publisher back in time continues it).
    fn lingers(&self, st: &StreamState, now: Instant) -> bool {
        let served = self.hls().is_some_and(|h| h.has_viewers());
        served
            && st
                .unpublished_at
                .is_some_and(|at| now.saturating_duration_since(at) < HLS_LINGER)
    }

    /// Runs `f` on the state (for logs and stats).
    pub fn with_state<T>(&self, f: impl FnOnce(&StreamState) -> T) -> T {
        f(&self.lock())
    }
}

/// Updates the media summary from a header frame.
fn summarize(m: &mut MediaSummary, slot: HeaderSlot, info: &MediaInfo, payload: &[u8]) {
    match slot {
        HeaderSlot::Metadata => {
            let values =
                crate::protocol::amf::decode_all(payload, &Default::default()).unwrap_or_default();
            let Some(meta) = values.get(1) else { return };
            let num = |k: &str| {
                meta.get(k)
                    .and_then(|v| v.as_number())
                    .filter(|n| n.is_finite() && *n > 0.0)
            };
            m.width = m.width.or(num("width").map(|n| n as u32));
            m.height = m.height.or(num("height").map(|n| n as u32));
            m.frame_rate = num("framerate").or(num("fps")).or(m.frame_rate);
            m.sample_rate = m.sample_rate.or(num("audiosamplerate").map(|n| n as u32));
            if m.channels.is_none() {
                m.channels =
                    meta.get("stereo")
                        .and_then(|v| v.as_bool())
                        .map(|s| if s { 2 } else { 1 });
            }
        }
        HeaderSlot::Config {
            kind: MediaKind::Video,
            track: 0,
        } => {
            m.video_codec = Some(info.codec.name().into_owned());
            if let Some((w, h)) = media::avc_dimensions(payload) {
                m.width = Some(w);
                m.height = Some(h);
            }
        }
        HeaderSlot::Config {
            kind: MediaKind::Audio,
            track: 0,
        } => {
            m.audio_codec = Some(info.codec.name().into_owned());
            // AAC AudioSpecificConfig: 5 bits object type, 4 bits sampling
            // frequency index, 4 bits channel configuration.
            if info.codec == media::Codec::Aac && payload.len() >= 4 {
                const RATES: [u32; 13] = [
                    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025,
                    8000, 7350,
                ];
                let asc = u16::from_be_bytes([payload[2], payload[3]]);
                if let Some(rate) = RATES.get(usize::from(asc >> 7 & 0x0F)) {
                    m.sample_rate = Some(*rate);
                }
                let ch = (asc >> 3 & 0x0F) as u8;
                if (1..=7).contains(&ch) {
                    m.channels = Some(ch);
                }
            }
        }
        _ => {}
    }
}

/// Sort order for headers sent to a joiner: metadata, then video, then audio
/// configuration, then per-track metadata (docs/protocol.md, "Media").
fn header_rank(f: &Frame) -> (u8, u8) {
    match f.header {
        Some(HeaderSlot::Metadata) => (0, 0),
        Some(HeaderSlot::Config {
            kind: MediaKind::Video,
            track,
        }) => (1, track),
        Some(HeaderSlot::Config { track, .. }) => (2, track),
        Some(HeaderSlot::TrackMetadata { track, .. }) => (3, track),
        None => (4, 0),
    }
}

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// Someone publishes this name already (on any worker).
    AlreadyPublishing { peer: SocketAddr },
}

/// All live streams, shared by every worker.
pub struct Registry {
    streams: Mutex<HashMap<String, Arc<Stream>>>,
    next_id: AtomicU64,
    chunk_size: u32,
    gop_limits: GopLimits,
    /// Which streams are packaged as HLS (None: none).
    hls: Option<Arc<HlsPolicy>>,
}

impl Registry {
    pub fn new(chunk_size: u32, gop_limits: GopLimits) -> Self {
        Self {
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            chunk_size,
            gop_limits,
            hls: None,
        }
    }

    /// Streams published from now on are packaged as HLS by `policy`.
    pub fn with_hls(mut self, policy: Arc<HlsPolicy>) -> Self {
        self.hls = Some(policy);
        self
    }

    /// The HLS policy, when HLS is on.
    pub fn hls_policy(&self) -> Option<&HlsPolicy> {
        self.hls.as_deref()
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Stream>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get_or_create(&self, map: &mut HashMap<String, Arc<Stream>>, key: &str) -> Arc<Stream> {
        map.entry(key.to_owned())
            .or_insert_with(|| {
                Arc::new(Stream {
                    id: StreamId(self.next_id.fetch_add(1, Ordering::Relaxed)),
                    key: key.to_owned(),
                    chunk_size: self.chunk_size,
                    gop_limits: self.gop_limits,
                    bytes_out: AtomicU64::new(0),
                    frames_dropped: AtomicU64::new(0),
                    hls: OnceLock::new(),
                    recorder: RecorderSlot::default(),
                    state: Mutex::new(StreamState {
                        publisher: None,
                        players: [0; MAX_WORKERS],
                        gop: GopCache::default(),
                        headers: Vec::new(),
                        headers_refused: 0,
                        next_seq: 0,
                        has_video: false,
                        has_default_video: false,
                        timeline: Timeline::default(),
                        frames_in: 0,
                        bytes_in: 0,
                        players_by_format: [0; 3],
                        has_audio: false,
                        media: MediaSummary::default(),
                        rate: RateWindow::new(),
                        unpublished_at: None,
                        takeover: None,
                        renditions: Arc::new(Vec::new()),
                    }),
                    has_renditions: AtomicBool::new(false),
                })
            })
            .clone()
    }

    /// Claims `key` for a publisher, atomically across workers (the first
    /// publisher keeps the name; a second gets an error).
    pub fn publish(
        &self,
        key: &str,
        publisher: PublisherInfo,
    ) -> Result<(Arc<Stream>, Notice), PublishError> {
        self.claim(key, publisher, false)
            .map(|(stream, notice, _)| (stream, notice))
    }

    /// Claims `key` for a publisher, taking it over from a current one if
    /// any, atomically across workers: the replaced publisher is returned
    /// (its worker must close it; meanwhile its frames are dropped) and
    /// players see a new publisher (fresh headers, next keyframe).
    pub fn publish_replacing(
        &self,
        key: &str,
        publisher: PublisherInfo,
    ) -> (Arc<Stream>, Notice, Option<PublisherInfo>) {
        self.claim(key, publisher, true)
            .expect("a replacing claim always succeeds")
    }

    fn claim(
        &self,
        key: &str,
        publisher: PublisherInfo,
        replace: bool,
    ) -> Result<(Arc<Stream>, Notice, Option<PublisherInfo>), PublishError> {
        let mut map = self.map();
        let stream = self.get_or_create(&mut map, key);
        let mut st = stream.lock();
        if let Some(p) = &st.publisher {
            if !replace {
                return Err(PublishError::AlreadyPublishing { peer: p.peer });
            }
        }
        if st.takeover == Some(publisher.conn_id) {
            st.takeover = None;
        }
        let replaced = st.publisher.take();
        if replaced.is_some() {
            st.gop.clear();
            st.headers.clear();
            st.has_video = false;
            st.has_default_video = false;
            st.has_audio = false;
        }
        st.publisher = Some(publisher);
        st.frames_in = 0;
        st.bytes_in = 0;
        st.media = MediaSummary::default();
        st.rate = RateWindow::new();
        st.timeline.new_publisher();
        st.unpublished_at = None;
        let notice = Notice {
            seq: st.take_seq(),
            interest: st.interest(),
        };
        drop(st);
        if stream.hls.get().is_none() {
            if let Some(h) = self.hls.as_ref().and_then(|p| p.packager_for(key)) {
                let _ = stream.hls.set(h);
            }
        }
        Ok((stream, notice, replaced))
    }

    /// Publisher `conn` waits to take `key` over from the handover pull that
    /// publishes it now (see [`Registry::unpublish`]). Returns the stream.
    pub fn await_takeover(&self, key: &str, conn: ConnId) -> Arc<Stream> {
        let mut map = self.map();
        let stream = self.get_or_create(&mut map, key);
        stream.lock().takeover = Some(conn);
        stream
    }

    /// Publisher `conn` no longer waits to take `stream` over: when nobody
    /// publishes it meanwhile, the notice players get now that it ended.
    pub fn cancel_takeover(&self, stream: &Arc<Stream>, conn: ConnId) -> Option<Notice> {
        let mut st = stream.lock();
        if st.takeover != Some(conn) {
            return None;
        }
        st.takeover = None;
        if st.publisher.is_some() {
            return None;
        }
        Some(Notice {
            seq: st.take_seq(),
            interest: st.interest(),
        })
    }

    /// Releases the publisher `conn_id` of `stream`: headers and GOP are
    /// dropped (a new publisher brings its own), players are kept. None
    /// when that is not its publisher, and when a publisher waits to take
    /// the stream over (players are told of the new publisher instead).
    pub fn unpublish(&self, stream: &Arc<Stream>, conn_id: ConnId) -> Option<Notice> {
        let mut map = self.map();
        let mut st = stream.lock();
        if st.publisher.as_ref().map(|p| p.conn_id) != Some(conn_id) {
            return None;
        }
        st.publisher = None;
        st.gop.clear();
        st.headers.clear();
        st.has_video = false;
        st.has_default_video = false;
        st.has_audio = false;
        st.unpublished_at = Some(Instant::now());
        let notice = Notice {
            seq: st.take_seq(),
            interest: st.interest(),
        };
        let awaited = st.takeover.is_some();
        if st.player_count() == 0 && !awaited && !stream.lingers(&st, Instant::now()) {
            drop(st);
            remove_if_same(&mut map, stream);
        }
        (!awaited).then_some(notice)
    }

    /// Registers a player on `worker` for `key` (waiting if nobody publishes
    /// yet) and takes what it needs to start.
    pub fn join(&self, key: &str, worker: usize, format: Format) -> (Arc<Stream>, JoinSnapshot) {
        let mut map = self.map();
        let stream = self.get_or_create(&mut map, key);
        let mut st = stream.lock();
        st.players[worker] += 1;
        st.players_by_format[format.index()] += 1;
        let mut headers = st.headers.clone();
        headers.sort_by_key(|f| header_rank(f));
        let snapshot = JoinSnapshot {
            live: st.publisher.is_some(),
            headers,
            gop: st.gop.frames.clone(),
            next_seq: st.next_seq,
            audio_only: !st.has_video,
        };
        drop(st);
        (stream, snapshot)
    }

    /// Unregisters a player on `worker`; forgets the stream when nobody
    /// publishes or plays it.
    pub fn leave(&self, stream: &Arc<Stream>, worker: usize, format: Format) {
        let mut map = self.map();
        let mut st = stream.lock();
        st.players[worker] = st.players[worker].saturating_sub(1);
        let f = &mut st.players_by_format[format.index()];
        *f = f.saturating_sub(1);
        let empty = st.player_count() == 0
            && st.publisher.is_none()
            && !stream.lingers(&st, Instant::now());
        drop(st);
        if empty {
            remove_if_same(&mut map, stream);
        }
    }

    /// Forgets the streams nobody publishes or plays whose HLS linger is
    /// over (called periodically by one worker).
    pub fn sweep(&self, now: Instant) {
        self.map().retain(|_, s| {
            let st = s.lock();
            st.publisher.is_some()
                || st.player_count() > 0
                || st.takeover.is_some()
                || s.lingers(&st, now)
        });
    }

    /// A relay joins `key` to push it: it counts for delivery to `worker`
    /// but not as a viewer.
    pub fn join_relay(&self, key: &str, worker: usize) -> (Arc<Stream>, JoinSnapshot) {
        let (stream, snap) = self.join(key, worker, Format::Rtmp);
        let mut st = stream.lock();
        let f = &mut st.players_by_format[Format::Rtmp.index()];
        *f = f.saturating_sub(1);
        drop(st);
        (stream, snap)
    }

    /// Undoes [`Registry::join_relay`].
    pub fn leave_relay(&self, stream: &Arc<Stream>, worker: usize) {
        {
            let mut st = stream.lock();
            st.players_by_format[Format::Rtmp.index()] += 1;
        }
        self.leave(stream, worker, Format::Rtmp);
    }

    /// The stream named `key`, if known.
    pub fn get(&self, key: &str) -> Option<Arc<Stream>> {
        self.map().get(key).cloned()
    }

    /// Every known stream, sorted by name.
    pub fn streams(&self) -> Vec<Arc<Stream>> {
        let mut v: Vec<_> = self.map().values().cloned().collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }

    /// Number of streams known (live or awaited by players).
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// True when no stream is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn remove_if_same(map: &mut HashMap<String, Arc<Stream>>, stream: &Arc<Stream>) {
    if map.get(&stream.key).is_some_and(|s| Arc::ptr_eq(s, stream)) {
        map.remove(&stream.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_keeps_smooth_timestamps_unchanged() {
        let mut t = Timeline::default();
        assert_eq!(t.map(1000), 1000);
        assert_eq!(t.map(1033), 1033);
        assert_eq!(
            t.map(1010),
            1010,
            "audio slightly behind video is not a jump"
        );
    }

    #[test]
    fn timeline_wraps_at_2_pow_32_without_resync() {
        let mut t = Timeline::default();
        assert_eq!(t.map(u32::MAX - 10), u32::MAX - 10);
        assert_eq!(t.map(5), 5);
    }

    #[test]
    fn timeline_resyncs_backward_and_huge_forward_jumps() {
        let mut t = Timeline::default();
        t.map(50_000);
        assert_eq!(
            t.map(0),
            50_001,
            "backwards: continue after the last output"
        );
        assert_eq!(t.map(33), 50_034);
        let jumped = t.map(33 + 3_600_000);
        assert_eq!(jumped, 50_035, "an hour forward: continue");
    }

    #[test]
    fn timeline_continues_across_publishers() {
        let mut t = Timeline::default();
        t.map(8000);
        t.new_publisher();
        assert_eq!(t.map(0), 8001);
        assert_eq!(t.map(40), 8041);
    }
}
