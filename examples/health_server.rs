//! A gRPC health server whose status you flip from the keyboard, for trying the agent.
//!
//! ```text
//! cargo run --example health_server -- --port 50051
//! ```
//! Then type `down`, `up`, `unknown`, or `set <service> up|down` and press Enter.

#[path = "../tests/support/backend.rs"]
mod backend;

use std::net::SocketAddr;

use backend::{HealthBackend, Wire};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A flippable grpc.health.v1 server.
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Port to listen on.
    #[arg(long, default_value_t = 50051)]
    port: u16,
}

fn parse_status(word: &str) -> Option<Wire> {
    match word {
        "up" | "serving" | "SERVING" => Some(Wire::Serving),
        "down" | "not-serving" | "NOT_SERVING" => Some(Wire::NotServing),
        "unknown" | "UNKNOWN" => Some(Wire::Unknown),
        _ => None,
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let backend = HealthBackend::start_on(SocketAddr::new(args.bind, args.port), None).await;
    println!(
        "serving grpc.health.v1.Health on {} (whole server: SERVING)",
        backend.addr
    );
    println!("type: up | down | unknown | set <service> up|down | forget <service>");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let understood = match words.as_slice() {
            [status] => parse_status(status).map(|s| backend.set("", s)).is_some(),
            ["set", service, status] => parse_status(status)
                .map(|s| backend.set(service, s))
                .is_some(),
            ["forget", service] => {
                backend.forget(service);
                true
            }
            _ => false,
        };
        if understood {
            println!("ok ({} checks so far)", backend.total_checks());
        } else {
            println!("?  up | down | unknown | set <service> up|down | forget <service>");
        }
    }
    // Without a terminal (stdin closed), keep serving until interrupted.
    let _ = tokio::signal::ctrl_c().await;
}
