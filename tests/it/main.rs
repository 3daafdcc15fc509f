//! Integration tests: one binary, a module per area.

mod bulk;
mod catalog;
mod catalog_views;
mod demo;
mod flight;
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
