//! What the autoscaler decided after a sample, and why.

use crate::window::Averages;

/// The decision after a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Instances the service should have.
    pub desired: u32,
    /// Whether the autoscaler is in panic mode after this sample.
    pub panicking: bool,
    /// What decided, one of the [`driver`] names: the target that needed
    /// the most, or the rule that overrode it.
    pub driver: &'static str,
    /// One line for humans naming the inputs, used verbatim in `bora
    /// events`, e.g. `concurrency 43.1 (avg over 60s) / target 20 per
    /// instance → 3 instances`. Rules that changed the number follow after
    /// `; `, e.g. `…→ 1 instance; raised to min 2`.
    pub reason: String,
    /// The inputs averaged over the stable window.
    pub stable: Averages,
    /// The inputs averaged over the panic window.
    pub panic: Averages,
}

/// The values of [`Decision::driver`].
pub mod driver {
    /// The concurrency target needed the most.
    pub const CONCURRENCY: &str = "concurrency";
    /// The requests-per-second target needed the most.
    pub const REQUESTS_PER_SECOND: &str = "requests_per_second";
    /// The CPU target needed the most.
    pub const CPU: &str = "cpu";
    /// The memory target needed the most.
    pub const MEMORY: &str = "memory";
    /// The p95-latency target needed the most.
    pub const P95_LATENCY: &str = "p95_latency";
    /// Panic mode kept the previous, larger desired count (no scale-down
    /// while panicking).
    pub const PANIC: &str = "panic";
    /// The scale-down limit kept more instances than the targets need.
    pub const SCALE_DOWN_RATE: &str = "max_scale_down_rate";
    /// The scale-up limit allowed fewer instances than the targets need.
    pub const SCALE_UP_RATE: &str = "max_scale_up_rate";
    /// Raised to 1 because requests are waiting, in flight or arriving.
    pub const DEMAND: &str = "demand";
    /// Kept 1 instance because the service has not been idle for
    /// `scale_to_zero_after` yet.
    pub const WARM: &str = "warm";
    /// Idle for `scale_to_zero_after`: down to zero.
    pub const IDLE: &str = "idle";
    /// Raised to the policy's `min`.
    pub const MIN: &str = "min";
    /// Capped at the policy's `max`.
    pub const MAX: &str = "max";
    /// Too little data (the first sample, or none after a gap longer than
    /// the stable window, or no measurement for any target): the ready
    /// count is kept.
    pub const NO_DATA: &str = "no data";
}

/// A decision being made: the number, who set it, and the reason so far.
#[derive(Debug)]
pub(crate) struct Draft {
    pub(crate) desired: u32,
    pub(crate) driver: &'static str,
    reason: String,
}

impl Draft {
    pub(crate) fn new(desired: u32, driver: &'static str, reason: String) -> Self {
        Self {
            desired,
            driver,
            reason,
        }
    }

    /// A rule changed the number: record it, and why.
    pub(crate) fn adjust(&mut self, desired: u32, driver: &'static str, why: &str) {
        self.desired = desired;
        self.driver = driver;
        self.reason.push_str("; ");
        self.reason.push_str(why);
    }

    pub(crate) fn finish(self, panicking: bool, stable: Averages, panic: Averages) -> Decision {
        Decision {
            desired: self.desired,
            panicking,
            driver: self.driver,
            reason: self.reason,
            stable,
            panic,
        }
    }
}
