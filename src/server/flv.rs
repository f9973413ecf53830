//! FLV as HTTP-FLV and WebSocket-FLV players receive it (Adobe FLV file
//! format v10.1, annex E; the tag layout Enhanced RTMP keeps unchanged).
//!
//! A frame's FLV tag form is three pieces: an 11-byte tag header, the
//! payload (the same `Bytes` the RTMP form slices), and the 4-byte previous
//! tag size. The WebSocket form prefixes the frame header of one binary
//! message. Both are built once per frame and shared by every HTTP player
//! on every worker; nothing copies a payload.

use crate::wire::WireForm;
use bytes::{BufMut, Bytes, BytesMut};

/// FLV tag header size.
pub const TAG_HEADER_LEN: usize = 11;

/// The FLV file header and PreviousTagSize0 (13 bytes), announcing audio
/// and/or video.
pub fn file_header(audio: bool, video: bool) -> Bytes {
    let mut b = BytesMut::with_capacity(13);
    b.put_slice(b"FLV");
    b.put_u8(1); // version
    b.put_u8(u8::from(audio) << 2 | u8::from(video)); // TypeFlags
    b.put_u32(9); // DataOffset: header size
    b.put_u32(0); // PreviousTagSize0
    b.freeze()
}

/// The tag header for a payload of `len` bytes of `tag_type` (8, 9, 18).
fn tag_header(dst: &mut BytesMut, tag_type: u8, timestamp: u32, len: usize) {
    dst.put_u8(tag_type);
    dst.put_uint(len as u64, 3); // DataSize
    dst.put_uint(u64::from(timestamp & 0xFF_FFFF), 3); // Timestamp, low 24 bits
    dst.put_u8((timestamp >> 24) as u8); // TimestampExtended
    dst.put_uint(0, 3); // StreamID
}

/// A WebSocket frame header (RFC 6455 §5.2) for one unmasked binary message
/// of `len` bytes, sent by a server.
pub fn ws_binary_header(dst: &mut BytesMut, len: usize) {
    dst.put_u8(0x82); // FIN + opcode 2 (binary)
    if len < 126 {
        dst.put_u8(len as u8);
    } else if len <= 0xFFFF {
        dst.put_u8(126);
        dst.put_u16(len as u16);
    } else {
        dst.put_u8(127);
        dst.put_u64(len as u64);
    }
}

/// The FLV tag of one message, and optionally the WebSocket frame around it.
pub fn tag_form(tag_type: u8, timestamp: u32, payload: &Bytes, websocket: bool) -> WireForm {
    let tag_len = TAG_HEADER_LEN + payload.len();
    // One small allocation for everything but the payload.
    let mut head = BytesMut::with_capacity(10 + TAG_HEADER_LEN + 4);
    if websocket {
        ws_binary_header(&mut head, tag_len + 4);
    }
    tag_header(&mut head, tag_type, timestamp, payload.len());
    head.put_u32(tag_len as u32); // PreviousTagSize
    let mut head = head.freeze();
    let trailer = head.split_off(head.len() - 4);
    WireForm::new(vec![head, payload.clone(), trailer])
}

/// Bytes as one WebSocket binary message (for the FLV file header).
pub fn ws_wrap(bytes: Bytes) -> WireForm {
    let mut head = BytesMut::with_capacity(10);
    ws_binary_header(&mut head, bytes.len());
    WireForm::new(vec![head.freeze(), bytes])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_header_flags_audio_and_video() {
        assert_eq!(
            &file_header(true, true)[..],
            &[
                b'F', b'L', b'V', // signature
                0x01, // version
                0x05, // audio | video
                0x00, 0x00, 0x00, 0x09, // header size
                0x00, 0x00, 0x00, 0x00, // PreviousTagSize0
            ]
        );
        assert_eq!(file_header(false, true)[4], 0x01);
    }

    #[test]
    fn tag_form_wraps_the_payload_without_copying() {
        let payload = Bytes::from_static(&[0x17, 0x01, 0xAA]);
        let form = tag_form(9, 0x0123_4567, &payload, false);
        assert_eq!(
            form.to_vec(),
            [
                0x09, // video
                0x00, 0x00, 0x03, // DataSize
                0x23, 0x45, 0x67, // Timestamp low 24 bits
                0x01, // TimestampExtended
                0x00, 0x00, 0x00, // StreamID
                0x17, 0x01, 0xAA, // payload
                0x00, 0x00, 0x00, 0x0E, // PreviousTagSize = 11 + 3
            ]
        );
        assert_eq!(form.pieces()[1].as_ptr(), payload.as_ptr());
    }

    #[test]
    fn websocket_lengths_use_7_16_and_64_bit_forms() {
        for (len, header_len) in [
            (10usize, 2usize),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
        ] {
            let mut h = BytesMut::new();
            ws_binary_header(&mut h, len);
            assert_eq!(h.len(), header_len, "{len}");
            assert_eq!(h[0], 0x82);
        }
        let form = tag_form(8, 0, &Bytes::from_static(&[0xAF, 0x01]), true);
        let v = form.to_vec();
        assert_eq!(&v[..2], &[0x82, 17], "11 + 2 + 4 bytes in one message");
        assert_eq!(v.len(), 2 + 17);
    }
}
