//! Synthetic FHIR R4 generator and the embedded demo Bulk Data server.
