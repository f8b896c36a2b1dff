//! What the user asked for (`scaling:` in `bora.yaml`), plus the KPA
//! tunables, with their defaults.

use std::time::Duration;

use crate::need::ceil_ratio;

/// The concurrency target that applies when no usable target is set:
/// 100 requests in flight per instance.
pub const DEFAULT_CONCURRENCY: f64 = 100.0;
/// How far back the stable averages look.
pub const DEFAULT_STABLE_WINDOW: Duration = Duration::from_secs(60);
/// How far back the panic averages look (a tenth of the stable window).
pub const DEFAULT_PANIC_WINDOW: Duration = Duration::from_secs(6);
/// Panic when the panic window needs at least this many times the ready
/// instances.
pub const DEFAULT_PANIC_THRESHOLD: f64 = 2.0;
/// One decision keeps at least `ceil(ready / 2)` instances.
pub const DEFAULT_MAX_SCALE_DOWN_RATE: f64 = 2.0;
/// One decision asks for at most `ceil(ready × 1000)` instances.
pub const DEFAULT_MAX_SCALE_UP_RATE: f64 = 1000.0;

/// How a service scales: its bounds and targets from `bora.yaml`, plus the
/// KPA tunables (see [`Policy::new`] for the defaults).
///
/// The control plane validates a policy before it gets here (`max >=
/// max(min, 1)`, positive windows, rates of at least 1); the autoscaler
/// still copes with a bad one without panicking: it never exceeds `max`,
/// treats a zero window as the current sample alone, a NaN or non-positive
/// panic threshold as the default, and a rate below 1 as 1.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Fewest instances. 0 lets the service sleep after
    /// `scale_to_zero_after` without requests.
    pub min: u32,
    /// Most instances; a decision never exceeds it.
    pub max: u32,
    /// Per-instance targets.
    pub targets: Targets,
    /// Idle time (no request arriving, held or in flight) before a `min: 0`
    /// service may go to zero.
    pub scale_to_zero_after: Duration,
    /// Window of the stable averages, and how long panic lasts after the
    /// last spike.
    pub stable_window: Duration,
    /// Window of the panic averages.
    pub panic_window: Duration,
    /// Panic when the panic window needs `>= panic_threshold × ready`
    /// instances.
    pub panic_threshold: f64,
    /// One decision keeps at least `ceil(ready / max_scale_down_rate)`
    /// instances: it removes at most `ready - ceil(ready / rate)` (but
    /// see [`Policy::scale_down_floor`] for rates below 2).
    pub max_scale_down_rate: f64,
    /// One decision asks for at most `ceil(ready × max_scale_up_rate)`
    /// instances when `ready >= 1` (no limit from zero).
    pub max_scale_up_rate: f64,
}

impl Policy {
    /// A policy with the KPA defaults: a 60 s stable window, a 6 s panic
    /// window, panic at 2× the ready capacity, scale down by at most half
    /// and up by at most 1000× per decision.
    pub fn new(min: u32, max: u32, targets: Targets, scale_to_zero_after: Duration) -> Self {
        Self {
            min,
            max,
            targets,
            scale_to_zero_after,
            stable_window: DEFAULT_STABLE_WINDOW,
            panic_window: DEFAULT_PANIC_WINDOW,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
            max_scale_down_rate: DEFAULT_MAX_SCALE_DOWN_RATE,
            max_scale_up_rate: DEFAULT_MAX_SCALE_UP_RATE,
        }
    }

    /// The fewest instances one decision may leave when `ready` serve now:
    /// `ceil(ready / max_scale_down_rate)`, but with a rate above 1 always
    /// at least one fewer than `ready` (from 2 up), so that a rate below 2
    /// cannot get stuck: `ceil(2 / 1.5)` is 2.
    ///
    /// 10 ready at rate 2 → at least 5; 1 ready → at least 1 (only the idle
    /// rule takes the last instance away); rate 1 → never fewer.
    pub fn scale_down_floor(&self, ready: u32) -> u32 {
        let rate = self.scale_down_rate();
        let floor = ceil_ratio(f64::from(ready) / rate);
        if rate > 1.0 && ready >= 2 {
            floor.min(ready - 1)
        } else {
            floor
        }
    }

    /// The most instances one decision may ask for when `ready` serve now:
    /// `ceil(ready × max_scale_up_rate)`, unlimited from zero.
    pub fn scale_up_cap(&self, ready: u32) -> u32 {
        if ready == 0 {
            u32::MAX
        } else {
            ceil_ratio(f64::from(ready) * self.scale_up_rate()).max(ready)
        }
    }

    /// The stable window, at least a nanosecond (the current sample).
    pub(crate) fn stable_window(&self) -> Duration {
        self.stable_window.max(Duration::from_nanos(1))
    }

    /// The panic window, at least a nanosecond (the current sample).
    pub(crate) fn panic_window(&self) -> Duration {
        self.panic_window.max(Duration::from_nanos(1))
    }

    pub(crate) fn panic_threshold(&self) -> f64 {
        if self.panic_threshold > 0.0 {
            self.panic_threshold
        } else {
            DEFAULT_PANIC_THRESHOLD
        }
    }

    fn scale_down_rate(&self) -> f64 {
        rate_or(self.max_scale_down_rate, DEFAULT_MAX_SCALE_DOWN_RATE)
    }

    fn scale_up_rate(&self) -> f64 {
        rate_or(self.max_scale_up_rate, DEFAULT_MAX_SCALE_UP_RATE)
    }
}

/// A rate of at least 1; NaN falls back to `default`.
fn rate_or(rate: f64, default: f64) -> f64 {
    if rate.is_nan() {
        default
    } else {
        rate.max(1.0)
    }
}

/// Per-instance targets; any subset may be set, and the autoscaler keeps
/// all of them (desired is the largest any one needs).
///
/// A target that is not a positive finite number (or a zero latency)
/// counts as unset. When none is usable, concurrency
/// [`DEFAULT_CONCURRENCY`] (100) applies.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Targets {
    /// Requests in flight per instance.
    pub concurrency: Option<f64>,
    /// Requests per second per instance.
    pub requests_per_second: Option<f64>,
    /// Fraction of the instance's CPU limit, e.g. 0.7 (`bora.yaml` says
    /// `cpu: 70`, in percent).
    pub cpu: Option<f64>,
    /// Fraction of the instance's memory limit.
    pub memory: Option<f64>,
    /// 95th-percentile response time.
    pub p95_latency: Option<Duration>,
}

impl Targets {
    /// Whether no usable target is set (so the default applies).
    pub fn is_unset(&self) -> bool {
        let usable = self.usable();
        usable.concurrency.is_none()
            && usable.requests_per_second.is_none()
            && usable.cpu.is_none()
            && usable.memory.is_none()
            && usable.p95_latency.is_none()
    }

    /// The targets the autoscaler applies: unusable values dropped, and
    /// concurrency [`DEFAULT_CONCURRENCY`] when nothing is left.
    pub fn effective(&self) -> Targets {
        if self.is_unset() {
            Targets {
                concurrency: Some(DEFAULT_CONCURRENCY),
                ..Targets::default()
            }
        } else {
            self.usable()
        }
    }

    fn usable(&self) -> Targets {
        let positive = |x: Option<f64>| x.filter(|v| v.is_finite() && *v > 0.0);
        Targets {
            concurrency: positive(self.concurrency),
            requests_per_second: positive(self.requests_per_second),
            cpu: positive(self.cpu),
            memory: positive(self.memory),
            p95_latency: self.p95_latency.filter(|d| !d.is_zero()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_uses_the_kpa_defaults() {
        let policy = Policy::new(0, 10, Targets::default(), Duration::from_secs(300));
        assert_eq!(policy.stable_window, Duration::from_secs(60));
        assert_eq!(policy.panic_window, Duration::from_secs(6));
        assert_eq!(policy.panic_threshold, 2.0);
        assert_eq!(policy.max_scale_down_rate, 2.0);
        assert_eq!(policy.max_scale_up_rate, 1000.0);
        assert_eq!((policy.min, policy.max), (0, 10));
        assert_eq!(policy.scale_to_zero_after, Duration::from_secs(300));
    }

    #[test]
    fn no_target_means_concurrency_100() {
        assert!(Targets::default().is_unset());
        let effective = Targets::default().effective();
        assert_eq!(effective.concurrency, Some(100.0));
        assert_eq!(effective.requests_per_second, None);
    }

    #[test]
    fn unusable_targets_count_as_unset() {
        let targets = Targets {
            concurrency: Some(0.0),
            requests_per_second: Some(f64::NAN),
            cpu: Some(-0.5),
            memory: Some(f64::INFINITY),
            p95_latency: Some(Duration::ZERO),
        };
        assert!(targets.is_unset());
        assert_eq!(targets.effective().concurrency, Some(100.0));

        let cpu_only = Targets {
            cpu: Some(0.7),
            concurrency: Some(-1.0),
            ..Targets::default()
        };
        assert_eq!(
            cpu_only.effective(),
            Targets {
                cpu: Some(0.7),
                ..Targets::default()
            }
        );
    }

    #[test]
    fn scale_down_floor_halves_rounding_up() {
        let policy = Policy::new(0, 100, Targets::default(), Duration::from_secs(300));
        let floors: Vec<u32> = [0, 1, 2, 3, 10, 11]
            .map(|r| policy.scale_down_floor(r))
            .into();
        assert_eq!(floors, [0, 1, 1, 2, 5, 6]);
    }

    #[test]
    fn scale_down_floor_always_lets_one_go_with_a_rate_above_1() {
        let mut policy = Policy::new(0, 100, Targets::default(), Duration::from_secs(300));
        policy.max_scale_down_rate = 1.5;
        let floors: Vec<u32> = [1, 2, 3, 4, 9].map(|r| policy.scale_down_floor(r)).into();
        assert_eq!(floors, [1, 1, 2, 3, 6]);
        policy.max_scale_down_rate = 1.0;
        assert_eq!(policy.scale_down_floor(2), 2);
    }

    #[test]
    fn scale_up_cap_multiplies_and_is_unlimited_from_zero() {
        let mut policy = Policy::new(0, 100, Targets::default(), Duration::from_secs(300));
        policy.max_scale_up_rate = 2.5;
        assert_eq!(policy.scale_up_cap(0), u32::MAX);
        assert_eq!(policy.scale_up_cap(1), 3);
        assert_eq!(policy.scale_up_cap(4), 10);
    }

    #[test]
    fn bad_rates_fall_back_sensibly() {
        let mut policy = Policy::new(0, 100, Targets::default(), Duration::from_secs(300));
        policy.max_scale_down_rate = 0.5; // below 1: never scale down
        policy.max_scale_up_rate = f64::NAN; // default 1000
        assert_eq!(policy.scale_down_floor(8), 8);
        assert_eq!(policy.scale_up_cap(2), 2000);
        policy.max_scale_down_rate = f64::INFINITY; // no limit
        assert_eq!(policy.scale_down_floor(8), 0);
        policy.panic_threshold = f64::NAN;
        assert_eq!(policy.panic_threshold(), 2.0);
        policy.stable_window = Duration::ZERO;
        assert_eq!(policy.stable_window(), Duration::from_nanos(1));
    }
}
