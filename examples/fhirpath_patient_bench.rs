//! The notebook's FHIRPath step, timed: four compiled paths per Patient, first value of each (as
//! `b_fhirpath_patient.py` times `fhirpathpy`), and the same four paths as a view into Arrow.
//!
//! ```text
//! cargo run --release --example fhirpath_patient_bench -- <Patient.ndjson> [--reps N]
//! ```
//!
//! Prints one line per measurement: `name resources seconds_median res/s`. `eval` is comparable to
//! the Python script's `eval_res_per_s` (evaluation only, resources already parsed); `parse+eval`
//! and `parse+view` include `serde_json` parsing of each line, like its end-to-end figure.

use std::sync::Arc;
use std::time::Instant;

use fhirflight::fhirpath::{EvalContext, FhirPath, Item};
use fhirflight::view::{ViewDefinition, ViewRunner};
use serde_json::Value;

const PATHS: [(&str, &str); 4] = [
    ("id", "identifier[0].value"),
    ("gender", "gender"),
    ("date_of_birth", "birthDate"),
    ("marital_status", "maritalStatus.coding[0].code"),
];

fn main() -> fhirflight::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let file = args
        .first()
        .expect("usage: fhirpath_patient_bench <Patient.ndjson> [--reps N]");
    let reps: usize = args
        .iter()
        .position(|a| a == "--reps")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(3);
    let text = std::fs::read_to_string(file).map_err(|e| fhirflight::Error::io(file, e))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let parse = |line: &str| serde_json::from_str::<Value>(line).expect("valid JSON line");

    let paths: Vec<FhirPath> = PATHS
        .iter()
        .map(|(_, p)| FhirPath::compile(p))
        .collect::<fhirflight::Result<_>>()?;
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
        let married = rows.iter().filter(|r| r[3].is_some()).count();
        Ok(married)
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
    let view = Arc::new(ViewDefinition::from_paths("Patient", &PATHS)?);
    report("parse+view->arrow", n, reps, || {
        let mut runner = ViewRunner::new(Arc::clone(&view), 8192);
        let mut married = 0;
        for line in &lines {
            runner.push(&parse(line))?;
            if runner.is_full() {
                married += runner
                    .flush()?
                    .map_or(0, |b| b.num_rows() - b.column(3).null_count());
            }
        }
        Ok(married
            + runner
                .flush()?
                .map_or(0, |b| b.num_rows() - b.column(3).null_count()))
    })?;
    Ok(())
}

/// One row: the first value of each path, borrowed from the resource (as the Python script keeps
/// `v[0]`).
fn row<'a>(
    paths: &[FhirPath],
    resource: &'a Value,
    out: &mut Vec<Option<Item<'a>>>,
) -> fhirflight::Result<()> {
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
    mut work: impl FnMut() -> fhirflight::Result<usize>,
) -> fhirflight::Result<()> {
    let mut times = Vec::with_capacity(reps);
    let mut married = 0;
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        married = work()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let t = times[times.len() / 2];
    println!(
        "fhirflight_{name} Patient {n} {t:.4} {:.0} marital_nonnull={married}",
        n as f64 / t
    );
    Ok(())
}
