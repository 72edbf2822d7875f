//! Reading one gRPC answer into an [`Outcome`], as pure functions over what the HTTP/2
//! layer hands up: the fields of each header block, the message bytes, the end of the
//! stream. Every malformed answer has its own reason. No I/O here; [`super::endpoint`]
//! feeds it from the `h2` crate's responses.

use bytes::{Buf, BytesMut};
use prost::Message;

use super::code::{Code, parse_wire};
use super::orca_pb::data::OrcaLoadReport;
use super::pb::HealthCheckResponse;
use super::{Outcome, ProbeError, ServingStatus};
use crate::weight::LoadReport;

/// Largest health message accepted (a HealthCheckResponse is a few bytes).
pub const MAX_MESSAGE: usize = 16 * 1024;

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
        let grpc = self.grpc_status.as_deref().map(parse_wire);
        match self.status {
            None => return Some(ProbeError::transport("answer without headers")),
            Some(200) => {}
            Some(status) => {
                let grpc = match grpc {
                    Some(Some(value)) => match Code::from_wire(value) {
                        Some(code) => format!(", grpc {code}"),
                        // OK names no failure, but the HTTP status made this one.
                        None => ", grpc OK".to_string(),
                    },
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
        let mut statuses = Vec::new();
        for mut one in self.stream_messages(bytes, "health answer too large")? {
            match decode_message(&mut one) {
                Outcome::Answered(status) => statuses.push(status),
                Outcome::Failed(error) => return Err(error),
            }
        }
        Ok(statuses)
    }

    /// ORCA load reports out of a load-report stream's DATA.
    pub fn load_reports(&mut self, bytes: &[u8]) -> Result<Vec<LoadReport>, ProbeError> {
        let mut reports = Vec::new();
        for mut one in self.stream_messages(bytes, "load report too large")? {
            let compressed = one.get_u8();
            one.advance(4);
            if compressed != 0 {
                return Err(ProbeError::transport("compressed load report"));
            }
            let report = OrcaLoadReport::decode(one.as_ref())
                .map_err(|error| ProbeError::Transport(format!("invalid load report: {error}")))?;
            reports.push(LoadReport {
                cpu_utilization: report.cpu_utilization,
                application_utilization: report.application_utilization,
                rps_fractional: report.rps_fractional,
                eps: report.eps,
            });
        }
        Ok(reports)
    }

    /// A server stream's DATA: the messages it completes, whole and in order, each with
    /// its 5-byte prefix; a message over [`MAX_MESSAGE`] ends the stream with `too_large`.
    pub fn stream_messages(
        &mut self,
        bytes: &[u8],
        too_large: &'static str,
    ) -> Result<Vec<BytesMut>, ProbeError> {
        if self.blocks != 1 {
            return Err(ProbeError::transport("data outside the stream's body"));
        }
        self.message.extend_from_slice(bytes);
        let mut messages = Vec::new();
        while self.message.len() >= 5 {
            let length =
                u32::from_be_bytes(self.message[1..5].try_into().expect("four bytes")) as usize;
            if length > MAX_MESSAGE {
                return Err(ProbeError::transport(too_large));
            }
            if self.message.len() < 5 + length {
                break;
            }
            messages.push(self.message.split_to(5 + length));
        }
        Ok(messages)
    }

    /// Why a Watch stream ended (it never ends well: the server closed it).
    pub fn watch_end(self) -> ProbeError {
        if let Some(error) = self.head_error() {
            return error;
        }
        match self.grpc_status.as_deref().map(parse_wire) {
            None => ProbeError::transport("watch ended without grpc-status"),
            Some(None) => ProbeError::transport("unparsable grpc-status"),
            Some(Some(value)) => match Code::from_wire(value) {
                Some(code) => ProbeError::Status {
                    code,
                    message: self.grpc_message.unwrap_or_default(),
                },
                None => ProbeError::transport("watch ended by the backend"),
            },
        }
    }

    /// What the whole answer says, once the stream has ended.
    pub fn outcome(mut self) -> Outcome {
        if let Some(error) = self.head_error() {
            return Outcome::Failed(error);
        }
        let grpc = self.grpc_status.as_deref().map(parse_wire);
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
            Some(Some(value)) => Code::from_wire(value),
        };
        // No code is OK: the health message then says how the backend is.
        if let Some(code) = code {
            return Outcome::Failed(ProbeError::Status {
                code,
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
#[path = "answer_tests.rs"]
mod tests;
