//! DataFusion integration: [`FhirCatalog`], [`FhirSchema`], [`FhirTable`], the `STORED AS FHIR`
//! table factory and the `fhir_refresh` and `fhir_add_view` table functions.
//!
//! Every resource type of a source is a table. Resolving a table finds a fresh snapshot (see
//! [`crate::snapshot`]) or runs the export; browsing (`SHOW TABLES`, `information_schema`, table
//! names) never does. SQL on FHIR views are tables too ([`FhirCatalog::add_view`],
//! [`CatalogOptions::with_views`], `fhir_add_view`), read from the snapshot of their resource type.
//!
//! Planning has no side effects: `fhir_refresh` and `fhir_add_view` check their arguments when
//! planned and act when executed (a `FhirEffectExec`), so `EXPLAIN` of them exports or adds nothing.
//!
//! # One export per statement
//!
//! DataFusion resolves the tables of a statement one after the other, so a catalog alone cannot
//! tell that `Patient` and `Condition` are needed together. [`sql`] first collects the table
//! references of the statement (`SessionState::resolve_table_references`), brings all FHIR types
//! up to date with ONE export per catalog, then plans as usual. Plain `ctx.sql` works too, with
//! one export per missing type. Queries that need a type already being exported wait for that
//! export (it is shared), whoever started it; an export whose every waiting query went away (a
//! dropped future, a disconnected Flight client) is cancelled.
//!
//! # Filters pushed into the export
//!
//! [`sql`] also reads simple `WHERE` conjuncts from the statement and restricts the export with
//! them (`_typeFilter`, `_since`; see [`Pushdown`] and [`SEARCH_PARAMS`]) when no full snapshot
//! is fresh. DataFusion applies the filters again, so servers that ignore them give the same rows.
//! `EXPLAIN` shows what the export of each scanned snapshot was restricted by ([`FhirScanExec`]).
//! Each distinct pushdown makes its own filtered snapshot; the least recently used beyond
//! [`CatalogOptions::with_max_filtered_snapshots`] per type are evicted (never one being read).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use datafusion::prelude::SessionContext;
//! use fhirflight::catalog::{self, CatalogOptions, FhirCatalog, LocalFolder};
//!
//! let ctx = SessionContext::new();
//! let source = Arc::new(LocalFolder::try_new("data/synthea-100")?);
//! let fhir = FhirCatalog::try_new(source, CatalogOptions::default()).await?;
//! ctx.register_catalog("synthea", Arc::new(fhir));
//! catalog::register_functions(&ctx, CatalogOptions::default());
//! let df = catalog::sql(&ctx, "SELECT gender, count(*) FROM synthea.fhir.patient GROUP BY gender").await?;
//! df.show().await?;
//! # Ok(()) }
//! ```

mod effect;
mod exports;
mod factory;
mod nesting;
mod pushdown;
mod refresh;
mod runtime;
mod source;
mod table;
mod views;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProviderList, SchemaProvider, TableProvider,
};
use datafusion::dataframe::DataFrame;
use datafusion::error::Result as DfResult;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::TableType;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::dialect::dialect_from_str;

pub use exports::{ExportState, ExportStatus};
pub use factory::FhirTableFactory;
pub use nesting::MAX_STATEMENT_DEPTH;
pub use pushdown::{Pushdown, SEARCH_PARAMS};
pub use refresh::RefreshFunction;
pub use runtime::QueryRuntime;
pub use source::{
    BulkSource, FetchOutcome, FetchPhase, FetchProgress, FetchRequest, FetchedFile, FhirSource,
    LocalFolder,
};
pub use table::{FhirScanExec, FhirTable};
pub use views::{AddViewFunction, load_views};

use crate::error::quoted;
use crate::ndjson::TableMode;
use crate::r4::check_type_name;
use crate::snapshot::{Snapshot, SnapshotStore, mode_key};
use crate::view::ViewDefinition;
use crate::{Error, Result};
use exports::Exporter;
pub(crate) use table::to_datafusion;

/// The name of the one schema of a [`FhirCatalog`] unless configured otherwise.
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
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let unit = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => 0,
        };
        match number.parse::<u64>() {
            Ok(n) if unit > 0 => Ok(Freshness::MaxAge(Duration::from_secs(n * unit))),
            _ => Err(Error::Config(format!(
                "freshness {s:?}: expected always, never or an age like 90s, 15m, 1h, 7d"
            ))),
        }
    }
}

/// Options of a [`FhirCatalog`] (and defaults of `STORED AS FHIR` tables).
#[derive(Debug, Clone)]
pub struct CatalogOptions {
    cache_dir: PathBuf,
    freshness: Freshness,
    mode: TableMode,
    resource_types: Option<Vec<String>>,
    batch_size: usize,
    schema_name: String,
    incremental: bool,
    max_filtered_snapshots: usize,
    views: Vec<Arc<ViewDefinition>>,
    view_dirs: Vec<PathBuf>,
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
            views: Vec::new(),
            view_dirs: Vec::new(),
        }
    }
}

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
    /// column per top-level element, structs and lists).
    pub fn with_mode(self, mode: TableMode) -> Self {
        Self { mode, ..self }
    }

    /// The resource types shown as tables, instead of asking the source. Each must be a resource
    /// type name ([`crate::r4::check_type_name`]), or making the catalog fails.
    pub fn with_resource_types(self, types: Vec<String>) -> Self {
        Self {
            resource_types: Some(types),
            ..self
        }
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

    /// Adds `view` as a table (see [`FhirCatalog::add_view`]); the notebook's shorthand is
    /// [`ViewDefinition::from_paths`] with [`ViewDefinition::with_name`].
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

    /// Makes every ViewDefinition JSON file of `dir` a table (see [`load_views`]); read when
    /// the catalog is made, which fails naming a malformed file.
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

    /// The mode of the tables.
    pub fn mode(&self) -> &TableMode {
        &self.mode
    }
}

/// A DataFusion catalog whose one schema holds a table per resource type of a [`FhirSource`].
///
/// Register several (one per server or folder) in one `SessionContext`. Cloning is cheap and
/// clones share exports and snapshots.
#[derive(Debug, Clone)]
pub struct FhirCatalog {
    exporter: Arc<Exporter>,
    schema: Arc<FhirSchema>,
}

impl FhirCatalog {
    /// A catalog over `source`; asks it for its resource types unless they are configured.
    ///
    /// A type becomes a table name and a folder of the snapshot store, so only resource type
    /// names ([`check_type_name`]) are taken: a configured one that is not fails, one the source
    /// lists is dropped with a warning (a server should not make the catalog unusable).
    pub async fn try_new(source: Arc<dyn FhirSource>, options: CatalogOptions) -> Result<Self> {
        let mut types = match &options.resource_types {
            Some(types) => types
                .iter()
                .map(|t| check_type_name(t).map(str::to_owned))
                .collect::<Result<_>>()?,
            None => {
                let mut types = source.resource_types().await?;
                types.retain(|t| {
                    let valid = check_type_name(t).is_ok();
                    if !valid {
                        tracing::warn!(
                            source = source.location(),
                            "{} is not a resource type name: no table",
                            quoted(t)
                        );
                    }
                    valid
                });
                types
            }
        };
        types.sort();
        types.dedup();
        let store = SnapshotStore::open(&options.cache_dir, source.location())?;
        let exporter = Arc::new(Exporter::new(source, store, options, types));
        let schema = Arc::new(FhirSchema {
            exporter: Arc::clone(&exporter),
            browse: false,
            views: Arc::default(),
        });
        let catalog = Self { exporter, schema };
        catalog.add_configured_views()?;
        Ok(catalog)
    }

    /// The same catalog for browsing: its tables are the committed snapshots as they are, and a
    /// type without one is absent; nothing is exported.
    pub fn browsing(&self) -> Self {
        let schema = Arc::new(FhirSchema {
            exporter: Arc::clone(&self.exporter),
            browse: true,
            views: Arc::clone(&self.schema.views),
        });
        Self {
            exporter: Arc::clone(&self.exporter),
            schema,
        }
    }

    /// The resource types (table names).
    pub fn resource_types(&self) -> &[String] {
        &self.exporter.types
    }

    /// The name of the catalog's schema.
    pub fn schema_name(&self) -> &str {
        &self.exporter.options.schema_name
    }

    /// The snapshot store.
    pub fn store(&self) -> &SnapshotStore {
        &self.exporter.store
    }

    /// Snapshots of `types` satisfying `freshness` (default: the catalog's), exporting the
    /// missing or stale ones in one export.
    pub async fn prefetch(
        &self,
        types: &[String],
        freshness: Option<Freshness>,
    ) -> Result<Vec<Snapshot>> {
        let types = self.known_types(types)?;
        let freshness = freshness.unwrap_or(self.exporter.options.freshness);
        self.exporter.ensure(&types, &freshness, None).await
    }

    /// Exports `types` again now (incrementally when the catalog allows it) and returns the new
    /// snapshots. An export of these types already running is joined instead.
    pub async fn refresh(&self, types: &[String]) -> Result<Vec<Snapshot>> {
        Ok(self.refresh_exports(types).await?.0)
    }

    /// [`FhirCatalog::refresh`], with the ids of the exports it waited for (started or joined).
    pub(crate) async fn refresh_exports(
        &self,
        types: &[String],
    ) -> Result<(Vec<Snapshot>, Vec<u64>)> {
        let wanted = exports::full(&self.known_types(types)?);
        self.exporter
            .ensure_exports(&wanted, &Freshness::Always, None)
            .await
    }

    /// The committed snapshot of every type that has one (no export).
    pub fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let store = &self.exporter.store;
        self.exporter
            .types
            .iter()
            .filter_map(|t| store.current(t).transpose())
            .collect()
    }

    /// Running and recently finished exports, with progress.
    pub fn exports(&self) -> Vec<ExportStatus> {
        self.exporter.exports()
    }

    /// Cancels a running export by id; false when it is not running.
    pub fn cancel(&self, export_id: u64) -> bool {
        self.exporter.cancel(export_id)
    }

    /// Adds `view` as a table of this catalog's schema, named after the view (`name`), whose
    /// schema is the view's own (no export to plan or browse it). Replaces a view of that name.
    /// Scanning it exports its resource type when needed (with the other types of the statement)
    /// and keeps the view's rows as Parquet beside the snapshot. The name must be an identifier
    /// and not a resource type; the resource must be one of the catalog's types.
    pub fn add_view(&self, view: ViewDefinition) -> Result<()> {
        self.insert_view(Arc::new(view))
    }

    /// The views, in the order they were added.
    pub fn views(&self) -> Vec<Arc<ViewDefinition>> {
        self.schema.views.all()
    }

    /// The table of `resource_type` (exports when needed, following the catalog's freshness).
    pub async fn table(&self, resource_type: &str) -> Result<FhirTable> {
        let types = self.known_types(&[resource_type.to_owned()])?;
        let freshness = self.exporter.options.freshness;
        let snapshot = self
            .exporter
            .ensure(&types, &freshness, None)
            .await?
            .remove(0);
        self.exporter.table(snapshot)
    }

    /// Resolves names case-insensitively to resource types; unknown names are an error.
    fn known_types(&self, names: &[String]) -> Result<Vec<String>> {
        names
            .iter()
            .map(|n| {
                self.exporter
                    .resource_type(n)
                    .map(str::to_owned)
                    .ok_or_else(|| {
                        Error::Config(format!(
                            "{n} is not a resource type of {}",
                            self.exporter.source.location()
                        ))
                    })
            })
            .collect()
    }
}

impl Exporter {
    /// The table of a snapshot in the catalog's mode, converting the raw NDJSON when the snapshot
    /// lacks that mode (made by a catalog in the other mode).
    fn table(&self, snapshot: Snapshot) -> Result<FhirTable> {
        let mode = &self.options.mode;
        let snapshot = match snapshot.table(&mode_key(mode)) {
            Some(_) => snapshot,
            None => self
                .store
                .add_table(&snapshot, mode, self.options.batch_size)?,
        };
        FhirTable::try_new(snapshot, mode)
    }
}

impl CatalogProvider for FhirCatalog {
    fn schema_names(&self) -> Vec<String> {
        vec![self.schema_name().to_owned()]
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        (name == self.schema_name()).then(|| Arc::clone(&self.schema) as Arc<dyn SchemaProvider>)
    }
}

/// The schema of a [`FhirCatalog`]: one table per resource type.
#[derive(Debug)]
pub struct FhirSchema {
    exporter: Arc<Exporter>,
    browse: bool,
    views: Arc<views::Views>,
}

#[async_trait]
impl SchemaProvider for FhirSchema {
    fn table_names(&self) -> Vec<String> {
        let views = self.views.all();
        let views = views.iter().filter_map(|v| v.name().map(str::to_owned));
        self.exporter.types.iter().cloned().chain(views).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some(view) = self.views.get(name) {
            let snapshot = self.snapshot(view.resource()).await?;
            let batch_size = self.exporter.options.batch_size;
            return views::view_table(&self.views, view, snapshot, !self.browse, batch_size)
                .await
                .map(Some);
        }
        let Some(resource_type) = self.exporter.resource_type(name) else {
            return Ok(None);
        };
        let Some(snapshot) = self.snapshot(resource_type).await? else {
            return Ok(None);
        };
        let exporter = &self.exporter;
        let table = tokio::task::spawn_blocking({
            let exporter = Arc::clone(exporter);
            move || exporter.table(snapshot)
        })
        .await
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?
        .map_err(to_datafusion)?;
        Ok(Some(Arc::new(table)))
    }

    async fn table_type(&self, name: &str) -> DfResult<Option<TableType>> {
        Ok(match self.exporter.resource_type(name) {
            Some(_) => Some(TableType::Base),
            None => self.views.get(name).map(|_| TableType::View),
        })
    }

    fn table_exist(&self, name: &str) -> bool {
        self.exporter.resource_type(name).is_some() || self.views.get(name).is_some()
    }
}

impl FhirSchema {
    /// The snapshot a table of `resource_type` reads: when browsing, the committed one (none
    /// without one, never an export); else one fresh enough for the statement, exporting.
    async fn snapshot(&self, resource_type: &str) -> DfResult<Option<Snapshot>> {
        let exporter = &self.exporter;
        if self.browse {
            return exporter.store.current(resource_type).map_err(to_datafusion);
        }
        let mut snapshots = match SCOPE.try_with(Clone::clone).ok() {
            Some(Scope {
                started,
                freshness,
                pushdowns,
            }) => {
                let freshness = freshness.unwrap_or(exporter.options.freshness);
                let pushdown = pushdowns
                    .iter()
                    .find(|(e, t, _)| Arc::ptr_eq(e, exporter) && t == resource_type)
                    .map(|(_, _, p)| p.clone())
                    .unwrap_or_default();
                exporter
                    .ensure_pushed(
                        &[(resource_type.to_owned(), pushdown)],
                        &freshness,
                        Some(started),
                    )
                    .await
            }
            None => {
                let freshness = exporter.options.freshness;
                exporter
                    .ensure(&[resource_type.to_owned()], &freshness, None)
                    .await
            }
        }
        .map_err(to_datafusion)?;
        Ok(Some(snapshots.remove(0)))
    }
}

/// A statement prepared by [`sql`], being planned: its types were brought up to date when it
/// started (a task-local, as planning runs in the caller's task).
#[derive(Debug, Clone)]
struct Scope {
    started: SystemTime,
    freshness: Option<Freshness>,
    /// What the statement pushes into the export of each (catalog, type).
    pushdowns: Arc<Vec<(Arc<Exporter>, String, Pushdown)>>,
}

tokio::task_local! {
    static SCOPE: Scope;
}

/// Runs `sql` in `ctx` like `ctx.sql`, first bringing every FHIR table it references up to
/// date with ONE export per catalog (see the [module docs](self)). Browsing statements
/// (`SHOW TABLES`, `information_schema`) never export and are executed here (their results are
/// small). A statement nested deeper than [`MAX_STATEMENT_DEPTH`] is refused; those below it need
/// a deeper stack than a tokio worker's 2 MiB (a 2,000-term sum overflows it), which a
/// [`QueryRuntime`]'s threads have: plan and run statements from untrusted users there.
pub async fn sql(ctx: &SessionContext, sql: &str) -> DfResult<DataFrame> {
    run_sql(ctx, sql, None).await
}

/// [`sql`] with a freshness for this statement instead of each catalog's.
pub async fn sql_with_freshness(
    ctx: &SessionContext,
    sql: &str,
    freshness: Freshness,
) -> DfResult<DataFrame> {
    run_sql(ctx, sql, Some(freshness)).await
}

async fn run_sql(
    ctx: &SessionContext,
    sql: &str,
    freshness: Option<Freshness>,
) -> DfResult<DataFrame> {
    let started = SystemTime::now();
    let state = ctx.state();
    let statement = parse_statement(&state, sql)?;
    let Some(pushdowns) = prefetch(&state, &statement, freshness).await? else {
        // Browsing runs in a session whose FHIR catalogs never export (information_schema
        // resolves every table while executing, possibly in other tasks).
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        for name in state.catalog_list().catalog_names() {
            let Some(catalog) = state.catalog_list().catalog(&name) else {
                continue;
            };
            let catalog = match catalog.downcast_ref::<FhirCatalog>() {
                Some(fhir) => Arc::new(fhir.browsing()) as Arc<dyn CatalogProvider>,
                None => catalog,
            };
            catalogs.register_catalog(name, catalog);
        }
        let browse = SessionStateBuilder::new_from_existing(state)
            .with_catalog_list(catalogs)
            .build();
        let batches = SessionContext::new_with_state(browse)
            .sql(sql)
            .await?
            .collect()
            .await?;
        return ctx.read_batches(batches);
    };
    let scope = Scope {
        started,
        freshness,
        pushdowns: Arc::new(pushdowns),
    };
    SCOPE.scope(scope, ctx.sql(sql)).await
}

/// Parses one statement of `sql`, refusing it first when it nests deeper than
/// [`MAX_STATEMENT_DEPTH`] (see [`nesting`]).
pub(crate) fn parse_statement(state: &SessionState, sql: &str) -> DfResult<Statement> {
    let dialect = state.config().options().sql_parser.dialect;
    // An unknown dialect is left to `sql_to_statement` to report.
    if let Some(tokens) = dialect_from_str(dialect) {
        nesting::check(sql, tokens.as_ref(), MAX_STATEMENT_DEPTH)?;
    }
    state.sql_to_statement(sql, &dialect)
}

/// Brings the FHIR tables that `statement` references up to date: one export per catalog for
/// all its types, restricted by the filters it can push. Returns what was pushed per table, or
/// `None`, doing nothing, when the statement browses `information_schema`.
async fn prefetch(
    state: &SessionState,
    statement: &Statement,
    freshness: Option<Freshness>,
) -> DfResult<Option<Vec<(Arc<Exporter>, String, Pushdown)>>> {
    let options = state.config().options();
    let (default_catalog, default_schema) = (
        &options.catalog.default_catalog,
        &options.catalog.default_schema,
    );
    let filters = pushdown::Filters::of(
        statement,
        options.sql_parser.enable_ident_normalization,
        default_catalog,
        default_schema,
    );
    let mut wanted: Vec<(FhirCatalog, Vec<(String, Pushdown)>)> = Vec::new();
    for reference in state.resolve_table_references(statement)? {
        let r = reference.resolve(default_catalog, default_schema);
        if r.schema.as_ref() == "information_schema" {
            return Ok(None);
        }
        let Some(catalog) = state.catalog_list().catalog(&r.catalog) else {
            continue;
        };
        let Some(fhir) = catalog.downcast_ref::<FhirCatalog>() else {
            continue;
        };
        let Some(t) = fhir
            .table_resource_type(&r.table)
            .filter(|_| r.schema.as_ref() == fhir.schema_name())
        else {
            continue;
        };
        // A view's columns are not the type's: only a resource type's own table pushes filters.
        let pushdown = match fhir.exporter.resource_type(&r.table) {
            Some(_) => Pushdown::from_conjuncts(&t, filters.conjuncts(&r)),
            None => Pushdown::default(),
        };
        match wanted
            .iter_mut()
            .find(|(c, _)| Arc::ptr_eq(&c.exporter, &fhir.exporter))
        {
            Some((_, types)) => types.push((t, pushdown)),
            None => wanted.push((fhir.clone(), vec![(t, pushdown)])),
        }
    }
    // A type read twice (a view and its type's table, say) is read whole: one snapshot serves both.
    for (_, types) in &mut wanted {
        let mixed: Vec<String> = types
            .iter()
            .filter(|(t, p)| types.iter().any(|(u, q)| u == t && q != p))
            .map(|(t, _)| t.clone())
            .collect();
        for (t, p) in types.iter_mut() {
            if mixed.contains(t) {
                *p = Pushdown::default();
            }
        }
        types.sort();
        types.dedup();
    }
    let exports = wanted.iter().map(|(catalog, types)| {
        let freshness = freshness.unwrap_or(catalog.exporter.options.freshness);
        async move {
            catalog
                .exporter
                .ensure_pushed(types, &freshness, None)
                .await
        }
    });
    futures::future::try_join_all(exports)
        .await
        .map_err(to_datafusion)?;
    Ok(Some(
        wanted
            .into_iter()
            .flat_map(|(catalog, types)| {
                types
                    .into_iter()
                    .map(move |(t, p)| (Arc::clone(&catalog.exporter), t, p))
            })
            .collect(),
    ))
}

/// Registers what SQL needs beyond catalogs: the `STORED AS FHIR` table factory (with
/// `defaults` for its options) and the `fhir_refresh` and `fhir_add_view` table functions.
pub fn register_functions(ctx: &SessionContext, defaults: CatalogOptions) {
    ctx.state_ref().write().table_factories_mut().insert(
        "FHIR".to_owned(),
        Arc::new(FhirTableFactory::new(defaults.without_views())),
    );
    ctx.register_udtf("fhir_refresh", Arc::new(RefreshFunction));
    ctx.register_udtf("fhir_add_view", Arc::new(AddViewFunction));
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
