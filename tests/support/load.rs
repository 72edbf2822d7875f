//! An HAProxy-like agent client for benchmarks: a new TCP connection per request, one
//! line, read the reply line, reset; phases of many workers with latency percentiles.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Registers every target and waits until each answers `up`.
pub async fn warm_up(addr: SocketAddr, lines: &[String]) {
    // 64 at a time: first requests wait for a probe, so one by one is slow at scale.
    let deadline = Instant::now() + Duration::from_secs(120);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lines: Arc<Vec<String>> = Arc::new(lines.to_vec());
    let workers: Vec<_> = (0..64)
        .map(|_| {
            let (next, lines) = (Arc::clone(&next), Arc::clone(&lines));
            tokio::spawn(async move {
                loop {
                    let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(line) = lines.get(index) else { return };
                    loop {
                        let (reply, _) = request(addr, line).await.expect("agent answers");
                        if reply.starts_with(b"up") {
                            break;
                        }
                        assert!(Instant::now() < deadline, "target never came up: {line}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("warm-up worker");
    }
}

/// One HAProxy-style request: connect, send, read the reply line, reset.
pub async fn request(addr: SocketAddr, line: &str) -> std::io::Result<(Vec<u8>, Duration)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(line.as_bytes()).await?;
    let mut reply = Vec::with_capacity(64);
    let mut buf = [0u8; 128];
    while !reply.ends_with(b"\n") {
        let read = stream.read(&mut buf).await?;
        if read == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..read]);
    }
    let elapsed = started.elapsed();
    // HAProxy resets agent connections; so does this, which also spares TIME_WAIT.
    stream.set_zero_linger()?;
    Ok((reply, elapsed))
}

#[derive(Default)]
pub struct Phase {
    pub latencies_us: Vec<u32>,
    pub elapsed: Duration,
    pub not_up: u64,
    pub errors: u64,
}

pub async fn run_phase(
    addr: SocketAddr,
    lines: Arc<Vec<String>>,
    concurrency: usize,
    duration: Duration,
) -> Phase {
    let started = Instant::now();
    let end = started + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let lines = Arc::clone(&lines);
            tokio::spawn(async move {
                let mut phase = Phase::default();
                let mut next = worker;
                while Instant::now() < end {
                    next = (next + 7919) % lines.len();
                    phase.record(request(addr, &lines[next]).await);
                }
                phase
            })
        })
        .collect();
    let mut total = Phase::default();
    for worker in workers {
        total.merge(worker.await.unwrap());
    }
    total.elapsed = started.elapsed();
    total
}

/// Asks at a fixed rate (`per_second` requests, each on its own connection, started on
/// schedule whatever the earlier ones are doing) for `duration`.
pub async fn run_rate(
    addr: SocketAddr,
    lines: Arc<Vec<String>>,
    per_second: u32,
    duration: Duration,
) -> Phase {
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut asks = Vec::new();
    let mut next = 0;
    while started.elapsed() < duration {
        ticks.tick().await;
        next = (next + 7919) % lines.len();
        let line = lines[next].clone();
        asks.push(tokio::spawn(async move { request(addr, &line).await }));
    }
    let mut phase = Phase::default();
    for ask in asks {
        phase.record(ask.await.unwrap());
    }
    phase.elapsed = started.elapsed();
    phase
}

pub struct Summary {
    pub rate: f64,
    pub p50: u32,
    pub p99: u32,
    pub p999: u32,
    pub not_up: u64,
    pub errors: u64,
}

impl Summary {
    pub fn print(&self, name: &str) {
        let errors = if self.errors > 0 {
            format!(" ({} errors)", self.errors)
        } else {
            String::new()
        };
        println!(
            "{name:<9} {:>9.0} {:>9} {:>9} {:>9} {:>8}{errors}",
            self.rate, self.p50, self.p99, self.p999, self.not_up
        );
    }
}

impl Phase {
    /// Counts one request's result.
    pub fn record(&mut self, result: std::io::Result<(Vec<u8>, Duration)>) {
        match result {
            Ok((reply, elapsed)) => {
                self.latencies_us
                    .push(elapsed.as_micros().min(u32::MAX as u128) as u32);
                self.not_up += u64::from(!reply.starts_with(b"up"));
            }
            Err(_) => self.errors += 1,
        }
    }

    pub fn summary(&mut self) -> Summary {
        self.latencies_us.sort_unstable();
        let at = |q: f64| {
            let n = self.latencies_us.len();
            if n == 0 {
                0
            } else {
                self.latencies_us[((n as f64 * q) as usize).min(n - 1)]
            }
        };
        Summary {
            rate: self.latencies_us.len() as f64 / self.elapsed.as_secs_f64(),
            p50: at(0.50),
            p99: at(0.99),
            p999: at(0.999),
            not_up: self.not_up,
            errors: self.errors,
        }
    }

    pub fn merge(&mut self, other: Phase) {
        self.latencies_us.extend(other.latencies_us);
        self.elapsed += other.elapsed;
        self.not_up += other.not_up;
        self.errors += other.errors;
    }
}
