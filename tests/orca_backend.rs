//! The ORCA test backend itself, spoken to with tonic's generic client (the agent
//! generates no gRPC client): reports come at once and then at the asked interval, follow
//! what the test sets, respect the backend's minimum interval, can come one interval
//! late, can be refused or ended, and Health answers on the same connection.

mod support;

use std::time::Duration;

use haproxy_grpc_agent::probe::orca_pb::data::OrcaLoadReport;
use haproxy_grpc_agent::probe::orca_pb::service::OrcaLoadReportRequest;
use haproxy_grpc_agent::probe::pb::health_check_response::ServingStatus;
use haproxy_grpc_agent::probe::pb::{HealthCheckRequest, HealthCheckResponse};
use support::eventually;
use support::orca::OrcaBackend;
use tokio::time::Instant;
use tonic::codec::Streaming;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};
use tonic_prost::ProstCodec;

const WITHIN: Duration = Duration::from_secs(10);

async fn connect(backend: &OrcaBackend) -> Channel {
    Endpoint::from_shared(format!("http://{}", backend.addr()))
        .unwrap()
        .connect()
        .await
        .expect("connect to the ORCA backend")
}

/// Opens StreamCoreMetrics asking for `interval` (None leaves the field out).
async fn open(
    channel: &Channel,
    interval: Option<Duration>,
) -> Result<Streaming<OrcaLoadReport>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let request = OrcaLoadReportRequest {
        report_interval: interval.map(|interval| interval.try_into().unwrap()),
        request_cost_names: Vec::new(),
    };
    let path = PathAndQuery::from_static("/xds.service.orca.v3.OpenRcaService/StreamCoreMetrics");
    let call = grpc.server_streaming(Request::new(request), path, ProstCodec::default());
    let response = tokio::time::timeout(WITHIN, call)
        .await
        .expect("stream opens in time")?;
    Ok(response.into_inner())
}

/// The stream's next message: Ok(None) when it ended cleanly, Err when with a status.
async fn next(stream: &mut Streaming<OrcaLoadReport>) -> Result<Option<OrcaLoadReport>, Status> {
    tokio::time::timeout(WITHIN, stream.message())
        .await
        .expect("a message or the end in time")
}

async fn next_report(stream: &mut Streaming<OrcaLoadReport>) -> OrcaLoadReport {
    next(stream)
        .await
        .expect("no error")
        .expect("a report, not the end")
}

async fn check(channel: &Channel) -> ServingStatus {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let path = PathAndQuery::from_static("/grpc.health.v1.Health/Check");
    let codec = ProstCodec::<HealthCheckRequest, HealthCheckResponse>::default();
    let response = tokio::time::timeout(WITHIN, grpc.unary(Request::new(request), path, codec))
        .await
        .expect("Check answers in time")
        .expect("Check succeeds");
    response.into_inner().status()
}

#[tokio::test]
async fn reports_come_at_once_then_at_the_asked_interval_and_follow_the_test() {
    let backend = OrcaBackend::start().await;
    backend.set_cpu_utilization(0.25);
    let channel = connect(&backend).await;
    let interval = Duration::from_millis(50);
    let opened = Instant::now();
    let mut stream = open(&channel, Some(interval)).await.unwrap();

    let first = next_report(&mut stream).await;
    assert_eq!(first.cpu_utilization, 0.25);
    assert_eq!(backend.last_interval(), Some(interval));
    assert_eq!((backend.streams(), backend.open_streams()), (1, 1));

    backend.set_report(OrcaLoadReport {
        cpu_utilization: 0.5,
        application_utilization: 0.75,
        rps_fractional: 120.0,
        eps: 3.0,
        ..Default::default()
    });
    // A report taken before the change may still be on its way; at least four reports in
    // all, so that the spacing below says something.
    let mut received = 1u32;
    let mut last = first;
    while last.application_utilization != 0.75 || received < 4 {
        last = next_report(&mut stream).await;
        received += 1;
    }
    assert_eq!(
        (last.cpu_utilization, last.rps_fractional, last.eps),
        (0.5, 120.0, 3.0)
    );
    // The first report went out after `opened` and each later one at least `interval`
    // after the one before, so however late the client reads, this bound holds.
    assert!(
        opened.elapsed() >= interval * (received - 1),
        "{received} reports in {:?} at a {interval:?} interval",
        opened.elapsed()
    );
    assert!(backend.reports_sent() >= u64::from(received));

    drop(stream);
    eventually(
        WITHIN,
        "the stream the client dropped is closed",
        || async { backend.open_streams() == 0 },
    )
    .await;
    assert_eq!(backend.streams(), 1);
}

#[tokio::test]
async fn an_interval_absent_zero_or_below_the_minimum_means_the_minimum() {
    let backend = OrcaBackend::start().await;
    let minimum = Duration::from_millis(100);
    backend.set_min_interval(minimum);
    let channel = connect(&backend).await;
    for asked in [None, Some(Duration::ZERO), Some(Duration::from_millis(20))] {
        let opened = Instant::now();
        let mut stream = open(&channel, asked).await.unwrap();
        for _ in 0..3 {
            next_report(&mut stream).await;
        }
        assert!(
            opened.elapsed() >= minimum * 2,
            "asked {asked:?}: 3 reports in {:?} under a {minimum:?} minimum",
            opened.elapsed()
        );
        assert_eq!(backend.last_interval(), asked);
    }
}

#[tokio::test]
async fn a_backend_told_to_wait_sends_its_first_report_one_interval_late() {
    let backend = OrcaBackend::start().await;
    backend.wait_before_first_report();
    let channel = connect(&backend).await;
    let interval = Duration::from_millis(200);
    let opened = Instant::now();
    let mut stream = open(&channel, Some(interval)).await.unwrap();
    next_report(&mut stream).await;
    assert!(
        opened.elapsed() >= interval,
        "first report after {:?}",
        opened.elapsed()
    );
}

#[tokio::test]
async fn a_refusing_backend_answers_unimplemented_and_health_shares_the_connection() {
    let backend = OrcaBackend::start().await;
    backend.refuse_orca();
    let channel = connect(&backend).await;

    let refused = open(&channel, Some(Duration::from_millis(50)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unimplemented, "{refused:?}");
    assert_eq!(backend.streams(), 0);

    assert_eq!(check(&channel).await, ServingStatus::Serving);
    backend.health.set("", ServingStatus::NotServing);
    assert_eq!(check(&channel).await, ServingStatus::NotServing);
    assert_eq!(backend.health.accepted_connections(), 1);
}

#[tokio::test]
async fn ended_streams_see_unavailable_and_a_dropped_backend_ends_them() {
    let backend = OrcaBackend::start().await;
    let channel = connect(&backend).await;
    let mut stream = open(&channel, Some(Duration::from_millis(20)))
        .await
        .unwrap();
    next_report(&mut stream).await;

    backend.end_streams();
    let ended = loop {
        match next(&mut stream).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended with OK, not UNAVAILABLE"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");

    let mut again = open(&channel, Some(Duration::from_millis(20)))
        .await
        .unwrap();
    next_report(&mut again).await;
    assert_eq!(backend.streams(), 2);
    eventually(WITHIN, "only the new stream is open", || async {
        backend.open_streams() == 1
    })
    .await;

    drop(backend);
    // Whatever the way it ends, it ends (next() panics if it does not within WITHIN).
    while let Ok(Some(_)) = next(&mut again).await {}
}
