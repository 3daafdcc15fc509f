//! Local snapshot store: raw NDJSON (as fetched, plain or gzip) + Parquet + a manifest per resource type, committed
//! atomically, merged incrementally.
//!
//! # Layout
//!
//! One folder per data source (FHIR server or local folder) under the cache root
//! (default `<user cache dir>/fhirflight`, see [`default_cache_dir`]):
//!
//! ```text
//! <cache>/<source-key>/                  e.g. 127.0.0.1_8080-3f2a9c1e5b7d0a46
//!   source.json                          {"source": "<base url, folder or demo population>"}
//!   <Type>/manifest.json                 THE commit point: names the current snapshot of <Type>
//!   <Type>/<snapshot-id>/raw/<Type>.<n>.ndjson[.gz]    raw resources, the source of truth:
//!                                        copies of the fetched files as they are (gzip
//!                                        when they were), a merge's gzip
//!   <Type>/<snapshot-id>/.readers        held (shared lock) by whoever reads that snapshot
//!   <Type>/<snapshot-id>/<mode>/part-<n>.parquet       one table per mode (flattened, nested)
//!   <Type>@<filters>-<hash>/...          the same for an export restricted by filter pushdown
//!                                        (`_typeFilter`, `_since`): a subset of the type, used
//!                                        only by queries with the same filters
//!   <Type>@<filters>-<hash>/.readers     held (shared lock) by whoever reads that snapshot;
//!                                        its modification time is the snapshot's last use
//!   staging/<job-key>/                   downloads of an export in progress (resumable)
//!   staging/<job-key>.lock               held by the process exporting into it
//!   tmp/<snapshot-id>/                   a snapshot being written
//!   tmp/<snapshot-id>.lock               held by its writer
//!   .lock                                held while committing
//! ```
//!
//! Every path the store builds stays inside its folder: a `<Type>` is a resource type name
//! ([`crate::r4::check_type_name`]), a filtered snapshot's name, a snapshot id, a job key and a
//! file path listed in a manifest each pass a strict rule of their own before they are joined
//! (a manifest on disk may have been tampered with), and garbage collection removes only
//! folders whose names it made.
//!
//! Another engine reads a table by reading `<Type>/manifest.json` and then the files it lists
//! under `tables.<mode>.files` (paths relative to the snapshot folder), for example in DuckDB
//! `SELECT * FROM read_parquet('<cache>/<source-key>/Patient/<snapshot>/flattened/*.parquet',
//! union_by_name = true)`, or in pandas `pd.read_parquet('<...>/Patient/<snapshot>/flattened')`;
//! [`list_cache`] gives those files as absolute paths (`fhirflight cache path`). A glob over every
//! snapshot (`Patient/*/flattened/*.parquet`) is wrong: a superseded snapshot stays while it is
//! read. The table's Arrow schema is its first file's footer (the manifest repeats it as
//! `columns` for people): a table converted part by part while its export downloaded has parts
//! with the columns of their own resources, and then a first part of no rows and every column.
//!
//! # Atomicity
//!
//! A snapshot is written in `tmp/`, renamed into `<Type>/<snapshot-id>/`, and becomes visible only
//! when `<Type>/manifest.json` is replaced (written aside, synced, renamed). A crash at any moment
//! leaves the old manifest (and snapshot) or the new one; leftovers are removed by later commits.
//! Commits take an exclusive lock on `.lock`, so processes sharing a cache folder serialise their
//! commits. Every [`Snapshot`] handed out holds a shared lock on its folder's `.readers` file
//! (and every table and scan made from it keeps it): a superseded snapshot is removed only once
//! nobody reads it, in any process, by the next commit of its name or by
//! [`SnapshotStore::clean`] (`fhirflight cache gc`, whose policy it documents).
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
mod lease;
mod listing;
mod manifest;
mod names;
mod parquet;
mod raw;
mod store;
mod writer;

pub(crate) use convert::open_raw;
pub use convert::{convert_raw, mode_key, stop_writes};
pub use delta::{COMMIT_KEY, TableVersion, history, open_version};
pub use lease::Lease;
pub use listing::{CachedSnapshot, CachedSource, CachedTable, list_cache};
pub use manifest::{
    Column, Incremental, MANIFEST_FORMAT, RawFile, SnapshotManifest, TableFile, TableFiles, rfc3339,
};
pub(crate) use parquet::parquet_properties;
pub use raw::{copy_raw, resource_ids, write_raw};
pub use store::{Cleared, Snapshot, SnapshotStore, clean_cache, default_cache_dir};
pub use writer::{SnapshotWriter, writes_in_progress};
