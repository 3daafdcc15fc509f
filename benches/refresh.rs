//! An incremental refresh of 1% of a type against a full re-export, end to end over the demo
//! server on loopback: the export (SMART auth, kick-off, polling, downloads), the conversion
//! and the commit of a Delta version. Per type: a first export, then alternated REPS times, a
//! full re-export, an incremental one (`_since`) after 1% of the type changed (updates spread
//! over the whole type, one in ten a deletion), and one after 1% more resources came (new
//! ids only); medians, their ratios to the full re-export, and the rows and versions left.
//! The client polls without its 1 s floor, so that the figures are fhirflight's work and not
//! the demo server's waits.
//!
//! `cargo bench --bench refresh` (release). Env: `FHIRFLIGHT_BENCH_PATIENTS` (default 2000),
//! `TYPES` (default `Observation,Patient`), `REPS` (default 3), `FHIRFLIGHT_BENCH_LOG` (set: the
//! debug lines that time each step).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fhirflight::bulk::ClientOptions;
use fhirflight::catalog::{BulkSource, CatalogOptions, FhirCatalog, Freshness};
use fhirflight::demo::{DemoConfig, DemoServer, generate};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Rows of `resource_type` in the catalog's current snapshot.
fn rows(catalog: &FhirCatalog, resource_type: &str) -> u64 {
    let snapshots = catalog.snapshots().expect("snapshots");
    let snapshot = snapshots
        .iter()
        .find(|s| s.name() == resource_type)
        .expect("a snapshot");
    snapshot.table("flattened").map_or(0, |t| t.rows)
}

async fn run(patients: usize, resource_type: &str, reps: usize) {
    let seed = 7;
    let server = DemoServer::start(
        DemoConfig::default()
            .with_seed(seed)
            .with_patients(patients)
            .with_page_size(20_000),
    )
    .await
    .expect("demo server");
    let population = generate(seed, patients);
    let resources = population.resources(resource_type);
    let options = ClientOptions::default()
        .with_parallel_downloads(4)
        .with_retry_after_bounds(Duration::from_millis(10), Duration::from_secs(1));
    let client = server.client(options).await.expect("client");
    let cache = tempfile::tempdir().expect("cache");
    let catalog = |incremental: bool| {
        let options = CatalogOptions::default()
            .with_cache_dir(cache.path())
            .with_freshness(Freshness::Never)
            .with_incremental(incremental);
        FhirCatalog::try_new(Arc::new(BulkSource::new(client.clone())), options)
    };
    let (full, incremental) = (
        catalog(false).await.expect("catalog"),
        catalog(true).await.expect("catalog"),
    );
    let types = [resource_type.to_owned()];
    full.refresh(&types).await.expect("first export");

    let refresh = || async {
        let started = Instant::now();
        let refreshed = incremental
            .refresh(&types)
            .await
            .expect("incremental refresh");
        let merged = refreshed[0]
            .manifest()
            .incremental
            .as_ref()
            .expect("incremental");
        assert!(merged.changed > 0, "the refresh exported the changes");
        started.elapsed().as_secs_f64()
    };
    let (mut full_s, mut updated_s, mut added_s) = (Vec::new(), Vec::new(), Vec::new());
    let step = 100;
    for rep in 0..reps {
        let started = Instant::now();
        full.refresh(&types).await.expect("full re-export");
        full_s.push(started.elapsed().as_secs_f64());

        // 1% of the type changes; one in ten of those is deleted instead.
        for (n, resource) in resources.iter().enumerate().skip(rep).step_by(step) {
            let mut value: serde_json::Value = serde_json::from_str(resource.json()).expect("json");
            value["language"] = format!("x-bench-{rep}").into();
            match n % (10 * step) == rep {
                true => server.delete(resource_type, resource.id()),
                false => server.upsert(value),
            }
        }
        updated_s.push(refresh().await);

        // 1% more resources come.
        for (n, resource) in resources.iter().enumerate().step_by(step) {
            let mut value: serde_json::Value = serde_json::from_str(resource.json()).expect("json");
            value["id"] = format!("bench-{rep}-{n}").into();
            server.upsert(value);
        }
        added_s.push(refresh().await);
    }
    let (f, u, a) = (median(full_s), median(updated_s), median(added_s));
    let table = full
        .store()
        .table_url(resource_type, "flattened")
        .expect("table");
    let versions = fhirflight::snapshot::history(&table)
        .expect("history")
        .len();
    println!(
        "{resource_type:<12} {:>7} {:>9.3} {:>9.3} {:>8.2}x {:>9.3} {:>8.2}x {:>9} {:>9}",
        resources.len(),
        f,
        u,
        u / f,
        a,
        a / f,
        rows(&incremental, resource_type),
        versions
    );
    server.shutdown().await;
}

fn main() {
    let patients: usize = env("FHIRFLIGHT_BENCH_PATIENTS", "2000")
        .parse()
        .expect("a number of patients");
    let reps: usize = env("REPS", "3").parse().expect("a number of runs");
    // `FHIRFLIGHT_BENCH_LOG=1`: fhirflight's debug lines, which time each step of a commit.
    if std::env::var_os("FHIRFLIGHT_BENCH_LOG").is_some() {
        use tracing_subscriber::prelude::*;
        let only_ours = tracing_subscriber::filter::Targets::new()
            .with_target("fhirflight", tracing_subscriber::filter::LevelFilter::DEBUG);
        tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_filter(only_ours))
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "# {} cores; {patients} patients; REPS={reps}; medians in seconds",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<12} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "type", "rows", "full_s", "upd_s", "upd/full", "new_s", "new/full", "rows_now", "versions"
    );
    for resource_type in env("TYPES", "Observation,Patient").split(',') {
        runtime.block_on(run(patients, resource_type, reps));
    }
}
