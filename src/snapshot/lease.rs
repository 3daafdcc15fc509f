//! Leases: a reader's hold on a filtered snapshot, a shared lock on its `.readers` file that
//! eviction ([`SnapshotStore::evict_filtered`](super::SnapshotStore::evict_filtered)) respects,
//! in any process.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use crate::lock_file;
use crate::{Error, Result};

/// The file whose shared lock a reader of a filtered snapshot holds (see [`Lease`]).
pub(super) const LEASE_FILE: &str = ".readers";

/// A hold on a filtered snapshot (a shared lock on its `.readers` file): while one exists in
/// any process, [`SnapshotStore::evict_filtered`](super::SnapshotStore::evict_filtered) leaves
/// that snapshot alone. Cloning shares it; the lock is released when the last clone is dropped
/// (or the process ends).
#[derive(Debug, Clone)]
pub struct Lease {
    _locked: Arc<File>,
}

impl Lease {
    /// A lease on the [`LEASE_FILE`] at `path` (in a filtered snapshot's named folder, or in a
    /// snapshot's own folder), recording its use; `None` when the folder does not exist or is
    /// being removed.
    pub(super) fn take(path: &Path) -> Result<Option<Lease>> {
        // Eviction may remove the folder between our open and our lock, and a new export may
        // make it again: the lock counts only on the file the path names now.
        for _ in 0..3 {
            let file = match lock_file::try_lock_shared(path) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io(path, e)),
            };
            if lock_file::same_file(&file, path) {
                // The last use orders eviction; failing to record it only makes eviction earlier.
                let _ = file.set_modified(SystemTime::now());
                return Ok(Some(Lease {
                    _locked: Arc::new(file),
                }));
            }
        }
        Ok(None)
    }
}
