//! A TCP proxy in front of a test backend, on 127.0.0.1:0: it can hold back the
//! backend's first word on every new connection (a far or busy backend: slow to say
//! anything, fast after) and reset every connection it carries (an RST, as a crashed
//! peer or a middlebox sends).

#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::AbortOnDrop;

/// A running proxy; stops accepting when dropped (its connections end with their peers).
pub struct Proxy {
    pub port: u16,
    connections: Arc<AtomicUsize>,
    /// Bumped to reset every connection open now.
    resets: watch::Sender<u64>,
    _accepting: AbortOnDrop,
}

impl Proxy {
    /// Proxies to 127.0.0.1:`upstream`, holding the backend's first bytes on each new
    /// connection back for `first_word_delay`.
    pub async fn start(upstream: u16, first_word_delay: Duration) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let (resets, _) = watch::channel(0u64);
        let counted = Arc::clone(&connections);
        let reset_feed = resets.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let reset = reset_feed.subscribe();
                tokio::spawn(carry(client, upstream, first_word_delay, reset));
            }
        });
        Proxy {
            port,
            connections,
            resets,
            _accepting: AbortOnDrop(accepting),
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Resets (RST, not FIN) both sides of every connection open now.
    pub fn reset_all(&self) {
        self.resets.send_modify(|n| *n += 1);
    }
}

async fn carry(
    client: TcpStream,
    upstream: u16,
    first_word_delay: Duration,
    mut reset: watch::Receiver<u64>,
) {
    reset.borrow_and_update();
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = client_read.read(&mut buffer).await?;
            if n == 0 {
                return server_write.shutdown().await;
            }
            server_write.write_all(&buffer[..n]).await?;
        }
    };
    let down = async {
        let mut buffer = vec![0u8; 16 * 1024];
        let mut first = true;
        loop {
            let n = server_read.read(&mut buffer).await?;
            if first {
                tokio::time::sleep(first_word_delay).await;
                first = false;
            }
            if n == 0 {
                return client_write.shutdown().await;
            }
            client_write.write_all(&buffer[..n]).await?;
        }
    };
    let carried = async { tokio::try_join!(up, down) };
    let reset_now = tokio::select! {
        _ = carried => false,
        _ = reset.changed() => true,
    };
    if reset_now {
        // Both halves back together, lingering 0: dropping them sends RST.
        let client = client_read.reunite(client_write);
        let server = server_read.reunite(server_write);
        if let (Ok(client), Ok(server)) = (client, server) {
            // Deprecated because a non-zero linger blocks the thread on drop; a zero one
            // closes at once, with RST, which is the point.
            #[allow(deprecated)]
            let _ = client.set_linger(Some(Duration::ZERO));
            #[allow(deprecated)]
            let _ = server.set_linger(Some(Duration::ZERO));
        }
    }
}
