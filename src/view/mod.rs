//! SQL on FHIR v2 ViewDefinition runner.
