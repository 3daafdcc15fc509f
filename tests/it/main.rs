//! Integration tests: one binary, a module per area.

mod view;
mod ndjson;
mod bulk;
mod demo;
mod smart;
mod flight;
mod catalog;
mod snapshot;
