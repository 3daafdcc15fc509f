//! Integration tests: one binary, a module per area.

// The tests' helpers fail the test where it stands, like the tests themselves.
#![allow(clippy::unwrap_used)]

mod bulk;
mod catalog;
mod catalog_views;
mod cli;
mod demo;
mod errors;
mod flight;
mod hostile;
mod idents;
mod ndjson;
mod smart;
mod snapshot;
mod view;

/// The rows of `batch` as `|`-joined cell strings.
fn row_strings(batch: &arrow::array::RecordBatch) -> impl Iterator<Item = String> + '_ {
    (0..batch.num_rows()).map(|row| {
        let cells: Vec<String> = batch
            .columns()
            .iter()
            .map(|c| arrow::util::display::array_value_to_string(c, row).unwrap())
            .collect();
        cells.join("|")
    })
}

/// Waits until `done()` holds, checking every few milliseconds; fails after 30 s, naming `what`,
/// so that a regression fails the test instead of hanging the run.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let wait = async {
        while !done() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("still waiting after 30 s for {what}"));
}
