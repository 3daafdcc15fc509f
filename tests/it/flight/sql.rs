//! Flight SQL's RPCs over in-memory tables: statements stream their rows, prepared statements
//! bind parameters, and the metadata RPCs list catalogs, schemas and tables.

use std::sync::Arc;

use arrow::array::{Date32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::pretty::pretty_format_batches;
use arrow_flight::sql::{CommandGetDbSchemas, CommandGetTables, CommandGetXdbcTypeInfo};
use fhirflight::flight::FlightSqlServer;

use super::{fetch, fhir_context, login, query, start, strings, users};

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
