//! MP4 (ISO/IEC 14496-12) as a sample index: the `moov` box's sample
//! tables (8.6, 8.7: `stts`, `ctts`, `stsc`, `stsz`/`stz2`, `stco`/`co64`,
//! `stss`) expanded into one list of samples per file, and the movie
//! fragments (8.8: `moof` with `traf`, `tfhd`, `tfdt`, `trun`) of a
//! fragmented file appended to it as they are read. Each sample is where
//! its bytes are in the file, its decode time and composition offset in
//! its track's timescale, and whether it is a sync sample; the bytes
//! themselves are read by the caller.
//!
//! Every count and size is a claim, checked against the bytes of its box
//! before anything is allocated from it; the whole index is bounded by
//! [`Limits::max_samples`](super::Limits).

use super::boxes::{self, fourcc_str, Children, Cursor};
use super::tags::{self, TagCodec};
use super::{Limits, VodError};
use crate::media::Codec;
use bytes::Bytes;

/// Video or audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackKind {
    Video,
    Audio,
}

/// One playable track of an MP4 file.
#[derive(Debug, Clone)]
pub struct Track {
    /// `tkhd` track_ID.
    pub id: u32,
    pub kind: TrackKind,
    /// `mdhd` timescale (ticks per second).
    pub timescale: u32,
    pub codec: Codec,
    /// How its samples become FLV tag payloads.
    pub(crate) tag: TagCodec,
    /// The sample entry box of `stsd`, whole (an HLS init segment copies it).
    pub sample_entry: Bytes,
    /// The FLV sequence header payload (None for MP3, which has none).
    pub sequence_header: Option<Bytes>,
    /// Picture size (video) from the sample entry.
    pub width: u32,
    pub height: u32,
    /// Sample rate and channels (audio) from the sample entry.
    pub sample_rate: u32,
    pub channels: u16,
    /// The first edit's media time (8.6.6 `elst`): presentation starts
    /// this many ticks into the media (B-frame delay, audio priming), less
    /// an initial empty edit's delay.
    pub shift: i64,
    /// `trex` defaults, for fragments.
    trex: Trex,
}

#[derive(Debug, Clone, Copy, Default)]
struct Trex {
    duration: u32,
    size: u32,
    flags: u32,
}

/// One sample: where its bytes are and when it plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Byte offset in the file.
    pub offset: u64,
    /// Decode time in the track's timescale.
    pub dts: u64,
    pub size: u32,
    /// Duration in the track's timescale.
    pub duration: u32,
    /// Composition offset (pts - dts) in the track's timescale.
    pub cto: i32,
    /// Index of its track in [`Movie::tracks`].
    pub track: u8,
    pub sync: bool,
}

/// What `moov` says, and the samples found so far.
#[derive(Debug, Clone)]
pub struct Movie {
    pub tracks: Vec<Track>,
    /// Every sample of the `moov`'s tables and of the fragments read so
    /// far, in decode order per track and merged across tracks by time.
    pub samples: Vec<Sample>,
    /// `mvhd` duration in milliseconds (0 when unknown, as in a
    /// fragmented file).
    pub duration_ms: u64,
    /// The file has `mvex`: movie fragments follow the `moov`.
    pub fragmented: bool,
    /// Milliseconds added to every timestamp so that none is negative
    /// once edit lists are applied.
    offset_ms: i64,
    /// Per track: the decode time where its next fragment continues when
    /// it has no `tfdt`.
    next_dts: Vec<u64>,
    /// Skipped tracks and why, for the log.
    pub skipped: Vec<String>,
    /// Samples described by the `moov`'s own tables (the rest came from
    /// fragments).
    pub moov_samples: usize,
    /// Where the `moov` box ends: with the boxes before it, the
    /// initialization part of a fragmented file.
    pub moov_end: u64,
    /// The movie fragments read so far: where each `moof` starts and where
    /// the boxes that follow it (its `mdat`) end.
    pub fragments: Vec<(u64, u64)>,
}

/// Most tracks kept from one file (a video and a few audio languages).
const MAX_TRACKS: usize = 8;

impl Movie {
    /// Parses a `moov` box body (without its header).
    pub fn parse(moov: &[u8], limits: &Limits) -> Result<Movie, VodError> {
        let mut movie_timescale = 1000u32;
        let mut movie_duration = 0u64;
        let mut tracks = Vec::new();
        let mut skipped = Vec::new();
        let mut tables = Vec::new();
        let mut trexes: Vec<(u32, Trex)> = Vec::new();
        let mut fragmented = false;
        for child in Children::new(moov, "moov") {
            let (kind, body) = child?;
            match &kind {
                b"mvhd" => {
                    let mut c = Cursor::new(body, "mvhd");
                    let (version, _) = c.version_flags()?;
                    if version == 1 {
                        c.skip(16)?;
                        movie_timescale = c.u32()?;
                        movie_duration = c.u64()?;
                    } else {
                        c.skip(8)?;
                        movie_timescale = c.u32()?;
                        movie_duration = u64::from(c.u32()?);
                    }
                }
                b"trak" => {
                    if tracks.len() >= MAX_TRACKS {
                        skipped.push(format!("more than {MAX_TRACKS} tracks"));
                        continue;
                    }
                    match parse_trak(body, movie_timescale)? {
                        Ok((track, table)) => {
                            tracks.push(track);
                            tables.push(table);
                        }
                        Err(why) => skipped.push(why),
                    }
                }
                b"mvex" => {
                    fragmented = true;
                    for c in Children::new(body, "mvex") {
                        let (k, b) = c?;
                        if &k == b"trex" {
                            let mut c = Cursor::new(b, "trex");
                            c.version_flags()?;
                            let id = c.u32()?;
                            c.u32()?; // default_sample_description_index
                            let duration = c.u32()?;
                            let size = c.u32()?;
                            let flags = c.u32()?;
                            trexes.push((
                                id,
                                Trex {
                                    duration,
                                    size,
                                    flags,
                                },
                            ));
                        }
                    }
                }
                _ => {}
            }
        }
        if tracks.is_empty() {
            let why = if skipped.is_empty() {
                "no audio or video track".to_owned()
            } else {
                skipped.join("; ")
            };
            return Err(VodError::NoPlayableTrack(why));
        }
        for t in &mut tracks {
            if let Some((_, trex)) = trexes.iter().find(|(id, _)| *id == t.id) {
                t.trex = *trex;
            }
        }
        let mut samples = Vec::new();
        for (i, table) in tables.iter().enumerate() {
            table.expand(i as u8, limits, &mut samples)?;
        }
        let next_dts = tracks
            .iter()
            .enumerate()
            .map(|(i, _)| {
                samples
                    .iter()
                    .filter(|s| usize::from(s.track) == i)
                    .map(|s| s.dts.saturating_add(u64::from(s.duration)))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let duration_ms = if movie_timescale == 0 {
            0
        } else {
            (u128::from(movie_duration) * 1000 / u128::from(movie_timescale)) as u64
        };
        let moov_samples = samples.len();
        let mut movie = Movie {
            tracks,
            samples,
            duration_ms,
            fragmented,
            offset_ms: 0,
            next_dts,
            skipped,
            moov_samples,
            moov_end: 0,
            fragments: Vec::new(),
        };
        // No timestamp below zero once the edits are applied: the track
        // that starts earliest (video delayed by B-frames starts at minus
        // its delay) sets the offset.
        let lowest = movie
            .tracks
            .iter()
            .map(|t| -ticks_to_ms(t.shift, t.timescale))
            .min()
            .unwrap_or(0);
        movie.offset_ms = (-lowest).max(0);
        movie.sort();
        if movie.duration_ms == 0 {
            movie.duration_ms = movie.end_ms();
        }
        Ok(movie)
    }

    /// Sorts the samples by timestamp (stable: a track's samples keep
    /// their decode order).
    fn sort(&mut self) {
        let tracks = &self.tracks;
        let offset = self.offset_ms;
        self.samples
            .sort_by_key(|s| timestamp_ms(&tracks[usize::from(s.track)], offset, s.dts));
    }

    /// The timestamp of `s` in milliseconds, as RTMP sends it.
    pub fn timestamp_ms(&self, s: &Sample) -> u32 {
        let t = &self.tracks[usize::from(s.track)];
        timestamp_ms(t, self.offset_ms, s.dts).clamp(0, i64::from(u32::MAX)) as u32
    }

    /// The composition offset of `s` in milliseconds.
    pub fn cto_ms(&self, s: &Sample) -> i32 {
        let t = &self.tracks[usize::from(s.track)];
        ticks_to_ms(i64::from(s.cto), t.timescale).clamp(-(1 << 23), (1 << 23) - 1) as i32
    }

    /// The end of the last sample, in milliseconds.
    pub fn end_ms(&self) -> u64 {
        self.samples
            .iter()
            .map(|s| {
                let t = &self.tracks[usize::from(s.track)];
                timestamp_ms(
                    t,
                    self.offset_ms,
                    s.dts.saturating_add(u64::from(s.duration)),
                )
                .max(0) as u64
            })
            .max()
            .unwrap_or(0)
    }

    /// True when the movie has a video track.
    pub fn has_video(&self) -> bool {
        self.tracks.iter().any(|t| t.kind == TrackKind::Video)
    }

    /// The index of the sample to start from for `target_ms`: the last
    /// video sync sample presented at or before it (the first sample of
    /// all when there is none), or without video the last sample at or
    /// before it.
    pub fn seek_index(&self, target_ms: u64) -> usize {
        let video = self.has_video();
        let target = i64::try_from(target_ms).unwrap_or(i64::MAX);
        let mut best = 0;
        for (i, s) in self.samples.iter().enumerate() {
            let ts = i64::from(self.timestamp_ms(s));
            if ts > target {
                break;
            }
            let kind = self.tracks[usize::from(s.track)].kind;
            if !video {
                best = i;
            } else if kind == TrackKind::Video && s.sync {
                // A keyframe's presentation time (B-frames: after its
                // decode time).
                let pts = ts + i64::from(self.cto_ms(s));
                if pts <= target {
                    best = i;
                }
            }
        }
        best
    }

    /// Appends the samples of a movie fragment: `moof` is the box's body,
    /// `moof_offset` where the box (its header) starts in the file and
    /// `moof_size` its whole size. Returns how many samples it added.
    pub fn add_fragment(
        &mut self,
        moof: &[u8],
        moof_offset: u64,
        moof_size: u64,
        limits: &Limits,
    ) -> Result<usize, VodError> {
        let first_new = self.samples.len();
        // Where the previous traf's data ended (14496-12 8.8.7.1: the base
        // of a traf without base-data-offset and without
        // default-base-is-moof).
        let mut previous_end = moof_offset;
        for child in Children::new(moof, "moof") {
            let (kind, body) = child?;
            if &kind != b"traf" {
                continue;
            }
            previous_end = self.add_traf(body, moof_offset, previous_end, limits)?;
        }
        let added = self.samples.len() - first_new;
        self.fragments.push((moof_offset, moof_offset + moof_size));
        // Merge the new samples by time; the earlier ones are already in
        // order and come before them.
        let tracks = &self.tracks;
        let offset = self.offset_ms;
        self.samples[first_new..]
            .sort_by_key(|s| timestamp_ms(&tracks[usize::from(s.track)], offset, s.dts));
        Ok(added)
    }

    fn add_traf(
        &mut self,
        traf: &[u8],
        moof_offset: u64,
        previous_end: u64,
        limits: &Limits,
    ) -> Result<u64, VodError> {
        let tfhd = boxes::require(traf, b"tfhd", "traf")?;
        let mut c = Cursor::new(tfhd, "tfhd");
        let (_, flags) = c.version_flags()?;
        let track_id = c.u32()?;
        let Some(ti) = self.tracks.iter().position(|t| t.id == track_id) else {
            // A track that was skipped (or never described): its samples
            // are not played; the data offsets of later trafs do not
            // depend on it when they use base-is-moof, which writers do.
            return Ok(previous_end);
        };
        let trex = self.tracks[ti].trex;
        let base = if flags & 0x01 != 0 {
            c.u64()?
        } else if flags & 0x02_0000 != 0 {
            moof_offset
        } else {
            previous_end
        };
        if flags & 0x02 != 0 {
            c.u32()?; // sample_description_index
        }
        let default_duration = if flags & 0x08 != 0 {
            c.u32()?
        } else {
            trex.duration
        };
        let default_size = if flags & 0x10 != 0 {
            c.u32()?
        } else {
            trex.size
        };
        let default_flags = if flags & 0x20 != 0 {
            c.u32()?
        } else {
            trex.flags
        };
        let mut dts = match boxes::find(traf, b"tfdt", "traf")? {
            Some(b) => {
                let mut c = Cursor::new(b, "tfdt");
                let (version, _) = c.version_flags()?;
                if version == 1 {
                    c.u64()?
                } else {
                    u64::from(c.u32()?)
                }
            }
            None => self.next_dts[ti],
        };
        let audio = self.tracks[ti].kind == TrackKind::Audio;
        let mut data = base;
        for child in Children::new(traf, "traf") {
            let (kind, body) = child?;
            if &kind != b"trun" {
                continue;
            }
            let mut c = Cursor::new(body, "trun");
            let (version, tr_flags) = c.version_flags()?;
            let per_sample = 4 * [0x100, 0x200, 0x400, 0x800]
                .iter()
                .filter(|&&f| tr_flags & f != 0)
                .count();
            let count = c.u32()? as usize;
            if tr_flags & 0x01 != 0 {
                let off = c.u32()? as i32;
                data =
                    base.checked_add_signed(i64::from(off))
                        .ok_or_else(|| VodError::Malformed {
                            what: "trun",
                            detail: format!("data offset {off} before the file's start"),
                        })?;
            }
            let first_flags = if tr_flags & 0x04 != 0 {
                Some(c.u32()?)
            } else {
                None
            };
            if count.saturating_mul(per_sample) > c.remaining() {
                return Err(VodError::Malformed {
                    what: "trun",
                    detail: format!("claims {count} samples, {} bytes present", c.remaining()),
                });
            }
            if self.samples.len() + count > limits.max_samples {
                return Err(VodError::TooLarge {
                    what: "sample index",
                    size: (self.samples.len() + count) as u64,
                    limit: limits.max_samples as u64,
                });
            }
            for i in 0..count {
                let duration = if tr_flags & 0x100 != 0 {
                    c.u32()?
                } else {
                    default_duration
                };
                let size = if tr_flags & 0x200 != 0 {
                    c.u32()?
                } else {
                    default_size
                };
                let sflags = if tr_flags & 0x400 != 0 {
                    c.u32()?
                } else if i == 0 {
                    first_flags.unwrap_or(default_flags)
                } else {
                    default_flags
                };
                let cto = if tr_flags & 0x800 != 0 {
                    let v = c.u32()?;
                    if version == 0 {
                        i32::try_from(v).unwrap_or(i32::MAX)
                    } else {
                        v as i32
                    }
                } else {
                    0
                };
                let sync = audio || sflags & 0x0001_0000 == 0;
                self.samples.push(Sample {
                    offset: data,
                    dts,
                    size,
                    duration,
                    cto,
                    track: ti as u8,
                    sync,
                });
                data = data.saturating_add(u64::from(size));
                dts = dts.saturating_add(u64::from(duration));
            }
        }
        self.next_dts[ti] = dts;
        Ok(data)
    }

    /// A top-level box other than `moof` at `offset`, `size` bytes: when
    /// it follows the last fragment directly (its `mdat`), the fragment
    /// extends over it.
    pub fn extend_fragment(&mut self, offset: u64, size: u64) {
        if let Some(last) = self.fragments.last_mut() {
            if last.1 == offset {
                last.1 = offset.saturating_add(size);
            }
        }
    }

    /// The media timestamp of `s` in its track's timescale, edits
    /// applied, for fragments built from the index (HLS): composition
    /// offsets carry the video's edit (B-frame delay).
    pub fn track_of(&self, s: &Sample) -> &Track {
        &self.tracks[usize::from(s.track)]
    }

    /// The FLV tag payload header for sample `s` (the bytes that go
    /// before its data).
    pub fn tag_header(&self, s: &Sample) -> tags::TagHeader {
        let t = &self.tracks[usize::from(s.track)];
        tags::frame_header(t.tag, s.sync, self.cto_ms(s))
    }
}

/// Ticks to milliseconds, rounded to the nearest (as ffmpeg rounds when
/// it writes FLV).
fn ticks_to_ms(ticks: i64, timescale: u32) -> i64 {
    rounded_ms(i128::from(ticks), timescale)
}

fn rounded_ms(ticks: i128, timescale: u32) -> i64 {
    let scale = i128::from(timescale.max(1));
    (ticks * 2000 + scale).div_euclid(2 * scale) as i64
}

fn timestamp_ms(t: &Track, offset_ms: i64, dts: u64) -> i64 {
    let ticks = i128::from(dts) - i128::from(t.shift);
    rounded_ms(ticks, t.timescale).saturating_add(offset_ms)
}

/// A track's sample tables, borrowed from the `moov`.
struct Tables<'a> {
    timescale: u32,
    audio: bool,
    stts: &'a [u8],
    ctts: Option<&'a [u8]>,
    stsc: &'a [u8],
    stsz: &'a [u8],
    compact_sizes: bool,
    chunk_offsets: &'a [u8],
    wide_offsets: bool,
    stss: Option<&'a [u8]>,
}

/// A track and its tables, or why it is skipped (not an error: the file
/// may still play).
type TrakResult<'a> = Result<(Track, Tables<'a>), String>;

fn parse_trak(trak: &[u8], movie_timescale: u32) -> Result<TrakResult<'_>, VodError> {
    let tkhd = boxes::require(trak, b"tkhd", "trak")?;
    let mut c = Cursor::new(tkhd, "tkhd");
    let (version, _) = c.version_flags()?;
    c.skip(if version == 1 { 16 } else { 8 })?;
    let id = c.u32()?;
    let mdia = boxes::require(trak, b"mdia", "trak")?;
    let mdhd = boxes::require(mdia, b"mdhd", "mdia")?;
    let mut c = Cursor::new(mdhd, "mdhd");
    let (version, _) = c.version_flags()?;
    c.skip(if version == 1 { 16 } else { 8 })?;
    let timescale = c.u32()?;
    if timescale == 0 {
        return Err(VodError::Malformed {
            what: "mdhd",
            detail: format!("track {id} has timescale 0"),
        });
    }
    let hdlr = boxes::require(mdia, b"hdlr", "mdia")?;
    let handler = hdlr.get(8..12).unwrap_or_default();
    let kind = match handler {
        b"vide" => TrackKind::Video,
        b"soun" => TrackKind::Audio,
        _ => {
            return Ok(Err(format!(
                "track {id}: handler {:?} is neither audio nor video",
                String::from_utf8_lossy(handler)
            )))
        }
    };
    let minf = boxes::require(mdia, b"minf", "mdia")?;
    let stbl = boxes::require(minf, b"stbl", "minf")?;
    let stsd = boxes::require(stbl, b"stsd", "stbl")?;
    let mut c = Cursor::new(stsd, "stsd");
    c.version_flags()?;
    let entries = c.u32()?;
    if entries == 0 {
        return Ok(Err(format!("track {id}: no sample description")));
    }
    // The first sample entry, whole (with its header).
    let rest = c.rest();
    let Some(h) = boxes::BoxHeader::parse(rest)? else {
        return Err(VodError::Malformed {
            what: "stsd",
            detail: "sample entry truncated".into(),
        });
    };
    let entry_len = h.size.unwrap_or(rest.len() as u64);
    if entry_len > rest.len() as u64 {
        return Err(VodError::Malformed {
            what: "stsd",
            detail: format!(
                "sample entry {} claims {entry_len} bytes, {} present",
                fourcc_str(&h.fourcc),
                rest.len()
            ),
        });
    }
    let entry = &rest[..entry_len as usize];
    let body = &entry[h.header_len as usize..];
    let described = match kind {
        TrackKind::Video => tags::describe_video(h.fourcc, body),
        TrackKind::Audio => tags::describe_audio(h.fourcc, body),
    };
    let described = match described {
        Ok(d) => d,
        Err(why) => return Ok(Err(format!("track {id}: {why}"))),
    };
    let shift = match boxes::find(trak, b"edts", "trak")? {
        Some(edts) => edit_shift(edts, movie_timescale, timescale)?,
        None => 0,
    };
    let stts = boxes::require(stbl, b"stts", "stbl")?;
    let ctts = boxes::find(stbl, b"ctts", "stbl")?;
    let stsc = boxes::require(stbl, b"stsc", "stbl")?;
    let (stsz, compact_sizes) = match boxes::find(stbl, b"stsz", "stbl")? {
        Some(b) => (b, false),
        None => (boxes::require(stbl, b"stz2", "stbl")?, true),
    };
    let (chunk_offsets, wide_offsets) = match boxes::find(stbl, b"stco", "stbl")? {
        Some(b) => (b, false),
        None => (boxes::require(stbl, b"co64", "stbl")?, true),
    };
    let stss = boxes::find(stbl, b"stss", "stbl")?;
    let track = Track {
        id,
        kind,
        timescale,
        codec: described.codec,
        tag: described.tag,
        sample_entry: Bytes::copy_from_slice(entry),
        sequence_header: described.sequence_header,
        width: described.width,
        height: described.height,
        sample_rate: described.sample_rate,
        channels: described.channels,
        shift,
        trex: Trex::default(),
    };
    let tables = Tables {
        timescale,
        audio: kind == TrackKind::Audio,
        stts,
        ctts,
        stsc,
        stsz,
        compact_sizes,
        chunk_offsets,
        wide_offsets,
        stss,
    };
    Ok(Ok((track, tables)))
}

/// The presentation shift of a track's edit list (8.6.6): an initial
/// empty edit delays the track (a negative shift), the first media edit's
/// `media_time` skips into it. Later edits are not honoured (rare outside
/// editing tools; the samples then play in full).
fn edit_shift(edts: &[u8], movie_timescale: u32, timescale: u32) -> Result<i64, VodError> {
    let Some(elst) = boxes::find(edts, b"elst", "edts")? else {
        return Ok(0);
    };
    let mut c = Cursor::new(elst, "elst");
    let (version, _) = c.version_flags()?;
    let entry_len = if version == 1 { 20 } else { 12 };
    let n = c.count(entry_len)?;
    let mut delay: i64 = 0;
    for _ in 0..n {
        let (duration, media_time) = if version == 1 {
            (c.u64()?, c.u64()? as i64)
        } else {
            (u64::from(c.u32()?), i64::from(c.u32()? as i32))
        };
        c.u32()?; // media_rate
        if media_time == -1 {
            // An empty edit: the track starts this much later (movie
            // timescale, converted to the track's).
            let ticks =
                i128::from(duration) * i128::from(timescale) / i128::from(movie_timescale.max(1));
            delay = delay.saturating_add(ticks.clamp(0, i128::from(i64::MAX)) as i64);
            continue;
        }
        return Ok(media_time.saturating_sub(delay));
    }
    Ok(-delay)
}

impl Tables<'_> {
    /// Expands the tables into samples of track `track`, appended to `out`.
    fn expand(&self, track: u8, limits: &Limits, out: &mut Vec<Sample>) -> Result<(), VodError> {
        // Sample sizes.
        let mut sz = Cursor::new(self.stsz, "stsz");
        sz.version_flags()?;
        let (fixed, count, field_bits) = if self.compact_sizes {
            sz.skip(3)?;
            let bits = u32::from(sz.u8()?);
            if !matches!(bits, 4 | 8 | 16) {
                return Err(VodError::Malformed {
                    what: "stz2",
                    detail: format!("field size {bits}"),
                });
            }
            let n = sz.u32()? as usize;
            if n.saturating_mul(bits as usize).div_ceil(8) > sz.remaining() {
                return Err(VodError::Malformed {
                    what: "stz2",
                    detail: format!("claims {n} samples, {} bytes present", sz.remaining()),
                });
            }
            (0, n, bits)
        } else {
            let fixed = sz.u32()?;
            let n = if fixed == 0 {
                sz.count(4)?
            } else {
                sz.u32()? as usize
            };
            (fixed, n, 32)
        };
        if out.len() + count > limits.max_samples {
            return Err(VodError::TooLarge {
                what: "sample index",
                size: (out.len() + count) as u64,
                limit: limits.max_samples as u64,
            });
        }
        let sizes = sz.rest();
        let size_of = |i: usize| -> u32 {
            if fixed != 0 {
                return fixed;
            }
            match field_bits {
                4 => {
                    let b = sizes[i / 2];
                    u32::from(if i % 2 == 0 { b >> 4 } else { b & 0x0f })
                }
                8 => u32::from(sizes[i]),
                16 => u32::from(u16::from_be_bytes([sizes[2 * i], sizes[2 * i + 1]])),
                _ => u32::from_be_bytes([
                    sizes[4 * i],
                    sizes[4 * i + 1],
                    sizes[4 * i + 2],
                    sizes[4 * i + 3],
                ]),
            }
        };
        // Decode times.
        let mut stts = Cursor::new(self.stts, "stts");
        stts.version_flags()?;
        let stts_n = stts.count(8)?;
        // Composition offsets.
        let mut ctts = match self.ctts {
            Some(b) => {
                let mut c = Cursor::new(b, "ctts");
                let (v, _) = c.version_flags()?;
                let n = c.count(8)?;
                Some((c, v, n))
            }
            None => None,
        };
        // Sync samples (1-based sample numbers, increasing).
        let mut stss = match self.stss {
            Some(b) => {
                let mut c = Cursor::new(b, "stss");
                c.version_flags()?;
                let n = c.count(4)?;
                Some((c, n))
            }
            None => None,
        };
        let mut next_sync: Option<u64> = None;
        // Chunks.
        let mut co = Cursor::new(self.chunk_offsets, "stco");
        co.version_flags()?;
        let chunk_count = co.count(if self.wide_offsets { 8 } else { 4 })?;
        let mut stsc = Cursor::new(self.stsc, "stsc");
        stsc.version_flags()?;
        let stsc_n = stsc.count(12)?;
        let mut runs = Vec::with_capacity(stsc_n);
        for _ in 0..stsc_n {
            let first = stsc.u32()?;
            let per = stsc.u32()?;
            stsc.u32()?; // sample_description_index
            runs.push((first, per));
        }

        let mut stts_left = 0u32;
        let mut delta = 0u32;
        let mut stts_read = 0usize;
        let mut ctts_left = 0u32;
        let mut cto = 0i32;
        let mut dts = 0u64;
        let mut sample = 0usize;
        let mut run = 0usize;
        for chunk in 1..=chunk_count as u32 {
            while run + 1 < runs.len() && runs[run + 1].0 <= chunk {
                run += 1;
            }
            let per = match runs.get(run) {
                Some(&(first, per)) if first <= chunk => per,
                _ => {
                    return Err(VodError::Malformed {
                        what: "stsc",
                        detail: format!("chunk {chunk} is in no run"),
                    })
                }
            };
            let mut offset = if self.wide_offsets {
                co.u64()?
            } else {
                u64::from(co.u32()?)
            };
            for _ in 0..per {
                if sample >= count {
                    break;
                }
                while stts_left == 0 {
                    if stts_read >= stts_n {
                        return Err(VodError::Malformed {
                            what: "stts",
                            detail: format!("describes fewer than the {count} samples of stsz"),
                        });
                    }
                    stts_left = stts.u32()?;
                    delta = stts.u32()?;
                    stts_read += 1;
                }
                stts_left -= 1;
                if let Some((c, version, n)) = &mut ctts {
                    while ctts_left == 0 && *n > 0 {
                        ctts_left = c.u32()?;
                        let v = c.u32()?;
                        cto = if *version == 0 {
                            i32::try_from(v).unwrap_or(i32::MAX)
                        } else {
                            v as i32
                        };
                        *n -= 1;
                    }
                    ctts_left = ctts_left.saturating_sub(1);
                }
                let number = sample as u64 + 1;
                let sync = match &mut stss {
                    None => true,
                    Some((c, n)) => {
                        while !matches!(next_sync, Some(s) if s >= number) && *n > 0 {
                            next_sync = Some(u64::from(c.u32()?));
                            *n -= 1;
                        }
                        next_sync == Some(number)
                    }
                };
                let size = size_of(sample);
                out.push(Sample {
                    offset,
                    dts,
                    size,
                    duration: delta,
                    cto,
                    track,
                    sync: sync || self.audio,
                });
                offset = offset.saturating_add(u64::from(size));
                dts = dts.saturating_add(u64::from(delta));
                sample += 1;
            }
        }
        if sample < count {
            return Err(VodError::Malformed {
                what: "stsc",
                detail: format!("chunks hold {sample} of the {count} samples of stsz"),
            });
        }
        let _ = self.timescale;
        Ok(())
    }
}

/// Where the top-level boxes of an MP4 file are, as far as they have been
/// walked: what the reader needs to find `moov` and the fragments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopBox {
    pub fourcc: [u8; 4],
    pub offset: u64,
    pub header_len: u64,
    /// The whole box (a box running to the end of the file has the rest).
    pub size: u64,
}

/// Reads the top-level box header at `offset` from `data` (bytes of the
/// file from `offset`), with `file_len` to size a box that runs to the end.
/// `Ok(None)`: more bytes are needed.
pub fn top_box(data: &[u8], offset: u64, file_len: u64) -> Result<Option<TopBox>, VodError> {
    let Some(h) = boxes::BoxHeader::parse(data)? else {
        return Ok(None);
    };
    let size = h.size.unwrap_or(file_len.saturating_sub(offset));
    Ok(Some(TopBox {
        fourcc: h.fourcc,
        offset,
        header_len: h.header_len,
        size,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(kind: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind);
        v.extend_from_slice(body);
        v
    }

    fn full(kind: &[u8; 4], version: u8, body: &[u8]) -> Vec<u8> {
        let mut b = vec![version, 0, 0, 0];
        b.extend_from_slice(body);
        bx(kind, &b)
    }

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    #[test]
    fn edit_list_shift_applies_media_time_and_empty_edits() {
        // One edit: media_time 2002 (B-frame delay at 1/30000 s... any units).
        let elst = full(b"elst", 0, &words(&[1, 1000, 2002, 0x0001_0000]));
        assert_eq!(edit_shift(&elst, 1000, 30000).unwrap(), 2002);
        // An empty edit of 500 ms (movie timescale 1000), then media from 0.
        let elst = full(
            b"elst",
            0,
            &words(&[2, 500, u32::MAX, 0x0001_0000, 1000, 0, 0x0001_0000]),
        );
        assert_eq!(edit_shift(&elst, 1000, 48000).unwrap(), -24000);
    }

    #[test]
    fn sample_tables_expand_with_chunks_runs_and_sync_samples() {
        let stts = full(b"stts", 0, &words(&[1, 3, 512]));
        let ctts = full(b"ctts", 0, &words(&[2, 1, 1024, 2, 0]));
        // Chunk 1 holds 2 samples, chunk 2 holds 1.
        let stsc = full(b"stsc", 0, &words(&[2, 1, 2, 1, 2, 1, 1]));
        let stsz = full(b"stsz", 0, &words(&[0, 3, 100, 50, 25]));
        let stco = full(b"stco", 0, &words(&[2, 1000, 5000]));
        let stss = full(b"stss", 0, &words(&[1, 1]));
        let body = |b: &Vec<u8>| b[8..].to_vec();
        let (stts, ctts, stsc, stsz, stco, stss) = (
            body(&stts),
            body(&ctts),
            body(&stsc),
            body(&stsz),
            body(&stco),
            body(&stss),
        );
        let t = Tables {
            timescale: 12800,
            audio: false,
            stts: &stts,
            ctts: Some(&ctts),
            stsc: &stsc,
            stsz: &stsz,
            compact_sizes: false,
            chunk_offsets: &stco,
            wide_offsets: false,
            stss: Some(&stss),
        };
        let mut out = Vec::new();
        t.expand(0, &Limits::default(), &mut out).unwrap();
        let got: Vec<(u64, u64, u32, i32, bool)> = out
            .iter()
            .map(|s| (s.offset, s.dts, s.size, s.cto, s.sync))
            .collect();
        assert_eq!(
            got,
            [
                (1000, 0, 100, 1024, true),
                (1100, 512, 50, 0, false),
                (5000, 1024, 25, 0, false),
            ]
        );
    }

    #[test]
    fn stts_shorter_than_stsz_is_an_error_not_a_panic() {
        let stts = words(&[0, 1, 1, 512]);
        let stsc = words(&[0, 1, 1, 3, 1]);
        let stsz = words(&[0, 0, 3, 1, 1, 1]);
        let stco = words(&[0, 1, 0]);
        let t = Tables {
            timescale: 1000,
            audio: true,
            stts: &stts,
            ctts: None,
            stsc: &stsc,
            stsz: &stsz,
            compact_sizes: false,
            chunk_offsets: &stco,
            wide_offsets: false,
            stss: None,
        };
        let e = t
            .expand(0, &Limits::default(), &mut Vec::new())
            .unwrap_err();
        assert!(e.to_string().contains("stts"), "{e}");
    }

    #[test]
    fn a_huge_sample_count_is_refused_before_allocating() {
        let stts = words(&[0, 1, u32::MAX, 1]);
        let stsc = words(&[0, 1, 1, u32::MAX, 1]);
        // A fixed sample size with a count of 4 billion: no table to check
        // the count against, so the index limit refuses it.
        let stsz = words(&[0, 10, u32::MAX]);
        let stco = words(&[0, 1, 0]);
        let t = Tables {
            timescale: 1000,
            audio: true,
            stts: &stts,
            ctts: None,
            stsc: &stsc,
            stsz: &stsz,
            compact_sizes: false,
            chunk_offsets: &stco,
            wide_offsets: false,
            stss: None,
        };
        let e = t
            .expand(0, &Limits::default(), &mut Vec::new())
            .unwrap_err();
        assert!(matches!(e, VodError::TooLarge { .. }), "{e}");
    }
}
