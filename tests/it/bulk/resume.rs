//! An export's lifecycle across runs: a restarted process resumes polling the saved job, a
//! failed download keeps the job for the next run, every page of a paged manifest is downloaded
//! and resumed, and dropping the export deletes the job on the server.

use std::path::Path;
use std::time::Duration;

use fhirflight::Error;
use fhirflight::bulk::{BulkClient, ExportLevel, ExportPhase, ExportProgress, ExportRequest};
use fhirflight::demo::{DemoConfig, DemoServer, Faults};
use tokio::sync::watch;

use super::{client, demo, downloaded, expected, export, options, rs384};

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
