//! [`FhirExportControl`]: the custom actions and browsing schemas over the FHIR catalogs of a
//! session.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::CatalogProvider;
use datafusion::common::TableReference;
use datafusion::prelude::SessionContext;

use super::actions::ExportControl;
use super::proto::{self, ExportState};
use super::status;
use crate::catalog::{self, FhirCatalog};
use crate::view::ViewDefinition;
use crate::{Error, Result};

/// Export progress and control, browsing schemas and views for every [`FhirCatalog`] of a
/// session, each by the name it is registered under. Export ids are `<catalog>/<number>`; table
/// names are `Patient` (the session's default catalog) or `catalog.schema.Patient`.
///
/// ```no_run
/// # async fn run(ctx: datafusion::prelude::SessionContext) -> fhirflight::Result<()> {
/// use std::sync::Arc;
/// use fhirflight::flight::{FhirExportControl, FlightSqlServer, Role, Users};
///
/// let control = FhirExportControl::from_session(&ctx);
/// let server = FlightSqlServer::new(ctx)
///     .with_users(Users::new().with_user("alice", "wonderland", Role::Admin)?)
///     .with_export_control(Arc::new(control))
///     .bind("127.0.0.1:0")
///     .await?;
/// # server.shutdown().await
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct FhirExportControl {
    catalogs: Vec<(String, FhirCatalog)>,
    default_catalog: String,
}

impl FhirExportControl {
    /// The FHIR catalogs registered in `ctx` now (catalogs registered later are not seen).
    pub fn from_session(ctx: &SessionContext) -> Self {
        let catalogs = FhirCatalog::all_in(ctx);
        let default_catalog = ctx
            .state()
            .config()
            .options()
            .catalog
            .default_catalog
            .clone();
        Self {
            catalogs,
            default_catalog,
        }
    }

    fn catalog(&self, name: &str) -> Result<&FhirCatalog> {
        self.catalogs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
            .ok_or_else(|| {
                let names: Vec<&str> = self.catalogs.iter().map(|(n, _)| n.as_str()).collect();
                Error::NotFound {
                    what: "FHIR catalog",
                    name: format!("{name:?}"),
                    reason: Some(format!("the FHIR catalogs are {}", names.join(", "))),
                }
            })
    }

    /// The catalog and resource type a table name refers to.
    fn resolve(&self, table: &str) -> Result<(&str, &FhirCatalog, String)> {
        let reference = TableReference::parse_str(table);
        let catalog_name = reference.catalog().unwrap_or(&self.default_catalog);
        let (name, catalog) = self
            .catalogs
            .iter()
            .find(|(n, _)| n == catalog_name)
            .map(|(n, c)| (n.as_str(), c))
            .ok_or_else(|| Error::NotFound {
                what: "table",
                name: format!("{table:?}"),
                reason: Some("no FHIR catalog".into()),
            })?;
        let wrong_schema = reference
            .schema()
            .is_some_and(|schema| schema != catalog.schema_name());
        let resource_type = catalog
            .resource_type(reference.table())
            .filter(|_| !wrong_schema)
            .ok_or_else(|| Error::NotFound {
                what: "table",
                name: format!("{table:?}"),
                reason: Some(format!("not a resource type of {name}")),
            })?;
        Ok((name, catalog, resource_type))
    }
}

fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

fn export_status(catalog: &str, export: catalog::ExportStatus) -> proto::ExportStatus {
    let progress = &export.progress;
    let (state, error) = match export.state {
        catalog::ExportState::Running if progress.phase.is_transferring() => {
            (ExportState::Downloading, String::new())
        }
        catalog::ExportState::Running => (ExportState::Running, String::new()),
        catalog::ExportState::Done => (ExportState::Completed, String::new()),
        catalog::ExportState::Failed(error) => (ExportState::Failed, status::told(error.as_ref())),
        catalog::ExportState::Cancelled => (ExportState::Cancelled, String::new()),
    };
    let progress_text = match progress.percent {
        Some(percent) => format!("{} {percent:.0}%", progress.phase),
        None => progress.phase.to_string(),
    };
    proto::ExportStatus {
        id: format!("{catalog}/{}", export.id),
        resource_types: export.request.types,
        state: state.into(),
        progress: progress_text,
        files_total: progress.files_total,
        files_done: progress.files,
        bytes_downloaded: progress.bytes,
        started_at_ms: millis(export.started),
        error,
        catalog: catalog.to_owned(),
        warnings: export
            .warnings
            .into_iter()
            .map(|w| proto::Warning {
                kind: w.kind.to_string(),
                resource_type: w.resource_type.unwrap_or_default(),
                message: w.message,
                count: w.count,
            })
            .collect(),
    }
}

#[async_trait]
impl ExportControl for FhirExportControl {
    async fn exports(&self) -> Result<Vec<proto::ExportStatus>> {
        Ok(self
            .catalogs
            .iter()
            .flat_map(|(name, c)| c.exports().into_iter().map(|e| export_status(name, e)))
            .collect())
    }

    async fn snapshots(&self) -> Result<Vec<proto::SnapshotInfo>> {
        let mut infos = Vec::new();
        for (name, catalog) in &self.catalogs {
            for snapshot in catalog.snapshots()? {
                let m = snapshot.manifest();
                let tables = m.tables.values();
                infos.push(proto::SnapshotInfo {
                    resource_type: m.resource_type.clone(),
                    id: m.snapshot.clone(),
                    rows: m.resources(),
                    files: (m.raw.len() + tables.clone().map(|t| t.files.len()).sum::<usize>())
                        as u64,
                    bytes: m.raw.iter().map(|r| r.bytes).sum::<u64>()
                        + tables.map(|t| t.bytes).sum::<u64>(),
                    created_at_ms: millis(snapshot.created()),
                    catalog: name.clone(),
                });
            }
        }
        Ok(infos)
    }

    async fn refresh(&self, table: &str) -> Result<proto::ExportStatus> {
        let (name, catalog, resource_type) = self.resolve(table)?;
        // Waits for the commit; a client that goes away drops this wait like a query's.
        let (_, ids) = catalog
            .refresh_exports(std::slice::from_ref(&resource_type))
            .await?;
        // Its own export: another query may have started a later one of the type meanwhile.
        let export = catalog
            .exports()
            .into_iter()
            .find(|e| ids.contains(&e.id))
            .ok_or_else(|| Error::snapshot(format!("refresh of {table}: no export recorded")))?;
        let mut status = export_status(name, export);
        // Committed: the listing records that a moment later, in the export's own task.
        status.set_state(ExportState::Completed);
        Ok(status)
    }

    async fn cancel(&self, id: &str) -> Result<proto::ExportStatus> {
        let unknown = || Error::NotFound {
            what: "export",
            name: format!("{id:?}"),
            reason: Some("ids are <catalog>/<number>".into()),
        };
        let (name, number) = id.rsplit_once('/').ok_or_else(unknown)?;
        let number: u64 = number.parse().map_err(|_| unknown())?;
        let catalog = self.catalog(name).map_err(|_| unknown())?;
        let cancelled = catalog.cancel(number);
        let export = catalog
            .exports()
            .into_iter()
            .find(|e| e.id == number)
            .ok_or_else(unknown)?;
        let mut status = export_status(name, export);
        if cancelled {
            // The abort is under way; the listing catches up when the task has stopped.
            status.set_state(ExportState::Cancelled);
        }
        Ok(status)
    }

    async fn browse_schema(&self, table: &TableReference) -> Result<Option<SchemaRef>> {
        let catalog_name = table.catalog().unwrap_or(&self.default_catalog);
        let Ok(catalog) = self.catalog(catalog_name) else {
            return Ok(None);
        };
        let schema_name = table.schema().unwrap_or(catalog.schema_name());
        let Some(schema) = catalog.browsing().schema(schema_name) else {
            return Ok(None);
        };
        Ok(schema.table(table.table()).await?.map(|t| t.schema()))
    }

    async fn add_view(&self, catalog: &str, view_definition: &str) -> Result<String> {
        let catalog_name = if catalog.is_empty() {
            self.default_catalog.as_str()
        } else {
            catalog
        };
        let fhir = self.catalog(catalog_name)?;
        let json: serde_json::Value = serde_json::from_str(view_definition)
            .map_err(|e| Error::invalid_request_with("ViewDefinition JSON", e))?;
        let view = ViewDefinition::from_json(&json)?;
        let name = view
            .name()
            .ok_or_else(|| Error::invalid_request("the ViewDefinition needs a name"))?
            .to_owned();
        fhir.add_view(view)?;
        Ok(format!("{catalog_name}.{}.{name}", fhir.schema_name()))
    }
}
