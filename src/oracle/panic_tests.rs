use std::sync::Arc;

use super::*;
use crate::events::Event;
use crate::metrics::Metrics;
use crate::protocol::parse_request;

fn panics(threshold: u8, min_group: usize) -> Arc<Panics> {
    let config = PanicConfig {
        threshold,
        min_group,
    };
    Arc::new(Panics::new(
        config,
        Metrics::unregistered().unwrap(),
        Events::new(64),
    ))
}

fn target(line: &str) -> Target {
    parse_request(line.as_bytes()).unwrap()
}

/// `n` targets on distinct hosts sharing authority `api` and the whole-server service.
fn farm(panics: &Arc<Panics>, n: usize) -> Vec<Membership> {
    (1..=n)
        .map(|i| panics.join(&target(&format!("10.0.0.{i} 50051 no-ssl api"))))
        .collect()
}

#[test]
fn a_group_panics_when_more_than_the_threshold_fail_and_recovers() {
    let panics = panics(50, 3);
    let members = farm(&panics, 10);
    for member in &members[..5] {
        member.set_failing(true);
    }
    // Half is not more than half.
    assert_eq!(members[0].panic(), None);
    members[5].set_failing(true);
    // Ten endpoints, six failing: the agent as a whole panics too, and says so first.
    assert_eq!(members[0].panic().as_deref(), Some("6/10 endpoints fail"));
    members[5].set_failing(false);
    assert_eq!(members[0].panic(), None);
}

#[test]
fn one_failing_backend_of_ten_never_panics() {
    let panics = panics(50, 3);
    let members = farm(&panics, 10);
    members[3].set_failing(true);
    assert_eq!(members[3].panic(), None);
}

#[test]
fn a_group_below_the_minimum_never_panics() {
    let panics = panics(50, 3);
    let members = farm(&panics, 2);
    members[0].set_failing(true);
    members[1].set_failing(true);
    assert_eq!(members[0].panic(), None);
    let pair = self::panics(50, 2);
    let alone = pair.join(&target("10.0.0.1 1 no-ssl solo"));
    alone.set_failing(true);
    assert_eq!(alone.panic(), None, "a group of one never panics");
}

#[test]
fn the_group_word_groups_targets_across_authorities() {
    let panics = panics(50, 3);
    // One endpoint per target, but four endpoints of the agent's: the agent alone would
    // need more than two failing; the named group panics with its three of three.
    let named: Vec<Membership> = (1..=3)
        .map(|i| panics.join(&target(&format!("10.0.1.{i} 1 no-ssl host{i} group=eu"))))
        .collect();
    let other = farm(&panics, 3);
    for member in &named {
        member.set_failing(true);
    }
    assert_eq!(named[0].panic().as_deref(), Some("3/3 of eu fail"));
    assert_eq!(named[0].group_name(), "eu");
    assert_eq!(other[0].panic(), None);
    assert_eq!(other[0].group_name(), "api/");
}

#[test]
fn an_endpoint_fails_for_the_agent_only_when_all_its_targets_do() {
    let panics = panics(50, 3);
    // Three endpoints, each with two services in different groups (so no group panics
    // on its own: each service group has one failing target of three), and seven more
    // healthy ones to make the agent's minimum.
    let _healthy = farm(&panics, 7);
    let mut members = Vec::new();
    for i in 11..=13 {
        for service in ["a", "b"] {
            let line = format!("10.0.0.{i} 1 no-ssl host{i} {service}");
            members.push(panics.join(&target(&line)));
        }
    }
    // Endpoint 11 wholly, endpoint 12 half: one endpoint of ten fails.
    members[0].set_failing(true);
    members[1].set_failing(true);
    members[2].set_failing(true);
    assert_eq!(members[0].panic(), None);
    // Endpoints 12 and 13 wholly, and four of the healthy: seven of ten.
    for member in &members[3..] {
        member.set_failing(true);
    }
    for member in &_healthy[..4] {
        member.set_failing(true);
    }
    assert_eq!(members[0].panic().as_deref(), Some("7/10 endpoints fail"));
}

#[test]
fn the_agent_needs_its_minimum_of_endpoints_to_panic() {
    let panics = panics(50, 3);
    // Nine endpoints in nine groups of one, all failing: no group can panic, and nine
    // endpoints are too few for the agent.
    let members: Vec<Membership> = (1..=9)
        .map(|i| panics.join(&target(&format!("10.0.0.{i} 1 no-ssl host{i}"))))
        .collect();
    for member in &members {
        member.set_failing(true);
    }
    assert_eq!(members[0].panic(), None);
    let tenth = panics.join(&target("10.0.0.10 1 no-ssl host10"));
    tenth.set_failing(true);
    assert_eq!(members[0].panic().as_deref(), Some("10/10 endpoints fail"));
}

#[test]
fn leaving_takes_a_target_out_of_every_count() {
    let panics = panics(50, 3);
    let mut members = farm(&panics, 4);
    for member in &members[..3] {
        member.set_failing(true);
    }
    assert!(members[3].panic().is_some());
    // Two failing members leave: one of two failing, under the minimum anyway.
    members.drain(..2);
    assert_eq!(members[1].panic(), None);
    let book = panics.lock();
    assert_eq!(book.groups.len(), 1);
    assert_eq!(book.endpoints.len(), 2);
    drop(book);
    members.clear();
    let book = panics.lock();
    assert!(book.groups.is_empty() && book.endpoints.is_empty());
    assert_eq!(panics.agent.counts(), (0, 0));
}

#[test]
fn threshold_zero_turns_panic_off_and_a_reload_applies_at_once() {
    let panics = panics(0, 3);
    let members = farm(&panics, 4);
    for member in &members {
        member.set_failing(true);
    }
    assert_eq!(members[0].panic(), None);
    panics.reconfigure(PanicConfig {
        threshold: 50,
        min_group: 3,
    });
    assert!(members[0].panic().is_some());
}

#[test]
fn a_panic_is_announced_once_when_it_starts_and_once_when_it_ends() {
    let panics = panics(50, 3);
    let mut feed = panics.events.subscribe();
    let members = farm(&panics, 3);
    for member in &members {
        member.set_failing(true);
    }
    members[2].set_failing(false);
    members[1].set_failing(false);
    members[1].set_failing(false);
    let mut seen = Vec::new();
    while let Ok(event) = feed.try_recv() {
        if let Event::Panic(change) = event.as_ref() {
            seen.push((
                change.scope,
                change.panicking,
                change.failing,
                change.members,
            ));
        }
    }
    // The group starts at two of three failing and ends at one; three endpoints are too
    // few for the agent as a whole.
    assert_eq!(seen, vec![("group", true, 2, 3), ("group", false, 1, 3)]);
    assert_eq!(panics.metrics.probes.panics_active.get(), 0);
}
