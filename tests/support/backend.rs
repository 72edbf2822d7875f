//! A gRPC health backend for tests, examples and benchmarks: serves
//! `grpc.health.v1.Health` on 127.0.0.1 (plaintext or TLS), lets the caller set each
//! service's status while running, and counts the Check calls and open connections it sees.
//! Another gRPC service may share its port (see [`Neighbour`]; the ORCA backend does).

#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use haproxy_grpc_agent::probe::pb::health_check_response::ServingStatus;
use haproxy_grpc_agent::probe::pb::health_server::{Health, HealthServer};
use haproxy_grpc_agent::probe::pb::{HealthCheckRequest, HealthCheckResponse};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};
use tower::ServiceExt;
use tower::util::BoxCloneService;

#[allow(unused_imports)]
pub use haproxy_grpc_agent::probe::pb::health_check_response::ServingStatus as Wire;

#[derive(Default)]
struct Shared {
    /// Status per service name; a name missing here is answered NOT_FOUND.
    statuses: Mutex<HashMap<String, ServingStatus>>,
    checks: Mutex<HashMap<String, u64>>,
    total_checks: AtomicU64,
    open_connections: AtomicUsize,
    accepted_connections: AtomicUsize,
    /// The request headers of the last Check or Watch.
    last_metadata: Mutex<Option<tonic::metadata::MetadataMap>>,
    /// Woken on every status change, for Watch streams.
    changed: tokio::sync::Notify,
    /// Watch calls received, and how many are open now.
    watches: AtomicU64,
    open_watches: AtomicUsize,
    /// Answer Watch with UNIMPLEMENTED, as a server without it does.
    no_watch: std::sync::atomic::AtomicBool,
    /// The backend is being dropped: Watch streams end (a graceful server shutdown would
    /// otherwise wait for them forever).
    stopping: std::sync::atomic::AtomicBool,
}

#[derive(Clone)]
struct Service(Arc<Shared>);

#[tonic::async_trait]
impl Health for Service {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        *self.0.last_metadata.lock().unwrap() = Some(request.metadata().clone());
        let service = request.into_inner().service;
        self.0.total_checks.fetch_add(1, Ordering::Relaxed);
        *self
            .0
            .checks
            .lock()
            .unwrap()
            .entry(service.clone())
            .or_default() += 1;
        let status = self.0.statuses.lock().unwrap().get(&service).copied();
        match status {
            Some(status) => Ok(Response::new(HealthCheckResponse {
                status: status as i32,
            })),
            None => Err(Status::not_found(format!("unknown service {service}"))),
        }
    }

    type WatchStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    /// The status at once, then every change; an unknown service is SERVICE_UNKNOWN (the
    /// stream stays open, as the protocol says).
    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if self.0.no_watch.load(Ordering::Relaxed) {
            return Err(Status::unimplemented("watch is not served by this backend"));
        }
        self.0.watches.fetch_add(1, Ordering::Relaxed);
        *self.0.last_metadata.lock().unwrap() = Some(request.metadata().clone());
        let service = request.into_inner().service;
        let shared = Arc::clone(&self.0);
        let (sender, receiver) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            shared.open_watches.fetch_add(1, Ordering::Relaxed);
            let mut last = None;
            while !shared.stopping.load(Ordering::Relaxed) {
                let changed = shared.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                let now = shared
                    .statuses
                    .lock()
                    .unwrap()
                    .get(&service)
                    .copied()
                    .unwrap_or(ServingStatus::ServiceUnknown);
                if last != Some(now) {
                    let message = HealthCheckResponse { status: now as i32 };
                    if sender.send(Ok(message)).await.is_err() {
                        break;
                    }
                    last = Some(now);
                }
                tokio::select! {
                    _ = changed => {}
                    _ = sender.closed() => break,
                }
            }
            shared.open_watches.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}

/// A running health backend; stops when dropped.
pub struct HealthBackend {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Drop for HealthBackend {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        self.shared.changed.notify_waiters();
    }
}

impl HealthBackend {
    /// Serves plaintext on 127.0.0.1, port chosen by the system; the whole server ("")
    /// starts SERVING.
    pub async fn start() -> HealthBackend {
        HealthBackend::start_on("127.0.0.1:0".parse().unwrap(), None).await
    }

    /// Serves TLS with the given PEM certificate chain and key.
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> HealthBackend {
        let identity = Identity::from_pem(cert_pem, key_pem);
        HealthBackend::start_on("127.0.0.1:0".parse().unwrap(), Some(identity)).await
    }

    /// Serves TLS and accepts only clients with a certificate signed by `client_ca_pem`.
    pub async fn start_mtls(cert_pem: &str, key_pem: &str, client_ca_pem: &str) -> HealthBackend {
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert_pem, key_pem))
            .client_ca_root(tonic::transport::Certificate::from_pem(client_ca_pem));
        HealthBackend::start_with("127.0.0.1:0".parse().unwrap(), Some(tls)).await
    }

    pub async fn start_on(addr: SocketAddr, tls: Option<Identity>) -> HealthBackend {
        let tls = tls.map(|identity| ServerTlsConfig::new().identity(identity));
        HealthBackend::start_with(addr, tls).await
    }

    pub async fn start_with(addr: SocketAddr, tls: Option<ServerTlsConfig>) -> HealthBackend {
        HealthBackend::start_beside(addr, tls, None).await
    }

    /// Serves Health and, on the same port, `neighbour` if there is one.
    pub async fn start_beside(
        addr: SocketAddr,
        tls: Option<ServerTlsConfig>,
        neighbour: Option<Neighbour>,
    ) -> HealthBackend {
        let listener = TcpListener::bind(addr).await.expect("bind health backend");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        shared
            .statuses
            .lock()
            .unwrap()
            .insert(String::new(), ServingStatus::Serving);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let counted = Arc::clone(&shared);
        let incoming =
            tokio_stream::wrappers::TcpListenerStream::new(listener).map(move |stream| {
                stream.map(|stream| CountedStream::new(stream, Arc::clone(&counted)))
            });
        let mut builder = Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).expect("tls config");
        }
        let service = Routed {
            health: HealthServer::new(Service(Arc::clone(&shared))),
            neighbour,
        };
        tokio::spawn(async move {
            let stopped = async {
                let _ = stopped.await;
            };
            let _ = builder
                .serve_with_incoming_shutdown(service, incoming, stopped)
                .await;
        });
        HealthBackend {
            addr,
            shared,
            _stop: stop,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Sets a service's status ("" is the whole server); Watch streams see it at once.
    pub fn set(&self, service: &str, status: ServingStatus) {
        self.shared
            .statuses
            .lock()
            .unwrap()
            .insert(service.to_string(), status);
        self.shared.changed.notify_waiters();
    }

    /// Makes a service unknown: Check answers NOT_FOUND, Watch SERVICE_UNKNOWN.
    pub fn forget(&self, service: &str) {
        self.shared.statuses.lock().unwrap().remove(service);
        self.shared.changed.notify_waiters();
    }

    /// Answers Watch with UNIMPLEMENTED from now on.
    pub fn refuse_watch(&self) {
        self.shared.no_watch.store(true, Ordering::Relaxed);
    }

    /// Watch calls received since the start.
    pub fn watches(&self) -> u64 {
        self.shared.watches.load(Ordering::Relaxed)
    }

    /// Watch streams open now.
    pub fn open_watches(&self) -> usize {
        self.shared.open_watches.load(Ordering::Relaxed)
    }

    /// Check calls received for one service.
    pub fn checks(&self, service: &str) -> u64 {
        self.shared
            .checks
            .lock()
            .unwrap()
            .get(service)
            .copied()
            .unwrap_or(0)
    }

    /// Check calls received for every service together.
    pub fn total_checks(&self) -> u64 {
        self.shared.total_checks.load(Ordering::Relaxed)
    }

    /// A request header of the last Check or Watch, if it had one.
    pub fn last_header(&self, name: &str) -> Option<String> {
        let metadata = self.shared.last_metadata.lock().unwrap();
        let value = metadata.as_ref()?.get(name)?;
        Some(value.to_str().ok()?.to_string())
    }

    /// TCP connections accepted since the start.
    pub fn accepted_connections(&self) -> usize {
        self.shared.accepted_connections.load(Ordering::Relaxed)
    }

    /// TCP connections currently open to this backend.
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::Relaxed)
    }
}

/// Another gRPC service served on the health backend's port: requests whose path starts
/// with `path_prefix` (for example "/xds.service.orca.v3.OpenRcaService/") go to it, every
/// other request to Health.
#[derive(Clone)]
pub struct Neighbour {
    pub path_prefix: &'static str,
    pub service: BoxCloneService<http::Request<Body>, http::Response<Body>, Infallible>,
}

/// Health and its neighbour, told apart by the request's path. tonic's own router would
/// do this, but it needs tonic's `router` feature (axum), which this crate does not build.
#[derive(Clone)]
struct Routed {
    health: HealthServer<Service>,
    neighbour: Option<Neighbour>,
}

impl tower::Service<http::Request<Body>> for Routed {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both sides are polled for readiness by `oneshot` when a request reaches them.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        match &self.neighbour {
            Some(neighbour) if request.uri().path().starts_with(neighbour.path_prefix) => {
                Box::pin(neighbour.service.clone().oneshot(request))
            }
            _ => Box::pin(self.health.clone().oneshot(request)),
        }
    }
}

/// A TCP stream that keeps the backend's open-connection count.
struct CountedStream {
    inner: TcpStream,
    shared: Arc<Shared>,
}

impl CountedStream {
    fn new(inner: TcpStream, shared: Arc<Shared>) -> CountedStream {
        shared.open_connections.fetch_add(1, Ordering::Relaxed);
        shared.accepted_connections.fetch_add(1, Ordering::Relaxed);
        CountedStream { inner, shared }
    }
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.shared.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connected for CountedStream {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
