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

    /// A client gave no credentials, or wrong ones.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),

    /// A request named something that does not exist (a table, an export).
    #[error("not found: {0}")]
    NotFound(String),

    /// A request that cannot be served as sent (a malformed handle, a bad parameter batch).
    #[error("invalid request: {0}")]
    InvalidRequest(String),

    /// The Flight SQL server's transport (listener, TLS setup) failed.
    #[error("Flight SQL server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
