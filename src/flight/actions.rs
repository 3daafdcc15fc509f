//! Custom Flight actions that show and steer exports; their messages are in `proto/`.

use super::auth::Caller;
use std::fmt;

use arrow::datatypes::SchemaRef;
use arrow_flight::ActionType;
use async_trait::async_trait;
use datafusion::common::TableReference;
use prost::Message;

use super::proto::{
    AddViewRequest, AddViewResult, CancelExportRequest, CancelExportResult, ExportStatus,
    ListExportsResult, ListSnapshotsResult, RefreshTableRequest, RefreshTableResult, SnapshotInfo,
};
use crate::{Error, Result};

/// What the server asks of the catalog beyond SQL: export progress and control, table schemas
/// for browsing, views. [`super::FhirExportControl`] implements it over the FHIR catalogs;
/// [`FlightSqlServer::with_export_control`] plugs it in.
///
/// [`FlightSqlServer::with_export_control`]: super::FlightSqlServer::with_export_control
#[async_trait]
pub trait ExportControl: Send + Sync + fmt::Debug {
    /// Running and recently finished exports, with their progress (`ListExports` action).
    async fn exports(&self) -> Result<Vec<ExportStatus>>;

    /// The committed local snapshots (`ListSnapshots` action).
    async fn snapshots(&self) -> Result<Vec<SnapshotInfo>>;

    /// Exports `table` (a resource type, optionally `catalog.schema.`-qualified) again and returns
    /// that export once its snapshot is committed (`RefreshTable` action); [`Error::NotFound`]
    /// for an unknown table.
    async fn refresh(&self, table: &str) -> Result<ExportStatus>;

    /// Cancels the export `id` and returns it as it stands (`CancelExport` action);
    /// [`Error::NotFound`] for an unknown id.
    async fn cancel(&self, id: &str) -> Result<ExportStatus>;

    /// The schema GetTables reports for `table` with `include_schema`, WITHOUT starting an
    /// export: browsing a catalog (DBeaver's tree, JDBC `getColumns`, `adbc_get_objects`) must not
    /// export every resource type. `None` when the schema is not known yet: the table is then
    /// listed with an empty schema until a query or a refresh exports it.
    async fn browse_schema(&self, table: &TableReference) -> Result<Option<SchemaRef>>;

    /// Adds the SQL on FHIR ViewDefinition `view_definition` (JSON) as a table of `catalog` (the
    /// default catalog when empty) and returns its qualified name (`AddView` action).
    async fn add_view(&self, catalog: &str, view_definition: &str) -> Result<String>;
}

/// The custom actions, by their `Action.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CustomAction {
    ListExports,
    ListSnapshots,
    RefreshTable,
    CancelExport,
    AddView,
}

impl CustomAction {
    const ALL: [Self; 5] = [
        Self::ListExports,
        Self::ListSnapshots,
        Self::RefreshTable,
        Self::CancelExport,
        Self::AddView,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::ListExports => "ListExports",
            Self::ListSnapshots => "ListSnapshots",
            Self::RefreshTable => "RefreshTable",
            Self::CancelExport => "CancelExport",
            Self::AddView => "AddView",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Self::ListExports => {
                "Running and recent Bulk Data exports with their progress (X-Progress, files, bytes).\nRequest: fhirflight.v1.ListExportsRequest (may be empty)\nResult: fhirflight.v1.ListExportsResult"
            }
            Self::ListSnapshots => {
                "Committed local snapshots per resource type.\nRequest: fhirflight.v1.ListSnapshotsRequest (may be empty)\nResult: fhirflight.v1.ListSnapshotsResult"
            }
            Self::RefreshTable => {
                "Exports a table again and answers once the snapshot is committed.\nRequest: fhirflight.v1.RefreshTableRequest\nResult: fhirflight.v1.RefreshTableResult"
            }
            Self::CancelExport => {
                "Cancels a running export.\nRequest: fhirflight.v1.CancelExportRequest\nResult: fhirflight.v1.CancelExportResult"
            }
            Self::AddView => {
                "Adds a SQL on FHIR ViewDefinition as a table.\nRequest: fhirflight.v1.AddViewRequest\nResult: fhirflight.v1.AddViewResult"
            }
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    pub(crate) fn types() -> Vec<ActionType> {
        Self::ALL
            .into_iter()
            .map(|a| ActionType {
                r#type: a.name().into(),
                description: a.description().into(),
            })
            .collect()
    }

    /// Runs the action for `caller` with its encoded request `body`; returns the encoded
    /// result. Those that change the server's tables or exports need the admin role.
    pub(crate) async fn run(
        self,
        control: &dyn ExportControl,
        caller: &Caller,
        body: &[u8],
    ) -> Result<Vec<u8>> {
        if matches!(
            self,
            Self::RefreshTable | Self::CancelExport | Self::AddView
        ) {
            caller.require_admin(self.name())?;
        }
        let invalid = |e: prost::DecodeError| {
            Error::invalid_request_with(format!("{} request body", self.name()), e)
        };
        Ok(match self {
            Self::ListExports => ListExportsResult {
                exports: control.exports().await?,
            }
            .encode_to_vec(),
            Self::ListSnapshots => ListSnapshotsResult {
                snapshots: control.snapshots().await?,
            }
            .encode_to_vec(),
            Self::RefreshTable => {
                let request = RefreshTableRequest::decode(body).map_err(invalid)?;
                if request.table.is_empty() {
                    return Err(Error::invalid_request("RefreshTable needs a table"));
                }
                RefreshTableResult {
                    export: Some(control.refresh(&request.table).await?),
                }
                .encode_to_vec()
            }
            Self::CancelExport => {
                let request = CancelExportRequest::decode(body).map_err(invalid)?;
                CancelExportResult {
                    export: Some(control.cancel(&request.id).await?),
                }
                .encode_to_vec()
            }
            Self::AddView => {
                let request = AddViewRequest::decode(body).map_err(invalid)?;
                AddViewResult {
                    table: control
                        .add_view(&request.catalog, &request.view_definition)
                        .await?,
                }
                .encode_to_vec()
            }
        })
    }
}
