//! The same statements in one process, on a standalone Ballista cluster (a scheduler and one
//! executor in this process) and on a loopback cluster of processes (`fhirflight cluster
//! scheduler` and two `fhirflight cluster executor`s on 127.0.0.1), over one catalog of the demo
//! server whose snapshots are made first. Per statement, the three take turns REPS times;
//! medians and their ratios to one process. On a machine of 2 cores the cluster shows its
//! overhead (planning, gRPC, shuffle files, Arrow Flight), not a speed-up.
//!
//! Then the conversion of an export (Patient, Condition, Observation) from kick-off to
//! committed snapshots: in one process (a catalog's refresh), and on loopback clusters of one
//! and of two executor processes (`Cluster::export`, into a tables' location in a folder),
//! taking turns REPS times, each into empty caches; the raw NDJSON's MB/s and the ratios.
//!
//! `cargo bench --bench cluster` (release). Env: `FHIRFLIGHT_BENCH_PATIENTS` (default 2000),
//! `REPS` (default 5).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::{SessionConfig, SessionContext};
use fhirflight::bulk::ClientOptions;
use fhirflight::catalog::{self, BulkSource, CatalogOptions, FhirCatalog, Freshness};
use fhirflight::cluster::{
    Cluster, ExecutorOptions, SchedulerOptions, serve_executor, serve_scheduler,
};
use fhirflight::demo::{DemoConfig, DemoServer};

const STATEMENTS: &[(&str, &str)] = &[
    (
        "count",
        "SELECT count(*) FROM fhir.fhir.observation WHERE status = 'final'",
    ),
    (
        "aggregate",
        "SELECT code_coding_0_code, count(*), avg(valueQuantity_value) \
         FROM fhir.fhir.observation GROUP BY code_coding_0_code",
    ),
    (
        "join",
        "SELECT p.gender, count(*) FROM fhir.fhir.patient p JOIN fhir.fhir.observation o \
         ON o.subject_reference = concat('Patient/', p.id) GROUP BY p.gender",
    ),
    (
        "sort",
        "SELECT id, subject_reference FROM fhir.fhir.observation ORDER BY id DESC LIMIT 100",
    ),
];

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Seconds `sql` takes in `ctx`, and its rows.
async fn timed(ctx: &SessionContext, sql: &str) -> (f64, usize) {
    let started = Instant::now();
    let batches = catalog::sql(ctx, sql)
        .await
        .expect("statement")
        .collect()
        .await
        .expect("rows");
    let rows = batches.iter().map(|b| b.num_rows()).sum();
    (started.elapsed().as_secs_f64(), rows)
}

/// A `fhirflight cluster ...` process, killed when dropped, and the address it announced.
struct Process(Child, String);

impl Process {
    fn start(args: &[&str], prefix: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fhirflight"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("fhirflight cluster");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("announced");
        let address = line.trim().strip_prefix(prefix).expect(prefix).to_owned();
        Self(child, address)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A scheduler and `executors` executors, processes of their own on 127.0.0.1.
fn start_loopback(executors: usize) -> (Cluster, Vec<Process>) {
    let scheduler = Process::start(
        &["cluster", "scheduler", "--listen", "127.0.0.1:0"],
        "scheduler listening on ",
    );
    let cluster = Cluster::new(&scheduler.1).expect("cluster");
    let mut processes: Vec<Process> = (0..executors)
        .map(|_| {
            Process::start(
                &[
                    "cluster",
                    "executor",
                    "--scheduler",
                    &scheduler.1,
                    "--listen",
                    "127.0.0.1:0",
                ],
                "executor listening on ",
            )
        })
        .collect();
    processes.push(scheduler);
    (cluster, processes)
}

/// A catalog of the demo server in an empty cache, at an empty tables' location, both in `dir`.
async fn fresh_catalog(server: &DemoServer, dir: &std::path::Path) -> FhirCatalog {
    let client_options = ClientOptions::default()
        .with_retry_after_bounds(Duration::from_millis(10), Duration::from_secs(1));
    let client = server.client(client_options).await.expect("client");
    let location = dir.join("location");
    std::fs::create_dir_all(&location).expect("location");
    let url = url::Url::from_directory_path(&location).expect("location url");
    let options = CatalogOptions::default()
        .with_cache_dir(dir.join("cache"))
        .with_freshness(Freshness::Never)
        .with_table_location(url);
    FhirCatalog::try_new(Arc::new(BulkSource::new(client)), options)
        .await
        .expect("catalog")
}

/// Seconds the conversion of `types` takes in one process (`cluster` none) or on `cluster`,
/// into empty caches, the raw NDJSON's bytes, its files and the parts converted again.
async fn converted(
    server: &DemoServer,
    cluster: Option<&Cluster>,
    types: &[String],
) -> (f64, u64, usize, usize) {
    let dir = tempfile::tempdir().expect("dir");
    // Both make the same snapshots at the same place: the tables' location.
    let fhir = fresh_catalog(server, dir.path()).await;
    let started = Instant::now();
    let manifests: Vec<_> = match cluster {
        Some(cluster) => cluster.export(&fhir, types).await.expect("export"),
        None => fhir
            .refresh(types)
            .await
            .expect("refresh")
            .iter()
            .map(|s| s.manifest().clone())
            .collect(),
    };
    let secs = started.elapsed().as_secs_f64();
    let bytes = manifests.iter().flat_map(|m| &m.raw).map(|r| r.bytes).sum();
    let files = manifests.iter().map(|m| m.raw.len()).sum();
    let tables = manifests.iter().flat_map(|m| m.tables.values());
    let again = tables
        .flat_map(|t| &t.files)
        .filter(|f| f.path.ends_with("-merged.parquet"))
        .count();
    (secs, bytes, files, again)
}

fn session(cluster: Option<&Cluster>, fhir: &FhirCatalog) -> SessionContext {
    let config = SessionConfig::new();
    let ctx = match cluster {
        Some(cluster) => cluster.session(config, Arc::new(RuntimeEnv::default())),
        None => SessionContext::new_with_config(config),
    };
    ctx.register_catalog("fhir", Arc::new(fhir.clone()));
    ctx
}

#[tokio::main]
async fn main() {
    let patients: usize = env("FHIRFLIGHT_BENCH_PATIENTS", "2000")
        .parse()
        .expect("patients");
    let reps: usize = env("REPS", "5").parse().expect("REPS");
    let server = DemoServer::start(DemoConfig::default().with_seed(7).with_patients(patients))
        .await
        .expect("demo server");
    let options = ClientOptions::default()
        .with_retry_after_bounds(Duration::from_millis(10), Duration::from_secs(1));
    let client = server.client(options).await.expect("client");
    let cache = tempfile::tempdir().expect("cache");
    let options = CatalogOptions::default()
        .with_cache_dir(cache.path())
        .with_freshness(Freshness::Never);
    let fhir = FhirCatalog::try_new(Arc::new(BulkSource::new(client)), options)
        .await
        .expect("catalog");

    // Standalone: a scheduler and one executor on this process's runtime.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let standalone =
        Cluster::new(&format!("df://{}", listener.local_addr().expect("addr"))).expect("cluster");
    tokio::spawn(serve_scheduler(listener, SchedulerOptions::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    tokio::spawn(serve_executor(
        listener,
        ExecutorOptions::new(standalone.clone()),
    ));

    // Loopback: a scheduler and two executors, processes of their own.
    let (loopback, _processes) = start_loopback(2);

    let sessions = [
        ("one process", session(None, &fhir)),
        ("standalone", session(Some(&standalone), &fhir)),
        ("loopback, 2 executors", session(Some(&loopback), &fhir)),
    ];
    // The snapshots, and a first run of each statement everywhere (connections, caches).
    for (_, sql) in STATEMENTS {
        for (_, ctx) in &sessions {
            timed(ctx, sql).await;
        }
    }
    println!("{patients} patients, medians of {reps}, ratios to one process");
    for (name, sql) in STATEMENTS {
        let mut times = vec![Vec::new(); sessions.len()];
        let mut rows = vec![0; sessions.len()];
        for _ in 0..reps {
            for (n, (_, ctx)) in sessions.iter().enumerate() {
                let (secs, count) = timed(ctx, sql).await;
                times[n].push(secs);
                rows[n] = count;
            }
        }
        assert!(rows.iter().all(|r| *r == rows[0]), "{name}: {rows:?}");
        let medians: Vec<f64> = times.into_iter().map(median).collect();
        let line: Vec<String> = sessions
            .iter()
            .zip(&medians)
            .map(|((who, _), m)| format!("{who} {:.1} ms ({:.2}x)", m * 1e3, m / medians[0]))
            .collect();
        println!("{name:10} {} rows: {}", rows[0], line.join(", "));
    }

    // The conversion of an export, from kick-off to committed snapshots.
    let types: Vec<String> = ["Patient", "Condition", "Observation"]
        .map(String::from)
        .to_vec();
    let (one_executor, _one) = start_loopback(1);
    let runs = [
        ("one process", None),
        ("loopback, 1 executor", Some(&one_executor)),
        ("loopback, 2 executors", Some(&loopback)),
    ];
    converted(&server, Some(&loopback), &types).await;
    let mut times = vec![Vec::new(); runs.len()];
    let (mut bytes, mut files, mut again) = (0, 0, 0);
    for _ in 0..reps {
        for (n, (_, cluster)) in runs.iter().enumerate() {
            let (secs, raw, listed, redone) = converted(&server, *cluster, &types).await;
            times[n].push(secs);
            (bytes, files) = (raw, listed);
            again = again.max(redone);
        }
    }
    let medians: Vec<f64> = times.into_iter().map(median).collect();
    let line: Vec<String> = runs
        .iter()
        .zip(&medians)
        .map(|((who, _), m)| {
            format!(
                "{who} {:.2} s, {:.1} MB/s ({:.2}x)",
                m,
                bytes as f64 / 1e6 / m,
                m / medians[0]
            )
        })
        .collect();
    println!(
        "conversion of {} ({:.1} MB of NDJSON in {files} files; on the cluster {again} parts \
         converted again against their table's columns), export to commit at the tables' \
         location: {}",
        types.join(","),
        bytes as f64 / 1e6,
        line.join(", ")
    );
}
