//! AMF0 (Action Message Format 0, Adobe's amf0-file-format-specification,
//! December 2007) and the AMF3 values (Adobe's amf3_spec_121207, January 2013)
//! an AMF0 stream may switch into with the AVM+ marker (0x11, AMF0 spec 3.1).
//! RTMP commands (RTMP 1.0 spec section 7) and `@setDataFrame` metadata are
//! AMF0; a type-17 command message is AMF0 whose complex values may be AMF3.
//!
//! # Decoding untrusted input
//!
//! [`decode_all`] reads from a `&[u8]` cursor and never trusts a declared size:
//!
//! * a string, XML or ByteArray length longer than the remaining input is an
//!   error before anything is allocated;
//! * an element count (AMF0 strict array, AMF3 dense array, vector,
//!   dictionary, sealed trait members) is checked against what the remaining
//!   bytes could possibly hold (each element takes at least one byte, a
//!   `Vector.<int>` element four) and against [`AmfLimits::max_values`] before
//!   any `Vec` is sized from it; an AMF0 ECMA array's count is only a hint
//!   and is ignored;
//! * nesting is checked against [`AmfLimits::max_depth`] *before* recursing,
//!   so 100,000 nested arrays are an error, never a stack overflow;
//! * every marker decoded (and every `Vector.<int|uint|double>` element) counts
//!   towards [`AmfLimits::max_values`];
//! * AMF0 references (0x07) are kept as an index (checked to point at a
//!   complex value already begun in this call), never copied;
//! * AMF3 has three reference tables (strings, objects, traits), fresh for
//!   every value that follows an AVM+ switch marker. [`Amf3Value`] has no
//!   reference variant, so a reference is resolved into a copy. The tables
//!   hold slices of the input and, for objects, the byte range each was
//!   decoded from; an object reference decodes that range again (the tables
//!   only grow, so it sees them as they were). A copy's values count towards
//!   `max_values` and its nesting towards `max_depth` where it lands, and the
//!   bytes copied or decoded again are held to [`AMF3_COPY_RATIO`] times the
//!   input, so `[a, a]`-style doubling cannot amplify a small input. A
//!   reference to an object still being decoded (a cycle) is an error.
//!
//! Malformed input of any kind is an [`AmfError`], never a panic: there is no
//! indexing, no `unwrap` of input-derived values and no unchecked arithmetic
//! on them below.
//!
//! # Encoding
//!
//! [`encode`] writes AMF0; an [`Amf0Value::Amf3`] is written as the 0x11
//! marker followed by an AMF3 encoding without reference tables (every string,
//! trait and object inline). See [`encode`] for the few values AMF cannot
//! represent exactly.

use bytes::{BufMut, BytesMut};
use std::fmt;
use std::rc::Rc;

/// An AMF0 value. Strings are decoded as UTF-8 (lossily: invalid sequences
/// become U+FFFD, since encoders in the wild send Latin-1 titles).
#[derive(Debug, Clone, PartialEq)]
pub enum Amf0Value {
    Number(f64),
    Boolean(bool),
    String(String),
    /// Anonymous object: ordered properties.
    Object(Vec<(String, Amf0Value)>),
    Null,
    Undefined,
    /// A reference to the n-th complex value (object, ECMA array, strict
    /// array, typed object) decoded before it in the same message. Kept as an
    /// index, never resolved by copying, so reference chains cannot amplify.
    Reference(u16),
    EcmaArray(Vec<(String, Amf0Value)>),
    StrictArray(Vec<Amf0Value>),
    Date {
        millis: f64,
        timezone: i16,
    },
    LongString(String),
    XmlDocument(String),
    TypedObject {
        class: String,
        properties: Vec<(String, Amf0Value)>,
    },
    /// A value that followed the AVM+ switch marker.
    Amf3(Amf3Value),
}

/// An AMF3 value (Adobe's amf3_spec_121207).
#[derive(Debug, Clone, PartialEq)]
pub enum Amf3Value {
    Undefined,
    Null,
    Boolean(bool),
    Integer(i32),
    Double(f64),
    String(String),
    XmlDocument(String),
    Date(f64),
    Array {
        assoc: Vec<(String, Amf3Value)>,
        dense: Vec<Amf3Value>,
    },
    Object {
        class: String,
        sealed: Vec<(String, Amf3Value)>,
        dynamic: Vec<(String, Amf3Value)>,
    },
    Xml(String),
    ByteArray(Vec<u8>),
    VectorInt(Vec<i32>),
    VectorUint(Vec<u32>),
    VectorDouble(Vec<f64>),
    VectorObject {
        class: String,
        items: Vec<Amf3Value>,
    },
    Dictionary(Vec<(Amf3Value, Amf3Value)>),
}

/// Bounds on what one decode call may build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmfLimits {
    /// Deepest nesting of objects/arrays.
    pub max_depth: usize,
    /// Most values (of any kind, at any depth) in one decode call.
    pub max_values: usize,
}

impl Default for AmfLimits {
    fn default() -> Self {
        Self {
            max_depth: 32,
            max_values: 65_536,
        }
    }
}

/// Bytes that AMF3 reference resolution may copy (strings and trait names)
/// or decode again (objects) in one [`decode_all`] call, as a multiple of the
/// input length: [`Amf3Value`] holds copies, not references. Real encoders reuse
/// a class name or a few keys per object, a small multiple of the input; a
/// hostile `[a, a]` chain doubles per level and hits this at once.
pub const AMF3_COPY_RATIO: usize = 16;

/// Why [`decode_all`] rejected its input. Every message names the offending
/// value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmfError {
    /// The input ended inside a fixed-size field.
    Truncated { needed: usize, remaining: usize },
    /// A string, XML or ByteArray length is longer than the rest of the input.
    LengthBeyondInput {
        what: &'static str,
        len: usize,
        remaining: usize,
    },
    /// An element count is more than the rest of the input could hold.
    CountBeyondInput {
        what: &'static str,
        count: usize,
        remaining: usize,
    },
    /// A type marker this format does not define.
    UnknownMarker {
        format: &'static str,
        marker: u8,
        offset: usize,
    },
    /// An AMF0 marker that is defined but reserved or not supported
    /// (movieclip, recordset).
    UnsupportedMarker {
        marker: u8,
        name: &'static str,
        offset: usize,
    },
    /// The AMF0 object-end marker (0x09) where a value was expected.
    UnexpectedObjectEnd { offset: usize },
    /// Objects/arrays nested deeper than [`AmfLimits::max_depth`].
    TooDeep { max: usize },
    /// More values than [`AmfLimits::max_values`].
    TooManyValues { max: usize },
    /// A reference index at or beyond the end of its table.
    BadReference {
        table: &'static str,
        index: usize,
        len: usize,
    },
    /// An AMF3 object reference to an object whose members are still being
    /// decoded (a cycle, which a copied value cannot represent).
    CyclicReference { index: usize },
    /// An AMF3 object with externalizable traits: its body is in a
    /// class-specific format that cannot be skipped.
    Externalizable { class: String },
    /// AMF3 references copied more than [`AMF3_COPY_RATIO`] × input bytes.
    ReferenceExpansion { bytes: usize, max: usize },
}

impl fmt::Display for AmfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AmfError::Truncated { needed, remaining } => write!(
                f,
                "truncated: needed {needed} bytes, only {remaining} remain"
            ),
            AmfError::LengthBeyondInput {
                what,
                len,
                remaining,
            } => write!(f, "{what} length {len} exceeds remaining {remaining} bytes"),
            AmfError::CountBeyondInput {
                what,
                count,
                remaining,
            } => write!(
                f,
                "{what} count {count} exceeds what the remaining {remaining} bytes can hold"
            ),
            AmfError::UnknownMarker {
                format,
                marker,
                offset,
            } => write!(
                f,
                "unknown {format} marker 0x{marker:02x} at offset {offset}"
            ),
            AmfError::UnsupportedMarker {
                marker,
                name,
                offset,
            } => write!(
                f,
                "AMF0 {name} marker 0x{marker:02x} at offset {offset} is not supported"
            ),
            AmfError::UnexpectedObjectEnd { offset } => {
                write!(f, "object-end marker at offset {offset} outside an object")
            }
            AmfError::TooDeep { max } => write!(f, "nesting deeper than {max}"),
            AmfError::TooManyValues { max } => write!(f, "more than {max} values"),
            AmfError::BadReference { table, index, len } => write!(
                f,
                "{table} reference {index} beyond a table of {len} entries"
            ),
            AmfError::CyclicReference { index } => write!(
                f,
                "AMF3 object reference {index} points at an object still being decoded"
            ),
            AmfError::Externalizable { class } => {
                write!(f, "externalizable class {class:?} not supported")
            }
            AmfError::ReferenceExpansion { bytes, max } => write!(
                f,
                "AMF3 references copy {bytes} bytes, more than the {max} allowed"
            ),
        }
    }
}
impl std::error::Error for AmfError {}

/// Decodes every AMF0 value in `input`, in order.
///
/// An empty input is an empty list. AMF0 references (0x07) index the complex
/// values (objects, ECMA arrays, strict arrays, typed objects) begun earlier
/// in this call, counted when their marker is read, so an object may refer to
/// itself or an enclosing object as the spec allows.
pub fn decode_all(input: &[u8], limits: &AmfLimits) -> Result<Vec<Amf0Value>, AmfError> {
    let mut decoder = Decoder::new(input, limits);
    let mut values = Vec::new();
    while !decoder.r.is_empty() {
        values.push(decoder.amf0_value()?);
    }
    Ok(values)
}

/// Appends the AMF0 encoding of `value` to `dst`.
///
/// What AMF cannot represent exactly:
/// * a `String` longer than 65,535 bytes is written as a long string (0x0C),
///   so it decodes as `LongString`;
/// * a property name or class name longer than 65,535 bytes, or an AMF0 long
///   string / XML longer than 4 GiB, is cut to fit its length field (at a byte
///   boundary: the decoder replaces a split character with U+FFFD);
/// * inside AMF3: an `Integer` outside the 29-bit range is written as a
///   double; lengths and counts are cut at 2^28 − 1; an associative-array or
///   dynamic member with an empty name is skipped (the empty name ends the
///   member list on the wire).
pub fn encode(value: &Amf0Value, dst: &mut BytesMut) {
    match value {
        Amf0Value::Number(n) => {
            dst.put_u8(amf0::NUMBER);
            dst.put_f64(*n);
        }
        Amf0Value::Boolean(b) => {
            dst.put_u8(amf0::BOOLEAN);
            dst.put_u8(u8::from(*b));
        }
        Amf0Value::String(s) if s.len() <= usize::from(u16::MAX) => {
            dst.put_u8(amf0::STRING);
            put_utf8_u16(dst, s);
        }
        Amf0Value::String(s) | Amf0Value::LongString(s) => {
            dst.put_u8(amf0::LONG_STRING);
            put_utf8_u32(dst, s);
        }
        Amf0Value::Object(props) => {
            dst.put_u8(amf0::OBJECT);
            put_properties(dst, props);
        }
        Amf0Value::Null => dst.put_u8(amf0::NULL),
        Amf0Value::Undefined => dst.put_u8(amf0::UNDEFINED),
        Amf0Value::Reference(index) => {
            dst.put_u8(amf0::REFERENCE);
            dst.put_u16(*index);
        }
        Amf0Value::EcmaArray(props) => {
            dst.put_u8(amf0::ECMA_ARRAY);
            dst.put_u32(u32::try_from(props.len()).unwrap_or(u32::MAX));
            put_properties(dst, props);
        }
        Amf0Value::StrictArray(items) => {
            // The count field cannot say more than u32::MAX: write no more.
            let count = u32::try_from(items.len()).unwrap_or(u32::MAX);
            dst.put_u8(amf0::STRICT_ARRAY);
            dst.put_u32(count);
            for item in items.iter().take(count as usize) {
                encode(item, dst);
            }
        }
        Amf0Value::Date { millis, timezone } => {
            dst.put_u8(amf0::DATE);
            dst.put_f64(*millis);
            dst.put_i16(*timezone);
        }
        Amf0Value::XmlDocument(s) => {
            dst.put_u8(amf0::XML_DOCUMENT);
            put_utf8_u32(dst, s);
        }
        Amf0Value::TypedObject { class, properties } => {
            dst.put_u8(amf0::TYPED_OBJECT);
            put_utf8_u16(dst, class);
            put_properties(dst, properties);
        }
        Amf0Value::Amf3(v) => {
            dst.put_u8(amf0::AVMPLUS);
            encode_amf3(v, dst);
        }
    }
}

/// Appends the AMF3 encoding of `value` (without the AMF0 0x11 switch
/// marker) to `dst`. No reference tables are used: every string, trait and
/// object is written inline, which every AMF3 decoder reads.
pub fn encode_amf3(value: &Amf3Value, dst: &mut BytesMut) {
    match value {
        Amf3Value::Undefined => dst.put_u8(amf3::UNDEFINED),
        Amf3Value::Null => dst.put_u8(amf3::NULL),
        Amf3Value::Boolean(false) => dst.put_u8(amf3::FALSE),
        Amf3Value::Boolean(true) => dst.put_u8(amf3::TRUE),
        Amf3Value::Integer(i) if (amf3::INT_MIN..=amf3::INT_MAX).contains(i) => {
            dst.put_u8(amf3::INTEGER);
            // Two's complement in 29 bits; the decoder sign-extends it back.
            put_u29(dst, (*i as u32) & amf3::U29_MAX);
        }
        Amf3Value::Integer(i) => {
            dst.put_u8(amf3::DOUBLE);
            dst.put_f64(f64::from(*i));
        }
        Amf3Value::Double(d) => {
            dst.put_u8(amf3::DOUBLE);
            dst.put_f64(*d);
        }
        Amf3Value::String(s) => {
            dst.put_u8(amf3::STRING);
            put_amf3_utf8(dst, s);
        }
        Amf3Value::XmlDocument(s) => {
            dst.put_u8(amf3::XML_DOC);
            put_amf3_utf8(dst, s);
        }
        Amf3Value::Xml(s) => {
            dst.put_u8(amf3::XML);
            put_amf3_utf8(dst, s);
        }
        Amf3Value::Date(millis) => {
            dst.put_u8(amf3::DATE);
            put_u29(dst, 1); // inline, no other bits
            dst.put_f64(*millis);
        }
        Amf3Value::Array { assoc, dense } => {
            dst.put_u8(amf3::ARRAY);
            let count = put_amf3_inline_count(dst, dense.len());
            put_amf3_members(dst, assoc);
            for item in dense.iter().take(count) {
                encode_amf3(item, dst);
            }
        }
        Amf3Value::Object {
            class,
            sealed,
            dynamic,
        } => {
            dst.put_u8(amf3::OBJECT);
            let count = sealed.len().min(amf3::MAX_SEALED);
            let is_dynamic = !dynamic.is_empty();
            // U29O-traits: sealed count << 4 | dynamic << 3 | 0b011 (inline
            // traits of an inline object, not externalizable).
            let header = ((count as u32) << 4) | (u32::from(is_dynamic) << 3) | 0b011;
            put_u29(dst, header);
            put_amf3_utf8(dst, class);
            for (name, _) in sealed.iter().take(count) {
                put_amf3_utf8(dst, name);
            }
            for (_, v) in sealed.iter().take(count) {
                encode_amf3(v, dst);
            }
            if is_dynamic {
                put_amf3_members(dst, dynamic);
            }
        }
        Amf3Value::ByteArray(bytes) => {
            dst.put_u8(amf3::BYTE_ARRAY);
            let len = put_amf3_inline_count(dst, bytes.len());
            dst.put_slice(bytes.get(..len).unwrap_or_default());
        }
        Amf3Value::VectorInt(items) => {
            dst.put_u8(amf3::VECTOR_INT);
            let count = put_amf3_inline_count(dst, items.len());
            dst.put_u8(0); // not fixed-length
            for i in items.iter().take(count) {
                dst.put_i32(*i);
            }
        }
        Amf3Value::VectorUint(items) => {
            dst.put_u8(amf3::VECTOR_UINT);
            let count = put_amf3_inline_count(dst, items.len());
            dst.put_u8(0);
            for u in items.iter().take(count) {
                dst.put_u32(*u);
            }
        }
        Amf3Value::VectorDouble(items) => {
            dst.put_u8(amf3::VECTOR_DOUBLE);
            let count = put_amf3_inline_count(dst, items.len());
            dst.put_u8(0);
            for d in items.iter().take(count) {
                dst.put_f64(*d);
            }
        }
        Amf3Value::VectorObject { class, items } => {
            dst.put_u8(amf3::VECTOR_OBJECT);
            let count = put_amf3_inline_count(dst, items.len());
            dst.put_u8(0);
            put_amf3_utf8(dst, class);
            for item in items.iter().take(count) {
                encode_amf3(item, dst);
            }
        }
        Amf3Value::Dictionary(entries) => {
            dst.put_u8(amf3::DICTIONARY);
            let count = put_amf3_inline_count(dst, entries.len());
            dst.put_u8(0); // strong keys
            for (k, v) in entries.iter().take(count) {
                encode_amf3(k, dst);
                encode_amf3(v, dst);
            }
        }
    }
}

impl Amf0Value {
    /// The string inside String, LongString or an AMF3 string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf0Value::String(s) | Amf0Value::LongString(s) => Some(s),
            Amf0Value::Amf3(v) => v.as_str(),
            _ => None,
        }
    }
    /// The number inside Number or an AMF3 double/integer.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Amf0Value::Number(n) => Some(*n),
            Amf0Value::Amf3(v) => v.as_number(),
            _ => None,
        }
    }
    /// The boolean inside Boolean or an AMF3 boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Amf0Value::Boolean(b) => Some(*b),
            Amf0Value::Amf3(v) => v.as_bool(),
            _ => None,
        }
    }
    /// A property of an Object, EcmaArray or TypedObject (first match).
    ///
    /// This covers the AMF0 containers only; for an AMF3 object or
    /// associative array behind the switch marker use [`Self::get_amf3`].
    pub fn get(&self, key: &str) -> Option<&Amf0Value> {
        self.properties()?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
    /// A member of an AMF3 object (sealed, then dynamic) or a named entry of
    /// an AMF3 array, behind the switch marker (first match).
    pub fn get_amf3(&self, key: &str) -> Option<&Amf3Value> {
        match self {
            Amf0Value::Amf3(v) => v.get(key),
            _ => None,
        }
    }
    /// The ordered properties of an Object, EcmaArray or TypedObject.
    pub fn properties(&self) -> Option<&[(String, Amf0Value)]> {
        match self {
            Amf0Value::Object(props)
            | Amf0Value::EcmaArray(props)
            | Amf0Value::TypedObject {
                properties: props, ..
            } => Some(props),
            _ => None,
        }
    }
    /// Builds an Object from (key, value) pairs.
    pub fn object<K: Into<String>>(props: impl IntoIterator<Item = (K, Amf0Value)>) -> Self {
        Amf0Value::Object(props.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
    /// Shorthand for `Amf0Value::String(s.into())`.
    pub fn string(s: impl Into<String>) -> Self {
        Amf0Value::String(s.into())
    }
}

impl Amf3Value {
    /// The string inside String.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf3Value::String(s) => Some(s),
            _ => None,
        }
    }
    /// The number inside Double or Integer.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Amf3Value::Double(d) => Some(*d),
            Amf3Value::Integer(i) => Some(f64::from(*i)),
            _ => None,
        }
    }
    /// The boolean inside Boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Amf3Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }
    /// A member of an Object (sealed, then dynamic) or a named entry of an
    /// Array's associative part (first match).
    pub fn get(&self, key: &str) -> Option<&Amf3Value> {
        fn find<'v>(members: &'v [(String, Amf3Value)], key: &str) -> Option<&'v Amf3Value> {
            members.iter().find(|(k, _)| k == key).map(|(_, v)| v)
        }
        match self {
            Amf3Value::Object {
                sealed, dynamic, ..
            } => find(sealed, key).or_else(|| find(dynamic, key)),
            Amf3Value::Array { assoc, .. } => find(assoc, key),
            _ => None,
        }
    }
}

/// AMF0 type markers (AMF0 spec 2.1).
mod amf0 {
    pub(super) const NUMBER: u8 = 0x00;
    pub(super) const BOOLEAN: u8 = 0x01;
    pub(super) const STRING: u8 = 0x02;
    pub(super) const OBJECT: u8 = 0x03;
    pub(super) const MOVIECLIP: u8 = 0x04;
    pub(super) const NULL: u8 = 0x05;
    pub(super) const UNDEFINED: u8 = 0x06;
    pub(super) const REFERENCE: u8 = 0x07;
    pub(super) const ECMA_ARRAY: u8 = 0x08;
    pub(super) const OBJECT_END: u8 = 0x09;
    pub(super) const STRICT_ARRAY: u8 = 0x0A;
    pub(super) const DATE: u8 = 0x0B;
    pub(super) const LONG_STRING: u8 = 0x0C;
    pub(super) const UNSUPPORTED: u8 = 0x0D;
    pub(super) const RECORDSET: u8 = 0x0E;
    pub(super) const XML_DOCUMENT: u8 = 0x0F;
    pub(super) const TYPED_OBJECT: u8 = 0x10;
    pub(super) const AVMPLUS: u8 = 0x11;
}

/// AMF3 type markers (AMF3 spec 3.1) and U29 bounds (spec 1.3.1).
mod amf3 {
    pub(super) const UNDEFINED: u8 = 0x00;
    pub(super) const NULL: u8 = 0x01;
    pub(super) const FALSE: u8 = 0x02;
    pub(super) const TRUE: u8 = 0x03;
    pub(super) const INTEGER: u8 = 0x04;
    pub(super) const DOUBLE: u8 = 0x05;
    pub(super) const STRING: u8 = 0x06;
    pub(super) const XML_DOC: u8 = 0x07;
    pub(super) const DATE: u8 = 0x08;
    pub(super) const ARRAY: u8 = 0x09;
    pub(super) const OBJECT: u8 = 0x0A;
    pub(super) const XML: u8 = 0x0B;
    pub(super) const BYTE_ARRAY: u8 = 0x0C;
    pub(super) const VECTOR_INT: u8 = 0x0D;
    pub(super) const VECTOR_UINT: u8 = 0x0E;
    pub(super) const VECTOR_DOUBLE: u8 = 0x0F;
    pub(super) const VECTOR_OBJECT: u8 = 0x10;
    pub(super) const DICTIONARY: u8 = 0x11;

    /// Largest U29.
    pub(super) const U29_MAX: u32 = 0x1FFF_FFFF;
    /// Largest length or count a U29 with a flag bit can carry.
    pub(super) const MAX_INLINE_COUNT: usize = (U29_MAX >> 1) as usize;
    /// Largest sealed-member count a U29O-traits can carry.
    pub(super) const MAX_SEALED: usize = (U29_MAX >> 4) as usize;
    /// The range of an AMF3 integer (signed 29-bit).
    pub(super) const INT_MIN: i32 = -(1 << 28);
    pub(super) const INT_MAX: i32 = (1 << 28) - 1;
}

// ---------------------------------------------------------------------------
// Encoding helpers

/// Writes a UTF-8-empty-or-u16-length string, cut to 65,535 bytes.
fn put_utf8_u16(dst: &mut BytesMut, s: &str) {
    let bytes = s.as_bytes();
    let len = bytes.len().min(usize::from(u16::MAX));
    dst.put_u16(len as u16);
    dst.put_slice(bytes.get(..len).unwrap_or_default());
}

/// Writes a u32-length string, cut to u32::MAX bytes.
fn put_utf8_u32(dst: &mut BytesMut, s: &str) {
    let bytes = s.as_bytes();
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    dst.put_u32(len);
    dst.put_slice(bytes.get(..len as usize).unwrap_or_default());
}

/// Writes AMF0 properties and the object-end marker (00 00 09).
fn put_properties(dst: &mut BytesMut, props: &[(String, Amf0Value)]) {
    for (key, value) in props {
        put_utf8_u16(dst, key);
        encode(value, dst);
    }
    dst.put_u16(0);
    dst.put_u8(amf0::OBJECT_END);
}

/// Writes a U29 (AMF3 spec 1.3.1): 1-4 bytes, 7 bits per byte with a
/// continuation bit, all 8 bits in the fourth.
fn put_u29(dst: &mut BytesMut, v: u32) {
    let v = v & amf3::U29_MAX;
    if v < 0x80 {
        dst.put_u8(v as u8);
    } else if v < 0x4000 {
        dst.put_u8(((v >> 7) as u8) | 0x80);
        dst.put_u8((v & 0x7F) as u8);
    } else if v < 0x20_0000 {
        dst.put_u8(((v >> 14) as u8) | 0x80);
        dst.put_u8((((v >> 7) & 0x7F) as u8) | 0x80);
        dst.put_u8((v & 0x7F) as u8);
    } else {
        dst.put_u8(((v >> 22) as u8) | 0x80);
        dst.put_u8((((v >> 15) & 0x7F) as u8) | 0x80);
        dst.put_u8((((v >> 8) & 0x7F) as u8) | 0x80);
        dst.put_u8((v & 0xFF) as u8);
    }
}

/// Writes an inline U29 length/count (`count << 1 | 1`), cut to what a U29
/// can carry; returns the count written.
fn put_amf3_inline_count(dst: &mut BytesMut, count: usize) -> usize {
    let count = count.min(amf3::MAX_INLINE_COUNT);
    put_u29(dst, ((count as u32) << 1) | 1);
    count
}

/// Writes an inline AMF3 UTF-8-vr.
fn put_amf3_utf8(dst: &mut BytesMut, s: &str) {
    let len = put_amf3_inline_count(dst, s.len());
    dst.put_slice(s.as_bytes().get(..len).unwrap_or_default());
}

/// Writes named AMF3 members and the empty-string terminator; members with
/// an empty name cannot be written (the empty name is the terminator).
fn put_amf3_members(dst: &mut BytesMut, members: &[(String, Amf3Value)]) {
    for (name, value) in members.iter().filter(|(name, _)| !name.is_empty()) {
        put_amf3_utf8(dst, name);
        encode_amf3(value, dst);
    }
    put_u29(dst, 1); // UTF-8-empty
}

// ---------------------------------------------------------------------------
// Decoding

/// A cursor over the input. Every read checks what remains.
struct Reader<'a> {
    buf: &'a [u8],
    total: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            total: buf.len(),
        }
    }
    /// A cursor over `input[start..end]` whose offsets count from the start
    /// of `input`.
    fn span(input: &'a [u8], start: usize, end: usize) -> Self {
        Self {
            buf: input.get(start..end).unwrap_or_default(),
            total: end,
        }
    }
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    fn remaining(&self) -> usize {
        self.buf.len()
    }
    /// Offset of the next byte from the start of the input.
    fn offset(&self) -> usize {
        self.total.saturating_sub(self.buf.len())
    }
    fn peek(&self) -> Option<u8> {
        self.buf.first().copied()
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], AmfError> {
        match self.buf.split_first_chunk::<N>() {
            Some((head, rest)) => {
                self.buf = rest;
                Ok(*head)
            }
            None => Err(AmfError::Truncated {
                needed: N,
                remaining: self.buf.len(),
            }),
        }
    }
    fn u8(&mut self) -> Result<u8, AmfError> {
        self.array::<1>().map(|[b]| b)
    }
    fn u16(&mut self) -> Result<u16, AmfError> {
        self.array().map(u16::from_be_bytes)
    }
    fn i16(&mut self) -> Result<i16, AmfError> {
        self.array().map(i16::from_be_bytes)
    }
    fn u32(&mut self) -> Result<u32, AmfError> {
        self.array().map(u32::from_be_bytes)
    }
    fn f64(&mut self) -> Result<f64, AmfError> {
        self.array().map(f64::from_be_bytes)
    }
    /// `len` bytes, or an error naming `what` if fewer remain.
    fn take(&mut self, what: &'static str, len: usize) -> Result<&'a [u8], AmfError> {
        match self.buf.split_at_checked(len) {
            Some((head, rest)) => {
                self.buf = rest;
                Ok(head)
            }
            None => Err(AmfError::LengthBeyondInput {
                what,
                len,
                remaining: self.buf.len(),
            }),
        }
    }
    /// A U29 (AMF3 spec 1.3.1).
    fn u29(&mut self) -> Result<u32, AmfError> {
        let mut v: u32 = 0;
        for _ in 0..3 {
            let b = self.u8()?;
            if b & 0x80 == 0 {
                return Ok((v << 7) | u32::from(b));
            }
            v = (v << 7) | u32::from(b & 0x7F);
        }
        // Three continuation bytes gave 21 bits; the fourth adds all 8.
        let b = self.u8()?;
        Ok((v << 8) | u32::from(b))
    }
}

/// A string from the wire, never longer than its bytes: each invalid UTF-8
/// sequence becomes `?`. (`from_utf8_lossy` writes U+FFFD, three bytes, for
/// each invalid byte: a hostile string of 0xFF bytes would triple in memory,
/// and a reply echoing it would outgrow what the wire can carry;
/// docs/hardening.md case 43.)
fn lossy(bytes: &[u8]) -> String {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        if !chunk.invalid().is_empty() {
            out.push('?');
        }
    }
    out
}

/// u32 (or U29) from the wire as usize, saturating on 16-bit targets.
fn to_usize(n: u32) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// An AMF3 trait (class name, sealed member names, dynamic flag), kept as
/// slices of the input.
struct Traits<'a> {
    class: &'a [u8],
    sealed: Vec<&'a [u8]>,
    dynamic: bool,
}

impl Traits<'_> {
    fn name_bytes(&self) -> usize {
        self.sealed
            .iter()
            .fold(self.class.len(), |sum, n| sum.saturating_add(n.len()))
    }
}

/// An entry of the AMF3 object reference table.
enum ObjectSlot {
    /// Its marker is at `start` and its members are being decoded; a
    /// reference to it is a cycle.
    Pending { start: usize },
    /// Decoded from `input[start..end]` (marker included); a reference to
    /// it decodes that range again.
    Done { start: usize, end: usize },
}

/// The three AMF3 reference tables, fresh for each value after an AVM+ switch.
#[derive(Default)]
struct Amf3Tables<'a> {
    strings: Vec<&'a [u8]>,
    traits: Vec<Rc<Traits<'a>>>,
    objects: Vec<ObjectSlot>,
}

impl Amf3Tables<'_> {
    fn clear(&mut self) {
        self.strings.clear();
        self.traits.clear();
        self.objects.clear();
    }
}

struct Decoder<'a, 'l> {
    input: &'a [u8],
    r: Reader<'a>,
    limits: &'l AmfLimits,
    /// Containers currently open (either format).
    depth: usize,
    /// Values decoded so far (see [`AmfLimits::max_values`]).
    values: usize,
    /// AMF0 complex values begun so far: the AMF0 reference table's length.
    amf0_complex: usize,
    amf3: Amf3Tables<'a>,
    /// Nonzero while an AMF3 object reference is decoded again from the
    /// earlier bytes: the tables already hold what that range adds to them.
    replaying: usize,
    /// Bytes copied by AMF3 reference resolution, and the most allowed.
    copied: usize,
    max_copied: usize,
}

impl<'a, 'l> Decoder<'a, 'l> {
    fn new(input: &'a [u8], limits: &'l AmfLimits) -> Self {
        Self {
            input,
            r: Reader::new(input),
            limits,
            depth: 0,
            values: 0,
            amf0_complex: 0,
            amf3: Amf3Tables::default(),
            replaying: 0,
            copied: 0,
            max_copied: input.len().saturating_mul(AMF3_COPY_RATIO),
        }
    }

    fn count_values(&mut self, n: usize) -> Result<(), AmfError> {
        self.values = self.values.saturating_add(n);
        if self.values > self.limits.max_values {
            return Err(AmfError::TooManyValues {
                max: self.limits.max_values,
            });
        }
        Ok(())
    }

    fn charge_copy(&mut self, bytes: usize) -> Result<(), AmfError> {
        self.copied = self.copied.saturating_add(bytes);
        if self.copied > self.max_copied {
            return Err(AmfError::ReferenceExpansion {
                bytes: self.copied,
                max: self.max_copied,
            });
        }
        Ok(())
    }

    /// Opens a container, failing before any recursion if that would nest
    /// deeper than the limit.
    fn enter(&mut self) -> Result<(), AmfError> {
        if self.depth >= self.limits.max_depth {
            return Err(AmfError::TooDeep {
                max: self.limits.max_depth,
            });
        }
        self.depth += 1;
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// Checks a declared element count before anything is sized from it:
    /// each element takes at least `min_bytes` of the remaining input and
    /// counts as `values_each` values. Returns the count, now safe to use as
    /// a capacity.
    fn check_count(
        &self,
        what: &'static str,
        count: usize,
        min_bytes: usize,
        values_each: usize,
    ) -> Result<usize, AmfError> {
        let remaining = self.r.remaining();
        if count.saturating_mul(min_bytes) > remaining {
            return Err(AmfError::CountBeyondInput {
                what,
                count,
                remaining,
            });
        }
        let values_left = self.limits.max_values.saturating_sub(self.values);
        if count.saturating_mul(values_each) > values_left {
            return Err(AmfError::TooManyValues {
                max: self.limits.max_values,
            });
        }
        Ok(count)
    }

    // -- AMF0 ---------------------------------------------------------------

    fn amf0_value(&mut self) -> Result<Amf0Value, AmfError> {
        let offset = self.r.offset();
        let marker = self.r.u8()?;
        self.count_values(1)?;
        Ok(match marker {
            amf0::NUMBER => Amf0Value::Number(self.r.f64()?),
            amf0::BOOLEAN => Amf0Value::Boolean(self.r.u8()? != 0),
            amf0::STRING => Amf0Value::String(self.amf0_utf8()?),
            amf0::OBJECT => {
                self.enter()?;
                self.amf0_complex = self.amf0_complex.saturating_add(1);
                let props = self.amf0_properties()?;
                self.leave();
                Amf0Value::Object(props)
            }
            amf0::MOVIECLIP => {
                return Err(AmfError::UnsupportedMarker {
                    marker,
                    name: "movieclip",
                    offset,
                })
            }
            amf0::NULL => Amf0Value::Null,
            amf0::UNDEFINED | amf0::UNSUPPORTED => Amf0Value::Undefined,
            amf0::REFERENCE => {
                let index = self.r.u16()?;
                if usize::from(index) >= self.amf0_complex {
                    return Err(AmfError::BadReference {
                        table: "AMF0 object",
                        index: usize::from(index),
                        len: self.amf0_complex,
                    });
                }
                Amf0Value::Reference(index)
            }
            amf0::ECMA_ARRAY => {
                // The count is a hint that encoders get wrong; the
                // object-end marker is what ends the array.
                let _hint = self.r.u32()?;
                self.enter()?;
                self.amf0_complex = self.amf0_complex.saturating_add(1);
                let props = self.amf0_properties()?;
                self.leave();
                Amf0Value::EcmaArray(props)
            }
            amf0::OBJECT_END => return Err(AmfError::UnexpectedObjectEnd { offset }),
            amf0::STRICT_ARRAY => {
                let count = to_usize(self.r.u32()?);
                let count = self.check_count("AMF0 strict array", count, 1, 1)?;
                self.enter()?;
                self.amf0_complex = self.amf0_complex.saturating_add(1);
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.amf0_value()?);
                }
                self.leave();
                Amf0Value::StrictArray(items)
            }
            amf0::DATE => {
                let millis = self.r.f64()?;
                let timezone = self.r.i16()?;
                Amf0Value::Date { millis, timezone }
            }
            amf0::LONG_STRING => {
                let len = to_usize(self.r.u32()?);
                Amf0Value::LongString(lossy(self.r.take("AMF0 long string", len)?))
            }
            amf0::RECORDSET => {
                return Err(AmfError::UnsupportedMarker {
                    marker,
                    name: "recordset",
                    offset,
                })
            }
            amf0::XML_DOCUMENT => {
                let len = to_usize(self.r.u32()?);
                Amf0Value::XmlDocument(lossy(self.r.take("AMF0 XML document", len)?))
            }
            amf0::TYPED_OBJECT => {
                let class = self.amf0_utf8()?;
                self.enter()?;
                self.amf0_complex = self.amf0_complex.saturating_add(1);
                let properties = self.amf0_properties()?;
                self.leave();
                Amf0Value::TypedObject { class, properties }
            }
            amf0::AVMPLUS => {
                self.amf3.clear();
                Amf0Value::Amf3(self.amf3_value()?)
            }
            _ => {
                return Err(AmfError::UnknownMarker {
                    format: "AMF0",
                    marker,
                    offset,
                })
            }
        })
    }

    /// A UTF-8 string with a u16 length (AMF0 spec 1.3).
    fn amf0_utf8_bytes(&mut self) -> Result<&'a [u8], AmfError> {
        let len = usize::from(self.r.u16()?);
        self.r.take("AMF0 string", len)
    }

    fn amf0_utf8(&mut self) -> Result<String, AmfError> {
        self.amf0_utf8_bytes().map(lossy)
    }

    /// Properties up to the object-end marker (empty name, then 0x09).
    fn amf0_properties(&mut self) -> Result<Vec<(String, Amf0Value)>, AmfError> {
        let mut props = Vec::new();
        loop {
            let key = self.amf0_utf8_bytes()?;
            if key.is_empty() && self.r.peek() == Some(amf0::OBJECT_END) {
                self.r.u8()?;
                return Ok(props);
            }
            // An empty name followed by a real value is kept as a property.
            let value = self.amf0_value()?;
            props.push((lossy(key), value));
        }
    }

    // -- AMF3 ---------------------------------------------------------------

    fn amf3_value(&mut self) -> Result<Amf3Value, AmfError> {
        let offset = self.r.offset();
        let marker = self.r.u8()?;
        self.count_values(1)?;
        Ok(match marker {
            amf3::UNDEFINED => Amf3Value::Undefined,
            amf3::NULL => Amf3Value::Null,
            amf3::FALSE => Amf3Value::Boolean(false),
            amf3::TRUE => Amf3Value::Boolean(true),
            amf3::INTEGER => {
                // Sign-extend the 29-bit two's-complement value.
                let v = self.r.u29()?;
                Amf3Value::Integer(((v << 3) as i32) >> 3)
            }
            amf3::DOUBLE => Amf3Value::Double(self.r.f64()?),
            amf3::STRING => Amf3Value::String(self.amf3_string()?),
            amf3::XML_DOC | amf3::XML => {
                let header = self.r.u29()?;
                if header & 1 == 0 {
                    return self.amf3_object_ref(header >> 1);
                }
                let len = to_usize(header >> 1);
                let s = lossy(self.r.take("AMF3 XML", len)?);
                let value = if marker == amf3::XML {
                    Amf3Value::Xml(s)
                } else {
                    Amf3Value::XmlDocument(s)
                };
                self.push_done(offset);
                value
            }
            amf3::DATE => {
                let header = self.r.u29()?;
                if header & 1 == 0 {
                    return self.amf3_object_ref(header >> 1);
                }
                let value = Amf3Value::Date(self.r.f64()?);
                self.push_done(offset);
                value
            }
            amf3::ARRAY => self.amf3_array(offset)?,
            amf3::OBJECT => self.amf3_object(offset)?,
            amf3::BYTE_ARRAY => {
                let header = self.r.u29()?;
                if header & 1 == 0 {
                    return self.amf3_object_ref(header >> 1);
                }
                let len = to_usize(header >> 1);
                let value = Amf3Value::ByteArray(self.r.take("AMF3 ByteArray", len)?.to_vec());
                self.push_done(offset);
                value
            }
            amf3::VECTOR_INT | amf3::VECTOR_UINT | amf3::VECTOR_DOUBLE => {
                let header = self.r.u29()?;
                if header & 1 == 0 {
                    return self.amf3_object_ref(header >> 1);
                }
                let _fixed = self.r.u8()?;
                let count = to_usize(header >> 1);
                let value = match marker {
                    amf3::VECTOR_INT => {
                        let count = self.check_count("AMF3 Vector.<int>", count, 4, 1)?;
                        self.count_values(count)?;
                        let mut items = Vec::with_capacity(count);
                        for _ in 0..count {
                            items.push(i32::from_be_bytes(self.r.array()?));
                        }
                        Amf3Value::VectorInt(items)
                    }
                    amf3::VECTOR_UINT => {
                        let count = self.check_count("AMF3 Vector.<uint>", count, 4, 1)?;
                        self.count_values(count)?;
                        let mut items = Vec::with_capacity(count);
                        for _ in 0..count {
                            items.push(self.r.u32()?);
                        }
                        Amf3Value::VectorUint(items)
                    }
                    _ => {
                        let count = self.check_count("AMF3 Vector.<Number>", count, 8, 1)?;
                        self.count_values(count)?;
                        let mut items = Vec::with_capacity(count);
                        for _ in 0..count {
                            items.push(self.r.f64()?);
                        }
                        Amf3Value::VectorDouble(items)
                    }
                };
                self.push_done(offset);
                value
            }
            amf3::VECTOR_OBJECT => {
                let header = self.r.u29()?;
                if header & 1 == 0 {
                    return self.amf3_object_ref(header >> 1);
                }
                let _fixed = self.r.u8()?;
                let class = lossy(self.amf3_string_bytes()?);
                let count =
                    self.check_count("AMF3 Vector.<Object>", to_usize(header >> 1), 1, 1)?;
                self.enter()?;
                let slot = self.push_pending(offset);
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.amf3_value()?);
                }
                self.leave();
                let value = Amf3Value::VectorObject { class, items };
                self.complete(slot);
                value
            }
            amf3::DICTIONARY => {
                let header = self.r.u29()?;
                if header & 1 == 0 {
                    return self.amf3_object_ref(header >> 1);
                }
                let _weak_keys = self.r.u8()?;
                let count = self.check_count("AMF3 Dictionary", to_usize(header >> 1), 2, 2)?;
                self.enter()?;
                let slot = self.push_pending(offset);
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    let key = self.amf3_value()?;
                    let value = self.amf3_value()?;
                    entries.push((key, value));
                }
                self.leave();
                let value = Amf3Value::Dictionary(entries);
                self.complete(slot);
                value
            }
            _ => {
                return Err(AmfError::UnknownMarker {
                    format: "AMF3",
                    marker,
                    offset,
                })
            }
        })
    }

    /// A UTF-8-vr (AMF3 spec 1.3.2): an inline string, added to the string
    /// table unless empty, or a reference into that table.
    fn amf3_string_bytes(&mut self) -> Result<&'a [u8], AmfError> {
        let header = self.r.u29()?;
        if header & 1 == 0 {
            let index = to_usize(header >> 1);
            let s = *self.amf3.strings.get(index).ok_or(AmfError::BadReference {
                table: "AMF3 string",
                index,
                len: self.amf3.strings.len(),
            })?;
            self.charge_copy(s.len())?;
            return Ok(s);
        }
        let s = self.r.take("AMF3 string", to_usize(header >> 1))?;
        if !s.is_empty() && self.replaying == 0 {
            self.amf3.strings.push(s);
        }
        Ok(s)
    }

    fn amf3_string(&mut self) -> Result<String, AmfError> {
        self.amf3_string_bytes().map(lossy)
    }

    /// Named members up to the empty name (AMF3 associative array part and
    /// dynamic object members).
    fn amf3_members(&mut self, into: &mut Vec<(String, Amf3Value)>) -> Result<(), AmfError> {
        loop {
            let name = self.amf3_string_bytes()?;
            if name.is_empty() {
                return Ok(());
            }
            let value = self.amf3_value()?;
            into.push((lossy(name), value));
        }
    }

    /// AMF3 array (spec 3.11): dense count, associative part, dense part.
    fn amf3_array(&mut self, offset: usize) -> Result<Amf3Value, AmfError> {
        let header = self.r.u29()?;
        if header & 1 == 0 {
            return self.amf3_object_ref(header >> 1);
        }
        self.enter()?;
        let slot = self.push_pending(offset);
        let mut assoc = Vec::new();
        self.amf3_members(&mut assoc)?;
        let count = self.check_count("AMF3 dense array", to_usize(header >> 1), 1, 1)?;
        let mut dense = Vec::with_capacity(count);
        for _ in 0..count {
            dense.push(self.amf3_value()?);
        }
        self.leave();
        let value = Amf3Value::Array { assoc, dense };
        self.complete(slot);
        Ok(value)
    }

    /// AMF3 object (spec 3.12): traits inline or by reference, sealed
    /// values, then dynamic members if the traits say so.
    fn amf3_object(&mut self, offset: usize) -> Result<Amf3Value, AmfError> {
        let header = self.r.u29()?;
        if header & 1 == 0 {
            return self.amf3_object_ref(header >> 1);
        }
        self.enter()?;
        let slot = self.push_pending(offset);
        let traits = if header & 0b10 == 0 {
            // U29O-traits-ref: index in the bits above.
            let index = to_usize(header >> 2);
            let traits = self
                .amf3
                .traits
                .get(index)
                .cloned()
                .ok_or(AmfError::BadReference {
                    table: "AMF3 traits",
                    index,
                    len: self.amf3.traits.len(),
                })?;
            self.charge_copy(traits.name_bytes())?;
            traits
        } else if header & 0b100 != 0 {
            let class = lossy(self.amf3_string_bytes()?);
            return Err(AmfError::Externalizable { class });
        } else {
            let dynamic = header & 0b1000 != 0;
            // Each sealed member takes at least a name byte and a value byte.
            let count = self.check_count("AMF3 sealed member", to_usize(header >> 4), 2, 1)?;
            let class = self.amf3_string_bytes()?;
            let mut sealed = Vec::with_capacity(count);
            for _ in 0..count {
                sealed.push(self.amf3_string_bytes()?);
            }
            let traits = Rc::new(Traits {
                class,
                sealed,
                dynamic,
            });
            if self.replaying == 0 {
                self.amf3.traits.push(Rc::clone(&traits));
            }
            traits
        };
        // A referenced trait's count was checked against other input: check
        // it against what is left for this object's values.
        let count = self.check_count("AMF3 sealed member", traits.sealed.len(), 1, 1)?;
        let mut sealed = Vec::with_capacity(count);
        for name in &traits.sealed {
            let value = self.amf3_value()?;
            sealed.push((lossy(name), value));
        }
        let mut dynamic = Vec::new();
        if traits.dynamic {
            self.amf3_members(&mut dynamic)?;
        }
        self.leave();
        let value = Amf3Value::Object {
            class: lossy(traits.class),
            sealed,
            dynamic,
        };
        self.complete(slot);
        Ok(value)
    }

    /// Resolves an AMF3 object reference by decoding the referenced value's
    /// bytes again. The tables only grow and decoding is deterministic, so
    /// the copy is the value decoded there; it counts towards `max_values`
    /// and `max_depth` like any value, and its bytes towards the copy budget.
    fn amf3_object_ref(&mut self, index: u32) -> Result<Amf3Value, AmfError> {
        let index = to_usize(index);
        let (start, end) = match self.amf3.objects.get(index) {
            None => {
                return Err(AmfError::BadReference {
                    table: "AMF3 object",
                    index,
                    len: self.amf3.objects.len(),
                })
            }
            Some(ObjectSlot::Pending { .. }) => return Err(AmfError::CyclicReference { index }),
            Some(ObjectSlot::Done { start, end }) => (*start, *end),
        };
        self.charge_copy(end.saturating_sub(start))?;
        let resume = std::mem::replace(&mut self.r, Reader::span(self.input, start, end));
        self.replaying += 1;
        let copy = self.amf3_value();
        self.replaying -= 1;
        self.r = resume;
        copy
    }

    /// Reserves an object-table index for a container whose marker is at
    /// `start` and whose members follow.
    fn push_pending(&mut self, start: usize) -> Option<usize> {
        if self.replaying > 0 {
            return None;
        }
        self.amf3.objects.push(ObjectSlot::Pending { start });
        Some(self.amf3.objects.len() - 1)
    }

    /// Records where a reserved container's bytes end.
    fn complete(&mut self, slot: Option<usize>) {
        let end = self.r.offset();
        if let Some(entry) = slot.and_then(|i| self.amf3.objects.get_mut(i)) {
            if let ObjectSlot::Pending { start } = *entry {
                *entry = ObjectSlot::Done { start, end };
            }
        }
    }

    /// Adds a finished leaf (date, XML, ByteArray, numeric vector) whose
    /// marker is at `start` to the object table.
    fn push_done(&mut self, start: usize) {
        if self.replaying == 0 {
            let end = self.r.offset();
            self.amf3.objects.push(ObjectSlot::Done { start, end });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AmfLimits {
        AmfLimits::default()
    }

    fn encode_all(values: &[Amf0Value]) -> Vec<u8> {
        let mut dst = BytesMut::new();
        for v in values {
            encode(v, &mut dst);
        }
        dst.to_vec()
    }

    fn connect_command() -> Vec<Amf0Value> {
        vec![
            Amf0Value::string("connect"),
            Amf0Value::Number(1.0),
            Amf0Value::object([
                ("app", Amf0Value::string("live")),
                ("flashVer", Amf0Value::string("FMLE/3.0")),
                ("tcUrl", Amf0Value::string("rtmp://127.0.0.1/live")),
                ("fpad", Amf0Value::Boolean(false)),
                ("capabilities", Amf0Value::Number(15.0)),
                ("audioCodecs", Amf0Value::Number(3191.0)),
                ("videoCodecs", Amf0Value::Number(252.0)),
                ("videoFunction", Amf0Value::Number(1.0)),
                ("objectEncoding", Amf0Value::Number(0.0)),
            ]),
        ]
    }

    // -- AMF0 ---------------------------------------------------------------

    #[test]
    fn encodes_connect_command_as_the_spec_lays_it_out() {
        let bytes = encode_all(&connect_command()[..2]);
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x02,                                     // string marker
            0x00, 0x07,                               // length 7
            b'c', b'o', b'n', b'n', b'e', b'c', b't', // "connect"
            0x00,                                     // number marker
            0x3F, 0xF0, 0, 0, 0, 0, 0, 0,             // 1.0 (transaction id)
        ];
        assert_eq!(bytes, expected);

        let obj = encode_all(&[Amf0Value::object([("app", Amf0Value::string("live"))])]);
        #[rustfmt::skip]
        let expected: &[u8] = &[
            0x03,                   // object marker
            0x00, 0x03,             // name length 3
            b'a', b'p', b'p',       // "app"
            0x02,                   // string marker
            0x00, 0x04,             // length 4
            b'l', b'i', b'v', b'e', // "live"
            0x00, 0x00,             // empty name
            0x09,                   // object-end marker
        ];
        assert_eq!(obj, expected);
    }

    #[test]
    fn decodes_connect_command() {
        let bytes = encode_all(&connect_command());
        let values = decode_all(&bytes, &limits()).unwrap();
        assert_eq!(values, connect_command());
        assert_eq!(values[0].as_str(), Some("connect"));
        assert_eq!(values[1].as_number(), Some(1.0));
        let obj = &values[2];
        assert_eq!(obj.get("app").and_then(Amf0Value::as_str), Some("live"));
        assert_eq!(obj.get("fpad").and_then(Amf0Value::as_bool), Some(false));
        assert_eq!(
            obj.get("audioCodecs").and_then(Amf0Value::as_number),
            Some(3191.0)
        );
        assert_eq!(obj.get("missing"), None);
    }

    #[test]
    fn decodes_empty_input_as_no_values() {
        assert_eq!(decode_all(&[], &limits()), Ok(vec![]));
    }

    #[test]
    fn decodes_scalars() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x00, 0xC0, 0x09, 0x21, 0xFB, 0x54, 0x44, 0x2D, 0x18, // number -3.14159...
            0x01, 0x00,                                           // boolean false
            0x01, 0x02,                                           // boolean true (any non-zero)
            0x05,                                                 // null
            0x06,                                                 // undefined
            0x0D,                                                 // unsupported
            0x0C, 0x00, 0x00, 0x00, 0x02, b'h', b'i',             // long string "hi"
            0x0F, 0x00, 0x00, 0x00, 0x03, b'<', b'a', b'>',       // XML document "<a>"
        ];
        let values = decode_all(bytes, &limits()).unwrap();
        assert_eq!(
            values,
            vec![
                Amf0Value::Number(-std::f64::consts::PI),
                Amf0Value::Boolean(false),
                Amf0Value::Boolean(true),
                Amf0Value::Null,
                Amf0Value::Undefined,
                Amf0Value::Undefined,
                Amf0Value::LongString("hi".into()),
                Amf0Value::XmlDocument("<a>".into()),
            ]
        );
        assert_eq!(values[6].as_str(), Some("hi"));
    }

    #[test]
    fn decodes_unsupported_marker_as_undefined() {
        assert_eq!(
            decode_all(&[0x0D], &limits()),
            Ok(vec![Amf0Value::Undefined])
        );
    }

    #[test]
    fn decodes_invalid_utf8_lossily() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x02,             // string marker
            0x00, 0x03,       // length 3
            b'a', 0xE9, b'b', // "a", Latin-1 é, "b"
        ];
        let values = decode_all(bytes, &limits()).unwrap();
        assert_eq!(values, vec![Amf0Value::string("a?b")]);
    }

    /// docs/hardening.md case 43: a string of invalid UTF-8 decodes to no
    /// more bytes than it had (U+FFFD per byte would triple it).
    #[test]
    fn invalid_utf8_never_grows_when_decoded() {
        let mut bytes = vec![0x0C, 0x00, 0x01, 0x00, 0x00]; // long string, 65,536 bytes
        bytes.extend(std::iter::repeat(0xFF).take(65_536));
        let values = decode_all(&bytes, &limits()).unwrap();
        let s = values[0].as_str().unwrap();
        assert_eq!(s.len(), 65_536);
        assert!(s.bytes().all(|b| b == b'?'));
    }

    #[test]
    fn decodes_date_with_timezone() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x0B,                                           // date marker
            0x42, 0x77, 0x3E, 0x3B, 0x6E, 0x00, 0x00, 0x00, // 1,597,253,279,744 ms
            0xFF, 0xC4,                                     // timezone -60
        ];
        let values = decode_all(bytes, &limits()).unwrap();
        assert_eq!(
            values,
            vec![Amf0Value::Date {
                millis: f64::from_be_bytes([0x42, 0x77, 0x3E, 0x3B, 0x6E, 0, 0, 0]),
                timezone: -60,
            }]
        );
    }

    #[test]
    fn decodes_ecma_array_ignoring_count_hint() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x08,                   // ECMA array marker
            0xFF, 0xFF, 0xFF, 0xFF, // count hint 4,294,967,295 (a lie)
            0x00, 0x05,             // name length 5
            b'w', b'i', b'd', b't', b'h',
            0x00,                   // number marker
            0x40, 0x94, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // 1280.0
            0x00, 0x00,             // empty name
            0x09,                   // object-end marker
        ];
        let values = decode_all(bytes, &limits()).unwrap();
        assert_eq!(
            values,
            vec![Amf0Value::EcmaArray(vec![(
                "width".into(),
                Amf0Value::Number(1280.0)
            )])]
        );
        assert_eq!(
            values[0].get("width").and_then(Amf0Value::as_number),
            Some(1280.0)
        );
    }

    #[test]
    fn decodes_strict_array() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x0A,                   // strict array marker
            0x00, 0x00, 0x00, 0x02, // count 2
            0x05,                   // null
            0x01, 0x01,             // boolean true
        ];
        let values = decode_all(bytes, &limits()).unwrap();
        assert_eq!(
            values,
            vec![Amf0Value::StrictArray(vec![
                Amf0Value::Null,
                Amf0Value::Boolean(true)
            ])]
        );
    }

    #[test]
    fn decodes_typed_object() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x10,                   // typed object marker
            0x00, 0x03,             // class name length 3
            b'F', b'o', b'o',       // "Foo"
            0x00, 0x01, b'x',       // name "x"
            0x05,                   // null
            0x00, 0x00,             // empty name
            0x09,                   // object-end marker
        ];
        let values = decode_all(bytes, &limits()).unwrap();
        assert_eq!(
            values,
            vec![Amf0Value::TypedObject {
                class: "Foo".into(),
                properties: vec![("x".into(), Amf0Value::Null)],
            }]
        );
        assert_eq!(values[0].get("x"), Some(&Amf0Value::Null));
    }

    #[test]
    fn keeps_empty_name_followed_by_a_value_as_a_property() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x03,       // object marker
            0x00, 0x00, // empty name
            0x05,       // null (not 0x09, so a property)
            0x00, 0x00, // empty name
            0x09,       // object-end marker
        ];
        let values = decode_all(bytes, &limits()).unwrap();
        assert_eq!(
            values,
            vec![Amf0Value::Object(vec![(String::new(), Amf0Value::Null)])]
        );
    }

    #[test]
    fn get_returns_first_matching_property() {
        let obj = Amf0Value::object([("k", Amf0Value::Number(1.0)), ("k", Amf0Value::Number(2.0))]);
        assert_eq!(obj.get("k"), Some(&Amf0Value::Number(1.0)));
        assert_eq!(Amf0Value::Null.get("k"), None);
        assert_eq!(Amf0Value::Number(1.0).as_str(), None);
        assert_eq!(Amf0Value::Null.as_number(), None);
        assert_eq!(Amf0Value::Null.as_bool(), None);
    }

    #[test]
    fn accepts_reference_to_earlier_complex_value() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x03,             // object #0
            0x00, 0x04, b's', b'e', b'l', b'f',
            0x07, 0x00, 0x00, // reference 0 (itself, as the spec allows)
            0x00, 0x00, 0x09, // object end
            0x07, 0x00, 0x00, // reference 0, after it
        ];
        let values = decode_all(bytes, &limits()).unwrap();
        assert_eq!(
            values,
            vec![
                Amf0Value::object([("self", Amf0Value::Reference(0))]),
                Amf0Value::Reference(0),
            ]
        );
    }

    #[test]
    fn rejects_reference_beyond_complex_values_decoded() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x02, 0x00, 0x01, b'a', // a string is not a complex value
            0x07, 0x00, 0x00,       // reference 0: nothing to point at
        ];
        assert_eq!(
            decode_all(bytes, &limits()),
            Err(AmfError::BadReference {
                table: "AMF0 object",
                index: 0,
                len: 0
            })
        );
    }

    #[test]
    fn rejects_strict_array_count_beyond_input() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x0A,                   // strict array marker
            0xFF, 0xFF, 0xFF, 0xFF, // count 4,294,967,295
            0x05,                   // one null: one byte left for the rest
        ];
        let err = decode_all(bytes, &limits()).unwrap_err();
        assert_eq!(
            err,
            AmfError::CountBeyondInput {
                what: "AMF0 strict array",
                count: 0xFFFF_FFFF,
                remaining: 1
            }
        );
        assert_eq!(
            err.to_string(),
            "AMF0 strict array count 4294967295 exceeds what the remaining 1 bytes can hold"
        );
    }

    #[test]
    fn rejects_strict_array_count_beyond_max_values_before_allocating() {
        let mut bytes = vec![
            0x0A, // strict array marker
            0x00, 0x01, 0x00, 0x00, // count 65,536
        ];
        bytes.resize(bytes.len() + 65_536, 0x05); // nulls
        assert_eq!(
            decode_all(&bytes, &limits()),
            Err(AmfError::TooManyValues { max: 65_536 })
        );
    }

    #[test]
    fn rejects_string_length_beyond_input() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x02,       // string marker
            0x00, 0x10, // length 16
            b'a', b'b', // two bytes
        ];
        let err = decode_all(bytes, &limits()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "AMF0 string length 16 exceeds remaining 2 bytes"
        );
    }

    #[test]
    fn rejects_long_string_length_beyond_input() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x0C,                   // long string marker
            0xFF, 0xFF, 0xFF, 0xFF, // length 4,294,967,295
            b'a',
        ];
        assert_eq!(
            decode_all(bytes, &limits()),
            Err(AmfError::LengthBeyondInput {
                what: "AMF0 long string",
                len: 0xFFFF_FFFF,
                remaining: 1
            })
        );
    }

    #[test]
    fn rejects_object_end_outside_object() {
        let err = decode_all(&[0x05, 0x09], &limits()).unwrap_err();
        assert_eq!(err, AmfError::UnexpectedObjectEnd { offset: 1 });
        assert_eq!(
            err.to_string(),
            "object-end marker at offset 1 outside an object"
        );
        // A non-empty name followed by 0x09 is no end marker either.
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x03,             // object marker
            0x00, 0x01, b'a', // name "a"
            0x09,             // object end where a value belongs
        ];
        assert_eq!(
            decode_all(bytes, &limits()),
            Err(AmfError::UnexpectedObjectEnd { offset: 4 })
        );
    }

    #[test]
    fn rejects_movieclip_and_recordset() {
        let err = decode_all(&[0x04], &limits()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "AMF0 movieclip marker 0x04 at offset 0 is not supported"
        );
        assert!(matches!(
            decode_all(&[0x0E], &limits()),
            Err(AmfError::UnsupportedMarker { marker: 0x0E, .. })
        ));
    }

    #[test]
    fn rejects_unknown_marker() {
        let err = decode_all(&[0x05, 0x12], &limits()).unwrap_err();
        assert_eq!(err.to_string(), "unknown AMF0 marker 0x12 at offset 1");
    }

    #[test]
    fn rejects_truncated_number() {
        assert_eq!(
            decode_all(&[0x00, 0x3F, 0xF0], &limits()),
            Err(AmfError::Truncated {
                needed: 8,
                remaining: 2
            })
        );
    }

    /// `depth` nested containers, each opened by `open` and closed by `close`.
    fn nested(open: &[u8], innermost: &[u8], close: &[u8], depth: usize) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(depth * (open.len() + close.len()) + innermost.len());
        for _ in 0..depth {
            bytes.extend_from_slice(open);
        }
        bytes.extend_from_slice(innermost);
        for _ in 0..depth {
            bytes.extend_from_slice(close);
        }
        bytes
    }

    #[test]
    fn rejects_nesting_deeper_than_max_depth() {
        // object { "a": object { "a": ... } }, 100,000 deep.
        let bytes = nested(
            &[0x03, 0x00, 0x01, b'a'],
            &[0x05],
            &[0x00, 0x00, 0x09],
            100_000,
        );
        let err = decode_all(&bytes, &limits()).unwrap_err();
        assert_eq!(err, AmfError::TooDeep { max: 32 });
        assert_eq!(err.to_string(), "nesting deeper than 32");
    }

    #[test]
    fn rejects_100000_nested_strict_arrays() {
        let bytes = nested(&[0x0A, 0x00, 0x00, 0x00, 0x01], &[0x05], &[], 100_000);
        assert_eq!(
            decode_all(&bytes, &limits()),
            Err(AmfError::TooDeep { max: 32 })
        );
    }

    #[test]
    fn accepts_nesting_at_max_depth() {
        let limits = AmfLimits {
            max_depth: 5,
            ..limits()
        };
        let open = [0x0A, 0x00, 0x00, 0x00, 0x01]; // strict array of one
        assert!(decode_all(&nested(&open, &[0x05], &[], 5), &limits).is_ok());
        assert_eq!(
            decode_all(&nested(&open, &[0x05], &[], 6), &limits),
            Err(AmfError::TooDeep { max: 5 })
        );
    }

    #[test]
    fn rejects_more_values_than_max_values() {
        let limits = AmfLimits {
            max_values: 3,
            ..limits()
        };
        assert!(decode_all(&[0x05, 0x05, 0x05], &limits).is_ok());
        let err = decode_all(&[0x05, 0x05, 0x05, 0x05], &limits).unwrap_err();
        assert_eq!(err.to_string(), "more than 3 values");
    }

    #[test]
    fn truncated_connect_command_errors_at_every_offset() {
        let command = connect_command();
        let bytes = encode_all(&command);
        // Where one top-level value ends and the next begins, a prefix is a
        // shorter but valid list of values; everywhere else it is an error.
        let mut boundaries = vec![0];
        for value in &command {
            let mut end = BytesMut::new();
            encode(value, &mut end);
            boundaries.push(boundaries.last().unwrap() + end.len());
        }
        for len in 0..bytes.len() {
            let result = decode_all(&bytes[..len], &limits());
            match boundaries.iter().position(|&b| b == len) {
                Some(n) => assert_eq!(result.as_deref(), Ok(&command[..n]), "prefix {len}"),
                None => assert!(result.is_err(), "prefix of {len} bytes decoded: {result:?}"),
            }
        }
    }

    #[test]
    fn corrupted_connect_command_never_panics() {
        let bytes = encode_all(&connect_command());
        let mut corrupt = bytes.clone();
        for i in 0..bytes.len() {
            for b in 0..=u8::MAX {
                corrupt[i] = b;
                let _ = decode_all(&corrupt, &limits());
            }
            corrupt[i] = bytes[i];
        }
    }

    #[test]
    fn encodes_long_string_with_long_string_marker() {
        let s = "x".repeat(70_000);
        let bytes = encode_all(&[Amf0Value::String(s.clone())]);
        assert_eq!(bytes[..5], [0x0C, 0x00, 0x01, 0x11, 0x70]);
        assert_eq!(
            decode_all(&bytes, &limits()),
            Ok(vec![Amf0Value::LongString(s)])
        );
    }

    // -- AMF3 ---------------------------------------------------------------

    fn amf3(bytes: &[u8]) -> Result<Amf3Value, AmfError> {
        let mut input = vec![0x11];
        input.extend_from_slice(bytes);
        match decode_all(&input, &limits())?.as_slice() {
            [Amf0Value::Amf3(v)] => Ok(v.clone()),
            other => panic!("expected one AMF3 value, got {other:?}"),
        }
    }

    #[test]
    fn decodes_amf3_scalars_after_avmplus_switch() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x11, 0x00,       // switch, undefined
            0x11, 0x01,       // switch, null
            0x11, 0x02,       // switch, false
            0x11, 0x03,       // switch, true
            0x11, 0x05,       // switch, double
            0x40, 0x09, 0x21, 0xFB, 0x54, 0x44, 0x2D, 0x18,
            0x11, 0x06,       // switch, string
            0x07, b'a', b'b', b'c', // inline, length 3
        ];
        let values = decode_all(bytes, &limits()).unwrap();
        assert_eq!(
            values,
            vec![
                Amf0Value::Amf3(Amf3Value::Undefined),
                Amf0Value::Amf3(Amf3Value::Null),
                Amf0Value::Amf3(Amf3Value::Boolean(false)),
                Amf0Value::Amf3(Amf3Value::Boolean(true)),
                Amf0Value::Amf3(Amf3Value::Double(std::f64::consts::PI)),
                Amf0Value::Amf3(Amf3Value::String("abc".into())),
            ]
        );
        assert_eq!(values[3].as_bool(), Some(true));
        assert_eq!(values[4].as_number(), Some(std::f64::consts::PI));
        assert_eq!(values[5].as_str(), Some("abc"));
    }

    #[test]
    fn decodes_amf3_integer_sign_extended() {
        #[rustfmt::skip]
        let cases: &[(&[u8], i32)] = &[
            (&[0x04, 0x00], 0),
            (&[0x04, 0x7F], 127),
            (&[0x04, 0x81, 0x00], 128),
            (&[0x04, 0xFF, 0xFF, 0x7F], 0x1F_FFFF),
            (&[0x04, 0x80, 0xC0, 0x80, 0x00], 0x20_0000),
            (&[0x04, 0xBF, 0xFF, 0xFF, 0xFF], (1 << 28) - 1), // largest
            (&[0x04, 0xC0, 0x80, 0x80, 0x00], -(1 << 28)),    // smallest
            (&[0x04, 0xFF, 0xFF, 0xFF, 0xFF], -1),
        ];
        for &(bytes, expected) in cases {
            let value = amf3(bytes).unwrap();
            assert_eq!(value, Amf3Value::Integer(expected), "{bytes:02x?}");
            assert_eq!(
                Amf0Value::Amf3(value).as_number(),
                Some(f64::from(expected))
            );
            let mut out = BytesMut::new();
            encode_amf3(&Amf3Value::Integer(expected), &mut out);
            assert_eq!(&out[..], bytes, "encoding {expected}");
        }
    }

    #[test]
    fn encodes_amf3_integer_outside_29_bits_as_double() {
        let mut out = BytesMut::new();
        encode_amf3(&Amf3Value::Integer(1 << 28), &mut out);
        assert_eq!(out[0], 0x05);
        assert_eq!(amf3(&out), Ok(Amf3Value::Double(f64::from(1 << 28))));
    }

    #[test]
    fn resolves_amf3_string_reference_and_never_stores_empty_string() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x09,             // array
            0x07,             // inline, 3 dense
            0x01,             // assoc part: empty name ends it
            0x06, 0x01,       // string "" (not stored)
            0x06, 0x05, b'h', b'i', // string "hi" (string #0)
            0x06, 0x00,       // string reference 0: "hi"
        ];
        assert_eq!(
            amf3(bytes),
            Ok(Amf3Value::Array {
                assoc: vec![],
                dense: vec![
                    Amf3Value::String(String::new()),
                    Amf3Value::String("hi".into()),
                    Amf3Value::String("hi".into()),
                ],
            })
        );
    }

    #[test]
    fn rejects_amf3_string_reference_beyond_table() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x09,       // array
            0x05,       // inline, 2 dense
            0x01,       // no assoc part
            0x06, 0x01, // string "" (the empty string is not stored)
            0x06, 0x00, // string reference 0: the table is empty
        ];
        let err = amf3(bytes).unwrap_err();
        assert_eq!(
            err,
            AmfError::BadReference {
                table: "AMF3 string",
                index: 0,
                len: 0
            }
        );
        assert_eq!(
            err.to_string(),
            "AMF3 string reference 0 beyond a table of 0 entries"
        );
    }

    #[test]
    fn decodes_amf3_array_with_assoc_and_dense_parts() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x09,             // array
            0x03,             // inline, 1 dense
            0x03, b'k',       // name "k"
            0x04, 0x05,       // integer 5
            0x01,             // end of assoc part
            0x02,             // false
        ];
        let value = amf3(bytes).unwrap();
        assert_eq!(
            value,
            Amf3Value::Array {
                assoc: vec![("k".into(), Amf3Value::Integer(5))],
                dense: vec![Amf3Value::Boolean(false)],
            }
        );
        let wrapped = Amf0Value::Amf3(value);
        assert_eq!(wrapped.get_amf3("k"), Some(&Amf3Value::Integer(5)));
        assert_eq!(wrapped.get("k"), None);
    }

    #[test]
    fn decodes_amf3_object_with_inline_traits_and_dynamic_members() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x0A,                   // object
            0x1B,                   // inline traits, dynamic, 1 sealed (0b1_1_0_11)
            0x07, b'F', b'o', b'o', // class "Foo"
            0x03, b'a',             // sealed name "a"
            0x04, 0x01,             // a = 1
            0x03, b'b',             // dynamic name "b"
            0x06, 0x07, b'F', b'o', b'o', // "Foo" inline (table dedup is the encoder's choice)
            0x01,                   // end of dynamic members
        ];
        let value = amf3(bytes).unwrap();
        assert_eq!(
            value,
            Amf3Value::Object {
                class: "Foo".into(),
                sealed: vec![("a".into(), Amf3Value::Integer(1))],
                dynamic: vec![("b".into(), Amf3Value::String("Foo".into()))],
            }
        );
        assert_eq!(value.get("a"), Some(&Amf3Value::Integer(1)));
        assert_eq!(value.get("b").and_then(Amf3Value::as_str), Some("Foo"));
    }

    #[test]
    fn reuses_amf3_traits_by_reference() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x09,             // array
            0x05,             // inline, 2 dense
            0x01,             // no assoc part
            0x0A,             // object
            0x13,             // inline traits, sealed, 1 member (0b1_0_0_11)
            0x01,             // class "" (anonymous)
            0x03, b'x',       // sealed name "x" (string #0)
            0x04, 0x01,       // x = 1
            0x0A,             // object
            0x01,             // traits reference 0 (0b0_01)
            0x04, 0x02,       // x = 2
        ];
        let obj = |x| Amf3Value::Object {
            class: String::new(),
            sealed: vec![("x".into(), Amf3Value::Integer(x))],
            dynamic: vec![],
        };
        assert_eq!(
            amf3(bytes),
            Ok(Amf3Value::Array {
                assoc: vec![],
                dense: vec![obj(1), obj(2)],
            })
        );
    }

    #[test]
    fn rejects_amf3_trait_reference_beyond_table() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x0A, // object
            0x05, // traits reference 1 (0b1_01): no traits yet
        ];
        assert_eq!(
            amf3(bytes),
            Err(AmfError::BadReference {
                table: "AMF3 traits",
                index: 1,
                len: 0
            })
        );
    }

    #[test]
    fn rejects_externalizable_class() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x0A,                   // object
            0x07,                   // inline traits, externalizable (0b111)
            0x07, b'A', b'r', b'r', // class "Arr"
            0x00, 0x00,             // class-specific body we cannot parse
        ];
        let err = amf3(bytes).unwrap_err();
        assert_eq!(
            err.to_string(),
            "externalizable class \"Arr\" not supported"
        );
    }

    #[test]
    fn rejects_amf3_sealed_count_beyond_input() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x0A,                   // object
            0xFF, 0xFF, 0xFF, 0xF3, // inline traits, sealed count 2^25 - 1
            0x01,                   // class ""
        ];
        assert!(matches!(
            amf3(bytes),
            Err(AmfError::CountBeyondInput {
                what: "AMF3 sealed member",
                ..
            })
        ));
    }

    #[test]
    fn rejects_amf3_dense_count_beyond_input() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x09,                   // array
            0xFF, 0xFF, 0xFF, 0xFF, // inline, 2^28 - 1 dense
            0x01,                   // no assoc part
            0x01,                   // one null
        ];
        assert_eq!(
            amf3(bytes),
            Err(AmfError::CountBeyondInput {
                what: "AMF3 dense array",
                count: (1 << 28) - 1,
                remaining: 1
            })
        );
    }

    #[test]
    fn rejects_amf3_vector_count_beyond_input() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x0F,                   // Vector.<Number>
            0x05,                   // inline, 2 items
            0x00,                   // not fixed
            0, 0, 0, 0, 0, 0, 0, 0, // one double: 8 bytes short
        ];
        assert_eq!(
            amf3(bytes),
            Err(AmfError::CountBeyondInput {
                what: "AMF3 Vector.<Number>",
                count: 2,
                remaining: 8
            })
        );
    }

    #[test]
    fn rejects_amf3_bytearray_length_beyond_input() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x0C,                   // ByteArray
            0xFF, 0xFF, 0xFF, 0xFF, // inline, length 2^28 - 1
            0xAB,
        ];
        assert_eq!(
            amf3(bytes),
            Err(AmfError::LengthBeyondInput {
                what: "AMF3 ByteArray",
                len: (1 << 28) - 1,
                remaining: 1
            })
        );
    }

    #[test]
    fn decodes_amf3_date_xml_bytearray_vectors_and_dictionary() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x09,                   // array
            0x13,                   // inline, 9 dense
            0x01,                   // no assoc part
            0x08, 0x01,             // date, inline
            0x40, 0x59, 0, 0, 0, 0, 0, 0, // 100.0
            0x07, 0x05, b'<', b'>', // XML document "<>"
            0x0B, 0x05, b'<', b'/', // XML "</"
            0x0C, 0x05, 0xDE, 0xAD, // ByteArray de ad
            0x0D, 0x05, 0x00,       // Vector.<int>, 2 items, not fixed
            0xFF, 0xFF, 0xFF, 0xFF, // -1
            0x00, 0x00, 0x00, 0x07, // 7
            0x0E, 0x03, 0x01,       // Vector.<uint>, 1 item, fixed
            0xFF, 0xFF, 0xFF, 0xFF, // 4294967295
            0x0F, 0x03, 0x00,       // Vector.<Number>, 1 item
            0x3F, 0xF0, 0, 0, 0, 0, 0, 0, // 1.0
            0x10, 0x03, 0x00,       // Vector.<Object>, 1 item
            0x03, b'*',             // type name "*"
            0x01,                   // null
            0x11, 0x03, 0x00,       // Dictionary, 1 entry, strong keys
            0x04, 0x01,             // key: integer 1
            0x03,                   // value: true
        ];
        assert_eq!(
            amf3(bytes),
            Ok(Amf3Value::Array {
                assoc: vec![],
                dense: vec![
                    Amf3Value::Date(100.0),
                    Amf3Value::XmlDocument("<>".into()),
                    Amf3Value::Xml("</".into()),
                    Amf3Value::ByteArray(vec![0xDE, 0xAD]),
                    Amf3Value::VectorInt(vec![-1, 7]),
                    Amf3Value::VectorUint(vec![u32::MAX]),
                    Amf3Value::VectorDouble(vec![1.0]),
                    Amf3Value::VectorObject {
                        class: "*".into(),
                        items: vec![Amf3Value::Null],
                    },
                    Amf3Value::Dictionary(vec![(Amf3Value::Integer(1), Amf3Value::Boolean(true))]),
                ],
            })
        );
    }

    #[test]
    fn resolves_amf3_object_reference_by_copying() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x09,             // array (object #0)
            0x07,             // inline, 3 dense
            0x01,             // no assoc part
            0x08, 0x01,       // date (object #1)
            0, 0, 0, 0, 0, 0, 0, 0,
            0x09, 0x03, 0x01, // array (object #2), 1 dense, no assoc
            0x05, 0, 0, 0, 0, 0, 0, 0, 0, // double 0.0
            0x09, 0x04,       // array reference 2
        ];
        let inner = Amf3Value::Array {
            assoc: vec![],
            dense: vec![Amf3Value::Double(0.0)],
        };
        assert_eq!(
            amf3(bytes),
            Ok(Amf3Value::Array {
                assoc: vec![],
                dense: vec![Amf3Value::Date(0.0), inner.clone(), inner],
            })
        );
    }

    #[test]
    fn replaying_an_object_reference_adds_nothing_to_the_tables() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x09,             // array (object #0)
            0x09,             // inline, 4 dense
            0x01,             // no assoc part
            0x0A,             // object #1
            0x13,             // inline traits #0, 1 sealed
            0x01,             // class ""
            0x03, b'a',       // sealed name "a" (string #0)
            0x06, 0x05, b'h', b'i', // a = "hi" (string #1)
            0x06, 0x02,       // string reference 1: "hi"
            0x0A, 0x02,       // object reference 1: decoded again
            0x0A,             // object #2
            0x01,             // traits reference 0
            0x06, 0x00,       // a = string reference 0: "a"
        ];
        let obj = |a: &str| Amf3Value::Object {
            class: String::new(),
            sealed: vec![("a".into(), Amf3Value::String(a.into()))],
            dynamic: vec![],
        };
        assert_eq!(
            amf3(bytes),
            Ok(Amf3Value::Array {
                assoc: vec![],
                dense: vec![
                    obj("hi"),
                    Amf3Value::String("hi".into()),
                    obj("hi"),
                    obj("a")
                ],
            })
        );
        // Had the copy added its string and trait again, these would resolve.
        let mut next_string = bytes.to_vec();
        next_string[1] = 0x0B; // 5 dense
        next_string.extend_from_slice(&[0x06, 0x04]); // string reference 2
        assert_eq!(
            amf3(&next_string),
            Err(AmfError::BadReference {
                table: "AMF3 string",
                index: 2,
                len: 2
            })
        );
        let mut next_traits = bytes.to_vec();
        next_traits[1] = 0x0B; // 5 dense
        next_traits.extend_from_slice(&[0x0A, 0x05]); // object, traits reference 1
        assert_eq!(
            amf3(&next_traits),
            Err(AmfError::BadReference {
                table: "AMF3 traits",
                index: 1,
                len: 1
            })
        );
    }

    #[test]
    fn rejects_amf3_object_reference_beyond_table() {
        assert_eq!(
            amf3(&[0x0A, 0x02]), // object reference 1, table holds nothing
            Err(AmfError::BadReference {
                table: "AMF3 object",
                index: 1,
                len: 0
            })
        );
    }

    #[test]
    fn rejects_amf3_cyclic_object_reference() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x09, // array (object #0)
            0x03, // inline, 1 dense
            0x01, // no assoc part
            0x09, // array
            0x00, // reference 0: the array being decoded
        ];
        assert_eq!(amf3(bytes), Err(AmfError::CyclicReference { index: 0 }));
    }

    #[test]
    fn rejects_amf3_reference_amplification() {
        // Array n holds array n-1 and a reference to it: 2^40 copies of a
        // 1 KiB string from ~1.1 KiB of input. Markers number the arrays
        // outermost first, so the innermost (base) array is object #40.
        let mut bytes = vec![
            0x09, // array (base)
            0x03, // inline, 1 dense
            0x01, // no assoc part
            0x06, 0x90, 0x01, // string, inline, 1024 bytes
        ];
        bytes.resize(bytes.len() + 1024, b'x');
        let mut inner = bytes;
        for n in 0..40u8 {
            let mut outer = vec![0x09, 0x05, 0x01]; // array, 2 dense, no assoc
            outer.extend_from_slice(&inner);
            // Reference to the array just closed, object #(40 - n).
            outer.extend_from_slice(&[0x09, (40 - n) << 1]);
            inner = outer;
        }
        let mut input = vec![0x11];
        input.extend_from_slice(&inner);
        let limits = AmfLimits {
            max_depth: 64,
            ..limits()
        };
        let result = decode_all(&input, &limits);
        assert!(
            matches!(result, Err(AmfError::ReferenceExpansion { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn counts_copied_values_against_max_values() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x11,             // switch
            0x09, 0x05, 0x01, // array, 2 dense
            0x0D, 0x09, 0x00, // Vector.<int> (object #1), 4 items
            0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4,
            0x0D, 0x02,       // reference 1: itself and 5 copied values
        ];
        // switch + array + vector + 4 items + reference + its copy (5) = 13.
        let exact = AmfLimits {
            max_values: 13,
            ..limits()
        };
        assert!(decode_all(bytes, &exact).is_ok());
        let fewer = AmfLimits {
            max_values: 12,
            ..limits()
        };
        assert_eq!(
            decode_all(bytes, &fewer),
            Err(AmfError::TooManyValues { max: 12 })
        );
    }

    #[test]
    fn rejects_amf3_reference_that_would_nest_too_deep() {
        let limits = AmfLimits {
            max_depth: 3,
            ..limits()
        };
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x11,             // switch
            0x09, 0x05, 0x01, // array #0 (depth 1), 2 dense
            0x09, 0x03, 0x01, // array #1 (depth 2), 1 dense
            0x09, 0x01, 0x01, // array #2 (depth 3), empty
            0x09, 0x02,       // reference 1 (height 2) at depth 1: reaches 3
        ];
        assert!(decode_all(bytes, &limits).is_ok());
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x11,             // switch
            0x09, 0x05, 0x01, // array #0 (depth 1), 2 dense
            0x09, 0x03, 0x01, // array #1 (depth 2), 1 dense
            0x09, 0x01, 0x01, // array #2 (depth 3), empty
            0x09, 0x03, 0x01, // array #3 (depth 2), 1 dense
            0x09, 0x02,       // reference 1 (height 2) at depth 2: would reach 4
        ];
        assert_eq!(
            decode_all(bytes, &limits),
            Err(AmfError::TooDeep { max: 3 })
        );
    }

    #[test]
    fn rejects_100000_nested_amf3_arrays() {
        let mut bytes = vec![0x11];
        bytes.extend(nested(&[0x09, 0x03, 0x01], &[0x01], &[], 100_000));
        assert_eq!(
            decode_all(&bytes, &limits()),
            Err(AmfError::TooDeep { max: 32 })
        );
    }

    #[test]
    fn resets_amf3_tables_at_each_switch() {
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x11, 0x06, 0x05, b'h', b'i', // switch, string "hi" (string #0)
            0x11, 0x06, 0x00,             // switch, string reference 0: new table
        ];
        assert_eq!(
            decode_all(bytes, &limits()),
            Err(AmfError::BadReference {
                table: "AMF3 string",
                index: 0,
                len: 0
            })
        );
    }

    #[test]
    fn rejects_unknown_amf3_marker() {
        let err = decode_all(&[0x11, 0x12], &limits()).unwrap_err();
        assert_eq!(err.to_string(), "unknown AMF3 marker 0x12 at offset 1");
    }

    #[test]
    fn amf3_in_amf0_object_truncated_at_every_offset_errors() {
        let value = Amf0Value::object([
            ("n", Amf0Value::Number(1.0)),
            (
                "o",
                Amf0Value::Amf3(Amf3Value::Object {
                    class: "C".into(),
                    sealed: vec![("s".into(), Amf3Value::VectorInt(vec![1, 2]))],
                    dynamic: vec![(
                        "d".into(),
                        Amf3Value::Dictionary(vec![(
                            Amf3Value::String("k".into()),
                            Amf3Value::ByteArray(vec![1, 2, 3]),
                        )]),
                    )],
                }),
            ),
        ]);
        let bytes = encode_all(std::slice::from_ref(&value));
        assert_eq!(decode_all(&bytes, &limits()), Ok(vec![value]));
        for len in 1..bytes.len() {
            assert!(
                decode_all(&bytes[..len], &limits()).is_err(),
                "prefix {len}"
            );
        }
        let mut corrupt = bytes.clone();
        for i in 0..bytes.len() {
            for b in 0..=u8::MAX {
                corrupt[i] = b;
                let _ = decode_all(&corrupt, &limits());
            }
            corrupt[i] = bytes[i];
        }
    }

    #[test]
    fn encodes_u29_at_each_width_boundary() {
        #[rustfmt::skip]
        let cases: &[(u32, &[u8])] = &[
            (0x7F, &[0x7F]),
            (0x80, &[0x81, 0x00]),
            (0x3FFF, &[0xFF, 0x7F]),
            (0x4000, &[0x81, 0x80, 0x00]),
            (0x1F_FFFF, &[0xFF, 0xFF, 0x7F]),
            (0x20_0000, &[0x80, 0xC0, 0x80, 0x00]),
            (0x1FFF_FFFF, &[0xFF, 0xFF, 0xFF, 0xFF]),
        ];
        for &(v, expected) in cases {
            let mut out = BytesMut::new();
            put_u29(&mut out, v);
            assert_eq!(&out[..], expected, "{v:#x}");
            assert_eq!(Reader::new(expected).u29(), Ok(v));
        }
    }

    // -- Round trip -----------------------------------------------------------

    mod round_trip {
        use super::*;
        use proptest::prelude::*;

        fn number() -> impl Strategy<Value = f64> {
            any::<f64>().prop_filter("NaN != NaN", |n| !n.is_nan())
        }

        fn text() -> impl Strategy<Value = String> {
            "\\PC{0,12}"
        }

        fn name() -> impl Strategy<Value = String> {
            "[a-zA-Z_]{1,8}"
        }

        fn amf3_value() -> impl Strategy<Value = Amf3Value> {
            let leaf = prop_oneof![
                Just(Amf3Value::Undefined),
                Just(Amf3Value::Null),
                any::<bool>().prop_map(Amf3Value::Boolean),
                (amf3::INT_MIN..=amf3::INT_MAX).prop_map(Amf3Value::Integer),
                number().prop_map(Amf3Value::Double),
                text().prop_map(Amf3Value::String),
                text().prop_map(Amf3Value::XmlDocument),
                text().prop_map(Amf3Value::Xml),
                number().prop_map(Amf3Value::Date),
                prop::collection::vec(any::<u8>(), 0..8).prop_map(Amf3Value::ByteArray),
                prop::collection::vec(any::<i32>(), 0..4).prop_map(Amf3Value::VectorInt),
                prop::collection::vec(any::<u32>(), 0..4).prop_map(Amf3Value::VectorUint),
                prop::collection::vec(number(), 0..4).prop_map(Amf3Value::VectorDouble),
            ];
            leaf.prop_recursive(4, 32, 4, |inner| {
                let members = || prop::collection::vec((name(), inner.clone()), 0..4);
                prop_oneof![
                    (members(), prop::collection::vec(inner.clone(), 0..4))
                        .prop_map(|(assoc, dense)| Amf3Value::Array { assoc, dense }),
                    // Sealed names may be empty; dynamic names may not.
                    (
                        text(),
                        prop::collection::vec((text(), inner.clone()), 0..4),
                        members()
                    )
                        .prop_map(|(class, sealed, dynamic)| {
                            Amf3Value::Object {
                                class,
                                sealed,
                                dynamic,
                            }
                        }),
                    (text(), prop::collection::vec(inner.clone(), 0..4))
                        .prop_map(|(class, items)| Amf3Value::VectorObject { class, items }),
                    prop::collection::vec((inner.clone(), inner), 0..4)
                        .prop_map(Amf3Value::Dictionary),
                ]
            })
        }

        fn amf0_value() -> impl Strategy<Value = Amf0Value> {
            let leaf = prop_oneof![
                number().prop_map(Amf0Value::Number),
                any::<bool>().prop_map(Amf0Value::Boolean),
                text().prop_map(Amf0Value::String),
                Just(Amf0Value::Null),
                Just(Amf0Value::Undefined),
                (number(), any::<i16>())
                    .prop_map(|(millis, timezone)| Amf0Value::Date { millis, timezone }),
                text().prop_map(Amf0Value::LongString),
                text().prop_map(Amf0Value::XmlDocument),
                amf3_value().prop_map(Amf0Value::Amf3),
            ];
            leaf.prop_recursive(4, 32, 4, |inner| {
                // Any name, the empty one included, round-trips in AMF0.
                let props = || prop::collection::vec((text(), inner.clone()), 0..4);
                prop_oneof![
                    props().prop_map(Amf0Value::Object),
                    props().prop_map(Amf0Value::EcmaArray),
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Amf0Value::StrictArray),
                    (text(), props()).prop_map(|(class, properties)| {
                        Amf0Value::TypedObject { class, properties }
                    }),
                ]
            })
        }

        proptest! {
            #[test]
            fn encode_then_decode_gives_the_same_values(
                values in prop::collection::vec(amf0_value(), 0..4)
            ) {
                let bytes = encode_all(&values);
                prop_assert_eq!(decode_all(&bytes, &limits()), Ok(values));
            }

            #[test]
            fn amf3_object_reference_decodes_to_a_copy(value in amf3_value()) {
                // Only complex values (and dates, XML, ByteArrays, vectors)
                // enter the object table.
                prop_assume!(!matches!(
                    value,
                    Amf3Value::Undefined
                        | Amf3Value::Null
                        | Amf3Value::Boolean(_)
                        | Amf3Value::Integer(_)
                        | Amf3Value::Double(_)
                        | Amf3Value::String(_)
                ));
                let mut encoded = BytesMut::new();
                encode_amf3(&value, &mut encoded);
                let mut bytes = vec![
                    0x09, // array (object #0)
                    0x05, // inline, 2 dense
                    0x01, // no assoc part
                ];
                bytes.extend_from_slice(&encoded);
                bytes.extend_from_slice(&[
                    encoded[0], // the same marker
                    0x02,       // object reference 1
                ]);
                prop_assert_eq!(
                    amf3(&bytes),
                    Ok(Amf3Value::Array { assoc: vec![], dense: vec![value.clone(), value] })
                );
            }

            #[test]
            fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
                let _ = decode_all(&bytes, &limits());
                let mut amf3 = vec![0x11];
                amf3.extend_from_slice(&bytes);
                let _ = decode_all(&amf3, &limits());
            }
        }
    }
}
