//! Synthetic FHIR R4 generator and the embedded demo Bulk Data server.
//!
//! [`generate()`] makes a deterministic population shaped like Synthea R4 output; [`DemoServer`]
//! serves it the way a strict FHIR Bulk Data v2 server with SMART Backend Services does, so that
//! fhirflight runs on a fresh machine and every test has a real server to talk to.
//!
//! ```no_run
//! # async fn demo() -> fhirflight::Result<()> {
//! use fhirflight::demo::{DemoConfig, DemoServer};
//!
//! let server = DemoServer::start(DemoConfig::default().with_patients(10)).await?;
//! println!("FHIR base {}, client id {}", server.base_url(), server.credentials().client_id());
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod auth;
mod generate;
mod server;
mod tls;

pub use auth::{DEMO_CLIENT_ID, DemoCredentials, DemoKey};
pub use generate::{
    GenerateOptions, MAX_PROVENANCE_TARGETS, Population, Resource, generate, generate_with,
};
pub use server::{
    DemoConfig, DemoServer, DemoStats, Faults, ForeignOrigin, ForeignRequest, HOSTILE_TYPES,
    KickoffLevel, KickoffRecord, presigned,
};
