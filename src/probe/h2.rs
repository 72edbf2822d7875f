//! `grpc.health.v1.Health/Check` over a bare HTTP/2 connection (the `h2` crate): one
//! connection per backend endpoint, a request prepared once per target (headers and the
//! encoded message), and only what a health answer needs parsed from the response.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use prost::Message;
use rustls::pki_types::ServerName;
use tokio::time::Instant;

use super::connect::{ConnectFailure, ConnectTo};
use super::grpc::Timeouts;
use super::pb::{HealthCheckRequest, HealthCheckResponse};
use super::{Outcome, ProbeError, ServingStatus};

/// Largest health answer accepted (a HealthCheckResponse is a few bytes).
const MAX_MESSAGE: usize = 16 * 1024;

/// One target's request, built once.
pub struct Prepared {
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Prepared {
    /// `scheme://authority/grpc.health.v1.Health/Check` with the fixed gRPC headers, the
    /// user agent and the extra metadata, and the service name as a length-prefixed
    /// message.
    pub fn new(
        tls: bool,
        authority: &str,
        service: &str,
        user_agent: &HeaderValue,
        metadata: &HeaderMap,
    ) -> Result<Prepared, ProbeError> {
        let scheme = if tls { "https" } else { "http" };
        let uri: Uri = format!("{scheme}://{authority}/grpc.health.v1.Health/Check")
            .parse()
            .map_err(|error: http::uri::InvalidUri| ProbeError::InvalidTarget(error.to_string()))?;
        let mut headers = metadata.clone();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("user-agent", user_agent.clone());
        let message = HealthCheckRequest {
            service: service.to_string(),
        }
        .encode_to_vec();
        let mut body = BytesMut::with_capacity(5 + message.len());
        body.extend_from_slice(&[0]);
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(&message);
        Ok(Prepared {
            uri,
            headers,
            body: body.freeze(),
        })
    }
}

/// TLS for an `ssl` endpoint: the client configuration and the name to verify.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<rustls::ClientConfig>,
    pub name: ServerName<'static>,
}

/// One backend endpoint's HTTP/2 connection, made on first use and again after it fails.
pub struct Connection {
    connect_to: ConnectTo,
    tls: Option<Tls>,
    timeouts: Arc<ArcSwap<Timeouts>>,
    sender: tokio::sync::Mutex<Option<h2::client::SendRequest<Bytes>>>,
}

impl Connection {
    pub fn new(connect_to: ConnectTo, tls: Option<Tls>, timeouts: Arc<ArcSwap<Timeouts>>) -> Self {
        Connection {
            connect_to,
            tls,
            timeouts,
            sender: tokio::sync::Mutex::new(None),
        }
    }

    /// One Check: connect if needed (within the connect timeout), then the call (within
    /// the RPC timeout).
    pub async fn check(&self, prepared: &Prepared) -> Outcome {
        let timeouts = **self.timeouts.load();
        let sender = match self.ready_sender(timeouts).await {
            Ok(sender) => sender,
            Err(error) => return Outcome::Failed(error),
        };
        let call = call(sender, prepared, timeouts.rpc);
        match tokio::time::timeout(timeouts.rpc, call).await {
            Err(_) => Outcome::Failed(ProbeError::RpcTimeout(timeouts.rpc)),
            Ok(Ok(outcome)) => outcome,
            Ok(Err(error)) => {
                // The connection may be dead: make the next check reconnect.
                if error.is_io() || error.is_go_away() || error.reason().is_none() {
                    self.sender.lock().await.take();
                }
                Outcome::Failed(ProbeError::Transport(error.to_string()))
            }
        }
    }

    /// A sender on a live connection, connecting first if there is none.
    async fn ready_sender(
        &self,
        timeouts: Timeouts,
    ) -> Result<h2::client::SendRequest<Bytes>, ProbeError> {
        let mut slot = self.sender.lock().await;
        if let Some(sender) = slot.as_ref() {
            // A sender whose connection closed fails `ready`; reconnect then.
            if let Ok(ready) = sender.clone().ready().await {
                return Ok(ready);
            }
            *slot = None;
        }
        let deadline = Instant::now() + timeouts.connect;
        let sender = tokio::time::timeout_at(deadline, self.connect(timeouts))
            .await
            .map_err(|_| ProbeError::ConnectTimeout(timeouts.connect))??;
        *slot = Some(sender.clone());
        Ok(sender)
    }

    async fn connect(
        &self,
        timeouts: Timeouts,
    ) -> Result<h2::client::SendRequest<Bytes>, ProbeError> {
        let tcp = self
            .connect_to
            .clone()
            .connect()
            .await
            .map_err(|failure| match failure {
                ConnectFailure::Dns(message) => ProbeError::Dns(message),
                ConnectFailure::Refused => ProbeError::ConnectionRefused,
                ConnectFailure::Timeout => ProbeError::ConnectTimeout(timeouts.connect),
                ConnectFailure::Other(error) => ProbeError::Connect(error.to_string()),
            })?;
        let handshake =
            |error: h2::Error| ProbeError::Connect(format!("http/2 handshake: {error}"));
        let sender = match &self.tls {
            None => {
                let (sender, connection) = h2::client::handshake(tcp).await.map_err(handshake)?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                sender
            }
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
                let stream = connector
                    .connect(tls.name.clone(), tcp)
                    .await
                    .map_err(|error| ProbeError::Tls(super::grpc::error_chain(&error)))?;
                let (sender, connection) =
                    h2::client::handshake(stream).await.map_err(handshake)?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                sender
            }
        };
        sender
            .ready()
            .await
            .map_err(|error| ProbeError::Connect(format!("http/2: {error}")))
    }
}

/// Sends the prepared request and reads the answer.
async fn call(
    mut sender: h2::client::SendRequest<Bytes>,
    prepared: &Prepared,
    rpc_timeout: Duration,
) -> Result<Outcome, h2::Error> {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(prepared.uri.clone())
        .body(())
        .expect("a prepared request is valid");
    *request.headers_mut() = prepared.headers.clone();
    request.headers_mut().insert(
        "grpc-timeout",
        HeaderValue::from_str(&format!("{}m", rpc_timeout.as_millis().max(1)))
            .expect("digits are a valid header value"),
    );
    let (response, mut stream) = sender.send_request(request, false)?;
    stream.send_data(prepared.body.clone(), true)?;
    let response = response.await?;
    let (head, mut body) = response.into_parts();
    if head.status != http::StatusCode::OK {
        return Ok(Outcome::Failed(ProbeError::Transport(format!(
            "http status {}",
            head.status.as_u16()
        ))));
    }
    // Trailers-only: the status is in the headers and there is no message.
    if let Some(outcome) = grpc_status(&head.headers) {
        return Ok(outcome);
    }
    let mut message = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if message.len() + chunk.len() > MAX_MESSAGE {
            return Ok(Outcome::Failed(ProbeError::Transport(
                "health answer too large".to_string(),
            )));
        }
        message.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await?.unwrap_or_default();
    if let Some(outcome) =
        grpc_status(&trailers).filter(|outcome| !matches!(outcome, Outcome::Answered(_)))
    {
        return Ok(outcome);
    }
    if grpc_status(&trailers).is_none() {
        return Ok(Outcome::Failed(ProbeError::Transport(
            "no grpc-status in the answer".to_string(),
        )));
    }
    Ok(decode(message.freeze()))
}

/// The outcome a `grpc-status` header gives, if there is one: a non-zero status is the
/// failure; zero is reported as `Answered(Unknown)` for the caller to replace with the
/// message it read.
fn grpc_status(headers: &HeaderMap) -> Option<Outcome> {
    let value = headers.get("grpc-status")?;
    let code: i32 = match value.to_str().ok().and_then(|text| text.parse().ok()) {
        Some(code) => code,
        None => {
            return Some(Outcome::Failed(ProbeError::Transport(
                "unparsable grpc-status".to_string(),
            )));
        }
    };
    if code == 0 {
        return Some(Outcome::Answered(ServingStatus::Unknown));
    }
    let message = headers
        .get("grpc-message")
        .and_then(|value| value.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Some(Outcome::Failed(ProbeError::Status {
        code: super::grpc::code_name(tonic::Code::from_i32(code)).to_string(),
        message,
    }))
}

/// The one length-prefixed HealthCheckResponse of an OK answer.
fn decode(mut message: Bytes) -> Outcome {
    if message.len() < 5 {
        return Outcome::Failed(ProbeError::Transport(
            "no health message in the answer".into(),
        ));
    }
    let compressed = message.get_u8();
    let length = message.get_u32() as usize;
    if compressed != 0 {
        return Outcome::Failed(ProbeError::Transport("compressed health message".into()));
    }
    if message.len() != length {
        return Outcome::Failed(ProbeError::Transport("malformed health message".into()));
    }
    match HealthCheckResponse::decode(message) {
        Ok(response) => Outcome::Answered(ServingStatus::from_wire(response.status)),
        Err(error) => Outcome::Failed(ProbeError::Transport(format!(
            "invalid health message: {error}"
        ))),
    }
}

/// grpc-message is percent-encoded (RFC 3986 style, as the gRPC spec says).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && index + 2 < bytes.len()
            && let Ok(byte) = u8::from_str_radix(&text[index + 1..index + 3], 16)
        {
            out.push(byte);
            index += 3;
            continue;
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
