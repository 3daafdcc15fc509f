//! Lock files: advisory locks (`flock` on Unix, `LockFileEx` on Windows, through the standard
//! library) on a file that exists only to be locked. A lock is released when its [`File`] is
//! dropped, and by the operating system when the process dies, so a crash never leaves one
//! behind. The file itself is never truncated or removed here: another process may hold it.
//!
//! Used by the snapshot store (its `.lock`, the `.readers` files of the leases that eviction and
//! garbage collection respect, writers' owner locks) and by the catalog's exports (one process
//! at a time per request's staging folder).
//! The callers say what a failure means (their errors name the path).

use std::fs::{File, TryLockError};
use std::io;
use std::path::Path;

/// Opens the lock file at `path`, creating it if needed, without changing its content.
fn open(path: &Path) -> io::Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
}

/// The lock file at `path`, locked exclusively: waits while another holder has it.
pub(crate) fn lock_exclusive(path: &Path) -> io::Result<File> {
    let file = open(path)?;
    file.lock()?;
    Ok(file)
}

/// [`lock_exclusive`], on the file `path` names once it is locked: one who removes a lock file
/// does so holding its lock, so the file opened before the removal may be locked after it.
pub(crate) fn lock_exclusive_named(path: &Path) -> io::Result<File> {
    loop {
        let file = lock_exclusive(path)?;
        if same_file(&file, path) {
            return Ok(file);
        }
    }
}

/// Whether `file` is the file `path` names now.
#[cfg(unix)]
pub(crate) fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), path.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Whether `file` is the file `path` names now (elsewhere an open file cannot be removed).
#[cfg(not(unix))]
pub(crate) fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

/// The lock file at `path`, locked exclusively; `None` while another holder has it.
pub(crate) fn try_lock_exclusive(path: &Path) -> io::Result<Option<File>> {
    let file = open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// The lock file at `path`, with a shared lock (any number of shared holders, no exclusive
/// one); `None` while an exclusive holder has it.
pub(crate) fn try_lock_shared(path: &Path) -> io::Result<Option<File>> {
    let file = open(path)?;
    match file.try_lock_shared() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_and_shared_exclude_each_other_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        let held = lock_exclusive(&path).unwrap();
        assert!(try_lock_exclusive(&path).unwrap().is_none());
        assert!(try_lock_shared(&path).unwrap().is_none());
        drop(held);
        let first = try_lock_shared(&path).unwrap().expect("free");
        let second = try_lock_shared(&path).unwrap().expect("shared");
        assert!(try_lock_exclusive(&path).unwrap().is_none());
        drop((first, second));
        assert!(try_lock_exclusive(&path).unwrap().is_some());
        assert!(path.is_file(), "the file stays");
    }

    #[test]
    fn a_missing_folder_is_an_error_of_kind_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gone").join(".readers");
        let e = try_lock_shared(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
