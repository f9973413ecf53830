//! HLS settings: the server-wide ones are in the settings table
//! (`--hls-part-target` and friends, `src/config.rs`); this module holds
//! their checks, the per-application overrides (`[app.NAME.hls]`), the
//! stream groups (`[[hls_group]]`: separately published names offered as
//! one multivariant playlist), and how they make a packager's
//! configuration.

use crate::cmaf::PackagerConfig;
use crate::protocol::name::StreamKey;
use crate::seconds::Secs;
use serde::Deserialize;
use std::time::Duration;

/// The part target's bounds are the packager's (`PackagerConfig::validate`),
/// checked here so a bad value is refused with the setting's name: shorter
/// parts only add requests, longer ones are no longer low latency.
const MIN_PART_TARGET: Duration = Duration::from_millis(100);
const MAX_PART_TARGET: Duration = Duration::from_secs(2);

/// The part target must allow parts of a frame or more and stay below the
/// target duration (checked with it in [`packager_config`]).
pub(crate) fn check_part_target(d: Duration) -> Result<(), String> {
    if d < MIN_PART_TARGET || d > MAX_PART_TARGET {
        return Err(format!(
            "HLS part target {d:?} must be within {MIN_PART_TARGET:?}..={MAX_PART_TARGET:?}"
        ));
    }
    Ok(())
}

/// EXT-X-TARGETDURATION is a whole number of seconds.
pub(crate) fn check_target_duration(d: Duration) -> Result<(), String> {
    if d.subsec_nanos() != 0 || !(1..=60).contains(&d.as_secs()) {
        return Err(format!(
            "HLS target duration {d:?} must be a whole number of seconds, 1 to 60"
        ));
    }
    Ok(())
}

/// `[app.NAME.hls]`: an application's HLS settings, each overriding the
/// server-wide one when given.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HlsApp {
    /// Package this application's streams (default: `--hls`).
    pub enabled: Option<bool>,
    pub part_target: Option<Secs>,
    pub target_duration: Option<Secs>,
    pub min_segment: Option<Secs>,
    pub window_segments: Option<usize>,
    pub window_bytes: Option<usize>,
    pub mux_audio: Option<bool>,
}

/// The server-wide HLS settings (from the settings table).
#[derive(Debug, Clone, Copy)]
pub struct HlsDefaults {
    pub enabled: bool,
    pub part_target: Duration,
    pub target_duration: Duration,
    pub min_segment: Duration,
    pub window_segments: usize,
    pub window_bytes: usize,
    pub mux_audio: bool,
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// The packager configuration for an application with `app`'s overrides
/// (None: HLS is off for it), checked by the packager itself.
pub fn packager_config(
    defaults: &HlsDefaults,
    app: Option<&HlsApp>,
) -> Result<Option<PackagerConfig>, String> {
    let over = app.cloned().unwrap_or_default();
    if !over.enabled.unwrap_or(defaults.enabled) {
        return Ok(None);
    }
    let part_target = over.part_target.map_or(defaults.part_target, |s| s.0);
    let target_duration = over
        .target_duration
        .map_or(defaults.target_duration, |s| s.0);
    check_part_target(part_target)?;
    check_target_duration(target_duration)?;
    let config = PackagerConfig {
        part_target_ms: millis(part_target),
        target_duration_s: u32::try_from(target_duration.as_secs()).unwrap_or(u32::MAX),
        min_segment_ms: millis(over.min_segment.map_or(defaults.min_segment, |s| s.0)),
        window_segments: over.window_segments.unwrap_or(defaults.window_segments),
        window_bytes: over.window_bytes.unwrap_or(defaults.window_bytes),
        mux_audio: over.mux_audio.unwrap_or(defaults.mux_audio),
    };
    crate::cmaf::Packager::new(config.clone()).map_err(|e| e.to_string())?;
    Ok(Some(config))
}

/// `[[hls_group]]`: streams published separately (`cam_1080`, `cam_720`,
/// ...) offered as one multivariant playlist at `stream`'s
/// `index.m3u8`, each member a variant (an adaptive-bitrate ladder without
/// transcoding).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HlsGroup {
    /// The group's own name, `APP/NAME`: its playlist is
    /// `/APP/NAME/index.m3u8`. It must not be a published stream's name.
    pub stream: String,
    /// The member streams, `APP/NAME` each, in the order the playlist
    /// lists them (players start with the first).
    pub variants: Vec<String>,
}

impl HlsGroup {
    /// Checks the names: valid stream keys, at least one member, no member
    /// twice, the group not its own member.
    pub fn check(&self) -> Result<(), String> {
        StreamKey::new(self.stream.as_str())
            .map_err(|e| format!("hls_group {:?}: {e}", self.stream))?;
        if self.variants.is_empty() {
            return Err(format!("hls_group {:?}: no variants", self.stream));
        }
        for (i, v) in self.variants.iter().enumerate() {
            StreamKey::new(v.as_str())
                .map_err(|e| format!("hls_group {:?}: {v:?}: {e}", self.stream))?;
            if *v == self.stream {
                return Err(format!("hls_group {:?} lists itself", self.stream));
            }
            if self.variants[..i].contains(v) {
                return Err(format!("hls_group {:?} lists {v:?} twice", self.stream));
            }
        }
        Ok(())
    }

    /// `--hls-group APP/NAME=APP/A,APP/B`.
    pub fn from_flag(arg: &str) -> Result<HlsGroup, String> {
        let (stream, list) = arg
            .split_once('=')
            .ok_or_else(|| format!("{arg:?}: expected APP/NAME=APP/A,APP/B"))?;
        let group = HlsGroup {
            stream: stream.to_owned(),
            variants: list.split(',').map(str::to_owned).collect(),
        };
        group.check()?;
        Ok(group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> HlsDefaults {
        HlsDefaults {
            enabled: true,
            part_target: Duration::from_millis(240),
            target_duration: Duration::from_secs(4),
            min_segment: Duration::from_secs(1),
            window_segments: 20,
            window_bytes: 32 << 20,
            mux_audio: true,
        }
    }

    #[test]
    fn an_application_overrides_what_it_names() {
        let app = HlsApp {
            part_target: Some(Secs(Duration::from_millis(500))),
            window_segments: Some(6),
            ..Default::default()
        };
        let c = packager_config(&defaults(), Some(&app)).unwrap().unwrap();
        assert_eq!(c.part_target_ms, 500);
        assert_eq!(c.window_segments, 6);
        assert_eq!(c.target_duration_s, 4, "the rest from the server");
        let off = HlsApp {
            enabled: Some(false),
            ..Default::default()
        };
        assert_eq!(packager_config(&defaults(), Some(&off)).unwrap(), None);
    }

    #[test]
    fn bad_values_are_refused_with_the_value() {
        let app = HlsApp {
            target_duration: Some(Secs(Duration::from_millis(2500))),
            ..Default::default()
        };
        let e = packager_config(&defaults(), Some(&app)).unwrap_err();
        assert!(e.contains("whole number of seconds"), "{e}");
        assert!(check_part_target(Duration::from_millis(10)).is_err());
    }

    #[test]
    fn groups_are_checked() {
        let g = HlsGroup::from_flag("live/cam=live/cam_1080,live/cam_720").unwrap();
        assert_eq!(g.variants, ["live/cam_1080", "live/cam_720"]);
        assert!(HlsGroup::from_flag("live/cam=live/cam").is_err());
        assert!(HlsGroup::from_flag("live/cam=live/a,live/a").is_err());
        assert!(HlsGroup::from_flag("live/cam").is_err());
        assert!(HlsGroup::from_flag("live/cam=../x").is_err());
    }
}
