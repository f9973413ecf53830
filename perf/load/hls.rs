//! LL-HLS viewers for `sluice-load --kind ll-hls`: N viewers that each do
//! what hls.js does in low-latency mode, on keep-alive HTTP/1.1
//! connections driven by the generator's one mio loop.
//!
//! ```text
//!  rendition 0's connection: GET index.m3u8 ─► renditions (v0.m3u8, a0.m3u8, ...)
//!  every rendition, on a connection of its own (opened then):
//!    GET v0.m3u8 ─► GET v0/init-N.mp4 ─► start at the part the preload hint names
//!    loop: GET v0.m3u8?_HLS_msn=M&_HLS_part=P&_HLS_skip=YES   (blocks until part P of M exists)
//!          GET v0/pN.m4s                                      (the part it announced: whole, at once)
//! ```
//!
//! One connection per rendition, as a player has one loader per rendition;
//! the playlist and the part alternate on it. A viewer joins at the live
//! edge (the hinted part), where hls.js ends up once its PART-HOLD-BACK is
//! spent; parts already listed after the one just fetched are fetched
//! without a reload, as hls.js does when it is behind.
//!
//! Every part is checked: its `moof`/`mdat` shape (one track, sample sizes
//! that add up to the `mdat`, data offset just past the `mdat` header), each
//! sample's stamp and fill (the publisher's frame payload, which the
//! packager slices without copying: the stamp survives), the frame sequence
//! across parts (nothing missing, nothing twice), part sequence numbers
//! (every part of the sequence fetched once) and INDEPENDENT=YES on exactly
//! the video parts that start with an IDR picture.
//!
//! Latency per part, against the publisher's wall clock stamped in each
//! sample (same machine, same clock):
//! * `ready`: the blocking playlist answer that lists the part arrived,
//!   minus the stamp of the part's newest sample: when the server had the
//!   part (a part is cut one frame after its last sample, when the next
//!   frame shows where it ends, so this includes one frame interval);
//! * `received`: the part's last byte arrived, minus its newest sample;
//! * `oldest`: the part's last byte arrived, minus its oldest sample: the
//!   least delay a player that plays each part as soon as it has it sees.

use crate::stats::{wall_ns, Histogram};
use crate::stream::{fill_byte, Track, MAGIC, STAMP_LEN};
use bytes::{Buf, Bytes, BytesMut};
use getopts::{Matches, Options};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use serde_json::{json, Value};
use std::io::{self, ErrorKind, Write};
use std::net::SocketAddr;

/// Longest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body accepted (a part of a 4K stream is a few MiB).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Bytes per `recv`.
const READ_CHUNK: usize = 64 * 1024;
/// Error messages kept.
const MAX_ERRORS: usize = 20;
/// How often `sluice_hls_waiting` is read from `/metrics` in the window.
const METRICS_EVERY_NS: u64 = 500_000_000;
/// MP4 track ids the packager gives video track 0 and audio track 0.
const VIDEO_TRACK_ID: u32 = 1;
const AUDIO_TRACK_ID: u32 = 257;

/// The LL-HLS options (added to sluice-load's).
pub fn add_options(o: &mut Options) {
    o.optflag(
        "",
        "hls-no-skip",
        "ll-hls: full playlists on every reload (hls.js asks for delta updates, _HLS_skip=YES, when the server offers them)",
    );
    o.optflag(
        "",
        "hls-metrics",
        "ll-hls: read sluice_hls_waiting from the server's /metrics every 0.5 s in the window (Sluice only)",
    );
}

#[derive(Debug, Clone)]
pub struct HlsOpts {
    pub skip: bool,
    pub metrics: bool,
}

impl HlsOpts {
    pub fn from_matches(m: &Matches) -> Self {
        Self {
            skip: !m.opt_present("hls-no-skip"),
            metrics: m.opt_present("hls-metrics"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Playlists
// ---------------------------------------------------------------------------------------

/// One `EXT-X-PART` of a media playlist.
#[derive(Debug, Clone, PartialEq)]
pub struct PartRef {
    /// Part sequence number (from the URI, `.../pN.m4s`).
    pub seq: u64,
    pub uri: String,
    pub independent: bool,
}

/// What a viewer needs from a media playlist.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MediaPlaylist {
    /// The listed parts, in order (those of the last target durations).
    pub parts: Vec<PartRef>,
    /// `EXT-X-PRELOAD-HINT` URI and its part sequence number.
    pub hint: Option<(u64, String)>,
    /// `_HLS_msn` / `_HLS_part` of the hinted part: the segment in progress
    /// and how many of its parts are listed.
    pub hint_at: (u64, u64),
    /// The last `EXT-X-MAP` URI.
    pub map: Option<String>,
    pub ended: bool,
    /// `CAN-SKIP-UNTIL` was offered.
    pub can_skip: bool,
}

/// The part sequence number of a part URI (`v0/p812.m4s`, maybe with a query).
fn part_seq(uri: &str) -> Option<u64> {
    let path = uri.split('?').next()?;
    let name = path.rsplit('/').next()?;
    name.strip_prefix('p')?.strip_suffix(".m4s")?.parse().ok()
}

/// The value of attribute `name` in an attribute list (quotes removed).
fn attr<'a>(list: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = list;
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], q[end + 1..].trim_start_matches(','))
        } else {
            match after.find(',') {
                Some(c) => (&after[..c], &after[c + 1..]),
                None => (after, ""),
            }
        };
        if key == name {
            return Some(value);
        }
        rest = next;
    }
    None
}

/// Reads a media playlist (full or a delta update).
pub fn parse_media(text: &str) -> Result<MediaPlaylist, String> {
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some("#EXTM3U") {
        return Err("playlist does not start with #EXTM3U".into());
    }
    let mut p = MediaPlaylist::default();
    let mut msn: Option<u64> = None;
    let mut parts_in_open = 0u64;
    for line in lines {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("#EXT-X-MEDIA-SEQUENCE:") {
            msn = Some(v.parse().map_err(|_| format!("bad {line:?}"))?);
        } else if let Some(v) = line.strip_prefix("#EXT-X-SKIP:") {
            let n: u64 = attr(v, "SKIPPED-SEGMENTS")
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad {line:?}"))?;
            msn = Some(msn.ok_or("EXT-X-SKIP before EXT-X-MEDIA-SEQUENCE")? + n);
        } else if let Some(v) = line.strip_prefix("#EXT-X-SERVER-CONTROL:") {
            p.can_skip = attr(v, "CAN-SKIP-UNTIL").is_some();
        } else if let Some(v) = line.strip_prefix("#EXT-X-MAP:") {
            p.map = Some(attr(v, "URI").ok_or("EXT-X-MAP without URI")?.to_owned());
        } else if let Some(v) = line.strip_prefix("#EXT-X-PART:") {
            let uri = attr(v, "URI").ok_or("EXT-X-PART without URI")?;
            let seq = part_seq(uri).ok_or_else(|| format!("part URI {uri:?} is not pN.m4s"))?;
            if attr(v, "GAP") == Some("YES") {
                return Err(format!("part {uri} is a gap"));
            }
            p.parts.push(PartRef {
                seq,
                uri: uri.to_owned(),
                independent: attr(v, "INDEPENDENT") == Some("YES"),
            });
            parts_in_open += 1;
        } else if let Some(v) = line.strip_prefix("#EXT-X-PRELOAD-HINT:") {
            if attr(v, "TYPE") == Some("PART") {
                let uri = attr(v, "URI").ok_or("EXT-X-PRELOAD-HINT without URI")?;
                let seq = part_seq(uri).ok_or_else(|| format!("hint URI {uri:?} is not pN.m4s"))?;
                p.hint = Some((seq, uri.to_owned()));
            }
        } else if line == "#EXT-X-ENDLIST" {
            p.ended = true;
        } else if !line.is_empty() && !line.starts_with('#') {
            // A segment URI: the segment is complete.
            msn = Some(msn.ok_or("segment before EXT-X-MEDIA-SEQUENCE")? + 1);
            parts_in_open = 0;
        }
    }
    p.hint_at = (msn.ok_or("no EXT-X-MEDIA-SEQUENCE")?, parts_in_open);
    Ok(p)
}

/// The media playlists a multivariant playlist names: every `EXT-X-MEDIA`
/// URI (the audio renditions) and the first variant.
pub fn parse_multivariant(text: &str) -> Result<Vec<String>, String> {
    let mut lines = text.lines().map(str::trim);
    if lines.next() != Some("#EXTM3U") {
        return Err("multivariant playlist does not start with #EXTM3U".into());
    }
    let mut variant = None;
    let mut media = Vec::new();
    let mut after_inf = false;
    for line in lines {
        if let Some(v) = line.strip_prefix("#EXT-X-MEDIA:") {
            if let Some(uri) = attr(v, "URI") {
                media.push(uri.to_owned());
            }
        } else if line.starts_with("#EXT-X-STREAM-INF:") {
            after_inf = true;
        } else if after_inf && !line.is_empty() && !line.starts_with('#') {
            after_inf = false;
            if variant.is_none() {
                variant = Some(line.to_owned());
            }
        }
    }
    let mut all: Vec<String> = variant.into_iter().collect();
    for m in media {
        if !all.contains(&m) {
            all.push(m);
        }
    }
    if all.is_empty() {
        return Err("multivariant playlist names no media playlist".into());
    }
    Ok(all)
}

// ---------------------------------------------------------------------------------------
// Fragments
// ---------------------------------------------------------------------------------------

/// What one checked fragment (a part) held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    pub track: Track,
    /// Stamped sequence numbers of its samples, in order.
    pub first_seq: u32,
    pub last_seq: u32,
    pub samples: u32,
    /// Publisher wall clock of its oldest and newest sample, ns.
    pub oldest_ns: u64,
    pub newest_ns: u64,
    /// The first sample is an IDR picture (video).
    pub starts_with_idr: bool,
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// A box: its type and its bytes, header included.
type Mp4Box<'a> = ([u8; 4], &'a [u8]);

/// Splits `data` into boxes.
fn boxes(mut data: &[u8]) -> Result<Vec<Mp4Box<'_>>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let size = be32(data, 0).ok_or("truncated box header")? as u64;
        let kind: [u8; 4] = data
            .get(4..8)
            .ok_or("truncated box header")?
            .try_into()
            .expect("4 bytes");
        let size = match size {
            0 => data.len() as u64,
            1 => {
                let b = data.get(8..16).ok_or("truncated largesize")?;
                u64::from_be_bytes(b.try_into().expect("8 bytes"))
            }
            s => s,
        };
        if size < 8 || size > data.len() as u64 {
            return Err(format!(
                "box {} of {size} bytes in {} left",
                String::from_utf8_lossy(&kind),
                data.len()
            ));
        }
        let (b, rest) = data.split_at(size as usize);
        out.push((kind, b));
        data = rest;
    }
    Ok(out)
}

/// The body of a box (after its 8-byte header; largesize boxes are only
/// ever `mdat`, handled by the caller).
fn body(b: &[u8]) -> &[u8] {
    &b[8..]
}

/// Checks one sample: the stamp and fill the publisher wrote. Video
/// samples are the FLV payload less its 5-byte AVC header (NALU length,
/// NAL header, stamp, fill); audio samples less the 2-byte AAC header.
fn check_sample(track: Track, s: &[u8]) -> Result<(u32, u64), String> {
    let (at, flv_header) = match track {
        Track::Video => (5, 5),
        Track::Audio => (0, 2),
    };
    let st = s
        .get(at..at + STAMP_LEN)
        .ok_or_else(|| format!("{} byte sample", s.len()))?;
    if be32(st, 0) != Some(MAGIC) {
        return Err("sample without a stamp".into());
    }
    let seq = be32(st, 4).expect("in the stamp");
    let sent_ns = u64::from_be_bytes(st[8..16].try_into().expect("8 bytes"));
    let stamped = be32(st, 16).expect("in the stamp") as usize;
    if stamped != s.len() + flv_header {
        return Err(format!(
            "sample {seq}: {} bytes, stamped {stamped} with its FLV header",
            s.len()
        ));
    }
    let fill = fill_byte(track, seq);
    // No early exit: wide vector compares over the whole payload.
    if s[at + STAMP_LEN..]
        .iter()
        .fold(0u8, |acc, &b| acc | (b ^ fill))
        != 0
    {
        return Err(format!("sample {seq}: fill bytes changed"));
    }
    Ok((seq, sent_ns))
}

/// Checks a part: `moof(mfhd, traf(tfhd, tfdt, trun))` then `mdat`, one
/// track, the `trun`'s sizes exactly filling the `mdat`, the data offset
/// pointing just past the `mdat` header, every sample stamped and intact,
/// sequence numbers consecutive within the part.
pub fn check_fragment(data: &[u8]) -> Result<Fragment, String> {
    let top = boxes(data)?;
    let [(moof_kind, moof), (mdat_kind, mdat)] = top.as_slice() else {
        return Err(format!("{} top-level boxes, not moof + mdat", top.len()));
    };
    if moof_kind != b"moof" || mdat_kind != b"mdat" {
        return Err("not moof then mdat".into());
    }
    let mdat_header = if be32(mdat, 0) == Some(1) { 16 } else { 8 };
    let payload = &mdat[mdat_header..];
    let inner = boxes(body(moof))?;
    let trafs: Vec<&[u8]> = inner
        .iter()
        .filter(|(k, _)| k == b"traf")
        .map(|(_, b)| *b)
        .collect();
    let [traf] = trafs.as_slice() else {
        return Err(format!("{} traf boxes, not one", trafs.len()));
    };
    let (mut track, mut sizes, mut data_offset) = (None, Vec::new(), None);
    for (k, b) in boxes(body(traf))? {
        let b = body(b);
        match &k {
            b"tfhd" => {
                track = match be32(b, 4).ok_or("short tfhd")? {
                    VIDEO_TRACK_ID => Some(Track::Video),
                    AUDIO_TRACK_ID => Some(Track::Audio),
                    id => return Err(format!("track id {id}")),
                }
            }
            b"trun" => {
                let flags = be32(b, 0).ok_or("short trun")? & 0x00FF_FFFF;
                let count = be32(b, 4).ok_or("short trun")? as usize;
                let mut at = 8;
                if flags & 0x1 != 0 {
                    data_offset = Some(be32(b, at).ok_or("short trun")? as usize);
                    at += 4;
                }
                if flags & 0x4 != 0 {
                    at += 4;
                }
                if flags & 0x200 == 0 {
                    return Err("trun without sample sizes".into());
                }
                let size_at = if flags & 0x100 != 0 { 4 } else { 0 };
                let per = 4 * [0x100, 0x200, 0x400, 0x800]
                    .iter()
                    .filter(|&&f| flags & f != 0)
                    .count();
                if b.len() < at + per * count {
                    return Err(format!("trun of {count} samples is {} bytes", b.len()));
                }
                sizes = (0..count)
                    .map(|i| be32(b, at + i * per + size_at).expect("checked") as usize)
                    .collect();
            }
            _ => {}
        }
    }
    let track = track.ok_or("no tfhd")?;
    if data_offset != Some(moof.len() + mdat_header) {
        return Err(format!(
            "data offset {data_offset:?}, samples start at {}",
            moof.len() + mdat_header
        ));
    }
    if sizes.is_empty() {
        return Err("no samples".into());
    }
    if sizes.iter().sum::<usize>() != payload.len() {
        return Err(format!(
            "samples add up to {} bytes, mdat holds {}",
            sizes.iter().sum::<usize>(),
            payload.len()
        ));
    }
    let mut at = 0;
    let mut f: Option<Fragment> = None;
    for size in sizes {
        let s = &payload[at..at + size];
        at += size;
        let (seq, sent) = check_sample(track, s)?;
        match f.as_mut() {
            None => {
                f = Some(Fragment {
                    track,
                    first_seq: seq,
                    last_seq: seq,
                    samples: 1,
                    oldest_ns: sent,
                    newest_ns: sent,
                    starts_with_idr: track == Track::Video && s.get(4).map(|b| b & 0x1F) == Some(5),
                })
            }
            Some(f) => {
                if seq != f.last_seq.wrapping_add(1) {
                    return Err(format!("sample {seq} follows {} in one part", f.last_seq));
                }
                f.last_seq = seq;
                f.samples += 1;
                f.oldest_ns = f.oldest_ns.min(sent);
                f.newest_ns = f.newest_ns.max(sent);
            }
        }
    }
    f.ok_or_else(|| "no samples".into())
}

/// Checks a part of any rendition: one fragment ([`check_fragment`]), or
/// for a muxed rendition one per track (video and audio back to back).
pub fn check_part(data: &[u8]) -> Result<Vec<Fragment>, String> {
    let top = boxes(data)?;
    if top.is_empty() || top.len() % 2 != 0 {
        return Err(format!(
            "{} top-level boxes, not moof + mdat pairs",
            top.len()
        ));
    }
    let mut out: Vec<Fragment> = Vec::new();
    let mut at = 0;
    for pair in top.chunks(2) {
        let len = pair[0].1.len() + pair[1].1.len();
        let f = check_fragment(&data[at..at + len])?;
        at += len;
        if out.iter().any(|o| o.track == f.track) {
            return Err(format!("two {:?} fragments in one part", f.track));
        }
        out.push(f);
    }
    Ok(out)
}

/// Index of a track in per-track counters.
fn slot(t: Track) -> usize {
    match t {
        Track::Video => 0,
        Track::Audio => 1,
    }
}

/// Checks an init segment: `ftyp` then `moov`.
fn check_init(data: &[u8]) -> Result<(), String> {
    let top = boxes(data)?;
    match top.as_slice() {
        [(f, _), (m, _), ..] if f == b"ftyp" && m == b"moov" => Ok(()),
        _ => Err("init segment is not ftyp + moov".into()),
    }
}

// ---------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------

/// A response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    status: u16,
    /// Bytes of the head, blank line included.
    len: usize,
    body: usize,
    close: bool,
}

/// Parses a response head at the front of `buf`, if it is all there.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(format!("response head over {MAX_HEAD} bytes"));
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("status line {status_line:?}"))?;
    let (mut body, mut close) = (None, status_line.starts_with("HTTP/1.0"));
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            body = Some(v.parse::<usize>().map_err(|_| format!("{l:?}"))?);
        } else if k.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!("{l:?}: a response without Content-Length"));
        }
    }
    let body = body.ok_or("response without Content-Length")?;
    if body > MAX_BODY {
        return Err(format!("response body of {body} bytes"));
    }
    Ok(Some(Head {
        status,
        len: end + 4,
        body,
        close,
    }))
}

// ---------------------------------------------------------------------------------------
// Viewers
// ---------------------------------------------------------------------------------------

/// What a connection's request in flight asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum What {
    Multivariant,
    /// A media playlist; `blocking` when it carried `_HLS_msn`/`_HLS_part`.
    Playlist {
        blocking: bool,
    },
    Init,
    /// Part `seq`, listed by a playlist that arrived at `listed_ns`.
    Part {
        seq: u64,
        listed_ns: u64,
    },
    Metrics,
}

/// Sequence check of one track's stamped samples across parts.
#[derive(Debug, Default, Clone, Copy)]
struct Seq {
    last: Option<u32>,
    missing: u64,
    repeated: u64,
}

impl Seq {
    fn accept(&mut self, first: u32, last: u32) {
        if let Some(prev) = self.last {
            if first > prev {
                self.missing += u64::from(first - prev - 1);
            } else {
                self.repeated += u64::from(prev - first + 1);
            }
        }
        self.last = Some(last);
    }
}

/// One keep-alive connection: a viewer's rendition (or the metrics reader).
struct Conn {
    sock: TcpStream,
    viewer: usize,
    connected: bool,
    out: Bytes,
    inbuf: BytesMut,
    head: Option<Head>,
    req: Option<What>,
    closed: Option<String>,
    /// Ended normally (EXT-X-ENDLIST, or the run stopped).
    ended: bool,
    bytes_in: u64,
    /// Media playlist path of this rendition (`/live/bench/v0.m3u8`).
    playlist: Option<String>,
    /// The next part to fetch.
    next_part: Option<u64>,
    last: Option<MediaPlaylist>,
    last_at_ns: u64,
    init_done: bool,
    /// Per track (video, audio): a muxed rendition's parts carry both.
    seq: [Seq; 2],
    parts: u64,
    missed_parts: u64,
    corrupt: u64,
    independent_wrong: u64,
    timeouts: u64,
    parts_at_start: u64,
    parts_at_end: u64,
    /// Samples received, per track (video, audio).
    samples: [u64; 2],
    /// The tracks its first part carried: no later part brings another.
    tracks: Option<[bool; 2]>,
}

/// Totals at a window edge.
#[derive(Debug, Default, Clone, Copy)]
struct Snap {
    bytes: u64,
    responses: u64,
    parts: u64,
    playlists: u64,
    blocking: u64,
}

/// Latency histograms of one track (microseconds).
#[derive(Debug, Default, Clone)]
struct Lat {
    ready: Histogram,
    received: Histogram,
    oldest: Histogram,
}

/// The LL-HLS viewers of a run.
pub struct Viewers {
    registry: Registry,
    opts: HlsOpts,
    addr: SocketAddr,
    host: String,
    base: String,
    token_base: usize,
    conns: Vec<Conn>,
    viewers: usize,
    connect_errors: u64,
    errors: Vec<String>,
    measuring: bool,
    totals: Snap,
    at_start: Snap,
    at_end: Snap,
    video: Lat,
    audio: Lat,
    /// `sluice_hls_waiting` samples.
    waiting: Vec<u64>,
    metrics_conn: Option<usize>,
    next_metrics_ns: u64,
}

impl Viewers {
    /// Viewers of `/APP/NAME/index.m3u8` at `addr`; their tokens start at
    /// `token_base`.
    pub fn new(
        registry: &Registry,
        addr: SocketAddr,
        app: &str,
        name: &str,
        opts: HlsOpts,
        token_base: usize,
    ) -> io::Result<Self> {
        Ok(Self {
            registry: registry.try_clone()?,
            opts,
            addr,
            host: addr.to_string(),
            base: format!("/{app}/{name}/"),
            token_base,
            conns: Vec::new(),
            viewers: 0,
            connect_errors: 0,
            errors: Vec::new(),
            measuring: false,
            totals: Snap::default(),
            at_start: Snap::default(),
            at_end: Snap::default(),
            video: Lat::default(),
            audio: Lat::default(),
            waiting: Vec::new(),
            metrics_conn: None,
            next_metrics_ns: 0,
        })
    }

    /// Viewers started.
    pub fn len(&self) -> usize {
        self.viewers
    }

    /// The connection a token names, if it is one of ours.
    pub fn owns(&self, token: Token) -> Option<usize> {
        token
            .0
            .checked_sub(self.token_base)
            .filter(|&i| i < self.conns.len())
    }

    fn error(&mut self, e: String) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(e);
        }
    }

    /// Opens a connection for `viewer`; None when it could not.
    fn open(&mut self, viewer: usize) -> Option<usize> {
        let i = self.conns.len();
        let mut sock = match TcpStream::connect(self.addr) {
            Ok(s) => s,
            Err(e) => {
                self.connect_errors += 1;
                self.error(format!("viewer {viewer}: connect: {e}"));
                return None;
            }
        };
        if let Err(e) = self.registry.register(
            &mut sock,
            Token(self.token_base + i),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.connect_errors += 1;
            self.error(format!("viewer {viewer}: register: {e}"));
            return None;
        }
        self.conns.push(Conn {
            sock,
            viewer,
            connected: false,
            out: Bytes::new(),
            inbuf: BytesMut::with_capacity(READ_CHUNK),
            head: None,
            req: None,
            closed: None,
            ended: false,
            bytes_in: 0,
            playlist: None,
            next_part: None,
            last: None,
            last_at_ns: 0,
            init_done: false,
            seq: [Seq::default(), Seq::default()],
            parts: 0,
            missed_parts: 0,
            corrupt: 0,
            independent_wrong: 0,
            timeouts: 0,
            parts_at_start: 0,
            parts_at_end: 0,
            samples: [0; 2],
            tracks: None,
        });
        Some(i)
    }

    /// Starts one viewer: its first connection asks for index.m3u8.
    pub fn start_viewer(&mut self) {
        let v = self.viewers;
        self.viewers += 1;
        if let Some(i) = self.open(v) {
            let path = format!("{}index.m3u8", self.base);
            self.send(i, &path, What::Multivariant);
        }
    }

    /// Window edges: counters are snapshot, latency is recorded in between.
    pub fn window_start(&mut self) {
        self.measuring = true;
        self.at_start = self.totals;
        for c in &mut self.conns {
            c.parts_at_start = c.parts;
        }
        if self.opts.metrics && self.metrics_conn.is_none() {
            self.metrics_conn = self.open(usize::MAX);
        }
    }

    pub fn window_end(&mut self) {
        self.measuring = false;
        self.at_end = self.totals;
        for c in &mut self.conns {
            c.parts_at_end = c.parts;
        }
    }

    /// Called every loop turn: reads `/metrics` when due.
    pub fn tick(&mut self) {
        let Some(i) = self.metrics_conn else { return };
        let now = wall_ns();
        if !self.measuring || now < self.next_metrics_ns || self.conns[i].req.is_some() {
            return;
        }
        self.next_metrics_ns = now + METRICS_EVERY_NS;
        self.send(i, "/metrics", What::Metrics);
    }

    /// Queues a GET of `path` on connection `i`.
    fn send(&mut self, i: usize, path: &str, what: What) {
        let c = &mut self.conns[i];
        if c.closed.is_some() {
            return;
        }
        debug_assert!(c.req.is_none(), "one request at a time");
        c.out = Bytes::from(format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: sluice-load\r\nAccept: */*\r\n\r\n",
            self.host
        ));
        c.req = Some(what);
        if c.connected {
            Self::write(c);
        }
    }

    fn write(c: &mut Conn) {
        while !c.out.is_empty() {
            match c.sock.write(&c.out) {
                Ok(0) => return close(c, "write returned 0".into()),
                Ok(n) => c.out.advance(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return close(c, format!("write: {e}")),
            }
        }
    }

    /// A readiness event on connection `i`; `stopped`: the publisher has
    /// stopped (a close is then not a failure).
    pub fn on_event(&mut self, i: usize, ev: &mio::event::Event, stopped: bool) {
        let c = &mut self.conns[i];
        if c.closed.is_some() {
            return;
        }
        if !c.connected && (ev.is_writable() || ev.is_readable()) {
            match c.sock.take_error() {
                Ok(Some(e)) | Err(e) => return close(c, format!("connect: {e}")),
                Ok(None) => {}
            }
            match c.sock.peer_addr() {
                Ok(_) => {
                    c.connected = true;
                    let _ = c.sock.set_nodelay(true);
                }
                Err(e) if e.kind() == ErrorKind::NotConnected => return,
                Err(e) => return close(c, format!("connect: {e}")),
            }
        }
        if ev.is_writable() {
            Self::write(c);
        }
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            if let Err(e) = self.read(i) {
                let c = &mut self.conns[i];
                if stopped {
                    c.ended = true;
                }
                close(c, e);
            }
        }
    }

    /// Reads what the socket has and handles every complete response.
    fn read(&mut self, i: usize) -> Result<(), String> {
        loop {
            let c = &mut self.conns[i];
            let n = match crate::recv_into(&c.sock, &mut c.inbuf, READ_CHUNK) {
                Ok(0) => return Err("closed by server".into()),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("read: {e}")),
            };
            c.bytes_in += n as u64;
            self.totals.bytes += n as u64;
            loop {
                let c = &mut self.conns[i];
                if c.head.is_none() {
                    c.head = parse_head(&c.inbuf)?;
                }
                let Some(head) = c.head else { break };
                if c.inbuf.len() < head.len + head.body {
                    // Room for the whole body, so reads land in one buffer.
                    c.inbuf.reserve(head.len + head.body - c.inbuf.len());
                    break;
                }
                c.inbuf.advance(head.len);
                let body = c.inbuf.split_to(head.body).freeze();
                c.head = None;
                let what = c.req.take().ok_or("a response to no request")?;
                self.totals.responses += 1;
                self.on_response(i, what, head.status, body)?;
                if head.close {
                    return Err("server closed the connection (Connection: close)".into());
                }
            }
            if n < READ_CHUNK {
                return Ok(());
            }
        }
    }

    fn on_response(
        &mut self,
        i: usize,
        what: What,
        status: u16,
        body: Bytes,
    ) -> Result<(), String> {
        let now = wall_ns();
        if what == What::Metrics {
            if status == 200 {
                let text = String::from_utf8_lossy(&body);
                if let Some(v) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("sluice_hls_waiting "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                {
                    self.waiting.push(v as u64);
                }
            }
            return Ok(());
        }
        if status == 503 {
            // A blocking request that waited three target durations.
            if let What::Playlist { blocking: true } | What::Part { .. } = what {
                self.conns[i].timeouts += 1;
                return self.reload(i);
            }
        }
        if status != 200 {
            return Err(format!("{what:?}: HTTP {status}"));
        }
        match what {
            What::Multivariant => {
                let text = std::str::from_utf8(&body).map_err(|_| "index.m3u8 is not UTF-8")?;
                let uris = parse_multivariant(text)?;
                let v = self.conns[i].viewer;
                let mut conns = vec![i];
                // One connection per further rendition, opened now.
                for _ in 1..uris.len() {
                    match self.open(v) {
                        Some(j) => conns.push(j),
                        None => return Err("could not open a rendition's connection".into()),
                    }
                }
                for (uri, j) in uris.iter().zip(conns) {
                    let path = self.resolve(uri);
                    self.conns[j].playlist = Some(path.clone());
                    self.send(j, &path, What::Playlist { blocking: false });
                }
                Ok(())
            }
            What::Playlist { blocking } => {
                self.totals.playlists += 1;
                if blocking {
                    self.totals.blocking += 1;
                }
                let text = std::str::from_utf8(&body).map_err(|_| "playlist is not UTF-8")?;
                let p = parse_media(text)?;
                let c = &mut self.conns[i];
                c.last = Some(p);
                c.last_at_ns = now;
                if !c.init_done {
                    let map = c
                        .last
                        .as_ref()
                        .and_then(|p| p.map.clone())
                        .ok_or("first playlist has no EXT-X-MAP")?;
                    let path = self.resolve(&map);
                    self.send(i, &path, What::Init);
                    return Ok(());
                }
                self.advance(i)
            }
            What::Init => {
                check_init(&body)?;
                let c = &mut self.conns[i];
                c.init_done = true;
                // Join at the live edge: the hinted part.
                c.next_part = c.last.as_ref().and_then(|p| p.hint.as_ref().map(|h| h.0));
                self.advance(i)
            }
            What::Part { seq, listed_ns } => {
                self.totals.parts += 1;
                let measuring = self.measuring;
                let c = &mut self.conns[i];
                c.parts += 1;
                c.next_part = Some(seq + 1);
                let independent = c
                    .last
                    .as_ref()
                    .and_then(|p| p.parts.iter().find(|r| r.seq == seq))
                    .map(|r| r.independent);
                match check_part(&body) {
                    Ok(frags) => {
                        let mut has = [false; 2];
                        for f in &frags {
                            has[slot(f.track)] = true;
                        }
                        let first = *c.tracks.get_or_insert(has);
                        if has.iter().zip(first).any(|(&h, f)| h && !f) {
                            c.corrupt += 1;
                        }
                        for f in frags {
                            c.seq[slot(f.track)].accept(f.first_seq, f.last_seq);
                            c.samples[slot(f.track)] += u64::from(f.samples);
                            if f.track == Track::Video
                                && independent.is_some_and(|i| i != f.starts_with_idr)
                            {
                                c.independent_wrong += 1;
                            }
                            if measuring {
                                let lat = match f.track {
                                    Track::Video => &mut self.video,
                                    Track::Audio => &mut self.audio,
                                };
                                lat.ready
                                    .record(listed_ns.saturating_sub(f.newest_ns) / 1000);
                                lat.received.record(now.saturating_sub(f.newest_ns) / 1000);
                                lat.oldest.record(now.saturating_sub(f.oldest_ns) / 1000);
                            }
                        }
                    }
                    Err(e) => {
                        c.corrupt += 1;
                        let v = c.viewer;
                        self.error(format!("viewer {v}: part {seq}: {e}"));
                    }
                }
                self.advance(i)
            }
            What::Metrics => unreachable!("handled above"),
        }
    }

    /// Path of a URI relative to the stream's directory.
    fn resolve(&self, uri: &str) -> String {
        if uri.starts_with('/') {
            uri.to_owned()
        } else {
            format!("{}{uri}", self.base)
        }
    }

    /// After a playlist or a part: fetch the next part if the last
    /// playlist lists it, else reload the playlist, blocking for it.
    fn advance(&mut self, i: usize) -> Result<(), String> {
        let c = &mut self.conns[i];
        let Some(p) = c.last.as_ref() else {
            return Err("no playlist".into());
        };
        let Some(next) = c.next_part else {
            if p.ended {
                c.ended = true;
                return Ok(());
            }
            return Err("playlist without EXT-X-PRELOAD-HINT".into());
        };
        if let Some(r) = p.parts.iter().find(|r| r.seq == next) {
            let (uri, listed_ns) = (r.uri.clone(), c.last_at_ns);
            let path = self.resolve(&uri);
            self.send(
                i,
                &path,
                What::Part {
                    seq: next,
                    listed_ns,
                },
            );
            return Ok(());
        }
        if p.ended {
            c.ended = true;
            return Ok(());
        }
        match p.hint.as_ref().map(|h| h.0) {
            Some(h) if h == next => {}
            Some(h) if h > next => {
                // Fell behind the listed parts: what is no longer listed
                // is missed, and the viewer rejoins at the edge.
                c.missed_parts += h - next;
                c.next_part = Some(h);
            }
            Some(h) => return Err(format!("hint {h} is behind part {next}, already fetched")),
            None => return Err("playlist without EXT-X-PRELOAD-HINT".into()),
        }
        self.reload(i)
    }

    /// A blocking reload for the part the last playlist hinted.
    fn reload(&mut self, i: usize) -> Result<(), String> {
        let c = &self.conns[i];
        let (Some(p), Some(path)) = (c.last.as_ref(), c.playlist.as_ref()) else {
            return Err("no playlist".into());
        };
        let (msn, part) = p.hint_at;
        let skip = if self.opts.skip && p.can_skip {
            "&_HLS_skip=YES"
        } else {
            ""
        };
        let url = format!("{path}?_HLS_msn={msn}&_HLS_part={part}{skip}");
        self.send(i, &url, What::Playlist { blocking: true });
        Ok(())
    }
}

impl Viewers {
    /// Fills the LL-HLS figures into sluice-load's record: an `hls` section,
    /// and the generic fields (bytes, CPU per GB, RSS per viewer, counts,
    /// held) computed from the viewers instead of the RTMP players.
    pub fn amend(&self, r: &mut Value) {
        let win = r["window"]["seconds"].as_f64().unwrap_or(0.0);
        let d = |f: fn(&Snap) -> u64| f(&self.at_end).saturating_sub(f(&self.at_start));
        let bytes = d(|s| s.bytes);
        let responses = d(|s| s.responses);
        let per_s = |n: u64| if win > 0.0 { n as f64 / win } else { 0.0 };
        let gb = bytes as f64 / 1e9;
        let server_cpu = r["server"]["cpu_seconds"].as_f64();

        let viewers: Vec<&Conn> = self
            .conns
            .iter()
            .filter(|c| c.viewer != usize::MAX)
            .collect();
        // Parts each rendition got in the window, against the most any
        // connection of the same rendition got: within 5%, one part of
        // slack at each edge.
        let mut best = std::collections::HashMap::new();
        for c in &viewers {
            if let Some(p) = &c.playlist {
                let got = c.parts_at_end - c.parts_at_start;
                let e = best.entry(p.clone()).or_insert(0);
                *e = (*e).max(got);
            }
        }
        let slow = |c: &Conn| {
            c.playlist.as_ref().is_some_and(|p| {
                let want = best.get(p).copied().unwrap_or(0) as f64;
                ((c.parts_at_end - c.parts_at_start + 2) as f64) < 0.95 * want
            })
        };
        let failed = |c: &Conn| c.closed.is_some() && !c.ended;
        let mut per_viewer = vec![(0usize, true); self.viewers];
        for c in &viewers {
            let ok = c.init_done
                && c.parts > 0
                && c.missed_parts + c.corrupt + c.independent_wrong + c.timeouts == 0
                && c.seq.iter().all(|s| s.missing + s.repeated == 0)
                && !failed(c)
                && !slow(c);
            let v = &mut per_viewer[c.viewer];
            v.0 += 1;
            v.1 &= ok;
        }
        let renditions = per_viewer.iter().map(|v| v.0).max().unwrap_or(0);
        // A viewer is complete when it has every rendition and each held.
        let complete = per_viewer
            .iter()
            .filter(|v| v.1 && v.0 == renditions && renditions > 0)
            .count();
        let joined = per_viewer.iter().filter(|v| v.0 > 0).count();
        let sum = |f: fn(&Conn) -> u64| viewers.iter().map(|c| f(c)).sum::<u64>();
        let disconnected = viewers.iter().filter(|c| failed(c)).count();
        let below = viewers.iter().filter(|c| slow(c)).count();
        let missing = sum(|c| c.seq.iter().map(|s| s.missing).sum());
        let repeated = sum(|c| c.seq.iter().map(|s| s.repeated).sum());
        let corrupt = sum(|c| c.corrupt);
        let ms = |h: &Histogram| {
            json!({
                "count": h.count(),
                "p50": h.quantile(0.5) as f64 / 1000.0,
                "p90": h.quantile(0.9) as f64 / 1000.0,
                "p99": h.quantile(0.99) as f64 / 1000.0,
                "max": h.max() as f64 / 1000.0,
            })
        };
        let lat = |l: &Lat| json!({ "ready": ms(&l.ready), "received": ms(&l.received), "oldest": ms(&l.oldest) });
        let mut waiting = self.waiting.clone();
        waiting.sort_unstable();
        let mut errors = self.errors.clone();
        let mut closed: Vec<String> = viewers
            .iter()
            .filter(|c| failed(c))
            .filter_map(|c| c.closed.clone())
            .collect();
        closed.sort();
        closed.dedup();
        errors.extend(
            closed
                .into_iter()
                .take(5)
                .map(|c| format!("viewer connection closed: {c}")),
        );
        r["hls"] = json!({
            "viewers": self.viewers,
            "connections": viewers.len(),
            "renditions_per_viewer": renditions,
            "connection_per": "rendition",
            "delta_updates": self.opts.skip,
            "counts": {
                "connect_errors": self.connect_errors,
                "joined": joined,
                "complete": complete,
                "disconnected": disconnected,
                "below_rate": below,
                "parts": sum(|c| c.parts),
                "missed_parts": sum(|c| c.missed_parts),
                "corrupt_parts": corrupt,
                "frames_missing": missing,
                "frames_repeated": repeated,
                "independent_wrong": sum(|c| c.independent_wrong),
                "blocking_timeouts": sum(|c| c.timeouts),
            },
            "window": {
                "seconds": win,
                "bytes": bytes,
                "gbit_per_s": if win > 0.0 { gb * 8.0 / win } else { 0.0 },
                "requests": responses,
                "requests_per_s": per_s(responses),
                "parts_per_s": per_s(d(|s| s.parts)),
                "playlists_per_s": per_s(d(|s| s.playlists)),
                "blocking_reloads_per_s": per_s(d(|s| s.blocking)),
                // Requests answered per second of server CPU: requests/s per core.
                "requests_per_cpu_second": server_cpu.filter(|&c| c > 0.0).map(|c| responses as f64 / c),
            },
            "latency_ms": { "video": lat(&self.video), "audio": lat(&self.audio) },
            "parked": {
                "samples": waiting.len(),
                "median": waiting.get(waiting.len() / 2),
                "max": waiting.last(),
            },
        });
        r["window"]["bytes_delivered"] = json!(bytes);
        r["window"]["gbit_per_s"] = json!(if win > 0.0 { gb * 8.0 / win } else { 0.0 });
        r["window"]["players_below_rate"] = json!(below);
        r["server"]["cpu_s_per_gb"] = json!(server_cpu.and_then(|c| (gb > 0.0).then(|| c / gb)));
        let rss = match (
            r["server"]["rss_before_bytes"].as_u64(),
            r["server"]["rss_peak_bytes"].as_u64(),
        ) {
            (Some(b), Some(p)) if self.viewers > 0 => {
                Some(p.saturating_sub(b) as f64 / self.viewers as f64)
            }
            _ => None,
        };
        r["server"]["rss_per_player_bytes"] = json!(rss);
        r["counts"] = json!({
            "started": self.viewers,
            "connect_errors": self.connect_errors,
            "ready": joined,
            "joined": joined,
            "disconnected": disconnected,
            "complete": complete,
        });
        let samples = |t: Track| viewers.iter().map(|c| c.samples[slot(t)]).sum::<u64>();
        r["frames"]["video"] = json!(samples(Track::Video));
        r["frames"]["audio"] = json!(samples(Track::Audio));
        r["frames"]["missing"] = json!(missing);
        r["frames"]["out_of_order"] = json!(repeated);
        r["frames"]["corrupt"] = json!(corrupt);
        // Latency of this mode is per part, in `hls.latency_ms`.
        r["latency_ms"] = Value::Null;
        let held = self.viewers > 0
            && complete == self.viewers
            && self.connect_errors == 0
            && r["publisher"]["video_frames"].as_u64().unwrap_or(0) > 0;
        r["held"] = json!(held);
        if let Some(e) = r["errors"].as_array_mut() {
            e.extend(errors.into_iter().map(Value::from));
        }
    }
}

/// The LL-HLS lines of the human summary.
pub fn summary(r: &Value) -> String {
    let h = &r["hls"];
    if h.is_null() {
        return String::new();
    }
    let f = |v: &Value| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.1}"));
    let l = |t: &str, k: &str| {
        let x = &h["latency_ms"][t][k];
        format!("{}/{}/{}", f(&x["p50"]), f(&x["p99"]), f(&x["max"]))
    };
    let w = &h["window"];
    let c = &h["counts"];
    let mut s = format!(
        "  ll-hls: {} viewers x {} renditions; {} parts, {} missed, {} corrupt, {} frames missing, {} repeated, {} INDEPENDENT wrong, {} blocking timeouts\n",
        h["viewers"], h["renditions_per_viewer"], c["parts"], c["missed_parts"], c["corrupt_parts"],
        c["frames_missing"], c["frames_repeated"], c["independent_wrong"], c["blocking_timeouts"],
    );
    s += &format!(
        "  ll-hls window: {} requests/s ({} blocking reloads/s, {} parts/s), {} requests per server CPU-second, parked {} (median) {} (max)\n",
        f(&w["requests_per_s"]), f(&w["blocking_reloads_per_s"]), f(&w["parts_per_s"]),
        f(&w["requests_per_cpu_second"]), h["parked"]["median"], h["parked"]["max"],
    );
    s += &format!(
        "  ll-hls video part latency ms p50/p99/max: ready {}, received {}, oldest sample {}; audio: ready {}, received {}\n",
        l("video", "ready"), l("video", "received"), l("video", "oldest"),
        l("audio", "ready"), l("audio", "received"),
    );
    s
}

fn close(c: &mut Conn, why: String) {
    if c.closed.is_none() {
        c.closed = Some(why);
        let _ = c.sock.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{Generator, Shape};
    use sluice::cmaf::{Body, Decision, Directives, Packager, PackagerConfig, Resource};

    /// The generated stream through the server's own packager, for `secs`
    /// seconds of media.
    fn packaged(secs: u64) -> Packager {
        packaged_with(secs, PackagerConfig::default())
    }

    fn packaged_with(secs: u64, config: PackagerConfig) -> Packager {
        let mut p = Packager::new(config).unwrap();
        let mut g = Generator::new(Shape::default());
        for f in g.headers() {
            p.handle_frame(f.kind, f.timestamp, &f.payload, 0);
        }
        loop {
            let f = g.next(7_000_000);
            if f.due_ns > secs * 1_000_000_000 {
                break;
            }
            p.handle_frame(f.kind, f.timestamp, &f.payload, 0);
        }
        while p.poll_output().is_some() {}
        p
    }

    fn get(p: &Packager, path: &str) -> Body {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let r = Resource::parse(path).unwrap();
        let d = Directives::parse(query).unwrap();
        assert_eq!(p.decide(&r, &d), Decision::Ready, "{path}?{query}");
        p.respond(&r, &d).unwrap()
    }

    fn text(b: Body) -> String {
        match b {
            Body::Playlist(t) => t,
            other => panic!("not a playlist: {other:?}"),
        }
    }

    fn bytes(b: Body) -> Vec<u8> {
        match b {
            Body::Media(w) => w.to_vec(),
            Body::Init(b) => b.to_vec(),
            Body::Playlist(_) => panic!("a playlist"),
        }
    }

    #[test]
    fn reads_the_renditions_of_the_packagers_multivariant_playlist() {
        // One video and one audio track: one muxed rendition.
        let p = packaged(3);
        let uris = parse_multivariant(&text(get(&p, "index.m3u8"))).unwrap();
        assert_eq!(uris, ["m0.m3u8"]);
        // Without muxing: the video and its audio group.
        let config = PackagerConfig {
            mux_audio: false,
            ..PackagerConfig::default()
        };
        let p = packaged_with(3, config);
        let uris = parse_multivariant(&text(get(&p, "index.m3u8"))).unwrap();
        assert_eq!(uris, ["v0.m3u8", "a0.m3u8"]);
        assert!(parse_multivariant("#EXTM3U\n").is_err());
    }

    /// The hint's directives are those of the next part: asking for them
    /// blocks, and the part listed last is there.
    #[test]
    fn the_hinted_part_is_the_next_and_its_directives_block() {
        let p = packaged(5);
        for r in ["v0", "a0"] {
            let pl = parse_media(&text(get(&p, &format!("{r}.m3u8")))).unwrap();
            let last = pl.parts.last().unwrap().seq;
            let (hint, uri) = pl.hint.clone().unwrap();
            assert_eq!(hint, last + 1);
            assert_eq!(uri, format!("{r}/p{hint}.m4s"));
            assert!(pl
                .map
                .as_deref()
                .unwrap()
                .starts_with(&format!("{r}/init-")));
            let (msn, part) = pl.hint_at;
            let wait = Directives::parse(&format!("_HLS_msn={msn}&_HLS_part={part}")).unwrap();
            let media = Resource::parse(&format!("{r}.m3u8")).unwrap();
            assert_eq!(p.decide(&media, &wait), Decision::Wait, "{r}: {msn}/{part}");
            assert!(part > 0, "the stream is mid-segment at 5 s");
            let got = Directives::parse(&format!("_HLS_msn={msn}&_HLS_part={}", part - 1)).unwrap();
            assert_eq!(p.decide(&media, &got), Decision::Ready);
            assert!(!pl.ended && pl.can_skip);
        }
    }

    /// A delta update names the same next part as the full playlist.
    #[test]
    fn a_delta_update_ends_like_the_full_playlist() {
        let p = packaged(40);
        let full = parse_media(&text(get(&p, "v0.m3u8"))).unwrap();
        let delta_text = text(get(&p, "v0.m3u8?_HLS_skip=YES"));
        assert!(
            delta_text.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS="),
            "{delta_text}"
        );
        let delta = parse_media(&delta_text).unwrap();
        assert_eq!(delta.hint, full.hint);
        assert_eq!(delta.hint_at, full.hint_at);
        assert_eq!(delta.parts, full.parts);
    }

    /// Every listed part of both renditions passes the checks; the frames
    /// run on from part to part; INDEPENDENT=YES is on exactly the video
    /// parts that start with an IDR picture.
    #[test]
    fn every_packaged_part_checks_and_frames_are_consecutive() {
        let p = packaged(10);
        for (r, track) in [("v0", Track::Video), ("a0", Track::Audio)] {
            let pl = parse_media(&text(get(&p, &format!("{r}.m3u8")))).unwrap();
            check_init(&bytes(get(&p, pl.map.as_deref().unwrap()))).unwrap();
            assert!(pl.parts.len() > 20, "{}", pl.parts.len());
            let mut seq = Seq::default();
            let mut independent = 0;
            for part in &pl.parts {
                let f = check_fragment(&bytes(get(&p, &part.uri))).unwrap();
                assert_eq!(f.track, track);
                assert_eq!(f.oldest_ns, 7_000_000);
                seq.accept(f.first_seq, f.last_seq);
                if track == Track::Video {
                    assert_eq!(part.independent, f.starts_with_idr, "part {}", part.seq);
                    independent += usize::from(f.starts_with_idr);
                }
            }
            assert_eq!((seq.missing, seq.repeated), (0, 0), "{r}");
            if track == Track::Video {
                assert!(independent >= 3, "a keyframe every 2 s");
            }
        }
    }

    /// A muxed part is a video and an audio fragment: both check, each
    /// track's frames consecutive from part to part.
    #[test]
    fn muxed_parts_carry_both_tracks_and_check() {
        let p = packaged(10);
        let pl = parse_media(&text(get(&p, "m0.m3u8"))).unwrap();
        check_init(&bytes(get(&p, pl.map.as_deref().unwrap()))).unwrap();
        assert!(pl.parts.len() > 20, "{}", pl.parts.len());
        let mut seq = [Seq::default(), Seq::default()];
        for part in &pl.parts {
            let frags = check_part(&bytes(get(&p, &part.uri))).unwrap();
            let tracks: Vec<Track> = frags.iter().map(|f| f.track).collect();
            assert!(
                tracks.contains(&Track::Video) && tracks.len() == 2,
                "{tracks:?}"
            );
            for f in frags {
                seq[slot(f.track)].accept(f.first_seq, f.last_seq);
            }
        }
        for s in &seq {
            assert_eq!((s.missing, s.repeated), (0, 0));
        }
        // A part of one track checks as one fragment; twice the same
        // track does not.
        let v = parse_media(&text(get(&p, "v0.m3u8"))).unwrap();
        let good = bytes(get(&p, &v.parts[1].uri));
        assert_eq!(check_part(&good).unwrap().len(), 1);
        assert!(check_part(&[good.clone(), good].concat()).is_err());
    }

    #[test]
    fn a_changed_or_cut_part_is_caught() {
        let p = packaged(3);
        let pl = parse_media(&text(get(&p, "v0.m3u8"))).unwrap();
        let good = bytes(get(&p, &pl.parts[1].uri));
        check_fragment(&good).unwrap();
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(check_fragment(&bad).unwrap_err().contains("fill"));
        assert!(check_fragment(&good[..good.len() - 1]).is_err());
        // A sample size that no longer adds up to the mdat.
        let mut short = good.clone();
        let mdat_at = good.windows(4).position(|w| w == b"mdat").unwrap() - 4;
        let size = be32(&good, mdat_at).unwrap() - 1;
        short[mdat_at..mdat_at + 4].copy_from_slice(&size.to_be_bytes());
        short.pop();
        assert!(check_fragment(&short).is_err());
        // Two parts back to back are a segment, not a part.
        let two = [good.clone(), good].concat();
        assert!(check_fragment(&two).is_err());
    }

    #[test]
    fn missing_and_repeated_frames_are_counted() {
        let mut s = Seq::default();
        s.accept(0, 9);
        s.accept(10, 19);
        s.accept(22, 30);
        s.accept(30, 31);
        assert_eq!((s.missing, s.repeated), (2, 1));
    }

    #[test]
    fn reads_response_heads() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: x\r\ncontent-length: 12\r\n\r\nbody")
            .unwrap();
        assert_eq!(
            h,
            Some(Head {
                status: 200,
                len: 56,
                body: 12,
                close: false
            })
        );
        let h = parse_head(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.close), (503, true));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(), None);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }

    #[test]
    fn reads_attributes_and_part_numbers() {
        let l = "DURATION=0.33300,URI=\"v0/p12.m4s\",INDEPENDENT=YES";
        assert_eq!(attr(l, "URI"), Some("v0/p12.m4s"));
        assert_eq!(attr(l, "INDEPENDENT"), Some("YES"));
        assert_eq!(attr(l, "GAP"), None);
        assert_eq!(part_seq("v0/p12.m4s?key=1"), Some(12));
        assert_eq!(part_seq("v0/s12.m4s"), None);
    }
}
