//! The crate's one error type.
//!
//! Errors say what failed and where: a URL without query secrets, an HTTP status with the server's
//! OperationOutcome text, a file and line number. Secrets never appear in them.

use std::path::PathBuf;

/// The result type of every fallible fhirflight function.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in fhirflight.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Configuration that cannot work (a missing option, a bad URL, an unknown algorithm).
    #[error("configuration: {0}")]
    Config(String),

    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A FHIRPath expression that does not compile or cannot be evaluated.
    #[error("FHIRPath `{expr}`{}: {msg}", pos.map(|p| format!(" at position {p}")).unwrap_or_default())]
    FhirPath {
        /// The expression text.
        expr: String,
        /// Byte offset in `expr` of a syntax error; `None` for errors met while evaluating.
        pos: Option<usize>,
        /// What is wrong.
        msg: String,
    },

    /// A ViewDefinition that is malformed, or whose data breaks its rules (a non-boolean `where`, several
    /// values in a column that is not a collection).
    #[error("view {view}: {msg}")]
    View {
        /// The view's name or resource type.
        view: String,
        /// What is wrong, with the JSON path of the element when known.
        msg: String,
    },
    /// A bad NDJSON line (or a schema the decoder cannot fill), with file and line number.
    #[error(transparent)]
    Ndjson(#[from] crate::ndjson::DecodeError),

    /// The local snapshot store failed: an unreadable manifest, Parquet or NDJSON file.
    #[error("snapshot: {0}")]
    Snapshot(String),

    /// An export shared by several queries failed; each of them gets this error.
    #[error("{0}")]
    Shared(std::sync::Arc<Error>),

    /// An export was cancelled (by a user, or because the process is stopping).
    #[error("export of {0} cancelled")]
    Cancelled(String),
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
