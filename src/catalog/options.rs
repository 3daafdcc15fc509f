//! The options of a catalog: [`CatalogOptions`] (also the defaults of `STORED AS FHIR` tables) and
//! [`Freshness`], when a snapshot is good enough for a query.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::PushdownMode;
use crate::ndjson::{
    DEFAULT_MAX_COLUMNS, DEFAULT_MAX_LINE_BYTES, DecodeOptions, Strictness, TableMode,
};
use crate::view::ViewDefinition;
use crate::{Error, Result};

/// The name of the one schema of a [`FhirCatalog`](super::FhirCatalog) unless configured otherwise.
pub const DEFAULT_SCHEMA: &str = "fhir";

/// When a snapshot is good enough for a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Younger than this.
    MaxAge(Duration),
    /// Never: every statement exports again (incrementally when it can).
    Always,
    /// Any snapshot, however old; export only when there is none.
    Never,
}

impl Freshness {
    /// Whether a snapshot of this age may be used.
    pub fn accepts(&self, age: Duration) -> bool {
        match self {
            Freshness::MaxAge(max) => age <= *max,
            Freshness::Always => false,
            Freshness::Never => true,
        }
    }

    /// The oldest commit time that this and `not_before` (a time a snapshot made since serves
    /// too) take as fresh now; none when nothing is.
    pub(super) fn oldest(&self, not_before: Option<SystemTime>) -> Option<SystemTime> {
        let own = match self {
            Freshness::MaxAge(max) => {
                Some(SystemTime::now().checked_sub(*max).unwrap_or(UNIX_EPOCH))
            }
            Freshness::Always => None,
            Freshness::Never => Some(UNIX_EPOCH),
        };
        own.into_iter().chain(not_before).min()
    }
}

impl std::str::FromStr for Freshness {
    type Err = Error;

    /// `always`, `never`, or a maximum age: `90s`, `15m`, `1h`, `7d` (a bare number is seconds).
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "always" => return Ok(Freshness::Always),
            "never" => return Ok(Freshness::Never),
            _ => {}
        }
        crate::time::parse_duration(&s)
            .map(Freshness::MaxAge)
            .ok_or_else(|| {
                Error::config(format!(
                    "freshness {s:?}: expected always, never or an age like 90s, 15m, 1h, 7d"
                ))
            })
    }
}

/// Options of a [`FhirCatalog`](super::FhirCatalog) (and defaults of `STORED AS FHIR` tables).
#[derive(Debug, Clone)]
pub struct CatalogOptions {
    pub(super) cache_dir: PathBuf,
    pub(super) freshness: Freshness,
    pub(super) mode: TableMode,
    pub(super) resource_types: Option<Vec<String>>,
    pub(super) batch_size: usize,
    pub(super) schema_name: String,
    pub(super) incremental: bool,
    pub(super) max_filtered_snapshots: usize,
    pub(super) retention: Duration,
    pub(super) table_location: Option<url::Url>,
    pub(super) views: Vec<Arc<ViewDefinition>>,
    pub(super) view_dirs: Vec<PathBuf>,
    pub(super) pushdown: PushdownMode,
    pub(super) strictness: Strictness,
    pub(super) max_line_bytes: usize,
    pub(super) max_columns: usize,
    pub(super) part_bytes: u64,
}

/// How many filtered snapshots per resource type a catalog keeps unless configured
/// ([`CatalogOptions::with_max_filtered_snapshots`]).
pub const DEFAULT_MAX_FILTERED_SNAPSHOTS: usize = 8;

impl Default for CatalogOptions {
    fn default() -> Self {
        Self {
            cache_dir: crate::snapshot::default_cache_dir(),
            freshness: Freshness::MaxAge(Duration::from_secs(3600)),
            mode: TableMode::default(),
            resource_types: None,
            batch_size: 8192,
            schema_name: DEFAULT_SCHEMA.to_owned(),
            incremental: true,
            max_filtered_snapshots: DEFAULT_MAX_FILTERED_SNAPSHOTS,
            retention: Duration::ZERO,
            table_location: None,
            views: Vec::new(),
            view_dirs: Vec::new(),
            pushdown: PushdownMode::default(),
            strictness: Strictness::Lenient,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            max_columns: DEFAULT_MAX_COLUMNS,
            part_bytes: DEFAULT_PART_BYTES,
        }
    }
}

/// The raw NDJSON bytes an export's files gather before they are converted, while the rest
/// download, as one part of the snapshot's table, unless configured
/// ([`CatalogOptions::with_part_bytes`]).
pub const DEFAULT_PART_BYTES: u64 = 32 << 20;

impl CatalogOptions {
    /// Where snapshots are kept (default [`crate::snapshot::default_cache_dir`]).
    pub fn with_cache_dir(self, cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            ..self
        }
    }

    /// When a snapshot is fresh enough (default: younger than an hour).
    pub fn with_freshness(self, freshness: Freshness) -> Self {
        Self { freshness, ..self }
    }

    /// How resources become columns: flattened as the notebook did (default), or nested (one
    /// column per top-level element, structs and lists). The width bound of a flattened mode is
    /// the catalog's ([`CatalogOptions::with_max_columns`]), whatever `mode` says.
    pub fn with_mode(self, mode: TableMode) -> Self {
        let mode = bounded(mode, self.max_columns);
        Self { mode, ..self }
    }

    /// The longest NDJSON line read, in bytes without its newline (default
    /// [`DEFAULT_MAX_LINE_BYTES`], 128 MiB), in both modes and in views. A longer line is never
    /// held whole: it is a bad line, skipped with a `skipped-lines` warning (or an error naming
    /// its file and line with [`CatalogOptions::with_strict`]).
    pub fn with_max_line_bytes(self, max: usize) -> Self {
        Self {
            max_line_bytes: max,
            ..self
        }
    }

    /// The most columns of a flattened table (default [`DEFAULT_MAX_COLUMNS`], 50,000; real types
    /// have up to about 6,000): paths beyond go into one JSON text column `_overflow` with a
    /// `wide-resources` warning (see [`FlattenOptions::with_max_columns`](crate::ndjson::FlattenOptions::with_max_columns)).
    /// The nested mode has a column per top-level element and no such bound.
    ///
    /// ```
    /// # use fhirflight::catalog::CatalogOptions;
    /// let options = CatalogOptions::default().with_max_columns(10_000).with_max_line_bytes(16 << 20);
    /// ```
    pub fn with_max_columns(self, max: usize) -> Self {
        let mode = bounded(self.mode, max);
        Self {
            mode,
            max_columns: max,
            ..self
        }
    }

    /// What the decoder of this catalog's conversions is given: batch size, strictness, line bound.
    pub(crate) fn decode_options(&self) -> DecodeOptions {
        DecodeOptions::default()
            .with_batch_size(self.batch_size)
            .with_strictness(self.strictness)
            .with_max_line_bytes(self.max_line_bytes)
    }

    /// The only resource types that are tables (pins the list: browsing lists them, nothing else
    /// resolves, and the source is never asked for its types). Each must be a resource type name
    /// ([`crate::r4::check_type_name`]), or making the catalog fails.
    pub fn with_resource_types(self, types: Vec<String>) -> Self {
        Self {
            resource_types: Some(types),
            ..self
        }
    }

    /// Whether an export with a bad line fails (strict: the error names the file and line, and
    /// no snapshot is committed) instead of committing the good lines with a
    /// `skipped-lines` warning (the default).
    pub fn with_strict(self, strict: bool) -> Self {
        let strictness = match strict {
            true => Strictness::Strict,
            false => Strictness::Lenient,
        };
        Self { strictness, ..self }
    }

    /// Rows per record batch when converting (default 8192).
    pub fn with_batch_size(self, batch_size: usize) -> Self {
        Self { batch_size, ..self }
    }

    /// The name of the catalog's schema (default [`DEFAULT_SCHEMA`]).
    pub fn with_schema_name(self, name: impl Into<String>) -> Self {
        Self {
            schema_name: name.into(),
            ..self
        }
    }

    /// Refresh with `_since` and merge (default), or export everything again.
    pub fn with_incremental(self, incremental: bool) -> Self {
        Self {
            incremental,
            ..self
        }
    }

    /// Adds `view` as a table (see [`FhirCatalog::add_view`](super::FhirCatalog::add_view)); the
    /// notebook's shorthand is [`ViewDefinition::from_paths`] with [`ViewDefinition::with_name`].
    ///
    /// ```
    /// # use fhirflight::catalog::CatalogOptions;
    /// # use fhirflight::view::ViewDefinition;
    /// let patients = ViewDefinition::from_paths(
    ///     "Patient",
    ///     &[("id", "identifier[0].value"), ("marital_status", "maritalStatus.coding[0].code")],
    /// )?;
    /// let options = CatalogOptions::default().with_view(patients.with_name("patients"));
    /// # Ok::<(), fhirflight::Error>(())
    /// ```
    pub fn with_view(mut self, view: ViewDefinition) -> Self {
        self.views.push(Arc::new(view));
        self
    }

    /// Makes every ViewDefinition JSON file of `dir` a table (see
    /// [`load_views`](super::load_views)); read when the catalog is made, which fails naming a
    /// malformed file.
    pub fn with_views(mut self, dir: impl Into<PathBuf>) -> Self {
        self.view_dirs.push(dir.into());
        self
    }

    /// How many filtered snapshots (made by exports with filters pushed down, one per distinct
    /// `_typeFilter` and `_since`) to keep per resource type, at least 1 (default
    /// [`DEFAULT_MAX_FILTERED_SNAPSHOTS`]). After each filtered export, the least recently used
    /// beyond this number are removed, except those a query (of any process) is reading. Full
    /// snapshots are not counted and never removed this way.
    pub fn with_max_filtered_snapshots(self, max: usize) -> Self {
        Self {
            max_filtered_snapshots: max.max(1),
            ..self
        }
    }

    /// How long an export's version of a type's Delta table stays readable after a newer
    /// export supersedes it (default zero: until no query reads it): `fhir_snapshot` and other
    /// engines' time travel read it meanwhile. See
    /// [`SnapshotStore::with_retention`](crate::snapshot::SnapshotStore::with_retention).
    ///
    /// ```
    /// use std::time::Duration;
    /// let week = fhirflight::catalog::CatalogOptions::default()
    ///     .with_retention(Duration::from_secs(7 * 86_400));
    /// ```
    pub fn with_retention(self, retention: Duration) -> Self {
        Self { retention, ..self }
    }

    /// Where the types' Delta tables go: `s3://bucket/prefix`, `gs://...`, `az://...` or a
    /// folder's `file://` URL (default: the cache folder), for other engines and machines; see
    /// [`SnapshotStore::with_table_location`](crate::snapshot::SnapshotStore::with_table_location).
    /// Making the catalog fails for a location no object store serves.
    pub fn with_table_location(self, location: url::Url) -> Self {
        Self {
            table_location: Some(location),
            ..self
        }
    }

    /// The raw NDJSON bytes (as downloaded, gzip or plain) an export's files gather before they
    /// are converted as one part of the snapshot's table while the rest download, at least 1
    /// (default [`DEFAULT_PART_BYTES`]). Smaller parts hide more of the conversion behind the
    /// downloads; each part is a Parquet file, so an export of many small files does not become
    /// as many tiny files. What remains when the export ends is converted then.
    pub fn with_part_bytes(self, bytes: u64) -> Self {
        Self {
            part_bytes: bytes.max(1),
            ..self
        }
    }

    /// Which filters are pushed into exports (default [`PushdownMode::Auto`]: those the server
    /// declares it supports).
    pub fn with_pushdown(self, pushdown: PushdownMode) -> Self {
        Self { pushdown, ..self }
    }

    /// The mode of the tables.
    pub fn mode(&self) -> &TableMode {
        &self.mode
    }
}

/// `mode` with the width bound `max_columns` if it is flattened.
fn bounded(mode: TableMode, max_columns: usize) -> TableMode {
    match mode {
        TableMode::Flattened(f) => TableMode::Flattened(f.with_max_columns(max_columns)),
        TableMode::Nested => TableMode::Nested,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_parses() {
        assert_eq!("always".parse::<Freshness>().unwrap(), Freshness::Always);
        assert_eq!("NEVER".parse::<Freshness>().unwrap(), Freshness::Never);
        assert_eq!(
            "15m".parse::<Freshness>().unwrap(),
            Freshness::MaxAge(Duration::from_secs(900))
        );
        assert_eq!(
            "90".parse::<Freshness>().unwrap(),
            Freshness::MaxAge(Duration::from_secs(90))
        );
        assert!("soon".parse::<Freshness>().is_err());
        assert!(Freshness::MaxAge(Duration::from_secs(60)).accepts(Duration::from_secs(59)));
        assert!(!Freshness::MaxAge(Duration::from_secs(60)).accepts(Duration::from_secs(61)));
    }
}
