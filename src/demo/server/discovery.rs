//! Discovery: the CapabilityStatement (`/fhir/metadata`) and the SMART configuration
//! (`/fhir/.well-known/smart-configuration`), which name the token endpoint.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::export::search_params;
use super::outcome::{Outcome, fhir_json};
use super::{HOSTILE_TYPES, Shared};

/// The CapabilityStatement: the stored types (less [`Faults::capability_omits`](super::Faults)),
/// each with the search parameters `_typeFilter` evaluates, and `_typeFilter` named in the
/// `export` operation's documentation (none of which with `filters_overfilter`).
pub(super) async fn metadata(State(state): State<Shared>) -> impl IntoResponse {
    let base = state.origin.join("fhir").expect("static");
    let store = state.store.read().expect("store");
    let faults = state.faults.lock().expect("faults").clone();
    let declares_search = !faults.filters_overfilter;
    let mut resources: Vec<Value> = store
        .types
        .iter()
        .filter(|(ty, _)| !faults.capability_omits.iter().any(|o| o == &**ty))
        .map(|(ty, _)| {
            let mut resource = json!({ "type": &**ty });
            if declares_search {
                let params: Vec<Value> = search_params(ty)
                    .map(|name| json!({ "name": name, "type": "token" }))
                    .collect();
                resource["searchParam"] = json!(params);
            }
            let definition = match &**ty {
                "Patient" => Some("patient-export"),
                "Group" => Some("group-export"),
                _ => None,
            };
            if let Some(definition) = definition {
                resource["operation"] = json!([{ "name": "export",
                    "definition": format!("http://hl7.org/fhir/uv/bulkdata/OperationDefinition/{definition}") }]);
            }
            resource
        })
        .collect();
    if faults.hostile_type_names {
        resources.extend(HOSTILE_TYPES.map(|t| json!({ "type": t })));
    }
    let mut rest = json!({ "mode": "server" });
    if state.config.require_auth {
        rest["security"] = json!({
            "extension": [{ "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [{ "url": "token", "valueUri": state.token_endpoint.as_str() }] }],
            "service": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR" }] }],
        });
    }
    rest["resource"] = json!(resources);
    let mut export = json!({ "name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export" });
    if declares_search {
        export["documentation"] =
            json!("Supports _since, _type, _elements, patient and _typeFilter.");
    }
    rest["operation"] = json!([export]);
    fhir_json(&json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2025-01-01",
        "kind": "instance",
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "software": { "name": "fhirflight demo server", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "fhirflight embedded demo Bulk Data server", "url": base.as_str() },
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [rest],
    }))
}

pub(super) async fn smart_configuration(State(state): State<Shared>) -> Response {
    if !state.config.require_auth {
        return Outcome::not_found("this demo server is open: no SMART authorization")
            .into_response();
    }
    axum::Json(json!({
        "token_endpoint": state.token_endpoint.as_str(),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["system/*.read", "system/*.rs"],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    }))
    .into_response()
}
