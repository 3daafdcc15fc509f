//! The names the store makes and the rules every name must pass before it becomes a path (a
//! resource type, a filtered snapshot's name, a snapshot id, a source key, the files a manifest
//! lists), so that every path stays inside the store's folder.

use std::path::Path;
use std::time::SystemTime;

use super::{SnapshotManifest, rfc3339};
use crate::error::quoted;
use crate::r4::check_type_name;
use crate::{Error, Result};

/// Whether `name` is a filtered snapshot's (`<Type>@<filters>-<hash>`).
pub(super) fn is_filtered(name: &str) -> bool {
    name.contains('@')
}

/// `name` when it may name a folder of the store: a resource type name, or a filtered
/// snapshot's name.
pub(super) fn check_name(name: &str) -> Result<&str> {
    let valid = match is_filtered(name) {
        false => check_type_name(name).is_ok(),
        true => is_filtered_name(name),
    };
    match valid {
        true => Ok(name),
        false => Err(Error::snapshot(format!(
            "{} is neither a resource type name nor a filtered snapshot name",
            quoted(name)
        ))),
    }
}

/// Whether `name` has the shape `Pushdown::snapshot_name` gives: a resource type name, `@`,
/// at most 80 of `A-Za-z0-9-_.=`, `-`, then 8 lowercase hex digits.
pub(super) fn is_filtered_name(name: &str) -> bool {
    let Some((resource_type, rest)) = name.split_once('@') else {
        return false;
    };
    let Some((filters, hash)) = rest.rsplit_once('-') else {
        return false;
    };
    check_type_name(resource_type).is_ok()
        && filters.len() <= 80
        && filters
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.=".contains(&b))
        && is_lower_hex(hash, 8)
}

/// When the snapshot `id` was made (its first 17 digits, UTC), if it is a snapshot id.
pub(super) fn snapshot_time(id: &str) -> Option<SystemTime> {
    let stamp = id.split_once('-')?.0;
    let time = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%d%H%M%S%3f").ok()?;
    let ms = u64::try_from(time.and_utc().timestamp_millis()).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
}

/// Whether `id` has the shape [`new_snapshot_id`] gives: 17 digits, `-`, 8 lowercase hex digits.
pub(super) fn is_snapshot_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(stamp, rand)| {
        stamp.len() == 17 && stamp.bytes().all(|b| b.is_ascii_digit()) && is_lower_hex(rand, 8)
    })
}

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks what a manifest read from disk makes paths of: its snapshot id, and its files, which
/// must be relative paths of plain names (`A-Za-z0-9_.-`, not starting with `.`) inside the
/// snapshot folder.
pub(super) fn check_manifest_paths(manifest: &SnapshotManifest) -> std::result::Result<(), String> {
    if !is_snapshot_id(&manifest.snapshot) {
        return Err(format!(
            "snapshot {} is not a snapshot id",
            quoted(&manifest.snapshot)
        ));
    }
    let plain = |part: &str| {
        !part.is_empty()
            && !part.starts_with('.')
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
    };
    if let Some(mode) = manifest
        .tables
        .keys()
        .find(|k| !plain(k) || k.contains('_'))
    {
        return Err(format!("table {} is not a mode", quoted(mode)));
    }
    let raw = manifest.raw.iter().map(|r| &r.path);
    let origins = manifest.raw.iter().filter_map(|r| r.origin.as_ref());
    let tables = manifest.tables.values().flat_map(|t| &t.files);
    for path in raw.chain(origins).chain(tables.map(|f| &f.path)) {
        if !path.split('/').all(plain) {
            return Err(format!(
                "file {} is not a path inside the snapshot",
                quoted(path)
            ));
        }
    }
    Ok(())
}

/// A readable, unique folder name for a source: `host_port-hash` or `folder-hash`.
pub(super) fn source_key(source: &str) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(source.as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    let readable = match url::Url::parse(source) {
        Ok(u) if u.has_host() => format!(
            "{}_{}",
            u.host_str().unwrap_or(""),
            u.port_or_known_default().unwrap_or(0)
        ),
        _ => Path::new(source)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let readable: String = readable
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{readable}-{hex}")
}

/// A sortable, unique snapshot id: UTC time to the millisecond plus a random suffix.
pub(super) fn new_snapshot_id() -> String {
    let now = SystemTime::now();
    let stamp: String = rfc3339(now)
        .chars()
        .filter(|c| c.is_ascii_digit())
        .collect();
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{stamp}-{}", &rand[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::SnapshotStore;

    #[test]
    fn names_of_the_store_are_checked() {
        for name in [
            "Patient",
            "Patient@gender=female-0a1b2c3d",
            "Patient@-0a1b2c3d",
        ] {
            assert_eq!(check_name(name).unwrap(), name);
        }
        let rejected = [
            "",
            "..",
            "../../../victim",
            "Patient/..",
            "Patient@../../x-0a1b2c3d",
            "Patient@a/b-0a1b2c3d",
            "Patient@a-0A1B2C3D",
            "Patient@a-123",
            "../x@a-0a1b2c3d",
            "Patient@a",
        ];
        for name in rejected {
            assert!(check_name(name).is_err(), "{name:?} accepted");
        }
        assert!(is_snapshot_id(&new_snapshot_id()));
        for id in ["", "..", "20240101000000000-../../x", "2024-0a1b2c3d", "x"] {
            assert!(!is_snapshot_id(id), "{id:?}");
        }
        let cache = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(cache.path(), "http://example.org/fhir").unwrap();
        assert!(store.begin("../../../victim").is_err());
        assert!(
            store
                .begin_named("Patient@../x-0a1b2c3d", "Patient")
                .is_err()
        );
        assert!(store.current("../../../victim").is_err());
        assert!(store.evict_filtered("../x", 0).is_err());
        assert!(store.staging_dir("../x").is_err());
        assert_eq!(
            cache.path().read_dir().unwrap().count(),
            1,
            "only the store's folder"
        );
    }

    #[test]
    fn source_keys_are_readable_and_distinct() {
        let a = source_key("http://127.0.0.1:8080/fhir");
        let b = source_key("http://127.0.0.1:8080/other");
        assert!(a.starts_with("127.0.0.1_8080-"), "{a}");
        assert_ne!(a, b);
        assert!(source_key("/data/synthea-100").starts_with("synthea-100-"));
    }
}
