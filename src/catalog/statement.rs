//! Statement-level SQL: [`sql`] reads a statement's table references and filters first and brings
//! every FHIR table it needs up to date with ONE export per catalog before DataFusion plans it,
//! with identifiers matched case-insensitively (see [`idents`](super::idents));
//! [`register_functions`] adds the `STORED AS FHIR` factory and the `fhir_*` table functions.

use std::sync::Arc;
use std::time::SystemTime;

use datafusion::catalog::{CatalogProvider, CatalogProviderList, MemoryCatalogProviderList};
use datafusion::dataframe::DataFrame;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement;
use datafusion::sql::sqlparser::dialect::dialect_from_str;

use super::exports::Exporter;
use super::schema::{SCOPE, Scope};
use super::{
    AddViewFunction, CatalogOptions, FhirCatalog, FhirTableFactory, Freshness, MAX_STATEMENT_DEPTH,
    Pushdown, RefreshFunction, SnapshotFunction, nesting, pushdown, to_datafusion,
};
use super::{idents, wildcard};

/// Runs `sql` in `ctx` like `ctx.sql`, first bringing every FHIR table it references up to
/// date with ONE export per catalog (see the [module docs](super)). Unquoted identifiers match
/// tables, columns and aliases case-insensitively and keep their case (`birthdate`, `BIRTHDATE`
/// and `birthDate` all name the column `birthDate`; two names differing only by case make an
/// unquoted reference ambiguous); quoted ones match exactly. Browsing statements
/// (`SHOW TABLES`, `information_schema`) never export and are executed here (their results are
/// small). A statement nested deeper than [`MAX_STATEMENT_DEPTH`] is refused; those below it may need
/// a deeper stack than a tokio worker's 2 MiB (reported to overflow at 2,000 terms), which a
/// [`QueryRuntime`](super::QueryRuntime)'s threads have: plan and run statements from untrusted
/// users there.
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
    let statement = parse_statement(&ctx.state(), sql)?;
    run_statement(ctx, statement, started, freshness).await
}

/// [`sql`] of a statement [`parse_statement`] gave (the Flight side reads it before it runs).
#[cfg(feature = "flight")]
pub(crate) async fn sql_statement(
    ctx: &SessionContext,
    statement: Statement,
    freshness: Option<Freshness>,
) -> DfResult<DataFrame> {
    run_statement(ctx, statement, SystemTime::now(), freshness).await
}

async fn run_statement(
    ctx: &SessionContext,
    statement: Statement,
    started: SystemTime,
    freshness: Option<Freshness>,
) -> DfResult<DataFrame> {
    plan_statement(ctx, statement, started, freshness)
        .await
        .map_err(few_valid_fields)
}

/// FHIR tables have hundreds of columns: a column not found names the few closest, not all.
fn few_valid_fields(error: DataFusionError) -> DataFusionError {
    use datafusion::common::SchemaError;
    use datafusion::common::utils::datafusion_strsim::levenshtein;
    const SHOWN: usize = 5;
    let DataFusionError::SchemaError(schema_error, _) = error.find_root() else {
        return error;
    };
    let SchemaError::FieldNotFound {
        field,
        valid_fields,
    } = schema_error.as_ref()
    else {
        return error;
    };
    if valid_fields.len() <= SHOWN {
        return error;
    }
    let wanted = field.name().to_lowercase();
    let mut closest: Vec<_> = valid_fields
        .iter()
        .map(|f| (levenshtein(&wanted, &f.name().to_lowercase()), f))
        .collect();
    closest.sort_by_key(|(distance, _)| *distance);
    let names: Vec<String> = closest[..SHOWN]
        .iter()
        .map(|(_, f)| f.quoted_flat_name())
        .collect();
    DataFusionError::Plan(format!(
        "No field named {}. The closest of the {} columns in scope: {}",
        field.quoted_flat_name(),
        valid_fields.len(),
        names.join(", ")
    ))
}

async fn plan_statement(
    ctx: &SessionContext,
    mut statement: Statement,
    started: SystemTime,
    freshness: Option<Freshness>,
) -> DfResult<DataFrame> {
    let state = ctx.state();
    idents::resolve_tables(&state, &mut statement)?;
    declare_unknown_types(&state, &statement).await?;
    super::schema::check_tables_exist(&state, &statement).await?;
    let Some(pushdowns) = prefetch(&state, &statement, freshness).await? else {
        // Browsing runs in a session whose FHIR catalogs never export (information_schema
        // resolves every table while executing, possibly in other tasks); they list the types
        // their sources declare.
        declare_types(state.catalog_list().as_ref()).await;
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
        let scope = Scope::new(started, freshness, Vec::new());
        let plan = SCOPE.scope(scope, plan(&browse, statement)).await?;
        let batches = SessionContext::new_with_state(browse)
            .execute_logical_plan(plan)
            .await?
            .collect()
            .await?;
        return ctx.read_batches(batches);
    };
    let scope = Scope::new(started, freshness, pushdowns).with_identifiers(&statement);
    SCOPE
        .scope(scope, async {
            let plan = plan(&state, statement).await?;
            ctx.execute_logical_plan(plan).await
        })
        .await
}

/// Plans `statement` (its tables up to date) with its identifiers resolved as [`idents`] says,
/// `SELECT *` over one table as [`wildcard`] says. Run it in a [`Scope`]: the tables DataFusion
/// resolves are those [`idents`] read.
async fn plan(state: &SessionState, mut statement: Statement) -> DfResult<LogicalPlan> {
    idents::resolve_columns(state, &mut statement).await?;
    match wildcard::plan(state, &statement).await? {
        Some(plan) => Ok(plan),
        None => state.statement_to_plan(statement).await,
    }
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
            Some(_) => {
                let freshness = freshness.unwrap_or(fhir.exporter.options.freshness);
                fhir.exporter
                    .pushdown(&t, filters.conjuncts(&r), &freshness)
                    .await
                    .map_err(to_datafusion)?
            }
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

/// The table function that exports tables again ([`super::RefreshFunction`]).
pub const REFRESH_FUNCTION: &str = "fhir_refresh";
/// The table function that adds a view ([`super::AddViewFunction`]).
pub const ADD_VIEW_FUNCTION: &str = "fhir_add_view";
/// The table function that reads an earlier export ([`super::SnapshotFunction`]).
pub const SNAPSHOT_FUNCTION: &str = "fhir_snapshot";

/// Asks the source of every FHIR catalog of `catalogs` what it declares (once per catalog), so
/// that browsing lists those types (see [`FhirCatalog::resource_types`]).
pub(crate) async fn declare_types(catalogs: &dyn CatalogProviderList) {
    for name in catalogs.catalog_names() {
        if let Some(catalog) = catalogs.catalog(&name)
            && let Some(fhir) = catalog.downcast_ref::<FhirCatalog>()
        {
            fhir.exporter.declare().await;
        }
    }
}

/// Asks the source of a FHIR catalog what it declares when `statement` names a table of it that
/// is no known type (a type only the server declares), and only then.
async fn declare_unknown_types(state: &SessionState, statement: &Statement) -> DfResult<()> {
    let options = state.config().options();
    let (catalog, schema) = (
        &options.catalog.default_catalog,
        &options.catalog.default_schema,
    );
    for reference in state.resolve_table_references(statement)? {
        let r = reference.resolve(catalog, schema);
        if let Some(catalog) = state.catalog_list().catalog(&r.catalog)
            && let Some(fhir) = catalog.downcast_ref::<FhirCatalog>()
            && r.schema.as_ref() == fhir.schema_name()
            && fhir.table_resource_type(&r.table).is_none()
        {
            fhir.exporter.declare().await;
        }
    }
    Ok(())
}

/// Registers what SQL needs beyond catalogs: the `STORED AS FHIR` table factory (with
/// `defaults` for its options) and the `fhir_refresh`, `fhir_add_view` and `fhir_snapshot`
/// table functions.
pub fn register_functions(ctx: &SessionContext, defaults: CatalogOptions) {
    ctx.state_ref().write().table_factories_mut().insert(
        "FHIR".to_owned(),
        Arc::new(FhirTableFactory::new(defaults.without_views())),
    );
    ctx.register_udtf(REFRESH_FUNCTION, Arc::new(RefreshFunction));
    ctx.register_udtf(ADD_VIEW_FUNCTION, Arc::new(AddViewFunction));
    ctx.register_udtf(SNAPSHOT_FUNCTION, Arc::new(SnapshotFunction));
}
