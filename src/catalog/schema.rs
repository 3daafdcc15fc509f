//! [`FhirSchema`]: the tables of a catalog as DataFusion resolves them, each from a snapshot fresh
//! enough for the statement being planned (its [`Scope`], set by [`sql`](super::sql)), or, when
//! browsing, from the committed one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider, TableProvider};
use datafusion::error::Result as DfResult;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::TableType;
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::ast::Statement as SqlStatement;

use super::exports::Exporter;
use super::{FhirTable, Freshness, Pushdown, to_datafusion, views};
use crate::snapshot::{Snapshot, mode_key};
use crate::{Error, Result};

/// The schema of a [`FhirCatalog`](super::FhirCatalog): one table per resource type, its views,
/// and the tables a session creates in it (`CREATE VIEW`, `CREATE TABLE ... AS`), kept in memory
/// for the catalog's life and never named as a resource type or view is.
#[derive(Debug)]
pub struct FhirSchema {
    pub(super) exporter: Arc<Exporter>,
    pub(super) browse: bool,
    pub(super) views: Arc<views::Views>,
    /// Shared with the browsing twin of the catalog.
    pub(super) created: Arc<MemorySchemaProvider>,
}

#[async_trait]
impl SchemaProvider for FhirSchema {
    fn table_names(&self) -> Vec<String> {
        let views = self.views.all();
        let views = views.iter().filter_map(|v| v.name().map(str::to_owned));
        self.exporter
            .listed_types()
            .into_iter()
            .chain(views)
            .chain(self.created.table_names())
            .collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some(created) = self.created.table(name).await? {
            return Ok(Some(created));
        }
        // Within a statement, a table resolves once: to read its columns (the statement's
        // identifiers, see `sql`), then to plan it.
        let tables = SCOPE.try_with(|s| Arc::clone(&s.tables)).ok();
        let key = (
            Arc::as_ptr(&self.exporter) as usize,
            self.browse,
            name.to_owned(),
        );
        if let Some(tables) = &tables
            && let Some(table) = lock(tables).get(&key)
        {
            return Ok(Some(Arc::clone(table)));
        }
        let table = self.resolve(name).await?;
        if let (Some(tables), Some(table)) = (&tables, &table) {
            lock(tables).insert(key, Arc::clone(table));
        }
        Ok(table)
    }

    async fn table_type(&self, name: &str) -> DfResult<Option<TableType>> {
        if let Some(created) = self.created.table_type(name).await? {
            return Ok(Some(created));
        }
        Ok(match self.exporter.resource_type(name) {
            Some(_) => Some(TableType::Base),
            None => self.views.get(name).map(|_| TableType::View),
        })
    }

    fn table_exist(&self, name: &str) -> bool {
        self.created.table_exist(name) || self.is_fhir_table(name)
    }

    /// Keeps a table a statement creates (`CREATE VIEW women AS ...`); a resource type or a
    /// view of the catalog cannot be replaced this way.
    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> DfResult<Option<Arc<dyn TableProvider>>> {
        self.refuse_fhir_table(&name)?;
        self.created.register_table(name, table)
    }

    /// Forgets a table a statement created (`DROP VIEW`); a resource type or a view of the
    /// catalog cannot be dropped this way.
    fn deregister_table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if self.created.table_exist(name) {
            return self.created.deregister_table(name);
        }
        self.refuse_fhir_table(name)?;
        Ok(None)
    }
}

impl FhirSchema {
    /// Whether `name` is a resource type (ignoring case) or a view of the catalog.
    fn is_fhir_table(&self, name: &str) -> bool {
        self.exporter.resource_type(name).is_some() || self.views.get(name).is_some()
    }

    /// An error when `name` is a resource type or view of the catalog, which statements do not
    /// create, replace or drop.
    fn refuse_fhir_table(&self, name: &str) -> DfResult<()> {
        if !self.is_fhir_table(name) {
            return Ok(());
        }
        let kind = match self.exporter.resource_type(name) {
            Some(resource_type) => format!("the resource type {resource_type}"),
            None => "a view of the catalog (fhir_add_view)".to_owned(),
        };
        Err(datafusion::error::DataFusionError::Plan(format!(
            "'{name}' is {kind}, which a statement cannot create, replace or drop"
        )))
    }

    /// The table `name`, resolved afresh.
    async fn resolve(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some(view) = self.views.get(name) {
            let snapshot = self.snapshot(view.resource()).await?;
            let decode = self.exporter.options.decode_options();
            let store = &self.exporter.store;
            return views::view_table(&self.views, store, view, snapshot, !self.browse, decode)
                .await
                .map(Some);
        }
        let Some(resource_type) = self.exporter.resource_type(name) else {
            return Ok(None);
        };
        let Some(snapshot) = self.snapshot(&resource_type).await? else {
            return Ok(None);
        };
        let named = SCOPE
            .try_with(|s| Arc::clone(&s.identifiers))
            .unwrap_or_default();
        let exporter = &self.exporter;
        let table = tokio::task::spawn_blocking({
            let exporter = Arc::clone(exporter);
            move || exporter.table_naming(snapshot, &named)
        })
        .await
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?
        .map_err(to_datafusion)?;
        Ok(Some(Arc::new(table)))
    }

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
                ..
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

impl Exporter {
    /// The table of a snapshot in the catalog's mode, converting the raw NDJSON when the snapshot
    /// lacks that mode (made by a catalog in the other mode).
    pub(super) fn table(&self, snapshot: Snapshot) -> Result<FhirTable> {
        self.table_naming(snapshot, &[])
    }

    /// [`Exporter::table`] for a statement that names the identifiers `named`.
    ///
    /// Its columns are the type's ([`SnapshotStore::columns`](crate::snapshot::SnapshotStore::columns): every column any snapshot of the
    /// type had, and a filtered snapshot's full one has), missing ones reading as null. Over an
    /// empty or filtered snapshot, which may lack columns the type has, an identifier that is no
    /// column is one more null column when its first segment (up to `_`) is an element of the
    /// resource type in R4 (`gender`, `valueQuantity_value`): a query over no resources gives
    /// no rows rather than an error, while a misspelt column is still an error.
    pub(super) fn table_naming(&self, snapshot: Snapshot, named: &[String]) -> Result<FhirTable> {
        let mode = &self.options.mode;
        let key = mode_key(mode);
        let snapshot = match snapshot.table(&key) {
            Some(_) => snapshot,
            None => self
                .store
                .add_table(&snapshot, mode, self.options.decode_options())?,
        };
        let resource_type = snapshot.manifest().resource_type.clone();
        let filtered = !snapshot.manifest().pushdown.is_empty();
        let mut schemas = vec![snapshot.schema(&key)?];
        if filtered
            && let Some(full) = self.store.current(&resource_type)?
            && full.table(&key).is_some()
        {
            schemas.push(full.schema(&key)?);
        }
        let schema = self.store.columns(&resource_type, &key, &schemas)?;
        let empty = snapshot.table(&key).is_none_or(|t| t.rows == 0);
        let schema = match filtered || empty {
            true => with_named_elements(&schema, &resource_type, named),
            false => schema,
        };
        let location = self.store.table_location(&snapshot, &key)?;
        Ok(FhirTable::try_new_with_schema(snapshot, mode, schema)?.with_location(location))
    }
}

/// `schema` with a null text column for each of `named` that is no column of it (ignoring case)
/// and whose first segment is an element of `resource_type` (spelt as the element is).
fn with_named_elements(schema: &SchemaRef, resource_type: &str, named: &[String]) -> SchemaRef {
    let mut fields: Vec<FieldRef> = schema.fields().iter().cloned().collect();
    for name in named {
        if fields.iter().any(|f| f.name().eq_ignore_ascii_case(name)) {
            continue;
        }
        let first = name.split('_').next().unwrap_or_default();
        if let Some(element) = crate::r4::element(resource_type, first) {
            let column = format!("{element}{}", &name[first.len()..]);
            fields.push(Arc::new(Field::new(column, DataType::Utf8, true)));
        }
    }
    Arc::new(Schema::new(fields))
}

/// Every identifier `statement` names (each part of a compound one, as written): the columns a
/// table of it may need to have.
fn identifiers(statement: &Statement) -> Vec<String> {
    use datafusion::sql::parser::CopyToSource;
    use datafusion::sql::sqlparser::ast::{Expr, visit_expressions};
    let mut names = Vec::new();
    let mut collect = |expr: &Expr| {
        match expr {
            Expr::Identifier(ident) => names.push(ident.value.clone()),
            Expr::CompoundIdentifier(parts) => {
                names.extend(parts.iter().map(|p| p.value.clone()));
            }
            _ => {}
        }
        std::ops::ControlFlow::<()>::Continue(())
    };
    match statement {
        Statement::Statement(s) => {
            let _ = visit_expressions(s.as_ref(), &mut collect);
        }
        Statement::Explain(e) => return identifiers(&e.statement),
        Statement::CopyTo(c) => {
            if let CopyToSource::Query(q) = &c.source {
                let _ = visit_expressions(q.as_ref(), &mut collect);
            }
        }
        _ => {}
    }
    names.sort();
    names.dedup();
    names
}

/// Fails with a typed [`Error::NotFound`] (`table 'c.s.t' not found`, the text DataFusion would
/// give) when `statement` is a query that reads a table that does not exist, so that a missing
/// table is known by its kind, not by the text of a planning error like any other.
///
/// Only queries and `EXPLAIN` of one are checked: every relation they name (besides table
/// functions) must be a table. Other statements name tables that need not exist yet (`CREATE
/// TABLE t AS ...`); DataFusion judges those. The lookups are DataFusion's own when it plans: a
/// missing catalog or schema, else the schema's table; a FHIR schema answers from its types and
/// views (`table_exist`), never exporting.
pub(super) async fn check_tables_exist(
    state: &SessionState,
    statement: &Statement,
) -> DfResult<()> {
    if !is_query(statement) {
        return Ok(());
    }
    let options = state.config().options();
    let (catalog, schema) = (
        &options.catalog.default_catalog,
        &options.catalog.default_schema,
    );
    for reference in state.resolve_table_references(statement)? {
        if reference.schema().is_none() && state.table_functions().contains_key(reference.table()) {
            continue;
        }
        let resolved = reference.clone().resolve(catalog, schema);
        let provider = state.schema_for_ref(reference).ok();
        let exists = match &provider {
            None => false,
            Some(provider) if provider.table_exist(&resolved.table) => true,
            Some(provider) if provider.downcast_ref::<FhirSchema>().is_some() => false,
            // Some schemas make tables on demand (a URL table): ask for it, as DataFusion will.
            Some(provider) => provider.table(&resolved.table).await?.is_some(),
        };
        if !exists {
            let closest = provider.and_then(|p| closest_table(p.as_ref(), &resolved.table));
            return Err(to_datafusion(Error::NotFound {
                what: "table",
                name: format!("'{resolved}'"),
                reason: closest.map(|name| format!("did you mean {name}?")),
            }));
        }
    }
    Ok(())
}

/// The table of `schema` whose name is closest to the mistyped `name` (case aside), if one is
/// close enough to be what was meant: a FHIR schema's tables are every R4 resource type and its
/// views.
fn closest_table(schema: &dyn SchemaProvider, name: &str) -> Option<String> {
    use datafusion::common::utils::datafusion_strsim::levenshtein;
    let mut names = schema.table_names();
    if schema.downcast_ref::<FhirSchema>().is_some() {
        names.extend(crate::r4::RESOURCE_TYPES.iter().map(|t| t.to_string()));
    }
    let name = name.to_lowercase();
    names
        .into_iter()
        .map(|candidate| (levenshtein(&name, &candidate.to_lowercase()), candidate))
        .filter(|(distance, _)| *distance <= (name.chars().count() / 3).max(1))
        .min()
        .map(|(_, candidate)| candidate)
}

/// Whether `statement` is a query, or `EXPLAIN` of one.
fn is_query(statement: &Statement) -> bool {
    fn sql(statement: &SqlStatement) -> bool {
        match statement {
            SqlStatement::Query(_) => true,
            SqlStatement::Explain { statement, .. } => sql(statement),
            _ => false,
        }
    }
    match statement {
        Statement::Statement(s) => sql(s),
        Statement::Explain(e) => is_query(&e.statement),
        _ => false,
    }
}

/// A statement prepared by [`sql`](super::sql), being planned: its types were brought up to date
/// when it started (a task-local, as planning runs in the caller's task).
#[derive(Debug, Clone)]
pub(super) struct Scope {
    pub(super) started: SystemTime,
    pub(super) freshness: Option<Freshness>,
    /// What the statement pushes into the export of each (catalog, type).
    pub(super) pushdowns: Arc<Vec<(Arc<Exporter>, String, Pushdown)>>,
    /// The tables resolved so far, by (catalog, browsing, name).
    pub(super) tables: Arc<Mutex<HashMap<TableKey, Arc<dyn TableProvider>>>>,
    /// The identifiers the statement names (see [`Exporter::table_naming`]).
    pub(super) identifiers: Arc<[String]>,
}

/// A FHIR table of a statement: its catalog (the exporter's address), whether browsing, name.
pub(super) type TableKey = (usize, bool, String);

impl Scope {
    pub(super) fn new(
        started: SystemTime,
        freshness: Option<Freshness>,
        pushdowns: Vec<(Arc<Exporter>, String, Pushdown)>,
    ) -> Self {
        Self {
            started,
            freshness,
            pushdowns: Arc::new(pushdowns),
            tables: Arc::default(),
            identifiers: Arc::new([]),
        }
    }

    /// This scope for `statement`, whose identifiers it records.
    pub(super) fn with_identifiers(self, statement: &Statement) -> Self {
        Self {
            identifiers: identifiers(statement).into(),
            ..self
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

tokio::task_local! {
    pub(super) static SCOPE: Scope;
}
