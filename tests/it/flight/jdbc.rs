//! The JDBC driver's call sequence (`jdbc:arrow-flight-sql://host:port?useEncryption=false`),
//! replayed call by call.

use arrow::array::{AsArray, RecordBatch};
use arrow::ipc::convert::try_schema_from_ipc_buffer;
use arrow::util::display::array_value_to_string;
use arrow_flight::sql::{
    CommandGetCrossReference, CommandGetExportedKeys, CommandGetImportedKeys,
    CommandGetPrimaryKeys, CommandGetTables, SqlInfo,
};
use fhirflight::flight::FlightSqlServer;

use super::{fetch, fhir_context, login, start, strings, users};

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
