//! An ORCA test backend: serves `xds.service.orca.v3.OpenRcaService/StreamCoreMetrics`
//! (gRFC A51's out-of-band load reports) next to `grpc.health.v1.Health` on one
//! 127.0.0.1 port, sends the load report the test sets at any time, and counts the
//! streams and reports.
//!
//! A stream gets the current report at once (or, after `wait_before_first_report`, only
//! after one interval, as grpc-js 1.14's server does), then one every report interval the
//! client asked for, but never faster than the backend's minimum interval (an absent or
//! zero interval means the minimum), as A51 lets a server do. Reports are sent on that
//! clock only, not when the test changes them, as real ORCA servers do.

#![allow(dead_code)]

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haproxy_grpc_agent::probe::orca_pb::data::OrcaLoadReport;
use haproxy_grpc_agent::probe::orca_pb::service::OrcaLoadReportRequest;
use haproxy_grpc_agent::probe::orca_pb::service::open_rca_service_server::{
    OpenRcaService, OpenRcaServiceServer,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::backend::{HealthBackend, Neighbour};

/// The minimum report interval a new backend enforces: fast enough for tests, and a floor
/// so that a client asking for 0 cannot make it spin.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_millis(10);

/// The longest wait between reports, whatever the client asks (a test backend has no use
/// for longer, and it keeps the timer arithmetic far from overflow).
const MAX_INTERVAL: Duration = Duration::from_secs(3600);

struct Shared {
    report: Mutex<OrcaLoadReport>,
    min_interval: Mutex<Duration>,
    /// Answer StreamCoreMetrics with UNIMPLEMENTED, as a server without ORCA does.
    refuse: AtomicBool,
    /// StreamCoreMetrics calls answered UNIMPLEMENTED.
    refused: AtomicU64,
    /// Streams opened from now on wait one interval before their first report.
    first_report_late: AtomicBool,
    streams: AtomicU64,
    open_streams: AtomicUsize,
    reports: AtomicU64,
    /// The report_interval of the last request: None before the first and when absent.
    last_interval: Mutex<Option<Duration>>,
    /// Cancelled by `end_streams`, then replaced for the streams opened after.
    ending: Mutex<CancellationToken>,
    /// Cancelled when the backend is dropped: a graceful server shutdown would otherwise
    /// wait for the streams forever.
    stopping: CancellationToken,
}

#[derive(Clone)]
struct Service(Arc<Shared>);

type ReportStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<OrcaLoadReport, Status>> + Send>>;

#[tonic::async_trait]
impl OpenRcaService for Service {
    type StreamCoreMetricsStream = ReportStream;

    async fn stream_core_metrics(
        &self,
        request: Request<OrcaLoadReportRequest>,
    ) -> Result<Response<ReportStream>, Status> {
        if self.0.refuse.load(Ordering::Relaxed) {
            self.0.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Status::unimplemented("ORCA is not served by this backend"));
        }
        self.0.streams.fetch_add(1, Ordering::Relaxed);
        let asked = request.into_inner().report_interval.map(to_std);
        *self.0.last_interval.lock().unwrap() = asked;
        let min_interval = *self.0.min_interval.lock().unwrap();
        let interval = asked
            .unwrap_or_default()
            .clamp(min_interval, MAX_INTERVAL.max(min_interval));
        let ending = self.0.ending.lock().unwrap().clone();
        let first_late = self.0.first_report_late.load(Ordering::Relaxed);
        // One report in the channel: a report counts as sent once the transport took the
        // one before it, so the count runs at most one ahead of the wire.
        let (sender, receiver) = mpsc::channel(1);
        let stream = Stream {
            shared: Arc::clone(&self.0),
            interval,
            first_late,
            ending,
            sender,
        };
        tokio::spawn(stream.send_reports());
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}

/// One open StreamCoreMetrics, as its sending task holds it.
struct Stream {
    shared: Arc<Shared>,
    interval: Duration,
    first_late: bool,
    /// Cancelled by `end_streams`: the stream ends with UNAVAILABLE.
    ending: CancellationToken,
    sender: mpsc::Sender<Result<OrcaLoadReport, Status>>,
}

/// What ended a wait between reports.
enum Woken {
    Tick,
    Gone,
}

impl Stream {
    /// The current report at once (unless `first_late`), then one per interval, until the
    /// client goes away, the test ends the stream, or the backend stops.
    async fn send_reports(self) {
        self.shared.open_streams.fetch_add(1, Ordering::Relaxed);
        let mut woken = if self.first_late {
            self.wait().await
        } else {
            Woken::Tick
        };
        while let Woken::Tick = woken {
            let report = self.shared.report.lock().unwrap().clone();
            let sent = tokio::select! {
                sent = self.sender.send(Ok(report)) => sent.is_ok(),
                _ = self.ending.cancelled() => {
                    self.end_with_unavailable().await;
                    break;
                }
                _ = self.shared.stopping.cancelled() => break,
            };
            if !sent {
                break;
            }
            self.shared.reports.fetch_add(1, Ordering::Relaxed);
            woken = self.wait().await;
        }
        self.shared.open_streams.fetch_sub(1, Ordering::Relaxed);
    }

    /// One interval, cut short if the stream ends on any side.
    async fn wait(&self) -> Woken {
        tokio::select! {
            _ = tokio::time::sleep(self.interval) => Woken::Tick,
            _ = self.sender.closed() => Woken::Gone,
            _ = self.ending.cancelled() => {
                self.end_with_unavailable().await;
                Woken::Gone
            }
            _ = self.shared.stopping.cancelled() => Woken::Gone,
        }
    }

    /// Ends the stream the way a server going away mid-stream does (dropping the sender
    /// alone would end it with OK).
    async fn end_with_unavailable(&self) {
        let unavailable = Status::unavailable("the test ended the stream");
        tokio::select! {
            _ = self.sender.send(Err(unavailable)) => {}
            _ = self.shared.stopping.cancelled() => {}
        }
    }
}

/// A protobuf Duration as the backend reads it: negative parts count as zero.
fn to_std(duration: prost_types::Duration) -> Duration {
    let seconds = u64::try_from(duration.seconds).unwrap_or(0);
    let nanos = u32::try_from(duration.nanos).unwrap_or(0);
    Duration::from_secs(seconds).saturating_add(Duration::from_nanos(nanos.into()))
}

/// A running ORCA and health backend; stops when dropped.
pub struct OrcaBackend {
    /// The health side of the same server: statuses, Watch, connection counts.
    pub health: HealthBackend,
    shared: Arc<Shared>,
}

impl Drop for OrcaBackend {
    fn drop(&mut self) {
        self.shared.stopping.cancel();
    }
}

impl OrcaBackend {
    /// Serves plaintext on 127.0.0.1, port chosen by the system; the whole server ("") is
    /// SERVING and the load report is all zeros.
    pub async fn start() -> OrcaBackend {
        let shared = Arc::new(Shared {
            report: Mutex::new(OrcaLoadReport::default()),
            min_interval: Mutex::new(DEFAULT_MIN_INTERVAL),
            refuse: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            first_report_late: AtomicBool::new(false),
            streams: AtomicU64::new(0),
            open_streams: AtomicUsize::new(0),
            reports: AtomicU64::new(0),
            last_interval: Mutex::new(None),
            ending: Mutex::new(CancellationToken::new()),
            stopping: CancellationToken::new(),
        });
        let neighbour = Neighbour {
            path_prefix: "/xds.service.orca.v3.OpenRcaService/",
            service: tower::util::BoxCloneService::new(OpenRcaServiceServer::new(Service(
                Arc::clone(&shared),
            ))),
        };
        let health =
            HealthBackend::start_beside("127.0.0.1:0".parse().unwrap(), None, Some(neighbour))
                .await;
        OrcaBackend { health, shared }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.health.addr
    }

    pub fn port(&self) -> u16 {
        self.health.port()
    }

    /// Replaces the load report; streams send it at their next tick.
    pub fn set_report(&self, report: OrcaLoadReport) {
        *self.shared.report.lock().unwrap() = report;
    }

    /// Changes the load report in place; streams send it at their next tick.
    pub fn update_report(&self, change: impl FnOnce(&mut OrcaLoadReport)) {
        change(&mut self.shared.report.lock().unwrap());
    }

    pub fn set_cpu_utilization(&self, value: f64) {
        self.update_report(|report| report.cpu_utilization = value);
    }

    pub fn set_application_utilization(&self, value: f64) {
        self.update_report(|report| report.application_utilization = value);
    }

    pub fn set_mem_utilization(&self, value: f64) {
        self.update_report(|report| report.mem_utilization = value);
    }

    pub fn set_rps_fractional(&self, value: f64) {
        self.update_report(|report| report.rps_fractional = value);
    }

    pub fn set_eps(&self, value: f64) {
        self.update_report(|report| report.eps = value);
    }

    /// The report streams send now.
    pub fn report(&self) -> OrcaLoadReport {
        self.shared.report.lock().unwrap().clone()
    }

    /// The shortest interval between reports for streams opened from now on (servers may
    /// have one; grpc-go's is 30 s by default, grpc-js 1.14 has none).
    pub fn set_min_interval(&self, interval: Duration) {
        *self.shared.min_interval.lock().unwrap() = interval;
    }

    /// Streams opened from now on send their first report one interval after they open
    /// rather than at once, as grpc-js 1.14's server does.
    pub fn wait_before_first_report(&self) {
        self.shared.first_report_late.store(true, Ordering::Relaxed);
    }

    /// Answers StreamCoreMetrics with UNIMPLEMENTED from now on; open streams go on.
    pub fn refuse_orca(&self) {
        self.shared.refuse.store(true, Ordering::Relaxed);
    }

    /// Ends every open stream with UNAVAILABLE; streams opened later are served as usual.
    pub fn end_streams(&self) {
        let mut ending = self.shared.ending.lock().unwrap();
        ending.cancel();
        *ending = CancellationToken::new();
    }

    /// StreamCoreMetrics calls answered UNIMPLEMENTED since the start.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// StreamCoreMetrics streams opened since the start (refused calls not counted).
    pub fn streams(&self) -> u64 {
        self.shared.streams.load(Ordering::Relaxed)
    }

    /// StreamCoreMetrics streams open now.
    pub fn open_streams(&self) -> usize {
        self.shared.open_streams.load(Ordering::Relaxed)
    }

    /// Reports sent on every stream together since the start.
    pub fn reports_sent(&self) -> u64 {
        self.shared.reports.load(Ordering::Relaxed)
    }

    /// The report_interval the last stream asked for; None before the first stream and
    /// when the last request left it out.
    pub fn last_interval(&self) -> Option<Duration> {
        *self.shared.last_interval.lock().unwrap()
    }
}
