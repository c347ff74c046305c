use super::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn no_jitter() -> RetryPolicy {
    RetryPolicy {
        jitter: 0.0,
        ..RetryPolicy::default()
    }
}

fn rng() -> StdRng {
    StdRng::seed_from_u64(7)
}

#[test]
fn backoff_doubles_from_the_initial_delay_up_to_the_cap() {
    let policy = no_jitter();
    let waits: Vec<u64> = (1..=12)
        .map(|n| policy.backoff(n, &mut rng()).as_secs())
        .collect();
    assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    assert_eq!(policy.backoff(0, &mut rng()), Duration::ZERO);
}

#[test]
fn jitter_stays_within_a_quarter_either_way_and_varies() {
    let policy = RetryPolicy::default();
    let mut rng = rng();
    let samples: Vec<Duration> = (0..2000).map(|_| policy.backoff(3, &mut rng)).collect();
    let (min, max) = (samples.iter().min(), samples.iter().max());
    let (min, max) = (*min.expect("samples"), *max.expect("samples"));
    assert!(min >= secs(3) && max <= secs(5), "{min:?}..{max:?}");
    // Uniform over 2s: 2000 samples reach close to both ends.
    assert!(min < Duration::from_millis(3100), "{min:?}");
    assert!(max > Duration::from_millis(4900), "{max:?}");
    let mut distinct = samples.clone();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() > 1000);
}

#[test]
fn jitter_at_the_cap_never_exceeds_max_delay() {
    let policy = RetryPolicy::default();
    let mut rng = rng();
    let samples: Vec<Duration> = (0..2000).map(|_| policy.backoff(40, &mut rng)).collect();
    assert!(samples.iter().all(|d| (secs(225)..=secs(300)).contains(d)));
    let at_cap = samples.iter().filter(|d| **d == secs(300)).count();
    assert!(at_cap < 10, "{at_cap} samples piled on the cap");
    assert!(samples.iter().any(|d| *d < secs(240)));
}

#[test]
fn backoff_saturates_for_huge_attempt_numbers() {
    let policy = no_jitter();
    for attempt in [1000, u32::MAX] {
        assert_eq!(policy.backoff(attempt, &mut rng()), secs(300));
    }
    let huge_cap = RetryPolicy {
        max_delay: Duration::MAX,
        ..no_jitter()
    };
    assert_eq!(huge_cap.backoff(1000, &mut rng()), Duration::MAX);
    let flat = RetryPolicy {
        multiplier: 1.0,
        ..no_jitter()
    };
    assert_eq!(flat.backoff(u32::MAX, &mut rng()), secs(1));
}

#[test]
fn backoff_does_not_panic_on_an_unvalidated_policy() {
    let mut rng = rng();
    for (multiplier, jitter) in [(f64::NAN, f64::NAN), (-3.0, 5.0), (f64::INFINITY, -1.0)] {
        let policy = RetryPolicy {
            multiplier,
            jitter,
            initial_delay: secs(10),
            max_delay: secs(2),
            ..RetryPolicy::default()
        };
        for attempt in [1, 2, 1000] {
            assert!(policy.backoff(attempt, &mut rng) <= secs(2));
        }
    }
}

#[test]
fn attempt_timeout_is_constant_by_default_and_grows_to_its_cap() {
    let policy = RetryPolicy::default();
    assert!((1..=10).all(|n| policy.attempt_timeout(n) == secs(10)));
    let growing = RetryPolicy {
        timeout_growth: 2.0,
        ..RetryPolicy::default()
    };
    let limits: Vec<u64> = [0, 1, 2, 3, 4, 5, u32::MAX]
        .into_iter()
        .map(|n| growing.attempt_timeout(n).as_secs())
        .collect();
    assert_eq!(limits, [10, 10, 20, 40, 60, 60, 60]);
}

#[test]
fn statuses_are_classified_as_designed() {
    use AttemptOutcome::*;
    let retry = AttemptOutcome::retryable();
    let table = [
        (200, Success),
        (201, Success),
        (204, Success),
        (101, Permanent),
        (301, Permanent),
        (304, Permanent),
        (400, Permanent),
        (401, Permanent),
        (404, Permanent),
        (408, retry),
        (409, retry),
        (410, Gone),
        (422, Permanent),
        (425, retry),
        (429, retry),
        (500, retry),
        (501, retry),
        (502, retry),
        (503, retry),
        (599, retry),
        (0, Permanent),
        (600, Permanent),
    ];
    for (status, expected) in table {
        let got = classify_status(status, None, SystemTime::UNIX_EPOCH);
        assert_eq!(got, expected, "status {status}");
    }
}

#[test]
fn retry_after_is_read_only_from_retryable_answers() {
    let now = SystemTime::UNIX_EPOCH + secs(1_700_000_000);
    let asked = AttemptOutcome::Retryable {
        retry_after: Some(secs(30)),
    };
    assert_eq!(classify_status(429, Some("30"), now), asked);
    assert_eq!(classify_status(503, Some("30"), now), asked);
    assert_eq!(
        classify_status(503, Some("later"), now),
        AttemptOutcome::retryable()
    );
    assert_eq!(
        classify_status(200, Some("30"), now),
        AttemptOutcome::Success
    );
    assert_eq!(
        classify_status(404, Some("30"), now),
        AttemptOutcome::Permanent
    );
}

#[test]
fn retry_after_takes_seconds_and_dates() {
    let now = SystemTime::UNIX_EPOCH + secs(1_700_000_000);
    assert_eq!(parse_retry_after("120", now), Some(secs(120)));
    assert_eq!(parse_retry_after(" 5 ", now), Some(secs(5)));
    assert_eq!(parse_retry_after("0", now), Some(Duration::ZERO));
    let in_90s = httpdate::fmt_http_date(now + secs(90));
    assert_eq!(parse_retry_after(&in_90s, now), Some(secs(90)));
    let an_hour_ago = httpdate::fmt_http_date(now - secs(3600));
    assert_eq!(parse_retry_after(&an_hour_ago, now), Some(Duration::ZERO));
    // The obsolete RFC 850 form is still a valid HTTP-date.
    let rfc850 = "Tuesday, 14-Nov-23 22:13:50 GMT";
    assert_eq!(parse_retry_after(rfc850, now), Some(secs(30)));
    assert_eq!(
        parse_retry_after("99999999999999999999999", now),
        Some(Duration::from_secs(u64::MAX))
    );
}

#[test]
fn garbage_retry_after_is_ignored() {
    let now = SystemTime::UNIX_EPOCH + secs(1_700_000_000);
    for garbage in ["", "  ", "soon", "-5", "1.5", "5s", "Tue, 99 Foo 2023"] {
        assert_eq!(parse_retry_after(garbage, now), None, "{garbage:?}");
    }
}

#[test]
fn retry_after_sets_a_floor_under_the_backoff_up_to_the_cap() {
    let policy = no_jitter();
    let mut rng = rng();
    // Longer than the backoff: honoured.
    assert_eq!(policy.next_delay(1, Some(secs(30)), &mut rng), secs(30));
    // Longer than max_retry_after: cut to it.
    assert_eq!(
        policy.next_delay(1, Some(secs(2 * 3600)), &mut rng),
        secs(3600)
    );
    // Shorter than the backoff (or a past date): the backoff wins.
    assert_eq!(policy.next_delay(4, Some(secs(1)), &mut rng), secs(8));
    assert_eq!(
        policy.next_delay(4, Some(Duration::ZERO), &mut rng),
        secs(8)
    );
    assert_eq!(policy.next_delay(4, None, &mut rng), secs(8));
    let ignore = RetryPolicy {
        max_retry_after: Duration::ZERO,
        ..no_jitter()
    };
    assert_eq!(ignore.next_delay(1, Some(secs(30)), &mut rng), secs(1));
}

#[test]
fn attempts_run_out_at_max_attempts() {
    let policy = RetryPolicy::default();
    assert!(policy.has_attempts_left(4));
    assert!(!policy.has_attempts_left(5));
    let once = RetryPolicy {
        max_attempts: 1,
        ..RetryPolicy::default()
    };
    assert!(!once.has_attempts_left(1));
}

#[test]
fn validate_lists_every_problem() {
    assert_eq!(RetryPolicy::default().validate(), Vec::<String>::new());
    let bad = RetryPolicy {
        max_attempts: 0,
        initial_delay: secs(5),
        multiplier: 0.5,
        max_delay: secs(1),
        jitter: 1.5,
        max_retry_after: Duration::ZERO,
        attempt_timeout: Duration::ZERO,
        timeout_growth: f64::INFINITY,
        max_attempt_timeout: secs(60),
    };
    assert_eq!(
        bad.validate(),
        [
            "max_attempts must be at least 1, got 0",
            "multiplier must be at least 1, got 0.5",
            "max_delay must not be less than initial_delay (5s), got 1s",
            "jitter must be between 0 and 1, got 1.5",
            "attempt_timeout must be more than 0s",
            "timeout_growth must be a finite number, got inf",
        ]
    );
    let nan = RetryPolicy {
        jitter: f64::NAN,
        initial_delay: Duration::ZERO,
        ..RetryPolicy::default()
    };
    assert_eq!(
        nan.validate(),
        [
            "initial_delay must be more than 0s",
            "jitter must be between 0 and 1, got NaN",
        ]
    );
}

#[test]
fn policy_reads_from_toml_with_durations_as_text() {
    let text = r#"
        max_attempts = 8
        initial_delay = "250ms"
        max_delay = "30s"
        jitter = 0.1
        attempt_timeout = "2s 500ms"
        timeout_growth = 1.5
    "#;
    let policy: RetryPolicy = toml::from_str(text).expect("valid policy");
    assert_eq!(
        policy,
        RetryPolicy {
            max_attempts: 8,
            initial_delay: Duration::from_millis(250),
            max_delay: secs(30),
            jitter: 0.1,
            attempt_timeout: Duration::from_millis(2500),
            timeout_growth: 1.5,
            ..RetryPolicy::default()
        }
    );
    assert!(policy.validate().is_empty());
    let empty: RetryPolicy = toml::from_str("").expect("all fields optional");
    assert_eq!(empty, RetryPolicy::default());
}

#[test]
fn policy_rejects_unknown_keys_and_bad_durations() {
    let err = toml::from_str::<RetryPolicy>("max_retries = 3\n").expect_err("unknown key");
    assert!(err.to_string().contains("max_retries"), "{err}");
    let err =
        toml::from_str::<RetryPolicy>("initial_delay = \"soon\"\n").expect_err("bad duration");
    assert!(err.to_string().contains("initial_delay"), "{err}");
}
