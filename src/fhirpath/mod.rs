//! FHIRPath, the subset SQL on FHIR needs, over `serde_json::Value`.
