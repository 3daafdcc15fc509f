//! A wide type (the demo generator's Provenance with thousands of targets, a flattened column
//! each): `SELECT *` answers every column in the table's order with the values of the NDJSON,
//! the same as DataFusion's own planning of it, under `WHERE`, `LIMIT` and an alias too, and
//! `EXPLAIN` shows the scan without a projection of thousands of columns.

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use datafusion::prelude::SessionContext;
use fhirflight::catalog::{self, Freshness, LocalFolder};
use fhirflight::demo::{GenerateOptions, generate_with};
use serde_json::Value;

use super::{context, rows};

const TARGETS: usize = 2_000;

async fn batches(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
    catalog::sql(ctx, sql)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
}

fn names(batches: &[RecordBatch]) -> Vec<String> {
    batches[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

#[tokio::test]
async fn select_star_and_explain_on_thousands_of_columns() {
    let population = generate_with(
        5,
        3,
        GenerateOptions::default().with_provenance_targets(TARGETS),
    );
    let data = tempfile::tempdir().unwrap();
    let mut ndjson = Vec::new();
    population.write_ndjson("Provenance", &mut ndjson).unwrap();
    std::fs::write(data.path().join("Provenance.ndjson"), ndjson).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let folder = Arc::new(LocalFolder::try_new(data.path()).unwrap());
    let (ctx, fhir) = context(folder, cache.path(), Freshness::Never).await;

    let all = batches(&ctx, "SELECT * FROM src.fhir.provenance").await;
    let table = fhir.table("Provenance").await.unwrap();
    let table_names: Vec<String> = datafusion::catalog::TableProvider::schema(&table)
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert!(table_names.len() > TARGETS, "{}", table_names.len());
    assert_eq!(names(&all), table_names);
    let last = format!("target_{}_reference", TARGETS - 1);
    let mut answered: Vec<(String, String)> = all
        .iter()
        .flat_map(|b| {
            let id = b.column_by_name("id").unwrap().as_string::<i32>();
            let target = b.column_by_name(&last).unwrap().as_string::<i32>();
            (0..b.num_rows()).map(|i| (id.value(i).to_owned(), target.value(i).to_owned()))
        })
        .collect();
    answered.sort();
    let mut expected: Vec<(String, String)> = population
        .resources("Provenance")
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_str(r.json()).unwrap();
            let target = v["target"][TARGETS - 1]["reference"].as_str().unwrap();
            (r.id().to_owned(), target.to_owned())
        })
        .collect();
    expected.sort();
    assert_eq!(answered, expected);

    // DataFusion's own planning of the same statement answers the same.
    let planned_by_datafusion = ctx
        .sql("SELECT * FROM src.fhir.\"Provenance\"")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        sorted_rows(&planned_by_datafusion),
        sorted_rows(&all),
        "the same rows as DataFusion's planner"
    );
    assert_eq!(names(&planned_by_datafusion), table_names);

    // WHERE, an alias, LIMIT and OFFSET keep their meaning.
    let (id, _) = &expected[1];
    let one = batches(
        &ctx,
        &format!("SELECT * FROM src.fhir.provenance p WHERE p.id = '{id}' LIMIT 5"),
    )
    .await;
    assert_eq!(names(&one), table_names);
    assert_eq!(ids(&one), [id.as_str()]);
    let page = rows(&ctx, "SELECT * FROM src.fhir.provenance LIMIT 1 OFFSET 2").await;
    assert_eq!(page.len(), 1);
    // What the shortcut leaves to DataFusion still answers.
    let ordered = batches(&ctx, "SELECT * FROM src.fhir.provenance ORDER BY id DESC").await;
    assert_eq!(names(&ordered), table_names);
    let descending: Vec<&str> = expected.iter().rev().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids(&ordered), descending);

    let plan = rows(
        &ctx,
        "EXPLAIN SELECT * FROM src.fhir.provenance WHERE id <> 'x'",
    )
    .await
    .join("\n");
    assert!(plan.contains("TableScan: src.fhir.Provenance"), "{plan}");
    assert!(plan.contains("FhirScanExec: type=Provenance"), "{plan}");
    assert!(
        !plan.contains("Projection:"),
        "no projection of every column: {plan}"
    );
    let analyzed = rows(&ctx, "EXPLAIN ANALYZE SELECT * FROM src.fhir.provenance")
        .await
        .join("\n");
    assert!(analyzed.contains("output_rows=3"), "{analyzed}");
}

/// The `id` column of `batches`, in order.
fn ids(batches: &[RecordBatch]) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let id = b.column_by_name("id").unwrap().as_string::<i32>();
            (0..b.num_rows()).map(|i| id.value(i).to_owned())
        })
        .collect()
}

/// The rows of `batches` as strings, sorted.
fn sorted_rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut out: Vec<String> = batches.iter().flat_map(crate::row_strings).collect();
    out.sort();
    out
}
