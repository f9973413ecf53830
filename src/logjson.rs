//! `--log-format json`: each log line as one JSON object, for log shippers
//! (journald's JSON export, Vector, Fluent Bit, Loki, Elasticsearch).
//!
//! ```json
//! {"timestamp":"2025-06-01T12:00:00.123Z","level":"INFO","target":"sluice::server::ctx",
//!  "message":"play start stream=live/cam conn=7 peer=203.0.113.9:50122 worker=0 protocol=rtmp live=true cached_frames=61",
//!  "fields":{"stream":"live/cam","conn":7,"peer":"203.0.113.9:50122","worker":0,"protocol":"rtmp","live":true,"cached_frames":61}}
//! ```
//!
//! `message` is the text line's message, unchanged (what grep finds in
//! the text format is there); `fields` holds its `key=value` words: a value
//! of digits is a number, `true`/`false` a boolean, `"..."` (a quoted
//! string, as the debug lines write names) the string inside, anything else
//! the word as written, less one trailing `:` or `,`. A key seen twice keeps
//! its first value. docs/deploying.md documents the shape for operators.

use serde_json::{Map, Value};

/// One line: the JSON object for a record, without the newline.
pub fn line(timestamp: &str, level: &str, target: &str, message: &str) -> String {
    let mut o = Map::new();
    o.insert("timestamp".into(), Value::from(timestamp));
    o.insert("level".into(), Value::from(level));
    o.insert("target".into(), Value::from(target));
    o.insert("message".into(), Value::from(message));
    o.insert("fields".into(), Value::Object(fields(message)));
    Value::Object(o).to_string()
}

/// The `key=value` words of a message (see the module documentation).
pub fn fields(message: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let mut rest = message;
    while !rest.is_empty() {
        let start = rest.trim_start();
        let Some((key, after)) = field_key(start) else {
            // Not a field: skip this word.
            let end = start.find(char::is_whitespace).unwrap_or(start.len());
            rest = &start[end..];
            continue;
        };
        let (value, remaining) = field_value(after);
        if let Some(v) = value {
            out.entry(key.to_owned()).or_insert(v);
        }
        rest = remaining;
    }
    out
}

/// `key=` at the start of `s`: a key is a lowercase letter then letters,
/// digits or `_`. Returns the key and what follows the `=`.
fn field_key(s: &str) -> Option<(&str, &str)> {
    let eq = s.find('=')?;
    let key = &s[..eq];
    let mut chars = key.chars();
    let first = chars.next()?;
    if !first.is_ascii_lowercase() || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    Some((key, &s[eq + 1..]))
}

/// The value at the start of `s` and what follows it.
fn field_value(s: &str) -> (Option<Value>, &str) {
    if let Some(quoted) = s.strip_prefix('"') {
        // A Rust debug string: `\"` and `\\` are escapes.
        let mut text = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, e)) => text.push(e),
                    None => break,
                },
                '"' => return (Some(Value::from(text)), &quoted[i + 1..]),
                c => text.push(c),
            }
        }
        // No closing quote: not a field.
        return (None, "");
    }
    let end = s.find(char::is_whitespace).unwrap_or(s.len());
    let word = &s[..end];
    let word = word
        .strip_suffix(':')
        .or_else(|| word.strip_suffix(','))
        .unwrap_or(word);
    if word.is_empty() {
        return (None, &s[end..]);
    }
    let value = if word.bytes().all(|b| b.is_ascii_digit()) {
        word.parse::<u64>()
            .map_or_else(|_| Value::from(word), Value::from)
    } else {
        match word {
            "true" => Value::from(true),
            "false" => Value::from(false),
            _ => Value::from(word),
        }
    };
    (Some(value), &s[end..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_fields_of_a_close_line() {
        let f = fields(
            "close player conn=12 peer=[::1]:50122 worker=0 bytes_in=3 bytes_out=9000 (stalled): socket accepted nothing",
        );
        assert_eq!(
            Value::Object(f),
            json!({"conn": 12, "peer": "[::1]:50122", "worker": 0, "bytes_in": 3, "bytes_out": 9000})
        );
    }

    #[test]
    fn trailing_colons_quotes_and_booleans() {
        let f = fields(
            "conn=3 peer=127.0.0.1:5000 worker=1 listener=Rtmp: accepted; connect app=\"li\\\"ve\" live=false odd=\"unclosed",
        );
        assert_eq!(
            Value::Object(f),
            json!({"conn": 3, "peer": "127.0.0.1:5000", "worker": 1, "listener": "Rtmp", "app": "li\"ve", "live": false})
        );
    }

    #[test]
    fn words_that_are_not_fields() {
        let f = fields("=x URL=upper 9x=1 x= y=, stream=live/a stream=live/b");
        assert_eq!(Value::Object(f), json!({"stream": "live/a"}));
        assert!(fields("").is_empty());
        assert!(fields("   ").is_empty());
    }

    #[test]
    fn a_line_is_one_object_with_the_message_unchanged() {
        let text = line(
            "2025-01-01T00:00:00.000Z",
            "INFO",
            "sluice",
            "say \"hi\"\nthere conn=1",
        );
        assert!(!text.contains('\n'), "one line: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["message"], "say \"hi\"\nthere conn=1");
        assert_eq!(v["fields"]["conn"], 1);
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "sluice");
        assert_eq!(v["timestamp"], "2025-01-01T00:00:00.000Z");
    }
}
