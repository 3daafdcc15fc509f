//! The catalog in-process, for `benches/catalog.sh`: one process builds a [`FhirCatalog`] over a
//! folder of NDJSON files and, per resource type, times
//!
//! - `first`: the first query, which converts the type's NDJSON to a Parquet snapshot, then runs;
//! - `repeat`: the same query again on the snapshot (median of `--reps`), of which `plan` is the
//!   planning part (snapshot lookup, table, physical plan).
//!
//! Every run is a full `collect` of the same SQL through [`catalog::sql`]. Prints one line per
//! type: `fhirflight_catalog type first_s repeat_s plan_s groups total` (`groups` = rows returned,
//! `total` = the sum of the `n` column, to compare with DuckDB's result).
//!
//! Usage: `cargo bench --bench catalog -- FOLDER --cache DIR [--types T1,T2] [--reps N]`, or
//! `cargo bench --bench catalog -- --query TYPE` to print a type's SQL (the aggregates of
//! `../shared/bench/b_duckdb.py --query agg`, over the flattened columns). The script runs the
//! built binary with the same arguments.

mod driver;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use datafusion::prelude::{SessionConfig, SessionContext};
use fhirflight::catalog::{self, CatalogOptions, FhirCatalog, Freshness, LocalFolder};

/// The aggregate of `type`, as `b_duckdb.py` runs it (`code.coding[1]` is `code_coding_0`).
fn query(resource_type: &str) -> Option<&'static str> {
    Some(match resource_type {
        "Condition" => {
            "SELECT code_coding_0_code AS code, count(*) AS n FROM Condition GROUP BY 1 ORDER BY n DESC"
        }
        "Observation" => {
            "SELECT code_coding_0_code AS code, avg(valueQuantity_value) AS avg_v, count(*) AS n \
             FROM Observation WHERE valueQuantity_value IS NOT NULL GROUP BY 1"
        }
        "Patient" => {
            "SELECT gender, count(*) AS n, min(birthDate) AS oldest FROM Patient GROUP BY 1"
        }
        "ExplanationOfBenefit" => {
            "SELECT type_coding_0_code AS t, count(*) AS n, sum(payment_amount_value) AS paid \
             FROM ExplanationOfBenefit GROUP BY 1"
        }
        _ => return None,
    })
}

#[tokio::main]
async fn main() -> fhirflight::Result<()> {
    let args = driver::Args::from_env();
    let flag = |name: &str| args.flag(name);
    if let Some(t) = flag("--query") {
        println!("{}", query(&t).expect("a type with a query"));
        return Ok(());
    }
    let usage =
        "usage: cargo bench --bench catalog -- FOLDER --cache DIR [--types T1,T2] [--reps N]";
    let folder = PathBuf::from(args.all().first().expect(usage));
    let cache = PathBuf::from(flag("--cache").expect(usage));
    let types = flag("--types").unwrap_or_else(|| "Observation,Condition,Patient".into());
    let reps = args.number("--reps", 3);

    let options = CatalogOptions::default()
        .with_cache_dir(cache)
        .with_freshness(Freshness::Never);
    let fhir = FhirCatalog::try_new(Arc::new(LocalFolder::try_new(folder)?), options).await?;
    let ctx = SessionContext::new_with_config(
        SessionConfig::new().with_default_catalog_and_schema("fhir", catalog::DEFAULT_SCHEMA),
    );
    ctx.register_catalog("fhir", Arc::new(fhir));

    println!("# tool type first_s repeat_s plan_s groups total");
    for t in types.split(',') {
        let sql = query(t).expect("a type with a query");
        let (first, _, batches) = run(&ctx, sql).await?;
        let (groups, total) = checksum(&batches);
        let mut repeats = Vec::with_capacity(reps);
        for _ in 0..reps {
            let (all, plan, batches) = run(&ctx, sql).await?;
            assert_eq!(checksum(&batches), (groups, total), "{t}: same result");
            repeats.push((all, plan));
        }
        repeats.sort();
        let (repeat, plan) = repeats[repeats.len() / 2];
        println!(
            "fhirflight_catalog {t} {:.4} {:.4} {:.4} {groups} {total}",
            first.as_secs_f64(),
            repeat.as_secs_f64(),
            plan.as_secs_f64()
        );
    }
    Ok(())
}

/// Runs `sql` to the end: (total time, planning time, result).
async fn run(
    ctx: &SessionContext,
    sql: &str,
) -> datafusion::error::Result<(Duration, Duration, Vec<RecordBatch>)> {
    let t0 = Instant::now();
    let df = catalog::sql(ctx, sql).await?;
    let plan = df.create_physical_plan().await?;
    let planned = t0.elapsed();
    let batches = datafusion::physical_plan::collect(plan, ctx.task_ctx()).await?;
    Ok((t0.elapsed(), planned, batches))
}

/// (rows, sum of the `n` column).
fn checksum(batches: &[RecordBatch]) -> (usize, i64) {
    let rows = batches.iter().map(RecordBatch::num_rows).sum();
    let total = batches
        .iter()
        .filter_map(|b| b.column_by_name("n"))
        .map(|n| n.as_primitive::<Int64Type>().iter().flatten().sum::<i64>())
        .sum();
    (rows, total)
}
