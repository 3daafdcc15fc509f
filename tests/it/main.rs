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
