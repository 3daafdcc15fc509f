//! The catalog over the demo Bulk Data server: pushdown (`_typeFilter`, `_since`) returns the same
//! rows, a dropped query leaves its export running while only a cancel deletes it, a killed process leaves the cache usable, the
//! embedding example runs, and a join starts one export while a refresh merges changes.

use super::*;
use fhirflight::bulk::{BulkClient, ClientOptions};
use fhirflight::catalog::BulkSource;
use fhirflight::demo::{DemoConfig, DemoServer, Faults};
use std::time::Duration;

#[allow(dead_code, unreachable_pub)]
#[path = "../../../examples/embed.rs"]
mod embed;

async fn demo_catalog(cache: &Path) -> (DemoServer, SessionContext, FhirCatalog) {
    let server = DemoServer::start(DemoConfig::default().with_seed(7).with_patients(12))
        .await
        .unwrap();
    let (ctx, fhir) = catalog_of(&server, cache).await;
    (server, ctx, fhir)
}

async fn catalog_of(server: &DemoServer, cache: &Path) -> (SessionContext, FhirCatalog) {
    let client = client_of(server, ClientOptions::default()).await;
    context(Arc::new(BulkSource::new(client)), cache, Freshness::Never).await
}

/// A client of `server` with `options`, polling every few milliseconds.
async fn client_of(server: &DemoServer, options: ClientOptions) -> BulkClient {
    let options =
        options.with_retry_after_bounds(Duration::from_millis(1), Duration::from_millis(20));
    server.client(options).await.unwrap()
}

fn type_filters(server: &DemoServer, kickoff: usize) -> Vec<String> {
    let kickoffs = server.stats().kickoffs;
    kickoffs[kickoff]
        .params
        .iter()
        .filter(|(k, _)| k == "_typeFilter" || k == "_since")
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
}

#[tokio::test]
async fn pushdown_sends_type_filter_and_since_and_returns_the_same_rows() {
    let (pushed_cache, full_cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (server, ctx, _fhir) = demo_catalog(pushed_cache.path()).await;
    let (full_ctx, _) = catalog_of(&server, full_cache.path()).await;
    server.upsert(json!({"resourceType": "Patient", "id": "late", "gender": "female"}));
    let since =
        fhirflight::snapshot::rfc3339(std::time::SystemTime::now() - Duration::from_secs(3600));
    let queries = [
        "SELECT id FROM src.fhir.patient WHERE gender = 'female'".to_owned(),
        "SELECT o.id, o.status FROM src.fhir.observation o \
         WHERE o.code_coding_0_code = '8867-4' AND o.status = 'final'"
            .to_owned(),
        format!("SELECT id FROM src.fhir.patient WHERE \"meta_lastUpdated\" >= '{since}'"),
    ];
    let mut pushed = Vec::new();
    for (i, query) in queries.iter().enumerate() {
        pushed.push(rows(&ctx, query).await);
        assert_eq!(server.stats().kickoffs.len(), i + 1);
    }
    assert!(
        pushed[0].contains(&"late".to_owned()) && pushed[0].len() < 13,
        "{:?}",
        pushed[0]
    );
    assert!(
        !pushed[1].is_empty(),
        "the demo has heart-rate observations"
    );
    assert!(pushed[2].contains(&"late".to_owned()), "{:?}", pushed[2]);
    assert_eq!(
        type_filters(&server, 0),
        ["_typeFilter=Patient?gender=female"]
    );
    assert_eq!(
        type_filters(&server, 1),
        ["_typeFilter=Observation?code=8867-4&status=final"]
    );
    let sent = type_filters(&server, 2);
    assert_eq!(sent.len(), 1);
    assert!(sent[0].starts_with("_since="), "{sent:?}");

    let plan = rows(&ctx, &format!("EXPLAIN {}", queries[1]))
        .await
        .join("\n");
    assert!(
        plan.contains("Observation@code=8867-4_status=final-"),
        "EXPLAIN names the filtered snapshot: {plan}"
    );
    assert!(
        scan_lines(&plan)
            .0
            .ends_with("pushed=[_typeFilter=Observation?code=8867-4&status=final]"),
        "{plan}"
    );
    let plan = rows(&ctx, &format!("EXPLAIN {}", queries[2]))
        .await
        .join("\n");
    assert!(
        scan_lines(&plan)
            .0
            .ends_with(&format!("pushed=[{}]", sent[0])),
        "EXPLAIN shows the _since sent: {plan}"
    );
    assert_eq!(
        server.stats().kickoffs.len(),
        3,
        "EXPLAIN reuses the snapshot"
    );

    // The same queries over full snapshots (another cache): the same rows.
    for table in ["patient", "observation"] {
        rows(&full_ctx, &format!("SELECT count(*) FROM src.fhir.{table}")).await;
    }
    for (query, pushed) in queries.iter().zip(&pushed) {
        assert_eq!(&rows(&full_ctx, query).await, pushed, "{query}");
    }
    let kickoffs = server.stats().kickoffs;
    assert!(
        kickoffs[3..]
            .iter()
            .all(|k| k.params.iter().all(|(k, _)| k != "_typeFilter"))
    );
}

#[tokio::test]
async fn a_dropped_query_detaches_from_its_export_and_only_a_cancel_deletes_the_job() {
    let cache = tempfile::tempdir().unwrap();
    // Every export takes 40 status polls (each 1 to 20 ms apart).
    let server = DemoServer::start(
        DemoConfig::default()
            .with_seed(7)
            .with_patients(12)
            .with_status_polls(40)
            .with_retry_after(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let (ctx, fhir) = catalog_of(&server, cache.path()).await;
    let query = tokio::spawn({
        let ctx = ctx.clone();
        async move { rows(&ctx, "SELECT id FROM src.fhir.patient").await }
    });
    crate::until("a status poll", || server.stats().status_polls > 0).await;
    query.abort();
    assert!(query.await.unwrap_err().is_cancelled());
    // The export runs on without its query and commits: the next query needs no export.
    crate::until("the export's end", || {
        fhir.exports()[0].state != ExportState::Running
    })
    .await;
    assert_eq!(fhir.exports()[0].state, ExportState::Done);
    assert_eq!(
        rows(&ctx, "SELECT id FROM src.fhir.patient").await.len(),
        12
    );
    assert_eq!(server.stats().kickoffs.len(), 1);
    assert_eq!(server.stats().deletes, 1, "a finished job is deleted");

    // An explicit cancel stops the export and DELETEs its job on the server.
    let query = tokio::spawn({
        let ctx = ctx.clone();
        async move {
            let df = catalog::sql(&ctx, "SELECT id FROM src.fhir.condition").await?;
            df.collect().await
        }
    });
    crate::until("the second export's status poll", || {
        server.stats().kickoffs.len() == 2 && fhir.exports().len() == 2
    })
    .await;
    assert!(fhir.cancel(fhir.exports()[1].id));
    let failed = query.await.unwrap().unwrap_err().to_string();
    assert!(
        failed.contains("cancelled"),
        "the waiting query fails: {failed}"
    );
    crate::until("the job's deletion", || server.stats().deletes == 2).await;
    assert_eq!(fhir.exports()[1].state, ExportState::Cancelled);
    assert!(fhir.store().current("Condition").unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_during_download_leaves_the_cache_usable() {
    a_process_stopped_during_download_leaves_the_cache_usable(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_during_download_exits_130_and_the_next_run_resumes() {
    a_process_stopped_during_download_leaves_the_cache_usable(Some("-INT")).await;
}

/// A demo server whose downloads stall (a chunk every 10 minutes): a run is mid-download until
/// it is stopped.
async fn stalling_server() -> DemoServer {
    let server = DemoServer::start(DemoConfig::default().with_seed(7).with_patients(12))
        .await
        .unwrap();
    server.set_faults(Faults {
        download_chunk_delay: Some(Duration::from_secs(600)),
        ..Faults::default()
    });
    server
}

/// `fhirflight sql` counting `server`'s patients with its cache in `cache` (where the demo
/// client's key is written), its standard output dropped.
fn stalled_sql(server: &DemoServer, cache: &Path) -> std::process::Command {
    let creds = server.credentials();
    let key_file = cache.join("key.jwk.json");
    std::fs::write(&key_file, creds.rs384().private_jwk()).unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_fhirflight"));
    command
        .args(["sql", "SELECT count(*) FROM patient", "--server"])
        .arg(server.base_url().as_str())
        .args(["--client-id", creds.client_id(), "--key-file"])
        .arg(&key_file)
        .arg("--cache-dir")
        .arg(cache)
        .stdout(std::process::Stdio::null());
    command
}

/// `fhirflight sql` stopped mid-download by SIGKILL (`signal` none) or by `kill <signal>`; the
/// next run resumes the job and leaves no folder behind.
async fn a_process_stopped_during_download_leaves_the_cache_usable(signal: Option<&str>) {
    let cache = tempfile::tempdir().unwrap();
    let server = stalling_server().await;
    let mut child = stalled_sql(&server, cache.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    crate::until("a download", || {
        assert!(
            child.try_wait().unwrap().is_none(),
            "fhirflight ended early"
        );
        server.stats().downloads > 0
    })
    .await;
    match signal {
        None => child.kill().unwrap(), // SIGKILL, mid-download
        Some(signal) => {
            let sent = std::process::Command::new("kill")
                .arg(signal)
                .arg(child.id().to_string())
                .status()
                .unwrap();
            assert!(sent.success());
        }
    }
    let out = child.wait_with_output().unwrap();
    if signal.is_some() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{stderr}");
        assert!(stderr.contains("the next run resumes it"), "{stderr}");
    }
    server.set_faults(Faults::default());

    let (ctx, fhir) = catalog_of(&server, cache.path()).await;
    let store = fhir.store();
    assert!(
        store.current("Patient").unwrap().is_none(),
        "no half snapshot"
    );
    assert_eq!(
        rows(&ctx, "SELECT count(*) FROM src.fhir.patient").await,
        ["12"]
    );
    assert_eq!(
        server.stats().kickoffs.len(),
        1,
        "the next run resumed the killed run's job"
    );
    let snapshot = store.current("Patient").unwrap().unwrap();
    assert_eq!(snapshot.table("flattened").unwrap().rows, 12);
    // No folder left behind (a lock file beside a finished job's folder is harmless).
    let folders = |sub: &str| {
        std::fs::read_dir(store.dir().join(sub))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count()
    };
    assert_eq!((folders("tmp"), folders("staging")), (0, 0));
}

#[tokio::test]
async fn the_embedding_example_runs() {
    let cache = tempfile::tempdir().unwrap();
    let server = DemoServer::start(DemoConfig::default().with_seed(7).with_patients(12))
        .await
        .unwrap();
    let batches = embed::conditions_per_gender(&server, cache.path())
        .await
        .unwrap();
    let (ctx, _) = catalog_of(&server, cache.path()).await;
    let expected = rows(
        &ctx,
        "SELECT p.gender, count(*) FROM src.fhir.patient p \
         JOIN src.fhir.condition c ON c.subject_reference = concat('Patient/', p.id) GROUP BY p.gender",
    )
    .await;
    let got: Vec<String> = batches.iter().flat_map(crate::row_strings).collect();
    assert!(!got.is_empty());
    assert_eq!(got, expected);
    assert_eq!(
        server.stats().kickoffs.len(),
        1,
        "the example's snapshot is reused"
    );
}

#[tokio::test]
async fn join_starts_one_export_on_the_server_and_refresh_merges_changes() {
    let cache = tempfile::tempdir().unwrap();
    let (server, ctx, _fhir) = demo_catalog(cache.path()).await;
    let join = "SELECT count(*) FROM src.fhir.patient p \
        JOIN src.fhir.condition c ON c.subject_reference = concat('Patient/', p.id)";
    let first = rows(&ctx, join).await;
    let kickoffs = server.stats().kickoffs;
    assert_eq!(kickoffs.len(), 1, "{kickoffs:?}");
    let mut types = kickoffs[0].types.clone();
    types.sort();
    assert_eq!(types, ["Condition", "Patient"]);
    assert_eq!(rows(&ctx, join).await, first);
    assert_eq!(
        server.stats().kickoffs.len(),
        1,
        "the second query reuses the snapshot"
    );

    let patients = rows(&ctx, "SELECT id FROM src.fhir.patient").await;
    assert_eq!(patients.len(), 12);
    server.upsert(json!({"resourceType": "Patient", "id": "new-one", "gender": "unknown"}));
    server.delete("Patient", &patients[0]);
    let refreshed = rows(
        &ctx,
        "SELECT resources, deleted FROM fhir_refresh('src', 'Patient')",
    )
    .await;
    assert_eq!(refreshed, ["12|1"]);
    let kickoffs = server.stats().kickoffs;
    assert!(
        kickoffs[1].params.iter().any(|(k, _)| k == "_since"),
        "{:?}",
        kickoffs[1]
    );
    let after = rows(
        &ctx,
        &format!(
            "SELECT id, gender FROM src.fhir.patient WHERE id IN ('new-one', '{}')",
            patients[0]
        ),
    )
    .await;
    assert_eq!(after, ["new-one|unknown"]);
}

#[tokio::test]
async fn a_query_answered_from_fresh_snapshots_makes_no_request() {
    let cache = tempfile::tempdir().unwrap();
    let (server, ctx, _) = demo_catalog(cache.path()).await;
    assert_eq!(
        rows(&ctx, "SELECT count(*) FROM src.fhir.patient").await,
        ["12"]
    );
    // A new process over the same cache: its catalog, SMART client and query ask nothing.
    let before = server.stats();
    let (ctx, _) = catalog_of(&server, cache.path()).await;
    assert_eq!(
        rows(&ctx, "SELECT count(*) FROM src.fhir.patient").await,
        ["12"]
    );
    let after = server.stats();
    assert_eq!(
        after.requests, before.requests,
        "no .well-known, token, metadata or export"
    );
    assert_eq!(after.token_requests, before.token_requests);
}

/// A cancel that comes while the kick-off is under way (the server has made the job, its answer
/// is on its way) still DELETEs the job: the kick-off saves it first.
#[tokio::test]
async fn a_cancel_during_the_kick_off_deletes_the_job_the_server_made() {
    let cache = tempfile::tempdir().unwrap();
    let (server, _ctx, fhir) = demo_catalog(cache.path()).await;
    server.set_faults(Faults {
        kickoff_delay: Some(Duration::from_millis(300)),
        ..Default::default()
    });
    let refresh = tokio::spawn({
        let fhir = fhir.clone();
        async move { fhir.refresh(&["Patient".to_owned()]).await }
    });
    crate::until("the kick-off", || server.stats().kickoffs.len() == 1).await;
    assert!(fhir.cancel(fhir.exports()[0].id));
    let failed = refresh.await.unwrap().unwrap_err().to_string();
    assert!(failed.contains("cancelled"), "{failed}");
    crate::until("the job's deletion", || server.stats().deletes == 1).await;
    assert_eq!(fhir.exports()[0].state, ExportState::Cancelled);
}

/// The catalog over `server` with partial manifests asked for, polling without a limit on
/// polls without progress (the server may hold the job as long as a test wants), converting
/// each batch of files that came as a part.
async fn streaming_catalog(server: &DemoServer, cache: &Path) -> (SessionContext, FhirCatalog) {
    let options = ClientOptions::default().with_max_polls_without_progress(u32::MAX);
    let source = BulkSource::new(client_of(server, options).await);
    let source = source.with_allow_partial_manifests(true);
    let options = fhirflight::catalog::CatalogOptions::default()
        .with_cache_dir(cache)
        .with_freshness(Freshness::Never)
        .with_part_bytes(1);
    super::context_with(Arc::new(source), options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_convert_while_the_export_runs_and_answer_as_one_conversion_would() {
    // Small files on many manifest pages, released while the job runs; the job is held until
    // rows were converted, so the conversion overlapped the export whatever the timing.
    let config = DemoConfig::default().with_seed(7).with_patients(20);
    let paged = DemoServer::start(config.clone().with_page_size(40).with_manifest_page_size(2))
        .await
        .unwrap();
    paged.set_faults(Faults {
        hold_completion: true,
        ..Default::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let (ctx, fhir) = streaming_catalog(&paged, cache.path()).await;
    let all = "SELECT * FROM src.fhir.observation ORDER BY id";
    let query = tokio::spawn(async move { rows(&ctx, all).await });
    let converted = || fhir.exports().iter().any(|e| e.progress.rows_converted > 0);
    crate::until("rows converted while the job runs", converted).await;
    assert_eq!(paged.stats().deletes, 0, "the job still runs");
    paged.set_faults(Faults::default());
    let streamed = query.await.unwrap();

    // The same population as one file per type: one conversion of it all.
    let whole = DemoServer::start(config).await.unwrap();
    let one_cache = tempfile::tempdir().unwrap();
    let (one_ctx, _) = catalog_of(&whole, one_cache.path()).await;
    assert_eq!(streamed, rows(&one_ctx, all).await);
    assert!(streamed.len() > 100, "{} observations", streamed.len());
    let tables = fhirflight::snapshot::list_cache(cache.path()).unwrap();
    let parts = &tables[0].snapshot("Observation").unwrap().tables["flattened"].files;
    assert!(parts.len() > 1, "parts: {parts:?}");
    assert_eq!(paged.stats().kickoffs.len(), 1);
}

#[tokio::test]
async fn a_folder_an_export_wrote_reads_as_a_local_folder() {
    let config = DemoConfig::default().with_seed(7).with_patients(12);
    let server = DemoServer::start(config.with_page_size(5)).await.unwrap();
    server.set_faults(Faults {
        error_file: true,
        ..Default::default()
    });
    let client = client_of(&server, ClientOptions::default()).await;
    let folder = tempfile::tempdir().unwrap();
    let (progress, _) = tokio::sync::watch::channel(Default::default());
    let request = fhirflight::bulk::ExportRequest::new(fhirflight::bulk::ExportLevel::System)
        .with_types(["Patient", "Condition"]);
    let outcome = client
        .export_to_dir(&request, folder.path(), &progress)
        .await
        .unwrap();
    let source = fhirflight::catalog::LocalFolder::try_new(folder.path()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (ctx, _) = context(Arc::new(source), cache.path(), Freshness::Never).await;
    for ty in ["Patient", "Condition"] {
        let files = outcome.files.iter().filter(|f| f.resource_type == ty);
        assert!(files.clone().count() > 1, "{ty} comes in several files");
        let lines: u64 = files.map(|f| f.lines).sum();
        let counted = rows(&ctx, &format!("SELECT count(*) FROM src.fhir.{ty}")).await;
        assert_eq!(counted, [lines.to_string()], "{ty}");
    }
}

#[tokio::test]
async fn an_export_of_many_small_files_makes_one_part_under_the_part_size() {
    let config = DemoConfig::default().with_seed(7).with_patients(12);
    let server = DemoServer::start(config.with_page_size(5)).await.unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (ctx, _) = catalog_of(&server, cache.path()).await;
    let counted = rows(&ctx, "SELECT count(*) FROM src.fhir.observation").await;
    assert!(counted[0].parse::<u64>().unwrap() > 50, "{counted:?}");
    let cached = fhirflight::snapshot::list_cache(cache.path()).unwrap();
    let snapshot = cached[0].snapshot("Observation").unwrap();
    assert!(
        server.stats().downloads > 10,
        "the export came in many files"
    );
    assert_eq!(snapshot.tables["flattened"].files.len(), 1);
}

/// The staging folder at the table location `shared` that holds an export's job,
/// `<location>/<source-key>/staging/<job-key>/`, if one does.
fn staged_job(shared: &Path) -> Option<std::path::PathBuf> {
    let sources = std::fs::read_dir(shared).ok()?;
    let staging = sources.flatten().find_map(|s| {
        let jobs = std::fs::read_dir(s.path().join("staging")).ok()?;
        jobs.flatten().next().map(|j| j.path())
    });
    staging.filter(|s| s.join(".fhirflight-job.json").exists())
}

/// An export cancelled on a machine sharing a table location: its job is DELETEd on the server
/// and removed from the location, so that no machine resumes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_export_leaves_no_job_at_the_table_location() {
    let (cache, shared) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server = stalling_server().await;
    let client = client_of(&server, ClientOptions::default()).await;
    let options = CatalogOptions::default()
        .with_cache_dir(cache.path())
        .with_freshness(Freshness::Never)
        .with_table_location(url::Url::from_directory_path(shared.path()).unwrap());
    let (ctx, fhir) = context_with(Arc::new(BulkSource::new(client)), options).await;
    let query = tokio::spawn(async move {
        catalog::sql(&ctx, "SELECT count(*) FROM src.fhir.patient")
            .await?
            .collect()
            .await
    });
    crate::until("the job at the location", || {
        staged_job(shared.path()).is_some()
    })
    .await;
    let staging = staged_job(shared.path()).unwrap();
    assert!(fhir.cancel(fhir.exports()[0].id));
    assert!(
        query
            .await
            .unwrap()
            .unwrap_err()
            .to_string()
            .contains("cancelled")
    );
    crate::until("the job's deletion", || server.stats().deletes == 1).await;
    crate::until("the job gone from the location", || {
        !staging.join(".fhirflight-job.json").exists()
    })
    .await;
    assert_eq!(server.stats().kickoffs.len(), 1);
}

/// Machines sharing a table location: one killed (SIGKILL) mid-download leaves its claim and its
/// job's state there. Once the claim expires, another machine, whose cache holds nothing of the
/// export, takes the claim over and resumes the killed one's job (no second kick-off); the
/// location keeps nothing of the export after its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_machine_resumes_the_export_a_killed_one_left_at_the_table_location() {
    let (a_cache, b_cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let shared = tempfile::tempdir().unwrap();
    let location = url::Url::from_directory_path(shared.path()).unwrap();
    let server = stalling_server().await;
    let mut child = stalled_sql(&server, a_cache.path())
        .args(["--table-location", location.as_str()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // `<location>/<source-key>/staging/<job-key>/`
    let staged = || staged_job(shared.path());
    crate::until("the killed machine's job at the location", || {
        assert!(
            child.try_wait().unwrap().is_none(),
            "fhirflight ended early"
        );
        server.stats().downloads > 0 && staged().is_some()
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    server.set_faults(Faults::default());
    let staging = staged().unwrap();
    let claims = || -> Vec<std::path::PathBuf> {
        let entries = std::fs::read_dir(&staging).unwrap().flatten();
        let claims = entries.map(|e| e.path()).filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("claim.")
        });
        claims.collect()
    };
    let expires = |claim: &std::path::Path| {
        let held: serde_json::Value =
            serde_json::from_slice(&std::fs::read(claim).unwrap()).unwrap();
        held["expires_unix_ms"].as_u64().unwrap()
    };
    let now_ms = || {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        now.unwrap().as_millis() as u64
    };
    let [claim] = &claims()[..] else {
        panic!("one claim: {:?}", claims())
    };
    assert!(
        expires(claim) > now_ms(),
        "the killed machine's claim outlives it"
    );
    // Its claim would expire within a minute (`CLAIM_TTL`); here, at once.
    std::fs::write(claim, r#"{"owner":"killed","expires_unix_ms":0}"#).unwrap();

    let client = client_of(&server, ClientOptions::default()).await;
    let options = CatalogOptions::default()
        .with_cache_dir(b_cache.path())
        .with_freshness(Freshness::Never)
        .with_table_location(location.clone());
    let (ctx, _fhir) = context_with(Arc::new(BulkSource::new(client)), options).await;
    assert_eq!(
        rows(&ctx, "SELECT count(*) FROM src.fhir.patient").await,
        ["12"]
    );
    assert_eq!(
        server.stats().kickoffs.len(),
        1,
        "the other machine resumed the killed one's job"
    );
    assert!(!staging.join(".fhirflight-job.json").exists());
    let [claim] = &claims()[..] else {
        panic!("one claim: {:?}", claims())
    };
    assert!(expires(claim) <= now_ms(), "released");
}
