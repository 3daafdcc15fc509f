//! DataFusion integration: FhirCatalog, FhirSchema, FhirTable, the table factory.
