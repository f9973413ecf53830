//! ISO base media file format boxes (ISO/IEC 14496-12) for fragmented MP4:
//! the initialization segment (`ftyp` + `moov` with empty sample tables and
//! `mvex`/`trex`, 8.16) and the movie fragment header (`moof` with
//! `mfhd`/`traf`/`tfhd`/`tfdt`/`trun`, 8.8) plus the `mdat` header that
//! precedes a fragment's samples. Samples themselves are never written
//! here: a fragment is this header followed by slices of the frames.

/// `sample_flags` of a sync sample: `sample_depends_on` = 2 (depends on no
/// other sample), `sample_is_non_sync_sample` = 0 (8.8.3.1).
pub(crate) const SYNC_SAMPLE: u32 = 0x0200_0000;
/// `sample_flags` of any other sample: depends on others, non-sync.
pub(crate) const NON_SYNC_SAMPLE: u32 = 0x0101_0000;

/// Appends a box: size, type, then what `body` writes.
pub(crate) fn put_box(buf: &mut Vec<u8>, fourcc: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let at = buf.len();
    buf.extend_from_slice(&[0, 0, 0, 0]);
    buf.extend_from_slice(fourcc);
    body(buf);
    let size = u32::try_from(buf.len() - at).unwrap_or(u32::MAX);
    buf[at..at + 4].copy_from_slice(&size.to_be_bytes());
}

/// Appends a full box (4.2): a box whose body starts with version and flags.
pub(crate) fn put_full_box(
    buf: &mut Vec<u8>,
    fourcc: &[u8; 4],
    version: u8,
    flags: u32,
    body: impl FnOnce(&mut Vec<u8>),
) {
    put_box(buf, fourcc, |b| {
        b.push(version);
        b.extend_from_slice(&flags.to_be_bytes()[1..]);
        body(b);
    });
}

pub(crate) fn put_u16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_be_bytes());
}

fn put_zeros(buf: &mut Vec<u8>, n: usize) {
    buf.resize(buf.len() + n, 0);
}

/// The unity transformation matrix of `mvhd` and `tkhd`.
fn put_matrix(buf: &mut Vec<u8>) {
    for v in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
        put_u32(buf, v);
    }
}

/// Media handler of a track.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handler {
    Video,
    Audio,
}

/// What the `moov` needs of one track.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Trak<'a> {
    pub track_id: u32,
    pub handler: Handler,
    pub timescale: u32,
    /// Pixels (video only; 0 when unknown).
    pub width: u32,
    pub height: u32,
    /// `tkhd` alternate_group: tracks in one group are alternatives.
    pub alternate_group: u16,
    /// The whole sample entry box (`avc1`, `mp4a`, ...).
    pub sample_entry: &'a [u8],
}

/// `ftyp` + `moov` for the given tracks (ISO/IEC 14496-12 8.2, 8.3, 8.4,
/// 8.7 with empty sample tables, 8.8.1 `mvex`). Brands: `iso6` (the
/// fragment boxes used here, `tfdt` included), `cmfc` (CMAF), `mp41`.
pub(crate) fn init_segment(traks: &[Trak<'_>]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(
        700 + traks
            .iter()
            .map(|t| 500 + t.sample_entry.len())
            .sum::<usize>(),
    );
    put_box(&mut buf, b"ftyp", |b| {
        b.extend_from_slice(b"iso6"); // major_brand
        put_u32(b, 0); // minor_version
        b.extend_from_slice(b"iso6cmfcmp41"); // compatible_brands
    });
    put_box(&mut buf, b"moov", |b| {
        put_full_box(b, b"mvhd", 0, 0, |b| {
            put_u32(b, 0); // creation_time
            put_u32(b, 0); // modification_time
            put_u32(b, 1000); // timescale (movie header only)
            put_u32(b, 0); // duration: unknown (fragmented)
            put_u32(b, 0x0001_0000); // rate 1.0
            put_u16(b, 0x0100); // volume 1.0
            put_zeros(b, 2 + 8); // reserved
            put_matrix(b);
            put_zeros(b, 24); // pre_defined
            let next = traks.iter().map(|t| t.track_id).max().unwrap_or(0);
            put_u32(b, next.saturating_add(1)); // next_track_ID
        });
        for t in traks {
            put_trak(b, t);
        }
        put_box(b, b"mvex", |b| {
            for t in traks {
                put_full_box(b, b"trex", 0, 0, |b| {
                    put_u32(b, t.track_id);
                    put_u32(b, 1); // default_sample_description_index
                    put_u32(b, 0); // default_sample_duration
                    put_u32(b, 0); // default_sample_size
                    put_u32(b, 0); // default_sample_flags
                });
            }
        });
    });
    buf
}

fn put_trak(b: &mut Vec<u8>, t: &Trak<'_>) {
    put_box(b, b"trak", |b| {
        // flags: track_enabled | track_in_movie.
        put_full_box(b, b"tkhd", 0, 0x3, |b| {
            put_u32(b, 0); // creation_time
            put_u32(b, 0); // modification_time
            put_u32(b, t.track_id);
            put_u32(b, 0); // reserved
            put_u32(b, 0); // duration
            put_zeros(b, 8); // reserved
            put_u16(b, 0); // layer
            put_u16(b, t.alternate_group);
            put_u16(
                b,
                if t.handler == Handler::Audio {
                    0x0100
                } else {
                    0
                },
            ); // volume
            put_u16(b, 0); // reserved
            put_matrix(b);
            put_u32(b, t.width.min(0xffff) << 16); // width, 16.16
            put_u32(b, t.height.min(0xffff) << 16); // height, 16.16
        });
        put_box(b, b"mdia", |b| {
            put_full_box(b, b"mdhd", 0, 0, |b| {
                put_u32(b, 0); // creation_time
                put_u32(b, 0); // modification_time
                put_u32(b, t.timescale);
                put_u32(b, 0); // duration
                put_u16(b, 0x55c4); // language "und", packed ISO-639-2/T
                put_u16(b, 0); // pre_defined
            });
            let (handler, name): (&[u8; 4], &[u8]) = match t.handler {
                Handler::Video => (b"vide", b"Sluice video\0"),
                Handler::Audio => (b"soun", b"Sluice audio\0"),
            };
            put_full_box(b, b"hdlr", 0, 0, |b| {
                put_u32(b, 0); // pre_defined
                b.extend_from_slice(handler);
                put_zeros(b, 12); // reserved
                b.extend_from_slice(name);
            });
            put_box(b, b"minf", |b| {
                match t.handler {
                    // graphicsmode 0 (copy), opcolor 0; flags 1 as 8.4.5.2 says.
                    Handler::Video => put_full_box(b, b"vmhd", 0, 1, |b| put_zeros(b, 8)),
                    // balance 0, reserved.
                    Handler::Audio => put_full_box(b, b"smhd", 0, 0, |b| put_zeros(b, 4)),
                }
                put_box(b, b"dinf", |b| {
                    put_full_box(b, b"dref", 0, 0, |b| {
                        put_u32(b, 1); // entry_count
                                       // flags 1: the media is in this file.
                        put_full_box(b, b"url ", 0, 1, |_| {});
                    });
                });
                put_box(b, b"stbl", |b| {
                    put_full_box(b, b"stsd", 0, 0, |b| {
                        put_u32(b, 1); // entry_count
                        b.extend_from_slice(t.sample_entry);
                    });
                    put_full_box(b, b"stts", 0, 0, |b| put_u32(b, 0));
                    put_full_box(b, b"stsc", 0, 0, |b| put_u32(b, 0));
                    put_full_box(b, b"stsz", 0, 0, |b| put_zeros(b, 8));
                    put_full_box(b, b"stco", 0, 0, |b| put_u32(b, 0));
                });
            });
        });
    });
}

/// The visual sample entry fields (8.5.2.2, 12.1.3) that precede the
/// codec's configuration box.
pub(crate) fn put_visual_sample_entry(
    buf: &mut Vec<u8>,
    fourcc: &[u8; 4],
    width: u32,
    height: u32,
    config: impl FnOnce(&mut Vec<u8>),
) {
    put_box(buf, fourcc, |b| {
        put_zeros(b, 6); // reserved
        put_u16(b, 1); // data_reference_index
        put_zeros(b, 16); // pre_defined, reserved, pre_defined[3]
        put_u16(b, width.min(0xffff) as u16);
        put_u16(b, height.min(0xffff) as u16);
        put_u32(b, 0x0048_0000); // horizresolution 72 dpi
        put_u32(b, 0x0048_0000); // vertresolution 72 dpi
        put_u32(b, 0); // reserved
        put_u16(b, 1); // frame_count
        put_zeros(b, 32); // compressorname (empty Pascal string)
        put_u16(b, 0x0018); // depth
        put_u16(b, 0xffff); // pre_defined = -1
        config(b);
    });
}

/// The audio sample entry fields (8.5.2.2, 12.2.3, version 0) that precede
/// the codec's configuration box. `sample_rate` above 65535 is written as 0
/// (the configuration box carries the real rate).
pub(crate) fn put_audio_sample_entry(
    buf: &mut Vec<u8>,
    fourcc: &[u8; 4],
    channels: u16,
    sample_rate: u32,
    config: impl FnOnce(&mut Vec<u8>),
) {
    put_box(buf, fourcc, |b| {
        put_zeros(b, 6); // reserved
        put_u16(b, 1); // data_reference_index
        put_zeros(b, 8); // reserved (version 0)
        put_u16(b, channels);
        put_u16(b, 16); // samplesize
        put_u16(b, 0); // pre_defined
        put_u16(b, 0); // reserved
        let rate = if sample_rate > 0xffff { 0 } else { sample_rate };
        put_u32(b, rate << 16); // samplerate, 16.16
        config(b);
    });
}

/// One sample of a `trun`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunSample {
    pub duration: u32,
    pub size: u32,
    pub flags: u32,
    /// Composition time offset (pts - dts) in track timescale units.
    pub cto: i32,
}

/// Bytes [`fragment_header`] writes for `samples` samples.
pub(crate) fn fragment_header_len(video: bool, samples: usize, payload: u64) -> usize {
    let per_sample = if video { 16 } else { 8 };
    let tfhd = if video { 16 } else { 20 };
    let mdat = if payload + 8 > u64::from(u32::MAX) {
        16
    } else {
        8
    };
    8 + 16 + 8 + tfhd + 20 + 20 + per_sample * samples + mdat
}

/// A movie fragment header for one track's run of samples, followed by the
/// header of the `mdat` that holds them (ISO/IEC 14496-12 8.8.4 to 8.8.12):
/// `moof(mfhd, traf(tfhd, tfdt, trun))` + `mdat` size and type. The
/// samples' bytes, `payload` in all, follow it unchanged.
///
/// * `tfhd`: default-base-is-moof, so `trun`'s data offset counts from the
///   `moof`; audio also sets default sample flags (every sample is sync).
/// * `tfdt` version 1: 64-bit decode time, so no wrap in a long recording.
/// * `trun`: per-sample duration and size; video also per-sample flags and
///   composition offsets (version 1, signed, when any is negative).
pub(crate) fn fragment_header(
    sequence: u32,
    track_id: u32,
    decode_time: u64,
    video: bool,
    samples: &[RunSample],
    payload: u64,
) -> Vec<u8> {
    let len = fragment_header_len(video, samples.len(), payload);
    let mut buf = Vec::with_capacity(len);
    let mut data_offset_at = 0;
    put_box(&mut buf, b"moof", |b| {
        put_full_box(b, b"mfhd", 0, 0, |b| put_u32(b, sequence));
        put_box(b, b"traf", |b| {
            const DEFAULT_BASE_IS_MOOF: u32 = 0x02_0000;
            const DEFAULT_SAMPLE_FLAGS: u32 = 0x00_0020;
            let flags = DEFAULT_BASE_IS_MOOF | if video { 0 } else { DEFAULT_SAMPLE_FLAGS };
            put_full_box(b, b"tfhd", 0, flags, |b| {
                put_u32(b, track_id);
                if !video {
                    put_u32(b, SYNC_SAMPLE);
                }
            });
            put_full_box(b, b"tfdt", 1, 0, |b| {
                b.extend_from_slice(&decode_time.to_be_bytes());
            });
            const DATA_OFFSET: u32 = 0x001;
            const DURATION: u32 = 0x100;
            const SIZE: u32 = 0x200;
            const FLAGS: u32 = 0x400;
            const CTO: u32 = 0x800;
            let flags = DATA_OFFSET | DURATION | SIZE | if video { FLAGS | CTO } else { 0 };
            let version = u8::from(samples.iter().any(|s| s.cto < 0));
            put_full_box(b, b"trun", version, flags, |b| {
                put_u32(b, u32::try_from(samples.len()).unwrap_or(u32::MAX));
                data_offset_at = b.len();
                put_u32(b, 0); // data_offset, patched below
                for s in samples {
                    put_u32(b, s.duration);
                    put_u32(b, s.size);
                    if video {
                        put_u32(b, s.flags);
                        b.extend_from_slice(&s.cto.to_be_bytes());
                    }
                }
            });
        });
    });
    let moof_len = buf.len();
    if payload + 8 > u64::from(u32::MAX) {
        put_u32(&mut buf, 1); // size in largesize
        buf.extend_from_slice(b"mdat");
        buf.extend_from_slice(&(payload + 16).to_be_bytes());
    } else {
        put_u32(&mut buf, (payload + 8) as u32);
        buf.extend_from_slice(b"mdat");
    }
    // The first sample starts right after the mdat header.
    let offset = i32::try_from(buf.len()).unwrap_or(i32::MAX);
    buf[data_offset_at..data_offset_at + 4].copy_from_slice(&offset.to_be_bytes());
    debug_assert_eq!(buf.len(), len);
    debug_assert!(moof_len < buf.len());
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits a buffer into (type, body) of its top-level boxes.
    pub(crate) fn boxes(mut data: &[u8]) -> Vec<([u8; 4], &[u8])> {
        let mut out = Vec::new();
        while data.len() >= 8 {
            let size = u32::from_be_bytes(data[..4].try_into().unwrap()) as usize;
            let kind: [u8; 4] = data[4..8].try_into().unwrap();
            assert!(size >= 8 && size <= data.len(), "box {kind:?} size {size}");
            out.push((kind, &data[8..size]));
            data = &data[size..];
        }
        assert!(data.is_empty(), "trailing bytes");
        out
    }

    #[test]
    fn full_box_writes_size_version_and_flags() {
        let mut b = Vec::new();
        put_full_box(&mut b, b"test", 1, 0x020304, |b| b.push(9));
        assert_eq!(
            b,
            [
                0, 0, 0, 13, // size
                b't', b'e', b's', b't', // type
                1,    // version
                2, 3, 4, // flags
                9, // body
            ]
        );
    }

    #[test]
    fn audio_fragment_header_byte_exact() {
        let samples = [
            RunSample {
                duration: 1024,
                size: 6,
                flags: SYNC_SAMPLE,
                cto: 0,
            },
            RunSample {
                duration: 1024,
                size: 4,
                flags: SYNC_SAMPLE,
                cto: 0,
            },
        ];
        let h = fragment_header(7, 2, 0x1_0000_0000, false, &samples, 10);
        #[rustfmt::skip]
        let expected: Vec<u8> = vec![
            0, 0, 0, 108, b'm', b'o', b'o', b'f',
              0, 0, 0, 16, b'm', b'f', b'h', b'd', 0, 0, 0, 0,
                0, 0, 0, 7, // sequence_number
              0, 0, 0, 84, b't', b'r', b'a', b'f',
                0, 0, 0, 20, b't', b'f', b'h', b'd', 0, 0x02, 0x00, 0x20, // base-is-moof | default flags
                  0, 0, 0, 2, // track_ID
                  0x02, 0, 0, 0, // default_sample_flags: sync
                0, 0, 0, 20, b't', b'f', b'd', b't', 1, 0, 0, 0,
                  0, 0, 0, 1, 0, 0, 0, 0, // baseMediaDecodeTime 2^32
                0, 0, 0, 36, b't', b'r', b'u', b'n', 0, 0, 0x03, 0x01, // offset | duration | size
                  0, 0, 0, 2, // sample_count
                  0, 0, 0, 116, // data_offset: moof (108) + mdat header (8)
                  0, 0, 4, 0, 0, 0, 0, 6, // sample 1: duration, size
                  0, 0, 4, 0, 0, 0, 0, 4, // sample 2
            0, 0, 0, 18, b'm', b'd', b'a', b't', // mdat header: 8 + 10 bytes of samples
        ];
        assert_eq!(h, expected);
        assert_eq!(h.len(), fragment_header_len(false, 2, 10));
    }

    #[test]
    fn video_fragment_uses_signed_offsets_only_when_needed() {
        let mut samples = vec![
            RunSample {
                duration: 3000,
                size: 100,
                flags: SYNC_SAMPLE,
                cto: 6000,
            },
            RunSample {
                duration: 3000,
                size: 50,
                flags: NON_SYNC_SAMPLE,
                cto: 0,
            },
        ];
        let h = fragment_header(1, 1, 0, true, &samples, 150);
        let moof_len = h.len() - 8; // then the mdat header
        let moof = boxes(&h[..moof_len])[0].1;
        let traf = boxes(moof)[1].1;
        let trun = boxes(traf)[2].1;
        assert_eq!(trun[0], 0, "version 0");
        assert_eq!(&trun[1..4], &[0x00, 0x0f, 0x01]);
        assert_eq!(h.len(), fragment_header_len(true, 2, 150));
        samples[1].cto = -3000;
        let h = fragment_header(1, 1, 0, true, &samples, 150);
        let trun = boxes(boxes(boxes(&h[..h.len() - 8])[0].1)[1].1)[2].1;
        assert_eq!(trun[0], 1, "version 1: signed offsets");
        assert_eq!(&trun[trun.len() - 4..], &(-3000i32).to_be_bytes());
    }

    #[test]
    fn init_segment_has_ftyp_then_moov_with_every_track() {
        let entry = [0, 0, 0, 8, b't', b'e', b's', b't'];
        let init = init_segment(&[
            Trak {
                track_id: 1,
                handler: Handler::Video,
                timescale: 90_000,
                width: 640,
                height: 360,
                alternate_group: 0,
                sample_entry: &entry,
            },
            Trak {
                track_id: 257,
                handler: Handler::Audio,
                timescale: 48_000,
                width: 0,
                height: 0,
                alternate_group: 0,
                sample_entry: &entry,
            },
        ]);
        let top = boxes(&init);
        assert_eq!(top[0].0, *b"ftyp");
        assert_eq!(top[0].1, b"iso6\0\0\0\0iso6cmfcmp41");
        assert_eq!(top[1].0, *b"moov");
        let moov = boxes(top[1].1);
        let kinds: Vec<[u8; 4]> = moov.iter().map(|b| b.0).collect();
        assert_eq!(kinds, [*b"mvhd", *b"trak", *b"trak", *b"mvex"]);
        // mvhd: next_track_ID after the largest id.
        assert_eq!(&moov[0].1[moov[0].1.len() - 4..], &258u32.to_be_bytes());
        let trex: Vec<u32> = boxes(moov[3].1)
            .iter()
            .map(|(_, body)| u32::from_be_bytes(body[4..8].try_into().unwrap()))
            .collect();
        assert_eq!(trex, [1, 257]);
    }
}
