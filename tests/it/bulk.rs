//! The Bulk Data export client end to end: against the demo server (levels, methods, parameters,
//! faults, resume, cancel, parts of a job on another origin) and against small mocks for what the
//! demo does not do (redirects to another origin or to plain http, paged manifests, open files).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect};
use axum::routing::{get, post};
use fhirflight::Error;
use fhirflight::bulk::{
    BulkClient, ClientOptions, ExportLevel, ExportOutcome, ExportPhase, ExportProgress,
    ExportRequest, KickoffMethod,
};
use fhirflight::demo::{
    DemoConfig, DemoServer, Faults, ForeignOrigin, ForeignRequest, KickoffLevel, generate,
};
use fhirflight::smart::{SigningKey, SmartConfig};
use serde_json::{Value, json};
use tokio::sync::watch;
use url::Url;

use crate::smart::{serve, test_key};

const SEED: u64 = 7;
const PATIENTS: usize = 4;

/// Fast waits: Retry-After and backoff clamped to a few milliseconds.
fn options() -> ClientOptions {
    ClientOptions::default()
        .with_retry_after_bounds(Duration::from_millis(1), Duration::from_millis(20))
}

async fn demo(config: DemoConfig) -> DemoServer {
    DemoServer::start(config.with_seed(SEED).with_patients(PATIENTS))
        .await
        .unwrap()
}

fn rs384(server: &DemoServer) -> SmartConfig {
    let creds = server.credentials();
    let key = SigningKey::from_pem(creds.rs384().private_pem())
        .unwrap()
        .with_kid(creds.rs384().kid());
    SmartConfig::new(creds.client_id(), key)
}

fn es384_jwks(server: &DemoServer) -> SmartConfig {
    let creds = server.credentials();
    let key = SigningKey::from_jwk(&creds.private_jwks(), Some(creds.es384().kid())).unwrap();
    assert_eq!(key.alg(), "ES384");
    SmartConfig::new(creds.client_id(), key)
}

async fn client(server: &DemoServer, auth: SmartConfig) -> BulkClient {
    BulkClient::try_new(server.base_url(), Some(auth), options())
        .await
        .unwrap()
}

async fn export(
    client: &BulkClient,
    request: &ExportRequest,
    dir: &Path,
) -> (ExportOutcome, ExportProgress) {
    let (progress, watcher) = watch::channel(ExportProgress::default());
    let outcome = client.export_to_dir(request, dir, &progress).await.unwrap();
    let last = watcher.borrow().clone();
    (outcome, last)
}

/// The NDJSON of all downloaded files of `resource_type`, in order.
fn downloaded(outcome: &ExportOutcome, resource_type: &str) -> String {
    outcome
        .files
        .iter()
        .filter(|f| f.resource_type == resource_type)
        .map(|f| std::fs::read_to_string(&f.path).unwrap())
        .collect()
}

/// What the demo population holds for `resource_type`, as NDJSON.
fn expected(resource_type: &str) -> String {
    let mut out = Vec::new();
    generate(SEED, PATIENTS)
        .write_ndjson(resource_type, &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// The `id` of every line of an NDJSON text.
pub(crate) fn ids(ndjson: &str) -> Vec<String> {
    ndjson
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn system_export_by_get_with_rs384_downloads_everything_and_cleans_up() {
    let server = demo(DemoConfig::default().with_page_size(7).with_status_polls(2)).await;
    let client = client(&server, rs384(&server)).await;
    let dir = tempfile::tempdir().unwrap();
    let request =
        ExportRequest::new(ExportLevel::System).with_types(["Patient", "Observation", "Condition"]);
    let (outcome, progress) = export(&client, &request, dir.path()).await;

    for ty in ["Patient", "Observation", "Condition"] {
        assert_eq!(
            downloaded(&outcome, ty),
            expected(ty),
            "{ty}: the NDJSON exactly as served"
        );
    }
    // Files are named by type and index, match the manifest's counts, and are split at the page size.
    let observations: Vec<_> = outcome
        .files
        .iter()
        .filter(|f| f.resource_type == "Observation")
        .collect();
    assert!(observations.len() > 1);
    for (n, file) in observations.iter().enumerate() {
        assert_eq!(
            file.path,
            dir.path().join(format!("Observation.{n}.ndjson"))
        );
        assert!(file.lines <= 7 && file.bytes == std::fs::metadata(&file.path).unwrap().len());
    }
    for (file, listed) in outcome.files.iter().zip(&outcome.manifest.output) {
        assert_eq!(Some(file.lines), listed.count);
    }
    assert!(outcome.manifest.requires_access_token);
    assert!(outcome.deleted.is_empty() && outcome.warnings.is_empty());

    let saved: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        saved["transactionTime"],
        outcome.manifest.transaction_time.as_str()
    );
    assert!(
        !dir.path().join(".fhirflight-job.json").exists(),
        "job state removed after the DELETE"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "no temporary files: {leftovers:?}");

    assert_eq!(progress.phase, ExportPhase::Done);
    assert_eq!(
        (progress.files_done, progress.files_total),
        (outcome.files.len(), outcome.files.len())
    );
    assert_eq!(
        progress.bytes_downloaded,
        outcome.files.iter().map(|f| f.bytes).sum::<u64>()
    );
    assert_eq!(
        progress.status_polls, 2,
        "two 'in progress' answers before the manifest"
    );
    assert!(progress.server_progress.is_some(), "X-Progress reported");

    let stats = server.stats();
    assert_eq!(stats.kickoffs.len(), 1);
    assert_eq!(
        (
            stats.kickoffs[0].method.as_str(),
            stats.kickoffs[0].level.clone()
        ),
        ("GET", KickoffLevel::System)
    );
    assert_eq!(
        stats.kickoffs[0].types,
        ["Patient", "Observation", "Condition"]
    );
    assert_eq!(stats.downloads, outcome.files.len());
    assert_eq!(
        stats.gzip_downloads, stats.downloads,
        "gzip asked for and decoded"
    );
    assert_eq!(stats.deletes, 1);
    assert_eq!(stats.tokens_issued, 1, "one token shared by every request");
    assert_eq!(stats.unauthorized, 0);
}

#[tokio::test]
async fn patient_and_group_exports_by_post_with_es384_from_a_jwks() {
    let server = demo(DemoConfig::default()).await;
    let client = client(&server, es384_jwks(&server)).await;
    let group = generate(SEED, PATIENTS).group_ids()[0].to_string();

    let patient = ExportRequest::new(ExportLevel::Patient)
        .with_types(["Patient"])
        .with_method(KickoffMethod::Post);
    let dir = tempfile::tempdir().unwrap();
    let (outcome, _) = export(&client, &patient, dir.path()).await;
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));

    let by_group = ExportRequest::new(ExportLevel::Group(group.clone())).with_types(["Patient"]);
    let dir = tempfile::tempdir().unwrap();
    let (outcome, _) = export(
        &client,
        &by_group.clone().with_method(KickoffMethod::Post),
        dir.path(),
    )
    .await;
    let members = ids(&downloaded(&outcome, "Patient"));
    assert!(!members.is_empty() && members.len() <= PATIENTS);
    let dir = tempfile::tempdir().unwrap();
    let (by_get, _) = export(&client, &by_group, dir.path()).await;
    assert_eq!(
        ids(&downloaded(&by_get, "Patient")),
        members,
        "GET and POST agree"
    );

    let stats = server.stats();
    let seen: Vec<(KickoffLevel, &str)> = stats
        .kickoffs
        .iter()
        .map(|k| (k.level.clone(), k.method.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (KickoffLevel::Patient, "POST"),
            (KickoffLevel::Group(group.clone()), "POST"),
            (KickoffLevel::Group(group), "GET")
        ]
    );
    assert_eq!(stats.deletes, 3);
}

#[tokio::test]
async fn every_parameter_reaches_the_server_by_get_and_by_post() {
    let server = demo(DemoConfig::default()).await;
    let client = client(&server, rs384(&server)).await;
    let request = ExportRequest::new(ExportLevel::Patient)
        .with_types(["Patient", "Observation"])
        .with_since("2000-01-01T00:00:00Z")
        .with_until("2100-01-01T00:00:00Z")
        .with_type_filters(["Observation?status=final", "Patient?gender=female"])
        .with_elements(["id", "status"])
        .with_include_associated_data(["LatestProvenanceResources"])
        .with_output_format("application/fhir+ndjson");
    for method in [KickoffMethod::Get, KickoffMethod::Post] {
        let dir = tempfile::tempdir().unwrap();
        let (outcome, _) = export(&client, &request.clone().with_method(method), dir.path()).await;
        let observations = downloaded(&outcome, "Observation");
        assert!(!observations.is_empty());
        for line in observations.lines() {
            let resource: Value = serde_json::from_str(line).unwrap();
            assert_eq!(resource["status"], "final", "_typeFilter applied");
            assert!(resource.get("code").is_none(), "_elements applied");
        }
        let patients = downloaded(&outcome, "Patient");
        assert!(
            !patients.is_empty() && patients.lines().all(|l| !l.contains("\"gender\":\"male\"")),
            "the second _typeFilter applied"
        );
    }
    let stats = server.stats();
    let expected: Vec<(String, String)> = [
        ("_outputFormat", "application/fhir+ndjson"),
        ("_type", "Patient,Observation"),
        ("_since", "2000-01-01T00:00:00Z"),
        ("_until", "2100-01-01T00:00:00Z"),
        ("_elements", "id,status"),
        ("_typeFilter", "Observation?status=final"),
        ("_typeFilter", "Patient?gender=female"),
        ("includeAssociatedData", "LatestProvenanceResources"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    for (kickoff, method) in stats.kickoffs.iter().zip(["GET", "POST"]) {
        assert_eq!(kickoff.method, method);
        assert_eq!(kickoff.params, expected, "{method}");
    }
}

#[tokio::test]
async fn patient_parameter_is_sent_by_post() {
    let server = demo(DemoConfig::default()).await;
    let client = client(&server, rs384(&server)).await;
    let population = generate(SEED, PATIENTS);
    let first = population.resources("Patient")[0].id().to_string();
    let request = ExportRequest::new(ExportLevel::Patient)
        .with_types(["Patient"])
        .with_patients([first.clone()]);
    let dir = tempfile::tempdir().unwrap();
    let (outcome, _) = export(&client, &request, dir.path()).await;
    assert_eq!(ids(&downloaded(&outcome, "Patient")), [first.as_str()]);
    let kickoff = &server.stats().kickoffs[0];
    assert_eq!(kickoff.method, "POST");
    assert!(
        kickoff
            .params
            .contains(&("patient".to_string(), format!("Patient/{first}"))),
        "{:?}",
        kickoff.params
    );
}

#[tokio::test]
async fn since_exports_report_changes_and_deletions() {
    let server = demo(DemoConfig::default()).await;
    let client = client(&server, rs384(&server)).await;
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient"]);
    let dir = tempfile::tempdir().unwrap();
    let (full, _) = export(&client, &request, dir.path()).await;
    let patients = ids(&downloaded(&full, "Patient"));

    server.delete("Patient", &patients[0]);
    server.upsert(json!({"resourceType": "Patient", "id": patients[1], "active": false}));
    let since = request
        .clone()
        .with_since(full.manifest.transaction_time.clone());
    let (delta, _) = export(&client, &since, dir.path()).await;
    assert_eq!(ids(&downloaded(&delta, "Patient")), [patients[1].clone()]);
    let deleted: Vec<(&str, &str)> = delta
        .deleted
        .iter()
        .map(|d| (d.resource_type.as_str(), d.id.as_str()))
        .collect();
    assert_eq!(deleted, [("Patient", patients[0].as_str())]);
    assert_eq!(delta.manifest.deleted.len(), 1);
    assert!(dir.path().join("deleted.0.ndjson").exists());
    // The earlier export's files were cleared: only the delta is in the folder.
    assert!(!dir.path().join("Patient.1.ndjson").exists());
}

#[tokio::test]
async fn transient_errors_and_429_are_retried() {
    let server = demo(DemoConfig::default()).await;
    server.set_faults(Faults {
        kickoff_transient: 2,
        kickoff_429: 1,
        status_transient: 2,
        status_429: 1,
        ..Faults::default()
    });
    let client = client(&server, rs384(&server)).await;
    let dir = tempfile::tempdir().unwrap();
    let (outcome, _) = export(
        &client,
        &ExportRequest::new(ExportLevel::System).with_types(["Patient"]),
        dir.path(),
    )
    .await;
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
    let statuses: Vec<u16> = server.stats().kickoffs.iter().map(|k| k.status).collect();
    assert_eq!(statuses, [429, 503, 503, 202]);
}

#[tokio::test]
async fn errors_name_method_url_status_and_the_outcome_text() {
    let server = demo(DemoConfig::default()).await;
    server.set_faults(Faults {
        kickoff_transient: 5,
        ..Faults::default()
    });
    let client = BulkClient::try_new(
        server.base_url(),
        Some(rs384(&server)),
        options().with_retry_budget(1),
    )
    .await
    .unwrap();
    let (progress, _) = watch::channel(ExportProgress::default());
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient"]);
    let err = client
        .export_to_dir(&request, dir.path(), &progress)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "GET {}/$export?_type=Patient: HTTP 503: error (transient): demo fault: temporarily unavailable, retry",
            server.base_url()
        )
    );
    assert_eq!(server.stats().kickoffs.len(), 2, "one retry, as budgeted");

    // A request the server refuses is not retried.
    server.set_faults(Faults::default());
    let bad = ExportRequest::new(ExportLevel::System).with_types(["NoSuchType"]);
    let err = client
        .export_to_dir(&bad, dir.path(), &progress)
        .await
        .unwrap_err();
    let Error::Http {
        status, message, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(*status, 400);
    assert!(message.contains("NoSuchType"), "{message}");
    assert_eq!(server.stats().kickoffs.len(), 3);
}

#[tokio::test]
async fn broken_downloads_resume_with_range_or_restart_without() {
    for no_range in [false, true] {
        let server = demo(DemoConfig::default()).await;
        server.set_faults(Faults {
            break_download_after: Some(1500),
            no_range,
            ..Faults::default()
        });
        let client = client(&server, rs384(&server)).await;
        let dir = tempfile::tempdir().unwrap();
        let request =
            ExportRequest::new(ExportLevel::System).with_types(["Patient", "Observation"]);
        let (outcome, progress) = export(&client, &request, dir.path()).await;
        for ty in ["Patient", "Observation"] {
            assert_eq!(
                downloaded(&outcome, ty),
                expected(ty),
                "{ty}, no_range={no_range}"
            );
        }
        let stats = server.stats();
        assert_eq!(
            stats.downloads,
            2 * outcome.files.len(),
            "each file broke once, no_range={no_range}"
        );
        let on_disk: u64 = outcome.files.iter().map(|f| f.bytes).sum();
        if no_range {
            assert!(
                progress.bytes_downloaded > on_disk,
                "restarted files are downloaded twice"
            );
        } else {
            assert_eq!(
                progress.bytes_downloaded, on_disk,
                "resumed files continue where they broke"
            );
        }
    }
}

#[tokio::test]
async fn error_files_become_warnings_and_malformed_lines_are_kept_as_served() {
    let server = demo(DemoConfig::default()).await;
    server.set_faults(Faults {
        error_file: true,
        malformed_line: true,
        ..Faults::default()
    });
    let client = client(&server, rs384(&server)).await;
    let dir = tempfile::tempdir().unwrap();
    let (outcome, _) = export(
        &client,
        &ExportRequest::new(ExportLevel::System).with_types(["Patient"]),
        dir.path(),
    )
    .await;
    assert_eq!(outcome.manifest.error.len(), 1);
    assert_eq!(outcome.warnings.len(), 1);
    assert!(
        outcome.warnings[0].starts_with("error ("),
        "{}",
        outcome.warnings[0]
    );
    assert!(dir.path().join("error.0.ndjson").exists());
    let text = downloaded(&outcome, "Patient");
    let first = text.lines().next().unwrap();
    assert!(
        serde_json::from_str::<Value>(first).is_err(),
        "the broken line is stored as served"
    );
    assert_eq!(text.lines().count(), expected("Patient").lines().count());
}

#[tokio::test]
async fn short_lived_tokens_are_renewed_ahead_of_expiry() {
    let config = DemoConfig::default()
        .with_token_lifetime(Duration::from_secs(1))
        .with_status_polls(3);
    let server = demo(config.with_retry_after(Duration::from_secs(1))).await;
    // Honour the server's one-second Retry-After, so the export outlives several tokens.
    let options = ClientOptions::default()
        .with_retry_after_bounds(Duration::from_millis(1), Duration::from_secs(1));
    let client = BulkClient::try_new(server.base_url(), Some(rs384(&server)), options)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (outcome, _) = export(
        &client,
        &ExportRequest::new(ExportLevel::System).with_types(["Patient"]),
        dir.path(),
    )
    .await;
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
    let stats = server.stats();
    assert!(
        stats.tokens_issued >= 3,
        "renewed: {} tokens",
        stats.tokens_issued
    );
    assert_eq!(stats.unauthorized, 0, "never sent an expired token");
}

/// A token that stops working mid-download (revoked, expired early) is replaced once per request;
/// a second 401 for the same request is final.
#[tokio::test]
async fn a_token_refused_mid_download_is_refreshed_once() {
    let server = demo(DemoConfig::default().with_page_size(5)).await;
    server.set_faults(Faults {
        download_token_revoked: 1,
        ..Faults::default()
    });
    let client = BulkClient::try_new(
        server.base_url(),
        Some(rs384(&server)),
        options().with_parallel_downloads(1),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient", "Condition"]);
    let (outcome, _) = export(&client, &request, dir.path()).await;
    for ty in ["Patient", "Condition"] {
        assert_eq!(downloaded(&outcome, ty), expected(ty), "{ty}");
    }
    let stats = server.stats();
    assert_eq!((stats.unauthorized, stats.tokens_issued), (1, 2));
    assert_eq!(stats.downloads, outcome.files.len() + 1);
    assert_eq!(stats.deletes, 1, "the DELETE used the fresh token");

    server.set_faults(Faults {
        download_token_revoked: 2,
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let (progress, _) = watch::channel(ExportProgress::default());
    let err = client
        .export_to_dir(&request, dir.path(), &progress)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Http { status: 401, message, .. } if message.contains("not valid")),
        "{err}"
    );
    let stats = server.stats();
    assert_eq!((stats.unauthorized, stats.tokens_issued), (3, 3));
}

#[tokio::test]
async fn open_servers_need_no_auth() {
    let server = demo(DemoConfig::default().with_require_auth(false)).await;
    let client = BulkClient::try_new(server.base_url(), None, options())
        .await
        .unwrap();
    let types = client.resource_types().await.unwrap();
    assert!(
        types.iter().any(|t| t == "Patient") && types.iter().any(|t| t == "Observation"),
        "{types:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let (outcome, _) = export(
        &client,
        &ExportRequest::new(ExportLevel::System).with_types(["Condition"]),
        dir.path(),
    )
    .await;
    assert!(!outcome.manifest.requires_access_token);
    assert_eq!(downloaded(&outcome, "Condition"), expected("Condition"));
    assert_eq!(server.stats().token_requests, 0);
}

/// Polls `future` until the export reaches `phase`, then hands the future back unfinished.
async fn run_until<F: std::future::Future + Unpin>(
    future: &mut F,
    watcher: &mut watch::Receiver<ExportProgress>,
    phase: ExportPhase,
) {
    tokio::select! {
        _ = future => panic!("the export finished before {phase:?}"),
        reached = watcher.wait_for(|p| p.phase == phase) => { reached.unwrap(); }
    }
}

#[tokio::test]
async fn a_restarted_process_resumes_polling_the_saved_job() {
    let server = demo(DemoConfig::default().with_status_polls(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient"]);
    {
        let client = client(&server, rs384(&server)).await;
        let (progress, mut watcher) = watch::channel(ExportProgress::default());
        let mut first = Box::pin(client.export_to_dir(&request, dir.path(), &progress));
        run_until(&mut first, &mut watcher, ExportPhase::Waiting).await;
        assert!(dir.path().join(".fhirflight-job.json").exists());
        // A crash: the future vanishes without running its destructors.
        std::mem::forget(first);
    }
    assert_eq!(server.stats().deletes, 0);

    // A new process: the saved status URL is polled, no new kick-off.
    let client = client(&server, rs384(&server)).await;
    let polls_before = server.stats().status_polls;
    let (progress, watcher) = watch::channel(ExportProgress::default());
    let resumed = tokio::time::timeout(
        Duration::from_secs(60),
        client.export_to_dir(&request, dir.path(), &progress),
    )
    .await;
    let outcome = resumed.expect("resumed job finished").unwrap();
    assert!(watcher.borrow().resumed);
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
    let stats = server.stats();
    assert_eq!(stats.kickoffs.len(), 1, "no second kick-off");
    assert!(stats.status_polls > polls_before);
    assert_eq!(stats.deletes, 1);
    assert!(!dir.path().join(".fhirflight-job.json").exists());
}

/// Runs `request` with no retries while the server breaks downloads: the export fails on the
/// broken connection and keeps its job (and folder) for the next run.
async fn fail_on_a_broken_download(server: &DemoServer, request: &ExportRequest, dir: &Path) {
    let strict = BulkClient::try_new(
        server.base_url(),
        Some(rs384(server)),
        options().with_retry_budget(0),
    )
    .await
    .unwrap();
    let (progress, _) = watch::channel(ExportProgress::default());
    let err = strict
        .export_to_dir(request, dir, &progress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err}");
    assert!(
        dir.join(".fhirflight-job.json").exists(),
        "job kept for the next run"
    );
}

#[tokio::test]
async fn a_failed_download_keeps_the_job_and_the_next_run_finishes_it() {
    let server = demo(DemoConfig::default()).await;
    server.set_faults(Faults {
        break_download_after: Some(1500),
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Observation"]);
    fail_on_a_broken_download(&server, &request, dir.path()).await;
    assert_eq!(server.stats().deletes, 0);

    server.set_faults(Faults::default());
    let client = client(&server, rs384(&server)).await;
    let (outcome, progress) = export(&client, &request, dir.path()).await;
    assert!(progress.resumed);
    assert_eq!(downloaded(&outcome, "Observation"), expected("Observation"));
    let stats = server.stats();
    assert_eq!((stats.kickoffs.len(), stats.deletes), (1, 1));
}

#[tokio::test]
async fn every_page_of_a_paged_manifest_is_downloaded_and_resumed() {
    let server = demo(
        DemoConfig::default()
            .with_page_size(3)
            .with_manifest_page_size(2),
    )
    .await;
    server.set_faults(Faults {
        break_download_after: Some(500),
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient", "Condition"]);
    // A first run fails on a broken download, keeping the job; the second resumes it.
    fail_on_a_broken_download(&server, &request, dir.path()).await;
    let pages_first_run = server.stats().manifest_pages;

    let client = client(&server, rs384(&server)).await;
    let (outcome, progress) = export(&client, &request, dir.path()).await;
    assert!(progress.resumed);
    for ty in ["Patient", "Condition"] {
        assert_eq!(downloaded(&outcome, ty), expected(ty), "{ty}");
    }
    let files = outcome.manifest.output.len();
    let pages = files.div_ceil(2);
    assert!(pages > 2, "{files} files on {pages} pages");
    assert_eq!(outcome.files.len(), files, "the files of every page");
    assert!(outcome.manifest.next_page().is_none(), "pages merged");
    for (file, listed) in outcome.files.iter().zip(&outcome.manifest.output) {
        assert_eq!(Some(file.lines), listed.count, "{}", file.path.display());
    }
    let stats = server.stats();
    assert_eq!(pages_first_run, pages - 1, "the first run read every page");
    assert_eq!(
        stats.manifest_pages,
        2 * (pages - 1),
        "so did the resumed run"
    );
    assert_eq!((stats.kickoffs.len(), stats.deletes), (1, 1));
}

#[tokio::test]
async fn dropping_the_export_deletes_the_job() {
    let server = demo(DemoConfig::default().with_status_polls(20)).await;
    let client = client(&server, rs384(&server)).await;
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient"]);
    let (progress, mut watcher) = watch::channel(ExportProgress::default());
    let mut export = Box::pin(client.export_to_dir(&request, dir.path(), &progress));
    run_until(&mut export, &mut watcher, ExportPhase::Waiting).await;
    drop(export); // what Ctrl-C or a timeout does
    assert!(!dir.path().join(".fhirflight-job.json").exists());
    // The DELETE runs on a spawned task: wait for the server to see it.
    tokio::time::timeout(Duration::from_secs(10), async {
        while server.stats().deletes == 0 {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("DELETE sent");
}

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

/// A file shorter than the manifest's `count` is an error naming both numbers, and neither a
/// final nor a partial file is left behind.
#[tokio::test]
async fn a_line_count_short_of_the_manifest_count_fails_the_export() {
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
    let dir = tempfile::tempdir().unwrap();
    let (progress, _) = watch::channel(ExportProgress::default());
    let err = client
        .export_to_dir(
            &ExportRequest::new(ExportLevel::System),
            dir.path(),
            &progress,
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{base}p.ndjson: downloaded 1 lines, the manifest says count = 2")
    );
    assert!(!dir.path().join("Patient.0.ndjson").exists());
    assert!(!dir.path().join(".Patient.0.ndjson.part").exists());
}

/// The test CA of `tests/fixtures/tls/` (see its README).
const TEST_CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/ca.pem");

/// A demo server speaking HTTPS with a certificate only the test CA vouches for.
async fn tls_demo() -> DemoServer {
    demo(DemoConfig::default().with_tls(
        include_str!("../fixtures/tls/server.pem"),
        include_str!("../fixtures/tls/server.key"),
    ))
    .await
}

#[tokio::test]
async fn a_private_certificate_authority_needs_its_bundle() {
    let server = tls_demo().await;
    assert_eq!(server.base_url().scheme(), "https");
    let err = BulkClient::try_new(server.base_url(), Some(rs384(&server)), options())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "GET {}/metadata: TLS: invalid peer certificate: UnknownIssuer; if the server's certificate \
             comes from a private certificate authority, trust its PEM bundle (--ca-bundle, \
             ClientOptions::with_ca_bundle)",
            server.base_url()
        )
    );

    let trusting = BulkClient::try_new(
        server.base_url(),
        Some(rs384(&server)),
        options().with_ca_bundle(TEST_CA),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient"]);
    let (outcome, _) = export(&trusting, &request, dir.path()).await;
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
    assert_eq!(server.stats().deletes, 1);
}

/// `--insecure-skip-tls-verify`: the same server, no bundle, verification off (its warning is
/// tested in `bulk::options`).
#[tokio::test]
async fn skipping_verification_reaches_an_untrusted_server() {
    let server = tls_demo().await;
    let client = BulkClient::try_new(
        server.base_url(),
        Some(rs384(&server)),
        options().with_danger_accept_invalid_certs(true),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Condition"]);
    let (outcome, _) = export(&client, &request, dir.path()).await;
    assert_eq!(downloaded(&outcome, "Condition"), expected("Condition"));
}

/// A demo server (files of 3 resources, manifest pages of 2 files) that puts the parts of each
/// job `foreign` picks on `http://localhost:PORT/`: the same listener under another host name,
/// so another origin serving the same content.
async fn foreign_demo(
    config: DemoConfig,
    foreign: impl FnOnce(Url) -> ForeignOrigin,
) -> DemoServer {
    let server = demo(config.with_page_size(3).with_manifest_page_size(2)).await;
    let url = Url::parse(&format!("http://localhost:{}/", server.local_addr().port())).unwrap();
    server.set_faults(Faults {
        foreign_origin: Some(foreign(url)),
        ..Faults::default()
    });
    server
}

/// A Patient and Condition export from `server` into `dir`.
async fn try_export(
    server: &DemoServer,
    options: ClientOptions,
    dir: &Path,
) -> fhirflight::Result<ExportOutcome> {
    let client = BulkClient::try_new(server.base_url(), Some(rs384(server)), options).await?;
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient", "Condition"]);
    let (progress, _) = watch::channel(ExportProgress::default());
    client.export_to_dir(&request, dir, &progress).await
}

/// Checks that an export brought everything, and returns the requests that came through the
/// foreign origin, after checking there were some, all to paths starting with `prefix`.
async fn exported_through_foreign(
    server: &DemoServer,
    options: ClientOptions,
    prefix: &str,
) -> Vec<ForeignRequest> {
    let dir = tempfile::tempdir().unwrap();
    let outcome = try_export(server, options, dir.path()).await.unwrap();
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
    assert_eq!(downloaded(&outcome, "Condition"), expected("Condition"));
    let stats = server.stats();
    // The server's own origin demands the token and refused nothing: it got the token.
    assert_eq!((stats.kickoffs[0].status, stats.unauthorized), (202, 0));
    let seen = stats.foreign_requests;
    assert!(!seen.is_empty(), "nothing came through the foreign origin");
    assert!(seen.iter().all(|r| r.path.starts_with(prefix)), "{seen:?}");
    seen
}

#[tokio::test]
async fn files_on_another_origin_are_fetched_without_the_token() {
    let server = foreign_demo(DemoConfig::default(), |url| ForeignOrigin {
        url,
        status: false,
        pages: false,
        files: true,
        requires_auth: false,
    })
    .await;
    let seen = exported_through_foreign(&server, options(), "/files/").await;
    assert!(
        seen.iter().all(|r| r.method == "GET" && !r.authorization),
        "{seen:?}"
    );
    assert!(server.stats().status_polls > 0 && server.stats().deletes == 1);
}

#[tokio::test]
async fn a_listed_token_origin_gets_the_token() {
    let server = foreign_demo(DemoConfig::default(), |url| ForeignOrigin {
        url,
        status: false,
        pages: false,
        files: true,
        requires_auth: true,
    })
    .await;
    let origin = format!("http://localhost:{}", server.local_addr().port());
    let seen =
        exported_through_foreign(&server, options().with_token_origins([origin]), "/files/").await;
    assert!(seen.iter().all(|r| r.authorization), "{seen:?}");
}

#[tokio::test]
async fn a_status_url_on_another_origin_is_polled_and_deleted_without_the_token() {
    let server = foreign_demo(DemoConfig::default().with_status_polls(2), |url| {
        ForeignOrigin {
            url,
            status: true,
            pages: false,
            files: false,
            requires_auth: false,
        }
    })
    .await;
    let seen = exported_through_foreign(&server, options(), "/jobs/").await;
    let (delete, polls) = seen.split_last().unwrap();
    assert_eq!(delete.method, "DELETE", "{seen:?}");
    assert!(
        polls.len() >= 3 && polls.iter().all(|r| r.method == "GET"),
        "{seen:?}"
    );
    assert!(seen.iter().all(|r| !r.authorization), "{seen:?}");
}

#[tokio::test]
async fn manifest_pages_on_another_origin_are_fetched_without_the_token() {
    let server = foreign_demo(DemoConfig::default(), |url| ForeignOrigin {
        url,
        status: false,
        pages: true,
        files: false,
        requires_auth: false,
    })
    .await;
    let seen = exported_through_foreign(&server, options(), "/jobs/").await;
    assert!(seen.len() > 1, "several pages: {seen:?}");
    assert!(
        seen.iter()
            .all(|r| r.path.contains("/manifest/") && !r.authorization),
        "{seen:?}"
    );
}

#[tokio::test]
async fn another_origin_that_demands_the_token_fails_the_export_saying_why() {
    let server = foreign_demo(DemoConfig::default(), |url| ForeignOrigin {
        url,
        status: false,
        pages: false,
        files: true,
        requires_auth: true,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let err = try_export(&server, options(), dir.path())
        .await
        .unwrap_err();
    let origin = format!("http://localhost:{}", server.local_addr().port());
    assert!(
        matches!(&err, Error::Http { status: 401, url, .. } if url.starts_with(&format!("{origin}/files/"))),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("GET {origin}/files/")) && text.ends_with(&format!(
            ".ndjson: HTTP 401: error (login): this server requires a bearer token (SMART Backend \
             Services) (no access token was sent: {origin} is not the FHIR server's origin; list \
             it in token_origins if it should get the token)"
        )),
        "{text}"
    );
    let seen = server.stats().foreign_requests;
    assert!(seen.iter().all(|r| !r.authorization), "{seen:?}");
}

#[tokio::test]
async fn an_https_server_pointing_at_plain_http_is_refused() {
    let tls = DemoConfig::default().with_tls(
        include_str!("../fixtures/tls/server.pem"),
        include_str!("../fixtures/tls/server.key"),
    );
    let refusal = "refused: plain http, and the FHIR server is https: nothing of an export falls \
                   back to http";
    for (status, files, path) in [(false, true, "files"), (true, false, "jobs")] {
        let server = foreign_demo(tls.clone(), |url| ForeignOrigin {
            url,
            status,
            pages: false,
            files,
            requires_auth: false,
        })
        .await;
        assert_eq!(server.base_url().scheme(), "https");
        let dir = tempfile::tempdir().unwrap();
        let err = try_export(&server, options().with_ca_bundle(TEST_CA), dir.path())
            .await
            .unwrap_err()
            .to_string();
        let origin = format!("http://localhost:{}", server.local_addr().port());
        assert!(
            err.starts_with(&format!("{origin}/{path}/")) && err.ends_with(refusal),
            "{err}"
        );
        assert_eq!(
            server.stats().foreign_requests,
            [],
            "nothing went over http"
        );
    }
}

/// An https server that answers every request with a redirect to plain http.
async fn redirecting_to_http() -> Url {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{self, pki_types::pem::PemObject};
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(include_bytes!(
        "../fixtures/tls/server.pem"
    ))
    .collect::<Result<Vec<_>, _>>()
    .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(include_bytes!(
        "../fixtures/tls/server.key"
    ))
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("https://{}/fhir", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut head = [0u8; 4096];
            let _ = tls.read(&mut head).await;
            let response = "HTTP/1.1 307 Temporary Redirect\r\nLocation: \
                            http://127.0.0.1:9/metadata?sig=secret\r\nContent-Length: 0\r\n\r\n";
            let _ = tls.write_all(response.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
    url
}

#[tokio::test]
async fn a_redirect_from_https_to_plain_http_is_refused() {
    let base = redirecting_to_http().await;
    let client = BulkClient::try_new(base.clone(), None, options().with_ca_bundle(TEST_CA))
        .await
        .unwrap();
    let err = client.resource_types().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{base}/metadata: refused a redirect from https to plain http \
             (http://127.0.0.1:9/metadata?sig=***)"
        )
    );
}

/// A minimal HTTP proxy on 127.0.0.1:0: forwards absolute-form requests (one per connection,
/// `Connection: close` upstream) and tunnels `CONNECT`, recording each request line.
struct CountingProxy {
    url: Url,
    seen: Arc<Mutex<Vec<String>>>,
}

impl CountingProxy {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let (client, _) = listener.accept().await.unwrap();
                tokio::spawn(Self::relay(client, Arc::clone(&log)));
            }
        });
        Self { url, seen }
    }

    async fn relay(mut client: tokio::net::TcpStream, log: Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = client.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            head.extend_from_slice(&buf[..n]);
        };
        let text = String::from_utf8(head[..end].to_vec()).unwrap();
        let mut lines = text.split("\r\n");
        let request_line: Vec<&str> = lines.next().unwrap().split(' ').collect();
        let [method, target, version] = request_line[..] else {
            panic!("{request_line:?}")
        };
        log.lock().unwrap().push(format!("{method} {target}"));
        let (mut upstream, forwarded) = if method == "CONNECT" {
            let upstream = tokio::net::TcpStream::connect(target).await.unwrap();
            client
                .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await
                .unwrap();
            (upstream, Vec::new())
        } else {
            let url = Url::parse(target).expect("absolute-form request target");
            let address = (
                url.host_str().unwrap(),
                url.port_or_known_default().unwrap(),
            );
            let upstream = tokio::net::TcpStream::connect(address).await.unwrap();
            let mut forwarded = format!(
                "{method} {} {version}\r\n",
                &url[url::Position::BeforePath..]
            );
            for line in lines.filter(|l| !l.is_empty()) {
                let name = line.split(':').next().unwrap().to_ascii_lowercase();
                if !matches!(
                    name.as_str(),
                    "connection" | "proxy-connection" | "keep-alive"
                ) {
                    forwarded.push_str(line);
                    forwarded.push_str("\r\n");
                }
            }
            forwarded.push_str("Connection: close\r\n\r\n");
            (upstream, forwarded.into_bytes())
        };
        upstream.write_all(&forwarded).await.unwrap();
        upstream.write_all(&head[end..]).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn an_explicit_proxy_carries_every_request() {
    let proxy = CountingProxy::start().await;
    let server = demo(DemoConfig::default()).await;
    let client = BulkClient::try_new(
        server.base_url(),
        Some(rs384(&server)),
        options().with_proxy(proxy.url.clone()),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient", "Condition"]);
    let (outcome, _) = export(&client, &request, dir.path()).await;
    assert_eq!(downloaded(&outcome, "Condition"), expected("Condition"));

    let origin = server.base_url().join("/").unwrap();
    let seen = proxy.seen();
    let count = |prefix: &str| seen.iter().filter(|l| l.starts_with(prefix)).count();
    let stats = server.stats();
    assert_eq!(
        count(&format!("POST {origin}auth/token")),
        stats.token_requests
    );
    assert_eq!(count(&format!("GET {origin}fhir/$export?_type=")), 1);
    assert_eq!(count(&format!("GET {origin}jobs/")), stats.status_polls);
    assert_eq!(count(&format!("GET {origin}files/")), stats.downloads);
    assert_eq!(count(&format!("DELETE {origin}jobs/")), 1);
    assert!(
        seen.iter()
            .all(|l| l.split(' ').nth(1).unwrap().starts_with(origin.as_str())),
        "only the demo server was asked for: {seen:?}"
    );

    // HTTPS goes through the same proxy, tunnelled by CONNECT.
    let tls = tls_demo().await;
    let client = BulkClient::try_new(
        tls.base_url(),
        Some(rs384(&tls)),
        options()
            .with_ca_bundle(TEST_CA)
            .with_proxy(proxy.url.clone()),
    )
    .await
    .unwrap();
    // A folder of its own: nothing from the export above can stand in for this one's files.
    let dir = tempfile::tempdir().unwrap();
    let (outcome, _) = export(&client, &request, dir.path()).await;
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
    let tunnels = proxy
        .seen()
        .iter()
        .filter(|l| **l == format!("CONNECT {}", tls.local_addr()))
        .count();
    assert!(tunnels >= 1, "{:?}", proxy.seen());
}

/// The proxy variables every child run starts without.
const PROXY_VARIABLES: [&str; 9] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "REQUEST_METHOD",
];

/// Environment variables are read once per process and race between tests, so each case runs
/// [`env_proxy_child`] in a child process of this test binary.
#[tokio::test]
async fn proxies_come_from_the_environment() {
    let proxy = CountingProxy::start().await;
    let server = demo(DemoConfig::default().with_require_auth(false)).await;
    let proxy_url = proxy.url.as_str();
    // (environment, explicit proxy too, expected through the proxy)
    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Env, bool, bool); 6] = [
        (&[("HTTP_PROXY", proxy_url)], false, true),
        (&[("http_proxy", proxy_url)], false, true),
        (&[("all_proxy", proxy_url)], false, true),
        // HTTPS_PROXY is for https:// URLs only.
        (&[("HTTPS_PROXY", proxy_url)], false, false),
        (
            &[
                ("HTTP_PROXY", proxy_url),
                ("NO_PROXY", "localhost,127.0.0.1"),
            ],
            false,
            false,
        ),
        // An explicit proxy still leaves NO_PROXY hosts alone.
        (&[("no_proxy", "127.0.0.0/8")], true, false),
    ];
    for (env, explicit, through_proxy) in cases {
        let before = proxy.seen().len();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child
            .args([
                "--exact",
                "bulk::env_proxy_child",
                "--ignored",
                "--test-threads=1",
            ])
            .env("FHIRFLIGHT_TEST_BASE", server.base_url().as_str());
        for var in PROXY_VARIABLES {
            child.env_remove(var);
        }
        child.envs(env.iter().copied());
        if explicit {
            child.env("FHIRFLIGHT_TEST_PROXY", proxy_url);
        }
        let output = tokio::task::spawn_blocking(move || child.output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("test bulk::env_proxy_child ... ok"),
            "{env:?}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let proxied = proxy.seen().len() - before;
        assert_eq!(
            proxied > 0,
            through_proxy,
            "{env:?}: {proxied} requests proxied"
        );
    }
    assert_eq!(server.stats().kickoffs.len(), cases.len());
}

/// One export with the proxy settings of the environment `proxies_come_from_the_environment`
/// gives it (plus an explicit proxy when `FHIRFLIGHT_TEST_PROXY` is set).
#[tokio::test]
#[ignore = "run by proxies_come_from_the_environment in a child process"]
async fn env_proxy_child() {
    let base =
        std::env::var("FHIRFLIGHT_TEST_BASE").expect("run by proxies_come_from_the_environment");
    let mut options = options();
    if let Ok(proxy) = std::env::var("FHIRFLIGHT_TEST_PROXY") {
        options = options.with_proxy(proxy.parse().unwrap());
    }
    let client = BulkClient::try_new(base.parse().unwrap(), None, options)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient"]);
    let (outcome, _) = export(&client, &request, dir.path()).await;
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
}
