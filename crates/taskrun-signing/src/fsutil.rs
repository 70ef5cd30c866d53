//! Small file helpers: atomic writes with a given mode, bounded reads.

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::path::Path;

use crate::{Error, Result};

/// Whether writing a file may replace one that exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    /// Fail with [`Error::AlreadyExists`] if the file exists.
    Refuse,
    /// Replace the file (atomically) if it exists.
    Allow,
}

/// Writes `contents` to `path` atomically: a temporary file in the same
/// directory, created with `mode` (Unix), written and synced, then renamed
/// into place (without replacing an existing file unless `overwrite` allows
/// it), then the directory is synced. Readers see the old file or the whole
/// new one, never a part.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32, overwrite: Overwrite) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if overwrite == Overwrite::Refuse && path.symlink_metadata().is_ok() {
        return Err(Error::AlreadyExists { path: path.to_owned() });
    }
    let mut builder = tempfile::Builder::new();
    builder.prefix(".taskrun-").suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        builder.permissions(std::fs::Permissions::from_mode(mode));
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut tmp = builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))?;
    tmp.write_all(contents).map_err(|e| Error::io(tmp.path(), e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(tmp.path(), e))?;
    let persisted = match overwrite {
        Overwrite::Refuse => tmp.persist_noclobber(path),
        Overwrite::Allow => tmp.persist(path),
    };
    if let Err(e) = persisted {
        // Dropping `e.file` removes the temporary file.
        return Err(if e.error.kind() == io::ErrorKind::AlreadyExists {
            Error::AlreadyExists { path: path.to_owned() }
        } else {
            Error::io(path, e.error)
        });
    }
    #[cfg(unix)]
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))?;
    Ok(())
}

/// Reads a whole file of at most `max` bytes; longer files are refused
/// without reading them whole.
pub(crate) fn read_bounded(path: &Path, what: &'static str, max: u64) -> Result<(File, Vec<u8>)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::io(path, io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")));
    }
    let mut buf = Vec::with_capacity(usize::try_from(meta.len().min(max)).unwrap_or(0));
    (&file).take(max + 1).read_to_end(&mut buf).map_err(|e| Error::io(path, e))?;
    if buf.len() as u64 > max {
        return Err(Error::TooLarge { what, len: meta.len().max(buf.len() as u64), max }.in_file(path));
    }
    Ok((file, buf))
}
