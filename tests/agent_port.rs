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
    // The strict fault reply, so the reply in flight is a line to wait for.
    let agent = start_agent(&["--miss-timeout", "500ms", "--agent-fault-reply", "down"]).await;
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

/// What a corpus case must get: a reply starting with this, or a close without a reply.
enum Expect {
    Reply(&'static str),
    Close,
}

/// Every kind of bad input, each on its own connection to the real binary: each gets a
/// `down #...` reply or a clean close, a good request on another connection is answered
/// after each one, and the agent's memory does not grow with what it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_of_bad_input_is_answered_and_costs_no_memory() {
    use support::daemon::Daemon;
    use tokio::io::AsyncReadExt;

    let backend = HealthBackend::start().await;
    let closed = closed_port();
    let daemon = Daemon::start(&["--read-deadline", "1s"], &[]);
    let agent = daemon.addr();
    let good = line_for(backend.port(), "");
    assert!(ask(agent, &good).await.starts_with("up #SERVING"));
    let rss_start = daemon.rss_kib();
    let fds_start = daemon.open_fds();

    let huge_host = "h".repeat(300);
    let cases: Vec<(Vec<u8>, Expect)> = vec![
        (
            b"\n".to_vec(),
            Expect::Reply("down #bad request: empty line"),
        ),
        (
            b"      \n".to_vec(),
            Expect::Reply("down #bad request: empty line"),
        ),
        (
            b"a b c\n".to_vec(),
            Expect::Reply("down #bad request: expected 4 or 5 words"),
        ),
        (
            b"a 1 ssl b c d\n".to_vec(),
            Expect::Reply("down #bad request: expected 4 or 5 words"),
        ),
        (
            b"h 0 ssl a\n".to_vec(),
            Expect::Reply("down #bad request: port 0 out of range"),
        ),
        (
            b"h 65536 ssl a\n".to_vec(),
            Expect::Reply("down #bad request: port 65536 out of range"),
        ),
        (
            b"h -1 ssl a\n".to_vec(),
            Expect::Reply("down #bad request: port \"-1\" is not a number"),
        ),
        (
            b"h 1e3 ssl a\n".to_vec(),
            Expect::Reply("down #bad request: port \"1e3\" is not a number"),
        ),
        (
            b"h 0x50 ssl a\n".to_vec(),
            Expect::Reply("down #bad request: port \"0x50\" is not a number"),
        ),
        (
            b"h 1 tls a\n".to_vec(),
            Expect::Reply("down #bad request: tls word \"tls\""),
        ),
        (
            format!("{huge_host} 1 ssl a\n").into_bytes(),
            Expect::Reply("down #bad request: invalid host \"hhhhhhhhhhhhhhhhhhhhhhhh...\""),
        ),
        (
            b"[::1 1 ssl a\n".to_vec(),
            Expect::Reply("down #bad request: invalid host"),
        ),
        (
            b"[fe80::1%eth0] 1 ssl a\n".to_vec(),
            Expect::Reply("down #bad request: invalid host"),
        ),
        (
            b":::1 1 ssl a\n".to_vec(),
            Expect::Reply("down #bad request: invalid host"),
        ),
        (
            format!("[::1] {closed} no-ssl localhost\r\n").into_bytes(),
            Expect::Reply("down #connection refused"),
        ),
        (
            format!("::1 {closed} no-ssl [::1]:{closed}\n").into_bytes(),
            Expect::Reply("down #connection refused"),
        ),
        (
            b"h\x001 1 ssl a\n".to_vec(),
            Expect::Reply("down #bad request: control character"),
        ),
        (
            b"h 1 ssl a\x00\n".to_vec(),
            Expect::Reply("down #bad request: control character"),
        ),
        (
            b"\xc3\x28 1 ssl a\n".to_vec(),
            Expect::Reply("down #bad request: not UTF-8"),
        ),
        (
            b"h 1 ssl a\r\r\n".to_vec(),
            Expect::Reply("down #bad request: control character"),
        ),
        (
            vec![b'x'; 1 << 20],
            Expect::Reply("down #request line too long"),
        ),
        // Cut off mid-line: answered at the read deadline.
        (
            b"127.0.0.1 50051 no-s".to_vec(),
            Expect::Reply("down #bad request: no end of line"),
        ),
        // A client that connects and says nothing is closed at the read deadline.
        (Vec::new(), Expect::Close),
    ];
    for (input, expected) in &cases {
        let mut stream = TcpStream::connect(agent).await.unwrap();
        stream.write_all(input).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), read_reply(&mut stream))
            .await
            .expect("an answer or a close within the read deadline");
        match expected {
            Expect::Reply(prefix) => assert!(
                reply.starts_with(prefix) && reply.ends_with('\n'),
                "{:?}: {reply:?}",
                String::from_utf8_lossy(&input[..input.len().min(40)])
            ),
            Expect::Close => assert_eq!(reply, "", "closed without a reply"),
        }
        // Others are served all along.
        assert!(ask(agent, &good).await.starts_with("up #SERVING"));
    }

    // Many lines at once: every one answered, in order.
    let mut stream = TcpStream::connect(agent).await.unwrap();
    let batch: String = (0..2000)
        .map(|i| {
            if i % 2 == 0 {
                format!("{good}\n")
            } else {
                "bad\n".to_string()
            }
        })
        .collect();
    let (mut reader, mut writer) = stream.split();
    let (_, replies) = tokio::join!(
        async { writer.write_all(batch.as_bytes()).await.unwrap() },
        async {
            let mut text = String::new();
            while text.matches('\n').count() < 2000 {
                let mut chunk = [0u8; 65536];
                let read = reader.read(&mut chunk).await.unwrap();
                assert!(
                    read > 0,
                    "closed after {} replies",
                    text.matches('\n').count()
                );
                text.push_str(std::str::from_utf8(&chunk[..read]).unwrap());
            }
            text
        }
    );
    for (i, reply) in replies.lines().enumerate() {
        let expected = if i % 2 == 0 {
            "up #SERVING"
        } else {
            "down #bad request"
        };
        assert!(reply.starts_with(expected), "reply {i}: {reply:?}");
    }
    drop(stream);

    // 100 MB without a newline, streamed from a fixed buffer: refused after the line
    // limit, then the connection is closed; the client sees the reply or a reset.
    let mut stream = TcpStream::connect(agent).await.unwrap();
    let chunk = vec![b'y'; 64 * 1024];
    let mut sent = 0usize;
    while sent < 100 << 20 {
        match stream.write_all(&chunk).await {
            Ok(()) => sent += chunk.len(),
            Err(_) => break,
        }
    }
    let reply = read_reply_or_reset(&mut stream).await;
    assert!(
        reply.is_empty() || reply == "down #request line too long\n",
        "{reply:?}"
    );
    assert!(
        sent < 100 << 20,
        "the agent read all 100 MB instead of closing"
    );
    assert!(ask(agent, &good).await.starts_with("up #SERVING"));

    let rss_end = daemon.rss_kib();
    let fds_end = daemon.open_fds();
    println!(
        "agent RSS {rss_start} -> {rss_end} KiB, fds {fds_start} -> {fds_end}, after >{} MiB of junk",
        (sent >> 20) + 1
    );
    assert!(
        rss_end < rss_start + 8 * 1024,
        "RSS grew from {rss_start} to {rss_end} KiB"
    );
    eventually(
        Duration::from_secs(10),
        "every corpus connection is closed",
        || async { daemon.open_fds() <= fds_start },
    )
    .await;
}

/// Like `read_reply`, but a reset (the agent closed with unread input) reads as a close.
async fn read_reply_or_reset(stream: &mut TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while let Ok(1) = stream.read(&mut byte).await {
        reply.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    String::from_utf8_lossy(&reply).into_owned()
}
