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

    /// The operation was cancelled (Ctrl-C, a cancelled export or query).
    #[error("cancelled")]
    Cancelled,

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
    /// A server answered with an error status (after any retries).
    #[error("{method} {url}: HTTP {status}: {message}")]
    Http {
        /// The request method.
        method: String,
        /// The URL, query secrets redacted.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The server's OperationOutcome (or OAuth error) text, or the start of its body.
        message: String,
    },

    /// A request could not be sent or its response not read (connection, TLS, timeout).
    #[error("{method} {url}: {source}")]
    Transport {
        /// The request method.
        method: String,
        /// The URL, query secrets redacted.
        url: String,
        /// The underlying error (its URL removed).
        source: reqwest::Error,
    },

    /// A TLS connection could not be set up: most often a certificate no trusted authority
    /// vouches for (a private CA needs its bundle), or one made out to another name.
    #[error("{method} {url}: TLS: {message}")]
    Tls {
        /// The request method.
        method: String,
        /// The URL, query secrets redacted.
        url: String,
        /// What TLS refused, with a hint at the fix.
        message: String,
    },

    /// SMART Backend Services: a key that cannot be loaded or used, or a token that cannot be had.
    #[error("SMART auth: {0}")]
    Auth(String),

    /// A server's response breaks the FHIR Bulk Data protocol (a missing header, a bad manifest).
    #[error("{url}: {message}")]
    Protocol {
        /// The URL, query secrets redacted.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// A query failed in DataFusion (planning or execution).
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),

    /// Arrow could not build or write a record batch.
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),

    /// A Parquet file could not be written or read.
    #[error(transparent)]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),

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
    #[cfg(feature = "flight")]
    #[cfg_attr(docsrs, doc(cfg(feature = "flight")))]
    #[error("Flight SQL server: {0}")]
    FlightTransport(#[from] tonic::transport::Error),

    /// The local snapshot store failed: an unreadable manifest, Parquet or NDJSON file.
    #[error("snapshot: {0}")]
    Snapshot(String),

    /// An export shared by several queries failed; each of them gets this error.
    #[error("{0}")]
    Shared(std::sync::Arc<Error>),
}

/// How many characters of a remote string [`quoted`] shows.
const QUOTED_CHARS: usize = 80;

/// `text` for an error message or a log line when it comes from outside (a server, a file):
/// quoted and escaped (`{:?}`), so it cannot forge lines or terminal escapes, and cut after
/// [`QUOTED_CHARS`] characters, so it cannot flood them.
pub(crate) fn quoted(text: &str) -> String {
    match text.char_indices().nth(QUOTED_CHARS) {
        Some((end, _)) => format!("{:?}…", &text[..end]),
        None => format!("{text:?}"),
    }
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
