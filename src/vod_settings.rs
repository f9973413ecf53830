//! Video on demand settings: an application with a `[app.NAME.vod]` table
//! plays files from a directory instead of live streams
//! (`rtmp://HOST/NAME/path/file.mp4`, `http://HOST/NAME/path/file.mp4`).
//! docs/vod.md describes the feature.

use serde::Deserialize;
use std::path::PathBuf;

/// `[app.NAME.vod]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VodApp {
    /// The directory files are played from (a recordings directory or any
    /// other). Only files under it are served.
    pub dir: PathBuf,
    /// Serve a file whose path leads outside `dir` through a symbolic link
    /// (default false: such a file is not found, and the refusal logged).
    #[serde(default)]
    pub follow_symlinks: bool,
}

impl VodApp {
    /// The directory exists and is a directory (checked when the
    /// configuration is loaded, before any worker runs).
    pub fn check(&self) -> Result<(), String> {
        match std::fs::metadata(&self.dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(format!("dir = {:?} is not a directory", self.dir)),
            Err(e) => Err(format!("dir = {:?}: {e}", self.dir)),
        }
    }
}
