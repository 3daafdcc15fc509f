//! Integration tests: one binary, a module per area.

mod bulk;
mod demo;
mod smart;
