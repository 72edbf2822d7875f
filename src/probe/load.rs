//! One endpoint's ORCA load reports (gRFC A51, out of band): one stream per endpoint whose
//! targets want a weight, whatever the number of its services. It is opened on the
//! endpoint's connections as a Watch is (a slot stays free for Checks), asks for a report
//! every `orca_report_interval`, is opened again after a backoff when it ends, and keeps
//! the weight from its reports ([`crate::weight`]). UNIMPLEMENTED means the backend sends
//! no load reports: its targets' replies carry no weight, and the stream is not asked for
//! again on that endpoint.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::call;
use super::endpoint::Endpoint;
use super::request::Prepared;
use super::{LoadConfig, LoadWeight};
use crate::events::{Events, WEIGHT_EVENT_STEP, WeightChange};
use crate::weight::{LoadReport, WeightConfig, Weighting};

/// Shortest and longest wait before a failed load-report stream is opened again.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The metrics the load reports move (handles to registered collectors). Per endpoint,
/// never per target.
#[derive(Clone)]
pub struct LoadCounters {
    /// `orca_streams_active`.
    pub streams_active: prometheus::IntGauge,
    /// `orca_reports_total`.
    pub reports: prometheus::IntCounter,
    /// `orca_weights_reduced`: endpoints whose weight after their last report is below
    /// 100 %.
    pub weights_reduced: prometheus::IntGauge,
}

impl LoadCounters {
    /// Counters no registry exports (one-shot commands, tests).
    pub fn unregistered() -> LoadCounters {
        LoadCounters {
            streams_active: prometheus::IntGauge::new("orca_streams_active", "streams")
                .expect("a valid metric name"),
            reports: prometheus::IntCounter::new("orca_reports_total", "reports")
                .expect("a valid metric name"),
            weights_reduced: prometheus::IntGauge::new("orca_weights_reduced", "reduced")
                .expect("a valid metric name"),
        }
    }
}

/// An endpoint's load reports, shared by the probers of the targets that want a weight;
/// the stream stops when the last of them is gone.
pub struct Load {
    /// `host:port`, for logs and events.
    name: String,
    /// Replaced whole on every report, so a reply reads it without a lock.
    weighting: ArcSwap<Weighting>,
    /// The backend answered UNIMPLEMENTED: no reports will come.
    unimplemented: AtomicBool,
    /// What only the stream's task changes.
    state: Mutex<LoadState>,
    config: WeightConfig,
    counters: LoadCounters,
    /// Where weight changes that cross [`WEIGHT_EVENT_STEP`] go.
    events: Option<Events>,
    stop: CancellationToken,
}

#[derive(Default)]
struct LoadState {
    /// Counted in `orca_weights_reduced` now.
    reduced: bool,
    /// The weight the event feed last heard of (100 % before any).
    told: Option<u16>,
}

impl Load {
    /// What the reports say at `now`.
    pub fn weight(&self, now: Instant) -> LoadWeight {
        if self.unimplemented.load(Ordering::Relaxed) {
            return LoadWeight::NoReports;
        }
        let weighting = self.weighting.load();
        match (weighting.weight(now, &self.config), weighting.last_report()) {
            (Some((percent, report)), Some((_, at))) => LoadWeight::Percent {
                percent,
                report,
                at,
            },
            _ => LoadWeight::Waiting,
        }
    }

    /// A stream was (re)opened: the weight starts over, at 100 % through the blackout.
    fn opened(&self) {
        let mut state = self.state.lock().expect("load lock poisoned");
        self.weighting.store(Arc::new(Weighting::new()));
        self.set_reduced(&mut state, false);
    }

    /// Takes one report and keeps `orca_weights_reduced` true to it.
    fn report(&self, report: LoadReport, now: Instant) {
        self.counters.reports.inc();
        let mut state = self.state.lock().expect("load lock poisoned");
        let mut weighting = Weighting::clone(&self.weighting.load());
        weighting.report(report, now, &self.config);
        let weight = weighting
            .weight(now, &self.config)
            .map_or(100, |(percent, _)| percent);
        self.weighting.store(Arc::new(weighting));
        self.set_reduced(&mut state, weight < 100);
        self.tell(&mut state, weight, &report);
    }

    /// Feeds a weight change once it has moved [`WEIGHT_EVENT_STEP`] points from what the
    /// feed last heard, or came back to 100 %: not on every report.
    fn tell(&self, state: &mut LoadState, weight: u16, report: &LoadReport) {
        let Some(events) = &self.events else { return };
        let told = state.told.unwrap_or(100);
        let moved = weight.abs_diff(told) >= WEIGHT_EVENT_STEP || (weight == 100 && told != 100);
        if !moved {
            return;
        }
        state.told = Some(weight);
        events.publish_weight(WeightChange {
            endpoint: self.name.clone(),
            from: told,
            to: weight,
            reason: report.describe().unwrap_or_default(),
            at: SystemTime::now(),
        });
    }

    fn set_reduced(&self, state: &mut LoadState, reduced: bool) {
        if reduced != state.reduced {
            state.reduced = reduced;
            if reduced {
                self.counters.weights_reduced.inc();
            } else {
                self.counters.weights_reduced.dec();
            }
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.cancel();
        let state = self.state.get_mut().expect("load lock poisoned");
        if state.reduced {
            self.counters.weights_reduced.dec();
        }
    }
}

/// Counts an open stream in `orca_streams_active` while it lives.
struct Open(prometheus::IntGauge);

impl Open {
    fn new(gauge: &prometheus::IntGauge) -> Open {
        gauge.inc();
        Open(gauge.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Starts following `endpoint`'s load reports; they stop when the returned `Load` (and
/// every clone of its `Arc`) is dropped.
pub fn start(
    endpoint: Arc<Endpoint>,
    name: String,
    prepared: Prepared,
    config: &LoadConfig,
    counters: &LoadCounters,
    events: Option<Events>,
) -> Arc<Load> {
    let load = Arc::new(Load {
        name,
        weighting: ArcSwap::from_pointee(Weighting::new()),
        unimplemented: AtomicBool::new(false),
        state: Mutex::new(LoadState::default()),
        config: config.weight,
        counters: counters.clone(),
        events,
        stop: CancellationToken::new(),
    });
    let stop = load.stop.clone();
    let follower = follow(endpoint, prepared, Arc::downgrade(&load));
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = follower => {}
        }
    });
    load
}

/// Opens the stream, reads its reports, and opens it again after a backoff, until the
/// backend answers UNIMPLEMENTED or the `Load` is dropped (its task is then cancelled).
async fn follow(endpoint: Arc<Endpoint>, prepared: Prepared, load: Weak<Load>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let ended = match call::load_reports(&endpoint, &prepared).await {
            Ok(mut stream) => {
                let Some(opened) = load.upgrade() else { return };
                opened.opened();
                let _open = Open::new(&opened.counters.streams_active);
                drop(opened);
                backoff = BACKOFF_MIN;
                loop {
                    match stream.next().await {
                        Ok(report) => {
                            let Some(reported) = load.upgrade() else {
                                return;
                            };
                            reported.report(report, Instant::now());
                        }
                        Err(error) => break error,
                    }
                }
            }
            Err(error) => error,
        };
        if ended.is_unimplemented() {
            if let Some(refused) = load.upgrade() {
                tracing::info!(endpoint = %refused.name, "backend sends no ORCA load reports (UNIMPLEMENTED); its targets' replies carry no weight");
                refused.unimplemented.store(true, Ordering::Relaxed);
            }
            return;
        }
        let Some(name) = load.upgrade().map(|load| load.name.clone()) else {
            return;
        };
        tracing::debug!(endpoint = %name, error = %ended, "load-report stream ended; opening it again after a backoff");
        let jitter = 0.8 + fastrand::f64() * 0.4;
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// The load-report request: the interval asked for, as a `google.protobuf.Duration`.
pub fn request_message(report_interval: Duration) -> Vec<u8> {
    use prost::Message;
    let request = super::orca_pb::service::OrcaLoadReportRequest {
        report_interval: Some(prost_types::Duration {
            seconds: report_interval.as_secs() as i64,
            nanos: report_interval.subsec_nanos() as i32,
        }),
        request_cost_names: Vec::new(),
    };
    request.encode_to_vec()
}
