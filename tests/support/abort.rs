//! A spawned task that dies with its owner: the one helper the fake peers (proxy.rs,
//! netns.rs) share, in a file of its own so that benchmarks can include them by `#[path]`.

/// Aborts a spawned task when dropped.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
