//! A Flight SQL server over small in-memory FHIR-like tables (`fhir.r4.Patient`,
//! `fhir.r4.Condition`) for the client tests in `tests/python/` and `tests/flight_sql_client.sh`.
//!
//! Listens on 127.0.0.1 (port 0 unless `FHIRFLIGHT_PORT` is set), prints `listening on
//! <address>` once it accepts calls, and serves until stdin closes or Ctrl-C. Users come from
//! `FHIRFLIGHT_USERS` (`name:password,...`), `alice:wonderland` by default.
//!
//! ```sh
//! cargo run --example flight_test_server
//! ```

use std::io::Write;
use std::sync::Arc;

use arrow::array::{BooleanArray, Date32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider,
};
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use fhirflight::flight::{FlightSqlServer, Users};
use tokio::io::AsyncReadExt;

fn table(
    columns: Vec<(&str, DataType, Arc<dyn arrow::array::Array>)>,
) -> fhirflight::Result<Arc<MemTable>> {
    let fields: Vec<_> = columns
        .iter()
        .map(|(name, t, _)| Field::new(*name, t.clone(), true))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        columns.into_iter().map(|(_, _, a)| a).collect(),
    )
    .map_err(|e| fhirflight::Error::Config(format!("test table: {e}")))?;
    MemTable::try_new(schema, vec![vec![batch]])
        .map(Arc::new)
        .map_err(|e| fhirflight::Error::Config(format!("test table: {e}")))
}

fn context() -> fhirflight::Result<SessionContext> {
    let mut config = SessionConfig::new()
        .with_default_catalog_and_schema("fhir", "r4")
        .with_create_default_catalog_and_schema(false);
    config.options_mut().sql_parser.enable_ident_normalization = false;
    let ctx = SessionContext::new_with_config(config);
    let patient = table(vec![
        (
            "id",
            DataType::Utf8,
            Arc::new(StringArray::from(vec!["pat-1", "pat-2", "pat-3"])),
        ),
        (
            "gender",
            DataType::Utf8,
            Arc::new(StringArray::from(vec!["female", "male", "female"])),
        ),
        // 1980-05-17, 1955-11-02, 2001-01-30
        (
            "birthDate",
            DataType::Date32,
            Arc::new(Date32Array::from(vec![3789, -5174, 11352])),
        ),
        (
            "name_0_given_0",
            DataType::Utf8,
            Arc::new(StringArray::from(vec![Some("Ada"), Some("Alan"), None])),
        ),
        (
            "name_0_family",
            DataType::Utf8,
            Arc::new(StringArray::from(vec!["Lovelace", "Turing", "Hopper"])),
        ),
        (
            "deceasedBoolean",
            DataType::Boolean,
            Arc::new(BooleanArray::from(vec![Some(false), Some(true), None])),
        ),
    ])?;
    let condition = table(vec![
        (
            "id",
            DataType::Utf8,
            Arc::new(StringArray::from(vec![
                "cond-1", "cond-2", "cond-3", "cond-4",
            ])),
        ),
        (
            "subject_reference",
            DataType::Utf8,
            Arc::new(StringArray::from(vec![
                "Patient/pat-1",
                "Patient/pat-1",
                "Patient/pat-2",
                "Patient/pat-3",
            ])),
        ),
        (
            "code_coding_0_code",
            DataType::Utf8,
            Arc::new(StringArray::from(vec![
                "44054006",
                "38341003",
                "44054006",
                "195662009",
            ])),
        ),
    ])?;
    let schema = Arc::new(MemorySchemaProvider::new());
    let register = |name: &str, t: Arc<MemTable>| {
        schema
            .register_table(name.into(), t)
            .map_err(|e| fhirflight::Error::Config(e.to_string()))
    };
    register("Patient", patient)?;
    register("Condition", condition)?;
    let catalog = Arc::new(MemoryCatalogProvider::new());
    catalog
        .register_schema("r4", schema)
        .map_err(|e| fhirflight::Error::Config(e.to_string()))?;
    ctx.register_catalog("fhir", catalog);
    Ok(ctx)
}

#[tokio::main]
async fn main() -> fhirflight::Result<()> {
    let users = Users::parse(
        &std::env::var("FHIRFLIGHT_USERS").unwrap_or_else(|_| "alice:wonderland".into()),
    )?;
    let port = std::env::var("FHIRFLIGHT_PORT").unwrap_or_else(|_| "0".into());
    let server = FlightSqlServer::new(context()?)
        .with_users(users)
        .bind(format!("127.0.0.1:{port}"))
        .await?;
    println!("listening on {}", server.local_addr());
    std::io::stdout()
        .flush()
        .map_err(|e| fhirflight::Error::io("stdout", e))?;
    let mut stdin = tokio::io::stdin();
    let mut sink = Vec::new();
    tokio::select! {
        _ = stdin.read_to_end(&mut sink) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    server.shutdown().await
}
