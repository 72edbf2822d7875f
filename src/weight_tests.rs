//! Reports fed in time order through one `check` helper, the weight answered after each.

use super::*;

fn cpu(utilization: f64) -> LoadReport {
    LoadReport {
        cpu_utilization: utilization,
        ..LoadReport::default()
    }
}

/// No smoothing, no blackout, no step bound: the weight is the headroom of each report.
fn direct() -> WeightConfig {
    WeightConfig {
        error_penalty: 1.0,
        smoothing: Duration::ZERO,
        max_step: 100,
        floor: 10,
        blackout: Duration::ZERO,
        expiry: Duration::from_secs(180),
    }
}

/// Feeds `(seconds, report)` in order and compares the weight answered right after each.
fn check(config: &WeightConfig, reports: &[(f64, LoadReport)], expected: &[u16]) {
    let start = Instant::now();
    let mut weighting = Weighting::new();
    let mut got = Vec::new();
    for (seconds, report) in reports {
        let now = start + Duration::from_secs_f64(*seconds);
        weighting.report(*report, now, config);
        got.push(weighting.weight(now, config).expect("a report came").0);
    }
    assert_eq!(got, expected);
}

#[test]
fn the_weight_is_the_headroom_within_the_floor() {
    check(
        &direct(),
        &[
            (0.0, cpu(0.0001)),
            (1.0, cpu(0.25)),
            (2.0, cpu(0.82)),
            (3.0, cpu(0.97)),
            (4.0, cpu(1.7)),
        ],
        &[100, 75, 18, 10, 10],
    );
}

#[test]
fn application_utilization_comes_before_cpu() {
    let both = LoadReport {
        cpu_utilization: 0.9,
        application_utilization: 0.4,
        ..LoadReport::default()
    };
    assert_eq!(both.utilization(), Some((0.4, Source::Application)));
    assert_eq!(both.describe().as_deref(), Some("app 0.40"));
    check(&direct(), &[(0.0, both)], &[60]);
    // Zero is unset in proto3: CPU is used, and with neither there is no weight to give.
    assert_eq!(cpu(0.82).describe().as_deref(), Some("cpu 0.82"));
    check(&direct(), &[(0.0, LoadReport::default())], &[100]);
}

#[test]
fn errors_count_as_load() {
    // 10 errors in 100 requests with penalty 1 add 0.1 to the utilization.
    let failing = LoadReport {
        cpu_utilization: 0.3,
        rps_fractional: 100.0,
        eps: 10.0,
        ..LoadReport::default()
    };
    assert_eq!(failing.describe().as_deref(), Some("cpu 0.30 err 0.10"));
    check(&direct(), &[(0.0, failing)], &[60]);
    let lenient = WeightConfig {
        error_penalty: 0.0,
        ..direct()
    };
    check(&lenient, &[(0.0, failing)], &[70]);
    // Without a request rate there is no error rate.
    let no_rate = LoadReport {
        rps_fractional: 0.0,
        ..failing
    };
    check(&direct(), &[(0.0, no_rate)], &[70]);
}

#[test]
fn a_weight_moves_at_most_a_step_per_report() {
    let stepped = WeightConfig {
        max_step: 20,
        ..direct()
    };
    check(
        &stepped,
        &[
            (0.0, cpu(0.9)),
            (1.0, cpu(0.9)),
            (2.0, cpu(0.9)),
            (3.0, cpu(0.9)),
            (4.0, cpu(0.9)),
            (5.0, cpu(0.0001)),
        ],
        &[80, 60, 40, 20, 10, 30],
    );
}

#[test]
fn one_spike_is_smoothed_away() {
    let smoothed = WeightConfig {
        smoothing: Duration::from_secs(10),
        ..direct()
    };
    // 0.2 steadily, one report of 1.0: the average moves by 1 - e^(-1/10) of the gap.
    check(
        &smoothed,
        &[
            (0.0, cpu(0.2)),
            (1.0, cpu(0.2)),
            (2.0, cpu(1.0)),
            (3.0, cpu(0.2)),
        ],
        &[80, 80, 72, 73],
    );
}

#[test]
fn a_blackout_after_the_stream_opens_answers_100() {
    let blackout = WeightConfig {
        blackout: Duration::from_secs(10),
        ..direct()
    };
    check(
        &blackout,
        &[
            (0.0, cpu(0.5)),
            (5.0, cpu(0.5)),
            (9.9, cpu(0.5)),
            (10.0, cpu(0.5)),
        ],
        &[100, 100, 100, 50],
    );
    // A stream opened again starts the blackout over.
    let start = Instant::now();
    let mut weighting = Weighting::new();
    weighting.report(cpu(0.5), start, &blackout);
    weighting.report(cpu(0.5), start + Duration::from_secs(10), &blackout);
    weighting.opened();
    assert_eq!(
        weighting.weight(start + Duration::from_secs(11), &blackout),
        None
    );
    weighting.report(cpu(0.5), start + Duration::from_secs(11), &blackout);
    let (weight, _) = weighting
        .weight(start + Duration::from_secs(11), &blackout)
        .unwrap();
    assert_eq!(weight, 100);
}

#[test]
fn an_old_report_gives_100_and_the_next_one_starts_a_blackout() {
    let config = WeightConfig {
        blackout: Duration::from_secs(10),
        expiry: Duration::from_secs(60),
        ..direct()
    };
    let start = Instant::now();
    let at = |seconds: u64| start + Duration::from_secs(seconds);
    let mut weighting = Weighting::new();
    weighting.report(cpu(0.5), at(0), &config);
    weighting.report(cpu(0.5), at(10), &config);
    assert_eq!(weighting.weight(at(10), &config).unwrap().0, 50);
    assert_eq!(
        weighting.weight(at(70), &config).unwrap().0,
        50,
        "60 s old: still fresh"
    );
    assert_eq!(weighting.weight(at(71), &config).unwrap().0, 100, "expired");
    weighting.report(cpu(0.5), at(100), &config);
    assert_eq!(
        weighting.weight(at(100), &config).unwrap().0,
        100,
        "a new blackout"
    );
    weighting.report(cpu(0.5), at(110), &config);
    assert_eq!(weighting.weight(at(110), &config).unwrap().0, 50);
}

#[test]
fn headroom_bounds() {
    assert_eq!(headroom(0.0, 10), 100);
    assert_eq!(headroom(-3.0, 10), 100);
    assert_eq!(headroom(0.355, 10), 65);
    assert_eq!(headroom(2.0, 10), 10);
    assert_eq!(
        headroom(0.999, 0),
        1,
        "0 % is drain's word: never answered while up"
    );
    assert_eq!(headroom(f64::NAN, 10), 10);
}

#[test]
fn a_report_whose_numbers_overflow_is_ignored_and_the_weight_stays_finite() {
    // A subnormal rps makes eps / rps infinite: the report is not acted on, and the
    // average does not become NaN for the reports after it.
    let overflowing = LoadReport {
        cpu_utilization: 0.5,
        rps_fractional: 1e-320,
        eps: 1.0,
        ..LoadReport::default()
    };
    assert_eq!(overflowing.effective_utilization(1.0), None);
    assert_eq!(
        overflowing.describe().as_deref(),
        Some("cpu 0.50 (ignored: error rate not finite)")
    );
    let smoothed = WeightConfig {
        smoothing: Duration::from_secs(10),
        ..direct()
    };
    check(
        &smoothed,
        &[
            (0.0, cpu(0.5)),
            (1.0, overflowing),
            (2.0, overflowing),
            (3.0, cpu(0.5)),
        ],
        &[50, 50, 50, 50],
    );
}
