//! Bounded line framing over one agent connection: read a line of at most `max_line`
//! bytes, write one reply. Memory per connection is fixed, whatever the client sends.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::Reply;

/// What reading the next request line produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line, terminator removed (a final unterminated line at end of stream
    /// counts too).
    Line(&'a [u8]),
    /// The line is longer than the bound; the connection should be closed.
    TooLong,
    /// The client closed its side with nothing pending.
    End,
}

/// One client connection with a fixed-size read buffer.
pub struct Connection<S> {
    stream: S,
    max_line: usize,
    /// Holds at most one line, its `\r\n`, and nothing more.
    buf: Box<[u8]>,
    /// Bytes of `buf` holding data.
    filled: usize,
    /// Bytes at the front of `buf` that belong to the line last returned.
    consumed: usize,
    reply: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S, max_line: usize) -> Connection<S> {
        Connection {
            stream,
            max_line,
            buf: vec![0; max_line + 2].into_boxed_slice(),
            filled: 0,
            consumed: 0,
            reply: Vec::with_capacity(128),
        }
    }

    /// True when part of a line has arrived but not its end.
    pub fn has_partial_line(&self) -> bool {
        self.filled > self.consumed
    }

    /// Reads until a full line is buffered. Pipelined lines that arrived with it stay
    /// buffered for the next call.
    pub async fn read_line(&mut self) -> std::io::Result<Frame<'_>> {
        if self.consumed > 0 {
            self.buf.copy_within(self.consumed..self.filled, 0);
            self.filled -= self.consumed;
            self.consumed = 0;
        }
        let mut scanned = 0;
        loop {
            if let Some(pos) = memchr(b'\n', &self.buf[scanned..self.filled]) {
                let end = scanned + pos;
                self.consumed = end + 1;
                return Ok(self.frame(end));
            }
            scanned = self.filled;
            if self.filled == self.buf.len() {
                return Ok(Frame::TooLong);
            }
            let read = self.stream.read(&mut self.buf[self.filled..]).await?;
            if read == 0 {
                if self.filled == 0 {
                    return Ok(Frame::End);
                }
                self.consumed = self.filled;
                return Ok(self.frame(self.filled));
            }
            self.filled += read;
        }
    }

    /// The line in `buf[..end]`, unless it is longer than `max_line` (a `\r` before the
    /// newline does not count).
    fn frame(&self, end: usize) -> Frame<'_> {
        let line = &self.buf[..end];
        let content = line.strip_suffix(b"\r").unwrap_or(line);
        if content.len() > self.max_line {
            Frame::TooLong
        } else {
            Frame::Line(line)
        }
    }

    /// Writes one reply line.
    pub async fn write_reply(&mut self, reply: &Reply) -> std::io::Result<()> {
        self.reply.clear();
        reply.encode(&mut self.reply);
        self.stream.write_all(&self.reply).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Closes after a final reply without losing it. Closing a socket with unread input
    /// makes the kernel send a reset, which can destroy the reply before the client reads
    /// it; so send FIN first and discard what still arrives, up to `DISCARD_LIMIT` bytes
    /// or `within`, whichever comes first.
    pub async fn close_after_reply(mut self, within: std::time::Duration) {
        const DISCARD_LIMIT: usize = 1 << 20;
        if self.stream.shutdown().await.is_err() {
            return;
        }
        let discard = async {
            let mut discarded = 0;
            while discarded < DISCARD_LIMIT {
                match self.stream.read(&mut self.buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(read) => discarded += read,
                }
            }
        };
        let _ = tokio::time::timeout(within, discard).await;
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(input: &[u8], max_line: usize) -> Vec<String> {
        let (mut client, server) = tokio::io::duplex(4096);
        client.write_all(input).await.unwrap();
        drop(client);
        let mut connection = Connection::new(server, max_line);
        let mut out = Vec::new();
        loop {
            match connection.read_line().await.unwrap() {
                Frame::Line(line) => out.push(String::from_utf8_lossy(line).into_owned()),
                Frame::TooLong => {
                    out.push("<too long>".to_string());
                    break;
                }
                Frame::End => break,
            }
        }
        out
    }

    #[tokio::test]
    async fn splits_pipelined_lines_and_keeps_an_unterminated_tail() {
        let got = frames(b"a 1\nb 2\r\n\nc 3", 16).await;
        assert_eq!(got, ["a 1", "b 2\r", "", "c 3"]);
    }

    #[tokio::test]
    async fn a_line_of_exactly_max_line_bytes_fits_even_with_crlf() {
        let got = frames(b"0123456789\r\n0123456789\n", 10).await;
        assert_eq!(got, ["0123456789\r", "0123456789"]);
    }

    #[tokio::test]
    async fn a_longer_line_is_too_long() {
        let got = frames(b"ok\n0123456789AB\n", 10).await;
        assert_eq!(got, ["ok", "<too long>"]);
        let got = frames(b"0123456789A\n", 10).await;
        assert_eq!(got, ["<too long>"]);
        let got = frames(b"0123456789A", 10).await;
        assert_eq!(got, ["<too long>"]);
    }
}
