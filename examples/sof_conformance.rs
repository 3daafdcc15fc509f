//! Runs the official SQL on FHIR v2 test suite against `fhirflight::view`.
//!
//! ```text
//! cargo run --release --example sof_conformance -- <suite folder> [--report <file>]
//! ```
//!
//! Prints passed/failed per file, writes the suite's implementation-report JSON
//! (`{"file.json": {"tests": [{"name": ..., "result": {"passed": ..., "reason": ...}}]}}`) and exits
//! non-zero when any case fails, so a regression breaks the test command.

mod conformance;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use fhirflight::view::{ViewDefinition, ViewRunner};
use serde_json::{Map, Value, json};

fn main() -> ExitCode {
    conformance::main("sof_conformance", run)
}

/// Runs every `*.json` test file (except the schema) in `suite`; true when all cases pass.
fn run(suite: &Path, report: Option<&Path>) -> Result<bool, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(suite)
        .map_err(|e| format!("{}: {e}", suite.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json") && !p.ends_with("tests.schema.json"))
        .collect();
    files.sort();
    let (mut out, mut total, mut failed) = (Map::new(), 0, 0);
    println!("{:<28} {:>6} {:>6}", "file", "passed", "failed");
    for path in &files {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: Value =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let resources = file["resources"].as_array().cloned().unwrap_or_default();
        let mut tests = Vec::new();
        let mut file_failed = 0;
        for case in file["tests"].as_array().into_iter().flatten() {
            let name = case["title"].as_str().unwrap_or("?");
            let result = match check(case, &resources) {
                Ok(()) => json!({"passed": true}),
                Err(reason) => {
                    file_failed += 1;
                    eprintln!("FAIL {} / {name}: {reason}", file_name(path));
                    json!({"passed": false, "reason": reason})
                }
            };
            tests.push(json!({"name": name, "result": result}));
        }
        println!(
            "{:<28} {:>6} {:>6}",
            file_name(path),
            tests.len() - file_failed,
            file_failed
        );
        total += tests.len();
        failed += file_failed;
        out.insert(file_name(path), json!({"tests": tests}));
    }
    println!("{:<28} {:>6} {:>6}", "total", total - failed, failed);
    if let Some(report) = report {
        let text = serde_json::to_string_pretty(&Value::Object(out)).expect("JSON");
        std::fs::write(report, text).map_err(|e| format!("{}: {e}", report.display()))?;
    }
    Ok(failed == 0)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// One test case: `Ok` when the view behaves as the case expects, else the reason.
fn check(case: &Value, resources: &[Value]) -> Result<(), String> {
    let outcome = evaluate(&case["view"], resources);
    if case["expectError"].as_bool() == Some(true) {
        return match outcome {
            Err(_) => Ok(()),
            Ok(_) => Err("expected an error, the view ran".into()),
        };
    }
    let (columns, rows) = outcome.map_err(|e| format!("error: {e}"))?;
    if let Some(expected) = case.get("expectColumns") {
        let expected: Vec<&str> = expected
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if expected != columns {
            return Err(format!("columns {columns:?}, expected {expected:?}"));
        }
    }
    if let Some(count) = case.get("expectCount").and_then(Value::as_u64)
        && rows.len() as u64 != count
    {
        return Err(format!("{} rows, expected {count}", rows.len()));
    }
    if let Some(expected) = case.get("expect").and_then(Value::as_array) {
        let (mut got, mut want): (Vec<String>, Vec<String>) = (
            rows.iter().map(canonical).collect(),
            expected.iter().map(canonical).collect(),
        );
        got.sort();
        want.sort();
        if got != want {
            return Err(format!(
                "rows {}, expected {}",
                got.join(" "),
                want.join(" ")
            ));
        }
    }
    Ok(())
}

/// Runs a view over the resources: column names and rows as JSON objects.
fn evaluate(view: &Value, resources: &[Value]) -> fhirflight::Result<(Vec<String>, Vec<Value>)> {
    let view = Arc::new(ViewDefinition::from_json(view)?);
    let columns = view
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut runner = ViewRunner::new(view, 1024);
    let mut rows = Vec::new();
    for resource in resources {
        runner.push(resource)?;
    }
    if let Some(batch) = runner.flush()? {
        rows = to_json(&batch);
    }
    Ok((columns, rows))
}

fn to_json(batch: &RecordBatch) -> Vec<Value> {
    let schema = batch.schema();
    (0..batch.num_rows())
        .map(|row| {
            let fields = schema.fields().iter().zip(batch.columns());
            Value::Object(
                fields
                    .map(|(f, col)| (f.name().clone(), cell(col.as_ref(), row)))
                    .collect(),
            )
        })
        .collect()
}

fn cell(array: &dyn Array, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Boolean => json!(array.as_boolean().value(row)),
        DataType::Int64 => json!(array.as_primitive::<Int64Type>().value(row)),
        DataType::Float64 => json!(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => json!(array.as_string::<i32>().value(row)),
        DataType::List(_) => {
            let values = array.as_list::<i32>().value(row);
            Value::Array(
                (0..values.len())
                    .map(|i| cell(values.as_ref(), i))
                    .collect(),
            )
        }
        other => json!(format!("<{other}>")),
    }
}

/// A row as sortable text, with keys ordered and every number as a float (the suite writes `5` where
/// a decimal column holds `5.0`).
fn canonical(row: &Value) -> String {
    fn normalize(v: &Value) -> Value {
        match v {
            Value::Number(n) => json!(n.as_f64()),
            Value::Array(items) => Value::Array(items.iter().map(normalize).collect()),
            Value::Object(map) => {
                let sorted: BTreeMap<&String, Value> =
                    map.iter().map(|(k, v)| (k, normalize(v))).collect();
                json!(sorted)
            }
            other => other.clone(),
        }
    }
    normalize(row).to_string()
}
