//! The admin API's thread, runtime and listener: bounded connections, a header read
//! timeout, and everything closed on shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::State;
use super::routes::routes;
use crate::shutdown::Shutdown;

/// How long an admin client has to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The admin API's own thread, with its own runtime, at a lower CPU priority than the
/// agent's (nice +10): on a busy machine the kernel runs agent replies and probes first,
/// and a heavy `/backends` or `/metrics` waits instead. Threads it starts (its blocking
/// pool) inherit the priority.
pub struct AdminThread {
    done: tokio::sync::oneshot::Receiver<()>,
}

impl AdminThread {
    /// Waits until the admin thread has closed its listener and connections.
    pub async fn stopped(self) {
        let _ = self.done.await;
    }
}

/// Starts the admin API on its own thread; it stops on `shutdown`.
pub fn spawn(listener: TcpListener, state: State, shutdown: Shutdown) -> AdminThread {
    let (done_tx, done) = tokio::sync::oneshot::channel();
    // The listener moves to the admin runtime's reactor.
    let listener = listener
        .into_std()
        .expect("a bound listener converts to std");
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            lower_priority();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(2)
                .thread_name("admin-blocking")
                .build()
                .expect("the admin runtime starts");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("listener registers");
                serve(listener, state, shutdown).await;
            });
            let _ = done_tx.send(());
        })
        .expect("the admin thread starts");
    AdminThread { done }
}

/// nice +10 for the calling thread (Linux applies nice per thread).
#[allow(unsafe_code)]
fn lower_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority with PRIO_PROCESS and who = 0 changes only the calling thread's
    // nice value; it reads no memory of ours.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

/// Serves the admin API on `listener` until `shutdown`; open connections (event streams
/// included) are closed then.
pub async fn serve(listener: TcpListener, state: State, shutdown: Shutdown) {
    let routes = routes(state.clone());
    let slots = Arc::new(Semaphore::new(state.config.max_connections));
    let tracker = TaskTracker::new();
    loop {
        // Wait for a free slot before accepting: excess clients queue in the backlog.
        let permit = tokio::select! {
            _ = shutdown.triggered() => break,
            permit = Arc::clone(&slots).acquire_owned() => permit.expect("never closed"),
        };
        let accepted = tokio::select! {
            _ = shutdown.triggered() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::debug!(%error, "admin accept failed");
                // Resource errors (EMFILE) would spin; give the agent the CPU.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(warp::service(routes.clone()));
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let io = hyper_util::rt::TokioIo::new(stream);
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            // A client that connects and says nothing gives its slot back.
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = builder.serve_connection(io, service);
            tokio::select! {
                _ = shutdown.triggered() => {}
                served = connection => {
                    if let Err(error) = served {
                        tracing::debug!(%error, "admin connection ended with an error");
                    }
                }
            }
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}
