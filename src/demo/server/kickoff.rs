//! `$export` kick-offs at the three levels (`/fhir/$export`, `/fhir/Patient/$export`,
//! `/fhir/Group/{id}/$export`), by GET or POST: the required headers, the request validated by
//! [`export::parse_request`], the scopes of the token, then a job whose files [`export::run`]
//! makes in the background. Every kick-off is recorded in [`DemoStats::kickoffs`](super::DemoStats::kickoffs).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::export::{self, ExportRequest, FileKind, Snapshot};
use super::faults::presigned;
use super::outcome::{Outcome, fhir_json};
use super::{ForeignOrigin, Job, KickoffRecord, ServerState, Shared};

/// Export level of a kick-off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KickoffLevel {
    /// `/$export`
    System,
    /// `/Patient/$export`
    Patient,
    /// `/Group/{id}/$export`
    Group(String),
}

pub(super) async fn system_export(
    state: State<Shared>,
    method: Method,
    headers: HeaderMap,
    query: RawQuery,
    body: Bytes,
) -> Response {
    kickoff(state, KickoffLevel::System, method, headers, query, body).await
}

pub(super) async fn patient_export(
    state: State<Shared>,
    method: Method,
    headers: HeaderMap,
    query: RawQuery,
    body: Bytes,
) -> Response {
    kickoff(state, KickoffLevel::Patient, method, headers, query, body).await
}

pub(super) async fn group_export(
    state: State<Shared>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
    query: RawQuery,
    body: Bytes,
) -> Response {
    kickoff(state, KickoffLevel::Group(id), method, headers, query, body).await
}

async fn kickoff(
    State(state): State<Shared>,
    level: KickoffLevel,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let post = method == Method::POST;
    let params = if post {
        export::params_from_body(&body)
    } else {
        Ok(
            url::form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    };
    let recorded = params.as_ref().cloned().unwrap_or_default();
    let mut record = KickoffRecord {
        level: level.clone(),
        method: method.to_string(),
        types: recorded
            .iter()
            .filter(|(n, _)| n == "_type")
            .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_owned()))
            .collect(),
        params: recorded,
        status: 0,
    };
    let response = match accept_kickoff(&state, level, post, &headers, query.as_deref(), params) {
        Ok(response) => response,
        Err(outcome) => outcome.into_response(),
    };
    record.status = response.status().as_u16();
    state.stats().kickoffs.push(record);
    let delay = state.faults.lock().expect("faults").kickoff_delay;
    if let Some(delay) = delay.filter(|_| response.status().is_success()) {
        tokio::time::sleep(delay).await;
    }
    response
}

fn accept_kickoff(
    state: &Shared,
    level: KickoffLevel,
    post: bool,
    headers: &HeaderMap,
    query: Option<&str>,
    params: Result<export::Params, Outcome>,
) -> Result<Response, Outcome> {
    let grant = state.authorize(headers)?;
    state.refuse_if(|f| (&mut f.kickoff_429, &mut f.kickoff_transient))?;
    let header_text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let accept = header_text(header::ACCEPT);
    if !accept
        .split(',')
        .any(|a| a.split(';').next().unwrap_or_default().trim() == "application/fhir+json")
    {
        return Err(Outcome::invalid(format!(
            "kick-off requires `Accept: application/fhir+json`, got `{accept}`"
        )));
    }
    let prefer: Vec<String> = headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().replace(' ', ""))
        .collect();
    if !prefer.iter().any(|p| p == "respond-async") {
        return Err(Outcome::invalid(
            "kick-off requires `Prefer: respond-async`",
        ));
    }
    let lenient = prefer.iter().any(|p| p == "handling=lenient");
    if post {
        let content_type = header_text(header::CONTENT_TYPE);
        let media = content_type.split(';').next().unwrap_or_default().trim();
        if !matches!(media, "application/fhir+json" | "application/json") {
            return Err(Outcome::invalid(format!(
                "a POST kick-off needs `Content-Type: application/fhir+json`, got `{content_type}`"
            )));
        }
    }
    let request = export::parse_request(level, &params?, post, lenient)?;
    let refused = state.faults.lock().expect("faults").refused_types.clone();
    if let Some(ty) = request
        .types
        .iter()
        .flatten()
        .find(|ty| refused.contains(ty))
    {
        return Err(Outcome::new(
            StatusCode::BAD_REQUEST,
            "not-supported",
            format!("this server cannot export {ty}"),
        ));
    }
    let readable = |ty: &str| grant.as_ref().is_none_or(|g| g.can_read(ty));
    if let Some(ty) = request.types.iter().flatten().find(|ty| !readable(ty)) {
        return Err(Outcome::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("the access token's scopes do not allow reading {ty}"),
        ));
    }
    let (snapshot, transaction_time) = snapshot(state, &request)?;

    let id = format!(
        "{:016x}",
        state.next_job.fetch_add(1, Ordering::Relaxed) ^ rand::random::<u64>() << 16
    );
    let files_gone = std::mem::take(&mut state.faults.lock().expect("faults").files_gone_once);
    let job = Arc::new(Job {
        output: OnceLock::new(),
        polls: AtomicU32::new(0),
        partial_manifests: request.partial_manifests,
        released: AtomicUsize::new(0),
        complete: AtomicBool::new(false),
        files_gone,
    });
    state
        .jobs
        .lock()
        .expect("jobs")
        .insert(id.clone(), Arc::clone(&job));
    let path = match &request.level {
        KickoffLevel::System => "fhir/$export".to_owned(),
        KickoffLevel::Patient => "fhir/Patient/$export".to_owned(),
        KickoffLevel::Group(group) => format!("fhir/Group/{group}/$export"),
    };
    let mut request_url = state.origin.join(&path).expect("valid path");
    request_url.set_query(query.filter(|_| !post));
    let faults = state.faults.lock().expect("faults").clone();
    let (page_size, requires_token) = (state.config.page_size, state.config.require_auth);
    let manifest_page_size = state.config.manifest_page_size;
    // Each part of the job on the server's own origin, or the foreign one the fault names.
    let served_at = |foreign_part: fn(&ForeignOrigin) -> bool, path: String| {
        let origin = match &faults.foreign_origin {
            Some(foreign) if foreign_part(foreign) => &foreign.url,
            _ => &state.origin,
        };
        origin.join(&path).expect("valid path")
    };
    let file_base = served_at(|f| f.files, format!("files/{id}/"));
    let presigned = faults
        .foreign_origin
        .as_ref()
        .filter(|f| f.files && !f.requires_auth)
        .map(|_| presigned(&id));
    let location = served_at(|f| f.status, format!("jobs/{id}"));
    let pages = served_at(|f| f.pages, format!("jobs/{id}/manifest/"));
    tokio::task::spawn_blocking(move || {
        let files = export::run(
            &request,
            snapshot,
            |ty| grant.as_ref().is_none_or(|g| g.can_read(ty)),
            page_size,
            &faults,
        );
        let pages = export::manifest_pages(
            request_url.as_str(),
            transaction_time,
            requires_token,
            &files,
            manifest_page_size,
            |i| {
                let kind = match files[i].kind {
                    FileKind::Output => "",
                    FileKind::Deleted => "deleted-",
                    FileKind::Error => "error-",
                };
                let mut url = file_base
                    .join(&format!("{kind}{i}.ndjson"))
                    .expect("valid path");
                url.set_query(presigned.as_deref());
                url.to_string()
            },
            |page| format!("{pages}{page}"),
        );
        let _ = job
            .output
            .set((files.into_iter().map(Arc::new).collect(), pages));
    });
    let body = json!({ "resourceType": "OperationOutcome", "issue": [{ "severity": "information", "code": "informational",
        "diagnostics": format!("export job {id} accepted") }] });
    Ok((
        StatusCode::ACCEPTED,
        [(header::CONTENT_LOCATION, location.to_string())],
        fhir_json(&body),
    )
        .into_response())
}

/// The store's data as the job will see it, plus the group's members for a group export.
/// The transaction time comes from the store's clock: later changes are strictly later.
fn snapshot(state: &ServerState, request: &ExportRequest) -> Result<(Snapshot, i64), Outcome> {
    let mut store = state.store.write().expect("store");
    let group_members = match &request.level {
        KickoffLevel::Group(id) => {
            let groups = store
                .types
                .iter()
                .find(|(t, _)| &**t == "Group")
                .map(|(_, r)| r.as_slice())
                .unwrap_or_default();
            let group = groups
                .iter()
                .find(|g| g.id() == id)
                .ok_or_else(|| Outcome::not_found(format!("Group/{id} does not exist")))?;
            let value: Value = serde_json::from_str(group.json()).expect("stored JSON");
            let members = value["member"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let ids: HashSet<String> = members
                .iter()
                .filter_map(|m| {
                    m.pointer("/entity/reference")?
                        .as_str()?
                        .strip_prefix("Patient/")
                        .map(str::to_owned)
                })
                .collect();
            Some(ids)
        }
        _ => None,
    };
    let transaction_time = store.tick();
    Ok((
        Snapshot {
            types: store.types.clone(),
            deleted: store.deleted.clone(),
            group_members,
        },
        transaction_time,
    ))
}
