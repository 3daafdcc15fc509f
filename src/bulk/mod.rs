//! Bulk Data client: kick-off, status polling, manifest, downloads, job lifecycle.
//!
//! Implements the client side of [FHIR Bulk Data Access v2](https://hl7.org/fhir/uv/bulkdata/):
//! [`BulkClient::export_to_dir`] runs a whole `$export` into a folder of NDJSON files, streaming
//! every file to disk as soon as the server lists it, retrying what is worth retrying, keeping
//! the job for the next run when the failure may go away and cleaning it up on the server when
//! the export is done (or cannot succeed).
//! No Arrow here: the output is the server's NDJSON bytes and its [`Manifest`].

mod client;
mod download;
mod error_file;
mod manifest;
mod options;
mod origins;
mod pages;
mod progress;
mod request;

pub use client::BulkClient;
pub(crate) use client::JOB_FILE;
#[cfg(feature = "cluster")]
pub(crate) use download::download_given;
pub use manifest::{DeletedResource, Manifest, ManifestLink, OutputFile, deleted_resources};
pub use options::ClientOptions;
pub use progress::{DownloadedFile, ExportOutcome, ExportPhase, ExportProgress};
pub use request::{ExportLevel, ExportRequest, KickoffMethod, ParseExportLevelError};
