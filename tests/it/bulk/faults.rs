//! A server that misbehaves: transient errors and 429s are retried, errors name the method, URL,
//! status and the OperationOutcome's text, broken downloads resume (with `Range`) or restart
//! (without), and error files and malformed lines reach the caller as they were served; counts
//! are advisory, a failed type is a warning, expired files start a new export, and a tombstone
//! listed twice is one deletion.

use fhirflight::Error;
use fhirflight::bulk::{BulkClient, ExportLevel, ExportProgress, ExportRequest};
use fhirflight::demo::{DemoConfig, Faults};
use fhirflight::warning::{Warning, WarningKind};
use serde_json::Value;
use tokio::sync::watch;

use super::{client, demo, downloaded, expected, export, options, rs384};

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
        outcome.warnings[0].kind == WarningKind::ServerError
            && outcome.warnings[0].message.starts_with("error ("),
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
async fn a_count_mismatch_is_downloaded_again_then_kept_with_a_warning() {
    let server = demo(DemoConfig::default()).await;
    server.set_faults(Faults {
        count_off_by_one: true,
        ..Faults::default()
    });
    let client = client(&server, rs384(&server)).await;
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient", "Condition"]);
    let (outcome, _) = export(&client, &request, dir.path()).await;
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
    assert_eq!(downloaded(&outcome, "Condition"), expected("Condition"));
    let first = &outcome.manifest.output[0];
    let lines = expected("Patient").lines().count() as u64;
    assert_eq!(first.count, Some(lines + 1));
    let warning = Warning::new(
        WarningKind::CountMismatch,
        format!(
            "{}: downloaded twice with {lines} lines, the manifest says count = {}",
            first.url,
            lines + 1
        ),
    )
    .with_resource_type("Patient");
    assert_eq!(outcome.warnings, [warning]);
    let stats = server.stats();
    assert_eq!(stats.downloads, outcome.files.len() + 1, "one file twice");
    assert_eq!(stats.deletes, 1);

    // Strict counts fail instead, for good: the job is deleted and forgotten.
    let strict = BulkClient::try_new(
        server.base_url(),
        Some(rs384(&server)),
        options().with_strict_counts(true),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (progress, _) = watch::channel(ExportProgress::default());
    let err = strict
        .export_to_dir(&request, dir.path(), &progress)
        .await
        .unwrap_err();
    let Error::Protocol { url, message, .. } = &err else {
        panic!("{err}")
    };
    assert!(url.contains("/files/"), "{url}");
    assert_eq!(
        message,
        &format!(
            "downloaded twice with {lines} lines, the manifest says count = {} (strict counts)",
            lines + 1
        )
    );
    assert_eq!(server.stats().deletes, 2);
    assert!(!dir.path().join(".fhirflight-job.json").exists());
    assert!(!dir.path().join("manifest.json").exists());
}

#[tokio::test]
async fn an_error_file_naming_a_type_is_its_warning_and_the_other_types_succeed() {
    let server = demo(DemoConfig::default()).await;
    server.set_faults(Faults {
        failed_type: Some("Condition".into()),
        ..Faults::default()
    });
    let client = client(&server, rs384(&server)).await;
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient", "Condition"]);
    let (outcome, _) = export(&client, &request, dir.path()).await;
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
    assert!(outcome.files.iter().all(|f| f.resource_type == "Patient"));
    let warning = Warning::new(
        WarningKind::ServerError,
        "error (exception): demo fault: the Condition resources could not be exported",
    )
    .with_resource_type("Condition");
    assert_eq!(outcome.warnings, [warning]);
    assert_eq!(server.stats().deletes, 1);
}

#[tokio::test]
async fn expired_files_delete_the_job_and_export_once_more() {
    let server = demo(DemoConfig::default()).await;
    server.set_faults(Faults {
        files_gone_once: true,
        ..Faults::default()
    });
    let client = client(&server, rs384(&server)).await;
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient"]);
    let (outcome, progress) = export(&client, &request, dir.path()).await;
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
    assert!(!progress.resumed, "a new job, not the dead one resumed");
    let stats = server.stats();
    assert_eq!(stats.kickoffs.len(), 2, "one new export");
    assert_eq!(stats.deletes, 2, "the expired job, then the finished one");
    assert!(dir.path().join("manifest.json").exists());
    assert!(!dir.path().join(".fhirflight-job.json").exists());
}

#[tokio::test]
async fn a_tombstone_listed_twice_is_one_deletion() {
    let server = demo(DemoConfig::default()).await;
    let client = client(&server, rs384(&server)).await;
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient"]);
    let dir = tempfile::tempdir().unwrap();
    let (full, _) = export(&client, &request, dir.path()).await;
    let patients = super::ids(&downloaded(&full, "Patient"));
    server.delete("Patient", &patients[0]);
    server.delete("Patient", &patients[1]);
    server.set_faults(Faults {
        duplicate_tombstones: true,
        ..Faults::default()
    });
    let since = request.with_since(full.manifest.transaction_time.clone());
    let (delta, _) = export(&client, &since, dir.path()).await;
    assert_eq!(
        delta.manifest.deleted.len(),
        2,
        "the same tombstones in two files"
    );
    let deleted: Vec<(&str, &str)> = delta
        .deleted
        .iter()
        .map(|d| (d.resource_type.as_str(), d.id.as_str()))
        .collect();
    assert_eq!(
        deleted,
        [
            ("Patient", patients[0].as_str()),
            ("Patient", patients[1].as_str())
        ]
    );
}
