//! Generates the gRPC health client and server from proto/ without `protoc`:
//! protox parses the proto in pure Rust and tonic-prost-build emits the code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/grpc/health/v1/health.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
