//! The snapshots' home on an object store: with a tables' location
//! ([`SnapshotStore::with_table_location`], `--cache-dir s3://...`), each committed snapshot of a
//! type goes there too, beside the type's Delta tables and in the cache folder's own layout:
//! `<location>/<source-key>/<Type>/<snapshot>/raw/...` (the raw NDJSON, the source of views and
//! other modes) and, uploaded last as the sign that the rest is there, its `manifest.json`. Its
//! tables' files are the Delta tables' (`<Type>/<mode>/<snapshot>/`). Another machine with the
//! same location then adopts the latest snapshot ([`SnapshotStore::adopt`]) instead of
//! exporting again, and `cache gc` removes the superseded ones there ([`collect`]).
//!
//! What a machine reads, it reads from its own copy: a query never waits on the object store
//! beyond the adoption, and the cache folder's locks and leases keep their meaning on it. On
//! the object store, the retention is the lease: a snapshot stays there for `--retention` after
//! a newer one supersedes it, as its Delta versions do.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use url::Url;

use super::lease::LEASE_FILE;
use super::manifest::{MANIFEST_FILE, to_json, write_atomic};
use super::names::{check_manifest_paths, is_filtered, is_snapshot_id, snapshot_time};
use super::writer::TmpFolder;
use super::{Lease, Snapshot, SnapshotManifest, SnapshotStore, delta};
use crate::{Error, Result};

/// The largest manifest adopted: a type's manifest lists its files, not its rows.
const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// How many of the newest snapshot folders at a home are tried for a manifest: those without
/// one are being uploaded, or their upload died.
const MAX_CANDIDATES: usize = 8;

/// The paths, relative to the home, of the raw files of `manifest` there: where each was first
/// committed ([`super::RawFile::origin`]), else in the snapshot's folder.
fn raw_at_home(manifest: &SnapshotManifest) -> impl Iterator<Item = (String, &str)> {
    manifest.raw.iter().map(|r| {
        let at = r.origin.clone();
        let at = at.unwrap_or_else(|| format!("{}/{}", manifest.snapshot, r.path));
        (at, r.path.as_str())
    })
}

/// Uploads the raw files of the snapshot in `dir` (of `manifest`, whose id is `dir`'s name) to
/// `home`, those there already aside: before its commit, outside the store's lock.
pub(super) fn upload_raw(home: &Url, dir: &Path, manifest: &SnapshotManifest) -> Result<()> {
    let files: Vec<(PathBuf, String)> = raw_at_home(manifest)
        .map(|(at, path)| (dir.join(path), at))
        .collect();
    delta::upload(home, &files)
}

/// Uploads the committed snapshot's manifest (in its folder `dir`) to `home`: the snapshot is
/// then whole there, for other machines to adopt.
pub(super) fn upload_manifest(home: &Url, dir: &Path, id: &str) -> Result<()> {
    delta::upload(
        home,
        &[(dir.join(MANIFEST_FILE), format!("{id}/{MANIFEST_FILE}"))],
    )
}

/// The snapshot ids with a folder at `home`, newest first.
async fn snapshot_ids(
    store: &deltalake::logstore::ObjectStoreRef,
) -> std::result::Result<Vec<String>, String> {
    let listed = store
        .list_with_delimiter(None)
        .await
        .map_err(|e| e.to_string())?;
    let mut ids: Vec<String> = listed
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_owned))
        .filter(|id| is_snapshot_id(id))
        .collect();
    ids.sort_unstable_by(|a, b| b.cmp(a));
    Ok(ids)
}

/// The manifest of the snapshot `id` at `home`, checked as one read from disk is; none while it
/// is not there (the snapshot is being uploaded, or its upload died).
async fn read_manifest(
    store: &deltalake::logstore::ObjectStoreRef,
    id: &str,
) -> std::result::Result<Option<SnapshotManifest>, String> {
    let path = deltalake::Path::from(format!("{id}/{MANIFEST_FILE}"));
    let got = match store.get(&path).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if got.meta.size > MAX_MANIFEST_BYTES {
        return Err(format!(
            "{path}: {} bytes, more than a manifest",
            got.meta.size
        ));
    }
    let bytes = got.bytes().await.map_err(|e| e.to_string())?;
    let manifest: SnapshotManifest =
        serde_json::from_slice(&bytes).map_err(|e| format!("{path}: {e}"))?;
    check_manifest_paths(&manifest).map_err(|why| format!("{path}: {why}"))?;
    if manifest.snapshot != id {
        return Err(format!("{path}: names snapshot {}", manifest.snapshot));
    }
    Ok(Some(manifest))
}

impl SnapshotStore {
    /// Adopts the newest snapshot named `name` (a resource type) at the tables' location
    /// ([`SnapshotStore::with_table_location`]) when it is newer than the current one here and
    /// was committed at or after `since`: another machine's export, copied into this store
    /// (its raw files, and its tables' files this store lacks) and committed here as it was,
    /// so that a query reads it instead of exporting again. Returns it; none when there is no
    /// such snapshot (or no location, or `name` is a filtered snapshot's, which stay local).
    pub fn adopt(&self, name: &str, since: SystemTime) -> Result<Option<Snapshot>> {
        let Some(home) = self.home_url(name)?.filter(|_| !is_filtered(name)) else {
            return Ok(None);
        };
        let ours = super::manifest::read_manifest(&self.manifest_path(name)?)?;
        let ours = ours.map(|m| m.snapshot).unwrap_or_default();
        let failed = |e: String| Error::snapshot(format!("{home}: {e}"));
        let newest = delta::block_on(|| async {
            let store = delta::object_store(&home)?;
            let ids = snapshot_ids(&store).await?;
            for id in ids.iter().take_while(|id| **id > ours).take(MAX_CANDIDATES) {
                if let Some(manifest) = read_manifest(&store, id).await? {
                    return Ok(Some(manifest));
                }
            }
            Ok(None)
        })?
        .map_err(failed)?;
        let Some(mut manifest) = newest else {
            return Ok(None);
        };
        let committed = UNIX_EPOCH + Duration::from_millis(manifest.created_unix_ms);
        if manifest.resource_type != name || manifest.format < 2 || committed < since {
            return Ok(None);
        }
        let id = manifest.snapshot.clone();
        let tmp = self.dir().join("tmp").join(&id);
        let _tmp = TmpFolder::take(&tmp)?;
        let type_dir = self.named_dir(name)?;
        let mut files: Vec<(String, PathBuf)> = raw_at_home(&manifest)
            .map(|(at, path)| (at, tmp.join(path)))
            .collect();
        // Each table's files straight into its folder: one a crash leaves there is collected
        // with the snapshot folders that are gone.
        for (key, table) in &manifest.tables {
            for f in &table.files {
                files.push((
                    format!("{key}/{}", f.path),
                    type_dir.join(key).join(&f.path),
                ));
            }
        }
        delta::download(&home, &files)?;
        for (key, table) in &mut manifest.tables {
            table.delta_table = Some(self.table_url(name, key)?);
        }
        let _lock = self.lock()?;
        let current = super::manifest::read_manifest(&self.manifest_path(name)?)?;
        if current.is_some_and(|m| m.snapshot >= id) {
            // Another export or adoption here came first.
            return Ok(None);
        }
        let target = type_dir.join(&id);
        fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e))?;
        let reading = Lease::take(&target.join(LEASE_FILE))?
            .ok_or_else(|| Error::snapshot(format!("{}: not readable", target.display())))?;
        let json = to_json(&manifest)?;
        write_atomic(&target.join(MANIFEST_FILE), &json)?;
        write_atomic(&self.manifest_path(name)?, &json)?;
        self.collect_garbage(&type_dir, &[id.as_str()], self.retention());
        tracing::info!("{name}: adopted snapshot {id} from {home}");
        Ok(Some(Snapshot {
            dir: target,
            manifest,
            lease: None,
            _reading: reading,
        }))
    }
}

/// Removes, at `home` (the folder of a name's snapshots there), the snapshots superseded more
/// than `retention` ago, keeping the newest and `keep` (the current one here): the manifest
/// first (no machine adopts it after), then its folder's files that no staying snapshot holds
/// (a refresh names raw files of earlier snapshots, [`super::RawFile::origin`]). A folder
/// without a manifest (an upload that died) goes once [`delta::ORPHAN_AGE`] old. Returns how
/// many files went.
pub(super) fn collect(home: &Url, keep: &str, retention: Duration) -> Result<usize> {
    let collected = delta::block_on(|| async {
        let store = delta::object_store(home)?;
        let ids = snapshot_ids(&store).await?;
        let mut manifests = Vec::with_capacity(ids.len());
        for id in &ids {
            manifests.push(read_manifest(&store, id).await?);
        }
        // Newest first: each superseded by the one before it.
        let superseded_since = |n: usize| match n {
            0 => None,
            n => snapshot_time(&ids[n - 1]),
        };
        let age = |t: Option<SystemTime>| t.and_then(|t| t.elapsed().ok()).unwrap_or_default();
        let going = |n: usize| {
            let id = &ids[n];
            match &manifests[n] {
                Some(_) => n > 0 && *id != keep && age(superseded_since(n)) >= retention,
                None => age(snapshot_time(id)) >= retention.max(delta::ORPHAN_AGE),
            }
        };
        let (gone, staying): (Vec<usize>, Vec<usize>) = (0..ids.len()).partition(|&n| going(n));
        let held: HashSet<String> = staying
            .iter()
            .filter_map(|&n| manifests[n].as_ref())
            .flat_map(|m| m.raw.iter().filter_map(|r| r.origin.clone()))
            .collect();
        let mut removed = 0;
        for n in gone {
            let id = &ids[n];
            let manifest = deltalake::Path::from(format!("{id}/{MANIFEST_FILE}"));
            match store.delete(&manifest).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(format!("{manifest}: {e}")),
            }
            let folder = deltalake::Path::from(id.as_str());
            let files: Vec<_> = store
                .list(Some(&folder))
                .try_collect()
                .await
                .map_err(|e| e.to_string())?;
            for file in files {
                if held.contains(file.location.as_ref()) {
                    continue;
                }
                store
                    .delete(&file.location)
                    .await
                    .map_err(|e| format!("{}: {e}", file.location))?;
                removed += 1;
            }
        }
        Ok::<_, String>(removed)
    })?;
    collected.map_err(|e| Error::snapshot(format!("{home}: {e}")))
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::collect;
    use crate::snapshot::tests::{commit, patient, rows};
    use crate::snapshot::{SnapshotStore, delta};

    const SOURCE: &str = "http://example.org/fhir";

    /// A machine's store of [`SOURCE`] (its own cache folder) with its tables at `location`.
    fn machine(cache: &tempfile::TempDir, location: &url::Url) -> SnapshotStore {
        let store = SnapshotStore::open(cache.path(), SOURCE).unwrap();
        store.with_table_location(location.clone()).unwrap()
    }

    #[tokio::test]
    async fn another_machine_adopts_the_latest_snapshot_and_refreshes_share_their_raw_files() {
        let (a_cache, b_cache, shared) = (
            tempfile::tempdir(),
            tempfile::tempdir(),
            tempfile::tempdir(),
        );
        let (a_cache, b_cache, shared) = (a_cache.unwrap(), b_cache.unwrap(), shared.unwrap());
        let location = url::Url::from_directory_path(shared.path()).unwrap();
        let (a, b) = (machine(&a_cache, &location), machine(&b_cache, &location));
        let g = |g: &str| format!("\"{g}\"");
        let first = commit(
            &a,
            &[
                &[patient("a", &g("female")), patient("b", &g("male"))],
                &[patient("c", &g("female"))],
            ],
            None,
        );
        let first_id = first.manifest().snapshot.clone();

        // Nothing newer than now; then the export, as it was committed.
        assert!(
            b.adopt(
                "Patient",
                std::time::SystemTime::now() + std::time::Duration::from_secs(60)
            )
            .unwrap()
            .is_none()
        );
        let adopted = b.adopt("Patient", UNIX_EPOCH).unwrap().expect("adopted");
        assert_eq!(adopted.manifest().snapshot, first_id);
        assert_eq!(rows(&adopted).await, rows(&first).await);
        assert_eq!(
            b.current("Patient").unwrap().unwrap().manifest().snapshot,
            first_id
        );
        for raw in adopted.raw_paths() {
            assert!(raw.starts_with(b.dir()), "{}", raw.display());
            assert!(raw.is_file(), "{}", raw.display());
        }
        assert!(
            b.adopt("Patient", UNIX_EPOCH).unwrap().is_none(),
            "not newer"
        );

        // A refresh keeps the untouched raw file where it was first committed.
        let second = commit(&a, &[&[patient("a", &g("other"))]], Some((first, &["a"])));
        let second_id = second.manifest().snapshot.clone();
        let origins: Vec<_> = second
            .manifest()
            .raw
            .iter()
            .filter_map(|r| r.origin.clone())
            .collect();
        assert_eq!(origins.len(), 1, "{:?}", second.manifest().raw);
        assert!(
            origins[0].starts_with(&format!("{first_id}/raw/")),
            "{origins:?}"
        );
        let home = shared
            .path()
            .join(a.dir().file_name().unwrap())
            .join("Patient");
        let uploaded = |id: &str| -> Vec<String> {
            let raw = std::fs::read_dir(home.join(id).join("raw")).unwrap();
            let mut names: Vec<_> = raw
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        assert_eq!(
            uploaded(&second_id).len(),
            second.manifest().raw.len() - 1,
            "the kept file is not uploaded again"
        );

        let refreshed = b
            .adopt("Patient", UNIX_EPOCH)
            .unwrap()
            .expect("the refresh adopted");
        assert_eq!(refreshed.manifest().snapshot, second_id);
        assert_eq!(rows(&refreshed).await, ["a|other", "b|male", "c|female"]);
        assert_eq!(
            crate::snapshot::resource_ids(&refreshed.raw_paths(), usize::MAX)
                .unwrap()
                .len(),
            3
        );

        // Collection at the home: the first snapshot goes but for the raw file the refresh holds.
        assert_eq!(
            collect(
                &delta::local_url(&home).unwrap(),
                &second_id,
                std::time::Duration::ZERO
            )
            .unwrap(),
            1
        );
        assert!(!home.join(&first_id).join("manifest.json").exists());
        assert_eq!(
            uploaded(&first_id),
            [origins[0].rsplit('/').next().unwrap()]
        );
        assert!(home.join(&second_id).join("manifest.json").exists());

        // Folders without a manifest (uploads that died) go once a week old, younger ones stay:
        // they may be an upload in flight.
        let id_at = |t: std::time::SystemTime| {
            let stamp = chrono::DateTime::<chrono::Utc>::from(t).format("%Y%m%d%H%M%S%3f");
            format!("{stamp}-0123abcd")
        };
        let now = std::time::SystemTime::now();
        let (dead, young) = (
            id_at(now - delta::ORPHAN_AGE - std::time::Duration::from_secs(60)),
            id_at(now - std::time::Duration::from_secs(60)),
        );
        for id in [&dead, &young] {
            std::fs::create_dir_all(home.join(id).join("raw")).unwrap();
            std::fs::write(home.join(id).join("raw/Patient.0.ndjson"), "{}").unwrap();
        }
        let url = delta::local_url(&home).unwrap();
        assert_eq!(
            collect(&url, &second_id, std::time::Duration::ZERO).unwrap(),
            1
        );
        assert!(!home.join(&dead).join("raw/Patient.0.ndjson").exists());
        assert!(home.join(&young).join("raw/Patient.0.ndjson").exists());
    }

    #[test]
    fn cleaning_keeps_another_machines_later_version_at_the_location() {
        let (a_cache, b_cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let shared = tempfile::tempdir().unwrap();
        let location = url::Url::from_directory_path(shared.path()).unwrap();
        let (a, b) = (machine(&a_cache, &location), machine(&b_cache, &location));
        commit(&a, &[&[patient("a", "null")]], None);
        let later = commit(&b, &[&[patient("b", "null")]], None);
        a.clean(std::time::Duration::from_secs(3600)).unwrap();
        let table = a.table_url("Patient", "flattened").unwrap();
        let versions = delta::history(&table).unwrap();
        let latest = versions.iter().find(|v| v.export.is_object()).unwrap();
        assert_eq!(latest.export["snapshot"], later.manifest().snapshot);
    }

    #[test]
    fn a_manifest_at_the_home_names_no_file_outside_its_folders() {
        let shared = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let location = url::Url::from_directory_path(shared.path()).unwrap();
        let store = machine(&cache, &location);
        let id = "20261206120000000-0123abcd";
        let folder = shared
            .path()
            .join(store.dir().file_name().unwrap())
            .join("Patient")
            .join(id);
        std::fs::create_dir_all(&folder).unwrap();
        let manifest = serde_json::json!({
            "format": 2, "resourceType": "Patient", "snapshot": id, "source": SOURCE,
            "request": "", "transactionTime": "", "createdAt": "", "createdUnixMs": 1,
            "raw": [{"path": "raw/a.ndjson", "resources": 1, "bytes": 1, "origin": "../../../etc/passwd"}],
            "tables": {}
        });
        std::fs::write(folder.join("manifest.json"), manifest.to_string()).unwrap();
        let err = store.adopt("Patient", UNIX_EPOCH).unwrap_err().to_string();
        assert!(err.contains("is not a path inside the snapshot"), "{err}");
        assert!(err.contains(id), "{err}");
    }
}
