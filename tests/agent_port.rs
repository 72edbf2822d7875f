//! The agent port's bounds and framing, over real sockets: pipelining, long lines, bad
//! lines, slow and idle clients, the connection limit.

mod support;

use std::time::Duration;

use support::backend::HealthBackend;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::test]
async fn pipelined_lines_are_answered_in_order() {
    let backend = HealthBackend::start().await;
    backend.set("b", support::backend::Wire::NotServing);
    let agent = start_agent(&[]).await;
    let mut stream = TcpStream::connect(agent.addr).await.unwrap();
    let lines = format!(
        "{}\r\nnot a request\n{}\n",
        line_for(backend.port(), ""),
        line_for(backend.port(), "b")
    );
    stream.write_all(lines.as_bytes()).await.unwrap();
    assert!(read_reply(&mut stream).await.starts_with("up #SERVING"));
    assert!(
        read_reply(&mut stream)
            .await
            .starts_with("down #bad request: expected 4 or 5 words")
    );
    assert_eq!(read_reply(&mut stream).await, "down #NOT_SERVING\n");
    stream.shutdown().await.unwrap();
    assert_eq!(
        read_reply(&mut stream).await,
        "",
        "the agent closes after the client does"
    );
}

#[tokio::test]
async fn too_long_line_is_refused_and_closed() {
    let agent = start_agent(&["--max-line", "64"]).await;
    let mut stream = TcpStream::connect(agent.addr).await.unwrap();
    // No newline at all: the agent must not wait for one, nor buffer what follows.
    stream.write_all(&[b'a'; 10_000]).await.unwrap();
    assert_eq!(
        read_reply(&mut stream).await,
        "down #request line too long\n"
    );
    assert_eq!(read_reply(&mut stream).await, "", "closed after the reply");
}

#[tokio::test]
async fn malformed_lines_get_bad_request_and_the_connection_stays_usable() {
    let agent = start_agent(&[]).await;
    let mut stream = TcpStream::connect(agent.addr).await.unwrap();
    let cases: [(&[u8], &str); 4] = [
        (
            b"10.0.0.7 99999 no-ssl api\n",
            "down #bad request: port 99999 out of range (1-65535)\n",
        ),
        (b"h\xff\xfe 1 ssl a\n", "down #bad request: not UTF-8\n"),
        (b"\n", "down #bad request: empty line\n"),
        (
            b"h 1 https a\n",
            "down #bad request: tls word \"https\" must be ssl or no-ssl\n",
        ),
    ];
    for (line, expected) in cases {
        stream.write_all(line).await.unwrap();
        assert_eq!(read_reply(&mut stream).await, expected, "{line:?}");
    }
}

#[tokio::test]
async fn idle_client_is_closed_at_the_read_deadline() {
    let agent = start_agent(&["--read-deadline", "200ms"]).await;
    let mut stream = TcpStream::connect(agent.addr).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        read_reply(&mut stream).await,
        "",
        "an idle client is closed without a reply"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200),
        "closed early, after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(5),
        "not closed in time: {waited:?}"
    );
}

#[tokio::test]
async fn half_line_is_answered_at_the_read_deadline() {
    let agent = start_agent(&["--read-deadline", "200ms"]).await;
    let mut stream = TcpStream::connect(agent.addr).await.unwrap();
    stream.write_all(b"127.0.0.1 50051 no-s").await.unwrap();
    assert_eq!(
        read_reply(&mut stream).await,
        "down #bad request: no end of line within 200ms\n"
    );
    assert_eq!(read_reply(&mut stream).await, "");
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_at_once() {
    let agent = start_agent(&["--max-connections", "2", "--read-deadline", "30s"]).await;
    let _held_one = TcpStream::connect(agent.addr).await.unwrap();
    let _held_two = TcpStream::connect(agent.addr).await.unwrap();
    let mut third = TcpStream::connect(agent.addr).await.unwrap();
    // Closed without a reply, so HAProxy keeps the state it had.
    assert_eq!(read_reply(&mut third).await, "");
    drop(_held_one);
    let backend = HealthBackend::start().await;
    let line = line_for(backend.port(), "");
    // A slot frees once the agent notices the close.
    eventually(
        Duration::from_secs(5),
        "a freed slot serves again",
        || async {
            let mut stream = TcpStream::connect(agent.addr).await.unwrap();
            stream
                .write_all(format!("{line}\n").as_bytes())
                .await
                .unwrap();
            read_reply(&mut stream).await.starts_with("up")
        },
    )
    .await;
}

#[tokio::test]
async fn shutdown_finishes_a_reply_in_flight() {
    // A backend that accepts and never answers keeps the first probe pending.
    let (port, _silent) = silent_backend().await;
    let agent = start_agent(&["--miss-timeout", "500ms"]).await;
    let mut stream = TcpStream::connect(agent.addr).await.unwrap();
    stream
        .write_all(format!("{}\n", line_for(port, "")).as_bytes())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(5),
        "the target is registered",
        || async { agent.oracle.len() == 1 },
    )
    .await;
    agent.shutdown.trigger();
    assert_eq!(read_reply(&mut stream).await, "down #first probe pending\n");
    assert_eq!(
        read_reply(&mut stream).await,
        "",
        "closed after the in-flight reply"
    );
    eventually(Duration::from_secs(5), "the agent stops", || async {
        agent.serving.is_finished()
    })
    .await;
}
