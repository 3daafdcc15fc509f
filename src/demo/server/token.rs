//! SMART Backend Services on the server's side: the token endpoint (`/auth/token`, a client
//! assertion for an access token) and the bearer-token check every other route starts with.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::outcome::Outcome;
use super::{ServerState, Shared};
use crate::demo::auth::Grant;

pub(super) async fn token(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    state.stats().token_requests += 1;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let result = if !content_type.starts_with("application/x-www-form-urlencoded") {
        Err(crate::demo::auth::OAuthError {
            error: "invalid_request",
            description: "the token request must be application/x-www-form-urlencoded".into(),
        })
    } else {
        let form: HashMap<String, String> =
            url::form_urlencoded::parse(&body).into_owned().collect();
        let lifetime = state.config.token_lifetime;
        state.tokens.lock().expect("tokens").token_request(
            &form,
            &state.clients,
            &state.token_endpoint,
            lifetime,
        )
    };
    let no_store = [
        (header::CACHE_CONTROL, "no-store"),
        (header::PRAGMA, "no-cache"),
    ];
    match result {
        Ok(body) => {
            state.stats().tokens_issued += 1;
            (no_store, axum::Json(body)).into_response()
        }
        Err(e) => {
            let status = StatusCode::from_u16(e.status()).expect("400 or 401");
            (status, no_store, axum::Json(e.body())).into_response()
        }
    }
}

impl ServerState {
    /// The grant of the request's bearer token (everything, on an open server or an open
    /// foreign origin).
    pub(super) fn authorize(&self, headers: &HeaderMap) -> Result<Option<Grant>, Outcome> {
        if !self.config.require_auth || self.foreign_origin(headers) == Some(false) {
            return Ok(None);
        }
        let result = match bearer(headers) {
            None => Err("this server requires a bearer token (SMART Backend Services)"),
            Some(token) => self.tokens.lock().expect("tokens").check(token),
        };
        result.map(Some).map_err(|why| {
            self.stats().unauthorized += 1;
            Outcome::new(StatusCode::UNAUTHORIZED, "login", why)
        })
    }
}

/// The bearer token of a request's `Authorization` header.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim())
}
