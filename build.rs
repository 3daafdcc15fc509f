//! Compiles `proto/` (the Flight SQL server's own messages) with a pure-Rust protobuf compiler, so
//! no system `protoc` is needed. Only with the `flight` feature: nothing else uses the messages,
//! and `prost-build`/`protox` are optional build dependencies enabled by it.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    #[cfg(feature = "flight")]
    {
        let descriptors = protox::compile(["fhirflight.proto"], ["proto"])?;
        prost_build::Config::new().compile_fds(descriptors)?;
    }
    Ok(())
}
