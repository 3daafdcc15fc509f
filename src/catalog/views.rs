//! SQL on FHIR views as tables of a [`FhirCatalog`]: registered from a folder of ViewDefinition
//! JSON files, from the notebook's shorthand, at run time (`fhir_add_view`, [`FhirCatalog::add_view`]).
//!
//! A view's schema is the view's own, so planning and browsing it need no export. Its rows come
//! from the raw NDJSON of a snapshot of its resource type, run through the
//! [`ViewRunner`](crate::view::ViewRunner) on all cores, and are kept as Parquet
//! (`<Type>/views/<name>-<hash>/<snapshot>/part-0.parquet`, written aside then renamed), a version
//! of the view's Delta table `<Type>/views/<name>-<hash>/` that other engines read
//! ([`SnapshotStore::publish_view`]): the first scan of a snapshot pays for parsing the JSON once,
//! later scans read a few Parquet columns, with projection, filters and limit pushed down by
//! DataFusion's Parquet reader. A new snapshot or another definition (the hash covers the
//! definition) gets its own copy; old copies go with their snapshot.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{
    SchemaProvider as _, Session, TableFunctionArgs, TableFunctionImpl, TableProvider,
};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::datasource::empty::EmptyTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::errors::ParquetError;
use datafusion::physical_plan::ExecutionPlan;

use super::effect::{Effect, FhirEffectExec};
use super::{CatalogOptions, FhirCatalog, FhirTable, to_datafusion};
use crate::error::BoxError;
use crate::ndjson::DecodeOptions;
use crate::snapshot::{Snapshot, SnapshotStore, TableFile, open_raw, parquet_properties};
use crate::view::{ViewDefinition, run_readers};
use crate::{Error, Result};

/// The views of a catalog, shared by its clones and its browsing twin.
#[derive(Debug, Default)]
pub(super) struct Views {
    list: RwLock<Vec<Arc<ViewDefinition>>>,
    /// Held while a view's Parquet copy is written, so concurrent scans write it once.
    build: tokio::sync::Mutex<()>,
}

impl Views {
    /// The view named `name`, matched case-insensitively (SQL folds unquoted names).
    pub(super) fn get(&self, name: &str) -> Option<Arc<ViewDefinition>> {
        let list = self.list.read().unwrap_or_else(|e| e.into_inner());
        list.iter()
            .find(|v| v.name().is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .map(Arc::clone)
    }

    /// The views, in the order they were added.
    pub(super) fn all(&self) -> Vec<Arc<ViewDefinition>> {
        self.list.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn insert(&self, view: Arc<ViewDefinition>) {
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        let name = view.name().unwrap_or_default();
        match list
            .iter_mut()
            .find(|v| v.name().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        {
            Some(old) => *old = view,
            None => list.push(view),
        }
    }
}

impl FhirCatalog {
    /// Checks that `view` can be a table of this catalog and adds it (replacing a view of that
    /// name).
    pub(super) fn insert_view(&self, view: Arc<ViewDefinition>) -> Result<()> {
        self.check_view(&view)?;
        self.schema.views.insert(view);
        Ok(())
    }

    /// Checks that `view` can be a table of this catalog: it needs a name that is an identifier,
    /// no resource type and no table a statement created, and must read one of the catalog's
    /// resource types.
    fn check_view(&self, view: &ViewDefinition) -> Result<()> {
        let error = |msg: String| Error::View {
            view: view.name().unwrap_or_else(|| view.resource()).to_owned(),
            msg,
            source: None,
        };
        let name = view
            .name()
            .ok_or_else(|| error("a view needs a name to be a table".into()))?;
        if !crate::view::is_name(name) {
            return Err(error(format!(
                "name {name:?} must match [A-Za-z][A-Za-z0-9_]*"
            )));
        }
        if let Some(t) = self.exporter.resource_type(name) {
            return Err(error(format!(
                "name {name:?} is taken by the resource type {t}"
            )));
        }
        if self.schema.created.table_exist(name) {
            return Err(error(format!(
                "name {name:?} is taken by a table a statement created (DROP it first)"
            )));
        }
        if self.exporter.resource_type(view.resource()).as_deref() != Some(view.resource()) {
            return Err(error(format!(
                "resource {} is not a resource type of {}",
                view.resource(),
                self.exporter.source.location()
            )));
        }
        Ok(())
    }

    /// The resource type a statement naming `table` needs: its own, or the one its view reads.
    pub(super) fn table_resource_type(&self, table: &str) -> Option<String> {
        match self.exporter.resource_type(table) {
            Some(t) => Some(t),
            None => self
                .schema
                .views
                .get(table)
                .map(|v| v.resource().to_owned()),
        }
    }

    /// Adds the views the catalog's options name (folders, then single views).
    pub(super) fn add_configured_views(&self) -> Result<()> {
        let options = &self.exporter.options;
        for dir in &options.view_dirs {
            for (path, view) in read_view_dir(dir)? {
                self.insert_view(Arc::new(view))
                    .map_err(|e| Error::config_with(path.display().to_string(), e))?;
            }
        }
        for view in &options.views {
            self.insert_view(Arc::clone(view))?;
        }
        Ok(())
    }
}

impl CatalogOptions {
    /// The options without views: `STORED AS FHIR` tables are single resource types.
    pub(super) fn without_views(self) -> Self {
        Self {
            views: Vec::new(),
            view_dirs: Vec::new(),
            ..self
        }
    }
}

/// Reads every ViewDefinition JSON file (`*.json`) of `dir`, sorted by file name. A view without
/// a `name` takes the file's (`patient_demographics.json` is the table `patient_demographics`).
/// A file that cannot be read, is not JSON or not a valid view is an error naming it, as are two
/// files defining the same name.
pub fn load_views(dir: impl AsRef<Path>) -> Result<Vec<ViewDefinition>> {
    Ok(read_view_dir(dir.as_ref())?
        .into_iter()
        .map(|(_, v)| v)
        .collect())
}

fn read_view_dir(dir: &Path) -> Result<Vec<(PathBuf, ViewDefinition)>> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().is_some_and(|e| e == "json") && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    let mut views: Vec<(PathBuf, ViewDefinition)> = Vec::with_capacity(paths.len());
    for path in paths {
        let in_file = |e: BoxError| Error::Config {
            message: path.display().to_string(),
            source: Some(e),
        };
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| in_file(e.into()))?;
        let mut view = ViewDefinition::from_json(&json).map_err(|e| in_file(e.into()))?;
        if view.name().is_none() {
            let stem = path.file_stem().unwrap_or_default().to_string_lossy();
            view = view.with_name(stem);
        }
        let name = view.name().unwrap_or_default();
        if let Some((other, _)) = views
            .iter()
            .find(|(_, v)| v.name().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        {
            return Err(Error::config(format!(
                "{}: view {name} is also defined in {}",
                path.display(),
                other.display()
            )));
        }
        views.push((path, view));
    }
    Ok(views)
}

/// The table of `view` over `snapshot`: its Parquet copy, written first when `build` (else, when
/// browsing, an empty table of the view's schema until a query writes it), read with the batch
/// size and line bound of `decode`.
pub(super) async fn view_table(
    views: &Views,
    store: &SnapshotStore,
    view: Arc<ViewDefinition>,
    snapshot: Option<Snapshot>,
    build: bool,
    decode: DecodeOptions,
) -> DfResult<Arc<dyn TableProvider>> {
    let Some(snapshot) = snapshot else {
        return Ok(Arc::new(EmptyTable::new(view.schema())));
    };
    let key = view_key(&view);
    // The Parquet copy's folder (`<name>/views/<key>/<snapshot>/`, [`Snapshot::view_dir`]).
    let dir = snapshot.view_dir(&key);
    if !dir.is_dir() {
        if !build {
            return Ok(Arc::new(EmptyTable::new(view.schema())));
        }
        let _building = views.build.lock().await;
        if !dir.is_dir() {
            let (view, dir, store) = (Arc::clone(&view), dir.clone(), store.clone());
            let snapshot = snapshot.clone();
            tokio::task::spawn_blocking(move || {
                write_view(&view, &store, &snapshot, &decode, &dir)
            })
            .await
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?
            .map_err(to_datafusion)?;
        }
    }
    let url = ListingTableUrl::parse(format!("{}/", dir.display()))?;
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(view.schema());
    let location = store
        .view_location(&snapshot, &key)
        .map_err(to_datafusion)?;
    // The copy's paths below the view's table (`<snapshot>/part-0.parquet`) are the same there.
    let root = dir.parent().map(Path::to_owned);
    let listing = ListingTable::try_new(config)?;
    Ok(Arc::new(FhirTable::view(
        snapshot,
        &key,
        listing,
        root.zip(location),
    )))
}

/// The name of `view`'s Parquet copies and Delta table: the view's, and a hash of its definition
/// and of this crate's version (a changed definition or runner gets a new table).
fn view_key(view: &ViewDefinition) -> String {
    use sha2::Digest;
    let text = format!("{}\n{}", env!("CARGO_PKG_VERSION"), view.definition());
    let hash = sha2::Sha256::digest(text.as_bytes());
    let hex: String = hash[..8].iter().map(|b| format!("{b:02x}")).collect();
    let name = view.name().unwrap_or("view");
    format!("{name}-{hex}")
}

/// Runs `view` over the snapshot's raw NDJSON into `dir/part-0.parquet`, written in a folder
/// beside `dir` and renamed to it when complete (another process finishing first wins), then
/// committed as a version of the view's Delta table when the snapshot is current.
fn write_view(
    view: &Arc<ViewDefinition>,
    store: &SnapshotStore,
    snapshot: &Snapshot,
    decode: &DecodeOptions,
    dir: &Path,
) -> Result<()> {
    const FILE: &str = "part-0.parquet";
    // Named as the store names a conversion's folder, which its collections know.
    let id = &snapshot.manifest().snapshot;
    let tmp = dir.with_file_name(format!(".{id}.{}", uuid::Uuid::new_v4().simple()));
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let result = (|| {
        let path = tmp.join(FILE);
        let parquet_error = |e: ParquetError| Error::snapshot_with(path.display().to_string(), e);
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut writer = ArrowWriter::try_new(file, view.schema(), Some(parquet_properties()))
            .map_err(parquet_error)?;
        let raw = snapshot.raw_paths();
        let sources = raw
            .iter()
            .map(|p| Ok((p.display().to_string(), open_raw(p)?)));
        let (batch_size, max_line) = (decode.batch_size(), decode.max_line_bytes());
        let mut rows = 0;
        run_readers(view, sources, batch_size, max_line, |batch| {
            rows += batch.num_rows() as u64;
            writer.write(&batch).map_err(parquet_error)
        })?;
        let file = writer.into_inner().map_err(parquet_error)?;
        file.sync_all().map_err(|e| Error::io(&path, e))?;
        let bytes = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        match fs::rename(&tmp, dir) {
            Ok(()) => {}
            Err(_) if dir.is_dir() => return Ok(()),
            Err(e) => return Err(Error::io(dir, e)),
        }
        let file = TableFile {
            path: FILE.to_owned(),
            rows,
            bytes,
        };
        // The copy is fhirflight's either way: a table another engine cannot read is a warning.
        if let Err(e) = store.publish_view(snapshot, &view_key(view), &file, &view.schema()) {
            tracing::warn!(
                "view {}: not a Delta table: {e}",
                view.name().unwrap_or("view")
            );
        }
        Ok(())
    })();
    if tmp.exists() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

/// `SELECT * FROM fhir_add_view('<catalog>', '<ViewDefinition JSON>')` adds a view to a FHIR
/// catalog (replacing one of that name) and returns one row: `view`, `resource`, `columns`
/// (`name type` pairs). The view is checked when the statement is planned and added when it
/// runs (`EXPLAIN` adds nothing and shows
/// `FhirEffectExec: action=add_view, catalog=<catalog>, view=<name>, resource=<Type>`); it
/// lasts as long as the catalog (add it to a views folder to keep it).
#[derive(Debug)]
pub struct AddViewFunction;

impl TableFunctionImpl for AddViewFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let strings: Vec<&String> = args
            .exprs()
            .iter()
            .map(|e| match e {
                Expr::Literal(ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)), _) => {
                    Ok(s)
                }
                other => plan_err!("fhir_add_view takes string literals, got {other}"),
            })
            .collect::<DfResult<_>>()?;
        let [name, json] = strings[..] else {
            return plan_err!("fhir_add_view('<catalog>', '<ViewDefinition JSON>')");
        };
        let Some(catalog) = args.session().catalog_list().catalog(name) else {
            return plan_err!("fhir_add_view: no catalog {name}");
        };
        let Some(catalog) = catalog.downcast_ref::<FhirCatalog>() else {
            return plan_err!("fhir_add_view: {name} is not a FHIR catalog");
        };
        let json: serde_json::Value = serde_json::from_str(json).map_err(|e| {
            to_datafusion(Error::invalid_request_with(
                "fhir_add_view: the ViewDefinition is not JSON",
                e,
            ))
        })?;
        let view = ViewDefinition::from_json(&json).map_err(to_datafusion)?;
        catalog.check_view(&view).map_err(to_datafusion)?;
        Ok(Arc::new(AddViewTable {
            name: name.clone(),
            catalog: catalog.clone(),
            view: Arc::new(view),
        }))
    }
}

/// The addition of a checked `view` to the catalog registered as `name`.
#[derive(Debug)]
struct AddViewTable {
    name: String,
    catalog: FhirCatalog,
    view: Arc<ViewDefinition>,
}

fn add_view_schema() -> SchemaRef {
    Arc::new(Schema::new(
        ["view", "resource", "columns"]
            .map(|n| Field::new(n, DataType::Utf8, true))
            .to_vec(),
    ))
}

#[async_trait]
impl TableProvider for AddViewTable {
    fn schema(&self) -> SchemaRef {
        add_view_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let view = &self.view;
        let columns: Vec<String> = view
            .schema()
            .fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect();
        let column = |s: &str| Arc::new(StringArray::from(vec![s])) as ArrayRef;
        let batch = RecordBatch::try_new(
            add_view_schema(),
            vec![
                column(view.name().unwrap_or_default()),
                column(view.resource()),
                column(&columns.join(", ")),
            ],
        )?;
        let details = vec![
            ("catalog", self.name.clone()),
            ("view", view.name().unwrap_or_default().to_owned()),
            ("resource", view.resource().to_owned()),
        ];
        let (catalog, view) = (self.catalog.clone(), Arc::clone(view));
        let effect: Effect = Arc::new(move || {
            let result = catalog
                .insert_view(Arc::clone(&view))
                .map_err(to_datafusion)
                .map(|()| batch.clone());
            Box::pin(std::future::ready(result))
        });
        let plan =
            FhirEffectExec::try_new("add_view", details, &add_view_schema(), projection, effect)?;
        Ok(Arc::new(plan))
    }
}
