//! The first and the repeated query with the tables in the cache folder, with them on an S3
//! endpoint (moto's server on loopback, `tests/s3_server.py`), and on a second machine that
//! adopts the snapshot there instead of exporting: end to end over the demo server (SMART auth,
//! kick-off, polling, downloads, conversion, Delta commit; the uploads; the adoption's
//! downloads). Per type, alternated REPS times, each on empty caches: the local first query,
//! the first query with the tables on S3 (a fresh prefix each time), a second machine's first
//! query over that prefix, then the repeated query on the first and on the second machine;
//! medians and their ratios to the local first query.
//!
//! `cargo bench --bench shared_cache` (release), with `FHIRFLIGHT_PYTHON` a Python that has
//! moto (the test command's venv). Env: `FHIRFLIGHT_BENCH_PATIENTS` (default 2000), `TYPES`
//! (default `Observation,Patient`), `REPS` (default 3).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::prelude::SessionContext;
use fhirflight::bulk::ClientOptions;
use fhirflight::catalog::{BulkSource, CatalogOptions, FhirCatalog, Freshness};
use fhirflight::demo::{DemoConfig, DemoServer};

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Seconds `sql` takes over a session holding `catalog` as `fhir`, and its first value.
async fn timed(catalog: &FhirCatalog, sql: &str) -> (f64, String) {
    let ctx = SessionContext::new();
    ctx.register_catalog("fhir", Arc::new(catalog.clone()));
    let started = Instant::now();
    let batches = fhirflight::catalog::sql(&ctx, sql)
        .await
        .expect("statement")
        .collect()
        .await
        .expect("rows");
    let secs = started.elapsed().as_secs_f64();
    let value = arrow::util::display::array_value_to_string(batches[0].column(0), 0);
    (secs, value.expect("a value"))
}

async fn run(patients: usize, resource_type: &str, reps: usize) {
    let server = DemoServer::start(
        DemoConfig::default()
            .with_seed(7)
            .with_patients(patients)
            .with_page_size(20_000),
    )
    .await
    .expect("demo server");
    let options = ClientOptions::default()
        .with_parallel_downloads(4)
        .with_retry_after_bounds(Duration::from_millis(10), Duration::from_secs(1));
    let client = server.client(options).await.expect("client");
    let machine = |cache: &tempfile::TempDir, location: Option<url::Url>| {
        let mut options = CatalogOptions::default()
            .with_cache_dir(cache.path())
            .with_freshness(Freshness::MaxAge(Duration::from_secs(3600)));
        if let Some(location) = location {
            options = options.with_table_location(location);
        }
        FhirCatalog::try_new(Arc::new(BulkSource::new(client.clone())), options)
    };
    let sql = format!("SELECT count(*) FROM fhir.fhir.\"{resource_type}\" WHERE id IS NOT NULL");
    let mut runs: [Vec<f64>; 5] = Default::default();
    let mut answers = Vec::new();
    for rep in 0..reps {
        let caches = [(); 3].map(|()| tempfile::tempdir().expect("cache"));
        let local = machine(&caches[0], None).await.expect("catalog");
        let location = url::Url::parse(&format!("s3://bench/{resource_type}-{rep}/"));
        let location = location.expect("a location");
        let first = machine(&caches[1], Some(location.clone()))
            .await
            .expect("catalog");
        let second = machine(&caches[2], Some(location)).await.expect("catalog");
        let exports = server.stats().kickoffs.len();
        for (n, catalog) in [&local, &first, &second, &first, &second]
            .iter()
            .enumerate()
        {
            let (secs, answer) = timed(catalog, &sql).await;
            runs[n].push(secs);
            answers.push(answer);
        }
        assert_eq!(
            server.stats().kickoffs.len(),
            exports + 2,
            "the second machine adopted"
        );
    }
    answers.dedup();
    assert_eq!(
        answers.len(),
        1,
        "every machine has the same rows: {answers:?}"
    );
    let [local, s3, adopted, again, adopted_again] = runs.map(median);
    println!(
        "{resource_type:<12} {:>8} {:>8.3} {:>8.3} {:>7.2}x {:>8.3} {:>7.2}x {:>8.4} {:>8.4}",
        answers[0],
        local,
        s3,
        s3 / local,
        adopted,
        adopted / local,
        again,
        adopted_again,
    );
    server.shutdown().await;
}

fn main() {
    let patients: usize = env("FHIRFLIGHT_BENCH_PATIENTS", "2000")
        .parse()
        .expect("a number of patients");
    let reps: usize = env("REPS", "3").parse().expect("a number of runs");
    let Some(python) = std::env::var_os("FHIRFLIGHT_PYTHON") else {
        eprintln!("FHIRFLIGHT_PYTHON: a Python with moto (the test command's venv) is needed");
        std::process::exit(2);
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s3_server.py");
    let mut moto = Command::new(python)
        .args([script, "bench"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto's server");
    let mut line = String::new();
    let stdout = moto.stdout.take().expect("its output");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("its address");
    let endpoint = line
        .trim()
        .strip_prefix("listening on ")
        .expect("an address");
    let credentials = [
        ("AWS_ENDPOINT", endpoint),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
    ];
    for (name, value) in credentials {
        // SAFETY: no other thread runs yet (the runtime is built below).
        unsafe { std::env::set_var(name, value) };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "# {} cores; {patients} patients; REPS={reps}; medians in seconds; S3: moto on loopback",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<12} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "type", "rows", "local_s", "s3_s", "s3/loc", "adopt_s", "adopt/lo", "again_s", "adopt_ag"
    );
    for resource_type in env("TYPES", "Observation,Patient").split(',') {
        runtime.block_on(run(patients, resource_type, reps));
    }
    let _ = moto.kill();
    let _ = moto.wait();
}
