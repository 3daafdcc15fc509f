//! FHIR datatypes as the generator writes them (`meta`, Synthea-style dates and date-times,
//! Coding, CodeableConcept, Reference, Money) and the code systems it uses.

use serde_json::{Value, json};

use crate::time::{format_instant, format_local_date, format_local_date_time};

pub(super) fn meta(last_updated: i64) -> Value {
    json!({ "lastUpdated": format_instant(last_updated) })
}

/// The UTC offset of Synthea's local times (`-05:00`).
const LOCAL_OFFSET_SECS: i32 = -5 * 3600;

/// A Synthea-style local date-time (`1985-06-18T17:30:49-05:00`).
pub(super) fn date_time(ms: i64) -> String {
    format_local_date_time(ms, LOCAL_OFFSET_SECS)
}

/// A Synthea-style local date (`1985-06-18`).
pub(super) fn date(ms: i64) -> String {
    format_local_date(ms, LOCAL_OFFSET_SECS)
}

pub(super) fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({ "system": system, "code": code, "display": display })
}

pub(super) fn concept(system: &str, code: &str, display: &str) -> Value {
    json!({ "coding": [coding(system, code, display)], "text": display })
}

pub(super) fn reference(resource_type: &str, id: &str) -> Value {
    json!({ "reference": format!("{resource_type}/{id}") })
}

pub(super) fn referenced(resource_type: &str, id: &str, display: &str) -> Value {
    json!({ "reference": format!("{resource_type}/{id}"), "display": display })
}

pub(super) fn money(value: f64) -> Value {
    json!({ "value": value, "currency": "USD" })
}

pub(super) const SNOMED: &str = "http://snomed.info/sct";
pub(super) const LOINC: &str = "http://loinc.org";
pub(super) const UCUM: &str = "http://unitsofmeasure.org";
