//! Arrow Flight SQL service over the FHIR catalog.
