//! The benchmark farm: tonic health backends on 127.0.0.1, each serving some services,
//! all SERVING, and one agent request line per target.

#![allow(dead_code)]

use super::backend::{HealthBackend, Wire};

/// The name of a backend's `index`th service.
pub fn service(index: usize) -> String {
    format!("bench.S{index}")
}

/// `backends` backends serving `services` services each; the lines are in backend order.
pub async fn start_farm(backends: usize, services: usize) -> (Vec<HealthBackend>, Vec<String>) {
    let mut farm = Vec::with_capacity(backends);
    let mut lines = Vec::with_capacity(backends * services);
    for _ in 0..backends {
        let backend = HealthBackend::start().await;
        for index in 0..services {
            let name = service(index);
            backend.set(&name, Wire::Serving);
            lines.push(format!(
                "127.0.0.1 {} no-ssl localhost {name}\n",
                backend.port()
            ));
        }
        farm.push(backend);
    }
    (farm, lines)
}
