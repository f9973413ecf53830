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
//! stream.

use crate::media::{self, Codec, FrameClass, MediaInfo};
use crate::protocol::chunk::{self, Message};
use crate::protocol::session::{is_metadata, MediaKind};
use crate::wire::WireForm;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

/// The message stream id every shared RTMP wire form is built for. The
/// session hands out ids from 1, so nearly every player plays on 1; a player
/// on another id gets per-player headers around the same payload slices.
pub const SHARED_MESSAGE_STREAM_ID: u32 = 1;

/// Most workers a process runs: interest is a 64-bit mask.
pub const MAX_WORKERS: usize = 64;

/// A timestamp step backwards beyond this (ms), within one publisher, is a
/// discontinuity (audio and video interleave a few tens of ms out of order).
const MAX_BACKWARD_STEP_MS: i32 = 1_000;
/// A forward step beyond this (ms) is a discontinuity: an encoder restart or
/// clock jump, which players would otherwise wait out.
const MAX_FORWARD_STEP_MS: i32 = 15_000;

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

    fn index(self) -> usize {
        self as usize
    }
}

impl Frame {
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

    /// The RTMP wire form for a player on `stream_id` at `chunk_size`.
    pub fn rtmp_for(&self, chunk_size: u32, stream_id: u32) -> WireForm {
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

/// Who publishes a stream.
#[derive(Debug, Clone)]
pub struct PublisherInfo {
    pub conn_id: u64,
    pub worker: usize,
    pub peer: SocketAddr,
    /// `rtmp` (later `rtmps`, relays).
    pub protocol: &'static str,
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

/// The frames from the latest keyframe on, bounded in bytes and frames.
#[derive(Debug, Default)]
struct GopCache {
    frames: Vec<Arc<Frame>>,
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
    /// Latest header frames, one per slot.
    headers: Vec<Arc<Frame>>,
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

    /// GOP cache size: frames, bytes.
    pub fn gop_cache(&self) -> (usize, usize) {
        (self.gop.frames.len(), self.gop.bytes)
    }

    /// Whether audio / video have been seen from the current publisher.
    pub fn has_audio_video(&self) -> (bool, bool) {
        (self.has_audio, self.has_video)
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
    /// Unique for the process's lifetime (names are reused, ids are not).
    pub id: u64,
    /// `app/name`.
    pub key: String,
    chunk_size: u32,
    gop_limits: GopLimits,
    state: Mutex<StreamState>,
    /// Bytes written to this stream's players.
    pub bytes_out: AtomicU64,
    /// Frames skipped for slow players.
    pub frames_dropped: AtomicU64,
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
    pub has_audio: bool,
}

impl Stream {
    fn lock(&self) -> MutexGuard<'_, StreamState> {
        // A panic while holding the lock cannot leave the state half-written
        // in a way later frames would trip over: keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes one message: classifies it, maps its timestamp, builds its
    /// RTMP wire form once, updates the headers and GOP cache, and returns
    /// the shared frame with the workers that must receive it.
    pub fn push(&self, kind: MediaKind, timestamp: u32, payload: Bytes) -> (Arc<Frame>, u64) {
        self.push_inner(None, kind, timestamp, payload)
            .expect("an unchecked push always succeeds")
    }

    /// [`Stream::push`] from publisher `conn_id`: None (the frame dropped)
    /// when that connection no longer publishes the stream (replaced by
    /// another), checked under the stream's lock.
    pub fn push_from(
        &self,
        conn_id: u64,
        kind: MediaKind,
        timestamp: u32,
        payload: Bytes,
    ) -> Option<(Arc<Frame>, u64)> {
        self.push_inner(Some(conn_id), kind, timestamp, payload)
    }

    fn push_inner(
        &self,
        conn_id: Option<u64>,
        kind: MediaKind,
        timestamp: u32,
        payload: Bytes,
    ) -> Option<(Arc<Frame>, u64)> {
        let (info, header) = describe(kind, &payload);
        let mut st = self.lock();
        if conn_id.is_some() && st.publisher.as_ref().map(|p| p.conn_id) != conn_id {
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
        if let Some(slot) = header {
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
        );
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
            st.headers.retain(|h| h.header != Some(slot));
            st.headers.push(frame.clone());
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
            st.gop.bytes = kept.iter().map(|f| f.rtmp.len()).sum::<usize>() + frame.rtmp.len();
            st.gop.frames.extend(kept);
            st.gop.frames.push(frame.clone());
        } else if !st.gop.frames.is_empty() {
            st.gop.bytes += frame.rtmp.len();
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

    /// Latest header frames (for a player resuming after a skip).
    pub fn headers(&self) -> Vec<Arc<Frame>> {
        self.lock().headers.clone()
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
/// configuration, then per-track metadata (PROTOCOL_NOTES "Media").
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
}

impl Registry {
    pub fn new(chunk_size: u32, gop_limits: GopLimits) -> Self {
        Self {
            streams: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            chunk_size,
            gop_limits,
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Stream>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get_or_create(&self, map: &mut HashMap<String, Arc<Stream>>, key: &str) -> Arc<Stream> {
        map.entry(key.to_owned())
            .or_insert_with(|| {
                Arc::new(Stream {
                    id: self.next_id.fetch_add(1, Ordering::Relaxed),
                    key: key.to_owned(),
                    chunk_size: self.chunk_size,
                    gop_limits: self.gop_limits,
                    bytes_out: AtomicU64::new(0),
                    frames_dropped: AtomicU64::new(0),
                    state: Mutex::new(StreamState {
                        publisher: None,
                        players: [0; MAX_WORKERS],
                        gop: GopCache::default(),
                        headers: Vec::new(),
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
                    }),
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
        let notice = Notice {
            seq: st.take_seq(),
            interest: st.interest(),
        };
        drop(st);
        Ok((stream, notice, replaced))
    }

    /// Releases the publisher `conn_id` of `stream`: headers and GOP are
    /// dropped (a new publisher brings its own), players are kept.
    pub fn unpublish(&self, stream: &Arc<Stream>, conn_id: u64) -> Option<Notice> {
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
        let notice = Notice {
            seq: st.take_seq(),
            interest: st.interest(),
        };
        if st.player_count() == 0 {
            drop(st);
            remove_if_same(&mut map, stream);
        }
        Some(notice)
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
            has_audio: st.has_audio,
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
        let empty = st.player_count() == 0 && st.publisher.is_none();
        drop(st);
        if empty {
            remove_if_same(&mut map, stream);
        }
    }

    /// The stream named `key`, if known.
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

    pub fn get(&self, key: &str) -> Option<Arc<Stream>> {
        self.map().get(key).cloned()
    }

    /// True when `key` has a publisher now.
    pub fn is_live(&self, key: &str) -> bool {
        self.get(key)
            .is_some_and(|s| s.with_state(|st| st.publisher.is_some()))
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
