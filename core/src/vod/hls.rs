//! HLS video on demand of an MP4 file (RFC 8216bis, `EXT-X-PLAYLIST-TYPE:
//! VOD`): a media playlist of fMP4 segments, each starting on a video
//! keyframe and lasting about the target duration.
//!
//! * A fragmented file whose samples are all in movie fragments is served
//!   as byte ranges of the file itself: `EXT-X-MAP` is the file's start up
//!   to the end of its `moov`, each segment one or more `moof` + `mdat`
//!   ([`Layout::ByteRanges`]). Nothing is remuxed.
//! * Any other MP4 (moov at either end, or fragments with samples in the
//!   `moov` too) gets an init segment built from its tracks' own sample
//!   entries (`cmaf::mp4::init_segment`), and each segment is a `moof` +
//!   `mdat` header per track built from the sample index, followed by the
//!   samples' bytes as slices of what was read from the file: no media is
//!   copied ([`Layout::Built`], [`segment_reads`], [`segment`]).
//!
//! The samples' decode times are their own (`tfdt` in the track's
//! timescale); a video track's edit (its B-frame delay) becomes negative
//! composition offsets, so the first frame is presented at zero.

use super::mp4::{Movie, TrackKind};
use super::{ReadRequest, VodError};
use crate::cmaf::mp4::{
    fragment_header, init_segment, Handler, RunSample, Trak, NON_SYNC_SAMPLE, SYNC_SAMPLE,
};
use crate::wire::WireForm;
use bytes::Bytes;
use std::fmt::Write as _;
use std::ops::Range;

/// Segment duration aimed at (a segment is cut at the first video
/// keyframe at or after it): six seconds, what RFC 8216bis's authors and
/// Apple recommend for VOD.
pub const TARGET_SEGMENT_MS: u64 = 6000;

/// Largest segment built (bytes of media): a segment is cut at keyframes
/// only, so a file with a keyframe every minute at a high bitrate is
/// refused rather than answered with hundreds of MiB at once.
pub const MAX_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Samples closer than this in the file are read together.
const READ_GAP: u64 = 64 * 1024;

/// How a file's segments are served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Byte ranges of the file: the init part is `0..init_len`.
    ByteRanges { init_len: u64 },
    /// Built from the sample index.
    Built,
}

/// One segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentPlan {
    /// Presentation start, milliseconds.
    pub start_ms: u64,
    pub duration_ms: u64,
    /// [`Layout::Built`]: the samples, as a range of [`Movie::samples`].
    pub samples: Range<usize>,
    /// [`Layout::ByteRanges`]: the file's bytes.
    pub bytes: Range<u64>,
}

/// A file's playlist: its layout and segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub layout: Layout,
    pub segments: Vec<SegmentPlan>,
}

impl Plan {
    /// Plans the segments of `movie` (a complete index: every fragment
    /// read), cutting at video keyframes once `target_ms` has passed.
    pub fn new(movie: &Movie, target_ms: u64) -> Result<Plan, VodError> {
        if movie.samples.is_empty() {
            return Err(VodError::Malformed {
                what: "MP4 file",
                detail: "no samples".into(),
            });
        }
        let by_ranges = movie.fragmented && movie.moov_samples == 0 && !movie.fragments.is_empty();
        if by_ranges {
            return Ok(Plan {
                layout: Layout::ByteRanges {
                    init_len: movie.moov_end,
                },
                segments: fragment_segments(movie, target_ms),
            });
        }
        let video = movie.has_video();
        let mut cuts = vec![0usize];
        let mut start = u64::from(movie.timestamp_ms(&movie.samples[0]));
        for (i, s) in movie.samples.iter().enumerate().skip(1) {
            let key = !video || (movie.track_of(s).kind == TrackKind::Video && s.sync);
            let ts = u64::from(movie.timestamp_ms(s));
            if key && ts >= start + target_ms {
                cuts.push(i);
                start = ts;
            }
        }
        cuts.push(movie.samples.len());
        let end_ms = movie.end_ms();
        let mut segments = Vec::with_capacity(cuts.len() - 1);
        for w in cuts.windows(2) {
            let a = u64::from(movie.timestamp_ms(&movie.samples[w[0]]));
            let b = movie
                .samples
                .get(w[1])
                .map_or(end_ms, |s| u64::from(movie.timestamp_ms(s)));
            let bytes: u64 = movie.samples[w[0]..w[1]]
                .iter()
                .map(|s| u64::from(s.size))
                .sum();
            if bytes > MAX_SEGMENT_BYTES {
                return Err(VodError::TooLarge {
                    what: "HLS segment (keyframes too far apart)",
                    size: bytes,
                    limit: MAX_SEGMENT_BYTES,
                });
            }
            segments.push(SegmentPlan {
                start_ms: a,
                duration_ms: b.saturating_sub(a).max(1),
                samples: w[0]..w[1],
                bytes: 0..0,
            });
        }
        Ok(Plan {
            layout: Layout::Built,
            segments,
        })
    }

    /// The media playlist. `file_uri` is the MP4 file relative to the
    /// playlist (byte-range segments point into it), `query` is carried
    /// into every URI (keys, signatures).
    pub fn playlist(&self, file_uri: &str, query: &str) -> String {
        let q = if query.is_empty() {
            String::new()
        } else {
            format!("?{query}")
        };
        let target = self
            .segments
            .iter()
            .map(|s| s.duration_ms.div_ceil(1000))
            .max()
            .unwrap_or(1)
            .max(1);
        let mut p = String::with_capacity(128 + 64 * self.segments.len());
        p.push_str("#EXTM3U\n#EXT-X-VERSION:7\n");
        let _ = writeln!(p, "#EXT-X-TARGETDURATION:{target}");
        p.push_str(
            "#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n#EXT-X-INDEPENDENT-SEGMENTS\n",
        );
        match self.layout {
            Layout::ByteRanges { init_len } => {
                let _ = writeln!(
                    p,
                    "#EXT-X-MAP:URI=\"{file_uri}{q}\",BYTERANGE=\"{init_len}@0\""
                );
            }
            Layout::Built => {
                let _ = writeln!(p, "#EXT-X-MAP:URI=\"init.mp4{q}\"");
            }
        }
        for (i, s) in self.segments.iter().enumerate() {
            let _ = writeln!(
                p,
                "#EXTINF:{}.{:03},",
                s.duration_ms / 1000,
                s.duration_ms % 1000
            );
            match self.layout {
                Layout::ByteRanges { .. } => {
                    let _ = writeln!(
                        p,
                        "#EXT-X-BYTERANGE:{}@{}\n{file_uri}{q}",
                        s.bytes.end - s.bytes.start,
                        s.bytes.start
                    );
                }
                Layout::Built => {
                    let _ = writeln!(p, "seg-{i}.m4s{q}");
                }
            }
        }
        p.push_str("#EXT-X-ENDLIST\n");
        p
    }
}

/// Segments of whole fragments: a segment starts with a fragment whose
/// first video sample is a keyframe, once the target has passed.
fn fragment_segments(movie: &Movie, target_ms: u64) -> Vec<SegmentPlan> {
    // Each fragment's time span and whether it starts on a keyframe.
    let n = movie.fragments.len();
    let mut first_ms = vec![u64::MAX; n];
    let mut end_ms = vec![0u64; n];
    let mut starts_key = vec![None::<bool>; n];
    let video = movie.has_video();
    for s in &movie.samples {
        let i = match movie.fragments.binary_search_by(|&(a, _)| a.cmp(&s.offset)) {
            Ok(i) => i,
            Err(0) => continue,
            Err(i) => i - 1,
        };
        let t = movie.track_of(s);
        let ts = u64::from(movie.timestamp_ms(s));
        let dur = u64::from(s.duration) * 1000 / u64::from(t.timescale.max(1));
        first_ms[i] = first_ms[i].min(ts);
        end_ms[i] = end_ms[i].max(ts + dur);
        if t.kind == TrackKind::Video && starts_key[i].is_none() {
            starts_key[i] = Some(s.sync);
        }
    }
    let mut segments: Vec<SegmentPlan> = Vec::new();
    for i in 0..n {
        if first_ms[i] == u64::MAX {
            continue; // a fragment of a skipped track only
        }
        let (a, b) = movie.fragments[i];
        let key = !video || starts_key[i].unwrap_or(false);
        match segments.last_mut() {
            Some(last) if !(key && first_ms[i] >= last.start_ms + target_ms) => {
                last.bytes.end = b;
                last.duration_ms = end_ms[i].saturating_sub(last.start_ms).max(1);
            }
            _ => segments.push(SegmentPlan {
                start_ms: first_ms[i],
                duration_ms: end_ms[i].saturating_sub(first_ms[i]).max(1),
                samples: 0..0,
                bytes: a..b,
            }),
        }
    }
    // Each segment lasts until the next one starts (gaps between
    // fragments belong to the earlier one).
    for i in 1..segments.len() {
        let next = segments[i].start_ms;
        let s = &mut segments[i - 1];
        s.duration_ms = next.saturating_sub(s.start_ms).max(1);
    }
    segments
}

/// The init segment of a [`Layout::Built`] file: `ftyp` + `moov` with
/// every track's own sample entry and timescale.
pub fn init(movie: &Movie) -> Bytes {
    let traks: Vec<Trak<'_>> = movie
        .tracks
        .iter()
        .map(|t| Trak {
            track_id: t.id,
            handler: match t.kind {
                TrackKind::Video => Handler::Video,
                TrackKind::Audio => Handler::Audio,
            },
            timescale: t.timescale,
            width: t.width,
            height: t.height,
            alternate_group: 0,
            sample_entry: &t.sample_entry,
        })
        .collect();
    Bytes::from(init_segment(&traks))
}

/// The file ranges segment `i` needs: its samples' bytes, neighbours
/// read together.
pub fn segment_reads(movie: &Movie, plan: &Plan, i: usize) -> Vec<ReadRequest> {
    let Some(seg) = plan.segments.get(i) else {
        return Vec::new();
    };
    let mut ranges: Vec<(u64, u64)> = movie.samples[seg.samples.clone()]
        .iter()
        .map(|s| (s.offset, s.offset.saturating_add(u64::from(s.size))))
        .collect();
    ranges.sort_unstable();
    let mut out: Vec<ReadRequest> = Vec::new();
    let mut run: Option<(u64, u64)> = None;
    for (a, b) in ranges {
        run = match run {
            Some((ra, rb)) if a <= rb.saturating_add(READ_GAP) => Some((ra, rb.max(b))),
            Some((ra, rb)) => {
                out.push(ReadRequest {
                    offset: ra,
                    len: (rb - ra) as usize,
                });
                Some((a, b))
            }
            None => Some((a, b)),
        };
    }
    if let Some((ra, rb)) = run {
        out.push(ReadRequest {
            offset: ra,
            len: (rb - ra) as usize,
        });
    }
    out
}

/// Segment `i` built from the bytes of [`segment_reads`] (`(offset,
/// bytes)` each): per track (video first), a `moof` + `mdat` header and
/// the samples as slices of those bytes.
pub fn segment(
    movie: &Movie,
    plan: &Plan,
    i: usize,
    data: &[(u64, Bytes)],
) -> Result<WireForm, VodError> {
    let seg = plan.segments.get(i).ok_or(VodError::Malformed {
        what: "HLS segment",
        detail: format!("no segment {i}"),
    })?;
    let samples = &movie.samples[seg.samples.clone()];
    let mut pieces = Vec::new();
    let mut order: Vec<usize> = (0..movie.tracks.len()).collect();
    order.sort_by_key(|&t| movie.tracks[t].kind != TrackKind::Video);
    let per_segment = movie.tracks.len();
    for (k, t) in order.into_iter().enumerate() {
        let track = &movie.tracks[t];
        let video = track.kind == TrackKind::Video;
        let mine: Vec<_> = samples
            .iter()
            .filter(|s| usize::from(s.track) == t)
            .collect();
        let Some(first) = mine.first() else {
            continue;
        };
        let shift = if video { track.shift.max(0) } else { 0 };
        let mut run = Vec::with_capacity(mine.len());
        let mut payload = 0u64;
        let mut slices = Vec::with_capacity(mine.len());
        for s in &mine {
            let bytes = slice(data, s.offset, u64::from(s.size)).ok_or_else(|| {
                VodError::Truncated(format!(
                    "sample at offset {} ({} bytes) was not read",
                    s.offset, s.size
                ))
            })?;
            slices.push(bytes);
            payload += u64::from(s.size);
            let cto = i64::from(s.cto) - shift;
            run.push(RunSample {
                duration: s.duration,
                size: s.size,
                flags: if s.sync || !video {
                    SYNC_SAMPLE
                } else {
                    NON_SYNC_SAMPLE
                },
                cto: cto.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
            });
        }
        // mfhd sequence numbers increase from moof to moof.
        let sequence = u32::try_from(i * per_segment + k + 1).unwrap_or(u32::MAX);
        let header = fragment_header(sequence, track.id, first.dts, video, &run, payload);
        pieces.push(Bytes::from(header));
        pieces.extend(slices);
    }
    Ok(WireForm::new(pieces))
}

/// `[offset, offset + len)` out of the reads, if one holds it.
fn slice(data: &[(u64, Bytes)], offset: u64, len: u64) -> Option<Bytes> {
    data.iter().find_map(|(start, b)| {
        let end = start + b.len() as u64;
        (offset >= *start && offset.saturating_add(len) <= end).then(|| {
            let from = (offset - start) as usize;
            b.slice(from..from + len as usize)
        })
    })
}
