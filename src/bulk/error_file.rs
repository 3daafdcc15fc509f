//! What the manifest's `error[]` files say: each OperationOutcome becomes a
//! [`ServerError`](WarningKind::ServerError) warning, with the resource type it concerns when it
//! can be told.

use serde_json::Value;

use crate::http::outcome_text;
use crate::r4::is_resource_type;
use crate::warning::{Warning, WarningKind};

/// The warning of one line of an error file; `None` when the line is not an OperationOutcome.
/// `types` are the types the export concerns (requested, or listed in the manifest).
pub(crate) fn outcome_warning(outcome: &Value, types: &[String]) -> Option<Warning> {
    let warning = Warning::new(WarningKind::ServerError, outcome_text(outcome)?);
    Some(match outcome_type(outcome, types) {
        Some(resource_type) => warning.with_resource_type(resource_type),
        None => warning,
    })
}

/// The resource type an OperationOutcome concerns: the first of its issues' `expression` or
/// `location` that starts with a resource type name (`Observation`, `Observation.code`), else
/// the one of `types` its texts name as a word, when exactly one is named.
fn outcome_type(outcome: &Value, types: &[String]) -> Option<String> {
    let issues = outcome["issue"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let paths = issues.iter().flat_map(|issue| {
        ["expression", "location"]
            .into_iter()
            .flat_map(|field| issue[field].as_array().into_iter().flatten())
            .filter_map(Value::as_str)
    });
    for path in paths {
        let head = path
            .split(|c: char| !c.is_ascii_alphanumeric())
            .next()
            .unwrap_or_default();
        if is_resource_type(head) {
            return Some(head.to_owned());
        }
    }
    let texts: Vec<&str> = issues
        .iter()
        .flat_map(|issue| {
            [
                issue["diagnostics"].as_str(),
                issue["details"]["text"].as_str(),
            ]
        })
        .flatten()
        .collect();
    let mut named = types.iter().filter(|t| {
        texts.iter().any(|text| {
            text.split(|c: char| !c.is_ascii_alphanumeric())
                .any(|word| word == t.as_str())
        })
    });
    match (named.next(), named.next()) {
        (Some(only), None) => Some(only.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn types() -> Vec<String> {
        vec!["Patient".into(), "Observation".into()]
    }

    #[test]
    fn the_type_comes_from_expression_location_or_text() {
        let by_expression = json!({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "processing", "diagnostics": "too many",
             "expression": ["Encounter.period"]}]});
        let warning = outcome_warning(&by_expression, &types()).unwrap();
        assert_eq!(warning.resource_type.as_deref(), Some("Encounter"));
        assert_eq!(warning.message, "error (processing): too many");
        assert_eq!(warning.kind, WarningKind::ServerError);

        let by_location = json!({"resourceType": "OperationOutcome", "issue": [
            {"code": "exception", "location": ["Observation[3]"]}]});
        assert_eq!(
            outcome_type(&by_location, &[]).as_deref(),
            Some("Observation")
        );

        let by_text = json!({"resourceType": "OperationOutcome", "issue": [
            {"code": "exception", "details": {"text": "Observation export failed: timeout"}}]});
        assert_eq!(
            outcome_type(&by_text, &types()).as_deref(),
            Some("Observation")
        );
        // Two requested types named, or a type only as part of a word: not told.
        let both = json!({"resourceType": "OperationOutcome", "issue": [
            {"code": "exception", "diagnostics": "Patient and Observation failed"}]});
        assert_eq!(outcome_type(&both, &types()), None);
        let inside = json!({"resourceType": "OperationOutcome", "issue": [
            {"code": "exception", "diagnostics": "PatientLinks failed"}]});
        assert_eq!(outcome_type(&inside, &types()), None);
        assert!(outcome_warning(&json!({"resourceType": "Patient"}), &types()).is_none());
    }
}
