//! Durations as a person writes them, in a flag (`--ping-timeout 1.5`) or
//! the config file (`ping_timeout = 1.5`, `timeout = 3`): a positive number
//! of seconds, fractions allowed. One parser for every such value, so a
//! flag, a file key, a hook's `timeout` and a pull rule's `idle_timeout`
//! accept and refuse the same things with the same words.

use serde::Deserialize;
use std::time::Duration;

/// The longest duration a setting may name: about 31 years. Anything longer
/// is a typo, and staying far below what `Instant` can add keeps every
/// deadline computed from a setting from overflowing (a panic, not an error).
pub const MAX_SECS: f64 = 1e9;

/// `secs` as a duration, if it is positive, finite and at most [`MAX_SECS`].
pub fn positive(secs: f64) -> Result<Duration, String> {
    if !(secs.is_finite() && secs > 0.0) {
        return Err("expected a positive number of seconds".into());
    }
    if secs > MAX_SECS {
        return Err(format!(
            "expected a positive number of seconds, at most {MAX_SECS}"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A flag's text: a positive number of seconds.
pub fn parse(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| "expected a positive number of seconds".to_owned())?;
    positive(secs)
}

/// How a duration is shown in `--help`: whole seconds without a fraction.
pub fn show(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        d.as_secs_f64().to_string()
    }
}

/// A positive number of seconds in the config file (an integer or a float).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secs(pub Duration);

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        positive(v).map(Secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_seconds_only() {
        assert_eq!(parse("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse(" 2 "), Ok(Duration::from_secs(2)));
        for bad in ["0", "-1", "nan", "inf", "", "ten", "1e30", "1e10"] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("positive number of seconds"), "{bad}: {e}");
        }
        assert!(positive(MAX_SECS).is_ok());
    }

    #[test]
    fn file_values_go_through_the_same_check() {
        #[derive(Deserialize)]
        struct T {
            t: Secs,
        }
        let t: T = toml::from_str("t = 3").unwrap();
        assert_eq!(t.t, Secs(Duration::from_secs(3)));
        let t: T = toml::from_str("t = 0.25").unwrap();
        assert_eq!(t.t, Secs(Duration::from_millis(250)));
        for bad in ["t = 0", "t = -2.5", "t = 1e12", "t = \"3\""] {
            assert!(toml::from_str::<T>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn help_shows_whole_seconds_plainly() {
        assert_eq!(show(Duration::from_secs(30)), "30");
        assert_eq!(show(Duration::from_millis(1500)), "1.5");
    }
}
