//! Bulk Data client: kick-off, status polling, manifest, downloads, job lifecycle.
//!
//! Implements the client side of [FHIR Bulk Data Access v2](https://hl7.org/fhir/uv/bulkdata/):
//! [`BulkClient::export_to_dir`] runs a whole `$export` into a folder of NDJSON files, streaming
//! every file to disk, retrying what is worth retrying and cleaning the job up on the server.
//! No Arrow here: the output is the server's NDJSON bytes and its [`Manifest`].

mod client;
mod download;
mod manifest;
mod options;
mod origins;
mod progress;
mod request;

pub use client::BulkClient;
pub use manifest::{DeletedResource, Manifest, ManifestLink, OutputFile, deleted_resources};
pub use options::ClientOptions;
pub use progress::{DownloadedFile, ExportOutcome, ExportPhase, ExportProgress};
pub use request::{ExportLevel, ExportRequest, KickoffMethod, ParseExportLevelError};
