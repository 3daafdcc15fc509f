//! Kick-off to first answer: how long a query over a type with no snapshot takes, against the
//! export alone. The demo server on loopback exports one type in many files over several status
//! polls (a server at work); per round, taking turns:
//!
//! - `export`: the Bulk Data client alone, kick-off to every file on disk: the server's export
//!   time plus the raw transfer, the floor of any tool;
//! - `answer`: `SELECT count(*)` through the catalog on an empty cache: kick-off, downloads,
//!   conversion (overlapping the downloads), snapshot commit, the answer;
//! - `folder`: the same query over the downloaded folder: the conversion alone, what the
//!   answer would add if it waited for the last download.
//!
//! It prints the medians and `answer/export` (target: at most 1.10), with partial manifests (a
//! server listing files while the job runs, a page a poll), without them at loopback speed (the
//! in-process server, the downloads and the conversion share the cores), and without them over a
//! link of `LINK_MBPS` (default 100 MB/s, the server pacing its chunks; it sends its files
//! gzip-compressed, so the NDJSON arrives faster).
//!
//! `cargo bench --bench first_answer` (release). Env: `FHIRFLIGHT_BENCH_MB`
//! (the type's NDJSON, default 128), `REPS` (default 3), `TYPE` (default Observation),
//! `FILES` (files the type is cut into, default 16), `POLLS` (status polls, 1 s apart, before
//! the export completes; default 4).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::prelude::SessionContext;
use fhirflight::bulk::{BulkClient, ClientOptions, ExportLevel, ExportProgress, ExportRequest};
use fhirflight::catalog::{self, BulkSource, CatalogOptions, FhirCatalog, FhirSource, LocalFolder};
use fhirflight::demo::{DemoConfig, DemoServer, Faults, generate};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Seconds `SELECT count(*)` of `ty` takes through a catalog over `source`, on an empty cache.
async fn answer(source: Arc<dyn FhirSource>, ty: &str) -> (f64, i64) {
    let cache = tempfile::tempdir().expect("cache");
    let started = Instant::now();
    let options = CatalogOptions::default().with_cache_dir(cache.path());
    let fhir = FhirCatalog::try_new(source, options)
        .await
        .expect("catalog");
    let ctx = SessionContext::new();
    ctx.register_catalog("ehr", Arc::new(fhir));
    let sql = format!("SELECT count(*) AS n FROM ehr.fhir.{ty}");
    let batches = catalog::sql(&ctx, &sql)
        .await
        .expect("query")
        .collect()
        .await
        .expect("answer");
    let seconds = started.elapsed().as_secs_f64();
    let n = datafusion::arrow::array::AsArray::as_primitive::<
        datafusion::arrow::datatypes::Int64Type,
    >(batches[0].column(0))
    .value(0);
    (seconds, n)
}

/// Seconds the bare export of `ty` takes into `dir` (emptied first).
async fn export(client: &BulkClient, ty: &str, partial: bool, dir: &Path) -> (f64, u64) {
    let _ = std::fs::remove_dir_all(dir);
    let (progress, _watch) = tokio::sync::watch::channel(ExportProgress::default());
    let request = ExportRequest::new(ExportLevel::System)
        .with_types([ty])
        .with_allow_partial_manifests(partial);
    let started = Instant::now();
    let outcome = client
        .export_to_dir(&request, dir, &progress)
        .await
        .expect("export");
    let lines = outcome.files.iter().map(|f| f.lines).sum();
    (started.elapsed().as_secs_f64(), lines)
}

#[tokio::main]
async fn main() {
    // `RUST_LOG=fhirflight::snapshot=debug` shows each part as it is converted.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let (megabytes, reps) = (env("FHIRFLIGHT_BENCH_MB", 128.0), env("REPS", 3usize));
    let (ty, files, polls) = (
        env("TYPE", "Observation".to_owned()),
        env("FILES", 16usize),
        env("POLLS", 4u32),
    );
    // Patients and resources per file for about `megabytes` of the type in `files` files.
    let sample = generate(1, 20);
    let mut ndjson = Vec::new();
    sample.write_ndjson(&ty, &mut ndjson).expect("sample");
    let patients = (megabytes * 1024.0 * 1024.0 * 20.0 / ndjson.len() as f64).ceil() as usize;
    let per_file = (sample.resources(&ty).len() * patients / 20).div_ceil(files);
    let config = DemoConfig::default()
        .with_patients(patients)
        .with_page_size(per_file.max(1))
        .with_manifest_page_size(1)
        .with_status_polls(polls)
        .with_retry_after(Duration::from_secs(1));
    let server = DemoServer::start(config).await.expect("demo server");
    let client = server
        .client(ClientOptions::default().with_parallel_downloads(4))
        .await
        .expect("client");
    let work = tempfile::tempdir().expect("work dir");
    let folder = work.path().join("export");
    println!(
        "# {} cores; {ty}, ~{megabytes} MiB in {files} files, {polls} status polls 1 s apart; REPS={reps}",
        std::thread::available_parallelism().map_or(0, usize::from),
    );
    println!(
        "{:<18} {:>9} {:>9} {:>9} {:>14} {:>14}",
        "manifests, link", "export_s", "answer_s", "folder_s", "answer/export", "export+folder"
    );
    // A link of `LINK_MBPS` (default 100) across the 4 downloads: 64 KiB chunks paced.
    let link = env("LINK_MBPS", 100.0);
    let paced = Duration::from_secs_f64(4.0 * 64.0 / 1024.0 / link);
    let rows = [
        ("partial, loopback", true, None),
        ("complete, loopback", false, None),
        ("complete, link", false, Some(paced)),
    ];
    for (name, partial, pace) in rows {
        server.set_faults(Faults {
            download_chunk_delay: pace,
            ..Faults::default()
        });
        let (mut exports, mut answers, mut folders) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            let (seconds, lines) = export(&client, &ty, partial, &folder).await;
            exports.push(seconds);
            let source = BulkSource::new(client.clone()).with_allow_partial_manifests(partial);
            let (seconds, n) = answer(Arc::new(source), &ty).await;
            assert_eq!(n as u64, lines, "the answer counts the exported resources");
            answers.push(seconds);
            let local = LocalFolder::try_new(&folder).expect("folder");
            let (seconds, n) = answer(Arc::new(local), &ty).await;
            assert_eq!(n as u64, lines, "the folder holds the exported resources");
            folders.push(seconds);
        }
        let (export, answer, folder) = (median(exports), median(answers), median(folders));
        println!(
            "{name:<18} {export:>9.2} {answer:>9.2} {folder:>9.2} {:>14.2} {:>14.2}",
            answer / export,
            (export + folder) / export,
        );
    }
    server.shutdown().await;
}
