//! Properties of the autoscaler over random policies and random sample
//! sequences: the guarantees the control plane relies on.

use std::time::Duration;

use bora_autoscale::{Autoscaler, Decision, MAX_SAMPLES, Policy, Sample, Targets, driver};
use proptest::prelude::*;

const DRIVERS: [&str; 14] = [
    driver::CONCURRENCY,
    driver::REQUESTS_PER_SECOND,
    driver::CPU,
    driver::MEMORY,
    driver::P95_LATENCY,
    driver::PANIC,
    driver::SCALE_DOWN_RATE,
    driver::SCALE_UP_RATE,
    driver::DEMAND,
    driver::WARM,
    driver::IDLE,
    driver::MIN,
    driver::MAX,
    driver::NO_DATA,
];

/// Rates and thresholds from a few exact binary fractions, so the tests
/// can compute `ceil(ready / rate)` without float doubt.
fn down_rate() -> impl Strategy<Value = f64> {
    prop::sample::select(vec![1.0, 1.5, 2.0, 4.0])
}

fn up_rate() -> impl Strategy<Value = f64> {
    prop::sample::select(vec![1.5, 2.0, 10.0, 1000.0])
}

fn threshold() -> impl Strategy<Value = f64> {
    prop::sample::select(vec![1.5, 2.0, 3.0])
}

fn secs(range: std::ops::Range<u64>) -> impl Strategy<Value = Duration> {
    range.prop_map(Duration::from_secs)
}

fn any_targets() -> impl Strategy<Value = Targets> {
    (
        prop::option::of(1.0..200.0f64),
        prop::option::of(1.0..200.0f64),
        prop::option::of(0.1..1.0f64),
        prop::option::of(0.1..1.0f64),
        prop::option::of((10u64..2000).prop_map(Duration::from_millis)),
    )
        .prop_map(
            |(concurrency, requests_per_second, cpu, memory, p95_latency)| Targets {
                concurrency,
                requests_per_second,
                cpu,
                memory,
                p95_latency,
            },
        )
}

/// A valid policy (`max >= max(min, 1)`) with the given targets.
fn policy_with(targets: impl Strategy<Value = Targets>) -> impl Strategy<Value = Policy> {
    (
        (0u32..5, 0u32..25, targets, secs(0..600)),
        (secs(2..120), 1u64..30, threshold(), down_rate(), up_rate()),
    )
        .prop_map(
            |((min, extra, targets, idle), (stable, panic, threshold, down, up))| {
                let mut policy = Policy::new(min, min.max(1) + extra, targets, idle);
                policy.stable_window = stable;
                policy.panic_window = Duration::from_secs(panic.min(stable.as_secs()));
                policy.panic_threshold = threshold;
                policy.max_scale_down_rate = down;
                policy.max_scale_up_rate = up;
                policy
            },
        )
}

/// How the clock moves before a sample.
#[derive(Debug, Clone, Copy)]
enum Step {
    Tick,
    Jitter(u64),
    Same,
    Gap,
    Back,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        20 => Just(Step::Tick),
        4 => (1u64..3000).prop_map(Step::Jitter),
        1 => Just(Step::Same),
        1 => Just(Step::Gap),
        1 => Just(Step::Back),
    ]
}

/// One tick of a random load.
#[derive(Debug, Clone)]
struct Tick {
    step: Step,
    /// `None`: the ready count follows the previous decision.
    ready: Option<u32>,
    concurrency: f64,
    in_flight: u32,
    held: u32,
    requests: u64,
    p95_latency: Option<Duration>,
    cpu: Option<f64>,
    memory: Option<f64>,
    idle_for: Duration,
}

fn tick() -> impl Strategy<Value = Tick> {
    let load = prop_oneof![
        1 => Just((0.0, 0, 0, 0)),
        2 => (0.0..2000.0f64, 0u32..2000, 0u32..50, 0u64..3000),
    ];
    (
        step(),
        prop::option::weighted(0.5, 0u32..40),
        load,
        prop::option::of((1u64..5000).prop_map(Duration::from_millis)),
        prop::option::of(0.0..1.5f64),
        prop::option::of(0.0..1.5f64),
        prop_oneof![Just(Duration::ZERO), secs(0..1200)],
    )
        .prop_map(
            |(step, ready, (concurrency, in_flight, held, requests), p95, cpu, memory, idle)| {
                Tick {
                    step,
                    ready,
                    concurrency,
                    in_flight,
                    held,
                    requests,
                    p95_latency: p95,
                    cpu,
                    memory,
                    idle_for: idle,
                }
            },
        )
}

/// Feeds the ticks to a new autoscaler; returns each sample with the
/// decision after it.
fn run(policy: &Policy, ticks: &[Tick]) -> Vec<(Sample, Decision)> {
    let mut autoscaler = Autoscaler::new(policy.clone());
    let mut now = Duration::from_secs(1000);
    let mut desired = 0;
    let mut out = Vec::with_capacity(ticks.len());
    for tick in ticks {
        now = match tick.step {
            Step::Tick => now + Duration::from_secs(1),
            Step::Jitter(ms) => now + Duration::from_millis(ms),
            Step::Same => now,
            Step::Gap => now + Duration::from_secs(200),
            Step::Back => now.saturating_sub(Duration::from_secs(30)),
        };
        let sample = Sample {
            now,
            ready: tick.ready.unwrap_or(desired),
            concurrency: tick.concurrency,
            in_flight: tick.in_flight,
            held: tick.held,
            requests: tick.requests,
            p95_latency: tick.p95_latency,
            cpu: tick.cpu,
            memory: tick.memory,
            idle_for: tick.idle_for,
        };
        let decision = autoscaler.observe(sample);
        assert!(autoscaler.history_len() <= MAX_SAMPLES);
        desired = decision.desired;
        out.push((sample, decision));
    }
    out
}

/// `ceil(ready / rate)`, but at least one fewer than `ready` (from 2 up)
/// with a rate above 1: the scale-down floor, computed independently.
fn down_floor(ready: u32, rate: f64) -> u32 {
    let floor = (f64::from(ready) / rate).ceil() as u32;
    if rate > 1.0 && ready >= 2 {
        floor.min(ready - 1)
    } else {
        floor
    }
}

fn demand(sample: &Sample) -> bool {
    sample.held > 0 || sample.in_flight > 0 || sample.requests > 0 || sample.concurrency > 0.0
}

/// `(need, target, load)` with `ceil(load / target) == need`: a load at
/// an exact multiple of the target in half the cases, else just below.
fn load_for_need() -> impl Strategy<Value = (u32, u32, u32)> {
    (1u32..40, 1u32..200, prop_oneof![Just(0.0), 0.0..1.0f64]).prop_map(|(need, target, slack)| {
        let slack = (slack * f64::from(target - 1)) as u32;
        (need, target, need * target - slack)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn stays_within_min_and_max(
        policy in policy_with(any_targets()),
        ticks in prop::collection::vec(tick(), 1..150),
    ) {
        for (i, (_, d)) in run(&policy, &ticks).iter().enumerate() {
            prop_assert!(d.desired <= policy.max, "tick {}: {:?}", i, d);
            prop_assert!(d.desired >= policy.min, "tick {}: {:?}", i, d);
            prop_assert!(DRIVERS.contains(&d.driver), "tick {}: {:?}", i, d);
            prop_assert!(!d.reason.is_empty());
        }
    }

    #[test]
    fn never_zero_while_anyone_asks(
        policy in policy_with(any_targets()),
        ticks in prop::collection::vec(tick(), 1..150),
    ) {
        for (i, (s, d)) in run(&policy, &ticks).iter().enumerate() {
            if demand(s) {
                prop_assert!(d.desired >= 1, "tick {}: {:?} {:?}", i, s, d);
            }
        }
    }

    #[test]
    fn never_zero_before_the_idle_period(
        policy in policy_with(any_targets()),
        ticks in prop::collection::vec(tick(), 1..150),
    ) {
        let mut previous: Option<u32> = None;
        for (i, (s, d)) in run(&policy, &ticks).iter().enumerate() {
            if d.desired == 0 {
                let idle = s.idle_for >= policy.scale_to_zero_after;
                // Zero without idling only for a service already asleep that
                // nobody asks for.
                let asleep = s.ready == 0 && previous.unwrap_or(0) == 0 && !demand(s);
                prop_assert!(idle || asleep, "tick {}: {:?} {:?}", i, s, d);
                if previous.is_some_and(|p| p > 0) {
                    prop_assert!(idle, "went to zero before idling, tick {}: {:?}", i, d);
                    prop_assert_eq!(d.driver, driver::IDLE);
                }
            }
            previous = Some(d.desired);
        }
    }

    #[test]
    fn no_decrease_while_panicking(
        policy in policy_with(any_targets()),
        ticks in prop::collection::vec(tick(), 1..150),
    ) {
        let decisions = run(&policy, &ticks);
        for (i, pair) in decisions.windows(2).enumerate() {
            let (before, after) = (&pair[0].1, &pair[1].1);
            if after.panicking {
                prop_assert!(
                    after.desired >= before.desired,
                    "tick {}: {} → {} while panicking: {}",
                    i + 1, before.desired, after.desired, after.reason
                );
            }
        }
    }

    #[test]
    fn a_decrease_respects_the_scale_down_rate(
        policy in policy_with(any_targets()),
        ticks in prop::collection::vec(tick(), 1..150),
    ) {
        for (i, (s, d)) in run(&policy, &ticks).iter().enumerate() {
            if d.desired < s.ready && d.driver != driver::IDLE {
                let floor = down_floor(s.ready, policy.max_scale_down_rate).min(policy.max);
                prop_assert!(
                    d.desired >= floor,
                    "tick {}: {} ready → {} below {}: {}", i, s.ready, d.desired, floor, d.reason
                );
            }
        }
    }

    #[test]
    fn an_increase_respects_the_scale_up_rate_outside_panic(
        policy in policy_with(any_targets()),
        ticks in prop::collection::vec(tick(), 1..150),
    ) {
        for (i, (s, d)) in run(&policy, &ticks).iter().enumerate() {
            if s.ready >= 1 && !d.panicking {
                let cap = (f64::from(s.ready) * policy.max_scale_up_rate).ceil() as u32;
                prop_assert!(
                    d.desired <= cap.max(policy.min),
                    "tick {}: {} ready → {} above {}: {}", i, s.ready, d.desired, cap, d.reason
                );
            }
        }
    }

    #[test]
    fn constant_load_converges_and_stays(
        policy in policy_with(Just(Targets::default())),
        concurrency in prop::option::of(load_for_need()),
        rps in prop::option::of(load_for_need()),
        initial_ready in 0u32..35,
    ) {
        let mut policy = policy;
        policy.stable_window = policy.stable_window.max(Duration::from_secs(20));
        // A rate of 1 never scales down: nothing to converge to from above.
        policy.max_scale_down_rate = policy.max_scale_down_rate.max(1.5);
        policy.targets = Targets {
            concurrency: concurrency.map(|(_, target, _)| f64::from(target)),
            requests_per_second: rps.map(|(_, target, _)| f64::from(target)),
            ..Targets::default()
        };
        // Without targets, concurrency 100 applies.
        let (load, need) = match concurrency {
            Some((need, _, load)) => (load, need),
            None if rps.is_none() => (437, 5),
            None => (3, 0),
        };
        let (requests, need) = match rps {
            Some((rps_need, _, requests)) => (requests, need.max(rps_need)),
            None => (10, need),
        };
        let expected = need.max(1).clamp(policy.min, policy.max);

        let mut autoscaler = Autoscaler::new(policy.clone());
        let window = policy.stable_window.as_secs();
        let mut ready = initial_ready;
        for t in 0..3 * window {
            let d = autoscaler.observe(Sample {
                now: Duration::from_secs(t),
                ready,
                concurrency: f64::from(load),
                in_flight: load,
                requests: u64::from(requests),
                ..Sample::default()
            });
            if t >= window {
                prop_assert_eq!(d.desired, expected, "t = {}: {}", t, d.reason);
            }
            ready = d.desired;
        }
    }

    #[test]
    fn panic_lasts_a_stable_window_after_entry(
        policy in policy_with(any_targets()),
        ticks in prop::collection::vec(tick(), 1..150),
    ) {
        let decisions = run(&policy, &ticks);
        for (i, (entered, d)) in decisions.iter().enumerate() {
            // Entering panic means the condition held at that sample.
            let entry = d.panicking && (i == 0 || !decisions[i - 1].1.panicking);
            if !entry {
                continue;
            }
            for (later, after) in &decisions[i + 1..] {
                if later.now < entered.now
                    || later.now - entered.now >= policy.stable_window
                    || after.driver == driver::IDLE
                {
                    break;
                }
                prop_assert!(
                    after.panicking,
                    "panic left {:?} after it held: {}", later.now - entered.now, after.reason
                );
            }
        }
    }

    #[test]
    fn a_step_to_panic_threshold_panics_within_the_panic_window(
        policy in policy_with(Just(Targets::default())),
        target in 1u32..100,
        ready in 1u32..10,
        base in 0u32..500,
        factor in prop_oneof![Just(1.0), 1.0..3.0f64],
    ) {
        let mut policy = policy;
        policy.targets = Targets { concurrency: Some(f64::from(target)), ..Targets::default() };
        let mut autoscaler = Autoscaler::new(policy.clone());
        let sample = |t: u64, load: u32| Sample {
            now: Duration::from_secs(t),
            ready,
            concurrency: f64::from(load),
            in_flight: load,
            requests: u64::from(load),
            ..Sample::default()
        };
        for t in 0..30 {
            autoscaler.observe(sample(t, base));
        }
        // At least `panic_threshold` × the ready capacity, held while the
        // new instances start (ready stays put).
        let capacity = f64::from(ready) * f64::from(target);
        let step = (capacity * policy.panic_threshold * factor).ceil() as u32;
        let window = policy.panic_window.as_secs().max(1);
        let panicked = (30..30 + window).any(|t| autoscaler.observe(sample(t, step)).panicking);
        prop_assert!(panicked, "no panic within {}s of a step to {} on {} ready", window, step, ready);
    }

    #[test]
    fn history_stays_within_the_stable_window(
        tick_ms in 1u64..3000,
        stable in 1u64..300,
        ticks in 1usize..600,
    ) {
        let mut policy = Policy::new(1, 10, Targets::default(), Duration::from_secs(300));
        policy.stable_window = Duration::from_secs(stable);
        let mut autoscaler = Autoscaler::new(policy);
        // Samples less than the window old: ceil(window / tick).
        let bound = (stable * 1000).div_ceil(tick_ms) as usize;
        for i in 0..ticks {
            autoscaler.observe(Sample {
                now: Duration::from_millis(i as u64 * tick_ms),
                ready: 1,
                ..Sample::default()
            });
            prop_assert!(autoscaler.history_len() <= bound.min(MAX_SAMPLES));
            prop_assert!(autoscaler.history_len() <= i + 1);
        }
    }
}

#[test]
fn history_is_capped_when_ticks_are_fast() {
    let mut autoscaler = Autoscaler::new(Policy::new(
        1,
        10,
        Targets::default(),
        Duration::from_secs(300),
    ));
    for i in 0..(MAX_SAMPLES as u64 + 500) {
        autoscaler.observe(Sample {
            now: Duration::from_millis(i),
            ready: 1,
            ..Sample::default()
        });
    }
    assert_eq!(autoscaler.history_len(), MAX_SAMPLES);
}
