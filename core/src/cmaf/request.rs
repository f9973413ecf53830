//! The HTTP side of HLS as pure functions: the URL layout under
//! `/APP/NAME/`, the delivery directives of a playlist request (RFC 8216bis
//! 6.2.5), and whether a request can be answered now, must wait (a
//! blocking playlist reload or a preload-hinted part, 6.2.5.2 and 6.2.6),
//! or is refused. The server parks what must wait, asks again whenever the
//! packager outputs a part, and answers 503 after
//! [`Packager::blocking_timeout_ms`].
//!
//! ```text
//!  index.m3u8            multivariant playlist
//!  v0.m3u8, a0.m3u8      media playlists (video track 0, audio track 0, ...)
//!  v0/init-3.mp4         init segment, version 3 (a new version per changed configuration)
//!  v0/s42.m4s            segment, media sequence number 42
//!  v0/p1234.m4s          part, stream-wide part sequence number 1234
//!  m0.m3u8, m0/...       the muxed rendition (video track 0 with the audio)
//! ```
//!
//! Parts are named by a sequence number shared by every rendition and
//! independent of the segment they fall in, so the URI a preload hint
//! names is the one the part gets, whether or not a segment starts there.

use super::packager::Packager;
use super::{RenditionId, TrackKind};
use crate::wire::WireForm;
use bytes::Bytes;
use std::fmt;

/// What a path under `/APP/NAME/` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `index.m3u8`
    Multivariant,
    /// `v0.m3u8`
    Media(RenditionId),
    /// `v0/init-3.mp4`
    Init {
        rendition: RenditionId,
        version: u32,
    },
    /// `v0/s42.m4s`
    Segment { rendition: RenditionId, msn: u64 },
    /// `v0/p1234.m4s`
    Part { rendition: RenditionId, seq: u64 },
}

impl Resource {
    /// Parses the path after `/APP/NAME/` (no query: split it off first).
    /// `None` for anything else, including numbers with signs, leading
    /// zeros or out of range, so every resource has exactly one path.
    pub fn parse(path: &str) -> Option<Resource> {
        if path == "index.m3u8" {
            return Some(Resource::Multivariant);
        }
        if let Some(name) = path.strip_suffix(".m3u8") {
            return Some(Resource::Media(rendition(name)?));
        }
        let (dir, file) = path.split_once('/')?;
        let rendition = rendition(dir)?;
        if let Some(v) = file
            .strip_prefix("init-")
            .and_then(|f| f.strip_suffix(".mp4"))
        {
            return Some(Resource::Init {
                rendition,
                version: u32::try_from(number(v)?).ok()?,
            });
        }
        let file = file.strip_suffix(".m4s")?;
        if let Some(msn) = file.strip_prefix('s') {
            return Some(Resource::Segment {
                rendition,
                msn: number(msn)?,
            });
        }
        let seq = number(file.strip_prefix('p')?)?;
        Some(Resource::Part { rendition, seq })
    }

    /// The `Content-Type` to answer with.
    pub fn content_type(&self) -> &'static str {
        let kind = match self {
            Resource::Multivariant | Resource::Media(_) => {
                return "application/vnd.apple.mpegurl";
            }
            Resource::Init { rendition, .. }
            | Resource::Segment { rendition, .. }
            | Resource::Part { rendition, .. } => rendition.kind,
        };
        match kind {
            TrackKind::Video | TrackKind::Muxed => "video/mp4",
            TrackKind::Audio => "audio/mp4",
        }
    }
}

impl fmt::Display for Resource {
    /// The path under `/APP/NAME/` ([`Resource::parse`] reads it back).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Multivariant => f.write_str("index.m3u8"),
            Resource::Media(r) => write!(f, "{r}.m3u8"),
            Resource::Init { rendition, version } => write!(f, "{rendition}/init-{version}.mp4"),
            Resource::Segment { rendition, msn } => write!(f, "{rendition}/s{msn}.m4s"),
            Resource::Part { rendition, seq } => write!(f, "{rendition}/p{seq}.m4s"),
        }
    }
}

/// `v0` / `a12`: a kind letter and a track id 0..=255 without leading zeros.
fn rendition(s: &str) -> Option<RenditionId> {
    let kind = match s.as_bytes().first()? {
        b'v' => TrackKind::Video,
        b'a' => TrackKind::Audio,
        b'm' => TrackKind::Muxed,
        _ => return None,
    };
    let track = u8::try_from(number(&s[1..])?).ok()?;
    Some(RenditionId { kind, track })
}

/// A decimal-integer (RFC 8216bis 4.2): digits only, no leading zero
/// except "0" itself, at most 2^64 - 1.
fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return None;
    }
    s.parse().ok()
}

/// `_HLS_skip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Skip {
    #[default]
    No,
    /// `YES`: skip old segments.
    Yes,
    /// `v2`: skip old segments and date ranges.
    V2,
}

/// The delivery directives of a playlist request (RFC 8216bis 6.2.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Directives {
    pub msn: Option<u64>,
    pub part: Option<u64>,
    pub skip: Skip,
}

/// A query the directives cannot be read from: answer 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectiveError(pub &'static str);

impl fmt::Display for DirectiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for DirectiveError {}

impl Directives {
    /// Reads `_HLS_msn`, `_HLS_part` and `_HLS_skip` from a query string
    /// (without the `?`). Other parameters (a signed URL's token, say) are
    /// ignored; a directive given twice or with a value that is not a
    /// decimal-integer (or YES/v2 for `_HLS_skip`) is an error.
    pub fn parse(query: &str) -> Result<Directives, DirectiveError> {
        let mut d = Directives::default();
        let mut skip_seen = false;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "_HLS_msn" => set_once(
                    &mut d.msn,
                    value,
                    "_HLS_msn is not a decimal-integer",
                    "_HLS_msn given twice",
                )?,
                "_HLS_part" => set_once(
                    &mut d.part,
                    value,
                    "_HLS_part is not a decimal-integer",
                    "_HLS_part given twice",
                )?,
                "_HLS_skip" => {
                    if std::mem::replace(&mut skip_seen, true) {
                        return Err(DirectiveError("_HLS_skip given twice"));
                    }
                    d.skip = match value {
                        "YES" => Skip::Yes,
                        "v2" => Skip::V2,
                        _ => return Err(DirectiveError("_HLS_skip is neither YES nor v2")),
                    };
                }
                _ => {}
            }
        }
        Ok(d)
    }
}

/// Sets a decimal-integer directive that must appear at most once.
fn set_once(
    slot: &mut Option<u64>,
    value: &str,
    invalid: &'static str,
    twice: &'static str,
) -> Result<(), DirectiveError> {
    let v = number(value).ok_or(DirectiveError(invalid))?;
    match slot.replace(v) {
        Some(_) => Err(DirectiveError(twice)),
        None => Ok(()),
    }
}

/// Whether a request can be answered now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Answer now.
    Ready,
    /// Park the request and decide again when the packager outputs a part;
    /// 503 once it waited [`Packager::blocking_timeout_ms`].
    Wait,
    /// 404.
    NotFound,
    /// 400, for the reason given.
    BadRequest(&'static str),
}

/// A response body: a playlist, or bytes to write (vectored) as they are.
#[derive(Debug, Clone)]
pub enum Body {
    Playlist(String),
    Init(Bytes),
    Media(WireForm),
}

impl Packager {
    /// How long a blocking request may wait before the server answers 503:
    /// "A Server that cannot provide the requested Playlist after blocking
    /// for more than three Target Durations SHOULD return Service
    /// Unavailable" (RFC 8216bis 6.2.5.2); parts alike.
    pub fn blocking_timeout_ms(&self) -> u64 {
        3 * 1000 * u64::from(self.target_duration_s())
    }

    /// Decides a request for `resource` with `directives` (only playlists
    /// read them) against the window as it is now.
    pub fn decide(&self, resource: &Resource, directives: &Directives) -> Decision {
        match *resource {
            Resource::Multivariant => {
                if self.multivariant().is_some() {
                    Decision::Ready
                } else if self.is_ended() {
                    Decision::NotFound
                } else {
                    Decision::Wait
                }
            }
            Resource::Media(r) => self.decide_playlist(r, directives),
            Resource::Init { rendition, version } => found(self.init(rendition, version).is_some()),
            Resource::Segment { rendition, msn } => {
                found(self.segment(rendition, msn).is_some_and(|s| !s.gap))
            }
            Resource::Part { rendition, seq } => match self.part(rendition, seq) {
                Some(p) => found(!p.gap),
                // The hinted part (EXT-X-PRELOAD-HINT): block until it
                // exists (6.2.6). Anything else the window lacks: 404.
                None if self.next_part_seq(rendition) == Some(seq) => Decision::Wait,
                None => Decision::NotFound,
            },
        }
    }

    /// The body for a request decided [`Decision::Ready`].
    pub fn respond(&self, resource: &Resource, directives: &Directives) -> Option<Body> {
        match *resource {
            Resource::Multivariant => self.multivariant().map(Body::Playlist),
            Resource::Media(r) => self.media_playlist(r, directives.skip).map(Body::Playlist),
            Resource::Init { rendition, version } => self.init(rendition, version).map(Body::Init),
            Resource::Segment { rendition, msn } => self
                .segment(rendition, msn)
                .filter(|s| !s.gap)
                .map(|s| Body::Media(s.wire.clone())),
            Resource::Part { rendition, seq } => self
                .part(rendition, seq)
                .filter(|p| !p.gap)
                .map(|p| Body::Media(p.wire.clone())),
        }
    }

    /// RFC 8216bis 6.2.5.2, Blocking Playlist Reload.
    fn decide_playlist(&self, r: RenditionId, d: &Directives) -> Decision {
        // "If the Playlist URI contains an _HLS_part directive but no
        // _HLS_msn directive, the Server MUST return Bad Request"
        if d.part.is_some() && d.msn.is_none() {
            return Decision::BadRequest("_HLS_part without _HLS_msn");
        }
        if !self.has_rendition(r) {
            // Before the stream has any rendition, wait for it; after, a
            // rendition the multivariant playlist does not list is not one.
            return if self.is_ended() || self.track_ids().next().is_some() {
                Decision::NotFound
            } else {
                Decision::Wait
            };
        }
        let playlist_exists = self.last_part(r).is_some();
        // "A Server MUST ignore _HLS_msn and _HLS_part if the Playlist
        // contains an EXT-X-ENDLIST tag."
        if self.is_ended() {
            return found(playlist_exists);
        }
        let Some(msn) = d.msn else {
            return if playlist_exists {
                Decision::Ready
            } else {
                Decision::Wait
            };
        };
        let window = self.window(r);
        // The last Media Segment in the playlist: the last complete one
        // (the one in progress has only parts); before any, the one before
        // the segment in progress.
        let last_segment: i128 = window
            .iter()
            .rev()
            .find(|s| s.complete.is_some())
            .map(|s| i128::from(s.msn))
            .or_else(|| window.last().map(|s| i128::from(s.msn) - 1))
            .unwrap_or(-1);
        // "If the _HLS_msn is greater than the Media Sequence Number of the
        // last Media Segment in the current Playlist plus two, ... the
        // server SHOULD immediately return Bad Request"
        if i128::from(msn) > last_segment + 2 {
            return Decision::BadRequest("_HLS_msn beyond the last segment plus two");
        }
        let Some(part) = d.part else {
            // "When the Playlist URI contains an _HLS_msn directive and no
            // _HLS_part directive, the Server MUST defer responding to the
            // request until the Playlist contains a Media Segment with a
            // Media Sequence Number of M or later"
            return if i128::from(msn) <= last_segment {
                Decision::Ready
            } else {
                Decision::Wait
            };
        };
        let Some((last_msn, last_index)) = self.last_part(r) else {
            return Decision::Wait;
        };
        // "... or if the _HLS_part exceeds the last Partial Segment in the
        // current Playlist by the Advance Part Limit": parts ahead of the
        // last one (for a later segment, at least its index plus one).
        let ahead = match msn.cmp(&last_msn) {
            std::cmp::Ordering::Less => 0,
            std::cmp::Ordering::Equal => part.saturating_sub(u64::from(last_index)),
            std::cmp::Ordering::Greater => part.saturating_add(1),
        };
        // "The Advance Part Limit is three divided by the Part Target
        // Duration if the Part Target Duration is less than one second, or
        // three otherwise."
        let target = u64::from(self.part_target_ms());
        let over = if target < 1000 {
            u128::from(ahead) * u128::from(target) > 3000
        } else {
            ahead > 3
        };
        if over {
            return Decision::BadRequest("_HLS_part beyond the advance part limit");
        }
        // "the Server MUST defer responding to the request until the
        // Playlist contains the Partial Segment with Part Index N and with
        // a Media Sequence Number of M or later"; a Part Index past a
        // complete segment's last is Part Index 0 of the next segment,
        // which is later than any part of this one.
        if msn < last_msn || (msn == last_msn && part <= u64::from(last_index)) {
            Decision::Ready
        } else {
            Decision::Wait
        }
    }
}

fn found(yes: bool) -> Decision {
    if yes {
        Decision::Ready
    } else {
        Decision::NotFound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_and_print_back() {
        let v0 = RenditionId::video(0);
        let a3 = RenditionId::audio(3);
        for (path, r) in [
            ("index.m3u8", Resource::Multivariant),
            ("v0.m3u8", Resource::Media(v0)),
            ("a3.m3u8", Resource::Media(a3)),
            (
                "v0/init-3.mp4",
                Resource::Init {
                    rendition: v0,
                    version: 3,
                },
            ),
            (
                "a3/s42.m4s",
                Resource::Segment {
                    rendition: a3,
                    msn: 42,
                },
            ),
            (
                "v0/p1234.m4s",
                Resource::Part {
                    rendition: v0,
                    seq: 1234,
                },
            ),
        ] {
            assert_eq!(Resource::parse(path), Some(r), "{path}");
            assert_eq!(r.to_string(), path);
        }
        assert_eq!(
            Resource::Media(v0).content_type(),
            "application/vnd.apple.mpegurl"
        );
        assert_eq!(
            Resource::Part {
                rendition: a3,
                seq: 1
            }
            .content_type(),
            "audio/mp4"
        );
    }

    #[test]
    fn malformed_paths_name_nothing() {
        for path in [
            "",
            "index.m3u",
            "x0.m3u8",
            "v.m3u8",
            "v256.m3u8",
            "v01.m3u8",
            "v-1.m3u8",
            "v0/init-.mp4",
            "v0/init-1.m4s",
            "v0/s.m4s",
            "v0/s+1.m4s",
            "v0/s01.m4s",
            "v0/p18446744073709551616.m4s",
            "v0/q1.m4s",
            "v0/p1.mp4",
            "../v0.m3u8",
            "v0/../s1.m4s",
            "v0/s1.m4s/x",
            "v0//s1.m4s",
            "v0/s 1.m4s",
        ] {
            assert_eq!(Resource::parse(path), None, "{path:?}");
        }
    }

    #[test]
    fn directives_from_queries() {
        assert_eq!(Directives::parse(""), Ok(Directives::default()));
        assert_eq!(
            Directives::parse("_HLS_msn=42&_HLS_part=3&token=abc&_HLS_skip=YES"),
            Ok(Directives {
                msn: Some(42),
                part: Some(3),
                skip: Skip::Yes
            })
        );
        assert_eq!(Directives::parse("_HLS_skip=v2").unwrap().skip, Skip::V2);
        for bad in [
            "_HLS_msn=",
            "_HLS_msn=-1",
            "_HLS_msn=1.5",
            "_HLS_msn=0x10",
            "_HLS_part=07",
            "_HLS_skip=yes",
            "_HLS_skip",
            "_HLS_msn=1&_HLS_msn=2",
            "_HLS_skip=YES&_HLS_skip=v2",
        ] {
            assert!(Directives::parse(bad).is_err(), "{bad}");
        }
    }

    // ---- RFC 8216bis 6.2.5.2 and 6.2.6, one rule per test ----

    use crate::cmaf::testing::*;
    use crate::cmaf::PackagerConfig;

    const V0: RenditionId = RenditionId::video(0);

    fn playlist(msn: Option<u64>, part: Option<u64>) -> (Resource, Directives) {
        (
            Resource::Media(V0),
            Directives {
                msn,
                part,
                skip: Skip::No,
            },
        )
    }

    /// A packager fed `secs` of the synthetic stream, and the rest of it.
    fn live(secs: u32, config: PackagerConfig) -> (Packager, Vec<Msg>) {
        let mut p = Packager::new(config).unwrap();
        let msgs = av_stream(30, 60, 0, 0);
        let cut = msgs.iter().position(|m| m.ts >= secs * 1000).unwrap();
        feed(&mut p, &msgs[..cut]);
        (p, msgs[cut..].to_vec())
    }

    fn decide(p: &Packager, (r, d): (Resource, Directives)) -> Decision {
        p.decide(&r, &d)
    }

    fn last_complete(p: &Packager) -> u64 {
        p.window(V0)
            .iter()
            .rev()
            .find(|s| s.complete.is_some())
            .unwrap()
            .msn
    }

    /// Feeds messages until `done`, one at a time; panics if it never is.
    fn feed_until(p: &mut Packager, rest: &mut Vec<Msg>, done: impl Fn(&Packager) -> bool) {
        while !done(p) {
            assert!(!rest.is_empty(), "ran out of stream");
            let m = rest.remove(0);
            feed(p, &[m]);
        }
    }

    #[test]
    fn part_without_msn_is_a_bad_request() {
        // "If the Playlist URI contains an _HLS_part directive but no
        // _HLS_msn directive, the Server MUST return Bad Request, such as
        // HTTP 400."
        let (p, _) = live(5, PackagerConfig::default());
        assert!(matches!(
            decide(&p, playlist(None, Some(0))),
            Decision::BadRequest(_)
        ));
        assert!(
            Directives::parse("_HLS_part=1").is_ok(),
            "parsing alone accepts it"
        );
    }

    #[test]
    fn msn_beyond_the_last_segment_plus_two_is_a_bad_request() {
        // "If the _HLS_msn is greater than the Media Sequence Number of the
        // last Media Segment in the current Playlist plus two, ... the
        // server SHOULD immediately return Bad Request, such as HTTP 400."
        let (p, _) = live(5, PackagerConfig::default());
        let last = last_complete(&p);
        assert_eq!(decide(&p, playlist(Some(last + 2), None)), Decision::Wait);
        assert_eq!(
            decide(&p, playlist(Some(last + 2), Some(0))),
            Decision::Wait
        );
        assert!(matches!(
            decide(&p, playlist(Some(last + 3), None)),
            Decision::BadRequest(_)
        ));
        assert!(matches!(
            decide(&p, playlist(Some(u64::MAX), None)),
            Decision::BadRequest(_)
        ));
    }

    #[test]
    fn part_beyond_the_advance_part_limit_is_a_bad_request() {
        // "... or if the _HLS_part exceeds the last Partial Segment in the
        // current Playlist by the Advance Part Limit, then the server SHOULD
        // immediately return Bad Request ... The Advance Part Limit is three
        // divided by the Part Target Duration if the Part Target Duration is
        // less than one second, or three otherwise."
        let (p, _) = live(5, PackagerConfig::default());
        let (msn, last) = p.last_part(V0).unwrap();
        let last = u64::from(last);
        // The part target fitted to 30 fps with AAC, 0.224 s: 3 / 0.224 =
        // 13.4 parts.
        assert_eq!(p.part_target_ms(), 224);
        assert_eq!(
            decide(&p, playlist(Some(msn), Some(last + 13))),
            Decision::Wait
        );
        assert!(matches!(
            decide(&p, playlist(Some(msn), Some(last + 14))),
            Decision::BadRequest(_)
        ));
        // In the next segment, part N is at least N + 1 parts ahead.
        assert_eq!(
            decide(&p, playlist(Some(msn + 1), Some(12))),
            Decision::Wait
        );
        assert!(matches!(
            decide(&p, playlist(Some(msn + 1), Some(13))),
            Decision::BadRequest(_)
        ));
        // A part target of one second or more: three parts.
        let (p, _) = live(
            12,
            PackagerConfig {
                part_target_ms: 2000,
                target_duration_s: 6,
                ..Default::default()
            },
        );
        assert!(p.part_target_ms() >= 1000, "{}", p.part_target_ms());
        let (msn, last) = p.last_part(V0).unwrap();
        let last = u64::from(last);
        assert_eq!(
            decide(&p, playlist(Some(msn), Some(last + 3))),
            Decision::Wait
        );
        assert!(matches!(
            decide(&p, playlist(Some(msn), Some(last + 4))),
            Decision::BadRequest(_)
        ));
    }

    #[test]
    fn msn_alone_waits_for_that_segment() {
        // "When the Playlist URI contains an _HLS_msn directive and no
        // _HLS_part directive, the Server MUST defer responding to the
        // request until the Playlist contains a Media Segment with a Media
        // Sequence Number of M or later or it responds with an error."
        let (mut p, mut rest) = live(5, PackagerConfig::default());
        let last = last_complete(&p);
        assert_eq!(decide(&p, playlist(Some(last), None)), Decision::Ready);
        assert_eq!(decide(&p, playlist(Some(last + 1), None)), Decision::Wait);
        feed_until(&mut p, &mut rest, |p| {
            decide(p, playlist(Some(last + 1), None)) == Decision::Ready
        });
        assert_eq!(
            last_complete(&p),
            last + 1,
            "ready exactly when segment M is complete"
        );
        let pl = p.media_playlist(V0, Skip::No).unwrap();
        assert!(pl.contains(&format!("\nv0/s{}.m4s\n", last + 1)));
    }

    #[test]
    fn msn_and_part_wait_for_that_part() {
        // "When the Playlist URI contains both an _HLS_msn directive and an
        // _HLS_part directive, the Server MUST defer responding to the
        // request until the Playlist contains the Partial Segment with Part
        // Index N and with a Media Sequence Number of M or later or it
        // responds with an error."
        let (mut p, mut rest) = live(5, PackagerConfig::default());
        let (msn, last) = p.last_part(V0).unwrap();
        assert_eq!(
            decide(&p, playlist(Some(msn), Some(u64::from(last)))),
            Decision::Ready
        );
        let want = playlist(Some(msn), Some(u64::from(last) + 1));
        assert_eq!(decide(&p, want), Decision::Wait);
        feed_until(&mut p, &mut rest, |p| decide(p, want) == Decision::Ready);
        assert_eq!(p.last_part(V0), Some((msn, last + 1)));
        let pl = p.media_playlist(V0, Skip::No).unwrap();
        let seq = p.window(V0).last().unwrap().parts.last().unwrap().seq;
        assert!(pl.contains(&format!("URI=\"v0/p{seq}.m4s\"")));
    }

    #[test]
    fn a_part_index_past_the_segment_is_part_zero_of_the_next() {
        // "If the Client requests a Part Index greater than that of the
        // final Partial Segment of the Parent Segment, the Server MUST treat
        // the request as one for Part Index 0 of the following Parent
        // Segment."
        let (mut p, mut rest) = live(5, PackagerConfig::default());
        let (msn, _) = p.last_part(V0).unwrap();
        // Run until segment `msn` is complete: its last part is final.
        feed_until(&mut p, &mut rest, |p| p.segment(V0, msn).is_some());
        let final_index = u64::from(p.segment(V0, msn).unwrap().parts.last().unwrap().index);
        let past = playlist(Some(msn), Some(final_index + 1));
        assert_eq!(
            decide(&p, past),
            Decision::Wait,
            "part {} of {msn} will never exist",
            final_index + 1
        );
        feed_until(&mut p, &mut rest, |p| decide(p, past) == Decision::Ready);
        assert_eq!(
            p.last_part(V0),
            Some((msn + 1, 0)),
            "answered with part 0 of the next segment"
        );
    }

    #[test]
    fn an_old_msn_gets_the_whole_current_playlist() {
        // "The Server MUST deliver the entire Playlist, even if the requested
        // Media Segment is not the last one in the Playlist, and even if it
        // is no longer in the Playlist."
        let (p, _) = live(
            29,
            PackagerConfig {
                window_segments: 3,
                ..Default::default()
            },
        );
        assert!(p.segment(V0, 0).is_none(), "segment 0 left the window");
        assert_eq!(decide(&p, playlist(Some(0), Some(0))), Decision::Ready);
        assert_eq!(decide(&p, playlist(Some(1), None)), Decision::Ready);
        let Some(Body::Playlist(pl)) = p.respond(&Resource::Media(V0), &Directives::default())
        else {
            panic!("no playlist");
        };
        assert_eq!(Some(pl), p.media_playlist(V0, Skip::No));
    }

    #[test]
    fn directives_are_ignored_once_the_playlist_has_ended() {
        // "A Server MUST ignore _HLS_msn and _HLS_part if the Playlist
        // contains an EXT-X-ENDLIST tag."
        let (mut p, _) = live(5, PackagerConfig::default());
        let last = last_complete(&p);
        p.finish();
        assert_eq!(
            decide(&p, playlist(Some(last + 2), Some(5))),
            Decision::Ready
        );
        assert_eq!(decide(&p, playlist(Some(last + 50), None)), Decision::Ready);
        // "A Server MUST ignore the _HLS_skip directive if the Playlist ...
        // contains an EXT-X-ENDLIST tag." (6.2.5.1)
        assert_eq!(
            p.media_playlist(V0, Skip::Yes),
            p.media_playlist(V0, Skip::No)
        );
    }

    #[test]
    fn blocking_times_out_after_three_target_durations() {
        // "A Server that cannot provide the requested Playlist after
        // blocking for more than three Target Durations SHOULD return
        // Service Unavailable, such as HTTP 503." (the server keeps the clock)
        let p = Packager::new(PackagerConfig::default()).unwrap();
        assert_eq!(p.blocking_timeout_ms(), 12_000);
        let p = Packager::new(PackagerConfig {
            target_duration_s: 6,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.blocking_timeout_ms(), 18_000);
    }

    #[test]
    fn the_hinted_part_blocks_and_other_missing_parts_are_not_found() {
        // 6.2.6: "A hinted resource MUST be available for request when its
        // EXT-X-PRELOAD-HINT tag is added to the Playlist" (it blocks until
        // it exists); "The server SHOULD respond with 'Not Found' ... to a
        // request for a resource that it cannot find and that is not
        // specified by an EXT-X-PRELOAD-HINT tag in an active Media
        // Playlist."
        let (mut p, mut rest) = live(5, PackagerConfig::default());
        let hinted = p.next_part_seq(V0).unwrap();
        let part = |seq| Resource::Part { rendition: V0, seq };
        let none = Directives::default();
        assert_eq!(p.decide(&part(hinted), &none), Decision::Wait);
        assert_eq!(p.decide(&part(hinted + 1), &none), Decision::NotFound);
        assert_eq!(p.decide(&part(hinted - 1), &none), Decision::Ready);
        feed_until(&mut p, &mut rest, |p| {
            p.decide(&part(hinted), &none) == Decision::Ready
        });
        // The hinted URI is the part's URI even when a segment starts there.
        let got = p.part(V0, hinted).unwrap();
        assert_eq!(got.seq, hinted);
        let Some(Body::Media(w)) = p.respond(&part(hinted), &none) else {
            panic!("no part body");
        };
        assert_eq!(w.len(), got.wire.len());
        // Segments and inits: there or not.
        let s = Resource::Segment {
            rendition: V0,
            msn: 0,
        };
        assert_eq!(p.decide(&s, &none), Decision::Ready);
        assert_eq!(
            p.decide(
                &Resource::Segment {
                    rendition: V0,
                    msn: 99
                },
                &none
            ),
            Decision::NotFound
        );
        assert_eq!(
            p.decide(
                &Resource::Init {
                    rendition: V0,
                    version: 1
                },
                &none
            ),
            Decision::Ready
        );
        assert_eq!(
            p.decide(
                &Resource::Init {
                    rendition: V0,
                    version: 2
                },
                &none
            ),
            Decision::NotFound
        );
        assert_eq!(
            p.decide(&Resource::Media(RenditionId::video(5)), &none),
            Decision::NotFound
        );
        let empty = Packager::new(PackagerConfig::default()).unwrap();
        assert_eq!(empty.decide(&Resource::Media(V0), &none), Decision::Wait);
        assert_eq!(empty.decide(&Resource::Multivariant, &none), Decision::Wait);
    }

    #[test]
    fn hints_across_segment_boundaries_always_come_true() {
        // Every hinted part URI becomes a listed part, whether or not a
        // segment starts there (the URI carries no segment number).
        let (mut p, rest) = live(1, PackagerConfig::default());
        let mut hinted = Vec::new();
        for m in rest.iter().take(600) {
            if let Some(h) = p.next_part_seq(V0) {
                if hinted.last() != Some(&h) {
                    hinted.push(h);
                }
            }
            feed(&mut p, std::slice::from_ref(m));
        }
        let now = p.next_part_seq(V0).unwrap();
        assert!(hinted.len() > 20, "{}", hinted.len());
        for h in hinted.iter().filter(|h| **h != now) {
            assert!(p.part(V0, *h).is_some(), "hinted part {h} never came");
        }
    }
}
