//! One target's request, prepared once: the URI, the gRPC headers, the user agent, the
//! extra metadata and the length-prefixed `HealthCheckRequest`. A call only copies it and
//! adds its `grpc-timeout`. Pure: no I/O.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri};
use prost::Message;

use super::ProbeError;
use super::pb::HealthCheckRequest;

/// The methods the agent calls: the two of `grpc.health.v1.Health`, and ORCA's
/// out-of-band load reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Check,
    Watch,
    LoadReports,
}

impl Method {
    fn path(self) -> &'static str {
        match self {
            Method::Check => "/grpc.health.v1.Health/Check",
            Method::Watch => "/grpc.health.v1.Health/Watch",
            Method::LoadReports => "/xds.service.orca.v3.OpenRcaService/StreamCoreMetrics",
        }
    }
}

/// A target's Check or Watch request, built once.
#[derive(Clone, Debug)]
pub struct Prepared {
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    /// A unary Check carries `grpc-timeout`; a Watch stream is open-ended.
    timed: bool,
}

impl Prepared {
    /// `POST {scheme}://{authority}/grpc.health.v1.Health/{method}` with the gRPC headers,
    /// the user agent and the extra metadata (names already valid lowercase header names,
    /// values printable ASCII), and the service name as the message. Metadata values are
    /// marked sensitive, so they are never put in the backend's header table.
    pub fn for_method(
        method: Method,
        tls: bool,
        authority: &str,
        service: &str,
        user_agent: &str,
        metadata: &[(String, String)],
    ) -> Result<Prepared, ProbeError> {
        let message = HealthCheckRequest {
            service: service.to_string(),
        }
        .encode_to_vec();
        Prepared::with_message(method, tls, authority, &message, user_agent, metadata)
    }

    /// The same for any method, with its request message already encoded.
    pub fn with_message(
        method: Method,
        tls: bool,
        authority: &str,
        message: &[u8],
        user_agent: &str,
        metadata: &[(String, String)],
    ) -> Result<Prepared, ProbeError> {
        let authority: http::uri::Authority = authority
            .parse()
            .map_err(|error| ProbeError::InvalidTarget(format!("authority: {error}")))?;
        let uri = Uri::builder()
            .scheme(if tls { "https" } else { "http" })
            .authority(authority)
            .path_and_query(method.path())
            .build()
            .map_err(|error| ProbeError::InvalidTarget(format!("uri: {error}")))?;
        let mut headers = HeaderMap::with_capacity(4 + metadata.len());
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        let user_agent = HeaderValue::from_str(user_agent)
            .map_err(|_| ProbeError::InvalidTarget("user agent".to_string()))?;
        headers.insert(http::header::USER_AGENT, user_agent);
        for (name, value) in metadata {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ProbeError::InvalidTarget(format!("metadata name {name:?}")))?;
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| ProbeError::InvalidTarget(format!("metadata value of {name}")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let mut body = BytesMut::with_capacity(5 + message.len());
        body.put_u8(0);
        body.put_u32(message.len() as u32);
        body.put_slice(message);
        Ok(Prepared {
            uri,
            headers,
            body: body.freeze(),
            timed: method == Method::Check,
        })
    }

    /// The request head of one call; a Check's carries `grpc-timeout`.
    pub fn head(&self, timeout: Duration) -> Request<()> {
        let mut request = Request::new(());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.clone_from(&self.headers);
        if self.timed {
            headers.insert(
                HeaderName::from_static("grpc-timeout"),
                HeaderValue::from_str(&grpc_timeout(timeout)).expect("digits and a unit"),
            );
        }
        request
    }

    /// The length-prefixed message (cheap to clone).
    pub fn body(&self) -> Bytes {
        self.body.clone()
    }
}

/// gRPC's timeout header: at most eight digits and a unit.
fn grpc_timeout(timeout: Duration) -> String {
    let millis = timeout.as_millis().max(1);
    if millis < 100_000_000 {
        format!("{millis}m")
    } else {
        format!("{}S", timeout.as_secs().min(99_999_999))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(method: Method) -> Prepared {
        Prepared::for_method(
            method,
            true,
            "api.internal:443",
            "svc",
            "agent/1",
            &[("x-token".to_string(), "secret".to_string())],
        )
        .unwrap()
    }

    #[test]
    fn a_check_carries_every_header_and_its_deadline() {
        let head = prepared(Method::Check).head(Duration::from_millis(1500));
        assert_eq!(head.method(), http::Method::POST);
        assert_eq!(
            head.uri().to_string(),
            "https://api.internal:443/grpc.health.v1.Health/Check"
        );
        let headers = head.headers();
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["te"], "trailers");
        assert_eq!(headers["user-agent"], "agent/1");
        assert_eq!(headers["grpc-timeout"], "1500m");
        assert_eq!(headers["x-token"], "secret");
        assert!(
            headers["x-token"].is_sensitive(),
            "metadata is never indexed"
        );
        let body = prepared(Method::Check).body();
        let message = HealthCheckRequest::decode(&body[5..]).unwrap();
        assert_eq!(message.service, "svc");
        assert_eq!(&body[..5], &[0, 0, 0, 0, body.len() as u8 - 5]);
    }

    #[test]
    fn a_watch_asks_for_watch_without_a_deadline() {
        let head = prepared(Method::Watch).head(Duration::from_secs(1));
        assert_eq!(head.uri().path(), "/grpc.health.v1.Health/Watch");
        assert!(!head.headers().contains_key("grpc-timeout"));
    }

    #[test]
    fn grpc_timeouts_have_at_most_eight_digits() {
        assert_eq!(grpc_timeout(Duration::from_micros(10)), "1m");
        assert_eq!(grpc_timeout(Duration::from_secs(99_999)), "99999000m");
        assert_eq!(grpc_timeout(Duration::from_secs(100_000)), "100000S");
    }

    #[test]
    fn an_authority_that_is_not_one_is_refused() {
        let error = Prepared::for_method(Method::Check, false, "a b", "", "ua", &[]).unwrap_err();
        assert!(error.to_string().starts_with("invalid target: authority"));
    }
}
