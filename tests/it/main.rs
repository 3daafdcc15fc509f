//! Integration tests: one binary, a module per area.

mod view;
mod ndjson;
mod demo;
mod catalog;
mod snapshot;
