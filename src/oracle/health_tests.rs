//! Hysteresis, table-tested through one `check` helper: outcomes fed in order, the reply
//! line after each.

use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::probe::{Outcome, ProbeError, ServingStatus};
use crate::protocol::Verdict;

const INTERVAL: Duration = Duration::from_secs(2);

fn policy(not_serving: Verdict, unimplemented: Verdict) -> ReplyPolicy {
    ReplyPolicy {
        not_serving,
        unimplemented,
    }
}

/// Probes with rise 2, fall 3, every failure counted through fall (`explicit_answers =
/// counted`): the counting itself is what most tables here study.
fn probes(replies: ReplyPolicy) -> Rules {
    Rules {
        rise: 2,
        fall: 3,
        held: None,
        replies,
        explicit_at_once: false,
    }
}

/// The defaults: rise 2, fall 3, and the backend's own unhealthy answer at once.
fn at_once() -> Rules {
    Rules {
        explicit_at_once: true,
        ..probes(policy(Verdict::Down, Verdict::Down))
    }
}

fn status(code: crate::probe::Code) -> Outcome {
    Outcome::Failed(ProbeError::Status {
        code,
        message: String::new(),
    })
}

/// A Watch stream's statuses with rise 2, fall 3, counted by the time they hold.
fn held() -> Rules {
    Rules {
        held: Some(INTERVAL),
        ..probes(policy(Verdict::Down, Verdict::Down))
    }
}

fn serving() -> Outcome {
    Outcome::Answered(ServingStatus::Serving)
}

fn not_serving() -> Outcome {
    Outcome::Answered(ServingStatus::NotServing)
}

fn unreached() -> Outcome {
    Outcome::Failed(ProbeError::ConnectTimeout(Duration::from_secs(1)))
}

fn refused() -> Outcome {
    Outcome::Failed(ProbeError::ConnectionRefused)
}

fn observation(outcome: Outcome, at: Instant) -> Observation {
    Observation {
        outcome,
        at,
        latency: Duration::from_micros(700),
    }
}

/// Feeds outcomes one interval apart through hysteresis (rise 2, fall 3) and compares each
/// reply line.
fn check(outcomes: &[Outcome], expected: &[&str]) {
    check_with(
        &probes(policy(Verdict::Down, Verdict::Down)),
        outcomes,
        expected,
    )
}

fn check_with(rules: &Rules, outcomes: &[Outcome], expected: &[&str]) {
    let start = Instant::now();
    let mut health: Option<Health> = None;
    let mut got = Vec::new();
    for (n, outcome) in outcomes.iter().enumerate() {
        let at = start + INTERVAL * n as u32;
        let observed = observation(outcome.clone(), at);
        let next = match &health {
            None => Health::first(observed, rules),
            Some(health) => health.next(observed, rules),
        };
        got.push(
            next.reply(&rules.replies, at)
                .to_line()
                .trim_end()
                .to_string(),
        );
        health = Some(next);
    }
    assert_eq!(got, expected);
}

#[test]
fn first_result_decides_then_fall_needs_three_failures() {
    check(
        &[serving(), refused(), refused(), refused(), refused()],
        &[
            "up #SERVING 0.7ms",
            "up #connection refused (1/3 to down)",
            "up #connection refused (2/3 to down)",
            "down #connection refused",
            "down #connection refused",
        ],
    );
}

#[test]
fn rise_needs_two_successes_and_a_failure_resets_the_count() {
    check(
        &[refused(), serving(), refused(), serving(), serving()],
        &[
            "down #connection refused",
            "down #SERVING 0.7ms (1/2 to up)",
            "down #connection refused",
            "down #SERVING 0.7ms (1/2 to up)",
            "up #SERVING 0.7ms",
        ],
    );
}

#[test]
fn not_serving_is_a_failure_with_its_own_reason() {
    check(&[not_serving()], &["down #NOT_SERVING"]);
}

#[test]
fn not_serving_can_drain_and_up_then_says_ready() {
    let drain = probes(policy(Verdict::Drain, Verdict::Down));
    check_with(
        &drain,
        &[not_serving(), refused(), serving(), serving()],
        &[
            "drain #NOT_SERVING",
            "down #connection refused",
            "down #SERVING 0.7ms (1/2 to up)",
            "up ready #SERVING 0.7ms",
        ],
    );
    // Recovering from NOT_SERVING stays drained (never down) until `rise`.
    check_with(
        &drain,
        &[not_serving(), serving(), serving()],
        &[
            "drain #NOT_SERVING",
            "drain #SERVING 0.7ms (1/2 to up)",
            "up ready #SERVING 0.7ms",
        ],
    );
    let maint = probes(policy(Verdict::Maint, Verdict::Down));
    check_with(&maint, &[not_serving()], &["maint #NOT_SERVING"]);
}

#[test]
fn unimplemented_can_count_as_up() {
    let unimplemented = Outcome::Failed(ProbeError::Status {
        code: crate::probe::Code::Unimplemented,
        message: String::new(),
    });
    check_with(
        &probes(policy(Verdict::Down, Verdict::Up)),
        std::slice::from_ref(&unimplemented),
        &["up #grpc UNIMPLEMENTED 0.7ms"],
    );
    check(&[unimplemented], &["down #grpc UNIMPLEMENTED"]);
}

/// One held status, looked at as time passes: `(seconds after it arrived, reply, up)`.
fn check_held(first: Outcome, then: Outcome, looks: &[(f64, &str)]) {
    let rules = held();
    let start = Instant::now();
    let health = Health::first(observation(first, start), &rules);
    let health = health.next(observation(then, start), &rules);
    for (seconds, expected) in looks {
        let now = start + Duration::from_secs_f64(*seconds);
        let settled = health.settled(now).unwrap_or_else(|| health.clone());
        let line = settled.reply(&rules.replies, now).to_line();
        assert_eq!(line.trim_end(), *expected, "at {seconds}s");
    }
}

#[test]
fn a_held_failure_turns_down_after_fall_minus_one_intervals() {
    // Fall 3 at 2 s: the status counts at 0 s, 2 s and 4 s.
    check_held(
        serving(),
        not_serving(),
        &[
            (0.0, "up #NOT_SERVING (1/3 to down)"),
            (1.999, "up #NOT_SERVING (1/3 to down)"),
            (2.0, "up #NOT_SERVING (2/3 to down)"),
            (3.999, "up #NOT_SERVING (2/3 to down)"),
            (4.0, "down #NOT_SERVING"),
            (60.0, "down #NOT_SERVING"),
        ],
    );
}

#[test]
fn a_held_success_turns_up_after_rise_minus_one_intervals() {
    check_held(
        not_serving(),
        serving(),
        &[
            (0.0, "down #SERVING 0.7ms (1/2 to up)"),
            (1.999, "down #SERVING 0.7ms (1/2 to up)"),
            (2.0, "up #SERVING 0.7ms"),
        ],
    );
}

#[test]
fn the_flip_is_due_when_the_count_reaches_the_bound_and_not_before() {
    let rules = held();
    let start = Instant::now();
    let up = Health::first(observation(serving(), start), &rules);
    assert_eq!(
        up.flip_due(),
        None,
        "a state that agrees with its status waits for nothing"
    );
    let failing = up.next(observation(not_serving(), start), &rules);
    let due = failing.flip_due().expect("a held failure has a flip due");
    assert_eq!(due, start + INTERVAL * 2);
    assert!(failing.settled(due - Duration::from_nanos(1)).is_none());
    let down = failing.settled(due).expect("flipped at the due time");
    assert!(!down.up);
    assert_eq!(down.flip_due(), None);
    assert_eq!(down.consecutive(due), (0, 3));
    // Probes never wait on a timer: they count one by one.
    let polled = up.next(observation(not_serving(), start), &probes(rules.replies));
    assert_eq!(polled.flip_due(), None);
}

#[test]
fn a_repeated_held_status_adds_no_count_and_a_change_starts_over() {
    let rules = held();
    let start = Instant::now();
    let up = Health::first(observation(serving(), start), &rules);
    let failing = up.next(observation(not_serving(), start), &rules);
    // Another unhealthy status a second later: the run keeps its start.
    let unknown = Outcome::Answered(ServingStatus::ServiceUnknown);
    let later = start + Duration::from_secs(1);
    let still = failing.next(observation(unknown, later), &rules);
    assert_eq!(still.flip_due(), failing.flip_due());
    assert_eq!(still.consecutive(later), (0, 1));
    // SERVING again before the flip: the run of failures is over.
    let back = still.next(observation(serving(), later), &rules);
    assert!(back.up);
    assert_eq!(back.flip_due(), None);
}

#[test]
fn a_flip_earned_before_an_observation_is_applied_first() {
    // NOT_SERVING held for fall - 1 intervals has turned the state down, though nothing
    // published it yet; SERVING a moment later must count toward rise from down, not
    // find the state still up.
    let rules = held();
    let start = Instant::now();
    let up = Health::first(observation(serving(), start), &rules);
    let failing = up.next(observation(not_serving(), start), &rules);
    let due = failing.flip_due().unwrap();
    let later = due + Duration::from_millis(10);
    let back = failing.next(observation(serving(), later), &rules);
    assert!(!back.up, "rise 2 still has to count");
    assert_eq!(
        back.reply(&rules.replies, later).to_line().trim_end(),
        "down #SERVING 0.7ms (1/2 to up)"
    );
    assert_eq!(back.flip_due(), Some(later + INTERVAL));
}

#[test]
fn a_trusted_status_applies_at_once() {
    let rules = Rules {
        rise: 1,
        fall: 1,
        ..held()
    };
    let start = Instant::now();
    let up = Health::first(observation(serving(), start), &rules);
    let down = up.next(observation(not_serving(), start), &rules);
    assert!(!down.up);
}

#[test]
fn the_backends_own_word_turns_it_down_at_once_and_rise_still_counts_back() {
    check_with(
        &at_once(),
        &[serving(), not_serving(), serving(), serving()],
        &[
            "up #SERVING 0.7ms",
            "down #NOT_SERVING",
            "down #SERVING 0.7ms (1/2 to up)",
            "up #SERVING 0.7ms",
        ],
    );
}

#[test]
fn a_status_the_handlers_sent_is_explicit_and_one_the_transport_made_is_counted() {
    use crate::probe::Code;
    check_with(
        &at_once(),
        &[serving(), status(Code::NotFound)],
        &["up #SERVING 0.7ms", "down #grpc NOT_FOUND"],
    );
    check_with(
        &at_once(),
        &[
            serving(),
            status(Code::Unavailable),
            status(Code::Unavailable),
        ],
        &[
            "up #SERVING 0.7ms",
            "up #grpc UNAVAILABLE (1/3 to down)",
            "up #grpc UNAVAILABLE (2/3 to down)",
        ],
    );
}

#[test]
fn transport_failures_count_through_fall_until_the_backend_speaks() {
    check_with(
        &at_once(),
        &[serving(), refused(), not_serving()],
        &[
            "up #SERVING 0.7ms",
            "up #connection refused (1/3 to down)",
            "down #NOT_SERVING",
        ],
    );
}

#[test]
fn a_watched_not_serving_applies_at_once() {
    let rules = Rules {
        held: Some(INTERVAL),
        ..at_once()
    };
    let start = Instant::now();
    let up = Health::first(observation(serving(), start), &rules);
    let down = up.next(observation(not_serving(), start + INTERVAL / 10), &rules);
    assert!(!down.up);
    assert_eq!(down.flip_due(), None);
}

#[test]
fn an_outage_remembers_the_verdict_before_its_first_failure() {
    let rules = at_once();
    let start = Instant::now();
    let at = |n: u32| start + INTERVAL * n;
    let up = Health::first(observation(serving(), at(0)), &rules);
    assert_eq!(up.outage_from, None);
    let mut health = up.next(observation(unreached(), at(1)), &rules);
    for n in 2..6 {
        assert_eq!(health.outage_from, Some(Verdict::Up));
        health = health.next(observation(unreached(), at(n)), &rules);
    }
    assert!(!health.up);
    assert_eq!(
        health.outage_from,
        Some(Verdict::Up),
        "held across the flip"
    );
    // The backend's own word ends the outage; a later one starts from down.
    let said = health.next(observation(not_serving(), at(7)), &rules);
    assert_eq!(said.outage_from, None);
    let cut = said.next(observation(unreached(), at(8)), &rules);
    assert_eq!(cut.outage_from, Some(Verdict::Down));
    // A first result that does not reach the backend has no verdict before it.
    let fresh = Health::first(observation(unreached(), at(0)), &rules);
    assert_eq!(fresh.outage_from, None);
    let drained = policy(Verdict::Drain, Verdict::Down);
    let rules = Rules {
        replies: drained,
        ..rules
    };
    let drain = Health::first(observation(not_serving(), at(0)), &rules);
    let refused_after = drain.next(observation(refused(), at(1)), &rules);
    assert_eq!(
        refused_after.outage_from, None,
        "a refusal proves the host answered"
    );
    let cut = drain.next(observation(unreached(), at(1)), &rules);
    assert_eq!(cut.outage_from, Some(Verdict::Drain));
}

/// An up target that then cannot be reached for `failures` intervals while its group
/// panics, checked held all along; its observations are an interval apart from `start`.
fn held_through(failures: u32, rules: &Rules, start: Instant) -> Health {
    let at = |n: u32| start + INTERVAL * n;
    let mut health = Health::first(observation(serving(), at(0)), rules);
    for n in 1..=failures {
        health = health.next(observation(unreached(), at(n)), rules);
        health.hold_for_panic();
        assert!(health.up, "held at failure {n}");
        assert_eq!(health.settled(at(n) + INTERVAL / 2).map(|h| h.up), None);
    }
    health
}

#[test]
fn a_panic_holds_an_up_target_up_and_the_first_answer_resumes_it() {
    let rules = at_once();
    let start = Instant::now();
    let at = |n: u32| start + INTERVAL * n;
    let health = held_through(5, &rules, start);
    let back = health.next(observation(serving(), at(6)), &rules);
    assert!(back.up, "resumed without counting rise");
    assert!(!back.held_by_panic);
    assert_eq!(
        back.reply(&rules.replies, at(6)).to_line().trim_end(),
        "up #SERVING 0.7ms"
    );
}

#[test]
fn after_a_panic_fall_counts_afresh() {
    let rules = at_once();
    let start = Instant::now();
    let at = |n: u32| start + INTERVAL * n;
    let health = held_through(5, &rules, start);
    // The panic is over; the target still cannot be reached.
    let mut health = health.next(observation(unreached(), at(6)), &rules);
    health.release_from_panic();
    assert!(health.up);
    assert_eq!(health.consecutive(at(6)), (0, 1));
    let health = health.next(observation(unreached(), at(7)), &rules);
    assert!(health.up, "2 of 3");
    let health = health.next(observation(unreached(), at(8)), &rules);
    assert!(!health.up, "fall 3 from the panic's end");
}

#[test]
fn a_panic_holds_nothing_the_backend_said() {
    let rules = at_once();
    let start = Instant::now();
    let up = Health::first(observation(serving(), start), &rules);
    let mut said = up.next(observation(not_serving(), start + INTERVAL), &rules);
    said.hold_for_panic();
    assert!(!said.up && !said.held_by_panic);
    let mut refused_now = up.next(observation(refused(), start + INTERVAL), &rules);
    refused_now.hold_for_panic();
    assert!(!refused_now.held_by_panic, "a refusal reached the host");
}

#[test]
fn latency_format() {
    assert_eq!(format_latency(Duration::from_micros(700)), "0.7ms");
    assert_eq!(format_latency(Duration::from_micros(9_940)), "9.9ms");
    assert_eq!(format_latency(Duration::from_millis(12)), "12ms");
}
