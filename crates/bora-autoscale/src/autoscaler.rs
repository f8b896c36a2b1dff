//! The autoscaler for one service: samples in, decisions out.

use std::time::Duration;

use crate::decision::{Decision, Draft, driver};
use crate::need;
use crate::policy::Policy;
use crate::text;
use crate::window::{Averages, History, Sample};

/// Decides how many instances one service needs, one sample at a time.
///
/// Holds the policy, the recent samples (at most a stable window of them,
/// and at most [`MAX_SAMPLES`](crate::MAX_SAMPLES)), the panic state and
/// the last decision. See the [crate docs](crate) for the rules.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    policy: Policy,
    history: History,
    panic: Option<Panic>,
    last: Option<Decision>,
}

/// Panic mode, entered on a spike and left a stable window after the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Panic {
    /// When the panic condition last held.
    last_over: Duration,
}

impl Autoscaler {
    /// An autoscaler with no history: its first decision keeps the ready
    /// count (driver [`driver::NO_DATA`]).
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            history: History::default(),
            panic: None,
            last: None,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Replaces the policy (a redeploy changed the spec), keeping the
    /// history, the panic state and the last decision: the next sample
    /// is judged by the new policy over the old samples.
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// The decision after the previous sample.
    pub fn last(&self) -> Option<&Decision> {
        self.last.as_ref()
    }

    /// Whether the autoscaler is in panic mode.
    pub fn panicking(&self) -> bool {
        self.panic.is_some()
    }

    /// How many samples the history holds now.
    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    /// Records `sample` and decides how many instances the service needs.
    pub fn observe(&mut self, sample: Sample) -> Decision {
        let now = self.record(&sample);
        let stable_window = self.policy.stable_window();
        self.history.trim(now, stable_window);
        let (stable, stable_count) = self.history.average(now, stable_window);
        let (panic, _) = self.history.average(now, self.policy.panic_window());
        let previous = self.last.as_ref().map(|d| d.desired);

        let draft = if self.is_idle(&sample) {
            self.panic = None;
            Draft::new(
                0,
                driver::IDLE,
                format!(
                    "idle for {} ≥ scale_to_zero_after {} → 0",
                    text::duration(sample.idle_for),
                    text::duration(self.policy.scale_to_zero_after),
                ),
            )
        } else {
            let mut draft = if stable_count < 2 {
                self.hold(&sample, now, previous)
            } else {
                self.scale(&sample, now, &stable, &panic, previous)
            };
            self.bound(&mut draft, &sample, previous);
            draft
        };
        let decision = draft.finish(self.panic.is_some(), stable, panic);
        self.last = Some(decision.clone());
        decision
    }

    /// Adds `sample` to the history and returns the time to decide at.
    ///
    /// A sample at the time of the newest one is not recorded; one before
    /// it means the caller's clock restarted: the history is dropped, and
    /// a panic in progress restarts its stable window on the new clock.
    fn record(&mut self, sample: &Sample) -> Duration {
        match self.history.latest() {
            Some(latest) if sample.now == latest => latest,
            Some(latest) if sample.now < latest => {
                self.history.clear();
                if let Some(panic) = &mut self.panic {
                    panic.last_over = sample.now;
                }
                self.history.push(sample);
                sample.now
            }
            _ => {
                self.history.push(sample);
                sample.now
            }
        }
    }

    /// The scale-to-zero rule: only with `min: 0`, after
    /// `scale_to_zero_after` of idleness, and with nobody asking.
    fn is_idle(&self, sample: &Sample) -> bool {
        self.policy.min == 0
            && sample.idle_for >= self.policy.scale_to_zero_after
            && !sample.has_demand()
    }

    /// Leaves panic once a full stable window has passed since the panic
    /// condition last held.
    fn expire_panic(&mut self, now: Duration) {
        if let Some(panic) = self.panic
            && now.saturating_sub(panic.last_over) >= self.policy.stable_window()
        {
            self.panic = None;
        }
    }

    /// Too few samples to average: keep the ready count (and, while
    /// panicking, the previous decision if larger).
    fn hold(&mut self, sample: &Sample, now: Duration, previous: Option<u32>) -> Draft {
        self.expire_panic(now);
        let mut draft = Draft::new(
            sample.ready,
            driver::NO_DATA,
            format!(
                "no data yet (first sample within {}) → keeping {} ready",
                text::duration(self.policy.stable_window()),
                sample.ready,
            ),
        );
        if self.panic.is_some() {
            hold_while_panicking(&mut draft, previous);
        }
        draft
    }

    /// The KPA proper: panic on the panic window, else follow the stable
    /// window within the scale-down and scale-up rates.
    fn scale(
        &mut self,
        sample: &Sample,
        now: Duration,
        stable: &Averages,
        panic: &Averages,
        previous: Option<u32>,
    ) -> Draft {
        let targets = self.policy.targets.effective();
        let ready = sample.ready;
        let threshold = self.policy.panic_threshold();
        let panic_need = need::largest(&targets, panic, ready);
        let over = if ready == 0 {
            sample.has_demand()
        } else {
            panic_need
                .as_ref()
                .is_some_and(|n| f64::from(n.instances) >= threshold * f64::from(ready))
        };
        if over {
            self.panic = Some(Panic { last_over: now });
        } else {
            self.expire_panic(now);
        }

        let policy = &self.policy;
        let Some(state) = self.panic else {
            let stable_window = policy.stable_window();
            let Some(need) = need::largest(&targets, stable, ready) else {
                return Draft::new(
                    ready,
                    driver::NO_DATA,
                    format!(
                        "no data for the {} target over {} → keeping {ready} ready",
                        target_names(&targets),
                        text::duration(stable_window),
                    ),
                );
            };
            let mut draft =
                Draft::new(need.instances, need.metric, need.stable_text(stable_window));
            limit_rate(&mut draft, policy, ready);
            return draft;
        };

        let panic_window = policy.panic_window();
        let mut draft = match panic_need {
            Some(need) => {
                let needs = need.panic_text(panic_window);
                let reason = if !over {
                    format!(
                        "panic (last spike {} ago, ends after {} without one): {needs}",
                        text::duration(now.saturating_sub(state.last_over)),
                        text::duration(policy.stable_window()),
                    )
                } else if ready == 0 {
                    format!("panic: {needs}, and none is ready")
                } else {
                    format!(
                        "panic: {needs}, ≥ {}× the {ready} ready",
                        text::number(threshold)
                    )
                };
                Draft::new(need.instances, need.metric, reason)
            }
            None if over => Draft::new(
                0,
                driver::PANIC,
                "panic: requests are waiting and none is ready".to_owned(),
            ),
            None => Draft::new(
                0,
                driver::PANIC,
                format!(
                    "panic (last spike {} ago): no data for the {} target over {}",
                    text::duration(now.saturating_sub(state.last_over)),
                    target_names(&targets),
                    text::duration(panic_window),
                ),
            ),
        };
        limit_rate(&mut draft, policy, ready);
        hold_while_panicking(&mut draft, previous);
        draft
    }

    /// The bounds every decision but scale-to-zero obeys: at least `min`;
    /// with `min: 0`, at least 1 while anyone asks or until the service has
    /// been idle long enough; never more than `max`.
    fn bound(&self, draft: &mut Draft, sample: &Sample, previous: Option<u32>) {
        let policy = &self.policy;
        if draft.desired < policy.min {
            draft.adjust(
                policy.min,
                driver::MIN,
                &format!("raised to min {}", policy.min),
            );
        } else if draft.desired == 0 {
            if sample.has_demand() {
                draft.adjust(
                    1,
                    driver::DEMAND,
                    &format!("raised to 1: {}", demand(sample)),
                );
            } else if sample.ready > 0 || previous.is_some_and(|p| p > 0) {
                draft.adjust(
                    1,
                    driver::WARM,
                    &format!(
                        "keeping 1 until idle for {} (idle for {})",
                        text::duration(policy.scale_to_zero_after),
                        text::duration(sample.idle_for),
                    ),
                );
            }
        }
        if draft.desired > policy.max {
            draft.adjust(
                policy.max,
                driver::MAX,
                &format!("capped at max {}", policy.max),
            );
        }
    }
}

/// Keeps the scale-up and scale-down rates.
fn limit_rate(draft: &mut Draft, policy: &Policy, ready: u32) {
    let cap = policy.scale_up_cap(ready);
    let floor = policy.scale_down_floor(ready);
    if draft.desired > cap {
        draft.adjust(
            cap,
            driver::SCALE_UP_RATE,
            &format!(
                "scale-up limited to {cap} (max_scale_up_rate {}, {ready} ready)",
                text::number(policy.max_scale_up_rate),
            ),
        );
    } else if draft.desired < floor {
        draft.adjust(
            floor,
            driver::SCALE_DOWN_RATE,
            &format!(
                "scale-down limited to {floor} (max_scale_down_rate {}, {ready} ready)",
                text::number(policy.max_scale_down_rate),
            ),
        );
    }
}

/// No scale-down while panicking: keep the previous decision if larger.
fn hold_while_panicking(draft: &mut Draft, previous: Option<u32>) {
    if let Some(previous) = previous
        && previous > draft.desired
    {
        draft.adjust(
            previous,
            driver::PANIC,
            &format!("holding {previous}: no scale-down while panicking"),
        );
    }
}

/// `3 held, 2 in flight`: what is asking, for a reason.
fn demand(sample: &Sample) -> String {
    let mut parts = Vec::new();
    if sample.held > 0 {
        parts.push(format!("{} held", sample.held));
    }
    if sample.in_flight > 0 {
        parts.push(format!("{} in flight", sample.in_flight));
    }
    if sample.requests > 0 {
        parts.push(format!("{} arrived", sample.requests));
    }
    if parts.is_empty() {
        parts.push(format!("concurrency {:.1}", sample.concurrency));
    }
    parts.join(", ")
}

/// `cpu`, `cpu/memory`: the targets set, for a reason.
fn target_names(targets: &crate::Targets) -> String {
    let names = [
        (targets.concurrency.is_some(), driver::CONCURRENCY),
        (
            targets.requests_per_second.is_some(),
            driver::REQUESTS_PER_SECOND,
        ),
        (targets.cpu.is_some(), driver::CPU),
        (targets.memory.is_some(), driver::MEMORY),
        (targets.p95_latency.is_some(), driver::P95_LATENCY),
    ];
    names
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Targets;

    const IDLE_AFTER: Duration = Duration::from_secs(300);

    fn concurrency(target: f64) -> Targets {
        Targets {
            concurrency: Some(target),
            ..Targets::default()
        }
    }

    fn autoscaler(min: u32, max: u32, targets: Targets) -> Autoscaler {
        Autoscaler::new(Policy::new(min, max, targets, IDLE_AFTER))
    }

    /// A busy service at second `t`: `load` requests in flight throughout.
    fn busy(t: u64, ready: u32, load: f64) -> Sample {
        Sample {
            now: Duration::from_secs(t),
            ready,
            concurrency: load,
            in_flight: load.round() as u32,
            requests: load.round() as u64,
            ..Sample::default()
        }
    }

    /// A service nobody has asked anything for `idle_for`, at second `t`.
    fn quiet(t: u64, ready: u32, idle_for: Duration) -> Sample {
        Sample {
            now: Duration::from_secs(t),
            ready,
            idle_for,
            ..Sample::default()
        }
    }

    /// Feeds `busy(t, ready, load)` for each `t` in `ticks`, returning the
    /// last decision.
    fn steady(a: &mut Autoscaler, ticks: std::ops::Range<u64>, ready: u32, load: f64) -> Decision {
        let mut last = None;
        for t in ticks {
            last = Some(a.observe(busy(t, ready, load)));
        }
        last.expect("at least one tick")
    }

    #[test]
    fn the_first_sample_keeps_the_ready_count() {
        let mut a = autoscaler(1, 10, concurrency(20.0));
        let d = a.observe(busy(0, 4, 500.0));
        assert_eq!((d.desired, d.driver, d.panicking), (4, "no data", false));
        assert_eq!(
            d.reason,
            "no data yet (first sample within 60s) → keeping 4 ready"
        );
        assert_eq!(a.last(), Some(&d));

        let d = autoscaler(1, 10, concurrency(20.0)).observe(busy(0, 20, 0.0));
        assert_eq!((d.desired, d.driver), (10, "max"));
        assert_eq!(
            d.reason,
            "no data yet (first sample within 60s) → keeping 20 ready; capped at max 10"
        );

        let d = autoscaler(2, 10, concurrency(20.0)).observe(busy(0, 0, 0.0));
        assert_eq!((d.desired, d.driver), (2, "min"));
    }

    #[test]
    fn the_first_sample_wakes_a_service_with_held_requests() {
        let mut a = autoscaler(0, 10, concurrency(20.0));
        let d = a.observe(Sample {
            held: 3,
            ..quiet(0, 0, Duration::ZERO)
        });
        assert_eq!((d.desired, d.driver), (1, "demand"));
        assert_eq!(
            d.reason,
            "no data yet (first sample within 60s) → keeping 0 ready; raised to 1: 3 held"
        );
    }

    #[test]
    fn concurrency_over_the_stable_window_decides() {
        let mut a = autoscaler(1, 10, concurrency(20.0));
        let d = steady(&mut a, 0..60, 3, 43.1);
        assert_eq!(
            (d.desired, d.driver, d.panicking),
            (3, "concurrency", false)
        );
        assert_eq!(
            d.reason,
            "concurrency 43.1 (avg over 60s) / target 20 per instance → 3 instances"
        );
        assert!((d.stable.concurrency - 43.1).abs() < 1e-9);
        assert!((d.panic.concurrency - 43.1).abs() < 1e-9);
    }

    #[test]
    fn an_exact_multiple_of_the_target_is_not_rounded_up() {
        let mut a = autoscaler(1, 10, concurrency(20.0));
        assert_eq!(steady(&mut a, 0..60, 2, 40.0).desired, 2);
    }

    #[test]
    fn no_target_means_concurrency_100() {
        let mut a = autoscaler(1, 10, Targets::default());
        let d = steady(&mut a, 0..10, 3, 250.0);
        assert_eq!((d.desired, d.driver), (3, "concurrency"));
        assert!(
            d.reason.contains("/ target 100 per instance"),
            "{}",
            d.reason
        );
    }

    #[test]
    fn requests_per_second_decides() {
        let targets = Targets {
            requests_per_second: Some(10.0),
            ..Targets::default()
        };
        let mut a = autoscaler(1, 10, targets);
        // 30 requests a second, 10 per instance.
        let d = steady(&mut a, 0..10, 3, 30.0);
        assert_eq!((d.desired, d.driver), (3, "requests_per_second"));
        assert_eq!(d.stable.requests_per_second, 30.0);
    }

    #[test]
    fn cpu_decides_per_ready_instance() {
        let targets = Targets {
            cpu: Some(0.6),
            ..Targets::default()
        };
        let mut a = autoscaler(1, 10, targets);
        let mut d = None;
        for t in 0..10 {
            d = Some(a.observe(Sample {
                cpu: Some(0.9),
                ..busy(t, 2, 5.0)
            }));
        }
        // ceil(2 × 0.9 / 0.6) = 3.
        let d = d.unwrap();
        assert_eq!((d.desired, d.driver), (3, "cpu"));
        assert_eq!(
            d.reason,
            "cpu 90% of limit (avg over 60s) × 2 ready / target 60% → 3 instances"
        );
    }

    #[test]
    fn the_largest_need_over_all_targets_wins() {
        let targets = Targets {
            concurrency: Some(20.0),
            memory: Some(0.5),
            ..Targets::default()
        };
        let mut a = autoscaler(1, 10, targets);
        let mut d = None;
        for t in 0..10 {
            d = Some(a.observe(Sample {
                memory: Some(0.9),
                ..busy(t, 3, 30.0)
            }));
        }
        // Concurrency needs ceil(30 / 20) = 2, memory ceil(3 × 0.9 / 0.5) = 6.
        let d = d.unwrap();
        assert_eq!((d.desired, d.driver), (6, "memory"));
    }

    #[test]
    fn without_data_for_any_target_the_ready_count_stays() {
        let targets = Targets {
            cpu: Some(0.7),
            ..Targets::default()
        };
        let mut a = autoscaler(1, 10, targets);
        let d = steady(&mut a, 0..10, 3, 5.0);
        assert_eq!((d.desired, d.driver), (3, "no data"));
        assert_eq!(
            d.reason,
            "no data for the cpu target over 60s → keeping 3 ready"
        );
    }

    #[test]
    fn a_spike_panics_at_once() {
        let mut a = autoscaler(1, 10, concurrency(20.0));
        a.observe(busy(0, 2, 96.0));
        let d = a.observe(busy(1, 2, 96.0));
        // ceil(96 / 20) = 5 ≥ 2 × 2 ready.
        assert_eq!((d.desired, d.driver, d.panicking), (5, "concurrency", true));
        assert_eq!(
            d.reason,
            "panic: concurrency 96.0 over 6s / target 20 per instance needs 5 instances, \
             ≥ 2× the 2 ready"
        );
        assert!(a.panicking());
    }

    #[test]
    fn a_step_panics_once_the_panic_window_sees_it() {
        let mut a = autoscaler(1, 10, concurrency(20.0));
        // 20 in flight on 2 ready: no panic.
        assert!(!steady(&mut a, 0..30, 2, 20.0).panicking);
        // Then 96: the 6 s window averages (k × 96 + (6 - k) × 20) / 6 after
        // k ticks, needing 2, 3, 3, then 4 = 2 × 2 ready at k = 4.
        let panicking: Vec<bool> = (30..36)
            .map(|t| a.observe(busy(t, 2, 96.0)).panicking)
            .collect();
        assert_eq!(panicking, [false, false, false, true, true, true]);
    }

    #[test]
    fn panic_never_scales_down_and_ends_a_stable_window_after_the_last_spike() {
        let mut a = autoscaler(1, 10, concurrency(20.0));
        a.observe(busy(0, 2, 96.0));
        assert_eq!(a.observe(busy(1, 2, 96.0)).desired, 5);
        // The load stops; 5 are ready now.
        for t in 2..=60 {
            let d = a.observe(busy(t, 5, 0.0));
            assert!(d.panicking, "t = {t}");
            assert_eq!((d.desired, d.driver), (5, "panic"), "t = {t}");
        }
        let d = a.observe(busy(60, 5, 0.0)); // same instant: still panicking
        assert!(d.panicking);
        assert_eq!(
            a.last().unwrap().reason,
            "panic (last spike 59s ago, ends after 60s without one): concurrency 0.0 over 6s \
             / target 20 per instance needs 0 instances; scale-down limited to 3 \
             (max_scale_down_rate 2, 5 ready); holding 5: no scale-down while panicking"
        );
        // 60 s after the last spike (at 1 s), panic is over and scale-down
        // resumes, gradually.
        let d = a.observe(busy(61, 5, 0.0));
        assert_eq!(
            (d.desired, d.driver, d.panicking),
            (3, "max_scale_down_rate", false)
        );
        assert!(!a.panicking());
    }

    #[test]
    fn a_spike_within_panic_extends_it() {
        let mut a = autoscaler(1, 10, concurrency(20.0));
        steady(&mut a, 0..2, 2, 96.0);
        steady(&mut a, 2..40, 5, 0.0);
        // Another spike at 40 s: 6 s of 400 need 20, ≥ 2 × 5.
        let d = steady(&mut a, 40..46, 5, 400.0);
        assert!(d.panicking);
        // Panic now lasts until 60 s after the last spike, not the first.
        let d = steady(&mut a, 46..105, 10, 0.0);
        assert!(d.panicking);
        let d = a.observe(busy(105, 10, 0.0));
        assert!(!d.panicking);
    }

    #[test]
    fn scale_down_is_gradual() {
        let mut a = autoscaler(1, 20, concurrency(20.0));
        assert_eq!(a.observe(busy(0, 10, 0.0)).desired, 10); // no data
        let d = a.observe(busy(1, 10, 0.0));
        assert_eq!((d.desired, d.driver), (5, "max_scale_down_rate"));
        assert_eq!(
            d.reason,
            "concurrency 0.0 (avg over 60s) / target 20 per instance → 0 instances; \
             scale-down limited to 5 (max_scale_down_rate 2, 10 ready)"
        );
        let mut ready = d.desired;
        let mut seen = Vec::new();
        for t in 2..7 {
            ready = a.observe(busy(t, ready, 0.0)).desired;
            seen.push(ready);
        }
        assert_eq!(seen, [3, 2, 1, 1, 1]);
        // One ready instance is never removed by the rate (only by idling).
        assert_eq!(a.last().unwrap().driver, "max_scale_down_rate");
    }

    #[test]
    fn scale_up_is_limited_by_the_up_rate() {
        let mut policy = Policy::new(1, 1000, concurrency(10.0), IDLE_AFTER);
        policy.max_scale_up_rate = 2.0;
        let mut a = Autoscaler::new(policy.clone());
        // 1000 in flight need 100; 3 ready may become at most 6, panic or not.
        let d = steady(&mut a, 0..5, 3, 1000.0);
        assert!(d.panicking);
        assert_eq!((d.desired, d.driver), (6, "max_scale_up_rate"));
        assert!(
            d.reason
                .ends_with("; scale-up limited to 6 (max_scale_up_rate 2, 3 ready)"),
            "{}",
            d.reason
        );

        policy.panic_threshold = 1000.0;
        let mut a = Autoscaler::new(policy);
        let d = steady(&mut a, 0..5, 3, 1000.0);
        assert!(!d.panicking);
        assert_eq!((d.desired, d.driver), (6, "max_scale_up_rate"));
    }

    #[test]
    fn idle_long_enough_goes_to_zero() {
        let mut a = autoscaler(0, 10, concurrency(20.0));
        let d = a.observe(quiet(0, 1, IDLE_AFTER));
        assert_eq!((d.desired, d.driver), (0, "idle"));
        assert_eq!(d.reason, "idle for 5m ≥ scale_to_zero_after 5m → 0");
    }

    #[test]
    fn the_warm_instance_stays_until_the_idle_period_passes() {
        let mut a = autoscaler(0, 10, concurrency(20.0));
        a.observe(quiet(0, 1, Duration::from_secs(200)));
        // No load: the targets need 0, but one ready instance is never
        // removed by the scale-down rate.
        let d = a.observe(quiet(1, 1, Duration::from_secs(299)));
        assert_eq!((d.desired, d.driver), (1, "max_scale_down_rate"));
        // Even if the instance went away meanwhile: the last decision was 1.
        let d = a.observe(quiet(2, 0, Duration::from_secs(299)));
        assert_eq!((d.desired, d.driver), (1, "warm"));
        assert_eq!(
            d.reason,
            "concurrency 0.0 (avg over 60s) / target 20 per instance → 0 instances; \
             keeping 1 until idle for 5m (idle for 4m59s)"
        );
        let d = a.observe(quiet(3, 1, Duration::from_secs(300)));
        assert_eq!((d.desired, d.driver), (0, "idle"));
    }

    #[test]
    fn idle_but_asked_is_not_zero() {
        let mut a = autoscaler(0, 10, concurrency(20.0));
        for (t, sample) in [
            Sample {
                held: 1,
                ..quiet(0, 0, Duration::from_secs(900))
            },
            Sample {
                in_flight: 1,
                ..quiet(1, 1, Duration::from_secs(900))
            },
            Sample {
                requests: 1,
                ..quiet(2, 1, Duration::from_secs(900))
            },
        ]
        .into_iter()
        .enumerate()
        {
            let d = a.observe(sample);
            assert!(d.desired >= 1, "sample {t}: {d:?}");
        }
    }

    #[test]
    fn idle_with_min_above_zero_keeps_min() {
        let mut a = autoscaler(2, 10, concurrency(20.0));
        let d = a.observe(quiet(0, 2, Duration::from_secs(3600)));
        assert_eq!((d.desired, d.driver), (2, "no data"));
        let d = a.observe(quiet(1, 2, Duration::from_secs(3600)));
        assert_eq!((d.desired, d.driver), (2, "min"));
    }

    #[test]
    fn an_asleep_service_nobody_asks_for_stays_asleep() {
        // After a restart the controller may not know how long the service
        // has been idle: with nothing ready and nobody asking, 0 stays 0.
        let mut a = autoscaler(0, 10, concurrency(20.0));
        for t in 0..5 {
            let d = a.observe(quiet(t, 0, Duration::from_secs(t)));
            assert_eq!(d.desired, 0, "t = {t}");
        }
    }

    #[test]
    fn waking_from_zero_panics_and_ensures_the_need() {
        let mut a = autoscaler(0, 10, concurrency(10.0));
        assert_eq!(a.observe(quiet(0, 0, Duration::from_secs(900))).desired, 0);
        let held = |t, ready| Sample {
            held: 35,
            concurrency: 35.0,
            requests: 35,
            ..quiet(t, ready, Duration::ZERO)
        };
        // The 6 s window holds 0 and 35: 17.5 needs 2.
        let d = a.observe(held(1, 0));
        assert_eq!((d.desired, d.driver, d.panicking), (2, "concurrency", true));
        assert_eq!(
            d.reason,
            "panic: concurrency 17.5 over 6s / target 10 per instance needs 2 instances, \
             and none is ready"
        );
        // (0 + 35 + 35) / 3 = 23.3 needs 3.
        assert_eq!(a.observe(held(2, 0)).desired, 3);
        // Instances come up; the need falls as the window fills with
        // served requests, but panic holds 3.
        let d = a.observe(busy(3, 3, 10.0));
        assert_eq!((d.desired, d.panicking), (3, true));
    }

    #[test]
    fn min_and_max_bound_every_decision() {
        let mut a = autoscaler(2, 3, concurrency(20.0));
        let d = steady(&mut a, 0..10, 2, 10.0);
        assert_eq!((d.desired, d.driver), (2, "min"));
        assert!(
            d.reason.ends_with("→ 1 instance; raised to min 2"),
            "{}",
            d.reason
        );
        let d = steady(&mut a, 10..80, 3, 200.0);
        assert_eq!((d.desired, d.driver), (3, "max"));
        assert!(d.reason.ends_with("; capped at max 3"), "{}", d.reason);
    }

    #[test]
    fn a_repeated_instant_is_not_recorded_but_still_counts() {
        let mut a = autoscaler(0, 10, concurrency(20.0));
        a.observe(quiet(0, 0, Duration::from_secs(900)));
        a.observe(quiet(1, 0, Duration::from_secs(901)));
        assert_eq!(a.history_len(), 2);
        let d = a.observe(Sample {
            held: 2,
            ..quiet(1, 0, Duration::ZERO)
        });
        assert_eq!(a.history_len(), 2);
        assert!(d.desired >= 1);
    }

    #[test]
    fn a_clock_going_back_restarts_the_history() {
        let mut a = autoscaler(1, 10, concurrency(20.0));
        steady(&mut a, 10..20, 2, 10.0);
        let d = a.observe(busy(3, 4, 10.0));
        assert_eq!(a.history_len(), 1);
        assert_eq!((d.desired, d.driver), (4, "no data"));
    }

    #[test]
    fn a_gap_longer_than_the_stable_window_means_no_data() {
        let mut a = autoscaler(1, 10, concurrency(20.0));
        steady(&mut a, 0..10, 2, 10.0);
        let d = a.observe(busy(100, 4, 10.0));
        assert_eq!((d.desired, d.driver), (4, "no data"));
        assert_eq!(a.history_len(), 1);
    }

    #[test]
    fn set_policy_keeps_the_history() {
        let mut a = autoscaler(1, 10, concurrency(100.0));
        assert_eq!(steady(&mut a, 0..30, 1, 50.0).desired, 1);
        a.set_policy(Policy::new(1, 10, concurrency(10.0), IDLE_AFTER));
        assert_eq!(a.policy().targets.concurrency, Some(10.0));
        // The 30 samples of 50 count at once: 5 needed (and 5 ≥ 2 × 1: panic).
        let d = a.observe(busy(30, 1, 50.0));
        assert_eq!(d.desired, 5);
        assert_eq!(a.history_len(), 31);
    }

    #[test]
    fn history_is_bounded_by_the_stable_window() {
        let mut a = autoscaler(1, 10, concurrency(20.0));
        steady(&mut a, 0..500, 2, 10.0);
        assert_eq!(a.history_len(), 60);
    }
}
