//! An export's lifecycle across runs: a restarted process resumes polling the saved job, a
//! failed download keeps the job for the next run (and the folder lists no file it lacks),
//! every page of a paged manifest is downloaded and resumed, the files of partial manifests are
//! downloaded while the export runs, dropping the export keeps the job for the next run, and
//! only an explicit cancel deletes it.

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
    assert!(
        !dir.join("manifest.json").exists(),
        "the folder's manifest waits for the export to be complete"
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

/// A demo server of many small files (3 resources each) listed on manifest pages of 2.
async fn paged_demo() -> DemoServer {
    demo(
        DemoConfig::default()
            .with_page_size(3)
            .with_manifest_page_size(2),
    )
    .await
}

#[tokio::test]
async fn every_page_of_a_paged_manifest_is_downloaded_and_resumed() {
    let server = paged_demo().await;
    server.set_faults(Faults {
        break_download_after: Some(500),
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient", "Condition"]);
    // A first run fails on a broken download, keeping the job; the second resumes it.
    fail_on_a_broken_download(&server, &request, dir.path()).await;

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
    assert!(
        stats.manifest_pages <= 2 * (pages - 1),
        "each run reads each page once at most"
    );
    assert_eq!((stats.kickoffs.len(), stats.deletes), (1, 1));
    let manifest: fhirflight::bulk::Manifest =
        serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest, outcome.manifest);
    assert!(!dir.path().join(".fhirflight-manifest.json").exists());
}

#[tokio::test]
async fn partial_manifests_are_downloaded_while_the_export_runs() {
    let server = paged_demo().await;
    let client = client(&server, rs384(&server)).await;
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System)
        .with_types(["Patient", "Condition"])
        .with_allow_partial_manifests(true);
    let (outcome, _) = export(&client, &request, dir.path()).await;
    for ty in ["Patient", "Condition"] {
        assert_eq!(downloaded(&outcome, ty), expected(ty), "{ty}");
    }
    let files = outcome.manifest.output.len();
    let pages = files.div_ceil(2);
    assert!(pages > 2, "{files} files on {pages} pages");
    assert_eq!(outcome.files.len(), files, "each file once");
    let stats = server.stats();
    assert!(
        stats.kickoffs[0]
            .params
            .contains(&("allowPartialManifests".into(), "true".into())),
        "{:?}",
        stats.kickoffs[0].params
    );
    // The demo releases every page but the last while the job runs, and completes once their
    // files were fetched: all of those were downloaded before the final manifest.
    assert_eq!(stats.downloads_while_running, 2 * (pages - 1));
    assert_eq!(stats.downloads, files);
    assert_eq!((stats.kickoffs.len(), stats.deletes), (1, 1));
    assert!(dir.path().join("manifest.json").exists());
}

#[tokio::test]
async fn an_export_with_partial_manifests_resumes_after_a_broken_download() {
    let server = paged_demo().await;
    server.set_faults(Faults {
        break_download_after: Some(500),
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System)
        .with_types(["Patient", "Condition"])
        .with_allow_partial_manifests(true);
    fail_on_a_broken_download(&server, &request, dir.path()).await;

    let client = client(&server, rs384(&server)).await;
    let (outcome, progress) = export(&client, &request, dir.path()).await;
    assert!(progress.resumed);
    for ty in ["Patient", "Condition"] {
        assert_eq!(downloaded(&outcome, ty), expected(ty), "{ty}");
    }
    assert_eq!(outcome.files.len(), outcome.manifest.output.len());
    let stats = server.stats();
    assert_eq!((stats.kickoffs.len(), stats.deletes), (1, 1));
}

/// Runs an export of `request` until it polls, then drops it, as Ctrl-C, a cancelled statement
/// or a client gone do.
async fn interrupt(client: &BulkClient, request: &ExportRequest, dir: &Path) {
    let (progress, mut watcher) = watch::channel(ExportProgress::default());
    let mut export = Box::pin(client.export_to_dir(request, dir, &progress));
    run_until(&mut export, &mut watcher, ExportPhase::Waiting).await;
    drop(export);
}

#[tokio::test]
async fn dropping_the_export_keeps_the_job_for_the_next_run() {
    let server = demo(DemoConfig::default().with_status_polls(20)).await;
    let client = client(&server, rs384(&server)).await;
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient"]);
    interrupt(&client, &request, dir.path()).await;
    assert!(dir.path().join(".fhirflight-job.json").exists());
    assert!(!dir.path().join("manifest.json").exists());
    assert_eq!(
        server.stats().deletes,
        0,
        "nothing deletes the job behind our back"
    );

    let (outcome, progress) = export(&client, &request, dir.path()).await;
    assert!(progress.resumed);
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
    let stats = server.stats();
    assert_eq!((stats.kickoffs.len(), stats.deletes), (1, 1));
}

#[tokio::test]
async fn only_an_explicit_cancel_deletes_the_job_and_clears_the_folder() {
    let server = demo(DemoConfig::default()).await;
    server.set_faults(Faults {
        break_download_after: Some(1500),
        ..Faults::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Observation"]);
    fail_on_a_broken_download(&server, &request, dir.path()).await;
    assert_eq!(server.stats().deletes, 0);
    let parts = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(parts > 1, "the job state and a partial file");

    let client = client(&server, rs384(&server)).await;
    assert!(client.cancel_export(dir.path()).await.unwrap());
    assert_eq!(server.stats().deletes, 1);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(
        !client.cancel_export(dir.path()).await.unwrap(),
        "nothing left to cancel"
    );
    assert_eq!(server.stats().deletes, 1);
}

#[tokio::test]
async fn a_job_saved_for_another_server_is_forgotten_without_asking_it() {
    // A demo server of an earlier run (another port), whose job was interrupted.
    let earlier = demo(DemoConfig::default().with_status_polls(20)).await;
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient"]);
    interrupt(
        &client(&earlier, rs384(&earlier)).await,
        &request,
        dir.path(),
    )
    .await;

    let server = demo(DemoConfig::default()).await;
    let (outcome, progress) =
        export(&client(&server, rs384(&server)).await, &request, dir.path()).await;
    assert!(!progress.resumed);
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
    // A poll in flight when the run was dropped may still arrive; a cancel (DELETE) may not.
    assert_eq!(
        earlier.stats().deletes,
        0,
        "the earlier server was not asked to cancel"
    );
}
