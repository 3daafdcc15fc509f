//! [`FhirCatalog`]: the DataFusion catalog of one source, whose one schema holds a table per
//! resource type; what it offers beyond DataFusion's `CatalogProvider` (prefetch, refresh,
//! snapshots, exports, views).

use std::sync::Arc;

use datafusion::catalog::{CatalogProvider, SchemaProvider};
use datafusion::prelude::SessionContext;

use super::exports::{self, Exporter};
use super::{CatalogOptions, ExportStatus, FhirSchema, FhirSource, FhirTable, Freshness};
use crate::error::quoted;
use crate::r4::check_type_name;
use crate::snapshot::{Snapshot, SnapshotStore};
use crate::view::ViewDefinition;
use crate::{Error, Result};

/// A DataFusion catalog whose one schema holds a table per resource type of a [`FhirSource`].
///
/// Register several (one per server or folder) in one `SessionContext`. Cloning is cheap and
/// clones share exports and snapshots.
#[derive(Debug, Clone)]
pub struct FhirCatalog {
    pub(super) exporter: Arc<Exporter>,
    pub(super) schema: Arc<FhirSchema>,
}

impl FhirCatalog {
    /// A catalog over `source`. Nothing is asked of the source here: every resource type name
    /// of R4 (and any the source declares) is a table, the source rejecting what it cannot
    /// export; types configured ([`CatalogOptions::with_resource_types`]) are the only tables.
    ///
    /// A type becomes a table name and a folder of the snapshot store, so only resource type
    /// names ([`check_type_name`]) are taken: a configured one that is not fails, one the source
    /// declares is dropped with a warning (a server should not make the catalog unusable).
    pub async fn try_new(source: Arc<dyn FhirSource>, options: CatalogOptions) -> Result<Self> {
        let pinned = match &options.resource_types {
            Some(types) => {
                let mut types = types
                    .iter()
                    .map(|t| check_type_name(t).map(str::to_owned))
                    .collect::<Result<Vec<_>>>()?;
                types.sort();
                types.dedup();
                Some(types)
            }
            None => None,
        };
        let mut store = SnapshotStore::open(&options.cache_dir, source.location())?
            .with_retention(options.retention);
        if let Some(location) = &options.table_location {
            store = store.with_table_location(location.clone())?;
        }
        let exporter = Arc::new(Exporter::new(source, store, options, pinned));
        let schema = Arc::new(FhirSchema {
            exporter: Arc::clone(&exporter),
            browse: false,
            views: Arc::default(),
            created: Arc::default(),
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
            created: Arc::clone(&self.schema.created),
        });
        Self {
            exporter: Arc::clone(&self.exporter),
            schema,
        }
    }

    /// The resource types browsing lists as tables: the configured ones, else those the source
    /// declares (asked once; on failure, logged and left out) and those exported. Any other
    /// resource type name resolves as a table too ([`FhirCatalog::resource_type`]).
    pub async fn resource_types(&self) -> Vec<String> {
        self.exporter.declare().await;
        self.exporter.listed_types()
    }

    /// The resource type a table name names (case-insensitively), without I/O: see
    /// [`FhirCatalog::try_new`]. A type only the source declares resolves once it was asked
    /// ([`FhirCatalog::resource_types`]).
    pub fn resource_type(&self, name: &str) -> Option<String> {
        self.exporter.resource_type(name)
    }

    /// The name of the catalog's schema.
    pub fn schema_name(&self) -> &str {
        &self.exporter.options.schema_name
    }

    /// What exports for this catalog: its source, store and options.
    #[cfg(feature = "cluster")]
    pub(crate) fn exporter(&self) -> &Exporter {
        &self.exporter
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
            .listed_types()
            .iter()
            .filter_map(|t| store.current(t).transpose())
            .collect()
    }

    /// The FHIR catalogs registered in `ctx` now, with their names.
    ///
    /// ```
    /// # use datafusion::prelude::SessionContext;
    /// # use fhirflight::catalog::FhirCatalog;
    /// assert!(FhirCatalog::all_in(&SessionContext::new()).is_empty());
    /// ```
    pub fn all_in(ctx: &SessionContext) -> Vec<(String, FhirCatalog)> {
        ctx.catalog_names()
            .into_iter()
            .filter_map(|name| {
                let fhir = ctx.catalog(&name)?.downcast_ref::<FhirCatalog>()?.clone();
                Some((name, fhir))
            })
            .collect()
    }

    /// Running and recently finished exports, with progress.
    pub fn exports(&self) -> Vec<ExportStatus> {
        self.exporter.exports()
    }

    /// Cancels a running export by id: queries waiting for it fail with [`Error::Cancelled`]
    /// and, once it has stopped, its Bulk Data job is DELETEd on the server and its staged
    /// files removed (a query that is dropped, by contrast, leaves its export running). False
    /// when it is not running.
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
    pub(crate) fn known_types(&self, names: &[String]) -> Result<Vec<String>> {
        names
            .iter()
            .map(|n| {
                self.exporter
                    .resource_type(n)
                    .ok_or_else(|| Error::NotFound {
                        what: "resource type",
                        name: quoted(n),
                        reason: Some("not a table of this catalog".into()),
                    })
            })
            .collect()
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
