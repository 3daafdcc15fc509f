//! DataFusion integration: [`FhirCatalog`], [`FhirSchema`], [`FhirTable`], the `STORED AS FHIR`
//! table factory and the `fhir_refresh`, `fhir_add_view` and `fhir_snapshot` table functions.
//!
//! Every resource type is a table: any R4 resource type name, and any the source declares,
//! though its CapabilityStatement omits it (the server rejects what it cannot export); unless
//! types are configured ([`CatalogOptions::with_resource_types`]), which are then the only ones.
//! Resolving a table finds a fresh snapshot (see [`crate::snapshot`]) or runs the export;
//! browsing (`SHOW TABLES`, `information_schema`, table names) never does, and lists the types
//! the source declares (asked once, when first needed) and those exported. Making a catalog
//! asks nothing of its source, and a statement answered from fresh snapshots makes no request. SQL on FHIR views are tables too ([`FhirCatalog::add_view`],
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
//! dropped future, a disconnected Flight client) is cancelled. A caller that limits who may
//! start exports (the Flight SQL server, per user) runs the statement [`with_export_gate`]: only
//! a statement that would START an export asks its [`ExportGate`].
//!
//! # Filters pushed into the export
//!
//! [`sql`] also reads simple `WHERE` conjuncts from the statement and restricts the export with
//! them (`_typeFilter`, `_since`; see [`Pushdown`] and [`SEARCH_PARAMS`]) when no full snapshot
//! is fresh, as far as the server declares it supports them ([`PushdownMode`]). DataFusion
//! applies the filters again, so servers that ignore them give the same rows.
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
//! let df = catalog::sql(&ctx, "SELECT gender, count(*) FROM synthea.fhir.Patient GROUP BY gender").await?;
//! df.show().await?;
//! # Ok(()) }
//! ```

mod claims;
mod effect;
mod exports;
mod factory;
mod fhir_catalog;
mod gate;
mod idents;
mod nesting;
mod options;
mod pushdown;
mod refresh;
mod runtime;
mod schema;
mod source;
mod statement;
mod table;
mod versions;
mod views;
mod wildcard;

pub use exports::{ExportState, ExportStatus};
pub use factory::FhirTableFactory;
pub use fhir_catalog::FhirCatalog;
pub use gate::{ExportGate, with_export_gate};
pub use nesting::MAX_STATEMENT_DEPTH;
pub use options::{
    CatalogOptions, DEFAULT_MAX_FILTERED_SNAPSHOTS, DEFAULT_PART_BYTES, DEFAULT_SCHEMA, Freshness,
};
pub use pushdown::{Pushdown, PushdownMode, SEARCH_PARAMS};
pub use refresh::RefreshFunction;
pub use runtime::{QueryRuntime, memory_pool};
pub use schema::FhirSchema;
pub use source::{
    BulkSource, Capabilities, FetchOutcome, FetchPhase, FetchProgress, FetchRequest, FetchedFile,
    FhirSource, LocalFolder,
};
#[cfg(feature = "flight")]
pub(crate) use statement::declare_types;
pub use statement::{
    ADD_VIEW_FUNCTION, REFRESH_FUNCTION, SNAPSHOT_FUNCTION, register_functions, sql,
    sql_with_freshness,
};
#[cfg(feature = "flight")]
pub(crate) use statement::{parse_statement, sql_statement};
#[cfg(feature = "cluster")]
pub(crate) use table::only_child;
pub(crate) use table::to_datafusion;
pub use table::{FhirScanExec, FhirTable};
pub use versions::SnapshotFunction;
pub use views::{AddViewFunction, load_views};
