use super::*;

const COOLDOWN: Duration = Duration::from_secs(60);

fn breaker() -> CircuitBreaker {
    CircuitBreaker::new(BreakerConfig::default())
}

fn fail_at(breaker: &CircuitBreaker, now: Instant) -> Option<Transition> {
    breaker
        .try_acquire_at(now)
        .expect("breaker should admit the attempt")
        .failure_at(now)
}

/// Opens `breaker` at `t0` with five failures; returns when it reopens.
fn open_at(breaker: &CircuitBreaker, t0: Instant) -> Instant {
    for _ in 0..5 {
        fail_at(breaker, t0);
    }
    assert_eq!(
        breaker.state(),
        BreakerState::Open {
            until: t0 + COOLDOWN
        }
    );
    t0 + COOLDOWN
}

#[test]
fn opens_after_exactly_five_consecutive_failures_not_four() {
    let b = breaker();
    let t0 = Instant::now();
    for _ in 0..4 {
        assert_eq!(fail_at(&b, t0), None);
    }
    assert_eq!(b.state(), BreakerState::Closed);
    let opened = fail_at(&b, t0);
    let open = BreakerState::Open {
        until: t0 + COOLDOWN,
    };
    assert_eq!(
        opened,
        Some(Transition {
            from: BreakerState::Closed,
            to: open
        })
    );
    assert_eq!(b.state(), open);
    assert_eq!(b.counters().opened, 1);
}

#[test]
fn a_success_between_failures_resets_the_count() {
    let b = breaker();
    let t0 = Instant::now();
    for _ in 0..4 {
        fail_at(&b, t0);
    }
    assert_eq!(b.try_acquire_at(t0).expect("closed").success(), None);
    for _ in 0..4 {
        fail_at(&b, t0);
    }
    assert_eq!(b.state(), BreakerState::Closed);
    fail_at(&b, t0);
    assert!(matches!(b.state(), BreakerState::Open { .. }));
}

#[test]
fn rejects_while_open_until_the_cooldown_ends() {
    let b = breaker();
    let t0 = Instant::now();
    let until = open_at(&b, t0);
    for now in [
        t0,
        t0 + Duration::from_secs(30),
        until - Duration::from_nanos(1),
    ] {
        let rejected = b.try_acquire_at(now).expect_err("open breaker must reject");
        assert_eq!(rejected, Rejected::Open { until });
        assert_eq!(rejected.retry_at(), Some(until));
    }
    assert_eq!(b.counters().rejected, 3);
    assert!(b.try_acquire_at(until).is_ok());
}

#[test]
fn goes_half_open_after_the_cooldown_and_lets_exactly_one_probe_through() {
    let b = breaker();
    let t0 = Instant::now();
    let until = open_at(&b, t0);
    let probe = b.try_acquire_at(until).expect("cool-down is over");
    assert!(probe.is_probe());
    assert_eq!(
        probe.transition().map(|t| t.to),
        Some(BreakerState::HalfOpen)
    );
    assert_eq!(b.state(), BreakerState::HalfOpen);
    let second = b.try_acquire_at(until + Duration::from_secs(1));
    assert_eq!(second.expect_err("one probe only"), Rejected::ProbesBusy);
    assert_eq!(b.counters().half_opened, 1);
    drop(probe);
}

#[test]
fn half_open_failure_reopens_with_a_fresh_cooldown() {
    let b = breaker();
    let t0 = Instant::now();
    let until = open_at(&b, t0);
    let failed_at = until + Duration::from_secs(7);
    let probe = b.try_acquire_at(until).expect("cool-down is over");
    let reopened = probe.failure_at(failed_at).expect("a failed probe reopens");
    let fresh = BreakerState::Open {
        until: failed_at + COOLDOWN,
    };
    assert_eq!(
        reopened,
        Transition {
            from: BreakerState::HalfOpen,
            to: fresh
        }
    );
    assert_eq!(b.state(), fresh);
    assert!(
        b.try_acquire_at(failed_at + COOLDOWN - Duration::from_millis(1))
            .is_err()
    );
    assert_eq!(b.counters().opened, 2);
}

#[test]
fn three_half_open_successes_close_it_and_two_do_not() {
    let b = breaker();
    let until = open_at(&b, Instant::now());
    for _ in 0..2 {
        let probe = b.try_acquire_at(until).expect("probe slot is free again");
        assert_eq!(probe.success(), None);
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }
    let probe = b.try_acquire_at(until).expect("probe slot is free again");
    let closed = probe.success().expect("third success closes");
    assert_eq!(closed.from, BreakerState::HalfOpen);
    assert_eq!(closed.to, BreakerState::Closed);
    assert_eq!(b.state(), BreakerState::Closed);
    // Closed again means a fresh count: four failures do not reopen it.
    for _ in 0..4 {
        fail_at(&b, until);
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn reset_closes_an_open_breaker_and_is_a_no_op_when_closed() {
    let b = breaker();
    let t0 = Instant::now();
    open_at(&b, t0);
    let reset = b.reset().expect("open -> closed");
    assert_eq!(reset.to, BreakerState::Closed);
    assert_eq!(b.state(), BreakerState::Closed);
    assert!(b.try_acquire_at(t0).is_ok());
    assert_eq!(b.reset(), None);
    assert_eq!(b.counters().closed, 1);
}

#[test]
fn concurrent_try_acquire_in_half_open_gives_one_permit() {
    let b = breaker();
    let until = open_at(&b, Instant::now());
    let threads = 8;
    let barrier = std::sync::Barrier::new(threads);
    let granted: Vec<Permit> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    b.try_acquire_at(until).ok()
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("thread panicked"))
            .collect()
    });
    assert_eq!(granted.len(), 1);
    assert_eq!(b.counters().rejected, threads as u64 - 1);
    assert_eq!(b.counters().half_opened, 1);
}

#[test]
fn a_dropped_probe_frees_its_slot_and_changes_nothing() {
    let b = breaker();
    let until = open_at(&b, Instant::now());
    drop(b.try_acquire_at(until).expect("first probe"));
    assert_eq!(b.state(), BreakerState::HalfOpen);
    let probe = b.try_acquire_at(until).expect("slot freed by the drop");
    assert!(probe.transition().is_none());
    drop(probe);
}

/// `awaiting_probe` is `Some` only half-open with no probe out, and its
/// count moves when a probe starts or ends, whatever its outcome: the
/// parking lot lets one delivery out per value.
#[test]
fn awaiting_probe_moves_when_a_probe_starts_or_ends() {
    let b = breaker();
    assert_eq!(b.awaiting_probe(), None, "closed");
    let until = open_at(&b, Instant::now());
    assert_eq!(b.awaiting_probe(), None, "open");
    let probe = b.try_acquire_at(until).expect("first probe");
    assert_eq!(b.awaiting_probe(), None, "a probe is out");
    drop(probe);
    let after_drop = b.awaiting_probe().expect("half-open, nothing out");
    assert_eq!(
        b.awaiting_probe(),
        Some(after_drop),
        "nothing happened since"
    );
    let probe = b.try_acquire_at(until).expect("second probe");
    assert_eq!(probe.success(), None, "one success of three");
    let after_success = b.awaiting_probe().expect("still half-open");
    assert!(after_success > after_drop);
}

#[test]
fn outcomes_of_permits_from_before_a_transition_are_ignored() {
    let b = breaker();
    let t0 = Instant::now();
    let in_flight: Vec<Permit> = (0..4)
        .map(|_| b.try_acquire_at(t0).expect("closed"))
        .collect();
    let until = open_at(&b, t0);
    let mut late = in_flight.into_iter();
    // A late failure does not push the cool-down out...
    let later = t0 + Duration::from_secs(30);
    assert_eq!(late.next().map(|p| p.failure_at(later)), Some(None));
    assert_eq!(b.state(), BreakerState::Open { until });
    // ...and a late success while half-open is not a probe success.
    let probe = b.try_acquire_at(until).expect("cool-down is over");
    for permit in late {
        assert_eq!(permit.success(), None);
    }
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert!(b.try_acquire_at(until).is_err(), "probe slot still taken");
    drop(probe);
}

#[test]
fn zero_cooldown_probes_at_once_with_the_real_clock() {
    let b = CircuitBreaker::new(BreakerConfig {
        failure_threshold: 1,
        cooldown: Duration::ZERO,
        ..BreakerConfig::default()
    });
    let opened = b.try_acquire().expect("closed").failure();
    assert!(matches!(
        opened.map(|t| t.to),
        Some(BreakerState::Open { .. })
    ));
    let probe = b.try_acquire().expect("no cool-down to wait for");
    assert!(probe.is_probe());
    assert_eq!(
        probe.failure().map(|t| t.from),
        Some(BreakerState::HalfOpen)
    );
}

#[test]
fn unvalidated_zero_thresholds_behave_like_one() {
    let b = CircuitBreaker::new(BreakerConfig {
        failure_threshold: 0,
        success_threshold: 0,
        half_open_probes: 0,
        cooldown: Duration::MAX,
        ..BreakerConfig::default()
    });
    assert_eq!(b.config().cooldown, MAX_COOLDOWN);
    let t0 = Instant::now();
    assert!(b.try_acquire_at(t0).expect("closed").success().is_none());
    assert!(fail_at(&b, t0).is_some(), "one failure opens");
    let probe = b.try_acquire_at(t0 + MAX_COOLDOWN).expect("one probe slot");
    assert_eq!(probe.success().map(|t| t.to), Some(BreakerState::Closed));
}

#[test]
fn config_reads_durations_as_text_and_rejects_unknown_keys() {
    let config: BreakerConfig =
        toml::from_str("failure_threshold = 3\ncooldown = \"1m 30s\"\n").expect("valid table");
    assert_eq!(config.failure_threshold, 3);
    assert_eq!(config.cooldown, Duration::from_secs(90));
    assert_eq!(config.success_threshold, 3, "defaults fill the rest");
    let err = toml::from_str::<BreakerConfig>("failure_treshold = 3\n")
        .expect_err("typo must be rejected");
    assert!(err.to_string().contains("failure_treshold"), "{err}");
}

#[test]
fn validate_lists_every_problem() {
    assert!(BreakerConfig::default().validate().is_empty());
    let bad = BreakerConfig {
        failure_threshold: 0,
        cooldown: Duration::from_secs(2 * 24 * 60 * 60),
        success_threshold: 0,
        half_open_probes: 0,
        failure_rate: Some(1.5),
        window: Duration::ZERO,
        min_calls: 0,
    };
    assert_eq!(
        bad.validate(),
        vec![
            "failure_threshold must be at least 1, got 0",
            "success_threshold must be at least 1, got 0",
            "half_open_probes must be at least 1, got 0",
            "min_calls must be at least 1, got 0",
            "failure_rate must be more than 0 and at most 1, got 1.5",
            "window must be more than 0s and at most 1day, got 0s",
            "cooldown must be at most 1day, got 2days",
        ]
    );
}

fn rate_breaker() -> CircuitBreaker {
    CircuitBreaker::new(BreakerConfig {
        failure_rate: Some(0.5),
        window: Duration::from_secs(10),
        min_calls: 10,
        ..BreakerConfig::default()
    })
}

fn succeed_at(breaker: &CircuitBreaker, now: Instant) -> Option<Transition> {
    breaker
        .try_acquire_at(now)
        .expect("breaker should admit the attempt")
        .success_at(now)
}

#[test]
fn alternating_failures_open_on_the_rate_never_on_the_run() {
    let b = rate_breaker();
    let t0 = Instant::now();
    // Fail, succeed, fail...: never two failures in a row.
    for n in 0..9 {
        let now = t0 + Duration::from_millis(100 * n);
        let transition = if n % 2 == 0 {
            fail_at(&b, now)
        } else {
            succeed_at(&b, now)
        };
        assert_eq!(transition, None, "opened early, at call {n}");
    }
    // The tenth call makes min_calls; 5 of 10 failed: 50% opens it.
    let now = t0 + Duration::from_millis(900);
    let opened = succeed_at(&b, now).or_else(|| fail_at(&b, now));
    assert_eq!(
        opened.map(|t| t.to),
        Some(BreakerState::Open {
            until: now + COOLDOWN
        })
    );
}

#[test]
fn failures_that_aged_out_of_the_window_do_not_count() {
    let b = rate_breaker();
    let t0 = Instant::now();
    for n in 0..4 {
        fail_at(&b, t0 + Duration::from_millis(n));
        succeed_at(&b, t0 + Duration::from_millis(n));
    }
    // 20 s later the window holds only what follows: 9 successes, 1 failure.
    let later = t0 + Duration::from_secs(20);
    for _ in 0..9 {
        succeed_at(&b, later);
    }
    assert_eq!(fail_at(&b, later), None);
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn without_failure_rate_only_a_run_opens_the_breaker() {
    let b = breaker();
    let t0 = Instant::now();
    for n in 0..100 {
        let transition = if n % 2 == 0 {
            fail_at(&b, t0)
        } else {
            succeed_at(&b, t0)
        };
        assert_eq!(transition, None);
    }
}

/// The same life cycle on tokio's clock, paused: the breaker reads
/// `tokio::time::Instant::now()` itself, so `advance` moves it through the
/// cool-down without waiting.
#[tokio::test(start_paused = true)]
async fn on_a_paused_clock_the_cooldown_passes_with_advance() {
    let breaker = breaker();
    for _ in 0..5 {
        breaker.try_acquire().expect("closed").failure();
    }
    assert!(matches!(breaker.state(), BreakerState::Open { .. }));
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(
        breaker.try_acquire().is_err(),
        "still open before the cool-down"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    let probe = breaker.try_acquire().expect("half-open probe after 60 s");
    assert!(probe.is_probe());
    assert!(breaker.try_acquire().is_err(), "one probe at a time");
    probe.success();
    for _ in 0..2 {
        breaker.try_acquire().expect("half-open").success();
    }
    assert_eq!(breaker.state(), BreakerState::Closed);
}
