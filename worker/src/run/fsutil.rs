//! Durable file replacement: write to a temporary name in the same
//! directory, fsync, rename over the target, fsync the directory. A reader
//! sees the old file or the new one, never a mix; after a crash the new
//! one is either complete or absent.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::error::{IoContext, Result};

/// Prefix of every temporary file or directory this module creates; a
/// crash can leave them behind and [`is_temp_name`] recognises them.
pub(crate) const TEMP_PREFIX: &str = ".tmp-";

pub(crate) fn is_temp_name(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// A name unique within this process and, with the pid, across processes.
pub(crate) fn temp_sibling(target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = target
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = format!("{TEMP_PREFIX}{name}.{}.{n}", std::process::id());
    target.with_file_name(tmp)
}

/// Writes `bytes` to `path` atomically and durably (see the module docs).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    fs::create_dir_all(&dir).at(&dir)?;
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = File::create(&tmp).at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        drop(f);
        fs::rename(&tmp, path).at(path)?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// The directory holding `path` ("." for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Makes a directory's entries (creations, renames) durable. A no-op where
/// directories cannot be opened as files (Windows).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        File::open(dir).at(dir)?.sync_all().at(dir)?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
