//! The feed of state changes behind the admin `GET /events`: a broadcast channel with a
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

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct Events {
    sender: broadcast::Sender<Arc<Transition>>,
}

impl Events {
    /// A feed whose subscribers each hold at most `buffer` unread events.
    pub fn new(buffer: usize) -> Events {
        let (sender, _) = broadcast::channel(buffer.max(1));
        Events { sender }
    }

    /// Publishes to current subscribers, if any; never blocks.
    pub fn publish(&self, transition: Transition) {
        let _ = self.sender.send(Arc::new(transition));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Transition>> {
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
        assert_eq!(subscriber.try_recv().unwrap().target.port, 9);
        assert_eq!(subscriber.try_recv().unwrap().target.port, 10);
        // Publishing without subscribers is fine.
        drop(subscriber);
        events.publish(transition(11));
    }
}
