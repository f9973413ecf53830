//! Application and stream names, checked once where they enter and carried
//! as types from then on.
//!
//! A client names an application in `connect` (`live`) and a stream in
//! `publish` / `play` (`cam`); the server knows the stream as the key
//! `app/stream` (`live/cam`). Names reach logs, the stream registry, HTTP
//! paths, callbacks and (later) file paths, so the rules are strict: not
//! empty, at most [`MAX_NAME_LEN`] bytes, no control character, no
//! backslash, no leading `/`, no empty, `.` or `..` segment. An application
//! name has no `/` at all; a stream name may (`live/a/b` is application
//! `live`, stream `a/b`).
//!
//! [`AppName`], [`StreamName`] and [`StreamKey`] can only be built through
//! those checks, so a function that takes one needs no check of its own.
//! Each derefs to `str`, so reading one is as cheap as reading a `String`.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;

/// Longest app or stream name accepted, in bytes. Names reach logs, the
/// registry and (later) file paths and callbacks; real names are short.
pub const MAX_NAME_LEN: usize = 256;

/// Why a name was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The name holds a control character or a backslash.
    BadCharacter,
    /// The name starts with `/`, or has an empty, `.` or `..` segment.
    BadSegment,
    /// An application name holds a `/`.
    SlashInApp,
    /// A stream key has no `/` between application and stream.
    NoStream,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "the name is empty"),
            Self::TooLong { len } => {
                write!(f, "the name has {len} bytes, more than {MAX_NAME_LEN}")
            }
            Self::BadCharacter => write!(f, "the name holds a control character or a backslash"),
            Self::BadSegment => write!(
                f,
                "the name starts with '/' or has an empty, '.' or '..' segment"
            ),
            Self::SlashInApp => write!(f, "an application name has no '/'"),
            Self::NoStream => write!(f, "expected APP/NAME"),
        }
    }
}

impl std::error::Error for NameError {}

/// Checks the rules every name follows (see the module documentation).
fn check(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: name.len() });
    }
    if name.chars().any(|c| c.is_control() || c == '\\') {
        return Err(NameError::BadCharacter);
    }
    if name.starts_with('/')
        || name
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(NameError::BadSegment);
    }
    Ok(())
}

/// True for a name safe to use as an app or stream name: not empty, at most
/// [`MAX_NAME_LEN`] bytes, no control characters, no backslash, no `.` or
/// `..` path segment and no leading `/`. (An application name, in addition,
/// has no `/`: see [`AppName`].)
pub fn valid_name(name: &str) -> bool {
    check(name).is_ok()
}

/// The string newtype's shared impls: read access as `str`, comparison
/// with strings, conversion back to `String`, and parsing through `new`.
macro_rules! name_type {
    ($ty:ident) => {
        impl $ty {
            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The name as an owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        /// Shown as the string it holds, so logs read as before.
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.as_str(), f)
            }
        }

        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<String> for $ty {
            fn eq(&self, other: &String) -> bool {
                self.as_str() == other
            }
        }

        impl From<$ty> for String {
            fn from(n: $ty) -> String {
                n.into_string()
            }
        }

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = NameError;
            fn try_from(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
    };
}

/// An application name (`live`): a [valid name](valid_name) with no `/`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AppName(String);

impl AppName {
    /// Checks `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        check(&name)?;
        if name.contains('/') {
            return Err(NameError::SlashInApp);
        }
        Ok(Self(name))
    }
}

name_type!(AppName);

/// A stream name within an application (`cam`, or `a/b`): a
/// [valid name](valid_name), without the `?query` a client may append.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamName(String);

impl StreamName {
    /// Checks `name`.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        check(&name)?;
        Ok(Self(name))
    }
}

name_type!(StreamName);

/// A stream as the server knows it: `app/name`, split at its first `/`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamKey(String);

impl StreamKey {
    /// Checks `key`: an [`AppName`], `/`, and a [`StreamName`].
    pub fn new(key: impl Into<String>) -> Result<Self, NameError> {
        let key = key.into();
        let (app, name) = key.split_once('/').ok_or(NameError::NoStream)?;
        check(app)?;
        check(name)?;
        Ok(Self(key))
    }

    /// The key of `name` in `app` (both already checked).
    pub fn of(app: &AppName, name: &StreamName) -> Self {
        Self(format!("{app}/{name}"))
    }

    /// The application part.
    pub fn app(&self) -> &str {
        self.split().0
    }

    /// The stream name part.
    pub fn name(&self) -> &str {
        self.split().1
    }

    /// The application and the stream name.
    pub fn split(&self) -> (&str, &str) {
        // Built only through `new` or `of`: there is a '/'.
        self.0.split_once('/').unwrap_or((&self.0, ""))
    }
}

name_type!(StreamKey);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        for good in [
            "live",
            "cam",
            "a-b_c.d",
            "a/b",
            "x?y",
            "ünï",
            &"n".repeat(MAX_NAME_LEN),
        ] {
            assert!(valid_name(good), "{good:?}");
            assert_eq!(StreamName::new(good).unwrap(), good);
        }
        for (bad, why) in [
            ("", NameError::Empty),
            ("a\nb", NameError::BadCharacter),
            ("a\\b", NameError::BadCharacter),
            ("/a", NameError::BadSegment),
            ("a/", NameError::BadSegment),
            ("a//b", NameError::BadSegment),
            ("a/./b", NameError::BadSegment),
            ("..", NameError::BadSegment),
            ("a/../b", NameError::BadSegment),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
            assert_eq!(StreamName::new(bad), Err(why), "{bad:?}");
            assert_eq!(AppName::new(bad), Err(why), "{bad:?}");
        }
        let long = "n".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            StreamName::new(long.as_str()),
            Err(NameError::TooLong {
                len: MAX_NAME_LEN + 1
            })
        );
    }

    #[test]
    fn an_application_name_has_no_slash() {
        assert_eq!(AppName::new("a/b"), Err(NameError::SlashInApp));
        assert!(StreamName::new("a/b").is_ok());
        assert_eq!("live".parse::<AppName>().unwrap().as_str(), "live");
    }

    #[test]
    fn a_key_splits_at_its_first_slash() {
        let key = StreamKey::new("live/a/b").unwrap();
        assert_eq!(key.split(), ("live", "a/b"));
        assert_eq!((key.app(), key.name()), ("live", "a/b"));
        let app = AppName::new("live").unwrap();
        let name = StreamName::new("a/b").unwrap();
        assert_eq!(StreamKey::of(&app, &name), key);
        assert_eq!(key.to_string(), "live/a/b");
        for bad in ["live", "live/", "/cam", "live/../x", ""] {
            assert!(StreamKey::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(StreamKey::new("live"), Err(NameError::NoStream));
    }

    #[test]
    fn names_read_and_compare_as_strings() {
        let name = StreamName::new("cam").unwrap();
        let owned = String::from("cam");
        assert!(name == "cam" && name == *"cam" && name == owned);
        assert_eq!(&*name, "cam");
        assert_eq!(format!("{name} {name:?}"), "cam \"cam\"");
        let mut set = std::collections::HashSet::new();
        set.insert(name.clone());
        assert!(set.contains("cam"), "Borrow<str> hashes as the string does");
        assert_eq!(String::from(name), "cam");
    }
}
