//! Against a mock server, what the demo does not do: files behind redirects to another origin
//! (the token goes to files only when required, never elsewhere) and a file shorter than the
//! manifest's `count`.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use fhirflight::bulk::{BulkClient, ExportLevel, ExportOutcome, ExportProgress, ExportRequest};
use fhirflight::smart::SmartConfig;
use fhirflight::warning::{Warning, WarningKind};
use serde_json::json;
use tokio::sync::watch;
use url::Url;

use crate::smart::{serve, test_key};

use super::{downloaded, export, ids, options};

/// Which file request carried which `Authorization` header.
type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A mock server for what the demo does not do: a paged manifest, files behind redirects to
/// another origin, and a recorder of the Authorization headers each file request carried.
struct Mock {
    base: Url,
    seen: Seen,
}

async fn mock(requires_access_token: bool) -> Mock {
    let seen: Seen = Arc::default();
    let record = |seen: &Arc<Mutex<Vec<_>>>, name: &str, headers: &HeaderMap| {
        let auth = headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_string());
        seen.lock().unwrap().push((name.to_string(), auth));
    };
    let log = Arc::clone(&seen);
    let other = serve(Router::new().route(
        "/p2.ndjson",
        get(move |headers: HeaderMap| {
            record(&log, "other-origin", &headers);
            async { "{\"resourceType\":\"Patient\",\"id\":\"b\"}\n" }
        }),
    ))
    .await;
    let (log, log2) = (Arc::clone(&seen), Arc::clone(&seen));
    let other_file = other.join("p2.ndjson").unwrap();
    let base = Arc::new(Mutex::new(None::<Url>));
    let base_for_manifest = Arc::clone(&base);
    let app = Router::new()
        .route("/token", post(|| async { axum::Json(json!({"access_token": "tok", "token_type": "Bearer", "expires_in": 600})) }))
        .route(
            "/fhir/$export",
            get(|| async { (StatusCode::ACCEPTED, [(header::CONTENT_LOCATION, "/status/1")]) }),
        )
        .route(
            "/status/{page}",
            get(move |axum::extract::Path(page): axum::extract::Path<u32>| {
                let origin = base_for_manifest.lock().unwrap().clone().unwrap();
                async move {
                    let file = |name: &str| origin.join(name).unwrap().to_string();
                    let manifest = if page == 1 {
                        json!({"transactionTime": "2024-01-01T00:00:00Z", "request": file("fhir/$export"),
                            "requiresAccessToken": requires_access_token,
                            "output": [{"type": "Patient", "url": file("files/p1.ndjson"), "count": 1}], "error": [],
                            "link": [{"relation": "next", "url": file("status/2")}]})
                    } else {
                        json!({"transactionTime": "2024-01-01T00:00:00Z", "request": file("fhir/$export"),
                            "requiresAccessToken": requires_access_token,
                            "output": [{"type": "Patient", "url": file("files/redirect"), "count": 1}], "error": []})
                    };
                    axum::Json(manifest)
                }
            })
            .delete(|| async { StatusCode::ACCEPTED }),
        )
        .route(
            "/files/p1.ndjson",
            get(move |headers: HeaderMap| {
                record(&log, "same-origin", &headers);
                async { "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n" }
            }),
        )
        .route(
            "/files/redirect",
            get(move |headers: HeaderMap| {
                record(&log2, "redirect", &headers);
                let target = other_file.to_string();
                async move { Redirect::temporary(&target).into_response() }
            }),
        );
    let origin = serve(app).await;
    *base.lock().unwrap() = Some(origin.clone());
    Mock { base: origin, seen }
}

async fn mock_export(mock: &Mock) -> ExportOutcome {
    let auth =
        SmartConfig::new("c", test_key()).with_token_endpoint(mock.base.join("token").unwrap());
    let client = BulkClient::try_new(mock.base.join("fhir").unwrap(), Some(auth), options())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (outcome, _) = export(
        &client,
        &ExportRequest::new(ExportLevel::System),
        dir.path(),
    )
    .await;
    assert_eq!(outcome.files.len(), 2, "both manifest pages followed");
    let text = downloaded(&outcome, "Patient");
    assert_eq!(ids(&text), ["a", "b"]);
    outcome
}

#[tokio::test]
async fn the_token_goes_to_files_only_when_required_and_never_to_another_origin() {
    let required = mock(true).await;
    mock_export(&required).await;
    let bearer = Some("Bearer tok".to_string());
    let mut seen = required.seen.lock().unwrap().clone();
    seen.sort(); // the two files download in parallel
    assert_eq!(
        seen,
        [
            ("other-origin".to_string(), None),
            ("redirect".to_string(), bearer.clone()),
            ("same-origin".to_string(), bearer),
        ]
    );

    let not_required = mock(false).await;
    mock_export(&not_required).await;
    let seen = not_required.seen.lock().unwrap().clone();
    assert!(seen.iter().all(|(_, auth)| auth.is_none()), "{seen:?}");
}

/// A file shorter than the manifest's `count` is downloaded again, then kept with a warning
/// naming both numbers; with strict counts it is an error, and neither a final nor a partial
/// file is left behind.
#[tokio::test]
async fn a_line_count_short_of_the_manifest_count_is_a_warning_or_a_strict_error() {
    let origin = Arc::new(Mutex::new(None::<Url>));
    let origin_for_status = Arc::clone(&origin);
    let app = Router::new()
        .route("/fhir/$export", get(|| async { (StatusCode::ACCEPTED, [(header::CONTENT_LOCATION, "/status")]) }))
        .route(
            "/status",
            get(move || {
                let origin = origin_for_status.lock().unwrap().clone().unwrap();
                async move {
                    axum::Json(json!({"transactionTime": "2024-01-01T00:00:00Z", "request": origin.join("fhir/$export").unwrap().to_string(),
                        "requiresAccessToken": false, "error": [],
                        "output": [{"type": "Patient", "url": origin.join("p.ndjson").unwrap().to_string(), "count": 2}]}))
                }
            })
            .delete(|| async { StatusCode::ACCEPTED }),
        )
        .route("/p.ndjson", get(|| async { "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n" }));
    let base = serve(app).await;
    *origin.lock().unwrap() = Some(base.clone());
    let client = BulkClient::try_new(base.join("fhir").unwrap(), None, options())
        .await
        .unwrap();
    let request = ExportRequest::new(ExportLevel::System);
    let dir = tempfile::tempdir().unwrap();
    let (progress, _) = watch::channel(ExportProgress::default());
    let outcome = client
        .export_to_dir(&request, dir.path(), &progress)
        .await
        .unwrap();
    let message =
        format!("{base}p.ndjson: downloaded twice with 1 lines, the manifest says count = 2");
    assert_eq!(
        outcome.warnings,
        [Warning::new(WarningKind::CountMismatch, message).with_resource_type("Patient")]
    );
    assert_eq!(outcome.files[0].lines, 1);

    let dir = tempfile::tempdir().unwrap();
    let strict = options().with_strict_counts(true);
    let client = BulkClient::try_new(base.join("fhir").unwrap(), None, strict)
        .await
        .unwrap();
    let err = client
        .export_to_dir(&request, dir.path(), &progress)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{base}p.ndjson: downloaded twice with 1 lines, the manifest says count = 2 (strict counts)"
        )
    );
    assert!(!dir.path().join("Patient.0.ndjson").exists());
    assert!(!dir.path().join(".Patient.0.ndjson.part").exists());
}
