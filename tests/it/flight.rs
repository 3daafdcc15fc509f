//! The Flight SQL server driven by arrow-flight's own clients: every RPC over in-memory FHIR-like
//! tables, then the real thing (FHIR catalogs over demo Bulk Data servers) in [`fhir`].

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
    CommandGetCrossReference, CommandGetDbSchemas, CommandGetExportedKeys, CommandGetImportedKeys,
    CommandGetPrimaryKeys, CommandGetTables, CommandGetXdbcTypeInfo, CommandStatementQuery,
    ProstMessageExt, SqlInfo,
};
use arrow_flight::{Action, FlightDescriptor, FlightInfo, HandshakeRequest};
use base64::Engine;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
};
use datafusion::common::TableReference;
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
use fhirflight::flight::{FlightSqlServer, RunningServer, Users};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

const USER: &str = "alice";
const PASSWORD: &str = "wonderland";

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
    Users::new().with_user(USER, PASSWORD)
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

#[tokio::test]
async fn statement_query_streams_rows() {
    let server = start(FlightSqlServer::new(fhir_context()).with_users(users())).await;
    let mut client = login(&server).await;
    let info = client
        .execute(
            "SELECT id, gender, birthDate FROM Patient ORDER BY id".into(),
            None,
        )
        .await
        .unwrap();
    let schema = info.clone().try_decode_schema().unwrap();
    assert_eq!(schema.field(2).data_type(), &DataType::Date32);
    let table = pretty_format_batches(&fetch(&mut client, info).await)
        .unwrap()
        .to_string();
    assert_eq!(
        table,
        "+-------+--------+------------+\n\
         | id    | gender | birthDate  |\n\
         +-------+--------+------------+\n\
         | pat-1 | female | 1980-05-17 |\n\
         | pat-2 | male   | 1955-11-02 |\n\
         | pat-3 | female | 2001-01-30 |\n\
         +-------+--------+------------+"
    );
    let joined = query(
        &mut client,
        "SELECT p.name_0_family, count(*) AS n FROM Condition c JOIN Patient p \
         ON c.subject_reference = 'Patient/' || p.id GROUP BY p.name_0_family ORDER BY n DESC, 1",
    )
    .await;
    assert!(joined.contains("| Lovelace      | 2 |"), "{joined}");
    assert!(joined.contains("| Hopper        | 1 |"), "{joined}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn prepared_statements_bind_parameters() {
    let server = start(FlightSqlServer::new(fhir_context()).with_users(users())).await;
    let mut client = login(&server).await;

    // `?` placeholders (JDBC style), bound through DoPut.
    let mut statement = client
        .prepare(
            "SELECT id FROM Patient WHERE gender = ? AND birthDate > ? ORDER BY id".into(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(statement.dataset_schema().unwrap().field(0).name(), "id");
    let parameters = statement.parameter_schema().unwrap().clone();
    assert_eq!(parameters.fields().len(), 2);
    assert_eq!(parameters.field(0).data_type(), &DataType::Utf8);
    assert_eq!(parameters.field(1).data_type(), &DataType::Date32);
    let values = RecordBatch::try_new(
        Arc::new(parameters),
        vec![
            Arc::new(StringArray::from(vec!["female"])),
            Arc::new(Date32Array::from(vec![0])),
        ],
    )
    .unwrap();
    statement.set_parameters(values).unwrap();
    let info = statement.execute().await.unwrap();
    let batches = fetch(&mut client, info).await;
    assert_eq!(strings(&batches[0], "id"), ["pat-1", "pat-3"]);
    statement.close().await.unwrap();

    // `$1` placeholders, bound with a type other than the inferred one (Int64 for a string is
    // refused by DataFusion's coercion, a string for a string is fine).
    let mut statement = client
        .prepare(
            "SELECT count(*) AS n FROM Condition WHERE code_coding_0_code = $1".into(),
            None,
        )
        .await
        .unwrap();
    let schema = Arc::new(Schema::new(vec![Field::new("code", DataType::Utf8, false)]));
    let values =
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(vec!["44054006"]))]).unwrap();
    statement.set_parameters(values).unwrap();
    let info = statement.execute().await.unwrap();
    let batches = fetch(&mut client, info).await;
    assert_eq!(strings(&batches[0], "n"), ["2"]);
    statement.close().await.unwrap();
}

#[tokio::test]
async fn metadata_lists_catalogs_schemas_tables() {
    let server = start(FlightSqlServer::new(fhir_context()).with_users(users())).await;
    let mut client = login(&server).await;

    let info = client.get_catalogs().await.unwrap();
    assert_eq!(
        strings(&fetch(&mut client, info).await[0], "catalog_name"),
        ["fhir"]
    );

    let info = client
        .get_db_schemas(CommandGetDbSchemas {
            catalog: None,
            db_schema_filter_pattern: None,
        })
        .await
        .unwrap();
    assert_eq!(
        strings(&fetch(&mut client, info).await[0], "db_schema_name"),
        ["r4"]
    );

    // An omitted catalog means all catalogs; patterns are SQL LIKE.
    let info = client
        .get_tables(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: Some("r%".into()),
            table_name_filter_pattern: Some("P%".into()),
            table_types: vec![],
            include_schema: false,
        })
        .await
        .unwrap();
    let tables = fetch(&mut client, info).await;
    assert_eq!(strings(&tables[0], "table_name"), ["Patient"]);
    assert_eq!(strings(&tables[0], "table_type"), ["TABLE"]);
    assert_eq!(strings(&tables[0], "catalog_name"), ["fhir"]);

    let info = client.get_table_types().await.unwrap();
    assert_eq!(
        strings(&fetch(&mut client, info).await[0], "table_type"),
        ["LOCAL TEMPORARY", "TABLE", "VIEW"]
    );

    let info = client
        .get_xdbc_type_info(CommandGetXdbcTypeInfo { data_type: None })
        .await
        .unwrap();
    let types = strings(&fetch(&mut client, info).await[0], "type_name");
    for expected in ["BIGINT", "BOOLEAN", "DATE", "TIMESTAMP", "VARCHAR"] {
        assert!(types.contains(&expected.to_string()), "{types:?}");
    }
}

/// The JDBC driver's call sequence (`jdbc:arrow-flight-sql://host:port?useEncryption=false`),
/// replayed call by call since its driver cannot be fetched here.
#[tokio::test]
async fn jdbc_driver_call_sequence() {
    let server = start(FlightSqlServer::new(fhir_context()).with_users(users())).await;
    // Plaintext (useEncryption=false), Basic credentials on the Handshake.
    let mut client = login(&server).await;

    // At connect, DatabaseMetaData caches every SqlInfo (an empty list asks for all).
    let info = client.get_sql_info(vec![]).await.unwrap();
    let all = fetch(&mut client, info).await;
    let rows: usize = all.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, 89);
    let sql_info = |batches: &[RecordBatch], key: SqlInfo| -> String {
        let batch = &batches[0];
        let names = batch
            .column(0)
            .as_primitive::<arrow::datatypes::UInt32Type>();
        let row = (0..batch.num_rows())
            .find(|&i| names.value(i) == key as u32)
            .unwrap();
        let values = batch.column(1).as_union();
        array_value_to_string(&values.value(row), 0).unwrap()
    };
    assert_eq!(sql_info(&all, SqlInfo::FlightSqlServerName), "fhirflight");
    assert_eq!(sql_info(&all, SqlInfo::FlightSqlServerReadOnly), "true");
    assert_eq!(sql_info(&all, SqlInfo::SqlIdentifierQuoteChar), "\"");
    assert!(sql_info(&all, SqlInfo::SqlKeywords).contains("SELECT"));
    assert!(sql_info(&all, SqlInfo::SqlStringFunctions).contains("UPPER"));
    // ... and some drivers ask key by key.
    let keys = vec![
        SqlInfo::FlightSqlServerName,
        SqlInfo::FlightSqlServerVersion,
        SqlInfo::SqlDdlTable,
    ];
    let info = client.get_sql_info(keys).await.unwrap();
    let some = fetch(&mut client, info).await;
    assert_eq!(some[0].num_rows(), 3);
    assert_eq!(
        sql_info(&some, SqlInfo::FlightSqlServerVersion),
        env!("CARGO_PKG_VERSION")
    );

    // Every statement is prepared; a non-empty dataset schema makes it a query, not an update.
    for (sql, expected_rows) in [
        ("SELECT * FROM Patient", 3),
        ("SELECT id FROM Condition LIMIT 2", 2),
    ] {
        let mut statement = client.prepare(sql.into(), None).await.unwrap();
        assert!(
            !statement.dataset_schema().unwrap().fields().is_empty(),
            "{sql}"
        );
        let info = statement.execute().await.unwrap();
        let rows: usize = fetch(&mut client, info)
            .await
            .iter()
            .map(RecordBatch::num_rows)
            .sum();
        assert_eq!(rows, expected_rows, "{sql}");
        statement.close().await.unwrap();
    }

    // getColumns: GetTables with include_schema, then the IPC schema of each table.
    let info = client
        .get_tables(CommandGetTables {
            catalog: None,
            db_schema_filter_pattern: Some("%".into()),
            table_name_filter_pattern: Some("%".into()),
            table_types: vec![],
            include_schema: true,
        })
        .await
        .unwrap();
    let tables = fetch(&mut client, info).await;
    assert_eq!(strings(&tables[0], "table_name"), ["Condition", "Patient"]);
    let schemas = tables[0]
        .column_by_name("table_schema")
        .unwrap()
        .as_binary::<i32>();
    let patient = try_schema_from_ipc_buffer(schemas.value(1)).unwrap();
    let columns: Vec<_> = patient.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        columns,
        [
            "id",
            "gender",
            "birthDate",
            "name_0_given_0",
            "name_0_family",
            "deceasedBoolean"
        ]
    );

    // Key lookups: empty results, not errors.
    let table = |name: &str| {
        (
            Some("fhir".to_string()),
            Some("r4".to_string()),
            name.to_string(),
        )
    };
    let (catalog, db_schema, t) = table("Patient");
    let info = client
        .get_primary_keys(CommandGetPrimaryKeys {
            catalog,
            db_schema,
            table: t,
        })
        .await
        .unwrap();
    let keys = fetch(&mut client, info).await;
    assert_eq!(keys.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
    let (catalog, db_schema, t) = table("Patient");
    let info = client
        .get_exported_keys(CommandGetExportedKeys {
            catalog,
            db_schema,
            table: t,
        })
        .await
        .unwrap();
    let keys = fetch(&mut client, info).await;
    assert_eq!(keys.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
    let (catalog, db_schema, t) = table("Condition");
    let info = client
        .get_imported_keys(CommandGetImportedKeys {
            catalog,
            db_schema,
            table: t,
        })
        .await
        .unwrap();
    let keys = fetch(&mut client, info).await;
    assert_eq!(keys.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
    let info = client
        .get_cross_reference(CommandGetCrossReference {
            pk_catalog: None,
            pk_db_schema: None,
            pk_table: "Patient".into(),
            fk_catalog: None,
            fk_db_schema: None,
            fk_table: "Condition".into(),
        })
        .await
        .unwrap();
    let keys = fetch(&mut client, info).await;
    assert_eq!(keys.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
}

#[tokio::test]
async fn bad_input_gets_clear_statuses_and_the_server_keeps_serving() {
    let ctx = fhir_context();
    // A table whose FHIR server is down: bind a port, then close it.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/fhir/Observation/$export",
        closed.local_addr().unwrap()
    );
    drop(closed);
    let remote = Unreachable {
        schema: number_schema(),
        url,
    };
    let remote = StreamingTable::try_new(number_schema(), vec![Arc::new(remote)]).unwrap();
    ctx.register_table(
        TableReference::full("fhir", "r4", "Observation"),
        Arc::new(remote),
    )
    .unwrap();
    let server = start(FlightSqlServer::new(ctx).with_users(users())).await;

    // Wrong password.
    let mut raw = FlightServiceClient::new(channel(&server).await);
    let basic = base64::prelude::BASE64_STANDARD.encode(format!("{USER}:nope"));
    let mut request = tonic::Request::new(futures::stream::iter([HandshakeRequest::default()]));
    request
        .metadata_mut()
        .insert("authorization", format!("Basic {basic}").parse().unwrap());
    let err = raw.handshake(request).await.expect_err("wrong password");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(
        err.message(),
        "unauthenticated: invalid username or password"
    );

    // No token.
    let err = statement_status(&server, None, "SELECT 1").await;
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("no credentials"),
        "{}",
        err.message()
    );
    // A forged token.
    let err = statement_status(&server, Some("not.a.token"), "SELECT 1").await;
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(
        err.message().contains("invalid bearer token"),
        "{}",
        err.message()
    );

    let client = login(&server).await;
    let token = client.token().unwrap().clone();
    // Malformed SQL.
    let err = statement_status(&server, Some(&token), "SELEC id FROM Patient").await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("SELEC"), "{}", err.message());
    // An unknown table.
    let err = statement_status(&server, Some(&token), "SELECT * FROM Encounter").await;
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message()
            .contains("table 'fhir.r4.Encounter' not found"),
        "{}",
        err.message()
    );
    // An unknown column.
    let err = statement_status(&server, Some(&token), "SELECT shoeSize FROM Patient").await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("shoeSize"), "{}", err.message());
    // A write.
    let err = statement_status(&server, Some(&token), "DROP TABLE Patient").await;
    assert_eq!(err.code(), Code::InvalidArgument);

    // The FHIR server behind a table is down: the error comes while streaming.
    let mut client = login(&server).await;
    let info = client
        .execute("SELECT n FROM Observation".into(), None)
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let err = client
        .do_get(ticket)
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap_err();
    let arrow_flight::error::FlightError::Tonic(status) = err else {
        panic!("{err:?}")
    };
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("error sending request"),
        "{}",
        status.message()
    );

    // Still serving.
    let table = query(&mut client, "SELECT count(*) AS n FROM Patient").await;
    assert!(table.contains("| 3 |"), "{table}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_disconnects_stops_its_query() {
    let ctx = fhir_context();
    let (dropped, was_dropped) = oneshot::channel();
    let endless = Endless {
        schema: number_schema(),
        dropped: Mutex::new(Some(dropped)),
    };
    let endless = StreamingTable::try_new(number_schema(), vec![Arc::new(endless)])
        .unwrap()
        .with_infinite_table(true);
    ctx.register_table(
        TableReference::full("fhir", "r4", "Numbers"),
        Arc::new(endless),
    )
    .unwrap();
    let server = start(FlightSqlServer::new(ctx).with_users(users())).await;

    let mut client = login(&server).await;
    let info = client
        .execute("SELECT n FROM Numbers".into(), None)
        .await
        .unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut stream = client.do_get(ticket).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(
        first
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0),
        0
    );
    drop(stream);
    drop(client);
    // The producer is dropped once the server sees the stream reset (bounded wait: a hang
    // would mean the query kept running).
    tokio::time::timeout(std::time::Duration::from_secs(30), was_dropped)
        .await
        .expect("the query stops when its client goes away")
        .unwrap();
    server.shutdown().await.unwrap();
}

/// `n` copies of `term` joined by `op`.
fn chain(n: usize, term: &str, op: &str) -> String {
    vec![term; n].join(op)
}

#[tokio::test]
async fn deep_statements_are_answered_or_refused_and_the_server_keeps_serving() {
    let server = start(FlightSqlServer::new(fhir_context()).with_users(users())).await;
    let mut client = login(&server).await;
    // The chains BI tools generate, which aborted the process: answered.
    let sum = format!("SELECT {} AS n", chain(2_000, "1", " + "));
    assert!(query(&mut client, &sum).await.contains("| 2000 |"));
    let or = format!(
        "SELECT count(*) AS n FROM Patient WHERE {}",
        chain(2_000, "id = 'pat-1'", " OR ")
    );
    assert!(query(&mut client, &or).await.contains("| 1 |"));
    let union = format!(
        "SELECT count(*) AS n FROM ({})",
        chain(3_000, "SELECT 1", " UNION ALL ")
    );
    assert!(query(&mut client, &union).await.contains("| 3000 |"));
    // Deeper than the bound: refused before parsing, with what to do.
    let token = client.token().unwrap().clone();
    let deep = format!(
        "SELECT {}",
        chain(fhirflight::catalog::MAX_STATEMENT_DEPTH + 2, "1", "+")
    );
    let err = statement_status(&server, Some(&token), &deep).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("nested more than"),
        "{}",
        err.message()
    );
    let deep = chain(100_000, "SELECT 1", " UNION ALL ");
    let err = statement_status(&server, Some(&token), &deep).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    // Still serving.
    assert!(
        query(&mut client, "SELECT count(*) AS n FROM Patient")
            .await
            .contains("| 3 |")
    );
    server.shutdown().await.unwrap();
}

/// A server with a query runtime of its own and a shutdown grace of 100 ms, and a client whose
/// DoGet of `sql` (a cross join that would run for days) runs in a task, started.
async fn running_heavy_query(
    sql: &str,
) -> (
    RunningServer,
    fhirflight::catalog::QueryRuntime,
    tokio::task::JoinHandle<()>,
) {
    let queries = fhirflight::catalog::QueryRuntime::try_default().unwrap();
    let server = FlightSqlServer::new(fhir_context())
        .with_users(users())
        .with_query_runtime(queries.clone())
        .with_shutdown_grace(std::time::Duration::from_millis(100));
    let server = start(server).await;
    let mut client = login(&server).await;
    let info = client.execute(sql.into(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let running = tokio::spawn(async move {
        if let Ok(stream) = client.do_get(ticket).await {
            let _ = stream.try_collect::<Vec<_>>().await;
        }
    });
    crate::until("the heavy query runs", || queries.active_tasks() > 0).await;
    (server, queries, running)
}

#[tokio::test]
async fn a_query_busy_on_every_core_leaves_the_server_answering() {
    let (server, queries, running) = running_heavy_query(
        "SELECT count(*) FROM generate_series(1, 100000) a, generate_series(1, 100000) b, \
         generate_series(1, 100000) c",
    )
    .await;
    // Logins and small statements are answered meanwhile (a bounded wait: a hang fails).
    let small = async {
        let mut client = login(&server).await;
        query(&mut client, "SELECT 1 AS one").await
    };
    let answered = tokio::time::timeout(std::time::Duration::from_secs(60), small)
        .await
        .expect("a small query is answered while the heavy one runs");
    assert!(answered.contains("| 1   |"), "{answered}");
    // The client goes away: its query stops, and burns no more CPU.
    running.abort();
    let _ = running.await;
    crate::until("the heavy query stops", || queries.active_tasks() == 0).await;
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_stops_running_statements_after_the_grace() {
    let (server, queries, running) = running_heavy_query(
        "SELECT count(*) FROM generate_series(1, 100000) a, generate_series(1, 100000) b",
    )
    .await;
    // Without the grace, shutdown would wait for the query: hours.
    tokio::time::timeout(std::time::Duration::from_secs(60), server.shutdown())
        .await
        .expect("shutdown ends after its grace")
        .unwrap();
    crate::until("the query is stopped", || queries.active_tasks() == 0).await;
    running.abort();
}

/// A schema whose table `t` takes forever to resolve (like a table waiting for its export),
/// reporting when it starts and when its resolution is dropped.
#[derive(Debug)]
struct Hanging {
    entered: Mutex<Option<oneshot::Sender<()>>>,
    dropped: Mutex<Option<oneshot::Sender<()>>>,
}

#[async_trait::async_trait]
impl SchemaProvider for Hanging {
    fn table_names(&self) -> Vec<String> {
        vec!["t".into()]
    }

    async fn table(
        &self,
        _name: &str,
    ) -> datafusion::error::Result<Option<Arc<dyn datafusion::catalog::TableProvider>>> {
        let _signal = DropSignal(self.dropped.lock().unwrap().take());
        if let Some(entered) = self.entered.lock().unwrap().take() {
            let _ = entered.send(());
        }
        std::future::pending().await
    }

    fn table_exist(&self, name: &str) -> bool {
        name == "t"
    }
}

/// Planning runs in the RPC's own task: a client that drops GetFlightInfo drops the planning
/// (and with it a wait on an export), nothing is left running detached.
#[tokio::test]
async fn a_dropped_get_flight_info_drops_its_planning() {
    let ctx = fhir_context();
    let (entered, was_entered) = oneshot::channel();
    let (dropped, was_dropped) = oneshot::channel();
    let hanging = Hanging {
        entered: Mutex::new(Some(entered)),
        dropped: Mutex::new(Some(dropped)),
    };
    ctx.catalog("fhir")
        .unwrap()
        .register_schema("slow", Arc::new(hanging))
        .unwrap();
    let server = start(FlightSqlServer::new(ctx).with_users(users())).await;
    let token = login(&server).await.token().unwrap().clone();
    let channel = channel(&server).await;
    let call = tokio::spawn(async move {
        let mut raw = FlightServiceClient::new(channel);
        let command = CommandStatementQuery {
            query: "SELECT * FROM fhir.slow.t".into(),
            transaction_id: None,
        };
        let mut request =
            tonic::Request::new(FlightDescriptor::new_cmd(command.as_any().encode_to_vec()));
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        raw.get_flight_info(request).await
    });
    was_entered.await.unwrap();
    call.abort();
    tokio::time::timeout(std::time::Duration::from_secs(30), was_dropped)
        .await
        .expect("the planning is dropped with the call")
        .unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn anonymous_access_only_when_asked_and_on_loopback() {
    let server = start(FlightSqlServer::new(fhir_context()).with_anonymous(true)).await;
    let mut client = FlightSqlServiceClient::new(channel(&server).await);
    let table = query(&mut client, "SELECT count(*) AS n FROM Condition").await;
    assert!(table.contains("| 4 |"), "{table}");
    server.shutdown().await.unwrap();

    // Refused when binding (before anything is announced), and 0.0.0.0 is never listened on.
    let err = FlightSqlServer::new(fhir_context())
        .with_anonymous(true)
        .bind("0.0.0.0:0")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("only allowed on a loopback address"),
        "{err}"
    );

    let err = FlightSqlServer::new(fhir_context())
        .bind("127.0.0.1:0")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no users configured"), "{err}");
    let err = FlightSqlServer::new(fhir_context())
        .with_users(users())
        .with_tls("no/such/cert.pem", "no/such/key.pem")
        .bind("127.0.0.1:0")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no/such/cert.pem"), "{err}");
}

#[tokio::test]
async fn tls_with_certificate_files() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
    let server = FlightSqlServer::new(fhir_context())
        .with_users(users())
        .with_tls(format!("{dir}/server.pem"), format!("{dir}/server.key"));
    let server = start(server).await;
    let ca = std::fs::read_to_string(format!("{dir}/ca.pem")).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    let channel = Endpoint::new(format!("https://localhost:{}", server.local_addr().port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    client.handshake(USER, PASSWORD).await.unwrap();
    let table = query(
        &mut client,
        "SELECT name_0_family FROM Patient WHERE id = 'pat-2'",
    )
    .await;
    assert!(table.contains("| Turing        |"), "{table}");

    // A plaintext client cannot talk to it.
    let plain = Endpoint::new(format!("http://{}", server.local_addr()))
        .unwrap()
        .connect()
        .await;
    if let Ok(plain) = plain {
        let mut client = FlightSqlServiceClient::new(plain);
        assert!(client.handshake(USER, PASSWORD).await.is_err());
    }
    server.shutdown().await.unwrap();
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

/// The real thing: FHIR catalogs over demo Bulk Data servers, served with [`FhirExportControl`].
mod fhir {
    use std::time::Duration;

    use fhirflight::bulk::{BulkClient, ClientOptions};
    use fhirflight::catalog::{self, BulkSource, CatalogOptions, FhirCatalog, Freshness};
    use fhirflight::demo::{DemoConfig, DemoServer, generate};
    use fhirflight::flight::FhirExportControl;
    use fhirflight::flight::proto::{AddViewRequest, AddViewResult};
    use fhirflight::smart::{SigningKey, SmartConfig};
    use tempfile::TempDir;

    use super::*;

    const SEED: u64 = 42;
    const PATIENTS: usize = 12;

    async fn catalog_over(
        server: &DemoServer,
        cache: &TempDir,
        freshness: Freshness,
    ) -> FhirCatalog {
        let creds = server.credentials();
        let key = SigningKey::from_jwk(creds.rs384().private_jwk(), None).unwrap();
        let options = ClientOptions::default()
            .with_retry_after_bounds(Duration::from_millis(1), Duration::from_millis(100))
            .with_retry_budget(0);
        let client = BulkClient::try_new(
            server.base_url(),
            Some(SmartConfig::new(creds.client_id(), key)),
            options,
        )
        .await
        .unwrap();
        let options = CatalogOptions::default()
            .with_cache_dir(cache.path())
            .with_freshness(freshness);
        FhirCatalog::try_new(Arc::new(BulkSource::new(client)), options)
            .await
            .unwrap()
    }

    /// Catalog `fhir` over a demo server of `config` (the default catalog) and catalog `other`
    /// over a second demo server (seed 7, 5 patients), served as `fhirflight serve` does.
    struct Fixture {
        demo: DemoServer,
        other: DemoServer,
        server: RunningServer,
        _cache: TempDir,
    }

    async fn fixture(config: DemoConfig) -> Fixture {
        fixture_with(config, Freshness::Never).await
    }

    async fn fixture_with(config: DemoConfig, freshness: Freshness) -> Fixture {
        let cache = tempfile::tempdir().unwrap();
        let demo = DemoServer::start(config).await.unwrap();
        let other = DemoServer::start(DemoConfig::default().with_seed(7).with_patients(5))
            .await
            .unwrap();
        let ctx = SessionContext::new_with_config(
            SessionConfig::new()
                .with_information_schema(true)
                .with_default_catalog_and_schema("fhir", catalog::DEFAULT_SCHEMA),
        );
        let fhir = catalog_over(&demo, &cache, freshness).await;
        ctx.register_catalog("fhir", Arc::new(fhir));
        let second = catalog_over(&other, &cache, freshness).await;
        ctx.register_catalog("other", Arc::new(second));
        let control = FhirExportControl::from_session(&ctx);
        let server = FlightSqlServer::new(ctx)
            .with_users(users())
            .with_export_control(Arc::new(control));
        Fixture {
            demo,
            other,
            server: start(server).await,
            _cache: cache,
        }
    }

    fn demo_config() -> DemoConfig {
        DemoConfig::default()
            .with_seed(SEED)
            .with_patients(PATIENTS)
    }

    /// How many resources of `resource_type` the demo population of `seed`/`patients` has.
    fn population_count(seed: u64, patients: usize, resource_type: &str) -> usize {
        generate(seed, patients).resources(resource_type).len()
    }

    async fn exports(client: &mut FlightSqlServiceClient<Channel>) -> Vec<ExportStatus> {
        let listed = action(client, "ListExports", vec![]).await.unwrap();
        ListExportsResult::decode(&listed[..]).unwrap().exports
    }

    async fn tables(
        client: &mut FlightSqlServiceClient<Channel>,
        catalog: &str,
    ) -> (Vec<String>, Vec<SchemaRef>) {
        let info = client
            .get_tables(CommandGetTables {
                catalog: Some(catalog.into()),
                db_schema_filter_pattern: None,
                table_name_filter_pattern: None,
                table_types: vec![],
                include_schema: true,
            })
            .await
            .unwrap();
        let batches = fetch(client, info).await;
        let schemas = batches[0]
            .column_by_name("table_schema")
            .unwrap()
            .as_binary::<i32>();
        let schemas = (0..schemas.len())
            .map(|i| Arc::new(try_schema_from_ipc_buffer(schemas.value(i)).unwrap()))
            .collect();
        (strings(&batches[0], "table_name"), schemas)
    }

    #[tokio::test]
    async fn queries_export_once_per_statement_and_actions_show_it() {
        let f = fixture(demo_config()).await;
        let mut client = login(&f.server).await;

        // Browsing lists every resource type of both catalogs and exports nothing: tables
        // without a snapshot have an empty schema until a query or a refresh exports them.
        let info = client.get_catalogs().await.unwrap();
        assert_eq!(
            strings(&fetch(&mut client, info).await[0], "catalog_name"),
            ["fhir", "other"]
        );
        let (names, schemas) = tables(&mut client, "fhir").await;
        assert!(names.contains(&"Patient".to_string()), "{names:?}");
        assert!(names.contains(&"Condition".to_string()), "{names:?}");
        assert!(schemas.iter().all(|s| s.fields().is_empty()));
        let info = client
            .get_db_schemas(CommandGetDbSchemas {
                catalog: Some("other".into()),
                db_schema_filter_pattern: None,
            })
            .await
            .unwrap();
        assert_eq!(
            strings(&fetch(&mut client, info).await[0], "db_schema_name"),
            ["fhir"]
        );
        let browsed = query(
            &mut client,
            "SELECT count(*) AS n FROM information_schema.tables \
             WHERE table_catalog = 'fhir' AND table_schema = 'fhir'",
        )
        .await;
        assert!(
            browsed.contains(&format!("| {} |", names.len())),
            "{browsed}"
        );
        assert!(f.demo.stats().kickoffs.is_empty());
        assert!(f.other.stats().kickoffs.is_empty());

        // A join of two types: ONE export of both, values of the demo population.
        let patients = population_count(SEED, PATIENTS, "Patient");
        let conditions = population_count(SEED, PATIENTS, "Condition");
        let counts = query(
            &mut client,
            "SELECT (SELECT count(*) FROM patient) AS p, (SELECT count(*) FROM condition) AS c",
        )
        .await;
        assert!(
            counts.contains(&format!("| {patients} | {conditions} |")),
            "{counts}"
        );
        let kickoffs = f.demo.stats().kickoffs;
        assert_eq!(kickoffs.len(), 1, "{kickoffs:?}");
        let mut types = kickoffs[0].types.clone();
        types.sort();
        assert_eq!(types, ["Condition", "Patient"]);

        let exports = exports(&mut client).await;
        assert_eq!(exports.len(), 1);
        assert_eq!(exports[0].id, "fhir/1");
        assert_eq!(exports[0].catalog, "fhir");
        assert_eq!(exports[0].state(), ExportState::Completed);
        assert!(exports[0].files_done >= 2 && exports[0].bytes_downloaded > 0);
        assert!(exports[0].files_total >= exports[0].files_done);

        let snapshots = action(&mut client, "ListSnapshots", vec![]).await.unwrap();
        let mut snapshots = ListSnapshotsResult::decode(&snapshots[..])
            .unwrap()
            .snapshots;
        snapshots.sort_by(|a, b| a.resource_type.cmp(&b.resource_type));
        let listed: Vec<_> = snapshots
            .iter()
            .map(|s| (s.catalog.as_str(), s.resource_type.as_str(), s.rows))
            .collect();
        assert_eq!(
            listed,
            [
                ("fhir", "Condition", conditions as u64),
                ("fhir", "Patient", patients as u64)
            ]
        );

        // Now browsing knows Patient's columns, still without exporting.
        let (names, schemas) = tables(&mut client, "fhir").await;
        let patient = &schemas[names.iter().position(|n| n == "Patient").unwrap()];
        assert!(patient.field_with_name("gender").is_ok(), "{patient:?}");
        assert_eq!(f.demo.stats().kickoffs.len(), 1);

        // A prepared statement with a parameter, checked against the population.
        let females = generate(SEED, PATIENTS)
            .resources("Patient")
            .iter()
            .filter(|r| r.json().contains(r#""gender":"female""#))
            .count();
        let mut statement = client
            .prepare(
                "SELECT count(*) AS n FROM fhir.fhir.patient WHERE gender = ?".into(),
                None,
            )
            .await
            .unwrap();
        let parameters = Arc::new(statement.parameter_schema().unwrap().clone());
        let female = RecordBatch::try_new(
            parameters,
            vec![Arc::new(StringArray::from(vec!["female"]))],
        )
        .unwrap();
        statement.set_parameters(female).unwrap();
        let info = statement.execute().await.unwrap();
        let batches = fetch(&mut client, info).await;
        assert_eq!(strings(&batches[0], "n"), [females.to_string()]);
        statement.close().await.unwrap();
        assert_eq!(f.demo.stats().kickoffs.len(), 1, "the snapshot is reused");

        // The second catalog exports from its own server.
        let other = query(&mut client, "SELECT count(*) AS n FROM other.fhir.patient").await;
        assert!(
            other.contains(&format!("| {} |", population_count(7, 5, "Patient"))),
            "{other}"
        );
        assert_eq!(f.other.stats().kickoffs.len(), 1);
        assert_eq!(f.demo.stats().kickoffs.len(), 1);

        // RefreshTable exports again (incrementally) and answers when it is committed.
        let refreshed = action(
            &mut client,
            "RefreshTable",
            RefreshTableRequest {
                table: "fhir.fhir.Patient".into(),
            }
            .encode_to_vec(),
        )
        .await
        .unwrap();
        let export = RefreshTableResult::decode(&refreshed[..])
            .unwrap()
            .export
            .unwrap();
        assert_eq!(
            (export.id.as_str(), export.state(), export.resource_types),
            (
                "fhir/2",
                ExportState::Completed,
                vec!["Patient".to_string()]
            )
        );
        let kickoffs = f.demo.stats().kickoffs;
        assert!(kickoffs[1].params.iter().any(|(k, _)| k == "_since"));

        // Unknown names are NOT_FOUND, and the server keeps serving.
        for (name, body) in [
            (
                "RefreshTable",
                RefreshTableRequest {
                    table: "Nope".into(),
                }
                .encode_to_vec(),
            ),
            (
                "RefreshTable",
                RefreshTableRequest {
                    table: "nowhere.fhir.Patient".into(),
                }
                .encode_to_vec(),
            ),
            (
                "CancelExport",
                CancelExportRequest {
                    id: "fhir/99".into(),
                }
                .encode_to_vec(),
            ),
        ] {
            let err = action(&mut client, name, body).await.unwrap_err();
            assert_eq!(err.code(), Code::NotFound, "{name}: {err}");
        }
        let err = action(&mut client, "Explode", vec![]).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let again = query(&mut client, "SELECT count(*) AS n FROM patient").await;
        assert!(again.contains(&format!("| {patients} |")), "{again}");
        f.server.shutdown().await.unwrap();
    }

    /// GetFlightInfo brings the snapshots up to date, DoGet reads them: with freshness
    /// `always`, one export per statement, not one per call.
    #[tokio::test]
    async fn freshness_always_exports_once_per_statement_not_per_call() {
        let f = fixture_with(demo_config(), Freshness::Always).await;
        let mut client = login(&f.server).await;
        let patients = population_count(SEED, PATIENTS, "Patient");
        for statement in 1..=2 {
            let counted = query(&mut client, "SELECT count(*) AS n FROM patient").await;
            assert!(counted.contains(&format!("| {patients} |")), "{counted}");
            assert_eq!(f.demo.stats().kickoffs.len(), statement);
        }
        f.server.shutdown().await.unwrap();
    }

    /// A demo server whose exports never finish (it answers "in progress" forever).
    fn endless_export() -> DemoConfig {
        demo_config()
            .with_status_polls(u32::MAX)
            .with_retry_after(Duration::from_secs(1))
    }

    /// Polls ListExports until `done` holds for the only export (bounded: a hang is a failure).
    async fn wait_for_export(
        client: &mut FlightSqlServiceClient<Channel>,
        done: impl Fn(&ExportStatus) -> bool,
    ) -> ExportStatus {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(export) = exports(client).await.into_iter().find(|e| done(e)) {
                    return export;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the export reaches the expected state")
    }

    #[tokio::test]
    async fn cancel_export_action_stops_a_running_export_and_fails_its_query() {
        let f = fixture(endless_export()).await;
        let mut client = login(&f.server).await;
        let token = client.token().unwrap().clone();
        let server = &f.server;
        let waiting = statement_status(server, Some(&token), "SELECT count(*) FROM observation");
        let cancel = async {
            let running = wait_for_export(&mut client, |e| {
                e.state() == ExportState::Running && !e.progress.is_empty()
            })
            .await;
            assert_eq!(running.resource_types, ["Observation"]);
            let cancelled = action(
                &mut client,
                "CancelExport",
                CancelExportRequest {
                    id: running.id.clone(),
                }
                .encode_to_vec(),
            )
            .await
            .unwrap();
            let export = CancelExportResult::decode(&cancelled[..])
                .unwrap()
                .export
                .unwrap();
            assert_eq!(export.state(), ExportState::Cancelled);
        };
        let (status, ()) = tokio::join!(waiting, cancel);
        assert_eq!(status.code(), Code::Cancelled, "{status}");
        wait_for_export(&mut client, |e| e.state() == ExportState::Cancelled).await;
        f.server.shutdown().await.unwrap();
    }

    /// The catalog aborts an export when every query waiting on it is dropped: Flight only has to
    /// drop the planning with the RPC, never detach it.
    #[tokio::test]
    async fn a_dropped_get_flight_info_cancels_the_export_only_it_needed() {
        let f = fixture(endless_export()).await;
        let mut client = login(&f.server).await;
        let token = client.token().unwrap().clone();
        let waiting = tokio::spawn({
            let channel = channel(&f.server).await;
            async move {
                let mut raw = FlightServiceClient::new(channel);
                let command = CommandStatementQuery {
                    query: "SELECT count(*) FROM observation".into(),
                    transaction_id: None,
                };
                let mut request = tonic::Request::new(FlightDescriptor::new_cmd(
                    command.as_any().encode_to_vec(),
                ));
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
                raw.get_flight_info(request).await
            }
        });
        let running = wait_for_export(&mut client, |e| e.state() == ExportState::Running).await;
        // The export is past its kick-off (the FHIR server has the job) before the client leaves.
        tokio::time::timeout(Duration::from_secs(30), async {
            while f.demo.stats().kickoffs.is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the export kicks off");
        // The client gives up: its call is dropped, and the server drops the planning.
        waiting.abort();
        let cancelled = wait_for_export(&mut client, |e| e.state() == ExportState::Cancelled).await;
        assert_eq!(cancelled.id, running.id);
        assert_eq!(f.demo.stats().kickoffs.len(), 1);
        f.server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn add_view_action_adds_a_queryable_table() {
        let f = fixture(demo_config()).await;
        let mut client = login(&f.server).await;
        let view = serde_json::json!({
            "resourceType": "ViewDefinition",
            "name": "patient_demographics",
            "resource": "Patient",
            "select": [{"column": [
                {"name": "id", "path": "id"},
                {"name": "gender", "path": "gender"}
            ]}]
        });
        let added = action(
            &mut client,
            "AddView",
            AddViewRequest {
                catalog: String::new(),
                view_definition: view.to_string(),
            }
            .encode_to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(
            AddViewResult::decode(&added[..]).unwrap().table,
            "fhir.fhir.patient_demographics"
        );
        let patients = population_count(SEED, PATIENTS, "Patient");
        let counted = query(
            &mut client,
            "SELECT count(DISTINCT id) AS n FROM patient_demographics",
        )
        .await;
        assert!(counted.contains(&format!("| {patients} |")), "{counted}");

        // A malformed view and an unknown catalog are refused with the reason.
        let err = action(
            &mut client,
            "AddView",
            AddViewRequest {
                catalog: "fhir".into(),
                view_definition: r#"{"name": "v", "select": []}"#.into(),
            }
            .encode_to_vec(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(err.message().contains("resource"), "{err}");
        let err = action(
            &mut client,
            "AddView",
            AddViewRequest {
                catalog: "nowhere".into(),
                view_definition: view.to_string(),
            }
            .encode_to_vec(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err}");
        f.server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn a_fhir_server_that_is_down_is_unavailable_and_the_server_keeps_serving() {
        let f = fixture(demo_config()).await;
        let mut client = login(&f.server).await;
        let token = client.token().unwrap().clone();
        let base = f.demo.base_url();
        f.demo.shutdown().await;
        let err = statement_status(&f.server, Some(&token), "SELECT count(*) FROM patient").await;
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        assert!(
            err.message().contains(base.host_str().unwrap()),
            "the message names the server: {err}"
        );
        let other = query(&mut client, "SELECT count(*) AS n FROM other.fhir.patient").await;
        assert!(
            other.contains(&format!("| {} |", population_count(7, 5, "Patient"))),
            "{other}"
        );
        f.server.shutdown().await.unwrap();
    }
}
