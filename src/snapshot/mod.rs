//! Local snapshot store: raw NDJSON (as fetched, plain or gzip) + a Delta Lake table per mode of
//! each resource type + a manifest, committed atomically, merged incrementally.
//!
//! # Layout
//!
//! One folder per data source (FHIR server or local folder) under the cache root
//! (default `<user cache dir>/fhirflight`, see [`default_cache_dir`]):
//!
//! ```text
//! <cache>/<source-key>/                  e.g. 127.0.0.1_8080-3f2a9c1e5b7d0a46
//!   source.json                          {"source": "<base url, folder or demo population>"}
//!   folder-id                            a random id of this folder, named by its claims
//!   <Type>/manifest.json                 THE commit point: names the current snapshot of <Type>
//!   <Type>/<mode>/                       a Delta Lake table per mode (flattened, nested): what
//!                                        another engine reads; a version per export
//!   <Type>/<mode>/_delta_log/            its log
//!   <Type>/<mode>/<snapshot-id>/part-<n>.parquet       the files one snapshot wrote; an
//!                                        incremental refresh's table also holds files of
//!                                        earlier snapshots' folders it carried over
//!   <Type>/views/<view>-<hash>/          a Delta table per view: the view's rows over each
//!                                        current snapshot (`<snapshot-id>/part-0.parquet`)
//!   <Type>/<snapshot-id>/manifest.json   the snapshot's manifest as committed
//!   <Type>/<snapshot-id>/raw/<Type>.<n>.ndjson[.gz]    raw resources, the source of truth:
//!                                        copies of the fetched files as they are (gzip
//!                                        when they were), a merge's plain
//!   <Type>/<snapshot-id>/.readers        held (shared lock) by whoever reads that snapshot
//!   <Type>@<filters>-<hash>/...          the same for an export restricted by filter pushdown
//!                                        (`_typeFilter`, `_since`): a subset of the type, used
//!                                        only by queries with the same filters
//!   <Type>@<filters>-<hash>/.readers     held (shared lock) by whoever reads that snapshot;
//!                                        its modification time is the snapshot's last use
//!   columns/<Type>.<mode>.arrow          every column the type's tables ever had
//!   staging/<job-key>/                   downloads of an export in progress (resumable)
//!   staging/<job-key>.lock               held by the process exporting into it
//!                                        (with a tables' location, a claim there does this
//!                                        for machines: [`Claim`])
//!   tmp/<snapshot-id>/                   a snapshot being written
//!   tmp/<snapshot-id>.lock               held by its writer
//!   .lock                                held while committing
//! ```
//!
//! A snapshot written before tables were Delta tables (manifest format 1) has its tables in its
//! own folder (`<Type>/<snapshot-id>/<mode>/`) and reads as before; the type's next commit makes
//! its Delta table.
//!
//! Every path the store builds stays inside its folder: a `<Type>` is a resource type name
//! ([`crate::r4::check_type_name`]), a filtered snapshot's name, a snapshot id, a job key and a
//! file path listed in a manifest each pass a strict rule of their own before they are joined
//! (a manifest on disk may have been tampered with), and garbage collection removes only
//! folders whose names it made.
//!
//! # Incremental refreshes touch what changed
//!
//! An incremental refresh (`_since`) carries the previous snapshot's Parquet files over as they
//! are, writes again only those that hold a resource that changed or was deleted (without it),
//! and converts the changes as parts of their own ([`SnapshotWriter::carry_over`]); its Delta
//! version (`MERGE`) adds and removes only those files. Garbage collection removes a superseded
//! snapshot's files but for those a kept snapshot holds, as each snapshot's own manifest lists
//! them.
//!
//! Another engine reads a type as its Delta table `<Type>/<mode>/` (the current version is the
//! current snapshot; [`CachedTable::delta`] names it, `fhirflight cache path`), for example
//! `deltalake.DeltaTable(path).to_pandas()`, `polars.read_delta(path)`, DuckDB's
//! `delta_scan(path)`. Each version's `commitInfo` holds the export under [`COMMIT_KEY`]
//! ([`history`]; `fhirflight cache history`), and [`open_version`] reads an earlier one while
//! its files are kept ([`SnapshotStore::with_retention`]).
//!
//! # Atomicity
//!
//! A snapshot is written in `tmp/`, renamed into `<Type>/<snapshot-id>/`, its tables moved into
//! their Delta tables and committed there as a version each, and it becomes visible to fhirflight
//! only when `<Type>/manifest.json` is replaced (written aside, synced, renamed). A crash at any
//! moment leaves the old manifest (and snapshot) or the new one; leftovers are removed by later
//! commits (a Delta version committed just before a crash names files a later commit removes).
//! Commits take an exclusive lock on `.lock`, so processes sharing a cache folder serialise their
//! commits. Every [`Snapshot`] handed out holds a shared lock on its folder's `.readers` file
//! (and every table and scan made from it keeps it): a superseded snapshot is removed, with its
//! tables' files, only once nobody reads it, in any process, and its retention is over, by the
//! next commit of its name or by [`SnapshotStore::clean`] (`fhirflight cache gc`, whose policy
//! it documents).
//!
//! # Filtered snapshots are bounded
//!
//! Every distinct pushdown makes its own filtered snapshot, so they are evicted, least recently
//! used first, beyond a number per type ([`SnapshotStore::evict_filtered`]; full snapshots are
//! never evicted). Reading a filtered snapshot holds a [`Lease`]: a shared lock on its
//! `.readers` file, taken before its manifest is read and kept by every table and scan of it (in
//! any process), which eviction respects: it removes only snapshots whose lock it can take
//! exclusively, the manifest first, under the store's commit lock.

mod convert;
mod delta;
#[cfg(feature = "cluster")]
mod distributed;
mod home;
mod lease;
mod listing;
mod manifest;
mod names;
mod parquet;
mod raw;
mod staging;
mod store;
#[cfg(test)]
mod tests;
mod upsert;
mod writer;

pub use convert::{convert_raw, mode_key, stop_writes};
#[cfg(feature = "cluster")]
pub(crate) use delta::cloud_store;
pub use delta::{COMMIT_KEY, TableVersion, history, open_version};
#[cfg(feature = "cluster")]
pub(crate) use distributed::{ConvertedPart, PartTask, raw_dir};
pub use lease::Lease;
pub use listing::{CachedSnapshot, CachedSource, CachedTable, list_cache};
pub use manifest::{
    Column, Incremental, MANIFEST_FORMAT, RawFile, SnapshotManifest, TableFile, TableFiles, rfc3339,
};
pub(crate) use parquet::parquet_properties;
pub(crate) use raw::open_raw;
pub use raw::{copy_raw, resource_ids, write_raw};
pub use staging::{CLAIM_RENEWAL, CLAIM_TTL, Claim, Claiming, forget_staged};
pub use store::{Cleared, Snapshot, SnapshotStore, clean_cache, default_cache_dir};
pub use writer::{SnapshotWriter, writes_in_progress};
