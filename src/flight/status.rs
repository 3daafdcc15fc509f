//! The one place where errors become gRPC statuses.
//!
//! The code says what the CLIENT can do about a failure, and it comes from the KIND of error
//! (its type and variant), found by walking the source chain down through
//! `DataFusionError::External`, `Context`, `Shared`, [`Error::Shared`] and the like: never from
//! the text of a message.
//!
//! | failure | code | what the client can do |
//! | --- | --- | --- |
//! | [`Error::Unauthenticated`] | `UNAUTHENTICATED` | log in again |
//! | [`Error::PermissionDenied`] (a read user adding a view, refreshing, cancelling) | `PERMISSION_DENIED` | ask an admin |
//! | [`Error::NotFound`] (a table, a catalog, an export) | `NOT_FOUND` | name something that exists |
//! | [`Error::InvalidRequest`], [`Error::View`], [`Error::FhirPath`]; DataFusion `SQL`, `SchemaError`, `Plan` | `INVALID_ARGUMENT` | fix the request |
//! | DataFusion `NotImplemented` | `UNIMPLEMENTED` | ask something else |
//! | DataFusion `ResourcesExhausted` | `RESOURCE_EXHAUSTED` | ask for less, or later |
//! | [`Error::Cancelled`] | `CANCELLED` | nothing: it was asked for |
//! | the FHIR server or its token endpoint failed: [`Error::Http`] (any status), [`Error::Transport`], [`Error::Tls`], [`Error::Protocol`], [`Error::Token`], a refused or broken connection (`std::io::Error`, `reqwest::Error`) | `UNAVAILABLE` | nothing in the request is wrong: retry later, or tell the operator |
//! | this server's configuration: [`Error::Config`], [`Error::Auth`] (a key that cannot be loaded or sign) | `FAILED_PRECONDITION` | nothing until the operator fixes the configuration; retrying does not help |
//! | anything else ([`Error::Snapshot`], [`Error::Ndjson`], an I/O error of the local store, a bug) | `INTERNAL` | report it |
//!
//! [`Error::Token`] is `UNAVAILABLE` unless its source says otherwise: a token request that
//! could not even be signed (a bad local key, [`Error::Auth`]) is `FAILED_PRECONDITION`.
//! [`Error::ResourceExhausted`] (a user's export budget spent) is `RESOURCE_EXHAUSTED`.
//!
//! # What the client reads, what the log keeps
//!
//! A client's message is the part of the error that is its business, rendered from the error's
//! structure (its variants and fields, never by scrubbing text): the HTTP status and the FHIR
//! server's OperationOutcome text, the table, the SQL error, the file name and line of a bad
//! NDJSON line, the OS's word for a failed file operation. It never holds this server's
//! paths (cache, snapshots, keys, users file) or the FHIR server's URLs (base, status, files,
//! token endpoint), nor the messages of this server's configuration: those go to the server
//! log with the whole error. Both carry the same error id (`[error id 5f0c2a9e13b4d7a6]`), so an
//! operator finds the details of what a user reports.

use std::error::Error as StdError;
use std::path::Path;

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use tonic::{Code, Status};

use crate::Error;

/// The gRPC status for `err`: the code comes from the first error in its source chain that says
/// what kind of failure it is, the message is what the client may read of it, with an error id;
/// the whole error goes to the server log under that id (see the [module docs](self)).
pub(crate) fn status<E: StdError + 'static>(err: E) -> Status {
    let err: &(dyn StdError + 'static) = &err;
    let code = chain_code(err).unwrap_or(Code::Internal);
    let whole = match err.downcast_ref::<DataFusionError>() {
        Some(e) => e.strip_backtrace(),
        None => err.to_string(),
    };
    let id = format!("{:016x}", rand::random::<u64>());
    match code {
        Code::Internal => tracing::error!(error_id = %id, ?code, "{whole}"),
        Code::Unavailable | Code::FailedPrecondition => {
            tracing::warn!(error_id = %id, ?code, "{whole}")
        }
        _ => tracing::debug!(error_id = %id, ?code, "{whole}"),
    }
    Status::new(code, format!("{} [error id {id}]", told(err)))
}

/// What a client may read of `err` (see the [module docs](self)).
pub(crate) fn told(err: &(dyn StdError + 'static)) -> String {
    if let Some(e) = err.downcast_ref::<Error>() {
        return told_crate(e);
    }
    if let Some(e) = err.downcast_ref::<DataFusionError>() {
        return match e {
            DataFusionError::External(inner) => told(inner.as_ref()),
            // `as_ref`: a `Box<DataFusionError>` is an error too, one that downcasts to nothing.
            DataFusionError::Context(context, inner) => {
                format!("{context}: {}", told(inner.as_ref()))
            }
            DataFusionError::Shared(inner) => told(inner.as_ref()),
            DataFusionError::Diagnostic(_, inner) => told(inner.as_ref()),
            DataFusionError::Collection(all) => all.first().map_or_else(String::new, |e| told(e)),
            DataFusionError::ArrowError(inner, _) => told(inner.as_ref()),
            DataFusionError::IoError(inner) => told(inner),
            // Its own files, named in its errors.
            DataFusionError::ParquetError(_) | DataFusionError::ObjectStore(_) => {
                "reading the local snapshot store failed".into()
            }
            // SQL, Plan, Schema, Execution...: about the statement.
            other => other.strip_backtrace(),
        };
    }
    if let Some(e) = err.downcast_ref::<ArrowError>() {
        return match e {
            ArrowError::ExternalError(inner) => told(inner.as_ref()),
            ArrowError::IoError(_, inner) => told(inner),
            other => other.to_string(),
        };
    }
    if let Some(e) = err.downcast_ref::<std::io::Error>() {
        return match e.get_ref() {
            // The OS's words ("No such file or directory (os error 2)") name no file.
            _ if e.raw_os_error().is_some() => e.to_string(),
            Some(inner) if inner.is::<Error>() || inner.is::<reqwest::Error>() => told(inner),
            _ => e.kind().to_string(),
        };
    }
    if let Some(e) = err.downcast_ref::<reqwest::Error>() {
        return told_reqwest(e);
    }
    if let Some(e) = err.downcast_ref::<Status>() {
        return e.message().to_owned();
    }
    // Parsers, encoders, tasks: their text is about the data or the request.
    err.to_string()
}

/// What a client may read of a crate error: everything but local paths, upstream URLs and
/// this server's configuration.
fn told_crate(e: &Error) -> String {
    let source = |source: &Option<crate::error::BoxError>| {
        source
            .as_deref()
            .map(|s| format!(": {}", told(s)))
            .unwrap_or_default()
    };
    match e {
        Error::Io { source, .. } => format!("a local file operation failed: {}", told(source)),
        Error::Ndjson(bad) => {
            let file = Path::new(&bad.source_name)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("bad NDJSON: {file} line {}: {}", bad.line, bad.message)
        }
        Error::Http {
            method,
            status,
            message,
            ..
        } => format!("upstream {method}: HTTP {status}: {message}"),
        Error::Transport { method, source, .. } => {
            format!("upstream {method}: {}", told_reqwest(source))
        }
        Error::Tls { method, .. } => {
            format!("upstream {method}: the TLS connection could not be set up")
        }
        Error::Protocol { .. } => "the FHIR server's answer breaks the Bulk Data protocol".into(),
        Error::Auth { .. } => "SMART auth: this server's key cannot be used".into(),
        Error::Token { source: s, .. } => format!("SMART auth: no access token{}", source(s)),
        Error::Config { .. } => "this server's configuration does not allow it".into(),
        Error::Snapshot { source: s, .. } => {
            format!("the local snapshot store failed{}", source(s))
        }
        Error::FlightTransport(_) => "the Flight SQL server's transport failed".into(),
        Error::DataFusion(inner) => told(inner),
        Error::Arrow(inner) => told(inner),
        Error::Parquet(_) => "reading the local snapshot store failed".into(),
        Error::Shared(inner) => told_crate(inner),
        // About the request, or said for the client.
        Error::Cancelled
        | Error::FhirPath { .. }
        | Error::View { .. }
        | Error::Unauthenticated { .. }
        | Error::PermissionDenied { .. }
        | Error::NotFound { .. }
        | Error::InvalidRequest { .. }
        | Error::ResourceExhausted { .. } => e.to_string(),
    }
}

/// What failed in a request, without its URL (which reqwest's own text carries): the kind,
/// and the OS's words for a failed connection.
fn told_reqwest(e: &reqwest::Error) -> String {
    let what = if e.is_connect() {
        "could not connect"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "the response broke off"
    } else {
        "the request failed"
    };
    let os = std::iter::successors(e.source(), |&e| e.source())
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .find(|e| e.raw_os_error().is_some());
    match os {
        Some(os) => format!("{what}: {os}"),
        None => what.into(),
    }
}

/// The code of the first error in `err`'s source chain that implies one.
fn chain_code(err: &(dyn StdError + 'static)) -> Option<Code> {
    std::iter::successors(Some(err), |&e| e.source()).find_map(code_of)
}

/// The code that `err` itself implies, or `None` to look at its source.
fn code_of(err: &(dyn StdError + 'static)) -> Option<Code> {
    if let Some(e) = err.downcast_ref::<Error>() {
        return crate_code(e);
    }
    if let Some(e) = err.downcast_ref::<DataFusionError>() {
        return match e {
            DataFusionError::SQL(..)
            | DataFusionError::SchemaError(..)
            | DataFusionError::Plan(_) => Some(Code::InvalidArgument),
            DataFusionError::NotImplemented(_) => Some(Code::Unimplemented),
            DataFusionError::ResourcesExhausted(_) => Some(Code::ResourceExhausted),
            // External, Context, Shared, ArrowError...: what they wrap says.
            _ => None,
        };
    }
    if let Some(e) = err.downcast_ref::<reqwest::Error>() {
        return (e.is_connect() || e.is_timeout()).then_some(Code::Unavailable);
    }
    if let Some(e) = err.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind::*;
        return matches!(
            e.kind(),
            ConnectionRefused
                | ConnectionReset
                | ConnectionAborted
                | NotConnected
                | TimedOut
                | HostUnreachable
                | NetworkUnreachable
        )
        .then_some(Code::Unavailable);
    }
    err.downcast_ref::<Status>().map(Status::code)
}

/// The code of a crate error (see the table in the [module docs](self)).
fn crate_code(e: &Error) -> Option<Code> {
    match e {
        Error::Unauthenticated { .. } => Some(Code::Unauthenticated),
        Error::PermissionDenied { .. } => Some(Code::PermissionDenied),
        Error::NotFound { .. } => Some(Code::NotFound),
        Error::InvalidRequest { .. } | Error::View { .. } | Error::FhirPath { .. } => {
            Some(Code::InvalidArgument)
        }
        Error::Config { .. } | Error::Auth { .. } => Some(Code::FailedPrecondition),
        // The FHIR server (or its authorization server) failed: nothing the client sent is wrong.
        Error::Http { .. }
        | Error::Transport { .. }
        | Error::Tls { .. }
        | Error::Protocol { .. } => Some(Code::Unavailable),
        // No token: the token endpoint failed, unless what kept the request from leaving says
        // otherwise (a key that cannot sign is this server's configuration).
        Error::Token { source, .. } => Some(
            source
                .as_deref()
                .and_then(|s| chain_code(s))
                .unwrap_or(Code::Unavailable),
        ),
        Error::Cancelled => Some(Code::Cancelled),
        Error::ResourceExhausted { .. } => Some(Code::ResourceExhausted),
        // Transparent wrappers: their `source()` skips the error they wrap, so look at it here.
        Error::Shared(inner) => chain_code(inner.as_ref()),
        Error::DataFusion(inner) => chain_code(inner),
        Error::Arrow(inner) => chain_code(inner),
        Error::Parquet(inner) => chain_code(inner),
        // Io, Snapshot, Ndjson, FlightTransport: look at the source, else INTERNAL.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn http(status: u16) -> Error {
        Error::Http {
            method: "POST".into(),
            url: "https://auth.example/token".into(),
            status,
            message: "invalid_client: unknown key".into(),
        }
    }

    #[test]
    fn codes_follow_the_source_chain() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let wrapped = DataFusionError::External(Box::new(refused)).context("scanning Patient");
        let wrapped = status(wrapped);
        assert_eq!(wrapped.code(), Code::Unavailable);
        assert!(
            wrapped.message().contains("scanning Patient"),
            "{}",
            wrapped.message()
        );

        let bad = DataFusionError::Plan("Invalid function 'nope'".into());
        assert_eq!(status(bad).code(), Code::InvalidArgument);
        let unknown_export = DataFusionError::External(Box::new(Error::not_found("export", "7")));
        assert_eq!(status(unknown_export).code(), Code::NotFound);
        let internal = DataFusionError::Internal("bug".into());
        assert_eq!(status(internal).code(), Code::Internal);
    }

    #[test]
    fn a_missing_table_is_not_found_by_its_kind_not_its_text() {
        let missing = Error::not_found("table", "'fhir.r4.Nope'");
        assert_eq!(missing.to_string(), "table 'fhir.r4.Nope' not found");
        let planned = DataFusionError::External(Box::new(missing));
        let found = status(planned);
        assert_eq!(found.code(), Code::NotFound);
        assert!(
            found.message().contains("table 'fhir.r4.Nope' not found"),
            "{}",
            found.message()
        );
        // The same words in a planning error of another kind are just a planning error.
        let text = DataFusionError::Plan("table 'fhir.r4.Nope' not found".into());
        assert_eq!(status(text).code(), Code::InvalidArgument);
    }

    #[test]
    fn a_refused_token_request_is_unavailable_like_a_refused_fhir_server() {
        for refusal in [http(401), http(400), http(503)] {
            let token = Error::Token {
                message: "token request failed".into(),
                source: Some(Box::new(refusal)),
            };
            // As a query meets it: an export shared by several queries, inside DataFusion.
            let shared = Error::Shared(Arc::new(token));
            let query = DataFusionError::Shared(Arc::new(
                DataFusionError::External(Box::new(shared)).context("planning"),
            ));
            let status = status(query);
            assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
            // The refusal without the token endpoint's URL, which only the log has.
            let told = status.message();
            assert!(
                told.starts_with("planning: SMART auth: no access token: upstream POST: HTTP ")
                    && told.contains("invalid_client: unknown key [error id "),
                "{told}"
            );
            assert!(!told.contains("auth.example"), "{told}");
        }
        // A token endpoint that answers something that is not a token.
        let junk = Error::Token {
            message: "https://auth.example/token: token_type \"mac\", expected bearer".into(),
            source: None,
        };
        assert_eq!(status(junk).code(), Code::Unavailable);
        // The FHIR server itself.
        assert_eq!(status(http(500)).code(), Code::Unavailable);
    }

    #[test]
    fn clients_read_no_local_path_no_upstream_url_and_no_configuration() {
        let told = |err: Error| {
            let status = status(DataFusionError::External(Box::new(err)));
            let message = status.message().to_owned();
            let (text, id) = message.split_once(" [error id ").expect("an error id");
            assert_eq!(id.len(), 17, "{message}");
            text.to_owned()
        };
        let missing = std::io::Error::from_raw_os_error(2);
        let missing_text = missing.to_string();
        assert_eq!(
            told(Error::io(
                "/var/cache/fhirflight/Patient/0001.parquet",
                missing
            )),
            format!("a local file operation failed: {missing_text}")
        );
        let bad_line = crate::ndjson::DecodeError {
            source_name: "/var/cache/fhirflight/staging/Patient.000.ndjson".into(),
            line: 7,
            kind: crate::ndjson::DecodeErrorKind::InvalidJson,
            message: "expected value at byte 3".into(),
        };
        assert_eq!(
            told(Error::Ndjson(bad_line)),
            "bad NDJSON: Patient.000.ndjson line 7: expected value at byte 3"
        );
        let snapshot = Error::snapshot_with(
            "/var/cache/fhirflight/Patient/manifest.json",
            std::io::Error::from_raw_os_error(13),
        );
        let denied = std::io::Error::from_raw_os_error(13).to_string();
        assert_eq!(
            told(snapshot),
            format!("the local snapshot store failed: {denied}")
        );
        let config = Error::config("users file /etc/fhirflight/users: line 3");
        assert_eq!(
            told(config),
            "this server's configuration does not allow it"
        );
        let key = Error::auth("/etc/fhirflight/key.pem: not a PEM key");
        assert_eq!(told(key), "SMART auth: this server's key cannot be used");
        let protocol = Error::protocol("https://ehr.example/status/42", "no Content-Location");
        assert_eq!(
            told(protocol),
            "the FHIR server's answer breaks the Bulk Data protocol"
        );
        // What the client sent or may know is told whole.
        let missing_table = Error::not_found("table", "'fhir.r4.Nope'");
        assert_eq!(told(missing_table), "table 'fhir.r4.Nope' not found");
    }

    #[test]
    fn a_key_that_cannot_sign_is_this_servers_configuration() {
        let unsigned = Error::auth_with(
            "cannot sign the client assertion with RS384",
            std::io::Error::other("bad key"),
        );
        assert_eq!(
            status(Error::auth("PEM key: no block")).code(),
            Code::FailedPrecondition
        );
        // The token request could not even be sent: its cause decides, not the token endpoint.
        let token = Error::Token {
            message: "token request failed".into(),
            source: Some(Box::new(unsigned)),
        };
        let query = DataFusionError::External(Box::new(token));
        assert_eq!(status(query).code(), Code::FailedPrecondition);
    }

    #[test]
    fn transparent_wrappers_are_looked_into() {
        let plan = Error::DataFusion(DataFusionError::Plan("bad".into()));
        assert_eq!(status(plan).code(), Code::InvalidArgument);
        let external = Error::DataFusion(DataFusionError::External(Box::new(Error::Cancelled)));
        assert_eq!(status(external).code(), Code::Cancelled);
    }
}
