//! The benchmark farm: tonic health backends on 127.0.0.1, each serving some services,
//! all SERVING, and one agent request line per target; with ORCA, each backend also serves
//! `xds.service.orca.v3.OpenRcaService/StreamCoreMetrics` with one fixed load report.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use haproxy_grpc_agent::probe::orca_pb::data::OrcaLoadReport;
use haproxy_grpc_agent::probe::orca_pb::service::OrcaLoadReportRequest;
use haproxy_grpc_agent::probe::orca_pb::service::open_rca_service_server::{
    OpenRcaService, OpenRcaServiceServer,
};
use tonic::{Request, Response, Status};

use super::backend::{HealthBackend, Neighbour, Wire};

/// The name of a backend's `index`th service.
pub fn service(index: usize) -> String {
    format!("bench.S{index}")
}

/// `backends` backends serving `services` services each; the lines are in backend order.
pub async fn start_farm(backends: usize, services: usize) -> (Vec<HealthBackend>, Vec<String>) {
    start(&[LOOPBACK], backends, services, None).await
}

/// As [`start_farm`], backend `b` listening on `addresses[b % addresses.len()]` (the far
/// side of a network namespace's link, say).
pub async fn start_farm_on(
    addresses: &[IpAddr],
    backends: usize,
    services: usize,
) -> (Vec<HealthBackend>, Vec<String>) {
    start(addresses, backends, services, None).await
}

const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// As [`start_farm`], and every backend serves ORCA load reports of `cpu_utilization`;
/// the returned counts cover the whole farm.
pub async fn start_orca_farm(
    backends: usize,
    services: usize,
    cpu_utilization: f64,
) -> (Vec<HealthBackend>, Vec<String>, Arc<OrcaCounts>) {
    let orca = Arc::new(OrcaCounts {
        report: OrcaLoadReport {
            cpu_utilization,
            ..OrcaLoadReport::default()
        },
        streams: AtomicU64::new(0),
        open_streams: AtomicUsize::new(0),
        reports: AtomicU64::new(0),
    });
    let (farm, lines) = start(&[LOOPBACK], backends, services, Some(&orca)).await;
    (farm, lines, orca)
}

async fn start(
    addresses: &[IpAddr],
    backends: usize,
    services: usize,
    orca: Option<&Arc<OrcaCounts>>,
) -> (Vec<HealthBackend>, Vec<String>) {
    let mut farm = Vec::with_capacity(backends);
    let mut lines = Vec::with_capacity(backends * services);
    for b in 0..backends {
        let neighbour = orca.map(|orca| Neighbour {
            path_prefix: "/xds.service.orca.v3.OpenRcaService/",
            service: tower::util::BoxCloneService::new(OpenRcaServiceServer::new(FixedReport(
                Arc::clone(orca),
            ))),
        });
        let ip = addresses[b % addresses.len()];
        let addr = SocketAddr::new(ip, 0);
        let backend = HealthBackend::start_beside(addr, None, neighbour).await;
        for index in 0..services {
            let name = service(index);
            backend.set(&name, Wire::Serving);
            lines.push(format!("{ip} {} no-ssl localhost {name}\n", backend.port()));
        }
        farm.push(backend);
    }
    (farm, lines)
}

/// The farm's ORCA side: the one report every backend sends, and counts over all of them.
pub struct OrcaCounts {
    report: OrcaLoadReport,
    streams: AtomicU64,
    open_streams: AtomicUsize,
    reports: AtomicU64,
}

impl OrcaCounts {
    /// StreamCoreMetrics streams opened since the start.
    pub fn streams(&self) -> u64 {
        self.streams.load(Ordering::Relaxed)
    }

    /// StreamCoreMetrics streams open now.
    pub fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::Relaxed)
    }

    /// Reports handed to the transport on every stream together since the start.
    pub fn reports(&self) -> u64 {
        self.reports.load(Ordering::Relaxed)
    }
}

/// The shortest interval a stream gets, so that a client asking for 0 cannot make the
/// farm spin.
const MIN_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Clone)]
struct FixedReport(Arc<OrcaCounts>);

type ReportStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<OrcaLoadReport, Status>> + Send>>;

#[tonic::async_trait]
impl OpenRcaService for FixedReport {
    type StreamCoreMetricsStream = ReportStream;

    /// The report at once, then one every interval the client asked for, until it goes.
    async fn stream_core_metrics(
        &self,
        request: Request<OrcaLoadReportRequest>,
    ) -> Result<Response<ReportStream>, Status> {
        let asked = request.into_inner().report_interval.unwrap_or_default();
        let interval = Duration::from_secs(u64::try_from(asked.seconds).unwrap_or(0))
            + Duration::from_nanos(u64::try_from(asked.nanos).unwrap_or(0));
        let interval = interval.max(MIN_INTERVAL);
        let counts = Arc::clone(&self.0);
        counts.streams.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            counts.open_streams.fetch_add(1, Ordering::Relaxed);
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = sender.closed() => break,
                }
                if sender.send(Ok(counts.report.clone())).await.is_err() {
                    break;
                }
                counts.reports.fetch_add(1, Ordering::Relaxed);
            }
            counts.open_streams.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}
