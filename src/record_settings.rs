//! Recording settings: the server-wide ones are in the settings table
//! (`--record`, `--record-dir` and friends, `src/config.rs`); this module
//! holds the per-application overrides (`[app.NAME.record]`), the path
//! template and its expansion, and how they make one application's
//! [`RecordPolicy`]. docs/recording.md describes the feature.

use crate::seconds::Secs;
use serde::Deserialize;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What an application records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordMode {
    /// Nothing.
    #[default]
    Off,
    /// Every stream, from its publish to its end.
    All,
    /// Streams the API starts (`POST /api/streams/APP/NAME/record`).
    Manual,
}

impl std::str::FromStr for RecordMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self::Off),
            "all" => Ok(Self::All),
            "manual" => Ok(Self::Manual),
            _ => Err("expected off, all or manual".into()),
        }
    }
}

impl fmt::Display for RecordMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::All => "all",
            Self::Manual => "manual",
        })
    }
}

/// The container a recording is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordFormat {
    /// Fragmented MP4 from the CMAF packager's fragments: a crash loses at
    /// most the last fragment.
    #[default]
    Mp4,
    /// FLV, the tags as received, finished with a keyframe index.
    Flv,
}

impl RecordFormat {
    /// The file extension (`{ext}` in a path template).
    pub fn ext(self) -> &'static str {
        match self {
            Self::Mp4 => "mp4",
            Self::Flv => "flv",
        }
    }
}

impl std::str::FromStr for RecordFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mp4" => Ok(Self::Mp4),
            "flv" => Ok(Self::Flv),
            _ => Err("expected mp4 or flv".into()),
        }
    }
}

impl fmt::Display for RecordFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ext())
    }
}

/// `[app.NAME.record]`: an application's recording settings, each
/// overriding the server-wide one when given.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordApp {
    pub mode: Option<RecordMode>,
    pub format: Option<RecordFormat>,
    /// A path template (see [`PathTemplate`]).
    pub path: Option<String>,
    /// Start a new file at the first keyframe after this long.
    pub rotate_secs: Option<Secs>,
    /// Start a new file at the first keyframe after this many bytes.
    pub rotate_bytes: Option<u64>,
    /// Delete this application's recordings older than this.
    pub retention_secs: Option<Secs>,
}

/// The server-wide recording settings (from the settings table).
#[derive(Debug, Clone)]
pub struct RecordDefaults {
    pub mode: RecordMode,
    pub format: RecordFormat,
    /// Every recording is written under this directory.
    pub dir: PathBuf,
    pub path: String,
    pub rotate: Option<Duration>,
    pub rotate_bytes: Option<u64>,
    pub retention: Option<Duration>,
}

/// One application's recording policy: the defaults with its overrides.
#[derive(Debug, Clone)]
pub struct RecordPolicy {
    pub mode: RecordMode,
    pub format: RecordFormat,
    pub template: PathTemplate,
    pub rotate: Option<Duration>,
    pub rotate_bytes: Option<u64>,
    pub retention: Option<Duration>,
}

/// The policy for an application with `app`'s overrides, its template
/// checked against the record directory.
pub fn policy(defaults: &RecordDefaults, app: Option<&RecordApp>) -> Result<RecordPolicy, String> {
    let over = app.cloned().unwrap_or_default();
    let path = over.path.as_deref().unwrap_or(&defaults.path);
    let template = PathTemplate::parse(path, &defaults.dir)?;
    let rotate_bytes = over.rotate_bytes.or(defaults.rotate_bytes);
    if rotate_bytes == Some(0) {
        return Err("rotate_bytes 0: give a size, or leave it out for no rotation".into());
    }
    Ok(RecordPolicy {
        mode: over.mode.unwrap_or(defaults.mode),
        format: over.format.unwrap_or(defaults.format),
        template,
        rotate: over.rotate_secs.map(|s| s.0).or(defaults.rotate),
        rotate_bytes,
        retention: over.retention_secs.map(|s| s.0).or(defaults.retention),
    })
}

/// A piece of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    /// The application name.
    App,
    /// The stream name (it may hold `/`: subdirectories).
    Name,
    /// The start time, UTC: `YYYYMMDD-HHMMSS`.
    Start,
    /// The start date, UTC: `YYYYMMDD`.
    Date,
    /// The start time of day, UTC: `HHMMSS`.
    Time,
    /// The start time in seconds since the Unix epoch.
    Unix,
    /// `mp4` or `flv`.
    Ext,
}

/// A recording's path, relative to the record directory, with `{app}`,
/// `{name}`, `{start}` (UTC `YYYYMMDD-HHMMSS`), `{date}` (`YYYYMMDD`),
/// `{time}` (`HHMMSS`), `{unix}` (seconds) and `{ext}` (`mp4`, `flv`). An
/// absolute template must lie under the record directory. Its expansion
/// always stays under the directory: no `.` or `..` component, no absolute
/// part, checked when the template is read and again on every expansion
/// (names are validated where they enter, and checked again here anyway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    dir: PathBuf,
    pieces: Vec<Piece>,
}

impl PathTemplate {
    /// Parses `text` for the record directory `dir`.
    pub fn parse(text: &str, dir: &Path) -> Result<PathTemplate, String> {
        let bad = |why: &str| Err(format!("record path {text:?}: {why}"));
        let rel = if Path::new(text).is_absolute() {
            match Path::new(text).strip_prefix(dir) {
                Ok(r) => r.to_str().unwrap_or_default().to_owned(),
                Err(_) => {
                    return bad(&format!(
                        "an absolute path must lie under the record directory {}",
                        dir.display()
                    ))
                }
            }
        } else {
            text.to_owned()
        };
        let mut pieces = Vec::new();
        let mut rest = rel.as_str();
        while !rest.is_empty() {
            match rest.find('{') {
                Some(0) => {
                    let Some(end) = rest.find('}') else {
                        return bad("a '{' without its '}'");
                    };
                    let piece = match &rest[1..end] {
                        "app" => Piece::App,
                        "name" => Piece::Name,
                        "start" => Piece::Start,
                        "date" => Piece::Date,
                        "time" => Piece::Time,
                        "unix" => Piece::Unix,
                        "ext" => Piece::Ext,
                        other => {
                            return bad(&format!(
                                "unknown key {{{other}}} (app, name, start, date, time, unix, ext)"
                            ))
                        }
                    };
                    pieces.push(piece);
                    rest = &rest[end + 1..];
                }
                found => {
                    let end = found.unwrap_or(rest.len());
                    let text = &rest[..end];
                    if text.contains('}') {
                        return bad("a '}' without its '{'");
                    }
                    pieces.push(Piece::Text(text.to_owned()));
                    rest = &rest[end..];
                }
            }
        }
        let t = PathTemplate {
            dir: dir.to_owned(),
            pieces,
        };
        if !t.pieces.contains(&Piece::Name) {
            return bad("it must hold {name} (two streams would share a file)");
        }
        if !t
            .pieces
            .iter()
            .any(|p| matches!(p, Piece::Start | Piece::Unix | Piece::Time | Piece::Date))
        {
            return bad("it must hold {start}, {unix} or {date}/{time} (a new file per publish)");
        }
        // The template's own text must not climb out: expand it with
        // harmless values and check.
        let probe = t.expand_raw("app", "name", UNIX_EPOCH, "mp4");
        if let Err(why) = check_relative(&probe) {
            return bad(&why);
        }
        if probe.ends_with('/') {
            return bad("it names a directory, not a file");
        }
        Ok(t)
    }

    fn expand_raw(&self, app: &str, name: &str, start: SystemTime, ext: &str) -> String {
        let secs = start.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let (y, mo, d, h, mi, s) = utc(secs);
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::App => out.push_str(app),
                Piece::Name => out.push_str(name),
                Piece::Start => out.push_str(&format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")),
                Piece::Date => out.push_str(&format!("{y:04}{mo:02}{d:02}")),
                Piece::Time => out.push_str(&format!("{h:02}{mi:02}{s:02}")),
                Piece::Unix => out.push_str(&secs.to_string()),
                Piece::Ext => out.push_str(ext),
            }
        }
        out
    }

    /// The path of a recording of `app`/`name` started at `start`, under
    /// the record directory; an error if it would not stay under it.
    pub fn expand(
        &self,
        app: &str,
        name: &str,
        start: SystemTime,
        format: RecordFormat,
    ) -> Result<PathBuf, String> {
        let rel = self.expand_raw(app, name, start, format.ext());
        check_relative(&rel).map_err(|why| format!("recording path {rel:?}: {why}"))?;
        Ok(self.dir.join(rel))
    }

    /// The directory whose files belong to application `app`: the record
    /// directory, then the template's leading components made of text and
    /// `{app}` only (`{app}/{name}/...` → `DIR/APP`).
    pub fn app_root(&self, app: &str) -> PathBuf {
        let mut root = self.dir.clone();
        let mut component = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => {
                    let mut parts = t.split('/');
                    if let Some(first) = parts.next() {
                        component.push_str(first);
                    }
                    for part in parts {
                        if !component.is_empty() {
                            root.push(&component);
                        }
                        component = part.to_owned();
                    }
                }
                Piece::App => component.push_str(app),
                _ => return root,
            }
        }
        root
    }

    /// The record directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A relative path with only normal components.
fn check_relative(rel: &str) -> Result<(), String> {
    let path = Path::new(rel);
    if rel.is_empty() || path.is_absolute() {
        return Err("not a relative path".into());
    }
    if rel.split('/').any(|c| c.is_empty() && !rel.ends_with('/')) {
        return Err("an empty path component".into());
    }
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err("a '.' or '..' component would leave the record directory".into());
    }
    Ok(())
}

/// Seconds since the Unix epoch as a UTC civil date and time (proleptic
/// Gregorian; H. Hinnant's days-from-civil, inverted).
pub fn utc(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem / 60 % 60) as u32,
        (rem % 60) as u32,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from("/var/rec")
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), (1970, 1, 1, 0, 0, 0));
        // 2000-02-29 12:34:56 (a leap day).
        assert_eq!(utc(951_827_696), (2000, 2, 29, 12, 34, 56));
        // 2026-12-31 23:59:59.
        assert_eq!(utc(1_798_761_599), (2026, 12, 31, 23, 59, 59));
    }

    #[test]
    fn templates_expand_under_the_directory() {
        let t = PathTemplate::parse("{app}/{name}/{start}.{ext}", &dir()).unwrap();
        let at = UNIX_EPOCH + Duration::from_secs(951_827_696);
        assert_eq!(
            t.expand("live", "cam/a", at, RecordFormat::Flv).unwrap(),
            Path::new("/var/rec/live/cam/a/20000229-123456.flv")
        );
        let abs = PathTemplate::parse("/var/rec/x/{name}-{date}-{time}.mp4", &dir()).unwrap();
        assert_eq!(
            abs.expand("live", "cam", at, RecordFormat::Mp4).unwrap(),
            Path::new("/var/rec/x/cam-20000229-123456.mp4")
        );
        // A name that would climb out is refused at expansion too.
        assert!(t.expand("live", "../x", at, RecordFormat::Mp4).is_err());
        assert!(t.expand("..", "x", at, RecordFormat::Mp4).is_err());
    }

    #[test]
    fn bad_templates_say_why() {
        for (text, why) in [
            ("/etc/{name}-{start}.mp4", "under the record directory"),
            ("../{name}-{start}.mp4", "leave the record directory"),
            ("{app}/{start}.mp4", "{name}"),
            ("{app}/{name}.mp4", "{start}"),
            ("{name}/{start", "without its '}'"),
            ("{name}/{begin}.mp4", "unknown key {begin}"),
            ("{name}/{start}/", "a directory"),
        ] {
            let e = PathTemplate::parse(text, &dir()).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn an_applications_files_are_under_its_root() {
        let t = PathTemplate::parse("{app}/{name}/{start}.{ext}", &dir()).unwrap();
        assert_eq!(t.app_root("live"), Path::new("/var/rec/live"));
        let t = PathTemplate::parse("archive/{app}-x/{name}-{start}.mp4", &dir()).unwrap();
        assert_eq!(t.app_root("live"), Path::new("/var/rec/archive/live-x"));
        let t = PathTemplate::parse("{name}/{start}.mp4", &dir()).unwrap();
        assert_eq!(t.app_root("live"), Path::new("/var/rec"));
    }

    #[test]
    fn an_application_overrides_what_it_names() {
        let d = RecordDefaults {
            mode: RecordMode::Off,
            format: RecordFormat::Mp4,
            dir: dir(),
            path: "{app}/{name}/{start}.{ext}".into(),
            rotate: None,
            rotate_bytes: None,
            retention: Some(Duration::from_secs(86_400)),
        };
        let app = RecordApp {
            mode: Some(RecordMode::All),
            format: Some(RecordFormat::Flv),
            rotate_secs: Some(Secs(Duration::from_secs(600))),
            ..Default::default()
        };
        let p = policy(&d, Some(&app)).unwrap();
        assert_eq!(p.mode, RecordMode::All);
        assert_eq!(p.format, RecordFormat::Flv);
        assert_eq!(p.rotate, Some(Duration::from_secs(600)));
        assert_eq!(
            p.retention,
            Some(Duration::from_secs(86_400)),
            "from the server"
        );
        let zero = RecordApp {
            rotate_bytes: Some(0),
            ..Default::default()
        };
        assert!(policy(&d, Some(&zero)).is_err());
    }
}
