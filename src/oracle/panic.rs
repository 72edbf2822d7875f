//! Fail-open when the fault looks like the agent's own. When more than `threshold` percent
//! of a group's targets cannot be reached at once (the name does not resolve, the
//! connection is not made, nothing comes back in time:
//! [`Outcome::is_unreached`](crate::probe::Outcome::is_unreached)), the
//! likelier cause is the agent's own network, not every backend at once; the group then
//! *panics*: its failing targets are answered with the verdict they had before their
//! failures began (`up #panic: ...`), as Envoy's `healthy_panic_threshold` and load
//! balancers that fail open do. A backend's own word (NOT_SERVING, a gRPC status) never
//! counts here: it is always honoured.
//!
//! Groups: the request line's `group=NAME`, else the targets sharing an authority and a
//! service; and the whole agent, over endpoints, when most of its endpoints fail at once
//! (an endpoint fails when all its targets do). Groups smaller than `min_group` never
//! panic, nor does the agent with fewer than [`AGENT_MIN_ENDPOINTS`] endpoints: in a small
//! farm a majority down is as likely to be the backends' own as the agent's.
//!
//! Counts change only when a target starts or stops failing, joins or leaves, under one
//! lock; a reply reads them without one. A panic's start and end are logged, counted and
//! fed to `/events` once each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use super::config::PanicConfig;
use crate::events::{Events, PanicChange};
use crate::metrics::{Metrics, PanicScope};
use crate::protocol::Target;

/// The fewest endpoints (and at least `min_group`) with which the agent as a whole can
/// panic: below this, most endpoints failing at once is no clear sign of the agent's own
/// trouble (two of three backends may well be down), and `group=` says what fails together.
pub const AGENT_MIN_ENDPOINTS: usize = 10;

/// Every group's counts, and the agent's.
pub(super) struct Panics {
    config: ArcSwap<PanicConfig>,
    book: Mutex<Book>,
    /// The whole agent, counted in endpoints.
    agent: Group,
    metrics: Metrics,
    events: Events,
}

/// The live groups and endpoints, by name (a group's name is its key: `group=` names
/// hold no `/`, and `authority/service` names always do).
#[derive(Default)]
struct Book {
    groups: HashMap<String, Weak<Group>>,
    endpoints: HashMap<String, Weak<Group>>,
}

/// Members and failing members of one group (for the agent: endpoints). Written under the
/// book's lock, read without it.
struct Group {
    /// Its key in the book, and how logs, reasons and `/events` name it.
    name: String,
    members: AtomicUsize,
    failing: AtomicUsize,
    panicking: AtomicBool,
}

impl Group {
    fn new(name: String) -> Group {
        Group {
            name,
            members: AtomicUsize::new(0),
            failing: AtomicUsize::new(0),
            panicking: AtomicBool::new(false),
        }
    }

    fn counts(&self) -> (usize, usize) {
        (
            self.failing.load(Ordering::Relaxed),
            self.members.load(Ordering::Relaxed),
        )
    }

    /// An endpoint fails when every target on it does.
    fn all_failing(&self) -> bool {
        let (failing, members) = self.counts();
        members > 0 && failing == members
    }
}

/// A target's place in its group, its endpoint and the agent: counted while it lives, and
/// taken out when it is dropped (with its entry).
pub(super) struct Membership {
    panics: Arc<Panics>,
    group: Arc<Group>,
    endpoint: Arc<Group>,
    failing: AtomicBool,
}

impl Panics {
    pub(super) fn new(config: PanicConfig, metrics: Metrics, events: Events) -> Panics {
        Panics {
            config: ArcSwap::from_pointee(config),
            book: Mutex::new(Book::default()),
            agent: Group::new("agent".to_string()),
            metrics,
            events,
        }
    }

    /// Counts `target` in its group, its endpoint and the agent.
    pub(super) fn join(self: &Arc<Self>, target: &Target) -> Membership {
        let group_name = match &target.group {
            Some(name) => name.clone(),
            None => format!("{}/{}", target.authority, target.service),
        };
        // What shares connections: host, port, tls, authority.
        let endpoint_name = format!(
            "{} {} {} {}",
            target.host, target.port, target.tls, target.authority
        );
        let mut book = self.lock();
        let group = find_or_add(&mut book.groups, group_name);
        let endpoint = find_or_add(&mut book.endpoints, endpoint_name);
        group.members.fetch_add(1, Ordering::Relaxed);
        self.change_endpoint(&endpoint, |endpoint| {
            endpoint.members.fetch_add(1, Ordering::Relaxed);
        });
        self.evaluate(&group, PanicScope::Group);
        drop(book);
        Membership {
            panics: Arc::clone(self),
            group,
            endpoint,
            failing: AtomicBool::new(false),
        }
    }

    /// Applies new settings, and re-evaluates every group under them.
    pub(super) fn reconfigure(&self, config: PanicConfig) {
        self.config.store(Arc::new(config));
        let book = self.lock();
        for group in book.groups.values().filter_map(Weak::upgrade) {
            self.evaluate(&group, PanicScope::Group);
        }
        self.evaluate(&self.agent, PanicScope::Agent);
    }

    fn lock(&self) -> MutexGuard<'_, Book> {
        // The book's counts are plain numbers: a panic elsewhere leaves them usable.
        self.book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `change` to an endpoint's counts and keeps the agent's endpoint counts in
    /// step with it. Called under the book's lock.
    fn change_endpoint(&self, endpoint: &Group, change: impl FnOnce(&Group)) {
        let (existed, failed) = (
            endpoint.members.load(Ordering::Relaxed) > 0,
            endpoint.all_failing(),
        );
        change(endpoint);
        let (exists, fails) = (
            endpoint.members.load(Ordering::Relaxed) > 0,
            endpoint.all_failing(),
        );
        step(&self.agent.members, existed, exists);
        step(&self.agent.failing, failed, fails);
        self.evaluate(&self.agent, PanicScope::Agent);
    }

    /// Starts or ends `group`'s panic if its counts now say so; announces a change once.
    /// Called under the book's lock.
    fn evaluate(&self, group: &Group, scope: PanicScope) {
        let config = self.config.load();
        let (failing, members) = group.counts();
        let min = match scope {
            PanicScope::Group => config.min_group.max(2),
            PanicScope::Agent => config.min_group.max(AGENT_MIN_ENDPOINTS),
        };
        let panicking = config.threshold > 0
            && members >= min
            && failing * 100 > usize::from(config.threshold) * members;
        if group.panicking.swap(panicking, Ordering::Relaxed) == panicking {
            return;
        }
        let what = match scope {
            PanicScope::Group => "targets",
            PanicScope::Agent => "endpoints",
        };
        if panicking {
            tracing::warn!(
                scope = scope.as_str(),
                group = %group.name,
                failing,
                members,
                "panic: most {what} cannot be reached at once, which looks like the agent's own network; holding their last verdicts"
            );
            self.metrics.panic_started(scope);
            self.metrics.probes.panics_active.inc();
        } else {
            tracing::info!(scope = scope.as_str(), group = %group.name, failing, members, "panic over; answering live verdicts");
            self.metrics.probes.panics_active.dec();
        }
        self.events.publish_panic(PanicChange {
            scope: scope.as_str(),
            group: group.name.clone(),
            panicking,
            failing,
            members,
            at: SystemTime::now(),
        });
    }
}

impl Membership {
    /// Whether the target's latest observation never reached it. Called by the target's
    /// one writer (its poller) after every published result; takes the lock only on a
    /// change.
    pub(super) fn set_failing(&self, failing: bool) {
        if self.failing.load(Ordering::Relaxed) == failing {
            return;
        }
        let panics = &self.panics;
        let _book = panics.lock();
        self.failing.store(failing, Ordering::Relaxed);
        step(&self.group.failing, !failing, failing);
        panics.evaluate(&self.group, PanicScope::Group);
        panics.change_endpoint(&self.endpoint, |endpoint| {
            step(&endpoint.failing, !failing, failing);
        });
    }

    /// Why the target's verdict is held now, if its group or the agent panics.
    pub(super) fn panic(&self) -> Option<String> {
        let agent = &self.panics.agent;
        if agent.panicking.load(Ordering::Relaxed) {
            let (failing, members) = agent.counts();
            return Some(format!("{failing}/{members} endpoints fail"));
        }
        if self.group.panicking.load(Ordering::Relaxed) {
            let (failing, members) = self.group.counts();
            return Some(format!("{failing}/{members} of {} fail", self.group.name));
        }
        None
    }

    /// The name of the target's group, as `/backends` shows it.
    pub(super) fn group_name(&self) -> &str {
        &self.group.name
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let panics = &self.panics;
        let mut book = panics.lock();
        let failing = self.failing.load(Ordering::Relaxed);
        step(&self.group.failing, failing, false);
        self.group.members.fetch_sub(1, Ordering::Relaxed);
        panics.evaluate(&self.group, PanicScope::Group);
        panics.change_endpoint(&self.endpoint, |endpoint| {
            step(&endpoint.failing, failing, false);
            endpoint.members.fetch_sub(1, Ordering::Relaxed);
        });
        if self.group.members.load(Ordering::Relaxed) == 0 {
            book.groups.remove(&self.group.name);
        }
        if self.endpoint.members.load(Ordering::Relaxed) == 0 {
            book.endpoints.remove(&self.endpoint.name);
        }
    }
}

/// The live group named `name`, or a new one.
fn find_or_add(map: &mut HashMap<String, Weak<Group>>, name: String) -> Arc<Group> {
    if let Some(group) = map.get(&name).and_then(Weak::upgrade) {
        return group;
    }
    let group = Arc::new(Group::new(name.clone()));
    map.insert(name, Arc::downgrade(&group));
    group
}

/// Adds one to `counter` when a condition turns true, takes one when it turns false.
fn step(counter: &AtomicUsize, before: bool, after: bool) {
    match (before, after) {
        (false, true) => {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        (true, false) => {
            counter.fetch_sub(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

#[cfg(test)]
#[path = "panic_tests.rs"]
mod tests;
