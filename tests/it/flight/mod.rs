//! The Flight SQL server driven by arrow-flight's own clients: every RPC over in-memory FHIR-like
//! tables, then the real thing (FHIR catalogs over demo Bulk Data servers) in [`fhir`].
//!
//! This file holds the in-memory tables (`Patient`, `Condition`, an endless one, one whose FHIR
//! server is down) and the client side (a logged-in client, fetching a result, the gRPC status of
//! a statement, a custom action); the tests are grouped by topic: [`sql`] (statements, prepared
//! statements, metadata), [`jdbc`] (the JDBC driver's call sequence), [`resilience`] (bad input,
//! disconnects, deep statements, busy cores, shutdown, dropped planning), [`access`] (anonymous
//! access, TLS) and [`fhir`].

mod access;
mod fhir;
mod jdbc;
mod limits;
mod ops;
mod resilience;
mod sql;

use std::sync::{Arc, Mutex};

use arrow::array::{
    Array, AsArray, BooleanArray, Date32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::convert::try_schema_from_ipc_buffer;
use arrow::util::display::array_value_to_string;
use arrow::util::pretty::pretty_format_batches;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::sql::{
    CommandGetDbSchemas, CommandGetTables, CommandStatementQuery, ProstMessageExt,
};
use arrow_flight::{Action, FlightDescriptor, FlightInfo};
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use fhirflight::flight::proto::{
    CancelExportRequest, CancelExportResult, ExportState, ExportStatus, ListExportsResult,
    ListSnapshotsResult, RefreshTableRequest, RefreshTableResult,
};
use fhirflight::flight::{FlightSqlServer, Role, RunningServer, Users};
use futures::TryStreamExt;
use prost::Message;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
/// A user with the read role (same password).
const READER: &str = "carol";

/// `fhir.r4.Patient` and `fhir.r4.Condition` in memory, plus `fhir.r4.Numbers` (endless) and
/// `fhir.r4.Remote` (its FHIR server is down). Identifiers keep their case, as FHIR columns do.
fn fhir_context() -> SessionContext {
    let mut config = SessionConfig::new()
        .with_default_catalog_and_schema("fhir", "r4")
        .with_create_default_catalog_and_schema(false);
    config.options_mut().sql_parser.enable_ident_normalization = false;
    let ctx = SessionContext::new_with_config(config);
    let schema = Arc::new(MemorySchemaProvider::new());
    let patient = patients();
    let patient = MemTable::try_new(patient.schema(), vec![vec![patient]]).unwrap();
    schema
        .register_table("Patient".into(), Arc::new(patient))
        .unwrap();
    let condition = conditions();
    let condition = MemTable::try_new(condition.schema(), vec![vec![condition]]).unwrap();
    schema
        .register_table("Condition".into(), Arc::new(condition))
        .unwrap();
    let catalog = Arc::new(MemoryCatalogProvider::new());
    catalog.register_schema("r4", schema).unwrap();
    ctx.register_catalog("fhir", catalog);
    ctx
}

fn patients() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("gender", DataType::Utf8, true),
        Field::new("birthDate", DataType::Date32, true),
        Field::new("name_0_given_0", DataType::Utf8, true),
        Field::new("name_0_family", DataType::Utf8, true),
        Field::new("deceasedBoolean", DataType::Boolean, true),
    ]));
    // Days since 1970-01-01: 1980-05-17, 1955-11-02, 2001-01-30.
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["pat-1", "pat-2", "pat-3"])),
            Arc::new(StringArray::from(vec![
                Some("female"),
                Some("male"),
                Some("female"),
            ])),
            Arc::new(Date32Array::from(vec![
                Some(3789),
                Some(-5174),
                Some(11352),
            ])),
            Arc::new(StringArray::from(vec![Some("Ada"), Some("Alan"), None])),
            Arc::new(StringArray::from(vec![
                Some("Lovelace"),
                Some("Turing"),
                Some("Hopper"),
            ])),
            Arc::new(BooleanArray::from(vec![Some(false), Some(true), None])),
        ],
    )
    .unwrap()
}

fn conditions() -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("subject_reference", DataType::Utf8, true),
        Field::new("code_coding_0_code", DataType::Utf8, true),
        Field::new("code_coding_0_display", DataType::Utf8, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec![
                "cond-1", "cond-2", "cond-3", "cond-4",
            ])),
            Arc::new(StringArray::from(vec![
                "Patient/pat-1",
                "Patient/pat-1",
                "Patient/pat-2",
                "Patient/pat-3",
            ])),
            Arc::new(StringArray::from(vec![
                "44054006",
                "38341003",
                "44054006",
                "195662009",
            ])),
            Arc::new(StringArray::from(vec![
                "Diabetes",
                "Hypertension",
                "Diabetes",
                "Pharyngitis",
            ])),
        ],
    )
    .unwrap()
}

/// An endless table of numbers whose producer reports, through `dropped`, when it is dropped.
#[derive(Debug)]
struct Endless {
    schema: SchemaRef,
    dropped: Mutex<Option<oneshot::Sender<()>>>,
}

struct DropSignal(Option<oneshot::Sender<()>>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

impl PartitionStream for Endless {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let schema = Arc::clone(&self.schema);
        let signal = DropSignal(self.dropped.lock().unwrap().take());
        let batches = futures::stream::unfold((0i64, signal), move |(start, signal)| {
            let schema = Arc::clone(&schema);
            async move {
                tokio::task::yield_now().await;
                let values = Int64Array::from_iter_values(start..start + 1000);
                let batch = RecordBatch::try_new(schema, vec![Arc::new(values)]).unwrap();
                Some((Ok(batch), (start + 1000, signal)))
            }
        });
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            batches,
        ))
    }
}

/// A table whose scan calls a FHIR server that is down (a closed port on loopback).
#[derive(Debug)]
struct Unreachable {
    schema: SchemaRef,
    url: String,
}

impl PartitionStream for Unreachable {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let url = self.url.clone();
        let batches = futures::stream::once(async move {
            let err = reqwest::get(&url).await.expect_err("nothing listens there");
            Err(DataFusionError::External(Box::new(err)))
        });
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            batches,
        ))
    }
}

fn number_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
}

async fn start(server: FlightSqlServer) -> RunningServer {
    server.bind("127.0.0.1:0").await.unwrap()
}

fn users() -> Users {
    Users::new()
        .with_user(USER, PASSWORD, Role::Admin)
        .unwrap()
        .with_user(READER, PASSWORD, Role::Read)
        .unwrap()
}

async fn channel(server: &RunningServer) -> Channel {
    Endpoint::new(format!("http://{}", server.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A Flight SQL client logged in as alice.
async fn login(server: &RunningServer) -> FlightSqlServiceClient<Channel> {
    let mut client = FlightSqlServiceClient::new(channel(server).await);
    client.handshake(USER, PASSWORD).await.unwrap();
    assert!(
        client.token().is_some(),
        "the handshake sets the bearer token"
    );
    client
}

async fn fetch(client: &mut FlightSqlServiceClient<Channel>, info: FlightInfo) -> Vec<RecordBatch> {
    let mut batches = Vec::new();
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.expect("every endpoint has a ticket");
        batches.extend(
            client
                .do_get(ticket)
                .await
                .unwrap()
                .try_collect::<Vec<_>>()
                .await
                .unwrap(),
        );
    }
    batches
}

async fn query(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> String {
    let info = client.execute(sql.to_string(), None).await.unwrap();
    let batches = fetch(client, info).await;
    pretty_format_batches(&batches).unwrap().to_string()
}

fn strings(batch: &RecordBatch, column: &str) -> Vec<String> {
    let array = batch.column_by_name(column).unwrap();
    (0..array.len())
        .map(|i| array_value_to_string(array, i).unwrap())
        .collect()
}

/// The status of GetFlightInfo for `sql` through the raw Flight client, which keeps the gRPC
/// code (the Flight SQL client turns errors into strings).
async fn statement_status(server: &RunningServer, token: Option<&str>, sql: &str) -> Status {
    let mut client = FlightServiceClient::new(channel(server).await);
    let command = CommandStatementQuery {
        query: sql.into(),
        transaction_id: None,
    };
    let mut request =
        tonic::Request::new(FlightDescriptor::new_cmd(command.as_any().encode_to_vec()));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    client
        .get_flight_info(request)
        .await
        .expect_err("the call fails")
}

/// Runs a custom action through the raw Flight client (which keeps the gRPC status).
async fn action(
    client: &mut FlightSqlServiceClient<Channel>,
    name: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>, Status> {
    let bearer = format!("Bearer {}", client.token().expect("logged in"));
    let mut request = tonic::Request::new(Action {
        r#type: name.into(),
        body: body.into(),
    });
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    let mut results = client.inner_mut().do_action(request).await?.into_inner();
    let result = results.message().await?.expect("one result");
    Ok(result.body.to_vec())
}
