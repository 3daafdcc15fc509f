//! Time limits and a server that is down or never needed: a stuck job ends after the polls
//! without progress, the export deadline names itself, `Retry-After` as an epoch time is an
//! instant (and a wait above the maximum is logged as capped), a refused connection fails fast
//! naming the cause, and building a client asks the server nothing.

use std::time::Duration;

use fhirflight::Error;
use fhirflight::bulk::{BulkClient, ClientOptions, ExportLevel, ExportProgress, ExportRequest};
use fhirflight::demo::{DemoConfig, Faults};
use tokio::sync::watch;

use super::{client, demo, downloaded, expected, export, logs_of, options, rs384};

fn patients() -> ExportRequest {
    ExportRequest::new(ExportLevel::System).with_types(["Patient"])
}

#[tokio::test]
async fn a_stuck_job_ends_after_the_polls_without_progress_and_is_kept() {
    let server = demo(DemoConfig::default()).await;
    server.set_faults(Faults {
        status_stuck: true,
        ..Faults::default()
    });
    let client = BulkClient::try_new(
        server.base_url(),
        Some(rs384(&server)),
        options().with_max_polls_without_progress(3),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (progress, _) = watch::channel(ExportProgress::default());
    let err = client
        .export_to_dir(&patients(), dir.path(), &progress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err}");
    assert!(
        err.to_string().ends_with(
            ": no progress in 3 status polls in a row (X-Progress \"in progress\"); the limit is 3 \
             (max_polls_without_progress); the job \
             is kept on the server"
        ),
        "{err}"
    );
    let stats = server.stats();
    assert_eq!(
        stats.status_polls, 4,
        "the first poll shows progress, then 3 without"
    );
    assert_eq!(stats.deletes, 0);
    assert!(dir.path().join(".fhirflight-job.json").exists());

    // Once the server moves on, the kept job finishes.
    server.set_faults(Faults::default());
    let (outcome, progress) = export(&client, &patients(), dir.path()).await;
    assert!(progress.resumed);
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
    assert_eq!(server.stats().kickoffs.len(), 1);
}

#[tokio::test]
async fn the_export_deadline_names_itself_and_keeps_the_job() {
    let server = demo(DemoConfig::default()).await;
    server.set_faults(Faults {
        status_stuck: true,
        ..Faults::default()
    });
    let client = BulkClient::try_new(
        server.base_url(),
        Some(rs384(&server)),
        options().with_export_deadline(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (progress, _) = watch::channel(ExportProgress::default());
    let err = client
        .export_to_dir(&patients(), dir.path(), &progress)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}/$export?_type=Patient: the export took longer than its deadline of 300 ms \
             (export_deadline); the job is kept on the server",
            server.base_url()
        )
    );
    assert_eq!(server.stats().deletes, 0);
    assert!(dir.path().join(".fhirflight-job.json").exists());
}

/// The waits (seconds) of the lines of `logs` that end with `<prefix><N> s` or `<N> ms`.
fn waits(logs: &str, prefix: &str) -> Vec<f64> {
    logs.lines()
        .filter_map(|line| line.split(prefix).nth(1))
        .map(|rest| {
            let number = rest.split(' ').next().unwrap().parse::<f64>().unwrap();
            if rest.split(' ').nth(1) == Some("ms") {
                number / 1000.0
            } else {
                number
            }
        })
        .collect()
}

// One thread: the logging subscriber is the thread's, and so are the server's tasks.
#[tokio::test(flavor = "current_thread")]
async fn retry_after_as_epoch_seconds_is_an_instant_and_long_waits_are_capped() {
    let server = demo(DemoConfig::default().with_status_polls(2)).await;
    server.set_faults(Faults {
        retry_after_epoch: Some(1),
        ..Faults::default()
    });
    // The bounds would let a misread epoch time (decades) through as a one-minute wait.
    let slow = ClientOptions::default()
        .with_retry_after_bounds(Duration::from_millis(1), Duration::from_secs(60));
    let patient = BulkClient::try_new(server.base_url(), Some(rs384(&server)), slow)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ((outcome, _), logs) = logs_of(export(&patient, &patients(), dir.path())).await;
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
    let polls = waits(&logs, "next status poll in ");
    assert_eq!(polls.len(), 2, "{logs}");
    assert!(
        polls.iter().all(|w| *w <= 1.0),
        "one second at most: {polls:?}"
    );

    // Thirty seconds from now, with a maximum of 20 ms: capped, and logged as capped.
    server.set_faults(Faults {
        retry_after_epoch: Some(30),
        ..Faults::default()
    });
    let client = client(&server, rs384(&server)).await;
    let ((outcome, _), logs) = logs_of(export(&client, &patients(), dir.path())).await;
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
    let asked = waits(&logs, "the server asks to wait ");
    assert_eq!(asked.len(), 2, "{logs}");
    // An HTTP date has whole seconds, and a loaded machine may take seconds between the
    // server's answer and the client's reading of it: some 30 s, never decades.
    assert!(asked.iter().all(|w| (20.0..=30.0).contains(w)), "{asked:?}");
    assert_eq!(
        logs.matches("; capped at 20 ms (the retry policy's maximum)")
            .count(),
        2,
        "{logs}"
    );
}

#[tokio::test]
async fn a_refused_connection_fails_fast_naming_the_cause() {
    // A port nobody listens on any more.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let server = demo(DemoConfig::default()).await;
    let base: url::Url = format!("http://127.0.0.1:{port}/fhir").parse().unwrap();
    // Default waits (1 s and up), a short connect deadline: one or two attempts, not ten.
    let options = ClientOptions::default().with_connect_retry_deadline(Duration::from_millis(1500));
    let client = BulkClient::try_new(base.clone(), Some(rs384(&server)), options)
        .await
        .expect("building a client needs no server");
    let dir = tempfile::tempdir().unwrap();
    let (progress, _) = watch::channel(ExportProgress::default());
    let err = client
        .export_to_dir(&patients(), dir.path(), &progress)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("GET {base}/.well-known/smart-configuration: ")),
        "discovery is the first request: {text}"
    );
    assert!(text.to_lowercase().contains("connection refused"), "{text}");
    assert!(!dir.path().join(".fhirflight-job.json").exists(), "no job");
}

#[tokio::test]
async fn building_a_client_asks_the_server_nothing() {
    let server = demo(DemoConfig::default()).await;
    let client = client(&server, rs384(&server)).await;
    assert_eq!(server.stats().requests, 0, "no discovery, no token yet");
    let dir = tempfile::tempdir().unwrap();
    let (outcome, _) = export(&client, &patients(), dir.path()).await;
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
    let stats = server.stats();
    assert_eq!(
        stats.token_requests, 1,
        "the first use discovered and got a token"
    );
    assert!(stats.requests > stats.token_requests);
}
