//! Wide tables, for `benches/wide.sh`: per width, the demo generator writes a Provenance of that
//! many targets per patient (one flattened column each, as Synthea's thousands) to
//! `DIR/wN/Provenance.ndjson`, and one process over a [`FhirCatalog`] of that folder times
//!
//! - `first`: the first `SELECT *`, which converts the NDJSON to a Parquet snapshot, then answers;
//! - `plan`: planning `SELECT *` again (statement to physical plan; median of `--reps`);
//! - `explain`: `EXPLAIN SELECT *` to the end (median of `--reps`);
//! - `select`: the whole `SELECT *` again, on the snapshot (median of `--reps`);
//! - `df_plan`: planning the same `SELECT *` with DataFusion's own SQL planner (`ctx.sql`), once:
//!   the baseline the catalog's planning works around (seconds at thousands of columns).
//!
//! Prints one line per width: `fhirflight_wide width columns rows first_s plan_s explain_s
//! select_s df_plan_s folder`.
//!
//! Usage: `cargo bench --bench wide -- DIR [--widths 1000,2000] [--patients N] [--reps N]`.

mod driver;

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::{SessionConfig, SessionContext};
use fhirflight::Error;
use fhirflight::catalog::{self, CatalogOptions, FhirCatalog, Freshness, LocalFolder};
use fhirflight::demo::{GenerateOptions, generate_with};

const SELECT: &str = "SELECT * FROM Provenance";

#[tokio::main]
async fn main() -> fhirflight::Result<()> {
    let args = driver::Args::from_env();
    let flag = |name: &str| args.flag(name);
    let usage =
        "usage: cargo bench --bench wide -- DIR [--widths 1000,2000] [--patients N] [--reps N]";
    let dir = Path::new(args.all().first().expect(usage));
    let widths = flag("--widths").unwrap_or_else(|| "1000,2000,4000,6000".into());
    let patients = args.number("--patients", 100);
    let reps = args.number("--reps", 3);

    println!("# tool width columns rows first_s plan_s explain_s select_s df_plan_s folder");
    for width in widths.split(',') {
        let width: usize = width.parse().expect("--widths N,N");
        let folder = dir.join(format!("w{width}"));
        let file = folder.join("Provenance.ndjson");
        if !file.exists() {
            write_provenance(&file, width, patients).map_err(|e| Error::io(&file, e))?;
        }
        let cache = tempfile::tempdir_in(dir).map_err(|e| Error::io(dir, e))?;
        let options = CatalogOptions::default()
            .with_cache_dir(cache.path().to_path_buf())
            .with_freshness(Freshness::Never);
        let source = LocalFolder::try_new(folder.clone())?;
        let fhir = FhirCatalog::try_new(Arc::new(source), options).await?;
        let ctx = SessionContext::new_with_config(
            SessionConfig::new().with_default_catalog_and_schema("fhir", catalog::DEFAULT_SCHEMA),
        );
        ctx.register_catalog("fhir", Arc::new(fhir));

        let t0 = Instant::now();
        let batches = catalog::sql(&ctx, SELECT).await?.collect().await?;
        let first = t0.elapsed();
        let (rows, columns) = shape(&batches);
        let plan = median(reps, || async {
            let t0 = Instant::now();
            catalog::sql(&ctx, SELECT)
                .await?
                .create_physical_plan()
                .await?;
            Ok(t0.elapsed())
        })
        .await?;
        let explain = median(reps, || async {
            let t0 = Instant::now();
            let lines = catalog::sql(&ctx, &format!("EXPLAIN {SELECT}"))
                .await?
                .collect()
                .await?;
            assert!(shape(&lines).0 > 0, "an EXPLAIN of width {width}");
            Ok(t0.elapsed())
        })
        .await?;
        let select = median(reps, || async {
            let t0 = Instant::now();
            let batches = catalog::sql(&ctx, SELECT).await?.collect().await?;
            assert_eq!(shape(&batches), (rows, columns), "the same answer");
            Ok(t0.elapsed())
        })
        .await?;
        // DataFusion's planner on the same table (quoted: it folds unquoted names to lower case).
        let t0 = Instant::now();
        ctx.sql("SELECT * FROM \"Provenance\"")
            .await?
            .create_physical_plan()
            .await?;
        let df_plan = t0.elapsed();
        println!(
            "fhirflight_wide {width} {columns} {rows} {:.4} {:.4} {:.4} {:.4} {:.4} {}",
            first.as_secs_f64(),
            plan.as_secs_f64(),
            explain.as_secs_f64(),
            select.as_secs_f64(),
            df_plan.as_secs_f64(),
            folder.display()
        );
    }
    Ok(())
}

/// Writes the Provenance of `patients` patients with `width` targets each to `file`.
fn write_provenance(file: &Path, width: usize, patients: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(file.parent().expect("a file in a folder"))?;
    let options = GenerateOptions::default().with_provenance_targets(width);
    let population = generate_with(42, patients, options);
    let mut out = std::io::BufWriter::new(std::fs::File::create(file)?);
    population.write_ndjson("Provenance", &mut out)?;
    out.flush()
}

/// The median duration of `reps` runs of `run`.
async fn median<F, Fut>(reps: usize, run: F) -> datafusion::error::Result<Duration>
where
    F: Fn() -> Fut,
    Fut: Future<Output = datafusion::error::Result<Duration>>,
{
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        times.push(run().await?);
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// (rows, columns) of a result.
fn shape(batches: &[RecordBatch]) -> (usize, usize) {
    let rows = batches.iter().map(RecordBatch::num_rows).sum();
    (rows, batches.first().map_or(0, RecordBatch::num_columns))
}
