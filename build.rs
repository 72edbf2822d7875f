//! Generates the gRPC health and ORCA (gRFC A51) messages and servers from proto/ without
//! `protoc`: protox parses the protos in pure Rust and tonic-prost-build emits the code.

const PROTOS: [&str; 3] = [
    "proto/grpc/health/v1/health.proto",
    "proto/xds/data/orca/v3/orca_load_report.proto",
    "proto/xds/service/orca/v3/orca.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        // The agent's checks and load-report streams go over its own h2 client
        // (src/probe/endpoint/), so tonic's generated clients would be dead code; the
        // servers stay for the test backends.
        .build_client(false)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
