//! Generates the gRPC health messages and server from proto/ without `protoc`:
//! protox parses the proto in pure Rust and tonic-prost-build emits the code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/grpc/health/v1/health.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        // The agent's checks go over its own h2 client (src/probe/endpoint/), so tonic's
        // generated client would be dead code; the server stays for the test backends.
        .build_client(false)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
