//! Load benchmark of `fhirflight serve`: small queries' latency while heavy ones run.
//!
//! A Flight SQL server on loopback with a memory limit serves `SMALL_CLIENTS` clients that each
//! run a small query (`SELECT count(*)` over 1,000 rows) in a loop. First alone for `SECONDS`,
//! then as long again beside `HEAVY_CLIENTS` clients that each run a heavy query in a loop,
//! alternately: the top 10 million of 20 million rows (a heap that cannot spill: past the memory
//! limit it ends with `RESOURCE_EXHAUSTED`) and an aggregate over 500 million rows (CPU for
//! seconds). Printed: the small queries' latency percentiles in both phases and their ratio,
//! the heavy queries and how they ended (ok or the gRPC code).
//!
//! `cargo bench --bench serve_load` (release). Environment: `FHIRFLIGHT_BENCH_SECONDS` (10),
//! `FHIRFLIGHT_BENCH_SMALL_CLIENTS` (8), `FHIRFLIGHT_BENCH_HEAVY_CLIENTS` (2),
//! `FHIRFLIGHT_BENCH_MEMORY_MB` (256).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_flight::sql::client::FlightSqlServiceClient;
use fhirflight::config::{Config, PrimarySource, SessionBuilder};
use fhirflight::flight::FlightSqlServer;
use futures::TryStreamExt;
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

const SMALL: &str = "SELECT count(*) FROM generate_series(1, 1000)";
const HEAVY: [&str; 2] = [
    "SELECT value FROM generate_series(1, 20000000) ORDER BY value DESC LIMIT 1 OFFSET 10000000",
    "SELECT count(*), sum(value % 7) FROM generate_series(1, 500000000)",
];

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The gRPC code's description in a client error (`Some resource has been exhausted`).
fn code(error: impl ToString) -> String {
    let text = error.to_string();
    text.split("code: '")
        .nth(1)
        .and_then(|t| t.split('\'').next())
        .unwrap_or(&text)
        .to_owned()
}

/// Runs `sql` to the end; `Err` is the gRPC code's description.
async fn run(client: &mut FlightSqlServiceClient<Channel>, sql: &str) -> Result<(), String> {
    let info = client.execute(sql.into(), None).await.map_err(code)?;
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.ok_or("no ticket")?;
        let stream = client.do_get(ticket).await.map_err(code)?;
        stream.try_collect::<Vec<_>>().await.map_err(code)?;
    }
    Ok(())
}

/// The small clients' latencies over `seconds`.
async fn small_latencies(channel: &Channel, clients: u64, seconds: u64) -> Vec<Duration> {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (channel, latencies) = (channel.clone(), Arc::clone(&latencies));
            tokio::spawn(async move {
                let mut client = FlightSqlServiceClient::new(channel);
                while Instant::now() < deadline {
                    let started = Instant::now();
                    run(&mut client, SMALL)
                        .await
                        .expect("a small query is answered");
                    latencies.lock().await.push(started.elapsed());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a small client");
    }
    let mut latencies = std::mem::take(&mut *latencies.lock().await);
    latencies.sort();
    latencies
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3)
}

fn report(phase: &str, latencies: &[Duration], seconds: u64) -> (f64, f64) {
    let (p50, p95, p99) = (
        percentile(latencies, 0.5),
        percentile(latencies, 0.95),
        percentile(latencies, 0.99),
    );
    println!(
        "{phase:<24} {:>7} small queries ({:>7.0}/s)  p50 {p50:>7.2} ms  p95 {p95:>7.2} ms  p99 {p99:>7.2} ms",
        latencies.len(),
        latencies.len() as f64 / seconds as f64
    );
    (p50, p99)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seconds = env_number("FHIRFLIGHT_BENCH_SECONDS", 10);
    let small = env_number("FHIRFLIGHT_BENCH_SMALL_CLIENTS", 8);
    let heavy = env_number("FHIRFLIGHT_BENCH_HEAVY_CLIENTS", 2);
    let memory = env_number("FHIRFLIGHT_BENCH_MEMORY_MB", 256) << 20;
    let folder = tempfile::tempdir()?;
    let session = SessionBuilder::new(Config::default())
        .with_source(PrimarySource::Folder(folder.path().to_owned()))
        .with_memory_limit(Some(memory as usize))
        .build()
        .await?;
    // Every client is anonymous, one "user": the per-user cap is raised so that the memory pool
    // and the scheduler are what is measured.
    let server = FlightSqlServer::new(session.context().clone())
        .with_anonymous(true)
        .with_max_statements_per_user(64)
        .with_max_statements(64)
        .bind("127.0.0.1:0")
        .await?;
    let channel = Endpoint::new(format!("http://{}", server.local_addr()))?
        .connect()
        .await?;
    println!(
        "serve under load: {small} small clients, {heavy} heavy ones, {seconds} s a phase, memory limit {} MB, {} cores",
        memory >> 20,
        std::thread::available_parallelism().map_or(0, usize::from)
    );

    let alone = small_latencies(&channel, small, seconds).await;
    let (alone_p50, alone_p99) = report("small queries alone", &alone, seconds);

    let stop = Instant::now() + Duration::from_secs(seconds);
    let heavy_tasks: Vec<_> = (0..heavy)
        .map(|i| {
            let channel = channel.clone();
            tokio::spawn(async move {
                let mut client = FlightSqlServiceClient::new(channel);
                let mut ended = Vec::new();
                let mut n = i as usize;
                while Instant::now() < stop {
                    let started = Instant::now();
                    let outcome = run(&mut client, HEAVY[n % HEAVY.len()]).await;
                    ended.push((
                        outcome.err().unwrap_or_else(|| "ok".into()),
                        started.elapsed(),
                    ));
                    n += 1;
                }
                ended
            })
        })
        .collect();
    let beside = small_latencies(&channel, small, seconds).await;
    let (beside_p50, beside_p99) = report("beside heavy queries", &beside, seconds);
    let mut outcomes: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for task in heavy_tasks {
        for (outcome, took) in task.await? {
            let entry = outcomes.entry(outcome).or_default();
            entry.0 += 1;
            entry.1 += took.as_secs_f64();
        }
    }
    for (outcome, (n, secs)) in &outcomes {
        println!(
            "heavy queries ended {outcome}: {n} (mean {:.2} s)",
            secs / *n as f64
        );
    }
    println!(
        "ratio beside / alone: p50 {:.2}x, p99 {:.2}x",
        beside_p50 / alone_p50,
        beside_p99 / alone_p99
    );
    server.shutdown().await?;
    Ok(())
}
