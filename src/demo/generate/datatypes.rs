//! FHIR datatypes as the generator writes them (`meta`, Synthea-style dates and date-times,
//! Coding, CodeableConcept, Reference, Money) and the code systems it uses.

use serde_json::{Value, json};

use super::DAY_MS;
use crate::demo::time::{civil_from_days, format_instant};

pub(super) fn meta(last_updated: i64) -> Value {
    json!({ "lastUpdated": format_instant(last_updated) })
}

/// A Synthea-style local date-time (`1985-06-18T17:30:49-05:00`).
pub(super) fn date_time(ms: i64) -> String {
    let local = ms - 5 * 3_600_000;
    let (days, rem) = (local.div_euclid(DAY_MS), local.rem_euclid(DAY_MS) / 1000);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}-05:00",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

pub(super) fn date(ms: i64) -> String {
    let (y, m, d) = civil_from_days((ms - 5 * 3_600_000).div_euclid(DAY_MS));
    format!("{y:04}-{m:02}-{d:02}")
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
