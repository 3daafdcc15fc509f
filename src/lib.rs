//! # fhirflight: SQL over FHIR Bulk Data
//!
//! A DataFusion catalog in which every FHIR resource type is a table. Touching a table runs a FHIR
//! Bulk Data `$export` (SMART Backend Services auth), streams the NDJSON output into Arrow record
//! batches with flattened columns, and keeps the result as a local snapshot. The same tables are
//! served over Arrow Flight SQL.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod bulk;
pub mod catalog;
mod chunks;
pub mod demo;
pub mod error;
pub mod fhirpath;
pub mod flight;
mod http;
pub mod ndjson;
pub mod r4;
mod redacted;
pub mod smart;
pub mod snapshot;
pub mod view;

pub use error::{Error, Result};
