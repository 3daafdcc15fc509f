//! SQL as FHIR users write it: camelCase columns unquoted and in any case (`birthDate`,
//! `birthdate`, `BIRTHDATE`), quoted names exact, over the demo server, in the library's session,
//! the `fhirflight sql` command and Flight SQL alike.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use datafusion::prelude::SessionContext;
use fhirflight::catalog::{self, CatalogOptions, Freshness};
use fhirflight::config::{Config, PrimarySource, Session, SessionBuilder};
use fhirflight::demo::{DemoConfig, generate};
use serde_json::Value;

use crate::FlightFixture;

const SEED: u64 = 42;
const PATIENTS: usize = 8;

/// The query of the README.
const README_QUERY: &str = "SELECT id, gender, birthDate FROM Patient";

/// `id|gender|birthDate` of the demo population's patients, by id.
fn patients() -> Vec<String> {
    let population = generate(SEED, PATIENTS);
    let mut rows: Vec<String> = population
        .resources("Patient")
        .iter()
        .map(|r| {
            let json: Value = serde_json::from_str(r.json()).unwrap();
            let field = |name: &str| json[name].as_str().unwrap_or_default().to_owned();
            format!("{}|{}|{}", field("id"), field("gender"), field("birthDate"))
        })
        .collect();
    rows.sort();
    rows
}

/// The session the `fhirflight` command builds with `--demo` (the library's session helper).
async fn demo_session(cache: &Path) -> Session {
    let demo = DemoConfig::default()
        .with_seed(SEED)
        .with_patients(PATIENTS);
    let options = CatalogOptions::default()
        .with_cache_dir(cache)
        .with_freshness(Freshness::Never);
    SessionBuilder::new(Config::default())
        .with_source(PrimarySource::Demo(demo))
        .with_catalog_options(options)
        .build()
        .await
        .unwrap()
}

fn kickoffs(session: &Session) -> usize {
    session.demo().unwrap().stats().kickoffs.len()
}

/// The header and the rows of `sql` (through [`catalog::sql`]), `|`-joined.
async fn table(ctx: &SessionContext, sql: &str) -> (String, Vec<String>) {
    try_table(ctx, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn try_table(
    ctx: &SessionContext,
    sql: &str,
) -> datafusion::error::Result<(String, Vec<String>)> {
    let df = catalog::sql(ctx, sql).await?;
    let header: Vec<String> = df
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let batches = df.collect().await?;
    let rows = batches.iter().flat_map(crate::row_strings).collect();
    Ok((header.join("|"), rows))
}

async fn error(ctx: &SessionContext, sql: &str) -> String {
    match try_table(ctx, sql).await {
        Ok(rows) => panic!("{sql}: no error but {rows:?}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn the_readme_query_runs_in_the_library_session_in_any_case() {
    let cache = tempfile::tempdir().unwrap();
    let session = demo_session(cache.path()).await;
    let ctx = session.context();
    let expected = patients();
    let (header, mut rows) = table(ctx, README_QUERY).await;
    rows.sort();
    assert_eq!(header, "id|gender|birthDate");
    assert_eq!(rows, expected);
    for sql in [
        "SELECT id, gender, birthdate FROM patient ORDER BY id",
        "SELECT ID, GENDER, BIRTHDATE FROM PATIENT ORDER BY ID",
        "SELECT \"id\", \"gender\", \"birthDate\" FROM \"Patient\" ORDER BY \"id\"",
        "SELECT p.Id, P.gender, p.BirthDate FROM fhir.FHIR.patient AS p ORDER BY P.id",
    ] {
        assert_eq!(
            table(ctx, sql).await,
            ("id|gender|birthDate".to_owned(), expected.clone()),
            "{sql}"
        );
    }
    // Quoted names are exact.
    let err = error(ctx, "SELECT \"birthdate\" FROM Patient").await;
    assert!(err.contains("birthdate"), "{err}");
    assert_eq!(kickoffs(&session), 1, "one export served every statement");
}

#[tokio::test]
async fn clauses_aliases_ctes_and_views_match_any_case() {
    let cache = tempfile::tempdir().unwrap();
    let session = demo_session(cache.path()).await;
    let ctx = session.context();

    // WHERE, JOIN ON, GROUP BY, HAVING, ORDER BY with aliases in mixed case, against the same
    // statement written with exact quoted names.
    let mixed = table(
        ctx,
        "SELECT P.Gender AS Sex, count(*) AS Conditions \
         FROM Patient AS P JOIN condition AS c ON C.Subject_Reference = concat('Patient/', p.ID) \
         WHERE p.BIRTHDATE IS NOT NULL GROUP BY p.gender HAVING CONDITIONS > 0 ORDER BY sex",
    )
    .await;
    let exact = table(
        ctx,
        "SELECT \"p\".\"gender\" AS \"Sex\", count(*) AS \"Conditions\" \
         FROM \"Patient\" AS \"p\" JOIN \"Condition\" AS \"c\" \
         ON \"c\".\"subject_reference\" = concat('Patient/', \"p\".\"id\") \
         WHERE \"p\".\"birthDate\" IS NOT NULL GROUP BY \"p\".\"gender\" \
         HAVING \"Conditions\" > 0 ORDER BY \"Sex\"",
    )
    .await;
    assert_eq!(mixed.0, "Sex|Conditions");
    assert!(!mixed.1.is_empty());
    assert_eq!(mixed, exact);

    // A CTE, its name and its columns in other cases than defined.
    let expected: Vec<String> = patients()
        .iter()
        .map(|row| {
            let cells: Vec<&str> = row.split('|').collect();
            format!("{}|{}", cells[0], cells[2])
        })
        .collect();
    assert_eq!(
        table(
            ctx,
            "WITH Births AS (SELECT id AS PatientId, birthDate AS Born FROM Patient) \
             SELECT patientid, BORN FROM births ORDER BY PATIENTID",
        )
        .await,
        ("PatientId|Born".to_owned(), expected.clone())
    );

    // A view added with fhir_add_view: its table and camelCase columns in any case.
    let view = serde_json::json!({
        "resourceType": "ViewDefinition", "name": "PatientBirths", "resource": "Patient",
        "select": [{"column": [
            {"name": "patientId", "path": "getResourceKey()"},
            {"name": "birthDate", "path": "birthDate"}
        ]}]
    });
    table(
        ctx,
        &format!("SELECT * FROM fhir_add_view('fhir', '{view}')"),
    )
    .await;
    assert_eq!(
        table(
            ctx,
            "SELECT PATIENTID, birthdate FROM patientbirths ORDER BY PatientId"
        )
        .await,
        ("patientId|birthDate".to_owned(), expected)
    );
    assert_eq!(kickoffs(&session), 1);
}

#[tokio::test]
async fn columns_differing_only_by_case_are_ambiguous_unless_quoted() {
    let cache = tempfile::tempdir().unwrap();
    let session = demo_session(cache.path()).await;
    let ctx = session.context();
    let err = error(
        ctx,
        "WITH t AS (SELECT id AS \"patientId\", gender AS \"PatientId\" FROM Patient) \
         SELECT patientid FROM t",
    )
    .await;
    assert!(
        err.contains("column reference \"patientid\" is ambiguous: PatientId, patientId"),
        "{err}"
    );
    let err = error(ctx, "SELECT a FROM (SELECT 1 AS a, 2 AS \"A\")").await;
    assert!(
        err.contains("column reference \"a\" is ambiguous: A, a"),
        "{err}"
    );
    assert_eq!(
        table(ctx, "SELECT \"A\", \"a\" FROM (SELECT 1 AS a, 2 AS \"A\")").await,
        ("A|a".to_owned(), vec!["2|1".to_owned()])
    );
}

#[test]
fn the_readme_query_runs_in_the_cli() {
    let cache = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fhirflight"))
        .args(["sql", "--demo", "--demo-patients", &PATIENTS.to_string()])
        .arg("--cache-dir")
        .arg(cache.path())
        .args(["--format", "csv"])
        .arg(format!("{README_QUERY} ORDER BY id"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("id,gender,birthDate"), "{stdout}");
    let rows: Vec<String> = lines.map(|l| l.replace(',', "|")).collect();
    assert_eq!(rows, patients());
}

#[tokio::test]
async fn flight_sql_statements_prepared_statements_and_browsing_match_any_case() {
    let cache = tempfile::tempdir().unwrap();
    let session = demo_session(cache.path()).await;
    let mut flight = FlightFixture::over(session.context().clone()).await;
    let info = flight
        .client
        .execute(README_QUERY.to_owned(), None)
        .await
        .unwrap();
    let (header, mut rows) = flight.fetch(info).await;
    rows.sort();
    assert_eq!(header, "id|gender|birthDate");
    assert_eq!(rows, patients());

    // A prepared statement with a parameter.
    let mut statement = flight
        .client
        .prepare(
            "SELECT ID, BirthDate FROM patient WHERE GENDER = ? ORDER BY id".into(),
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
    let (header, rows) = flight.fetch(info).await;
    let expected: Vec<String> = patients()
        .iter()
        .filter(|row| row.contains("|female|"))
        .map(|row| row.replace("|female|", "|"))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!((header.as_str(), rows), ("id|birthDate", expected));
    statement.close().await.unwrap();

    // Browsing: information_schema in upper case, SHOW COLUMNS of a table named in lower case.
    let info = flight
        .client
        .execute(
            "SELECT TABLE_NAME, Table_Type FROM INFORMATION_SCHEMA.TABLES \
             WHERE TABLE_NAME = 'Patient'"
                .to_owned(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        flight.fetch(info).await,
        (
            "table_name|table_type".to_owned(),
            vec!["Patient|BASE TABLE".to_owned()]
        )
    );
    let info = flight
        .client
        .execute("SHOW COLUMNS FROM patient".to_owned(), None)
        .await
        .unwrap();
    let (_, columns) = flight.fetch(info).await;
    assert!(
        columns.iter().any(|c| c.contains("|Patient|birthDate|")),
        "{columns:?}"
    );
    assert_eq!(kickoffs(&session), 1);
    flight.server.shutdown().await.unwrap();
}
