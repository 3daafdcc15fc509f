//! The crate's one error type.
//!
//! Errors say what failed and where: a URL without query secrets, an HTTP status with the server's
//! OperationOutcome text, a file and line number. Secrets never appear in them.
//!
//! # Kinds and sources
//!
//! A variant says what KIND of failure it is (a configuration that cannot work, a refused token
//! request, a missing table...); the error it grew from, if any, is its
//! [`source`](std::error::Error::source), kept whole rather than flattened into text, so that a
//! program can look down the chain for what it needs (the gRPC mapping of the Flight SQL server
//! does: a refused connection deep inside a query's error makes it `UNAVAILABLE`).
//!
//! # Printing
//!
//! The [`Display`](std::fmt::Display) of every variant is whole: it ends with the text of its
//! source and of the causes below that which the source's own text leaves out (reqwest says
//! "error sending request" and keeps "connection refused" in its source). Print an error with
//! `{}` alone, as the `fhirflight` command does; walking [`source`](std::error::Error::source)
//! as well would print the causes twice.

use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;

/// The result type of every fallible fhirflight function.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error an [`Error`] grew from, of any type.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong in fhirflight.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Configuration that cannot work (a missing option, a bad URL, an unknown algorithm), or a
    /// resource of this process it needs (a listening socket, a signal handler).
    #[error("configuration: {message}{}", Caused::opt(source))]
    Config {
        /// What is wrong, and where (the option, the file).
        message: String,
        /// The error behind it (a parse error, an I/O error), if any.
        source: Option<BoxError>,
    },

    /// A file could not be read or written.
    #[error("{}{}", path.display(), Caused::of(source))]
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
    #[error("view {view}: {msg}{}", Caused::opt(source))]
    View {
        /// The view's name or resource type.
        view: String,
        /// What is wrong, with the JSON path of the element when known.
        msg: String,
        /// The error behind it (a resource that is not JSON, a FHIRPath error), if any.
        source: Option<BoxError>,
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
    #[error("{method} {url}{}", Caused::of(source))]
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

    /// SMART Backend Services, on this side: a key that cannot be loaded or used, a client
    /// assertion that cannot be signed.
    #[error("SMART auth: {message}{}", Caused::opt(source))]
    Auth {
        /// What is wrong (with the key file's path when there is one).
        message: String,
        /// The error behind it (a PEM, JWK or signing error), if any.
        source: Option<BoxError>,
    },

    /// SMART Backend Services, on the server's side: the token endpoint gave no token. It refused
    /// the client (its HTTP error is the source), could not be reached (the transport error is),
    /// or answered something that is not a token.
    #[error("SMART auth: {message}{}", Caused::opt(source))]
    Token {
        /// What failed (with the token endpoint's URL when the source does not name it).
        message: String,
        /// The error behind it, if any: an [`Error::Http`], [`Error::Transport`] or
        /// [`Error::Tls`] of the token request, or whatever kept the request from being sent.
        source: Option<BoxError>,
    },

    /// A server's response breaks the FHIR Bulk Data protocol (a missing header, a bad manifest).
    #[error("{url}: {message}{}", Caused::opt(source))]
    Protocol {
        /// The URL, query secrets redacted.
        url: String,
        /// What was wrong.
        message: String,
        /// The error behind it (a JSON or URL parse error), if any.
        source: Option<BoxError>,
    },
    /// A query failed in DataFusion (planning or execution).
    #[error(transparent)]
    DataFusion(datafusion::error::DataFusionError),

    /// Arrow could not build or write a record batch.
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),

    /// A Parquet file could not be written or read.
    #[error(transparent)]
    Parquet(#[from] datafusion::parquet::errors::ParquetError),

    /// A client gave no credentials, or wrong ones.
    #[error("unauthenticated: {message}{}", Caused::opt(source))]
    Unauthenticated {
        /// What is wrong, and what to do about it.
        message: String,
        /// The error behind it (why a bearer token is invalid), if any.
        source: Option<BoxError>,
    },

    /// A client may not do what it asked (its role does not allow it).
    #[error("permission denied: {message}")]
    PermissionDenied {
        /// What was refused, and which role it needs.
        message: String,
    },

    /// A request named something that does not exist (a table, a catalog, an export).
    #[error("{what} {name} not found{}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    NotFound {
        /// What kind of thing: `table`, `FHIR catalog`, `export`.
        what: &'static str,
        /// Its name as the request gave it, quoted (`'fhir.r4.Encounter'`, `"fhir/7"`).
        name: String,
        /// Why, or what does exist, when that helps.
        reason: Option<String>,
    },

    /// A request that cannot be served as sent (a malformed handle, a bad parameter batch).
    #[error("invalid request: {message}{}", Caused::opt(source))]
    InvalidRequest {
        /// What is wrong.
        message: String,
        /// The error behind it (a decoding error), if any.
        source: Option<BoxError>,
    },

    /// The Flight SQL server's transport (listener, TLS setup) failed.
    #[cfg(feature = "flight")]
    #[cfg_attr(docsrs, doc(cfg(feature = "flight")))]
    #[error("Flight SQL server{}", Caused::of(.0))]
    FlightTransport(#[from] tonic::transport::Error),

    /// The local snapshot store failed: an unreadable manifest, Parquet or NDJSON file.
    #[error("snapshot: {message}{}", Caused::opt(source))]
    Snapshot {
        /// What failed, and where (the file, the snapshot).
        message: String,
        /// The error behind it (an I/O, JSON or Parquet error, a failed task), if any.
        source: Option<BoxError>,
    },

    /// A limit of this server was reached (exports started per user): not now, later.
    #[error("{message}")]
    ResourceExhausted {
        /// Which limit, and when the request may be made again.
        message: String,
    },

    /// An export shared by several queries failed; each of them gets this error.
    #[error("{0}")]
    Shared(#[source] std::sync::Arc<Error>),
}

/// `": "` and the text of an error's source, with the causes below it that this text leaves out
/// (see [Printing](self#printing)); nothing when there is no source.
struct Caused<'a>(Option<&'a (dyn StdError + 'static)>);

impl<'a> Caused<'a> {
    fn of(source: &'a (dyn StdError + 'static)) -> Self {
        Caused(Some(source))
    }

    fn opt(source: &'a Option<BoxError>) -> Self {
        Caused(source.as_deref().map(|e| e as &(dyn StdError + 'static)))
    }
}

impl fmt::Display for Caused<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(source) = self.0 else {
            return Ok(());
        };
        let mut text = source.to_string();
        let mut cause = source.source();
        while let Some(error) = cause {
            let more = error.to_string();
            if !more.is_empty() && !text.contains(&more) {
                text.push_str(": ");
                text.push_str(&more);
            }
            cause = error.source();
        }
        write!(f, ": {text}")
    }
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

/// The pair of constructors of a `{ message, source }` variant: `$plain(message)` and
/// `$with(message, source)`.
macro_rules! message_constructors {
    ($($variant:ident: $plain:ident, $with:ident;)*) => {
        impl Error {
            $(
                #[doc = concat!("An [`Error::", stringify!($variant), "`] without a source.")]
                pub fn $plain(message: impl Into<String>) -> Self {
                    Error::$variant {
                        message: message.into(),
                        source: None,
                    }
                }

                #[doc = concat!("An [`Error::", stringify!($variant), "`] caused by `source`.")]
                pub fn $with(
                    message: impl Into<String>,
                    source: impl StdError + Send + Sync + 'static,
                ) -> Self {
                    Error::$variant {
                        message: message.into(),
                        source: Some(Box::new(source)),
                    }
                }
            )*
        }
    };
}

message_constructors! {
    Config: config, config_with;
    Auth: auth, auth_with;
    Snapshot: snapshot, snapshot_with;
    InvalidRequest: invalid_request, invalid_request_with;
}

impl From<datafusion::error::DataFusionError> for Error {
    /// The DataFusion error, or the crate's own error it carries: a failed export reaches a
    /// query as DataFusion's `External`, and unwrapped it shows once, with its own kind.
    fn from(error: datafusion::error::DataFusionError) -> Self {
        use datafusion::error::DataFusionError;
        match error {
            DataFusionError::External(inner) => match inner.downcast::<Error>() {
                Ok(own) => *own,
                Err(other) => Error::DataFusion(DataFusionError::External(other)),
            },
            other => Error::DataFusion(other),
        }
    }
}

/// Constructors that keep call sites on one line: `Error::config("...")` where the message is the
/// whole story, `Error::config_with("...", e)` where an error `e` lies behind it.
impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`Error::Unauthenticated`] without a source.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Error::Unauthenticated {
            message: message.into(),
            source: None,
        }
    }

    /// An [`Error::PermissionDenied`].
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Error::PermissionDenied {
            message: message.into(),
        }
    }

    /// An [`Error::NotFound`]: `what` named `name` (quoted as it should show), with no reason.
    pub fn not_found(what: &'static str, name: impl Into<String>) -> Self {
        Error::NotFound {
            what,
            name: name.into(),
            reason: None,
        }
    }

    /// An [`Error::Protocol`] about `url` (redacted), without a source.
    pub fn protocol(url: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Protocol {
            url: url.into(),
            message: message.into(),
            source: None,
        }
    }

    /// An [`Error::Protocol`] about `url` (redacted), caused by `source`.
    pub fn protocol_with(
        url: impl Into<String>,
        message: impl Into<String>,
        source: impl StdError + Send + Sync + 'static,
    ) -> Self {
        Error::Protocol {
            url: url.into(),
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

impl From<crate::chunks::SourceError> for Error {
    fn from(e: crate::chunks::SourceError) -> Self {
        Error::Io {
            path: e.source_name.into(),
            source: e.source,
        }
    }
}

impl From<crate::ndjson::ReadError> for Error {
    fn from(e: crate::ndjson::ReadError) -> Self {
        match e {
            crate::ndjson::ReadError::Decode(e) => e.into(),
            crate::ndjson::ReadError::Source(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// An error whose text leaves its cause out (as reqwest's does).
    #[derive(Debug, thiserror::Error)]
    #[error("error sending request")]
    struct Terse(#[source] std::io::Error);

    #[test]
    fn a_bad_key_file_keeps_the_parser_error_as_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        std::fs::write(
            &path,
            "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = crate::smart::SigningKey::from_file(&path, None).unwrap_err();
        let Error::Auth { message, source } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(message, &format!("{}: PEM key", path.display()));
        // The chain: the file's PEM key, the PEM parser's own error.
        let parser = source.as_deref().expect("the parser's error is the source");
        assert!(parser.downcast_ref::<Error>().is_none(), "{parser:?}");
        assert!(err.source().is_some());
        // Printed whole, each cause once.
        let text = err.to_string();
        let parser_text = parser.to_string();
        assert!(
            text.starts_with(&format!("SMART auth: {}: PEM key: ", path.display())),
            "{text}"
        );
        assert_eq!(text.matches(&parser_text).count(), 1, "{text}");
    }

    #[test]
    fn display_shows_every_cause_once() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let refused_text = refused.to_string();
        let err = Error::config_with("proxy http://proxy.example", Terse(refused));
        // The cause the source's text leaves out is added; a chain printed by Display alone.
        assert_eq!(
            err.to_string(),
            format!(
                "configuration: proxy http://proxy.example: error sending request: {refused_text}"
            )
        );
        // A source whose text already holds its causes adds nothing.
        let inner = Error::snapshot_with("manifest.json", std::io::Error::other("disk on fire"));
        let outer = Error::Shared(std::sync::Arc::new(Error::config_with("reading", inner)));
        assert_eq!(
            outer.to_string(),
            "configuration: reading: snapshot: manifest.json: disk on fire"
        );
        assert_eq!(outer.to_string().matches("disk on fire").count(), 1);
        // Without a source, the message is the whole story.
        assert_eq!(Error::config("no URL").to_string(), "configuration: no URL");
        assert!(Error::config("no URL").source().is_none());
    }

    #[test]
    fn ndjson_errors_convert_to_their_kinds() {
        let read = crate::ndjson::ReadError::Source(crate::ndjson::SourceError {
            source_name: "Patient.ndjson".into(),
            source: std::io::Error::other("truncated"),
        });
        let err = Error::from(read);
        assert!(matches!(&err, Error::Io { path, .. } if path.ends_with("Patient.ndjson")));
        assert_eq!(err.to_string(), "Patient.ndjson: truncated");
    }
}
