//! A scripted HTTP/2 server written frame by frame, for backends that misbehave in ways a
//! real gRPC server never would: it reads the client's preface and frames, sends an empty
//! SETTINGS, and answers each request with the bytes a script gives. It counts requests,
//! accepted and open connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::AbortOnDrop;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// What the server does for one request.
pub enum Step {
    /// Writes these bytes (frames built with the helpers below).
    Send(Vec<u8>),
    /// Closes the connection.
    Close,
    /// Resets the TCP connection (RST, not FIN).
    Reset,
}

/// The steps for the `n`th request (from 0) on stream `stream`.
pub type Script = Arc<dyn Fn(u32, usize) -> Vec<Step> + Send + Sync>;

pub struct RawBackend {
    pub port: u16,
    pub requests: Arc<AtomicUsize>,
    /// RST_STREAM frames received from the client.
    pub resets: Arc<AtomicUsize>,
    pub accepted: Arc<AtomicUsize>,
    pub open: Arc<AtomicUsize>,
    _task: AbortOnDrop,
}

impl RawBackend {
    pub async fn start(script: Script) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let resets = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let counters = (
            Arc::clone(&requests),
            Arc::clone(&accepted),
            Arc::clone(&open),
            Arc::clone(&resets),
        );
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counters.1.fetch_add(1, Ordering::SeqCst);
                counters.2.fetch_add(1, Ordering::SeqCst);
                let (requests, open, resets, script) = (
                    Arc::clone(&counters.0),
                    Arc::clone(&counters.2),
                    Arc::clone(&counters.3),
                    Arc::clone(&script),
                );
                tokio::spawn(async move {
                    let _ = serve(stream, &requests, &resets, &script).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        RawBackend {
            port,
            requests,
            resets,
            accepted,
            open,
            _task: AbortOnDrop(task),
        }
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// One connection: preface, then frames; a request is answered once its DATA ends it.
async fn serve(
    mut stream: TcpStream,
    requests: &AtomicUsize,
    resets: &AtomicUsize,
    script: &Script,
) -> std::io::Result<()> {
    let mut preface = [0u8; 24];
    stream.read_exact(&mut preface).await?;
    stream.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
    loop {
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).await?;
        let length = (header[0] as usize) << 16 | (header[1] as usize) << 8 | header[2] as usize;
        let (kind, flags) = (header[3], header[4]);
        let id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; length];
        stream.read_exact(&mut payload).await?;
        if kind == RST_STREAM {
            resets.fetch_add(1, Ordering::SeqCst);
        }
        if kind == SETTINGS && flags & 0x1 == 0 {
            stream.write_all(&frame(SETTINGS, 0x1, 0, &[])).await?;
        }
        // Every HTTP/2 endpoint answers PING (RFC 9113 §6.7); the agent's first PING
        // tells it the backend's SETTINGS were applied.
        if kind == PING && flags & 0x1 == 0 {
            stream.write_all(&frame(PING, 0x1, 0, &payload)).await?;
        }
        if kind == DATA && flags & END_STREAM != 0 {
            let n = requests.fetch_add(1, Ordering::SeqCst);
            for step in script(id, n) {
                match step {
                    Step::Send(bytes) => stream.write_all(&bytes).await?,
                    Step::Close => return Ok(()),
                    Step::Reset => {
                        // SO_LINGER 0: closing sends RST (non-blocking with a zero linger).
                        socket2::SockRef::from(&stream)
                            .set_linger(Some(std::time::Duration::ZERO))?;
                        return Ok(());
                    }
                }
            }
        }
    }
}

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK block of literal fields without indexing (new names, no Huffman).
pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        string(&mut out, name.as_bytes());
        string(&mut out, value.as_bytes());
    }
    out
}

fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    // Lengths up to 126 fit the 7-bit prefix; longer ones continue.
    if bytes.len() < 127 {
        out.push(bytes.len() as u8);
    } else {
        out.push(127);
        let mut rest = bytes.len() - 127;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
    }
    out.extend_from_slice(bytes);
}

pub fn headers(stream: u32, fields: &[(&str, &str)], end_stream: bool) -> Vec<u8> {
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, &block(fields))
}

pub fn data(stream: u32, bytes: &[u8], end_stream: bool) -> Vec<u8> {
    frame(DATA, if end_stream { END_STREAM } else { 0 }, stream, bytes)
}

/// A length-prefixed HealthCheckResponse with this status value.
pub fn message(status: i32) -> Vec<u8> {
    let encoded = haproxy_grpc_agent::probe::pb::HealthCheckResponse { status }.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    out.extend_from_slice(&encoded);
    out
}

pub fn goaway(last_stream: u32, code: u32, debug: &[u8]) -> Vec<u8> {
    let mut payload = last_stream.to_be_bytes().to_vec();
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(debug);
    frame(GOAWAY, 0, 0, &payload)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub const GRPC_HEADERS: &[(&str, &str)] =
    &[(":status", "200"), ("content-type", "application/grpc")];

/// A well-formed answer with this serving status: headers, message, trailers.
pub fn answer(stream: u32, status: i32) -> Vec<u8> {
    [
        headers(stream, GRPC_HEADERS, false),
        data(stream, &message(status), false),
        headers(stream, &[("grpc-status", "0")], true),
    ]
    .concat()
}
