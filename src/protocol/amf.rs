//! AMF0 (Action Message Format 0, Adobe's amf0-file-format-specification) and
//! the AMF3 values an AMF0 stream may switch into with the AVM+ marker (0x11).
//! PLACEHOLDER: interface only; the implementation replaces this file.

use bytes::BytesMut;
use std::fmt;

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AmfError {
    Truncated { needed: usize, remaining: usize },
}

impl fmt::Display for AmfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}
impl std::error::Error for AmfError {}

/// Decodes every AMF0 value in `input`, in order.
pub fn decode_all(input: &[u8], limits: &AmfLimits) -> Result<Vec<Amf0Value>, AmfError> {
    let _ = (input, limits);
    todo!()
}

/// Appends the AMF0 encoding of `value` to `dst`.
pub fn encode(value: &Amf0Value, dst: &mut BytesMut) {
    let _ = (value, dst);
    todo!()
}

impl Amf0Value {
    /// The string inside String, LongString or an AMF3 string.
    pub fn as_str(&self) -> Option<&str> {
        todo!()
    }
    /// The number inside Number or an AMF3 double/integer.
    pub fn as_number(&self) -> Option<f64> {
        todo!()
    }
    /// The boolean inside Boolean or an AMF3 boolean.
    pub fn as_bool(&self) -> Option<bool> {
        todo!()
    }
    /// A property of an Object, EcmaArray or TypedObject (first match).
    pub fn get(&self, key: &str) -> Option<&Amf0Value> {
        let _ = key;
        todo!()
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
