//! What an export reports while it runs and when it is done.

use std::path::PathBuf;

use super::{DeletedResource, Manifest};
use crate::warning::Warning;

/// Where an export is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ExportPhase {
    /// Sending the kick-off request.
    #[default]
    KickOff,
    /// Polling the status URL while the server prepares the files.
    Waiting,
    /// Downloading the manifest's files.
    Downloading,
    /// Files downloaded; telling the server to delete the job.
    CleaningUp,
    /// Finished.
    Done,
}

/// A snapshot of an export's progress, published on a `tokio::sync::watch` channel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportProgress {
    /// The current phase.
    pub phase: ExportPhase,
    /// The server's `X-Progress` text from the last status poll.
    pub server_progress: Option<String>,
    /// Status polls so far.
    pub status_polls: u32,
    /// Whether this run picked up a job started by an earlier one.
    pub resumed: bool,
    /// Files in the manifest (output, deleted and error).
    pub files_total: usize,
    /// Files completely downloaded.
    pub files_done: usize,
    /// Bytes of NDJSON in the folder so far.
    pub bytes_downloaded: u64,
    /// Lines (resources) in the finished files so far.
    pub lines_downloaded: u64,
}

/// A finished data file of an export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadedFile {
    /// The resource type of every line.
    pub resource_type: String,
    /// Where it is: `<dir>/<Type>.<n>.ndjson`, `n` counting that type's files from 0.
    pub path: PathBuf,
    /// Its number of lines (resources).
    pub lines: u64,
    /// Its size in bytes.
    pub bytes: u64,
}

/// The result of a finished export.
#[derive(Clone, Debug)]
pub struct ExportOutcome {
    /// The server's manifest (all pages merged).
    pub manifest: Manifest,
    /// The data files, in manifest order.
    pub files: Vec<DownloadedFile>,
    /// Resources the server reports deleted since `_since`.
    pub deleted: Vec<DeletedResource>,
    /// What the export finished despite: the OperationOutcomes of the manifest's `error` files.
    pub warnings: Vec<Warning>,
    /// Whether the export was started over once because its files had expired: the files a
    /// [`BulkClient::export_to_dir_streaming`](super::BulkClient::export_to_dir_streaming)
    /// handed over before were another export's.
    pub restarted: bool,
}
