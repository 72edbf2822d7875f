//! The feed of state changes (targets', weights', panics') behind the admin `GET /events`: a broadcast channel with a
//! bounded buffer. Publishing never waits; a subscriber that falls behind loses the oldest
//! events and learns how many (and `events_dropped_total` counts them).

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::protocol::Target;

/// One target changing state.
#[derive(Clone, Debug)]
pub struct Transition {
    pub target: Target,
    pub from: State,
    pub to: State,
    pub reason: String,
    pub at: SystemTime,
}

/// A target's state on either side of a transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Before its first result.
    New,
    Up,
    Down,
}

impl State {
    pub fn of(up: bool) -> State {
        if up { State::Up } else { State::Down }
    }

    /// The name logs and `/events` show.
    pub fn as_str(self) -> &'static str {
        match self {
            State::New => "new",
            State::Up => "up",
            State::Down => "down",
        }
    }
}

/// A backend endpoint's weight moving far enough to tell: by at least
/// [`WEIGHT_EVENT_STEP`] points since the last event, or back to 100 %.
#[derive(Clone, Debug)]
pub struct WeightChange {
    /// `host:port` of the endpoint (its targets share the weight).
    pub endpoint: String,
    pub from: u16,
    pub to: u16,
    /// The utilization the new weight rests on (`cpu 0.82`).
    pub reason: String,
    pub at: SystemTime,
}

/// How far, in percentage points, a weight moves before the feed hears of it.
pub const WEIGHT_EVENT_STEP: u16 = 10;

/// A group, or the whole agent, starting or ending a panic: holding its failing targets'
/// last verdicts because most of them cannot be reached at once.
#[derive(Clone, Debug)]
pub struct PanicChange {
    /// `group` or `agent`.
    pub scope: &'static str,
    /// The group's name (`group=` or `authority/service`), or `agent`.
    pub group: String,
    /// Started (true) or ended.
    pub panicking: bool,
    /// Failing members (targets; endpoints for the agent) and all members then.
    pub failing: usize,
    pub members: usize,
    pub at: SystemTime,
}

/// One event of the feed.
#[derive(Clone, Debug)]
pub enum Event {
    Transition(Transition),
    Weight(WeightChange),
    Panic(PanicChange),
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Events {
    sender: broadcast::Sender<Arc<Event>>,
}

impl Events {
    /// A feed whose subscribers each hold at most `buffer` unread events.
    pub fn new(buffer: usize) -> Events {
        let (sender, _) = broadcast::channel(buffer.max(1));
        Events { sender }
    }

    /// Publishes to current subscribers, if any; never blocks.
    pub fn publish(&self, transition: Transition) {
        let _ = self.sender.send(Arc::new(Event::Transition(transition)));
    }

    /// Publishes a weight change to current subscribers, if any; never blocks.
    pub fn publish_weight(&self, change: WeightChange) {
        let _ = self.sender.send(Arc::new(Event::Weight(change)));
    }

    /// Publishes a panic's start or end to current subscribers, if any; never blocks.
    pub fn publish_panic(&self, change: PanicChange) {
        let _ = self.sender.send(Arc::new(Event::Panic(change)));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transition(n: u16) -> Transition {
        Transition {
            target: crate::protocol::parse_request(format!("127.0.0.1 {n} no-ssl x").as_bytes())
                .unwrap(),
            from: State::Up,
            to: State::Down,
            reason: String::new(),
            at: SystemTime::now(),
        }
    }

    #[test]
    fn a_slow_subscriber_loses_the_oldest_and_learns_how_many() {
        let events = Events::new(2);
        let mut subscriber = events.subscribe();
        for port in 1..=10 {
            events.publish(transition(port));
        }
        match subscriber.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(missed)) => assert_eq!(missed, 8),
            other => panic!("expected a lag, got {other:?}"),
        }
        let port = |event: Arc<Event>| match event.as_ref() {
            Event::Transition(transition) => transition.target.port,
            Event::Weight(_) | Event::Panic(_) => panic!("only transitions were published"),
        };
        assert_eq!(port(subscriber.try_recv().unwrap()), 9);
        assert_eq!(port(subscriber.try_recv().unwrap()), 10);
        // Publishing without subscribers is fine.
        drop(subscriber);
        events.publish(transition(11));
    }
}
