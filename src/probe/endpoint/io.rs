//! The transport under a connection: any byte stream (TCP, or TLS over it), and a wrapper
//! that remembers the first bytes a backend sent, to explain one that never spoke HTTP/2.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The transport h2 runs over: plain TCP or TLS, boxed so both make one connection type.
pub(super) type Io = Box<dyn AsyncIo>;

pub(super) trait AsyncIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> AsyncIo for T {}

/// The first bytes a backend sent, kept to explain a connection that never spoke HTTP/2.
#[derive(Clone, Debug, Default)]
pub struct FirstBytes {
    pub bytes: Vec<u8>,
}

/// How many first bytes are kept: enough to tell HTTP/1 or TLS from HTTP/2.
const SNIFFED: usize = 16;

/// A transport that remembers the first bytes read from it.
pub(super) struct Sniffed<T> {
    inner: T,
    first: Option<Arc<Mutex<FirstBytes>>>,
}

impl<T> Sniffed<T> {
    pub(super) fn new(inner: T, first: Arc<Mutex<FirstBytes>>) -> Sniffed<T> {
        Sniffed {
            inner,
            first: Some(first),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Sniffed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(first) = &self.first {
            let read = &buf.filled()[before..];
            if !read.is_empty() {
                let mut first = first.lock().expect("first bytes lock poisoned");
                let room = SNIFFED.saturating_sub(first.bytes.len());
                first.bytes.extend_from_slice(&read[..read.len().min(room)]);
                if first.bytes.len() >= SNIFFED {
                    drop(first);
                    self.first = None;
                }
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Sniffed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
