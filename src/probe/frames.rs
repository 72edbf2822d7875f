//! The HTTP/2 (RFC 9113) and HPACK (RFC 7541) a health check needs, as pure functions
//! over bytes: frame headers, the client's opening bytes, a Check request encoded once per
//! target, the control frames a client answers with, and the reading of one answer into
//! an [`Outcome`]. No I/O here; [`super::http2`] drives a connection with it.

use std::borrow::Cow;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use super::pb::{HealthCheckRequest, HealthCheckResponse};
use super::{Outcome, ProbeError, ServingStatus};

/// What a client sends first on every connection.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Every frame starts with a header this long.
pub const FRAME_HEADER_LEN: usize = 9;
/// The largest frame payload accepted from a backend: the protocol's default, which the
/// agent never raises.
pub const MAX_FRAME_SIZE: usize = 16_384;
/// Largest health message accepted (a HealthCheckResponse is a few bytes).
pub const MAX_MESSAGE: usize = 16 * 1024;
/// Largest header block (HEADERS plus CONTINUATIONs) accepted before decoding.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// The largest stream id a client may use.
pub const MAX_STREAM_ID: u32 = (1 << 31) - 1;
/// The largest flow-control window.
pub const MAX_WINDOW: i64 = (1 << 31) - 1;
/// The protocol's initial flow-control window, for connections and streams.
pub const DEFAULT_WINDOW: i64 = 65_535;

/// Frame types (PRIORITY and unknown types are ignored, so not named).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// Error codes (RST_STREAM, GOAWAY).
pub mod code {
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const FLOW_CONTROL_ERROR: u32 = 0x3;
    pub const FRAME_SIZE_ERROR: u32 = 0x6;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const COMPRESSION_ERROR: u32 = 0x9;
}

/// The name of an HTTP/2 error code, for reasons.
pub fn code_name(code: u32) -> Cow<'static, str> {
    let name = match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        other => return Cow::Owned(format!("error code {other:#x}")),
    };
    Cow::Borrowed(name)
}

/// The fixed part of every frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub length: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    pub fn parse(bytes: &[u8]) -> FrameHeader {
        FrameHeader {
            length: (bytes[0] as usize) << 16 | (bytes[1] as usize) << 8 | bytes[2] as usize,
            kind: bytes[3],
            flags: bytes[4],
            stream: u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & MAX_STREAM_ID,
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

pub fn put_frame_header(out: &mut BytesMut, length: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(length < 1 << 24);
    out.put_slice(&(length as u32).to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// The connection preface, our SETTINGS (no server push; a header list bound) and a
/// connection window opened to the maximum, so answers never wait on flow control.
pub fn client_opening() -> BytesMut {
    let mut out = BytesMut::with_capacity(PREFACE.len() + 40);
    out.put_slice(PREFACE);
    let settings: [(u16, u32); 2] = [
        (0x2, 0),                       // ENABLE_PUSH
        (0x6, MAX_HEADER_BLOCK as u32), // MAX_HEADER_LIST_SIZE
    ];
    put_frame_header(&mut out, settings.len() * 6, kind::SETTINGS, 0, 0);
    for (id, value) in settings {
        out.put_u16(id);
        out.put_u32(value);
    }
    put_window_update(&mut out, 0, (MAX_WINDOW - DEFAULT_WINDOW) as u32);
    out
}

pub fn put_window_update(out: &mut BytesMut, stream: u32, increment: u32) {
    put_frame_header(out, 4, kind::WINDOW_UPDATE, 0, stream);
    out.put_u32(increment);
}

pub fn put_settings_ack(out: &mut BytesMut) {
    put_frame_header(out, 0, kind::SETTINGS, flag::ACK, 0);
}

pub fn put_ping_ack(out: &mut BytesMut, payload: &[u8]) {
    put_frame_header(out, payload.len(), kind::PING, flag::ACK, 0);
    out.put_slice(payload);
}

pub fn put_rst_stream(out: &mut BytesMut, stream: u32, error: u32) {
    put_frame_header(out, 4, kind::RST_STREAM, 0, stream);
    out.put_u32(error);
}

pub fn put_goaway(out: &mut BytesMut, last_stream: u32, error: u32) {
    put_frame_header(out, 8, kind::GOAWAY, 0, 0);
    out.put_u32(last_stream);
    out.put_u32(error);
}

/// One target's Check request, encoded once: the header block (every field a literal
/// that is never added to the server's dynamic table, so the bytes never change) and
/// the length-prefixed HealthCheckRequest.
#[derive(Clone, Debug)]
pub struct Prepared {
    block: Bytes,
    body: Bytes,
    /// A unary Check carries `grpc-timeout`; a Watch stream is open-ended.
    timed: bool,
}

/// The two methods of `grpc.health.v1.Health`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Check,
    Watch,
}

impl Method {
    fn path(self) -> &'static [u8] {
        match self {
            Method::Check => b"/grpc.health.v1.Health/Check",
            Method::Watch => b"/grpc.health.v1.Health/Watch",
        }
    }
}

/// Static-table indices (RFC 7541 appendix A).
const AUTHORITY: usize = 1;
const METHOD_POST: u8 = 3;
const PATH: usize = 4;
const SCHEME_HTTP: u8 = 6;
const SCHEME_HTTPS: u8 = 7;
const CONTENT_TYPE: usize = 31;
const USER_AGENT: usize = 58;

impl Prepared {
    /// `POST {scheme}://{authority}/grpc.health.v1.Health/{method}` with the gRPC headers,
    /// the user agent and the extra metadata (names already valid lowercase header
    /// names, values printable ASCII), and the service name as the message.
    pub fn for_method(
        method: Method,
        tls: bool,
        authority: &str,
        service: &str,
        user_agent: &str,
        metadata: &[(String, String)],
    ) -> Result<Prepared, ProbeError> {
        authority
            .parse::<http::uri::Authority>()
            .map_err(|error| ProbeError::InvalidTarget(format!("authority: {error}")))?;
        let mut block = BytesMut::with_capacity(96 + authority.len() + user_agent.len());
        put_indexed(&mut block, METHOD_POST);
        put_indexed(&mut block, if tls { SCHEME_HTTPS } else { SCHEME_HTTP });
        put_literal_indexed_name(&mut block, PATH, method.path());
        put_literal_indexed_name(&mut block, AUTHORITY, authority.as_bytes());
        put_literal_indexed_name(&mut block, CONTENT_TYPE, b"application/grpc");
        put_literal(&mut block, b"te", b"trailers");
        put_literal_indexed_name(&mut block, USER_AGENT, user_agent.as_bytes());
        for (name, value) in metadata {
            put_literal(&mut block, name.as_bytes(), value.as_bytes());
        }
        let message = HealthCheckRequest {
            service: service.to_string(),
        }
        .encode_to_vec();
        let mut body = BytesMut::with_capacity(5 + message.len());
        body.put_u8(0);
        body.put_u32(message.len() as u32);
        body.put_slice(&message);
        Ok(Prepared {
            block: block.freeze(),
            body: body.freeze(),
            timed: method == Method::Check,
        })
    }

    /// The bytes of the message, which count against the server's flow-control windows.
    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    /// HEADERS (+ CONTINUATION) and DATA frames of one call on `stream`, with its
    /// `grpc-timeout` (a Check's), split to the server's frame size.
    pub fn encode(&self, out: &mut BytesMut, stream: u32, timeout: Duration, max_frame: usize) {
        let mut block = BytesMut::with_capacity(self.block.len() + 24);
        block.put_slice(&self.block);
        if self.timed {
            put_literal(
                &mut block,
                b"grpc-timeout",
                grpc_timeout(timeout).as_bytes(),
            );
        }
        let mut chunks = block.chunks(max_frame).peekable();
        let mut frame_kind = kind::HEADERS;
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_none() {
                flag::END_HEADERS
            } else {
                0
            };
            put_frame_header(out, chunk.len(), frame_kind, flags, stream);
            out.put_slice(chunk);
            frame_kind = kind::CONTINUATION;
        }
        let mut chunks = self.body.chunks(max_frame).peekable();
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_none() {
                flag::END_STREAM
            } else {
                0
            };
            put_frame_header(out, chunk.len(), kind::DATA, flags, stream);
            out.put_slice(chunk);
        }
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

fn put_int(out: &mut BytesMut, first: u8, prefix_bits: u8, value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.put_u8(first | value as u8);
        return;
    }
    out.put_u8(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.put_u8((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.put_u8(rest as u8);
}

fn put_string(out: &mut BytesMut, bytes: &[u8]) {
    put_int(out, 0x00, 7, bytes.len());
    out.put_slice(bytes);
}

fn put_indexed(out: &mut BytesMut, index: u8) {
    out.put_u8(0x80 | index);
}

/// Literal header field without indexing, name from the static table.
fn put_literal_indexed_name(out: &mut BytesMut, name: usize, value: &[u8]) {
    put_int(out, 0x00, 4, name);
    put_string(out, value);
}

/// Literal header field without indexing, new name.
fn put_literal(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_u8(0x00);
    put_string(out, name);
    put_string(out, value);
}

/// Longest piece of a backend's own text (content-type, grpc-message) kept for a reason.
const MAX_QUOTED: usize = 200;

/// One answer as it arrives: the fields of its header blocks that a health check reads,
/// and the message bytes.
#[derive(Debug, Default)]
pub struct Answer {
    /// Header blocks finished so far (informational 1xx blocks are not counted).
    blocks: u8,
    status: Option<u16>,
    content_type: Option<String>,
    grpc_status: Option<Vec<u8>>,
    grpc_message: Option<String>,
    message: BytesMut,
    /// This block's `:status`, kept apart until the block ends (a 1xx block is dropped).
    block_status: Option<u16>,
}

impl Answer {
    /// One decoded field of the header block in progress.
    pub fn field(&mut self, name: &[u8], value: &[u8]) {
        match name {
            b":status" => {
                self.block_status = std::str::from_utf8(value)
                    .ok()
                    .and_then(|text| text.parse().ok())
            }
            b"content-type" if self.blocks == 0 => {
                self.content_type = Some(quoted(value));
            }
            b"grpc-status" => self.grpc_status = Some(value.to_vec()),
            b"grpc-message" => {
                self.grpc_message = Some(percent_decode(&value[..value.len().min(MAX_QUOTED)]))
            }
            _ => {}
        }
    }

    /// The end of a header block. An error ends the answer at once.
    pub fn end_block(&mut self, end_stream: bool) -> Result<(), ProbeError> {
        let status = self.block_status.take();
        if self.blocks == 0 {
            match status {
                Some(status) if (100..200).contains(&status) && !end_stream => return Ok(()),
                Some(status) => self.status = Some(status),
                None => return Err(ProbeError::transport("answer without :status")),
            }
        } else if !end_stream {
            return Err(ProbeError::transport("trailers without end of stream"));
        }
        self.blocks += 1;
        Ok(())
    }

    /// Message bytes (DATA); bounded by [`MAX_MESSAGE`].
    pub fn data(&mut self, bytes: &[u8]) -> Result<(), ProbeError> {
        if self.blocks == 0 {
            return Err(ProbeError::transport("data before headers"));
        }
        if self.blocks > 1 {
            return Err(ProbeError::transport("data after trailers"));
        }
        if self.message.len() + bytes.len() > MAX_MESSAGE {
            return Err(ProbeError::transport("health answer too large"));
        }
        self.message.extend_from_slice(bytes);
        Ok(())
    }

    /// What is wrong with the answer's headers, if anything: not HTTP 200, or not gRPC.
    pub fn head_error(&self) -> Option<ProbeError> {
        let grpc = self.grpc_status.as_deref().map(parse_grpc_status);
        match self.status {
            None => return Some(ProbeError::transport("answer without headers")),
            Some(200) => {}
            Some(status) => {
                let grpc = match grpc {
                    Some(Some(code)) => format!(", grpc {}", grpc_code_name(code)),
                    _ => String::new(),
                };
                return Some(ProbeError::Transport(format!("http status {status}{grpc}")));
            }
        }
        match self.content_type.as_deref() {
            None => Some(ProbeError::transport("answer without content-type")),
            Some(kind) if !is_grpc_content_type(kind) => Some(ProbeError::Transport(format!(
                "content-type {kind:?} is not grpc"
            ))),
            Some(_) => None,
        }
    }

    /// The statuses of the Watch messages completed by `bytes` (DATA of a stream whose
    /// headers were fine), in order; each message is bounded by [`MAX_MESSAGE`].
    pub fn watch_data(&mut self, bytes: &[u8]) -> Result<Vec<ServingStatus>, ProbeError> {
        if self.blocks != 1 {
            return Err(ProbeError::transport("data outside the stream's body"));
        }
        self.message.extend_from_slice(bytes);
        let mut statuses = Vec::new();
        while self.message.len() >= 5 {
            let length =
                u32::from_be_bytes(self.message[1..5].try_into().expect("four bytes")) as usize;
            if length > MAX_MESSAGE {
                return Err(ProbeError::transport("health answer too large"));
            }
            if self.message.len() < 5 + length {
                break;
            }
            let mut one = self.message.split_to(5 + length);
            match decode_message(&mut one) {
                Outcome::Answered(status) => statuses.push(status),
                Outcome::Failed(error) => return Err(error),
            }
        }
        Ok(statuses)
    }

    /// Why a Watch stream ended (it never ends well: the server closed it).
    pub fn watch_end(self) -> ProbeError {
        if let Some(error) = self.head_error() {
            return error;
        }
        match self.grpc_status.as_deref().map(parse_grpc_status) {
            None => ProbeError::transport("watch ended without grpc-status"),
            Some(None) => ProbeError::transport("unparsable grpc-status"),
            Some(Some(0)) => ProbeError::transport("watch ended by the backend"),
            Some(Some(code)) => ProbeError::Status {
                code: grpc_code_name(code).into_owned(),
                message: self.grpc_message.unwrap_or_default(),
            },
        }
    }

    /// What the whole answer says, once the stream has ended.
    pub fn outcome(mut self) -> Outcome {
        if let Some(error) = self.head_error() {
            return Outcome::Failed(error);
        }
        let grpc = self.grpc_status.as_deref().map(parse_grpc_status);
        let code = match grpc {
            None => {
                let reason = match (self.blocks, self.message.is_empty()) {
                    (1, true) => "headers ended the answer without grpc-status",
                    (1, false) => "no trailers after the message",
                    _ => "trailers without grpc-status",
                };
                return Outcome::Failed(ProbeError::transport(reason));
            }
            Some(None) => return Outcome::Failed(ProbeError::transport("unparsable grpc-status")),
            Some(Some(code)) => code,
        };
        if code != 0 {
            return Outcome::Failed(ProbeError::Status {
                code: grpc_code_name(code).into_owned(),
                message: self.grpc_message.unwrap_or_default(),
            });
        }
        decode_message(&mut self.message)
    }
}

fn is_grpc_content_type(value: &str) -> bool {
    let value = value.to_ascii_lowercase();
    value == "application/grpc"
        || value.starts_with("application/grpc+")
        || value.starts_with("application/grpc;")
}

/// A backend's bytes shown in a reason: printable ASCII, bounded.
fn quoted(value: &[u8]) -> String {
    value
        .iter()
        .take(MAX_QUOTED)
        .map(|&byte| {
            if byte.is_ascii_graphic() || byte == b' ' {
                byte as char
            } else {
                '?'
            }
        })
        .collect()
}

/// A `grpc-status` value: decimal digits only.
fn parse_grpc_status(value: &[u8]) -> Option<u32> {
    if value.is_empty() || value.len() > 9 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The canonical upper-case name of a gRPC status code.
pub fn grpc_code_name(code: u32) -> Cow<'static, str> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    match NAMES.get(code as usize) {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(format!("status {code}")),
    }
}

/// The one length-prefixed HealthCheckResponse of an OK answer.
fn decode_message(message: &mut BytesMut) -> Outcome {
    if message.is_empty() {
        return Outcome::Failed(ProbeError::transport("no health message in the answer"));
    }
    if message.len() < 5 {
        return Outcome::Failed(ProbeError::transport("truncated health message"));
    }
    let compressed = message.get_u8();
    let length = message.get_u32() as usize;
    if compressed != 0 {
        return Outcome::Failed(ProbeError::transport("compressed health message"));
    }
    if message.len() < length {
        return Outcome::Failed(ProbeError::transport("truncated health message"));
    }
    if message.len() > length {
        return Outcome::Failed(ProbeError::transport("more than one message in the answer"));
    }
    match HealthCheckResponse::decode(message.as_ref()) {
        Ok(response) => Outcome::Answered(ServingStatus::from_wire(response.status)),
        Err(error) => Outcome::Failed(ProbeError::Transport(format!(
            "invalid health message: {error}"
        ))),
    }
}

/// grpc-message is percent-encoded (RFC 3986 style, as the gRPC spec says).
fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && index + 2 < bytes.len()
            && let Some(byte) = std::str::from_utf8(&bytes[index + 1..index + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
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

#[cfg(test)]
#[path = "frames_tests.rs"]
mod tests;
