//! Bora's autoscaler: how many instances a service needs, decided from its
//! recent load, after Knative's KPA (Knative Pod Autoscaler).
//!
//! Pure decision logic: no I/O, no async, no clock. The control plane
//! samples each service about once a second (router metrics, cgroup
//! usage, instance states), passes the [`Sample`] to that service's
//! [`Autoscaler::observe`], and converges the service to
//! [`Decision::desired`]. Time is the sample's `now`.
//!
//! ```
//! use std::time::Duration;
//! use bora_autoscale::{Autoscaler, Policy, Sample, Targets};
//!
//! let targets = Targets { concurrency: Some(20.0), ..Targets::default() };
//! let mut autoscaler = Autoscaler::new(Policy::new(1, 10, targets, Duration::from_secs(300)));
//! let mut decision = None;
//! for second in 0..60 {
//!     let sample = Sample {
//!         now: Duration::from_secs(second),
//!         ready: 3,
//!         concurrency: 50.0,
//!         in_flight: 50,
//!         ..Sample::default()
//!     };
//!     decision = Some(autoscaler.observe(sample));
//! }
//! let decision = decision.unwrap();
//! assert_eq!(decision.desired, 3); // ceil(50 / 20)
//! assert_eq!(
//!     decision.reason,
//!     "concurrency 50.0 (avg over 60s) / target 20 per instance → 3 instances"
//! );
//! ```
//!
//! # The rules
//!
//! Each decision applies these in order; [`Decision::driver`] names the
//! last one that changed the number and [`Decision::reason`] lists them.
//!
//! 1. **Windows.** The autoscaler keeps the samples of the last stable
//!    window (at most [`MAX_SAMPLES`]) and averages two windows of them:
//!    the stable window (default 60 s) and the panic window (default 6 s).
//!    A window at time `now` holds the samples less than its length old.
//!    Concurrency, CPU and memory are means over its samples (CPU and
//!    memory over the samples that have them); requests per second is the
//!    requests of its samples divided by the time they cover, each sample
//!    covering the time since the previous one (the very first sample is
//!    assumed to cover the tick the second one shows, or
//!    [`FIRST_INTERVAL`] while alone); p95 latency is the mean of the
//!    samples' p95, weighted by their requests. A panic window longer than
//!    the stable window is as long as the stable window.
//! 2. **Scale to zero.** With `min: 0`, `idle_for >=
//!    scale_to_zero_after` and nobody asking (nothing held, in flight or
//!    arriving, and zero concurrency over the last tick), desired is 0
//!    (driver `idle`) whatever the targets say, and panic mode ends. No
//!    other rule applies to such a sample.
//! 3. **No data.** With fewer than two samples in the stable window (the
//!    first sample, or the first after a gap of a stable window or more),
//!    desired is the ready count (driver `no data`; while still panicking,
//!    at least the previous decision), then bounded (rule 8). Panic is not
//!    entered on such a sample.
//! 4. **Needs.** Each target set needs a number of instances:
//!    concurrency and requests per second are service-wide, so
//!    `ceil(avg / target)`; CPU and memory are per-instance utilisation,
//!    so `ceil(ready × avg / target)`, skipped with nothing ready or no
//!    data; p95 latency is `ceil(ready × p95 / target)` at most `2 ×
//!    ready`, skipped likewise: latency does not fall in proportion to
//!    instances added, so one decision at most doubles on it. The need is
//!    the largest of them. `ceil` forgives float error of up to 1e-6, so
//!    40.0 / 20.0 needs 2, not 3. With no target set, concurrency 100
//!    applies ([`DEFAULT_CONCURRENCY`]).
//! 5. **Panic.** The panic condition holds when the panic window's need is
//!    at least `panic_threshold × ready` (default 2×), or when nothing is
//!    ready and someone asks (held, in-flight or arriving requests, or
//!    concurrency above zero). It enters panic mode; panic mode ends once a
//!    full stable window has passed since the condition last held. While
//!    panicking, desired is the panic window's need within the rates (rule
//!    7), but never less than the previous decision: no scale-down in
//!    panic.
//! 6. **Stable.** Otherwise desired is the stable window's need within
//!    the rates. If no target has data (say only a CPU target and no CPU
//!    figures), the ready count is kept (driver `no data`).
//! 7. **Rates.** One decision keeps at least `ceil(ready /
//!    max_scale_down_rate)` instances (default: at most half go at once;
//!    one ready instance is never removed this way) and asks for at most
//!    `ceil(ready × max_scale_up_rate)` (default 1000×; no limit from zero
//!    ready). With any rate above 1 a decision may always remove one of two
//!    or more ready instances, so that a rate below 2 cannot get stuck at
//!    `ceil(2 / 1.5) = 2`. See [`Policy::scale_down_floor`] and
//!    [`Policy::scale_up_cap`].
//! 8. **Bounds.** Desired is raised to `min`. With `min: 0`, a desired of
//!    0 is raised to 1 while anyone asks (driver `demand`), or while an
//!    instance is ready or the previous decision was above zero (driver
//!    `warm`): the warm instance stays until the idle period has passed
//!    (rule 2). Zero is left alone only when the service is already asleep
//!    (nothing ready, no decision yet or 0 decided) and nobody asks.
//!    Finally desired is capped at `max`, which no decision exceeds.
//!
//! # Defaults
//!
//! | tunable | default | constant |
//! |---|---|---|
//! | `stable_window` | 60 s | [`DEFAULT_STABLE_WINDOW`] |
//! | `panic_window` | 6 s | [`DEFAULT_PANIC_WINDOW`] |
//! | `panic_threshold` | 2.0 | [`DEFAULT_PANIC_THRESHOLD`] |
//! | `max_scale_down_rate` | 2.0 | [`DEFAULT_MAX_SCALE_DOWN_RATE`] |
//! | `max_scale_up_rate` | 1000.0 | [`DEFAULT_MAX_SCALE_UP_RATE`] |
//! | target without any set | concurrency 100 | [`DEFAULT_CONCURRENCY`] |
//!
//! # Clock
//!
//! `now` must increase strictly. A sample at the same `now` as the
//! previous one is not recorded, but its instantaneous fields (ready,
//! held, in-flight, idle time) still shape the decision. A sample before
//! the previous one means the clock restarted: the history is dropped
//! (the next decision is `no data`), and a panic in progress restarts its
//! stable window on the new clock.
//!
//! # For the caller
//!
//! - Call [`Autoscaler::observe`] on every tick, asleep or not: the idle
//!   rule and the panic timer only move when samples arrive.
//! - `bora.yaml` gives CPU and memory targets in percent; [`Targets`]
//!   takes fractions (`cpu: 70` → `Some(0.7)`), and so do the samples.
//! - [`Sample::concurrency`] must include held requests, and
//!   [`Sample::ready`] must count only instances serving now: starting
//!   instances are not ready, so a decision may be repeated (or, out of
//!   panic, lowered) while they start; converge to the latest desired.
//! - A decision is made every tick; emit an event when `desired` (or
//!   `panicking`) changes, not on every decision.
//! - One autoscaler per service, kept across redeploys with
//!   [`Autoscaler::set_policy`]; a new one starts with `no data`.
//!
//! # Modules
//!
//! | module | what it holds |
//! |---|---|
//! | `policy` | [`Policy`], [`Targets`], the defaults |
//! | `window` | [`Sample`], [`Averages`], the bounded history |
//! | `need` | how many instances each target needs |
//! | `decision` | [`Decision`] and the [`driver`] names |
//! | `autoscaler` | [`Autoscaler`]: panic state, rates, bounds |

#![forbid(unsafe_code)]

mod autoscaler;
mod decision;
mod need;
mod policy;
mod text;
mod window;

pub use autoscaler::Autoscaler;
pub use decision::{Decision, driver};
pub use policy::{
    DEFAULT_CONCURRENCY, DEFAULT_MAX_SCALE_DOWN_RATE, DEFAULT_MAX_SCALE_UP_RATE,
    DEFAULT_PANIC_THRESHOLD, DEFAULT_PANIC_WINDOW, DEFAULT_STABLE_WINDOW, Policy, Targets,
};
pub use window::{Averages, FIRST_INTERVAL, MAX_SAMPLES, Sample};
