//! ViewDefinition runner end to end: JSON view + inline resources -> typed record batches.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use fhirflight::view::{ViewDefinition, ViewRunner};
use serde_json::{Value, json};

fn resources() -> Vec<Value> {
    vec![
        json!({"resourceType": "Patient", "id": "p1", "active": true, "gender": "female",
               "name": [{"use": "official", "family": "Smith", "given": ["Ann", "Bea"]}, {"family": "Jones"}],
               "telecom": [{"system": "phone", "value": "555"}],
               "multipleBirthInteger": 2}),
        json!({"resourceType": "Observation", "id": "o1", "valueQuantity": {"value": 1.5}}),
        json!({"resourceType": "Patient", "id": "p2", "active": false, "gender": "male"}),
        json!({"resourceType": "Patient", "id": "p3", "gender": "other", "name": [{"family": "Lee"}]}),
    ]
}

fn run(view: ViewDefinition, batch_size: usize) -> fhirflight::Result<Vec<RecordBatch>> {
    let mut runner = ViewRunner::new(Arc::new(view), batch_size);
    let mut batches = Vec::new();
    for r in resources() {
        runner.push(&r)?;
        if runner.is_full() {
            batches.extend(runner.flush()?);
        }
    }
    batches.extend(runner.flush()?);
    Ok(batches)
}

fn strings(batch: &RecordBatch, col: usize) -> Vec<Option<&str>> {
    batch.column(col).as_string::<i32>().iter().collect()
}

#[test]
fn for_each_or_null_where_and_constants() {
    let view = ViewDefinition::from_json(&json!({
        "resourceType": "ViewDefinition", "name": "patient_names", "resource": "Patient",
        "constant": [{"name": "skip", "valueCode": "other"}],
        "where": [{"path": "gender != %skip"}],
        "select": [
            {"column": [{"name": "id", "path": "getResourceKey()", "type": "id"},
                        {"name": "active", "path": "active", "type": "boolean"},
                        {"name": "births", "path": "multipleBirth.ofType(integer)", "type": "integer"}]},
            {"forEachOrNull": "name", "column": [
                {"name": "idx", "path": "%rowIndex", "type": "integer"},
                {"name": "family", "path": "family", "type": "string"},
                {"name": "given", "path": "given", "type": "string", "collection": true}]}
        ]
    }))
    .unwrap();
    assert_eq!(view.name(), Some("patient_names"));
    let batches = run(view, 1024).unwrap();
    assert_eq!(batches.len(), 1);
    let b = &batches[0];
    assert_eq!(strings(b, 0), vec![Some("p1"), Some("p1"), Some("p2")]);
    assert_eq!(
        b.column(1).as_boolean().iter().collect::<Vec<_>>(),
        vec![Some(true), Some(true), Some(false)]
    );
    assert_eq!(
        b.column(2)
            .as_primitive::<Int64Type>()
            .iter()
            .collect::<Vec<_>>(),
        vec![Some(2), Some(2), None]
    );
    assert_eq!(
        b.column(3)
            .as_primitive::<Int64Type>()
            .iter()
            .collect::<Vec<_>>(),
        vec![Some(0), Some(1), Some(0)]
    );
    assert_eq!(strings(b, 4), vec![Some("Smith"), Some("Jones"), None]);
    let given = b.column(5).as_list::<i32>();
    let first = given.value(0);
    assert_eq!(
        first.as_string::<i32>().iter().collect::<Vec<_>>(),
        vec![Some("Ann"), Some("Bea")]
    );
    assert_eq!(given.value(1).len(), 0);
}

#[test]
fn union_all_of_for_each_branches() {
    let view = ViewDefinition::from_json(&json!({
        "resource": "Patient",
        "select": [
            {"column": [{"name": "id", "path": "id", "type": "id"}]},
            {"unionAll": [
                {"forEach": "name", "column": [{"name": "kind", "path": "'name'", "type": "string"}, {"name": "value", "path": "family", "type": "string"}]},
                {"forEach": "telecom", "column": [{"name": "kind", "path": "'telecom'", "type": "string"}, {"name": "value", "path": "value", "type": "string"}]}
            ]}
        ]
    }))
    .unwrap();
    let names: Vec<_> = view
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["id", "kind", "value"]);
    let b = &run(view, 1024).unwrap()[0];
    assert_eq!(
        strings(b, 0),
        vec![Some("p1"), Some("p1"), Some("p1"), Some("p3")]
    );
    assert_eq!(
        strings(b, 1),
        vec![Some("name"), Some("name"), Some("telecom"), Some("name")]
    );
    assert_eq!(
        strings(b, 2),
        vec![Some("Smith"), Some("Jones"), Some("555"), Some("Lee")]
    );
}

#[test]
fn choice_types_and_decimals_of_other_resource_types() {
    let view = ViewDefinition::from_json(&json!({
        "resource": "Observation",
        "select": [{"column": [{"name": "id", "path": "id"}, {"name": "v", "path": "value.ofType(Quantity).value", "type": "decimal"},
                               {"name": "low", "path": "value.ofType(Quantity).value.lowBoundary()", "type": "decimal"}]}]
    }))
    .unwrap();
    let b = &run(view, 1024).unwrap()[0];
    assert_eq!(strings(b, 0), vec![Some("o1")]);
    assert_eq!(b.column(1).as_primitive::<Float64Type>().value(0), 1.5);
    assert_eq!(b.column(2).as_primitive::<Float64Type>().value(0), 1.45);
}

#[test]
fn notebook_shorthand_in_batches() {
    let view = ViewDefinition::from_paths(
        "Patient",
        &[
            ("id", "id"),
            ("family", "name.family"),
            ("has_name", "name.exists()"),
        ],
    )
    .unwrap();
    let schema = view.schema();
    assert_eq!(schema.field(2).data_type(), &DataType::Boolean);
    let batches = run(view, 2).unwrap();
    assert_eq!(
        batches
            .iter()
            .map(RecordBatch::num_rows)
            .collect::<Vec<_>>(),
        vec![2, 1]
    );
    assert_eq!(strings(&batches[0], 1), vec![Some("Smith"), None]);
    assert_eq!(strings(&batches[1], 1), vec![Some("Lee")]);
    assert_eq!(
        batches[0].column(2).as_boolean().iter().collect::<Vec<_>>(),
        vec![Some(true), Some(false)]
    );
}

#[test]
fn data_that_breaks_the_view_is_an_error() {
    let several = ViewDefinition::from_json(&json!({
        "resource": "Patient", "select": [{"column": [{"name": "family", "path": "name.family"}]}]
    }))
    .unwrap();
    let err = run(several, 10).unwrap_err().to_string();
    assert!(
        err.contains("column family: `name.family` returned 2 values"),
        "{err}"
    );

    let not_boolean = ViewDefinition::from_json(&json!({
        "resource": "Patient", "where": [{"path": "gender"}], "select": [{"column": [{"name": "id", "path": "id"}]}]
    }))
    .unwrap();
    let err = run(not_boolean, 10).unwrap_err().to_string();
    assert!(
        err.contains("where `gender` returned a non-boolean value"),
        "{err}"
    );

    let wrong_type = ViewDefinition::from_json(&json!({
        "resource": "Patient", "select": [{"column": [{"name": "g", "path": "gender", "type": "boolean"}]}]
    }))
    .unwrap();
    let err = run(wrong_type, 10).unwrap_err().to_string();
    assert!(
        err.contains("column g: expected a boolean, got \"female\""),
        "{err}"
    );
}
