//! # fhirflight: SQL over FHIR Bulk Data
//!
//! A DataFusion catalog in which every FHIR resource type is a table. Touching a table runs a FHIR
//! Bulk Data `$export` (SMART Backend Services auth), streams the NDJSON output into Arrow record
//! batches with flattened columns, and keeps the result as a local snapshot. The same tables are
//! served over Arrow Flight SQL.
//!
//! # Embedding the catalog in a DataFusion application
//!
//! A [`FhirCatalog`] reads a [`FhirSource`](catalog::FhirSource): a live Bulk Data server
//! ([`BulkSource`](catalog::BulkSource) over a [`BulkClient`]) or a folder of NDJSON files from an
//! earlier export ([`LocalFolder`](catalog::LocalFolder)). Register it in your own
//! `SessionContext` and query it with [`catalog::sql`], which runs ONE export for all the FHIR
//! tables a statement needs:
//!
//! ```no_run
//! # async fn demo() -> fhirflight::Result<()> {
//! use std::sync::Arc;
//! use datafusion::prelude::SessionContext;
//! use fhirflight::bulk::{BulkClient, ClientOptions};
//! use fhirflight::catalog::{self, BulkSource};
//! use fhirflight::smart::{SigningKey, SmartConfig};
//! use fhirflight::{CatalogOptions, FhirCatalog};
//!
//! let key = SigningKey::from_file("/secure/key.jwks.json", None)?;
//! let auth = SmartConfig::new("my-client", key);
//! let base = "https://ehr.example.org/fhir".parse().expect("a URL");
//! let client = BulkClient::try_new(base, Some(auth), ClientOptions::default()).await?;
//!
//! let options = CatalogOptions::default().with_cache_dir("/var/cache/fhirflight");
//! let fhir = FhirCatalog::try_new(Arc::new(BulkSource::new(client)), options.clone()).await?;
//! let ctx = SessionContext::new();
//! ctx.register_catalog("ehr", Arc::new(fhir));
//! catalog::register_functions(&ctx, options); // STORED AS FHIR, fhir_refresh
//! catalog::sql(&ctx, "SELECT gender, count(*) FROM ehr.fhir.Patient GROUP BY gender")
//!     .await?
//!     .show()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Or build the very session the `fhirflight` command uses from its configuration model
//! (`[server]`, `[servers.<name>]`, `[views.<name>]`): see [`config`].
//!
//! ```no_run
//! # #[cfg(feature = "config")]
//! # async fn demo() -> fhirflight::Result<()> {
//! let session = fhirflight::Config::load("fhirflight.toml")?.session().await?;
//! fhirflight::catalog::sql(session.context(), "SELECT count(*) FROM Patient")
//!     .await?
//!     .show()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Cargo features
//!
//! All on by default; an application that only embeds the catalog depends on
//! `fhirflight = { version = "0.1", default-features = false }` and adds what it needs.
//!
//! - `flight`: the Arrow Flight SQL server ([`flight`]; arrow-flight, tonic, prost).
//! - `demo`: the embedded demo Bulk Data server and synthetic data ([`demo`]; axum).
//! - `config`: reading [`Config`] from TOML ([`Config::load`]; toml). The model itself and the
//!   session assembly are always there.
//! - `cluster`: statements run on an Apache DataFusion Ballista cluster, and its scheduler and
//!   executor processes ([`cluster`]; ballista-core, ballista-scheduler, ballista-executor).
//! - `cli`: the `fhirflight` binary (clap, indicatif, tracing-subscriber); implies the four
//!   above.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bulk;
pub mod catalog;
mod chunks;
#[cfg(feature = "cluster")]
#[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
pub mod cluster;
pub mod config;
#[cfg(feature = "demo")]
#[cfg_attr(docsrs, doc(cfg(feature = "demo")))]
pub mod demo;
pub mod error;
pub mod fhirpath;
#[cfg(feature = "flight")]
#[cfg_attr(docsrs, doc(cfg(feature = "flight")))]
pub mod flight;
mod http;
mod lock_file;
pub mod ndjson;
mod private_dir;
pub mod r4;
mod redacted;
pub mod size;
pub mod smart;
pub mod snapshot;
pub mod time;
pub mod view;
pub mod warning;

pub use bulk::{BulkClient, ExportLevel, ExportRequest};
pub use catalog::{CatalogOptions, FhirCatalog, Freshness};
pub use config::{Config, ServerConfig, Session, SessionBuilder};
pub use error::{Error, Result};
