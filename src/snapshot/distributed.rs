//! A snapshot converted by other processes, straight at the tables' location: a cluster's
//! executors each convert one raw file of an export as a part of its own ([`PartTask`]), the
//! coordinator merges the parts' columns, has those that disagree converted again against them,
//! and commits ([`DistributedSnapshot::commit`]). The snapshot is then at the location as
//! another machine's commit leaves it (raw files and manifest at the type's home, Parquet files
//! in the Delta table of its mode, a version of that table), and every machine with that
//! location adopts it ([`SnapshotStore::adopt`]). The coordinator writes only the manifest,
//! the Delta log and, when the parts lack columns, a file of no rows that carries the table's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use url::Url;

use super::convert::{
    Skipped, TableParts, agrees, conversion_warnings, empty_part, merged_columns, mode_key,
    part_name,
};
use super::manifest::{MANIFEST_FILE, to_json, write_atomic};
use super::names::new_snapshot_id;
use super::writer::{TmpFolder, publish_tables};
use super::{RawFile, SnapshotManifest, SnapshotStore, TableFile, TableFiles, delta, home};
use crate::ndjson::{DecodeOptions, FlattenOptions, InferredColumns, Strictness, TableMode};
use crate::r4::check_type_name;
use crate::warning::Warning;
use crate::{Error, Result};

/// One raw file of a [`DistributedSnapshot`], as a task of the cluster carries it to an
/// executor: how to convert it and where both files go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct PartTask {
    resource_type: String,
    snapshot: String,
    max_list_items: Option<usize>,
    max_columns: usize,
    lenient: bool,
    max_line_bytes: usize,
    /// The type's home (`<location>/<source-key>/<Type>/`): the raw file goes to
    /// `<snapshot>/raw/` there.
    home: Url,
    /// The Delta table of the mode: the Parquet file goes to `<snapshot>/` there.
    table: Url,
    /// The raw file's number: `<Type>.<n>.ndjson`.
    n: usize,
    /// The columns merged over every part, to convert against (a second pass); none in the
    /// first, which converts against the file's own.
    against: Option<InferredColumns>,
}

impl ConvertedPart {
    /// This part as its second pass (`again`) converted it: the raw file stays the first's.
    pub(crate) fn converted_again(self, again: ConvertedPart) -> Self {
        Self {
            raw: self.raw,
            warnings: self.warnings,
            ..again
        }
    }

    /// This part with the warnings of fetching its file.
    pub(crate) fn with_warnings(mut self, warnings: impl IntoIterator<Item = Warning>) -> Self {
        self.warnings.extend(warnings);
        self
    }
}

/// What converting one [`PartTask`] made, for the coordinator to merge.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ConvertedPart {
    /// The raw file's number.
    pub(crate) n: usize,
    raw: RawFile,
    file: TableFile,
    columns: InferredColumns,
    skipped: Skipped,
    /// What fetching the file finished despite (a count the manifest got wrong).
    #[serde(default)]
    warnings: Vec<Warning>,
}

impl PartTask {
    /// The raw file's name, `<Type>.<n>.ndjson`.
    pub(crate) fn raw_name(&self) -> String {
        format!("{}.{:03}.ndjson", self.resource_type, self.n)
    }

    /// The task converting this file again against `columns`.
    pub(crate) fn against(&self, columns: &InferredColumns) -> Self {
        Self {
            against: Some(columns.clone()),
            ..self.clone()
        }
    }

    /// Converts the part in the folder `work` (a private one of the caller's). In the first
    /// pass the caller downloaded the raw file to [`raw_dir`]`(work)/<raw_name>`, `downloaded`
    /// its lines and bytes, and it goes to the home; in the second it comes from there. The
    /// Parquet file goes to the table, under a name of each pass (a second pass replaces no
    /// file of the first: an upload skips a file there at the same size).
    pub(crate) fn run(&self, work: &Path, downloaded: (u64, u64)) -> Result<ConvertedPart> {
        check_type_name(&self.resource_type)?;
        let at_home = format!("{}/raw/{}", self.snapshot, self.raw_name());
        let local = raw_dir(work).join(self.raw_name());
        if self.against.is_some() {
            delta::download(&self.home, &[(at_home.clone(), local.clone())])?;
        }
        let (resources, bytes) = downloaded;
        let raw = RawFile {
            path: format!("raw/{}", self.raw_name()),
            resources,
            bytes,
            origin: None,
        };
        let mode = self.mode();
        let key = mode_key(&mode);
        let options = self.options();
        let parts = TableParts::new(&self.resource_type, &mode, &options, &work.join(&key))?;
        // The first pass's raw file goes to the home while it is converted.
        let (converted, uploaded) = std::thread::scope(|scope| {
            let uploading = self.against.is_none().then(|| {
                let upload = [(local.clone(), at_home)];
                scope.spawn(move || delta::upload(&self.home, &upload))
            });
            let converted = parts.one_part(std::slice::from_ref(&local), self.against.as_ref());
            let uploaded = uploading.map_or(Ok(Ok(())), |u| u.join());
            (converted, uploaded)
        });
        uploaded.map_err(|_| Error::snapshot("uploading a raw file panicked"))??;
        let (mut file, columns, skipped) = converted?;
        let name = match self.against {
            None => part_name(self.n + 1),
            Some(_) => format!("part-{}-merged.parquet", self.n + 1),
        };
        let path = format!("{}/{name}", self.snapshot);
        delta::upload(
            &self.table,
            &[(work.join(&key).join(&file.path), path.clone())],
        )?;
        file.path = path;
        Ok(ConvertedPart {
            n: self.n,
            raw,
            file,
            columns,
            skipped,
            warnings: Vec::new(),
        })
    }

    fn mode(&self) -> TableMode {
        TableMode::Flattened(
            FlattenOptions::default()
                .with_max_list_items(self.max_list_items)
                .with_max_columns(self.max_columns),
        )
    }

    fn options(&self) -> DecodeOptions {
        let strictness = match self.lenient {
            true => Strictness::Lenient,
            false => Strictness::Strict,
        };
        DecodeOptions::default()
            .with_strictness(strictness)
            .with_max_line_bytes(self.max_line_bytes)
    }
}

/// A snapshot of one resource type whose files other processes convert ([module docs](self)),
/// as its coordinator holds it: no data, only where the parts go.
#[derive(Debug)]
pub(crate) struct DistributedSnapshot {
    store: SnapshotStore,
    resource_type: String,
    id: String,
    mode: TableMode,
    options: DecodeOptions,
    home: Url,
    table: Url,
}

impl SnapshotStore {
    /// Starts a snapshot of `resource_type` converted by other processes into the table of
    /// `mode` (flattened) at the tables' location, with the strictness and line bound of
    /// `options`. Fails without a location: the processes write there.
    pub(crate) fn begin_distributed(
        &self,
        resource_type: &str,
        mode: &TableMode,
        options: &DecodeOptions,
    ) -> Result<DistributedSnapshot> {
        check_type_name(resource_type)?;
        if !matches!(mode, TableMode::Flattened(_)) {
            return Err(Error::config(
                "a conversion on a cluster makes flattened tables; the nested mode converts \
                 in one process",
            ));
        }
        let home = self.home_url(resource_type)?.ok_or_else(|| {
            Error::config(
                "a conversion on a cluster writes to the tables' location (--cache-dir \
                 s3://... or --table-location), where the executors reach it",
            )
        })?;
        let table = self.table_url(resource_type, &mode_key(mode))?;
        Ok(DistributedSnapshot {
            store: self.clone(),
            resource_type: resource_type.to_owned(),
            id: new_snapshot_id(),
            mode: mode.clone(),
            options: options.clone(),
            home,
            table,
        })
    }
}

impl DistributedSnapshot {
    /// The snapshot's id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The first-pass task of raw file `n`.
    pub(crate) fn task(&self, n: usize) -> PartTask {
        let TableMode::Flattened(flatten) = &self.mode else {
            unreachable!("begin_distributed takes flattened modes only")
        };
        PartTask {
            resource_type: self.resource_type.clone(),
            snapshot: self.id.clone(),
            max_list_items: flatten.max_list_items(),
            max_columns: flatten.max_columns(),
            lenient: self.options.strictness() == Strictness::Lenient,
            max_line_bytes: self.options.max_line_bytes(),
            home: self.home.clone(),
            table: self.table.clone(),
            n,
            against: None,
        }
    }

    /// The columns of `parts` merged as one inference over all their lines would make them, and
    /// the parts that must be converted again against them (as in one process: those a
    /// reader would have to cast, or that sent paths to the overflow column).
    pub(crate) fn merge(&self, parts: &[ConvertedPart]) -> (InferredColumns, Vec<usize>) {
        let (columns, schema) = merged_columns(&self.mode, parts.iter().map(|p| &p.columns));
        let again = parts.iter().filter(|p| {
            let (_, own) = merged_columns(&self.mode, [&p.columns]);
            !agrees(&own, &schema)
        });
        (columns, again.map(|p| p.n).collect())
    }

    /// Commits the snapshot of `parts` (each file's last pass, the columns of every part
    /// agreeing, [`Self::merge`]) at the location: a version of the Delta table, then the
    /// manifest at the home, the sign that the snapshot is whole there. `manifest` brings the
    /// export's facts (source, request, `transactionTime`, its warnings); the rest is filled in
    /// here. Returns the manifest as committed.
    pub(crate) fn commit(
        self,
        mut parts: Vec<ConvertedPart>,
        mut manifest: SnapshotManifest,
    ) -> Result<SnapshotManifest> {
        parts.sort_by_key(|p| p.n);
        let (_, schema) = merged_columns(&self.mode, parts.iter().map(|p| &p.columns));
        let mut files = Vec::with_capacity(parts.len() + 1);
        let tmp = self.store.dir().join("tmp").join(&self.id);
        let _tmp = TmpFolder::take(&tmp)?;
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut lacking = false;
        for part in &parts {
            let (_, own) = merged_columns(&self.mode, [&part.columns]);
            if !agrees(&own, &schema) {
                return Err(Error::snapshot(format!(
                    "{}: part {} was not converted against the table's columns",
                    self.resource_type, part.file.path
                )));
            }
            lacking |= own.fields() != schema.fields();
        }
        // A type the export had no file of is a table of no rows, readable all the same.
        if lacking || parts.is_empty() {
            let name = part_name(0);
            let local = tmp.join(&name);
            let bytes = empty_part(&local, Arc::clone(&schema))?;
            let path = format!("{}/{name}", self.id);
            delta::upload(&self.table, &[(local, path.clone())])?;
            files.push(TableFile {
                path,
                rows: 0,
                bytes,
            });
        }
        let warnings = conversion_warnings(
            &self.resource_type,
            &self.mode,
            parts.iter().map(|p| p.skipped.clone()),
        );
        let skipped_lines = parts.iter().map(|p| p.skipped.lines).sum();
        manifest.raw = parts.iter().map(|p| p.raw.clone()).collect();
        let fetched = parts.iter().flat_map(|p| p.warnings.iter().cloned());
        manifest.warnings.extend(fetched);
        files.extend(parts.into_iter().map(|p| p.file));
        let key = mode_key(&self.mode);
        let table = TableFiles::of(files, skipped_lines, &schema);
        manifest.tables.insert(key.clone(), table);
        manifest.add_conversion_warnings(warnings);
        manifest.stamp(&self.resource_type, &self.id);
        let all = self.store.columns(&self.resource_type, &key, &[schema])?;
        publish_tables(
            &mut manifest,
            &self.store,
            &self.resource_type,
            &[(key.clone(), all)],
        );
        if manifest.tables[&key].delta_version.is_none() {
            let why = manifest.warnings.last().map(|w| w.message.clone());
            return Err(Error::snapshot(why.unwrap_or_default()));
        }
        write_atomic(&tmp.join(MANIFEST_FILE), &to_json(&manifest)?)?;
        home::upload_manifest(&self.home, &tmp, &self.id)?;
        Ok(manifest)
    }
}

/// The folder of raw files a task downloads into (`work/raw/`).
pub(crate) fn raw_dir(work: &Path) -> PathBuf {
    work.join("raw")
}
