//! From MP4 sample entries and samples to FLV tag payloads (what RTMP
//! carries): the legacy headers for H.264, AAC and MP3 (the forms every
//! RTMP player decodes), and the Enhanced RTMP v2 headers ("Enhanced
//! Video", "Enhanced Audio") for HEVC, AV1, VP9, Opus, FLAC, AC-3 and
//! E-AC-3. The decoder configuration boxes of MP4 are the bodies of the
//! sequence headers (docs/design.md, rule 10), except Opus, whose `dOps`
//! (big-endian) becomes the ID header RTMP carries (RFC 7845 5.1,
//! little-endian).
//!
//! A sample's bytes follow the header unchanged: MP4 and FLV carry the
//! same length-prefixed NAL units, OBUs and audio frames.

use super::boxes::{self, Cursor};
use crate::media::Codec;
use bytes::Bytes;

/// How a track's samples become FLV tag payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TagCodec {
    /// Legacy AVC (codec id 7): frame type, AVCPacketType, composition time.
    Avc,
    /// Enhanced video with this FourCC; `cto`: CodedFrames carries a
    /// composition time offset (HEVC).
    ExVideo { fourcc: [u8; 4], cto: bool },
    /// Legacy AAC (sound format 10).
    Aac,
    /// Legacy MP3 (sound format 2).
    Mp3,
    /// Enhanced audio with this FourCC.
    ExAudio { fourcc: [u8; 4] },
}

/// The bytes that go before a sample's data in its FLV tag payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagHeader {
    bytes: [u8; 8],
    len: u8,
}

impl TagHeader {
    fn new(parts: &[&[u8]]) -> Self {
        let mut bytes = [0u8; 8];
        let mut len = 0;
        for p in parts {
            bytes[len..len + p.len()].copy_from_slice(p);
            len += p.len();
        }
        TagHeader {
            bytes,
            len: len as u8,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Enhanced RTMP frame types (in bits 4..6 of the first byte).
const KEY: u8 = 1;
const INTER: u8 = 2;
/// Enhanced RTMP packet types.
const SEQUENCE_START: u8 = 0;
const CODED_FRAMES: u8 = 1;

fn si24(v: i32) -> [u8; 3] {
    let b = v.to_be_bytes();
    [b[1], b[2], b[3]]
}

/// The header of a coded frame: `sync` for a keyframe, `cto_ms` its
/// composition offset.
pub(crate) fn frame_header(tag: TagCodec, sync: bool, cto_ms: i32) -> TagHeader {
    let ft = if sync { KEY } else { INTER };
    match tag {
        TagCodec::Avc => TagHeader::new(&[&[(ft << 4) | 7, 1], &si24(cto_ms)]),
        TagCodec::ExVideo { fourcc, cto: true } => {
            TagHeader::new(&[&[0x80 | (ft << 4) | CODED_FRAMES], &fourcc, &si24(cto_ms)])
        }
        TagCodec::ExVideo { fourcc, cto: false } => {
            TagHeader::new(&[&[0x80 | (ft << 4) | CODED_FRAMES], &fourcc])
        }
        TagCodec::Aac => TagHeader::new(&[&[0xaf, 1]]),
        TagCodec::Mp3 => TagHeader::new(&[&[0x2f]]),
        TagCodec::ExAudio { fourcc } => TagHeader::new(&[&[0x90 | CODED_FRAMES], &fourcc]),
    }
}

/// The sequence header payload for a configuration record.
fn sequence_header(tag: TagCodec, record: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(8 + record.len());
    match tag {
        TagCodec::Avc => v.extend_from_slice(&[0x17, 0, 0, 0, 0]),
        TagCodec::ExVideo { fourcc, .. } => {
            v.push(0x80 | (KEY << 4) | SEQUENCE_START);
            v.extend_from_slice(&fourcc);
        }
        TagCodec::Aac => v.extend_from_slice(&[0xaf, 0]),
        TagCodec::Mp3 => v.push(0x2f),
        TagCodec::ExAudio { fourcc } => {
            v.push(0x90 | SEQUENCE_START);
            v.extend_from_slice(&fourcc);
        }
    }
    v.extend_from_slice(record);
    Bytes::from(v)
}

/// What a sample entry says about its track.
#[derive(Debug, Clone)]
pub(crate) struct Described {
    pub codec: Codec,
    pub tag: TagCodec,
    pub sequence_header: Option<Bytes>,
    pub width: u32,
    pub height: u32,
    pub sample_rate: u32,
    pub channels: u16,
}

/// The visual sample entry's fields before its child boxes (14496-12
/// 12.1.3): 78 bytes.
const VISUAL_ENTRY_LEN: usize = 78;

/// Describes a video track from its sample entry (`fourcc`, `body`):
/// `Err` says why it cannot be played.
pub(crate) fn describe_video(fourcc: [u8; 4], body: &[u8]) -> Result<Described, String> {
    let mut c = Cursor::new(body, "visual sample entry");
    let fields = c
        .take(VISUAL_ENTRY_LEN)
        .map_err(|_| "visual sample entry truncated".to_owned())?;
    let width = u32::from(u16::from_be_bytes([fields[24], fields[25]]));
    let height = u32::from(u16::from_be_bytes([fields[26], fields[27]]));
    let children = c.rest();
    let child = |kind: &'static [u8; 4]| -> Result<&[u8], String> {
        match boxes::find(children, kind, "sample entry") {
            Ok(Some(b)) => Ok(b),
            Ok(None) => Err(format!(
                "{} sample entry has no {} box",
                boxes::fourcc_str(&fourcc),
                boxes::fourcc_str(kind)
            )),
            Err(e) => Err(e.to_string()),
        }
    };
    let (codec, tag, record) = match &fourcc {
        b"avc1" | b"avc3" => (Codec::Avc, TagCodec::Avc, child(b"avcC")?),
        b"hvc1" | b"hev1" => (
            Codec::Hevc,
            TagCodec::ExVideo {
                fourcc: *b"hvc1",
                cto: true,
            },
            child(b"hvcC")?,
        ),
        b"av01" => (
            Codec::Av1,
            TagCodec::ExVideo {
                fourcc: *b"av01",
                cto: false,
            },
            child(b"av1C")?,
        ),
        b"vp09" => {
            // vpcC is a full box: the record follows version and flags.
            let b = child(b"vpcC")?;
            let record = b.get(4..).ok_or("vpcC truncated")?;
            (
                Codec::Vp9,
                TagCodec::ExVideo {
                    fourcc: *b"vp09",
                    cto: false,
                },
                record,
            )
        }
        other => {
            return Err(format!(
                "video codec {} cannot be played (H.264, HEVC, AV1 and VP9 can)",
                boxes::fourcc_str(other)
            ))
        }
    };
    if record.is_empty() {
        return Err(format!("{codec} decoder configuration is empty"));
    }
    Ok(Described {
        codec,
        tag,
        sequence_header: Some(sequence_header(tag, record)),
        width,
        height,
        sample_rate: 0,
        channels: 0,
    })
}

/// Describes an audio track from its sample entry.
pub(crate) fn describe_audio(fourcc: [u8; 4], body: &[u8]) -> Result<Described, String> {
    let mut c = Cursor::new(body, "audio sample entry");
    let short = |_| "audio sample entry truncated".to_owned();
    c.skip(8).map_err(short)?; // reserved, data_reference_index
    let version = c.u16().map_err(short)?;
    c.skip(6).map_err(short)?;
    let channels = c.u16().map_err(short)?;
    c.skip(6).map_err(short)?; // samplesize, pre_defined, reserved
    let mut sample_rate = c.u32().map_err(short)? >> 16;
    // QuickTime sound description versions 1 and 2 carry more fields.
    match version {
        1 => c.skip(16).map_err(short)?,
        2 => c.skip(36).map_err(short)?,
        _ => {}
    }
    let children = c.rest();
    let child = |kind: &'static [u8; 4]| -> Result<Option<&[u8]>, String> {
        boxes::find(children, kind, "sample entry").map_err(|e| e.to_string())
    };
    let (codec, tag, record): (Codec, TagCodec, Option<Vec<u8>>) = match &fourcc {
        b"mp4a" => {
            let esds = child(b"esds")?.ok_or("mp4a sample entry has no esds box")?;
            let (oti, dsi) = parse_esds(esds)?;
            match oti {
                0x40 | 0x66 | 0x67 | 0x68 => {
                    let dsi = dsi.ok_or("AAC esds has no AudioSpecificConfig")?;
                    if let Some(rate) = aac_rate(dsi) {
                        sample_rate = rate;
                    }
                    (Codec::Aac, TagCodec::Aac, Some(dsi.to_vec()))
                }
                0x69 | 0x6b => (Codec::Mp3, TagCodec::Mp3, None),
                other => {
                    return Err(format!(
                        "mp4a object type 0x{other:02x} cannot be played (AAC and MP3 can)"
                    ))
                }
            }
        }
        b".mp3" | b"mp3 " => (Codec::Mp3, TagCodec::Mp3, None),
        b"Opus" => {
            let dops = child(b"dOps")?.ok_or("Opus sample entry has no dOps box")?;
            sample_rate = 48_000;
            (
                Codec::Opus,
                TagCodec::ExAudio { fourcc: *b"Opus" },
                Some(opus_head(dops)?),
            )
        }
        b"fLaC" => {
            let dfla = child(b"dfLa")?.ok_or("fLaC sample entry has no dfLa box")?;
            let blocks = dfla.get(4..).ok_or("dfLa truncated")?;
            let mut record = b"fLaC".to_vec();
            record.extend_from_slice(blocks);
            (
                Codec::Flac,
                TagCodec::ExAudio { fourcc: *b"fLaC" },
                Some(record),
            )
        }
        b"ac-3" => (Codec::Ac3, TagCodec::ExAudio { fourcc: *b"ac-3" }, None),
        b"ec-3" => (Codec::Eac3, TagCodec::ExAudio { fourcc: *b"ec-3" }, None),
        other => {
            return Err(format!(
                "audio codec {} cannot be played (AAC, MP3, Opus, FLAC, AC-3 and E-AC-3 can)",
                boxes::fourcc_str(other)
            ))
        }
    };
    Ok(Described {
        codec,
        tag,
        sequence_header: record.map(|r| sequence_header(tag, &r)),
        width: 0,
        height: 0,
        sample_rate,
        channels,
    })
}

/// The sampling rate an AudioSpecificConfig names (14496-3 1.6.2.1).
fn aac_rate(asc: &[u8]) -> Option<u32> {
    const RATES: [u32; 13] = [
        96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
    ];
    let index = ((u16::from_be_bytes([*asc.first()?, *asc.get(1)?]) >> 7) & 0x0f) as usize;
    RATES.get(index).copied()
}

/// One descriptor of an `esds` (14496-1 7.2.2.2 and 8.3.3): tag and body.
fn descriptor<'a>(c: &mut Cursor<'a>) -> Result<(u8, &'a [u8]), String> {
    let short = |_| "esds descriptor truncated".to_owned();
    let tag = c.u8().map_err(short)?;
    let mut len = 0usize;
    for _ in 0..4 {
        let b = c.u8().map_err(short)?;
        len = (len << 7) | usize::from(b & 0x7f);
        if b & 0x80 == 0 {
            break;
        }
    }
    let body = c.take(len).map_err(short)?;
    Ok((tag, body))
}

/// The objectTypeIndication and DecoderSpecificInfo of an `esds` body.
fn parse_esds(esds: &[u8]) -> Result<(u8, Option<&[u8]>), String> {
    let short = |_| "esds truncated".to_owned();
    let mut c = Cursor::new(esds, "esds");
    c.version_flags().map_err(short)?;
    let (tag, es) = descriptor(&mut c)?;
    if tag != 0x03 {
        return Err(format!(
            "esds starts with descriptor tag {tag}, not ES_Descriptor"
        ));
    }
    let mut c = Cursor::new(es, "ES_Descriptor");
    c.skip(2).map_err(short)?; // ES_ID
    let flags = c.u8().map_err(short)?;
    if flags & 0x80 != 0 {
        c.skip(2).map_err(short)?; // dependsOn_ES_ID
    }
    if flags & 0x40 != 0 {
        let n = c.u8().map_err(short)?;
        c.skip(usize::from(n)).map_err(short)?; // URL
    }
    if flags & 0x20 != 0 {
        c.skip(2).map_err(short)?; // OCR_ES_Id
    }
    let (tag, dcd) = descriptor(&mut c)?;
    if tag != 0x04 {
        return Err(format!("no DecoderConfigDescriptor (tag {tag})"));
    }
    let mut c = Cursor::new(dcd, "DecoderConfigDescriptor");
    let oti = c.u8().map_err(short)?;
    c.skip(12).map_err(short)?; // streamType .. avgBitrate
    let dsi = if c.remaining() > 0 {
        let (tag, body) = descriptor(&mut c)?;
        (tag == 0x05).then_some(body)
    } else {
        None
    };
    Ok((oti, dsi))
}

/// The Opus ID header (RFC 7845 5.1, little-endian) from a `dOps` body
/// (Opus in ISOBMFF 4.3.2, big-endian).
fn opus_head(dops: &[u8]) -> Result<Vec<u8>, String> {
    let short = |_| "dOps truncated".to_owned();
    let mut c = Cursor::new(dops, "dOps");
    let version = c.u8().map_err(short)?;
    if version != 0 {
        return Err(format!("dOps version {version}"));
    }
    let channels = c.u8().map_err(short)?;
    let pre_skip = c.u16().map_err(short)?;
    let rate = c.u32().map_err(short)?;
    let gain = c.u16().map_err(short)?;
    let family = c.u8().map_err(short)?;
    let mut head = Vec::with_capacity(19 + 2 + usize::from(channels));
    head.extend_from_slice(b"OpusHead");
    head.push(1); // version
    head.push(channels);
    head.extend_from_slice(&pre_skip.to_le_bytes());
    head.extend_from_slice(&rate.to_le_bytes());
    head.extend_from_slice(&gain.to_le_bytes());
    head.push(family);
    if family != 0 {
        let table = c
            .take(2 + usize::from(channels))
            .map_err(|_| "dOps channel mapping truncated".to_owned())?;
        head.extend_from_slice(table);
    }
    Ok(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::{classify_audio, classify_video, FrameClass};

    #[test]
    fn headers_classify_as_the_frames_they_describe() {
        let cases = [
            (TagCodec::Avc, Codec::Avc),
            (
                TagCodec::ExVideo {
                    fourcc: *b"hvc1",
                    cto: true,
                },
                Codec::Hevc,
            ),
            (
                TagCodec::ExVideo {
                    fourcc: *b"av01",
                    cto: false,
                },
                Codec::Av1,
            ),
        ];
        for (tag, codec) in cases {
            let mut key = frame_header(tag, true, 40).as_slice().to_vec();
            key.extend_from_slice(&[0, 0, 0, 1, 0x65]);
            let info = classify_video(&key);
            assert_eq!((info.class, info.codec), (FrameClass::Keyframe, codec));
            let inter = frame_header(tag, false, 0);
            assert_eq!(classify_video(inter.as_slice()).class, FrameClass::Frame);
            let seq = sequence_header(tag, &[1, 2, 3]);
            let info = classify_video(&seq);
            assert_eq!(
                (info.class, info.codec),
                (FrameClass::SequenceHeader, codec)
            );
        }
        let aac = sequence_header(TagCodec::Aac, &[0x12, 0x10]);
        assert_eq!(classify_audio(&aac).class, FrameClass::SequenceHeader);
        let opus = sequence_header(TagCodec::ExAudio { fourcc: *b"Opus" }, b"OpusHead");
        let info = classify_audio(&opus);
        assert_eq!(
            (info.class, info.codec),
            (FrameClass::SequenceHeader, Codec::Opus)
        );
        let f = frame_header(TagCodec::ExAudio { fourcc: *b"Opus" }, true, 0);
        assert_eq!(classify_audio(f.as_slice()).codec, Codec::Opus);
    }

    #[test]
    fn avc_composition_time_is_signed_24_bit() {
        let h = frame_header(TagCodec::Avc, false, -33);
        assert_eq!(h.as_slice(), [0x27, 1, 0xff, 0xff, 0xdf]);
    }

    #[test]
    fn esds_gives_object_type_and_audio_specific_config() {
        #[rustfmt::skip]
        let esds = [
            0, 0, 0, 0, // version, flags
            0x03, 0x19, // ES_Descriptor, 25 bytes
              0, 1, 0, // ES_ID, flags
              0x04, 0x11, // DecoderConfigDescriptor, 17 bytes
                0x40, 0x15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // oti AAC, stream type...
                0x05, 0x02, 0x12, 0x10, // DecoderSpecificInfo: AAC-LC 44.1 kHz stereo
              0x06, 0x01, 0x02, // SLConfigDescriptor
        ];
        let (oti, dsi) = parse_esds(&esds).unwrap();
        assert_eq!((oti, dsi), (0x40, Some(&[0x12, 0x10][..])));
        assert_eq!(aac_rate(&[0x12, 0x10]), Some(44100));
        assert!(parse_esds(&esds[..10]).is_err());
    }

    #[test]
    fn dops_becomes_a_little_endian_opus_head() {
        let dops = [0, 2, 0x01, 0x38, 0, 0, 0xbb, 0x80, 0, 0, 0];
        let head = opus_head(&dops).unwrap();
        let mut want = b"OpusHead".to_vec();
        want.extend_from_slice(&[
            1, // version
            2, // channels
            0x38, 0x01, // pre-skip 312, little-endian
            0x80, 0xbb, 0, 0, // input rate 48000
            0, 0, // gain
            0, // mapping family
        ]);
        assert_eq!(head, want);
        assert!(opus_head(&dops[..5]).is_err());
    }
}
