//! The status URL of a job (`/jobs/{id}`): polling (202 with `Retry-After` and `X-Progress`
//! until the manifest), the further pages of a paged manifest, and `DELETE` to cancel.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::files::{filler, gzip_chunks};
use super::outcome::{Outcome, fhir_json};
use super::{Faults, ServerState, Shared};
use crate::time::now_ms;

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
        let faults = state.faults.lock().expect("faults").clone();
        let total = state.config.status_polls.max(1);
        let output = job.output.get().filter(|_| !faults.status_stuck);
        let percent = match output {
            Some(_) => 100 * polls.min(total) / total,
            None => 0,
        };
        if let Some((files, pages)) = output {
            // With partial manifests, one more page is released per poll (the last one with
            // the complete manifest), and the job completes once the files of the released
            // pages were fetched: a slow export that the client's downloads keep up with.
            let released = match job.partial_manifests {
                true => (polls as usize + 1).min(pages.len() - 1),
                false => 0,
            };
            job.released.fetch_max(released, Ordering::SeqCst);
            let listed: usize = pages[..released].iter().map(page_entries).sum();
            let fetched = files[..listed]
                .iter()
                .all(|f| f.fetched.load(Ordering::SeqCst));
            if polls >= state.config.status_polls && fetched && !faults.hold_completion {
                job.released.store(pages.len(), Ordering::SeqCst);
                job.complete.store(true, Ordering::SeqCst);
                return Ok(match faults.bomb_manifest {
                    Some(spaces) => bomb_response(&pages[0], spaces),
                    None => manifest_response(&pages[0]),
                });
            }
            if released > 0 {
                let page = released_page(&pages[0], 0, released);
                return Ok((
                    StatusCode::ACCEPTED,
                    progress_headers(&state, &faults, percent),
                    axum::Json(page),
                )
                    .into_response());
            }
        }
        Ok((
            StatusCode::ACCEPTED,
            progress_headers(&state, &faults, percent),
        )
            .into_response())
    })();
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `Retry-After` and `X-Progress` of an in-progress answer.
fn progress_headers(
    state: &ServerState,
    faults: &Faults,
    percent: u32,
) -> [(header::HeaderName, String); 2] {
    let retry_after = match faults.retry_after_epoch {
        Some(seconds) => (now_ms() / 1000 + seconds as i64).to_string(),
        None => state.config.retry_after.as_secs().to_string(),
    };
    let progress = match faults.status_stuck {
        true => "in progress".to_owned(),
        false => format!("{percent}% complete"),
    };
    [
        (header::RETRY_AFTER, retry_after),
        (header::HeaderName::from_static("x-progress"), progress),
    ]
}

/// The files a manifest page lists.
fn page_entries(page: &Value) -> usize {
    ["output", "deleted", "error"]
        .iter()
        .map(|list| page[list].as_array().map_or(0, Vec::len))
        .sum()
}

/// Page `n` as served while `released` pages are: its `next` link only to a released page.
fn released_page(page: &Value, n: usize, released: usize) -> Value {
    let mut page = page.clone();
    if n + 1 >= released
        && let Some(object) = page.as_object_mut()
    {
        object.remove("link");
    }
    page
}

/// A complete manifest (or one of its pages), valid for an hour.
fn manifest_response(page: &Value) -> Response {
    let expires = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(3600));
    ([(header::EXPIRES, expires)], axum::Json(page)).into_response()
}

/// A manifest after `spaces` spaces, gzip-compressed: what [`Faults::bomb_manifest`] serves.
fn bomb_response(page: &Value, spaces: u64) -> Response {
    let manifest = axum::body::Bytes::from(page.to_string());
    let padded = filler(b' ', spaces).chain(std::iter::once(manifest));
    let body = gzip_chunks(padded, flate2::Compression::best());
    let body = futures::stream::iter(body.map(Ok::<_, std::io::Error>));
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CONTENT_ENCODING, "gzip"),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response()
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
        let released = job.released.load(Ordering::SeqCst);
        job.output
            .get()
            .and_then(|(_, pages)| pages.get(page))
            .filter(|_| page > 0)
            .filter(|_| !job.partial_manifests || page < released)
            .map(|value| manifest_response(&released_page(value, page, released.max(1))))
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
