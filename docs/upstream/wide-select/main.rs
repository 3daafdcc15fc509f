//! `SELECT *` on a wide table plans in time quadratic in its width (DataFusion 55).
//!
//! Builds a MemTable of WIDTH Int64 columns and 10 rows at growing widths and times, on plain
//! DataFusion, `ctx.sql("EXPLAIN SELECT * FROM t")` run to the end and `SELECT *` to a physical
//! plan (best of 3). Doubling the width should double the time; it quadruples it: at 6,000
//! columns (a FHIR Provenance flattened) planning takes seconds.
//!
//! Run: `cargo run --release -- 1000 2000 4000 8000` (widths; these by default).

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::error::Result;
use datafusion::prelude::SessionContext;

#[tokio::main]
async fn main() -> Result<()> {
    let widths: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .map(|a| a.parse().expect("widths as numbers"))
        .collect();
    let widths = if widths.is_empty() {
        vec![1000, 2000, 4000, 8000]
    } else {
        widths
    };
    println!("width  explain_s  plan_s  (explain_s / previous)");
    let mut previous: Option<f64> = None;
    for width in widths {
        let ctx = SessionContext::new();
        ctx.register_table("t", Arc::new(wide_table(width)?))?;
        let explain = best_of(3, || async {
            ctx.sql("EXPLAIN SELECT * FROM t").await?.collect().await?;
            Ok(())
        })
        .await?;
        let plan = best_of(3, || async {
            ctx.sql("SELECT * FROM t")
                .await?
                .create_physical_plan()
                .await?;
            Ok(())
        })
        .await?;
        let growth = previous.map_or(String::new(), |p| {
            format!("x{:.1}", explain.as_secs_f64() / p)
        });
        println!(
            "{width:>5}  {:>9.3}  {:>6.3}  {growth}",
            explain.as_secs_f64(),
            plan.as_secs_f64()
        );
        previous = Some(explain.as_secs_f64());
    }
    Ok(())
}

/// A MemTable of `width` Int64 columns `c0`, `c1`, ... and 10 rows.
fn wide_table(width: usize) -> Result<MemTable> {
    let schema = Arc::new(Schema::new(
        (0..width)
            .map(|i| Field::new(format!("c{i}"), DataType::Int64, true))
            .collect::<Vec<_>>(),
    ));
    let column: ArrayRef = Arc::new(Int64Array::from_iter_values(0..10));
    let batch = RecordBatch::try_new(Arc::clone(&schema), vec![column; width])?;
    MemTable::try_new(schema, vec![vec![batch]])
}

/// The shortest of `reps` runs of `run`.
async fn best_of<F, Fut>(reps: usize, run: F) -> Result<Duration>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut best = Duration::MAX;
    for _ in 0..reps {
        let t0 = Instant::now();
        run().await?;
        best = best.min(t0.elapsed());
    }
    Ok(best)
}
