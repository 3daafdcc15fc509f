//! The notebook's FHIRPath step, timed: four paths per Patient, first value of each (as
//! `b_fhirpath_patient.py` times `fhirpathpy`), from evaluation alone to the whole path a user
//! gets: NDJSON bytes -> Arrow record batches through the view runner, and the view as a table.
//!
//! ```text
//! cargo bench --bench fhirpath_patient -- <folder with Patient.ndjson> [--reps N]
//! ```
//!
//! Prints one line per measurement: `fhirflight_<name> Patient <resources> <seconds> <res/s>`
//! (median of the reps), the same counts of non-null marital statuses on every line:
//!
//! - `eval`: the four compiled paths over resources already parsed (the Python script's
//!   `eval_res_per_s`);
//! - `parse+eval`: `serde_json` parsing of each line too, one core;
//! - `ndjson->arrow`: the file read and run through the view runner
//!   ([`ViewRunner::push_ndjson`]) into Arrow batches, one core (the Python end-to-end figure
//!   reads, parses and evaluates in one process);
//! - `ndjson->arrow_all_cores`: the same with [`run_reader`], as the catalog builds a view table;
//! - `catalog_first_scan` / `catalog_cached_scan`: `SELECT count(marital_status)` on the view as a
//!   table of a catalog over the folder: the first scan runs the view over the snapshot's raw
//!   NDJSON (copied as read) and writes its Parquet copy, later scans read that copy (the snapshot is made first,
//!   untimed).

mod driver;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use datafusion::prelude::SessionContext;
use fhirflight::catalog::{self, CatalogOptions, FhirCatalog, Freshness, LocalFolder};
use fhirflight::fhirpath::{EvalContext, FhirPath, Item};
use fhirflight::view::{ViewDefinition, ViewRunner, run_reader};
use fhirflight::{Error, Result};
use serde_json::Value;

const PATHS: [(&str, &str); 4] = [
    ("id", "identifier[0].value"),
    ("gender", "gender"),
    ("date_of_birth", "birthDate"),
    ("marital_status", "maritalStatus.coding[0].code"),
];

#[tokio::main]
async fn main() -> Result<()> {
    let args = driver::Args::from_env();
    let dir = PathBuf::from(args.all().first().expect(
        "usage: cargo bench --bench fhirpath_patient -- <folder with Patient.ndjson> [--reps N]",
    ));
    let reps = args.number("--reps", 3);
    let file = dir.join("Patient.ndjson");
    let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let parse = |line: &str| serde_json::from_str::<Value>(line).expect("valid JSON line");

    let paths: Vec<FhirPath> = PATHS
        .iter()
        .map(|(_, p)| FhirPath::compile(p))
        .collect::<Result<_>>()?;
    let resources: Vec<Value> = lines.iter().map(|l| parse(l)).collect();
    let n = resources.len();
    println!("# fhirflight FHIRPath, {n} Patient resources, {reps} reps (median)");
    report("eval", n, reps, || {
        let mut rows = Vec::with_capacity(n);
        for r in &resources {
            let mut out = Vec::with_capacity(PATHS.len());
            row(&paths, r, &mut out)?;
            rows.push(out);
        }
        Ok(rows.iter().filter(|r| r[3].is_some()).count())
    })?;
    report("parse+eval", n, reps, || {
        let mut married = 0;
        for line in &lines {
            let mut out = Vec::with_capacity(PATHS.len());
            let resource = parse(line);
            row(&paths, &resource, &mut out)?;
            married += usize::from(out[3].is_some());
        }
        Ok(married)
    })?;
    drop((resources, text));

    let view = Arc::new(ViewDefinition::from_paths("Patient", &PATHS)?);
    report("ndjson->arrow", n, reps, || {
        let ndjson = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
        let mut runner = ViewRunner::new(Arc::clone(&view), 8192);
        let (mut bytes, mut married) = (&ndjson[..], 0);
        while !bytes.is_empty() {
            let n = runner.push_ndjson(bytes)?;
            bytes = &bytes[n..];
            if runner.is_full() {
                married += runner.flush()?.map_or(0, |b| non_null(&b));
            }
        }
        Ok(married + runner.flush()?.map_or(0, |b| non_null(&b)))
    })?;
    report("ndjson->arrow_all_cores", n, reps, || {
        let reader = std::fs::File::open(&file).map_err(|e| Error::io(&file, e))?;
        let mut married = 0;
        let max_line = fhirflight::ndjson::DEFAULT_MAX_LINE_BYTES;
        run_reader(&view, reader, "Patient.ndjson", 8192, max_line, |batch| {
            married += non_null(&batch);
            Ok(())
        })?;
        Ok(married)
    })?;
    catalog_scans(&dir, n, reps).await
}

/// The view as a table: its first scan (writes the Parquet copy), then cached scans.
async fn catalog_scans(dir: &Path, n: usize, reps: usize) -> Result<()> {
    let cache = std::env::temp_dir().join(format!("fhirflight-bench-{}", std::process::id()));
    let options = CatalogOptions::default()
        .with_cache_dir(&cache)
        .with_freshness(Freshness::Never)
        .with_resource_types(vec!["Patient".into()])
        .with_view(ViewDefinition::from_paths("Patient", &PATHS)?.with_name("patients"));
    let fhir = FhirCatalog::try_new(Arc::new(LocalFolder::try_new(dir)?), options).await?;
    let started = Instant::now();
    let snapshot = fhir.prefetch(&["Patient".into()], None).await?.remove(0);
    println!(
        "# snapshot of {n} Patients (raw NDJSON + flattened Parquet) in {:.2} s, untimed below",
        started.elapsed().as_secs_f64()
    );
    let ctx = SessionContext::new();
    ctx.register_catalog("fhir", Arc::new(fhir.clone()));
    let sql = "SELECT count(marital_status) FROM fhir.fhir.patients";
    let scan = |fresh: bool| {
        let (ctx, copies) = (ctx.clone(), snapshot.dir().join("views"));
        async move {
            if fresh {
                let _ = std::fs::remove_dir_all(copies);
            }
            let batches = catalog::sql(&ctx, sql).await?.collect().await?;
            let count = batches[0].column(0).as_primitive::<Int64Type>().value(0);
            Ok::<_, Error>(count as usize)
        }
    };
    for (name, fresh) in [("catalog_first_scan", true), ("catalog_cached_scan", false)] {
        let (mut times, mut married) = (Vec::new(), 0);
        for _ in 0..reps.max(1) {
            let start = Instant::now();
            married = scan(fresh).await?;
            times.push(start.elapsed().as_secs_f64());
        }
        print_median(name, n, times, married);
    }
    let _ = std::fs::remove_dir_all(&cache);
    Ok(())
}

fn non_null(batch: &RecordBatch) -> usize {
    batch.num_rows() - batch.column(3).null_count()
}

/// One row: the first value of each path, borrowed from the resource (as the Python script keeps
/// `v[0]`).
fn row<'a>(paths: &[FhirPath], resource: &'a Value, out: &mut Vec<Option<Item<'a>>>) -> Result<()> {
    for path in paths {
        out.push(
            path.evaluate(resource, &EvalContext::new())?
                .into_iter()
                .next(),
        );
    }
    Ok(())
}

/// Runs `work` `reps` times and prints the median; `work` returns the non-null marital statuses,
/// printed so that every variant is seen to compute the same thing.
fn report(
    name: &str,
    n: usize,
    reps: usize,
    mut work: impl FnMut() -> Result<usize>,
) -> Result<()> {
    let mut times = Vec::with_capacity(reps);
    let mut married = 0;
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        married = work()?;
        times.push(start.elapsed().as_secs_f64());
    }
    print_median(name, n, times, married);
    Ok(())
}

fn print_median(name: &str, n: usize, mut times: Vec<f64>, married: usize) {
    times.sort_by(f64::total_cmp);
    let t = times[times.len() / 2];
    println!(
        "fhirflight_{name} Patient {n} {t:.4} {:.0} marital_nonnull={married}",
        n as f64 / t
    );
}
