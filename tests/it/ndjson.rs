//! The flattened mode against the real notebook pipeline (`flatten_json.flatten` +
//! `pandas.json_normalize`), run by `tests/python/flatten_reference.py` on `../shared/data/synthea-100`.
//!
//! Needs `../shared` and a Python with `flatten_json pandas` (`FHIRFLIGHT_PYTHON`, else
//! `.venv/bin/python` in the repository); skipped with a notice when either is missing.

use std::path::Path;
use std::process::Command;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use arrow::record_batch::RecordBatch;
use fhirflight::ndjson::{DecodeOptions, SchemaInference, TableMode, decode_reader, infer_reader};
use serde_json::Value;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// fhirflight's flattened table of one `<Type>.ndjson.gz`, decoded on all cores.
fn convert(path: &Path, resource_type: &str) -> RecordBatch {
    let open = || flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap());
    let mode = TableMode::default();
    let options = DecodeOptions::default()
        .with_resource_type(resource_type)
        .with_source(path.display().to_string());
    let mut inference = SchemaInference::with_options(&mode, options.clone());
    infer_reader(open(), &mut inference).unwrap();
    let schema = inference.schema();
    let mut batches = Vec::new();
    let summary = decode_reader(
        open(),
        std::sync::Arc::clone(&schema),
        &mode,
        options,
        |b| {
            batches.push(b);
            Ok::<_, fhirflight::Error>(())
        },
    )
    .unwrap();
    assert_eq!(summary.skipped_count, 0);
    arrow::compute::concat_batches(&schema, &batches).unwrap()
}

/// A reference float (`{"float": "<repr>"}`), parsed with Rust's correctly rounding parser.
fn float(v: &Value) -> Option<f64> {
    v.get("float")?.as_str()?.parse().ok()
}

/// Compares one of our values (row `row` of `array`) with the reference value; `None` if equal.
fn mismatch(array: &dyn Array, row: usize, want: &Value) -> Option<String> {
    if array.is_null(row) || want.is_null() {
        return (array.is_null(row) != want.is_null())
            .then(|| format!("null mismatch: ours null={}", array.is_null(row)));
    }
    let equal = match array.data_type() {
        DataType::Utf8 => {
            let ours = array.as_string::<i32>().value(row);
            match want {
                Value::String(s) => ours == s,
                // Conflicting kinds: our JSON text of the non-string value.
                other => match float(other) {
                    Some(f) => ours.parse::<f64>() == Ok(f),
                    None => serde_json::from_str::<Value>(ours).ok().as_ref() == Some(other),
                },
            }
        }
        DataType::Int64 => {
            let ours = array.as_primitive::<Int64Type>().value(row);
            // pandas shows integer columns with missing values as float64.
            want.as_i64() == Some(ours) || float(want) == Some(ours as f64)
        }
        DataType::Float64 => {
            let ours = array.as_primitive::<Float64Type>().value(row);
            float(want).or_else(|| want.as_i64().map(|i| i as f64)) == Some(ours)
        }
        DataType::Boolean => want.as_bool() == Some(array.as_boolean().value(row)),
        other => panic!("flattened mode made a {other} column"),
    };
    (!equal).then(|| {
        format!(
            "ours {:?}",
            arrow::util::display::array_value_to_string(array, row).unwrap()
        )
    })
}

/// The pandas dtypes that each of our types stands for.
fn dtype_matches(ours: &DataType, pandas: &str, values: &[Value]) -> bool {
    match (ours, pandas) {
        (DataType::Utf8, "str" | "object") | (DataType::Float64, "float64") => true,
        (DataType::Int64, "int64") => true,
        // Integers with missing values: float64 in pandas, Int64 with nulls here.
        (DataType::Int64, "float64") => values.iter().any(Value::is_null),
        // Booleans with missing values: object in pandas.
        (DataType::Boolean, "bool") => true,
        (DataType::Boolean, "object") => values.iter().all(|v| v.is_null() || v.is_boolean()),
        _ => false,
    }
}

#[test]
fn flattened_tables_equal_the_notebook_pipeline() {
    let data = repo().join("../shared/data/synthea-100");
    let (Some(python), true) = (crate::python(), data.is_dir()) else {
        eprintln!(
            "SKIPPED flattened_tables_equal_the_notebook_pipeline: needs {} and FHIRFLIGHT_PYTHON or .venv/bin/python with flatten_json and pandas",
            data.display()
        );
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(&python)
        .arg(repo().join("tests/python/flatten_reference.py"))
        .arg(&data)
        .arg(out.path())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{} tests/python/flatten_reference.py failed",
        python.display()
    );

    let (mut types, mut cells) = (0, 0);
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        let Some(resource_type) = path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .strip_suffix(".ndjson.gz")
        else {
            continue;
        };
        types += 1;
        let ours = convert(&path, resource_type);
        let reference: Value = serde_json::from_slice(
            &std::fs::read(out.path().join(format!("{resource_type}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(
            ours.num_rows() as u64,
            reference["rows"].as_u64().unwrap(),
            "{resource_type} rows"
        );
        let columns = reference["columns"].as_array().unwrap();
        let names: Vec<&str> = columns
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        let our_names: Vec<&str> = ours
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(our_names, names, "{resource_type} column names and order");
        for (column, array) in columns.iter().zip(ours.columns()) {
            let name = column["name"].as_str().unwrap();
            let dtype = column["dtype"].as_str().unwrap();
            let values = column["values"].as_array().unwrap();
            if !dtype_matches(array.data_type(), dtype, values) {
                problems.push(format!(
                    "{resource_type}.{name}: ours {} vs pandas {dtype}",
                    array.data_type()
                ));
            }
            cells += values.len();
            for (row, want) in values.iter().enumerate() {
                if let Some(m) = mismatch(array, row, want) {
                    problems.push(format!(
                        "{resource_type}.{name} row {row}: {m}, pandas {want}"
                    ));
                    break;
                }
            }
        }
    }
    assert_eq!(types, 17, "resource types in {}", data.display());
    // 6,527,448 cells (column x row) in synthea-100.
    assert!(cells > 6_000_000, "compared only {cells} cells");
    eprintln!("compared {cells} cells of {types} types with the notebook pipeline");
    assert!(
        problems.is_empty(),
        "{} differences:\n{}",
        problems.len(),
        problems.join("\n")
    );
}
