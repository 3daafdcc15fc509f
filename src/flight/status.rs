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

use std::error::Error as StdError;

use datafusion::error::DataFusionError;
use tonic::{Code, Status};

use crate::Error;

/// The gRPC status for `err`: the code comes from the first error in its source chain that says
/// what kind of failure it is (see the [module docs](self)), the message is the whole error's
/// text.
pub(crate) fn status<E: StdError + 'static>(err: E) -> Status {
    let err: &(dyn StdError + 'static) = &err;
    let code = chain_code(err).unwrap_or(Code::Internal);
    let message = match err.downcast_ref::<DataFusionError>() {
        Some(e) => e.strip_backtrace(),
        None => err.to_string(),
    };
    if code == Code::Internal {
        tracing::error!(error = %message, "internal error");
    }
    Status::new(code, message)
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
            assert!(
                status.message().contains(
                    "SMART auth: token request failed: POST https://auth.example/token: HTTP"
                ),
                "{}",
                status.message()
            );
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
