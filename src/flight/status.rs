//! The one place where errors become gRPC statuses.

use std::error::Error as StdError;

use datafusion::error::DataFusionError;
use tonic::{Code, Status};

use crate::Error;

/// The gRPC status for `err`: the code comes from the first error in its source chain that says
/// what kind of failure it is (a crate error, a DataFusion planning error, a refused connection
/// to the FHIR server...), the message is the whole error's text.
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
        return match e {
            Error::Unauthenticated(_) => Some(Code::Unauthenticated),
            Error::NotFound(_) => Some(Code::NotFound),
            Error::InvalidRequest(_) => Some(Code::InvalidArgument),
            Error::Config(_) => Some(Code::FailedPrecondition),
            // The FHIR server could not be reached securely.
            Error::Tls { .. } => Some(Code::Unavailable),
            Error::View { .. } => Some(Code::InvalidArgument),
            Error::Cancelled => Some(Code::Cancelled),
            // A shared export's error: the code of what went wrong in it.
            Error::Shared(inner) => chain_code(inner.as_ref()),
            _ => None,
        };
    }
    if let Some(e) = err.downcast_ref::<DataFusionError>() {
        return match e {
            DataFusionError::SQL(..) | DataFusionError::SchemaError(..) => {
                Some(Code::InvalidArgument)
            }
            DataFusionError::Plan(m) if m.starts_with("table ") && m.ends_with(" not found") => {
                Some(Code::NotFound)
            }
            DataFusionError::Plan(_) => Some(Code::InvalidArgument),
            DataFusionError::NotImplemented(_) => Some(Code::Unimplemented),
            DataFusionError::ResourcesExhausted(_) => Some(Code::ResourceExhausted),
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

#[cfg(test)]
mod tests {
    use super::*;

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

        let missing = DataFusionError::Plan("table 'fhir.r4.Nope' not found".into());
        assert_eq!(status(missing).code(), Code::NotFound);
        let bad = DataFusionError::Plan("Invalid function 'nope'".into());
        assert_eq!(status(bad).code(), Code::InvalidArgument);
        let unknown_export =
            DataFusionError::External(Box::new(Error::NotFound("export 7".into())));
        assert_eq!(status(unknown_export).code(), Code::NotFound);
        let internal = DataFusionError::Internal("bug".into());
        assert_eq!(status(internal).code(), Code::Internal);
    }
}
