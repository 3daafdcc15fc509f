//! [`Outcome`]: the OperationOutcome error responses of every route, and FHIR JSON bodies.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// An OperationOutcome error response.
#[derive(Debug)]
pub(crate) struct Outcome {
    status: StatusCode,
    code: &'static str,
    diagnostics: String,
    retry_after: bool,
}

impl Outcome {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        diagnostics: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            diagnostics: diagnostics.into(),
            retry_after: false,
        }
    }

    /// 400 with issue code `invalid`.
    pub(crate) fn invalid(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", diagnostics)
    }

    pub(crate) fn not_found(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", diagnostics)
    }

    pub(crate) fn throttled() -> Self {
        Self {
            retry_after: true,
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                "demo fault: too many requests",
            )
        }
    }

    pub(crate) fn transient() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "transient",
            "demo fault: temporarily unavailable, retry",
        )
    }

    #[cfg(test)]
    pub(crate) fn diagnostics(&self) -> &str {
        &self.diagnostics
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        let body = json!({ "resourceType": "OperationOutcome",
            "issue": [{ "severity": "error", "code": self.code, "diagnostics": self.diagnostics }] });
        let mut response = (self.status, fhir_json(&body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = HeaderValue::from_static("Bearer error=\"invalid_token\"");
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        if self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("0"));
        }
        response
    }
}

/// A JSON body with `Content-Type: application/fhir+json`.
pub(super) fn fhir_json(value: &Value) -> impl IntoResponse + use<> {
    (
        [(header::CONTENT_TYPE, "application/fhir+json")],
        value.to_string(),
    )
}
