//! The status URL of a job (`/jobs/{id}`): polling (202 with `Retry-After` and `X-Progress`
//! until the manifest), the further pages of a paged manifest, and `DELETE` to cancel.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Shared;
use super::outcome::{Outcome, fhir_json};

pub(super) async fn status(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    state.stats().status_polls += 1;
    let result = (|| -> Result<Response, Outcome> {
        state.authorize(&headers)?;
        state.refuse_if(|f| (&mut f.status_429, &mut f.status_transient))?;
        let job = state.job(&id)?;
        let polls = job.polls.fetch_add(1, Ordering::SeqCst);
        match job.output.get() {
            Some((_, pages)) if polls >= state.config.status_polls => {
                Ok(manifest_response(&pages[0]))
            }
            output => {
                let total = state.config.status_polls.max(1);
                let percent = if output.is_some() {
                    100 * polls.min(total) / total
                } else {
                    0
                };
                let headers = [
                    (
                        header::RETRY_AFTER,
                        state.config.retry_after.as_secs().to_string(),
                    ),
                    (
                        header::HeaderName::from_static("x-progress"),
                        format!("{percent}% complete"),
                    ),
                ];
                Ok((StatusCode::ACCEPTED, headers).into_response())
            }
        }
    })();
    result.unwrap_or_else(IntoResponse::into_response)
}

/// A complete manifest (or one of its pages), valid for an hour.
fn manifest_response(page: &Value) -> Response {
    let expires = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
    ([(header::EXPIRES, expires)], axum::Json(page)).into_response()
}

/// Page `n` (from 1; page 0 is the status response) of a finished job's paged manifest.
pub(super) async fn manifest_page(
    State(state): State<Shared>,
    Path((id, page)): Path<(String, usize)>,
    headers: HeaderMap,
) -> Response {
    state.stats().manifest_pages += 1;
    let result = state.authorize(&headers).and_then(|_| {
        let job = state.job(&id)?;
        job.output
            .get()
            .and_then(|(_, pages)| pages.get(page))
            .filter(|_| page > 0)
            .map(manifest_response)
            .ok_or_else(|| {
                Outcome::not_found(format!("export job `{id}` has no manifest page {page}"))
            })
    });
    result.unwrap_or_else(IntoResponse::into_response)
}

pub(super) async fn cancel(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    state.stats().deletes += 1;
    let result = state.authorize(&headers).and_then(|_| {
        state
            .jobs
            .lock()
            .expect("jobs")
            .remove(&id)
            .ok_or_else(|| Outcome::not_found(format!("no export job `{id}`")))
    });
    match result {
        Ok(_) => {
            let body = json!({ "resourceType": "OperationOutcome", "issue": [{ "severity": "information",
                "code": "informational", "diagnostics": format!("export job {id} deleted") }] });
            (StatusCode::ACCEPTED, fhir_json(&body)).into_response()
        }
        Err(outcome) => outcome.into_response(),
    }
}
