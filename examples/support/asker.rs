//! An HAProxy-like asker for benchmarks: every target asked once per period, the asks
//! spread evenly over the period, each on a new connection (connect, one line, read one
//! reply line, reset), and every answer kept with its time, so that a run can count what
//! HAProxy would have been told in any stretch of it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// HAProxy's `timeout check` in the benchmarks' haproxy.cfg: a reply later than this is
/// none.
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// What one ask got, as HAProxy would read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `up` with a live reason.
    Up,
    /// `up #panic: ...`: a verdict held while the agent's own network fails.
    Held,
    Down,
    /// The connection closed (or timed out) with no reply: HAProxy keeps its verdict.
    Silent,
    /// No connection to the agent at all (it is not running): HAProxy keeps its verdict.
    Refused,
    /// `drain`, `maint` or anything else.
    Other,
}

impl Outcome {
    pub fn of(reply: &str) -> Outcome {
        if reply.is_empty() {
            Outcome::Silent
        } else if reply.starts_with("up") && reply.contains("#panic") {
            Outcome::Held
        } else if reply.starts_with("up") {
            Outcome::Up
        } else if reply.starts_with("down") {
            Outcome::Down
        } else {
            Outcome::Other
        }
    }
}

/// One request the way HAProxy makes it; `Refused` when the agent cannot be reached, and
/// the reply line (trimmed, "" for none) otherwise.
pub async fn ask(addr: SocketAddr, line: &str) -> (Outcome, String) {
    let connect = tokio::time::timeout(REPLY_TIMEOUT, TcpStream::connect(addr)).await;
    let Ok(Ok(mut stream)) = connect else {
        return (Outcome::Refused, String::new());
    };
    let _ = stream.set_nodelay(true);
    let exchange = async {
        stream.write_all(line.trim_end().as_bytes()).await?;
        stream.write_all(b"\n").await?;
        let mut reply = Vec::with_capacity(64);
        let mut buffer = [0u8; 128];
        while !reply.ends_with(b"\n") {
            let read = stream.read(&mut buffer).await?;
            if read == 0 {
                break;
            }
            reply.extend_from_slice(&buffer[..read]);
        }
        std::io::Result::Ok(reply)
    };
    let reply = match tokio::time::timeout(REPLY_TIMEOUT, exchange).await {
        Ok(Ok(reply)) if reply.ends_with(b"\n") => {
            String::from_utf8_lossy(&reply).trim_end().to_string()
        }
        // A reset, an end without a newline, or nothing in time: no reply.
        _ => String::new(),
    };
    // HAProxy resets agent connections; so does this, which also spares TIME_WAIT.
    let _ = stream.set_zero_linger();
    (Outcome::of(&reply), reply)
}

/// One ask's outcome: when (from the asker's start), for which target.
#[derive(Clone, Copy, Debug)]
pub struct Answer {
    pub at: Duration,
    pub target: u32,
    pub outcome: Outcome,
}

/// One target's answers, and its `down` replies by reason.
type TargetAnswers = (Vec<Answer>, BTreeMap<String, u64>);

/// Asks running in the background until [`Asker::finish`].
pub struct Asker {
    started: Instant,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<TargetAnswers>>,
    targets: usize,
}

impl Asker {
    /// Asks `lines[i]` of the agent at `addr` every `period`, target `i` first at
    /// `period * i / len`.
    pub fn start(addr: SocketAddr, lines: &Arc<Vec<String>>, period: Duration) -> Asker {
        let started = Instant::now();
        let (stop, stopped) = watch::channel(false);
        let count = lines.len();
        let tasks = (0..count)
            .map(|target| {
                let lines = Arc::clone(lines);
                let mut stopped = stopped.clone();
                let first = started + period.mul_f64(target as f64 / count as f64);
                tokio::spawn(async move {
                    let mut answers = Vec::new();
                    let mut downs = BTreeMap::new();
                    let mut ticks = tokio::time::interval_at(first, period);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = ticks.tick() => {}
                            _ = stopped.changed() => break,
                        }
                        let at = started.elapsed();
                        let (outcome, reply) = ask(addr, &lines[target]).await;
                        if outcome == Outcome::Down {
                            *downs.entry(reason_kind(&reply)).or_insert(0) += 1;
                        }
                        answers.push(Answer {
                            at,
                            target: target as u32,
                            outcome,
                        });
                    }
                    (answers, downs)
                })
            })
            .collect();
        Asker {
            started,
            stop,
            tasks,
            targets: count,
        }
    }

    /// Stops asking and hands back every answer.
    pub async fn finish(self) -> Answers {
        let _ = self.stop.send(true);
        let mut all = Vec::new();
        let mut down_reasons = BTreeMap::new();
        for task in self.tasks {
            let (answers, downs) = task.await.expect("asker task");
            all.extend(answers);
            for (reason, count) in downs {
                *down_reasons.entry(reason).or_insert(0) += count;
            }
        }
        all.sort_by_key(|answer| answer.at);
        Answers {
            started: self.started,
            all,
            down_reasons,
            targets: self.targets,
        }
    }
}

/// A reply without its figures, so that replies of one kind count together
/// (`down #stale: no probe for 9100ms` is `down #stale`, `up #SERVING 0.4ms` is
/// `up #SERVING`).
pub fn reason_kind(reply: &str) -> String {
    reply
        .split([':', '(', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9'])
        .next()
        .unwrap_or(reply)
        .trim()
        .to_string()
}

/// Every answer of a run.
pub struct Answers {
    pub started: Instant,
    pub all: Vec<Answer>,
    /// `down` replies by reason.
    pub down_reasons: BTreeMap<String, u64>,
    pub targets: usize,
}

impl Answers {
    /// The answers to asks made in `from..to`.
    pub fn tally(&self, from: Instant, to: Instant) -> Tally {
        let (from, to) = (self.offset(from), self.offset(to));
        let mut tally = Tally::default();
        for answer in self.all.iter().filter(|a| a.at >= from && a.at < to) {
            tally.add(answer.outcome);
        }
        tally
    }

    /// How long after `since` the last target to answer a live `up` (not held) first did;
    /// `None` if one never did.
    pub fn all_live_after(&self, since: Instant) -> Option<Duration> {
        let since = self.offset(since);
        let mut first = vec![None; self.targets];
        for answer in self.all.iter().filter(|a| a.at >= since) {
            let slot = &mut first[answer.target as usize];
            if slot.is_none() && answer.outcome == Outcome::Up {
                *slot = Some(answer.at - since);
            }
        }
        first
            .into_iter()
            .try_fold(Duration::ZERO, |latest, seen| Some(latest.max(seen?)))
    }

    fn offset(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.started)
    }
}

/// Answers counted by outcome.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    pub asks: u64,
    pub up: u64,
    pub held: u64,
    pub down: u64,
    pub silent: u64,
    pub refused: u64,
    pub other: u64,
}

impl Tally {
    pub fn add(&mut self, outcome: Outcome) {
        self.asks += 1;
        *match outcome {
            Outcome::Up => &mut self.up,
            Outcome::Held => &mut self.held,
            Outcome::Down => &mut self.down,
            Outcome::Silent => &mut self.silent,
            Outcome::Refused => &mut self.refused,
            Outcome::Other => &mut self.other,
        } += 1;
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>7} asks {:>7} up {:>7} held {:>6} down {:>6} silent {:>6} refused",
            self.asks, self.up, self.held, self.down, self.silent, self.refused
        )?;
        if self.other > 0 {
            write!(f, " {:>6} other", self.other)?;
        }
        Ok(())
    }
}
