//! The reader: one file, read through byte ranges its driver fetches, as
//! a sequence of frames (see the module diagram in `mod.rs`).

use super::flv::{self, TagAt};
use super::mp4::{self, Movie, TrackKind};
use super::{metadata_payload, Container, Limits, ReadRequest, Step, VodError, VodFrame};
use crate::media::{self, Codec, FrameClass};
use crate::protocol::amf::Amf0Value;
use crate::protocol::session::MediaKind;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::Arc;

/// Read windows a reader keeps: two, so that a file whose audio and video
/// are stored apart (not interleaved) does not read each window twice.
pub const WINDOWS: usize = 2;

/// Most keyframe positions an FLV reader remembers from what it read (for
/// seeks back without a scan).
const MAX_SEEN_KEYFRAMES: usize = 100_000;

/// Tags read at most before the first coded frame of an FLV file (the
/// metadata and sequence headers come first in every file seen).
const MAX_PREAMBLE_TAGS: usize = 64;

/// Bytes read from the file, kept while frames are cut from them.
#[derive(Debug, Default)]
struct Windows {
    slots: [Option<(u64, Bytes)>; WINDOWS],
    next: usize,
}

impl Windows {
    /// The bytes of `[offset, offset + len)` if one window holds them.
    fn get(&self, offset: u64, len: u64) -> Option<Bytes> {
        self.slots.iter().flatten().find_map(|(start, data)| {
            let end = start + data.len() as u64;
            (offset >= *start && offset + len <= end).then(|| {
                let from = (offset - start) as usize;
                data.slice(from..from + len as usize)
            })
        })
    }

    /// The bytes from `offset` to the end of the window holding it (the
    /// longest such tail).
    fn tail(&self, offset: u64) -> Option<Bytes> {
        self.slots
            .iter()
            .flatten()
            .filter(|(start, data)| offset >= *start && offset < start + data.len() as u64)
            .map(|(start, data)| data.slice((offset - start) as usize..))
            .max_by_key(Bytes::len)
    }

    fn insert(&mut self, offset: u64, data: Bytes) {
        self.slots[self.next] = Some((offset, data));
        self.next = (self.next + 1) % WINDOWS;
    }
}

/// MP4 playback state.
#[derive(Debug)]
struct Mp4State {
    /// The next top-level box to look at: while looking for `moov`, then
    /// (fragmented files) for more `moof`s; `None` once none is left.
    walk: Option<u64>,
    movie: Option<Arc<Movie>>,
    /// The next sample to send.
    next: usize,
}

/// FLV playback state.
#[derive(Debug)]
struct FlvState {
    header: Option<flv::FileHeader>,
    /// Where the next tag starts.
    pos: u64,
    /// Reading the tags before the first coded frame.
    preamble: bool,
    preamble_tags: usize,
    metadata: Option<(u32, Bytes)>,
    meta: flv::Metadata,
    /// The latest video and audio sequence headers read.
    video_header: Option<(u32, Bytes)>,
    audio_header: Option<(u32, Bytes)>,
    has_video: bool,
    /// Keyframes read so far: (timestamp, tag position), by position.
    seen: Vec<(u32, u64)>,
    /// The metadata's keyframe index pointed at something other than a
    /// video tag: it is not used again.
    index_bad: bool,
    /// After a jump through the index: the tag there must be a video tag.
    verify: Option<(u64, u32)>,
    /// A seek resolving by scanning tags: the target and the best
    /// keyframe at or before it so far.
    scan: Option<(u64, Option<(u32, u64)>)>,
}

/// The container-specific part of a reader.
#[derive(Debug)]
enum Format {
    Mp4(Mp4State),
    Flv(Box<FlvState>),
}

/// See the module documentation.
#[derive(Debug)]
pub struct Reader {
    limits: Limits,
    file_len: u64,
    windows: Windows,
    /// The read asked for and not yet answered.
    awaiting: Option<ReadRequest>,
    format: Format,
    /// Frames to send before reading on (headers after a seek).
    queue: VecDeque<Step>,
    /// A seek (or start position) to resolve.
    seek: Option<u64>,
    /// No frame at or after this timestamp is sent (play's duration).
    stop_ms: Option<u64>,
    /// The `onMetaData` sent for an MP4 file.
    mp4_metadata: Option<Bytes>,
    ended: bool,
}

impl Reader {
    /// A reader of a `file_len`-byte file of `container`.
    pub fn new(container: Container, file_len: u64, limits: Limits) -> Reader {
        let format = match container {
            Container::Mp4 => Format::Mp4(Mp4State {
                walk: Some(0),
                movie: None,
                next: 0,
            }),
            Container::Flv => Format::Flv(Box::new(FlvState {
                header: None,
                pos: 0,
                preamble: true,
                preamble_tags: 0,
                metadata: None,
                meta: flv::Metadata::default(),
                video_header: None,
                audio_header: None,
                has_video: false,
                seen: Vec::new(),
                index_bad: false,
                verify: None,
                scan: None,
            })),
        };
        Reader {
            limits,
            file_len,
            windows: Windows::default(),
            awaiting: None,
            format,
            queue: VecDeque::new(),
            seek: None,
            stop_ms: None,
            mp4_metadata: None,
            ended: false,
        }
    }

    /// A reader of a progressive MP4 file whose `moov` was already parsed
    /// (a shared index: the same file, same length, same modification
    /// time). A fragmented movie is read from its file again.
    pub fn with_movie(movie: Arc<Movie>, file_len: u64, limits: Limits) -> Reader {
        let mut r = Reader::new(Container::Mp4, file_len, limits);
        if !movie.fragmented {
            r.opened_mp4(movie, None);
        }
        r
    }

    /// The parsed movie of an MP4 file, once open.
    pub fn movie(&self) -> Option<&Arc<Movie>> {
        match &self.format {
            Format::Mp4(m) => m.movie.as_ref(),
            Format::Flv(_) => None,
        }
    }

    /// The duration the file announces, once open (milliseconds).
    pub fn duration_ms(&self) -> Option<u64> {
        match &self.format {
            Format::Mp4(m) => m.movie.as_ref().map(|m| m.duration_ms),
            Format::Flv(f) => f.meta.duration_ms,
        }
    }

    /// True once the file's header (the `moov`, the FLV preamble) is read.
    pub fn is_open(&self) -> bool {
        match &self.format {
            Format::Mp4(m) => m.movie.is_some(),
            Format::Flv(f) => !f.preamble,
        }
    }

    /// For an FLV file: where the next tag starts (after [`Step::Seeked`],
    /// the keyframe's tag), and the header tags (metadata, sequence
    /// headers) a player needs before it.
    pub fn flv_position(&self) -> Option<(u64, Vec<VodFrame>)> {
        let Format::Flv(f) = &self.format else {
            return None;
        };
        Some((f.pos, flv_headers(f)))
    }

    /// Plays from the keyframe at or before `target_ms` (a seek, or
    /// play's start): [`Step::Seeked`] comes once it is found.
    pub fn seek(&mut self, target_ms: u64) {
        self.seek = Some(target_ms);
        self.queue.clear();
        self.ended = false;
        if let Format::Flv(f) = &mut self.format {
            f.scan = None;
            f.verify = None;
        }
    }

    /// Ends playback before the first frame at or after `stop_ms`.
    pub fn set_stop(&mut self, stop_ms: Option<u64>) {
        self.stop_ms = stop_ms;
    }

    /// The bytes of a read asked for by [`Step::Read`]. Fewer bytes than
    /// asked (the file shrank) is a truncated file.
    pub fn handle_read(&mut self, req: ReadRequest, data: Bytes) -> Result<(), VodError> {
        if self.awaiting == Some(req) {
            self.awaiting = None;
        }
        if data.len() < req.len {
            return Err(VodError::Truncated(format!(
                "asked for {} bytes at offset {}, got {}: the file shrank while being read",
                req.len,
                req.offset,
                data.len()
            )));
        }
        self.windows.insert(req.offset, data);
        Ok(())
    }

    /// The next thing to do (see [`Step`]).
    pub fn poll(&mut self) -> Result<Step, VodError> {
        // The container steps return `Step::Wait` with no read in flight
        // when their state moved on without a step for the driver (headers
        // queued, a seek resolved): go round again. Each such turn moves a
        // position forward or queues something, so the loop ends.
        loop {
            if self.awaiting.is_some() {
                return Ok(Step::Wait);
            }
            if let Some(step) = self.queue.pop_front() {
                return Ok(step);
            }
            if self.ended {
                return Ok(Step::End);
            }
            let step = match &mut self.format {
                Format::Mp4(_) => self.poll_mp4(),
                Format::Flv(_) => self.poll_flv(),
            }?;
            match step {
                Step::Wait if self.awaiting.is_none() => continue,
                Step::Read(req) => self.awaiting = Some(req),
                Step::End => self.ended = true,
                _ => {}
            }
            return Ok(step);
        }
    }

    /// A read of `len` bytes (at least; a window's worth) at `offset`, or
    /// the file ends first.
    fn read(&self, offset: u64, len: u64, what: &str) -> Result<Step, VodError> {
        if offset >= self.file_len || offset.saturating_add(len) > self.file_len {
            return Err(VodError::Truncated(format!(
                "{what} at offset {offset} needs {len} bytes; the file has {}",
                self.file_len
            )));
        }
        let want = len.max(self.limits.read_size as u64);
        let want = want.min(self.file_len - offset);
        Ok(Step::Read(ReadRequest {
            offset,
            len: want as usize,
        }))
    }

    fn stopped(&self, ts: u32) -> bool {
        self.stop_ms.is_some_and(|s| u64::from(ts) >= s)
    }

    // ---- MP4 ----

    fn opened_mp4(&mut self, movie: Arc<Movie>, walk: Option<u64>) {
        let Format::Mp4(m) = &mut self.format else {
            return;
        };
        self.mp4_metadata = Some(mp4_metadata(&movie, self.file_len));
        m.walk = if movie.fragmented { walk } else { None };
        m.movie = Some(movie);
        m.next = 0;
        if self.seek.is_none() {
            self.queue_mp4_headers(0);
        }
    }

    fn queue_mp4_headers(&mut self, ts: u32) {
        let Format::Mp4(m) = &self.format else {
            return;
        };
        let Some(movie) = &m.movie else {
            return;
        };
        let mut frames = Vec::new();
        if let Some(meta) = &self.mp4_metadata {
            frames.push(header_frame(MediaKind::Data, ts, meta.clone()));
        }
        for kind in [TrackKind::Video, TrackKind::Audio] {
            for t in movie.tracks.iter().filter(|t| t.kind == kind) {
                if let Some(h) = &t.sequence_header {
                    let k = match kind {
                        TrackKind::Video => MediaKind::Video,
                        TrackKind::Audio => MediaKind::Audio,
                    };
                    frames.push(header_frame(k, ts, h.clone()));
                }
            }
        }
        self.queue.extend(frames.into_iter().map(Step::Frame));
    }

    fn poll_mp4(&mut self) -> Result<Step, VodError> {
        let Format::Mp4(m) = &self.format else {
            unreachable!()
        };
        let Some(movie) = m.movie.clone() else {
            return self.open_mp4();
        };
        let (next, walk) = (m.next, m.walk);
        if let Some(target) = self.seek {
            // A fragmented file is walked on until its samples reach the
            // target (or it ends).
            let reached = movie
                .samples
                .last()
                .is_some_and(|s| u64::from(movie.timestamp_ms(s)) >= target);
            if !reached && walk.is_some() {
                return self.walk_fragments();
            }
            let index = movie.seek_index(target);
            let position = movie
                .samples
                .get(index)
                .map_or(0, |s| movie.timestamp_ms(s));
            if let Format::Mp4(m) = &mut self.format {
                m.next = index;
            }
            self.seek = None;
            self.queue.push_back(Step::Seeked {
                position_ms: position,
            });
            self.queue_mp4_headers(0);
            return Ok(self.queue.pop_front().unwrap_or(Step::Wait));
        }
        let Some(sample) = movie.samples.get(next).copied() else {
            if walk.is_some() {
                return self.walk_fragments();
            }
            return Ok(Step::End);
        };
        if sample.size > self.limits.max_sample {
            return Err(VodError::TooLarge {
                what: "sample",
                size: u64::from(sample.size),
                limit: u64::from(self.limits.max_sample),
            });
        }
        let ts = movie.timestamp_ms(&sample);
        if self.stopped(ts) {
            return Ok(Step::End);
        }
        let Some(data) = self.windows.get(sample.offset, u64::from(sample.size)) else {
            return self.read(sample.offset, u64::from(sample.size), "sample");
        };
        let header = movie.tag_header(&sample);
        let mut payload = BytesMut::with_capacity(header.as_slice().len() + data.len());
        payload.extend_from_slice(header.as_slice());
        payload.extend_from_slice(&data);
        let track = &movie.tracks[usize::from(sample.track)];
        let kind = match track.kind {
            TrackKind::Video => MediaKind::Video,
            TrackKind::Audio => MediaKind::Audio,
        };
        if let Format::Mp4(m) = &mut self.format {
            m.next += 1;
        }
        Ok(Step::Frame(VodFrame {
            kind,
            timestamp: ts,
            payload: payload.freeze(),
            keyframe: kind == MediaKind::Video && sample.sync,
            header: false,
        }))
    }

    /// Looks for `moov` among the top-level boxes.
    fn open_mp4(&mut self) -> Result<Step, VodError> {
        let Format::Mp4(m) = &self.format else {
            unreachable!()
        };
        let Some(walk) = m.walk else {
            return Err(VodError::NoMoov);
        };
        if walk >= self.file_len {
            return Err(VodError::NoMoov);
        }
        let Some(b) = self.top_box(walk)? else {
            return self.read(walk, 8.min(self.file_len - walk), "box header");
        };
        if walk == 0
            && !matches!(
                &b.fourcc,
                b"ftyp" | b"moov" | b"free" | b"mdat" | b"wide" | b"skip" | b"pnot" | b"styp"
            )
        {
            return Err(VodError::NotThisFormat("does not start with an MP4 box"));
        }
        match &b.fourcc {
            b"moov" => {
                if b.size > self.limits.max_box {
                    return Err(VodError::TooLarge {
                        what: "moov box",
                        size: b.size,
                        limit: self.limits.max_box,
                    });
                }
                let Some(data) = self.windows.get(walk, b.size) else {
                    return self.read(walk, b.size, "moov box");
                };
                let mut movie = Movie::parse(&data[b.header_len as usize..], &self.limits)?;
                movie.moov_end = walk + b.size;
                self.opened_mp4(Arc::new(movie), Some(walk + b.size));
                Ok(self.queue.pop_front().unwrap_or(Step::Wait))
            }
            b"moof" => Err(VodError::Malformed {
                what: "MP4 file",
                detail: format!("moof at offset {walk} before any moov"),
            }),
            _ => {
                if let Format::Mp4(m) = &mut self.format {
                    m.walk = Some(walk.saturating_add(b.size));
                }
                Ok(Step::Wait)
            }
        }
    }

    /// The top-level box header at `offset`, if the windows hold it.
    fn top_box(&self, offset: u64) -> Result<Option<mp4::TopBox>, VodError> {
        let Some(tail) = self.windows.tail(offset) else {
            return Ok(None);
        };
        let b = mp4::top_box(&tail, offset, self.file_len)?;
        if b.is_none() && offset + tail.len() as u64 >= self.file_len {
            return Err(VodError::Truncated(format!(
                "a box header at offset {offset} is cut by the end of the file"
            )));
        }
        Ok(b)
    }

    /// Reads the next movie fragment's `moof` into the index.
    fn walk_fragments(&mut self) -> Result<Step, VodError> {
        loop {
            let Format::Mp4(m) = &self.format else {
                unreachable!()
            };
            let Some(walk) = m.walk else {
                return Ok(Step::Wait);
            };
            if walk >= self.file_len {
                if let Format::Mp4(m) = &mut self.format {
                    m.walk = None;
                }
                return Ok(Step::Wait);
            }
            let Some(b) = self.top_box(walk)? else {
                return self.read(walk, 8.min(self.file_len - walk), "box header");
            };
            match &b.fourcc {
                b"moof" => {
                    if b.size > self.limits.max_box {
                        return Err(VodError::TooLarge {
                            what: "moof box",
                            size: b.size,
                            limit: self.limits.max_box,
                        });
                    }
                    let Some(data) = self.windows.get(walk, b.size) else {
                        return self.read(walk, b.size, "moof box");
                    };
                    let limits = self.limits;
                    let Format::Mp4(m) = &mut self.format else {
                        unreachable!()
                    };
                    let movie = m.movie.as_mut().expect("open");
                    let added = Arc::make_mut(movie).add_fragment(
                        &data[b.header_len as usize..],
                        walk,
                        b.size,
                        &limits,
                    )?;
                    m.walk = Some(walk.saturating_add(b.size));
                    if added > 0 {
                        return Ok(Step::Wait);
                    }
                }
                b"mfra" => {
                    if let Format::Mp4(m) = &mut self.format {
                        m.walk = None;
                    }
                    return Ok(Step::Wait);
                }
                _ => {
                    if let Format::Mp4(m) = &mut self.format {
                        if let Some(movie) = m.movie.as_mut() {
                            Arc::make_mut(movie).extend_fragment(walk, b.size);
                        }
                        m.walk = Some(walk.saturating_add(b.size));
                    }
                }
            }
        }
    }

    // ---- FLV ----

    fn poll_flv(&mut self) -> Result<Step, VodError> {
        let Format::Flv(f) = &self.format else {
            unreachable!()
        };
        let Some(header) = f.header else {
            if self.file_len < flv::FILE_HEADER_LEN {
                return Err(VodError::NotThisFormat(
                    "shorter than an FLV header (13 bytes)",
                ));
            }
            let Some(data) = self.windows.tail(0) else {
                return self.read(0, flv::FILE_HEADER_LEN.min(self.file_len), "FLV header");
            };
            return match flv::file_header(&data)? {
                Some(h) => {
                    if let Format::Flv(f) = &mut self.format {
                        f.header = Some(h);
                        f.pos = h.first_tag;
                        f.has_video = h.video;
                    }
                    Ok(Step::Wait)
                }
                None => Err(VodError::Truncated("the FLV header is cut short".into())),
            };
        };
        if !f.preamble && f.scan.is_none() {
            if let Some(target) = self.seek.take() {
                self.start_flv_seek(target);
            }
        }
        let Format::Flv(f) = &self.format else {
            unreachable!()
        };
        let pos = f.pos;
        if pos >= self.file_len {
            return self.flv_eof(header);
        }
        let Some(tail) = self.windows.tail(pos) else {
            let want = (flv::TAG_HEADER_LEN + flv::TAG_TRAILER_LEN) as u64;
            return self.read(pos, want.min(self.file_len - pos), "FLV tag");
        };
        // Scanning for a seek point needs only the tag headers.
        if let Some((target, best)) = f.scan {
            return self.scan_step(pos, &tail, target, best);
        }
        let tag = match flv::tag(&tail, self.limits.max_sample)? {
            TagAt::Need(n) => return self.read(pos, n, "FLV tag"),
            TagAt::Tag(t) => t,
        };
        let Format::Flv(f) = &mut self.format else {
            unreachable!()
        };
        let total = tag
            .as_ref()
            .map_or_else(|| flv::tag_len(&tail).unwrap_or(15), |t| t.total_len);
        let Some(tag) = tag else {
            f.pos += total;
            return Ok(Step::Wait);
        };
        let info = match tag.kind {
            MediaKind::Video => Some(media::classify_video(&tag.payload)),
            MediaKind::Audio => Some(media::classify_audio(&tag.payload)),
            MediaKind::Data => None,
        };
        let class = info.map(|i| i.class);
        let is_header =
            tag.kind == MediaKind::Data || matches!(class, Some(FrameClass::SequenceHeader));
        if tag.kind == MediaKind::Video {
            f.has_video = true;
        }
        match (tag.kind, class) {
            (MediaKind::Data, _) if crate::protocol::session::is_metadata(&tag.payload) => {
                if let Some(meta) = flv::metadata(&tag.payload, self.file_len) {
                    if f.metadata.is_none() {
                        f.meta = meta;
                    }
                }
                f.metadata = Some((tag.timestamp, tag.payload.clone()));
            }
            (MediaKind::Video, Some(FrameClass::SequenceHeader)) => {
                f.video_header = Some((tag.timestamp, tag.payload.clone()))
            }
            (MediaKind::Audio, Some(FrameClass::SequenceHeader)) => {
                f.audio_header = Some((tag.timestamp, tag.payload.clone()))
            }
            (MediaKind::Video, Some(FrameClass::Keyframe)) => {
                remember(&mut f.seen, tag.timestamp, pos)
            }
            _ => {}
        }
        if f.preamble {
            f.preamble_tags += 1;
            if is_header && f.preamble_tags < MAX_PREAMBLE_TAGS {
                f.pos += total;
                return Ok(Step::Wait);
            }
            // The first coded frame: the preamble ends here, and the tag
            // is read again as the first frame (after a seek, if any).
            f.preamble = false;
            match self.seek.take() {
                None => {
                    self.queue_flv_headers();
                    return Ok(self.queue.pop_front().unwrap_or(Step::Wait));
                }
                Some(target) => {
                    self.start_flv_seek(target);
                    return Ok(Step::Wait);
                }
            }
        }
        let stop = self.stop_ms;
        if stop.is_some_and(|s| u64::from(tag.timestamp) >= s) && tag.kind != MediaKind::Data {
            return Ok(Step::End);
        }
        f.pos += total;
        Ok(Step::Frame(VodFrame {
            kind: tag.kind,
            timestamp: tag.timestamp,
            keyframe: matches!(class, Some(FrameClass::Keyframe)),
            payload: tag.payload,
            header: is_header,
        }))
    }

    fn flv_eof(&mut self, _header: flv::FileHeader) -> Result<Step, VodError> {
        let Format::Flv(f) = &mut self.format else {
            unreachable!()
        };
        if let Some((_, best)) = f.scan.take() {
            return Ok(self.finish_flv_seek(best));
        }
        if f.preamble {
            // A file of headers only.
            f.preamble = false;
            if self.seek.take().is_some() {
                let Format::Flv(f) = &self.format else {
                    unreachable!()
                };
                let ts = f.metadata.as_ref().map_or(0, |m| m.0);
                self.queue.push_back(Step::Seeked { position_ms: ts });
            }
            self.queue_flv_headers();
            self.queue.push_back(Step::End);
            return Ok(self.queue.pop_front().unwrap_or(Step::End));
        }
        Ok(Step::End)
    }

    fn queue_flv_headers(&mut self) {
        let Format::Flv(f) = &self.format else {
            return;
        };
        let frames = flv_headers(f);
        self.queue.extend(frames.into_iter().map(Step::Frame));
    }

    /// Starts resolving a seek: through the metadata's keyframe index, or
    /// by scanning tags from the best keyframe known before the target.
    fn start_flv_seek(&mut self, target: u64) {
        let Format::Flv(f) = &mut self.format else {
            return;
        };
        let first = f.header.map_or(flv::FILE_HEADER_LEN, |h| h.first_tag);
        if !f.index_bad && !f.meta.keyframes.is_empty() {
            let entry = f
                .meta
                .keyframes
                .iter()
                .rev()
                .find(|(t, _)| u64::from(*t) <= target)
                .or(f.meta.keyframes.first())
                .copied();
            if let Some((t, p)) = entry {
                // The scan starts at the index's keyframe and checks that
                // a video tag is there; it ends at the next keyframe past
                // the target (at most one GOP of tag headers), so a sparse
                // index still lands on the nearest keyframe.
                f.pos = p;
                f.verify = Some((p, t));
                f.scan = Some((target, None));
                return;
            }
        }
        let from = f
            .seen
            .iter()
            .rev()
            .find(|(t, _)| u64::from(*t) <= target)
            .copied();
        f.pos = from.map_or(first, |(_, p)| p);
        f.scan = Some((target, None));
    }

    /// One step of a seek scan at tag position `pos`.
    fn scan_step(
        &mut self,
        pos: u64,
        tail: &Bytes,
        target: u64,
        best: Option<(u32, u64)>,
    ) -> Result<Step, VodError> {
        // Header plus the first payload byte (frame type / sound format).
        if tail.len() < flv::TAG_HEADER_LEN + 1 {
            let want = (flv::TAG_HEADER_LEN + flv::TAG_TRAILER_LEN) as u64;
            if pos + want > self.file_len {
                let Format::Flv(f) = &mut self.format else {
                    unreachable!()
                };
                f.scan = None;
                return Ok(self.finish_flv_seek(best));
            }
            return self.read(pos, want, "FLV tag");
        }
        let kind = tail[0] & 0x1f;
        let ts = u32::from_be_bytes([tail[7], tail[4], tail[5], tail[6]]);
        let total = flv::tag_len(tail).unwrap_or(15);
        let Format::Flv(f) = &mut self.format else {
            unreachable!()
        };
        if let Some((at, _)) = f.verify.take() {
            if at == pos && kind != 9 {
                // The index points elsewhere than at video: not used
                // again; scan from the first tag instead.
                f.index_bad = true;
                f.pos = f.header.map_or(flv::FILE_HEADER_LEN, |h| h.first_tag);
                f.scan = Some((target, None));
                return Ok(Step::Wait);
            }
        }
        let candidate = match kind {
            9 => {
                let payload = tail.slice(flv::TAG_HEADER_LEN..);
                let class = media::classify_video(&payload).class;
                if class == FrameClass::Keyframe {
                    remember(&mut f.seen, ts, pos);
                    true
                } else {
                    false
                }
            }
            8 => !f.has_video,
            _ => false,
        };
        // Sequence headers on the way are the ones in force at the seek
        // point: keep them (they are small and need their payload).
        if kind == 9 || kind == 8 {
            let size = total as usize - flv::TAG_TRAILER_LEN;
            if tail.len() >= size {
                let payload = tail.slice(flv::TAG_HEADER_LEN..size);
                if kind == 9 && media::classify_video(&payload).class == FrameClass::SequenceHeader
                {
                    f.video_header = Some((ts, payload));
                } else if kind == 8
                    && media::classify_audio(&payload).class == FrameClass::SequenceHeader
                {
                    f.audio_header = Some((ts, payload));
                }
            }
        }
        if candidate {
            if u64::from(ts) <= target || best.is_none() {
                let best = Some((ts, pos));
                if u64::from(ts) >= target {
                    f.scan = None;
                    return Ok(self.finish_flv_seek(best));
                }
                f.scan = Some((target, best));
            } else {
                f.scan = None;
                return Ok(self.finish_flv_seek(best));
            }
        }
        let Format::Flv(f) = &mut self.format else {
            unreachable!()
        };
        f.pos = pos + total;
        if f.pos >= self.file_len {
            f.scan = None;
            let best = best.or(if candidate { Some((ts, pos)) } else { None });
            return Ok(self.finish_flv_seek(best));
        }
        Ok(Step::Wait)
    }

    fn finish_flv_seek(&mut self, best: Option<(u32, u64)>) -> Step {
        let Format::Flv(f) = &mut self.format else {
            return Step::End;
        };
        let first = f.header.map_or(flv::FILE_HEADER_LEN, |h| h.first_tag);
        let (ts, pos) = best.unwrap_or((0, first));
        f.pos = pos;
        f.scan = None;
        self.queue.push_back(Step::Seeked { position_ms: ts });
        self.queue_flv_headers();
        self.queue.pop_front().unwrap_or(Step::Wait)
    }
}

fn remember(seen: &mut Vec<(u32, u64)>, ts: u32, pos: u64) {
    match seen.binary_search_by_key(&pos, |&(_, p)| p) {
        Ok(_) => {}
        Err(i) => {
            if seen.len() < MAX_SEEN_KEYFRAMES {
                seen.insert(i, (ts, pos));
            }
        }
    }
}

/// The metadata and latest sequence headers of an FLV file, as frames,
/// with the timestamps they have in the file (rtmpdump computes how much
/// of a partial play it got from them: see docs/vod.md).
fn flv_headers(f: &FlvState) -> Vec<VodFrame> {
    let mut frames = Vec::new();
    if let Some((ts, m)) = &f.metadata {
        frames.push(header_frame(MediaKind::Data, *ts, m.clone()));
    }
    if let Some((ts, v)) = &f.video_header {
        frames.push(header_frame(MediaKind::Video, *ts, v.clone()));
    }
    if let Some((ts, a)) = &f.audio_header {
        frames.push(header_frame(MediaKind::Audio, *ts, a.clone()));
    }
    frames
}

fn header_frame(kind: MediaKind, timestamp: u32, payload: Bytes) -> VodFrame {
    VodFrame {
        kind,
        timestamp,
        payload,
        keyframe: false,
        header: true,
    }
}

/// The `onMetaData` of an MP4 file: duration, picture size, codecs.
fn mp4_metadata(movie: &Movie, file_len: u64) -> Bytes {
    let mut props = vec![
        (
            "duration",
            Amf0Value::Number(movie.duration_ms as f64 / 1000.0),
        ),
        ("filesize", Amf0Value::Number(file_len as f64)),
    ];
    if let Some(v) = movie.tracks.iter().find(|t| t.kind == TrackKind::Video) {
        props.push(("width", Amf0Value::Number(f64::from(v.width))));
        props.push(("height", Amf0Value::Number(f64::from(v.height))));
        props.push(("videocodecid", codec_id(v.codec)));
        let frames = movie
            .samples
            .iter()
            .filter(|s| movie.tracks[usize::from(s.track)].kind == TrackKind::Video)
            .count();
        if movie.duration_ms > 0 && frames > 1 {
            let fps = frames as f64 * 1000.0 / movie.duration_ms as f64;
            props.push((
                "framerate",
                Amf0Value::Number((fps * 1000.0).round() / 1000.0),
            ));
        }
    }
    if let Some(a) = movie.tracks.iter().find(|t| t.kind == TrackKind::Audio) {
        props.push(("audiocodecid", codec_id(a.codec)));
        props.push((
            "audiosamplerate",
            Amf0Value::Number(f64::from(a.sample_rate)),
        ));
        props.push(("audiochannels", Amf0Value::Number(f64::from(a.channels))));
        props.push(("stereo", Amf0Value::Boolean(a.channels == 2)));
    }
    metadata_payload(props)
}

/// `videocodecid` / `audiocodecid`: the legacy ids where they exist, the
/// FourCC as a number otherwise (as ffmpeg writes Enhanced FLV metadata).
fn codec_id(codec: Codec) -> Amf0Value {
    let legacy = match codec {
        Codec::Avc => Some(7.0),
        Codec::Aac => Some(10.0),
        Codec::Mp3 => Some(2.0),
        _ => None,
    };
    let n = legacy.unwrap_or_else(|| {
        codec
            .fourcc()
            .map_or(0.0, |f| f64::from(u32::from_be_bytes(f)))
    });
    Amf0Value::Number(n)
}
