//! Flight SQL streaming benchmark: a large result through DoGet to a `FlightSqlServiceClient` on
//! loopback, beside the same query run in-process with DataFusion `collect`, so the cost of
//! Flight (IPC encoding, gRPC, decoding) shows as a ratio.
//!
//! The rows come from a snapshot: the demo population's Observations (written as NDJSON to a
//! folder, read into a snapshot by a `LocalFolder` catalog), cross-joined with
//! `generate_series` to reach the requested size; the first 8 flattened columns plus the copy
//! number are selected. The snapshot is built before timing; both runs plan and stream the
//! same SQL through `catalog::sql` (the Flight run includes GetFlightInfo). MB/s is the result's
//! size as Arrow IPC on the wire (counted on the DoGet stream) over each run's time.
//!
//! `cargo bench --bench flight` (release). `FHIRFLIGHT_BENCH_ROWS` (default 10 000 000) sets the
//! result size, `FHIRFLIGHT_BENCH_PATIENTS` (default 100) the population.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::client::FlightSqlServiceClient;
use datafusion::prelude::{SessionConfig, SessionContext};
use fhirflight::catalog::{self, CatalogOptions, FhirCatalog, LocalFolder};
use fhirflight::demo::generate;
use fhirflight::flight::FlightSqlServer;
use futures::TryStreamExt;
use tonic::transport::Endpoint;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn report(what: &str, rows: usize, bytes: usize, secs: f64) -> f64 {
    let rows_per_sec = rows as f64 / secs;
    println!(
        "{what:<28} {rows:>11} rows  {secs:>7.3} s  {:>12.0} rows/s  {:>8.1} MB/s",
        rows_per_sec,
        bytes as f64 / 1e6 / secs
    );
    rows_per_sec
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rows = env_number("FHIRFLIGHT_BENCH_ROWS", 10_000_000);
    let patients = env_number("FHIRFLIGHT_BENCH_PATIENTS", 100);

    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let population = generate(1, patients);
    let file = std::fs::File::create(data.join("Observation.ndjson"))?;
    let mut out = std::io::BufWriter::new(file);
    population.write_ndjson("Observation", &mut out)?;
    out.flush()?;

    let options = CatalogOptions::default().with_cache_dir(dir.path().join("cache"));
    let fhir = FhirCatalog::try_new(Arc::new(LocalFolder::try_new(&data)?), options).await?;
    let ctx = SessionContext::new_with_config(
        SessionConfig::new().with_default_catalog_and_schema("fhir", catalog::DEFAULT_SCHEMA),
    );
    ctx.register_catalog("fhir", Arc::new(fhir.clone()));
    let observations = fhir.table("Observation").await?; // builds the snapshot
    let schema = datafusion::catalog::TableProvider::schema(&observations);
    let snapshot_rows = population.resources("Observation").len();
    let copies = rows.div_ceil(snapshot_rows.max(1));
    let columns: Vec<String> = schema
        .fields()
        .iter()
        .take(8)
        .map(|f| format!("o.\"{}\"", f.name()))
        .collect();
    let sql = format!(
        "SELECT {}, s.value AS copy FROM observation o CROSS JOIN generate_series(1, {copies}) s",
        columns.join(", ")
    );
    println!(
        "Flight DoGet vs in-process collect: {} rows = Observation snapshot ({snapshot_rows} rows, {patients} patients) x {copies} copies (generate_series), {} columns",
        snapshot_rows * copies,
        columns.len() + 1
    );

    let started = Instant::now();
    let batches = catalog::sql(&ctx, &sql).await?.collect().await?;
    let secs = started.elapsed().as_secs_f64();
    let local_rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    drop(batches);
    let local_secs = secs;

    let server = FlightSqlServer::new(ctx)
        .with_anonymous(true)
        .bind("127.0.0.1:0")
        .await?;
    let channel = Endpoint::new(format!("http://{}", server.local_addr()))?
        .connect()
        .await?;
    let mut client = FlightSqlServiceClient::new(channel);
    let started = Instant::now();
    let info = client.execute(sql, None).await?;
    // The raw DoGet stream, to count the bytes on the wire, decoded as a client does.
    let (mut flight_rows, mut wire_bytes) = (0, 0);
    for endpoint in info.endpoint {
        let ticket = endpoint.ticket.ok_or("an endpoint without a ticket")?;
        let data = client.inner_mut().do_get(ticket).await?.into_inner();
        let wire = Arc::new(AtomicUsize::new(0));
        let counted = data
            .map_ok({
                let wire = Arc::clone(&wire);
                move |d| {
                    wire.fetch_add(d.data_header.len() + d.data_body.len(), Ordering::Relaxed);
                    d
                }
            })
            .map_err(FlightError::from);
        let mut batches = FlightRecordBatchStream::new_from_flight_data(counted);
        while let Some(batch) = batches.try_next().await? {
            flight_rows += batch.num_rows();
        }
        wire_bytes += wire.load(Ordering::Relaxed);
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(flight_rows, local_rows, "both runs return the same rows");
    println!(
        "result: {:.1} MB as Arrow IPC on the wire (MB/s below is that size over each run's time)",
        wire_bytes as f64 / 1e6
    );
    let local = report("in-process collect", local_rows, wire_bytes, local_secs);
    let flight = report("Flight DoGet (loopback)", flight_rows, wire_bytes, secs);
    println!("ratio Flight / in-process: {:.2} (rows/s)", flight / local);
    server.shutdown().await?;
    Ok(())
}
