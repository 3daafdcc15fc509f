//! End-to-end export benchmark: the demo server on loopback, the full client (SMART auth, kick-off,
//! polling, parallel streaming downloads to disk), printing throughput and peak RSS.
//!
//! The demo server lives in this process and holds its population in memory, so the figure that
//! matters is the peak RSS *added during the export* (the high-water mark is reset just before
//! it): streaming keeps it flat whatever the export size. Two sizes are run to show that.
//!
//! `cargo bench --bench export` (release; `FHIRFLIGHT_BENCH_MB`, default 1024, sets the larger size).

use std::time::Instant;

use fhirflight::bulk::{ClientOptions, ExportLevel, ExportProgress, ExportRequest};
use fhirflight::demo::{DemoConfig, DemoServer, generate};

/// A field of `/proc/self/status`, in MiB.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(f64::NAN);
    kib / 1024.0
}

async fn run(megabytes: u64) {
    let per_patient = generate(1, 20).ndjson_bytes() as f64 / 20.0;
    let patients = ((megabytes as f64 * 1024.0 * 1024.0) / per_patient).ceil() as usize;
    let generating = Instant::now();
    let server = DemoServer::start(
        DemoConfig::default()
            .with_seed(1)
            .with_patients(patients)
            .with_page_size(20_000),
    )
    .await
    .expect("demo server");
    let generated = generating.elapsed().as_secs_f64();
    println!(
        "demo population of {patients} patients (~{megabytes} MiB) generated in {generated:.2} s = {:.0} MiB/s",
        megabytes as f64 / generated
    );
    let client = server
        .client(ClientOptions::default().with_parallel_downloads(4))
        .await
        .expect("client");
    let dir = tempfile::tempdir().expect("temp dir");
    let (progress, _watch) = tokio::sync::watch::channel(ExportProgress::default());

    let before = status_mib("VmRSS:");
    // Reset the peak-RSS high-water mark to the current RSS (Linux).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let started = Instant::now();
    let outcome = client
        .export_to_dir(
            &ExportRequest::new(ExportLevel::System),
            dir.path(),
            &progress,
        )
        .await
        .expect("export");
    let seconds = started.elapsed().as_secs_f64();
    let peak = status_mib("VmHWM:");

    let bytes: u64 = outcome.files.iter().map(|f| f.bytes).sum();
    let lines: u64 = outcome.files.iter().map(|f| f.lines).sum();
    let mib = bytes as f64 / 1024.0 / 1024.0;
    println!(
        "export {patients} patients: {mib:.0} MiB, {lines} resources, {} files in {seconds:.2} s = {:.0} MiB/s, \
         {:.0} resources/s; RSS before {before:.0} MiB, peak during export {peak:.0} MiB (+{:.0} MiB)",
        outcome.files.len(),
        mib / seconds,
        lines as f64 / seconds,
        peak - before,
    );
    server.shutdown().await;
}

fn main() {
    let megabytes: u64 = std::env::var("FHIRFLIGHT_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    for size in [megabytes / 4, megabytes] {
        runtime.block_on(run(size.max(1)));
    }
}
