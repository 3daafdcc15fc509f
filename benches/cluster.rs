//! The same statements in one process, on a standalone Ballista cluster (a scheduler and one
//! executor in this process) and on a loopback cluster of processes (`fhirflight cluster
//! scheduler` and two `fhirflight cluster executor`s on 127.0.0.1), over one catalog of the demo
//! server whose snapshots are made first. Per statement, the three take turns REPS times;
//! medians and their ratios to one process. On a machine of 2 cores the cluster shows its
//! overhead (planning, gRPC, shuffle files, Arrow Flight), not a speed-up.
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
    ("count", "SELECT count(*) FROM fhir.fhir.observation"),
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
    let scheduler = Process::start(
        &["cluster", "scheduler", "--listen", "127.0.0.1:0"],
        "scheduler listening on ",
    );
    let loopback = Cluster::new(&scheduler.1).expect("cluster");
    let _executors: Vec<Process> = (0..2)
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
}
