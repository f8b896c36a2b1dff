//! Per-service statistics: what the autoscaler reads through
//! `Router::service_stats` and what `/metrics` renders.
//!
//! Every routed service (app + service) has one `ServiceCounters`, shared
//! by each compiled table that lists the service and by each request routed
//! to it, so the counters survive table swaps (like the per-instance
//! in-flight counters). A request carries a `RequestStats` from routing to
//! its end; it moves the service's *levels* (requests in flight, requests
//! held) and records latency and status once the response headers leave.
//!
//! The levels feed an integral over time, `concurrency_seconds_total`: the
//! counters keep "current level + time of the last change", and every change
//! first adds `level × time since the last change`. Dividing the growth of
//! the integral between two reads by the time between them gives the average
//! concurrency over that interval, however short the requests were.
//!
//! Cost per request on the hot path: a few relaxed atomic adds and four or
//! five acquisitions of a mutex held for a handful of arithmetic operations.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::StatusCode;

use crate::table::ServiceState;

/// Cumulative counters of one service since the router started (cheap to
/// read). The counters of a service restart from zero if it leaves the route
/// table and, once its last request is over, is forgotten.
#[derive(Debug, Clone, Default)]
pub struct ServiceStats {
    /// Requests at instances now, upgraded (WebSocket) connections included.
    pub in_flight: u64,
    /// Requests held now, waiting for the service to wake.
    pub held: u64,
    /// Requests routed to the service: held, forwarded, failed, all of them.
    pub arrived_total: u64,
    /// The integral over time of `in_flight + held`, in request-seconds.
    /// Divide the difference between two reads by the time between them to
    /// get the average concurrency over that interval.
    pub concurrency_seconds_total: f64,
    /// Time from arrival at the router to response headers (hold time
    /// included), for every response sent, errors included.
    pub latency: LatencyHistogram,
    /// The last time a request arrived or finished; `Some(now)` while
    /// `in_flight + held > 0`. `None` if no request ever arrived.
    pub last_active: Option<Instant>,
    /// Responses sent, by HTTP status code.
    pub responses: BTreeMap<u16, u64>,
    /// How long each held request waited, whatever the outcome (requests
    /// rejected because too many were held never waited and are not in it).
    pub hold_time: LatencyHistogram,
    /// How held requests left the hold.
    pub held_outcomes: HeldOutcomes,
}

/// How many held requests left the hold each way, since the router started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeldOutcomes {
    /// The service woke and the request went on to an instance.
    pub forwarded: u64,
    /// The service did not wake within the hold timeout: 503.
    pub timeout: u64,
    /// Refused at once because `max_held` requests were already held: 503.
    pub rejected: u64,
    /// The wake failed (`Router::wake_failed`), or the service stopped being
    /// wakeable or left the table while the request waited.
    pub wake_failed: u64,
    /// The client went away while the request was held.
    pub canceled: u64,
}

impl HeldOutcomes {
    /// `(outcome label, count)` for each outcome, in a fixed order; the
    /// labels are those of `bora_router_held_requests_total`.
    pub fn by_label(&self) -> [(&'static str, u64); 5] {
        HoldOutcome::ALL.map(|outcome| (outcome.label(), self.get(outcome)))
    }

    fn get(&self, outcome: HoldOutcome) -> u64 {
        match outcome {
            HoldOutcome::Forwarded => self.forwarded,
            HoldOutcome::Timeout => self.timeout,
            HoldOutcome::Rejected => self.rejected,
            HoldOutcome::WakeFailed => self.wake_failed,
            HoldOutcome::Canceled => self.canceled,
        }
    }
}

/// How a held request left the hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HoldOutcome {
    Forwarded,
    Timeout,
    Rejected,
    WakeFailed,
    Canceled,
}

impl HoldOutcome {
    const ALL: [HoldOutcome; 5] = [
        Self::Forwarded,
        Self::Timeout,
        Self::Rejected,
        Self::WakeFailed,
        Self::Canceled,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Timeout => "timeout",
            Self::Rejected => "rejected",
            Self::WakeFailed => "wake_failed",
            Self::Canceled => "canceled",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Upper bounds of the finite buckets, in microseconds: a 1-2-5 series from
/// 100 µs to 50 s, then 60 s. One more bucket counts everything slower.
const BOUNDS_MICROS: [u64; 19] = [
    100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000, 2_000_000, 5_000_000, 10_000_000, 20_000_000, 50_000_000, 60_000_000,
];

/// Finite buckets plus the overflow bucket.
const BUCKETS: usize = BOUNDS_MICROS.len() + 1;

/// A histogram of durations over fixed, log-spaced buckets: upper bounds of
/// 100 µs, 200 µs, 500 µs, 1 ms, … 20 s, 50 s, 60 s, and an overflow bucket
/// for anything slower. Counts are cumulative since the router started; take
/// [`LatencyHistogram::since`] of an earlier read to look at an interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencyHistogram {
    /// Count per bucket (not cumulative across buckets); empty means all 0.
    counts: Vec<u64>,
    /// Sum of the recorded durations, in microseconds.
    sum_micros: u64,
}

impl LatencyHistogram {
    /// The upper bounds of the finite buckets, smallest first.
    pub fn bounds() -> impl ExactSizeIterator<Item = Duration> {
        BOUNDS_MICROS
            .iter()
            .map(|&micros| Duration::from_micros(micros))
    }

    /// Counts one duration.
    pub fn record(&mut self, duration: Duration) {
        self.counts.resize(BUCKETS, 0);
        self.counts[bucket_index(duration)] += 1;
        self.sum_micros = self.sum_micros.saturating_add(micros(duration));
    }

    /// How many durations were counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of the counted durations (microsecond precision).
    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_micros)
    }

    /// `(upper bound, count)` of every bucket, smallest first; counts are
    /// per bucket, not cumulative. The last bucket has no upper bound.
    pub fn buckets(&self) -> impl Iterator<Item = (Option<Duration>, u64)> + '_ {
        let bounds = Self::bounds().map(Some).chain([None]);
        bounds.zip((0..BUCKETS).map(|index| self.bucket(index)))
    }

    /// The durations counted here but not in `earlier`, an older read of the
    /// same histogram: the bucket-wise difference, saturating at zero.
    pub fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        if self.counts.is_empty() {
            return LatencyHistogram::default();
        }
        LatencyHistogram {
            counts: (0..BUCKETS)
                .map(|index| self.bucket(index).saturating_sub(earlier.bucket(index)))
                .collect(),
            sum_micros: self.sum_micros.saturating_sub(earlier.sum_micros),
        }
    }

    /// An estimate of the `q`-quantile (`q` in 0..=1, clamped), or `None`
    /// if the histogram is empty or `q` is NaN.
    ///
    /// Like Prometheus' `histogram_quantile`: find the bucket holding the
    /// value of rank `q × count`, then interpolate linearly between its
    /// lower and upper bound (the first bucket starts at 0). The error is
    /// at most the width of that bucket. A value in the overflow bucket is
    /// reported as the largest finite bound, 60 s: "at least a minute".
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 || q.is_nan() {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (index, &count) in self.counts.iter().enumerate() {
            if count == 0 {
                continue;
            }
            if (below + count) as f64 >= rank {
                let fraction = (rank - below as f64) / count as f64;
                return Some(interpolate(index, fraction));
            }
            below += count;
        }
        None
    }

    fn bucket(&self, index: usize) -> u64 {
        self.counts.get(index).copied().unwrap_or(0)
    }
}

/// The bucket a duration falls in: the first whose upper bound is at least
/// the duration (Prometheus' `le`), or the overflow bucket.
fn bucket_index(duration: Duration) -> usize {
    let micros = micros(duration);
    BOUNDS_MICROS.partition_point(|&bound| bound < micros)
}

/// `fraction` (0..=1) of the way through bucket `index`.
fn interpolate(index: usize, fraction: f64) -> Duration {
    let Some(&upper) = BOUNDS_MICROS.get(index) else {
        return Duration::from_micros(BOUNDS_MICROS[BOUNDS_MICROS.len() - 1]);
    };
    let lower = index.checked_sub(1).map_or(0, |below| BOUNDS_MICROS[below]);
    let micros = lower as f64 + (upper - lower) as f64 * fraction.clamp(0.0, 1.0);
    Duration::from_secs_f64(micros / 1e6)
}

/// Whole microseconds, rounded up so that a duration just over a bound lands
/// in the next bucket, saturating.
fn micros(duration: Duration) -> u64 {
    let micros = duration.as_nanos().div_ceil(1_000);
    u64::try_from(micros).unwrap_or(u64::MAX)
}

/// A [`LatencyHistogram`] that many requests record into at once.
#[derive(Debug)]
struct AtomicHistogram {
    counts: [AtomicU64; BUCKETS],
    sum_micros: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl AtomicHistogram {
    fn record(&self, duration: Duration) {
        self.counts[bucket_index(duration)].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(micros(duration), Ordering::Relaxed);
    }

    fn snapshot(&self) -> LatencyHistogram {
        LatencyHistogram {
            counts: self
                .counts
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .collect(),
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
        }
    }
}

/// The levels of a service and the integral of their sum over time.
#[derive(Debug)]
struct Level {
    in_flight: u64,
    held: u64,
    /// When the levels last changed; the integral is complete up to here.
    since: Instant,
    /// Request-seconds up to `since`.
    integral: f64,
    last_active: Option<Instant>,
}

impl Level {
    /// Brings the integral up to `now` and marks the service active.
    fn advance(&mut self, now: Instant) {
        // Callers read the clock before locking: never move backwards.
        let now = now.max(self.since);
        self.integral += self.concurrency() as f64 * (now - self.since).as_secs_f64();
        self.since = now;
        self.last_active = Some(now);
    }

    fn concurrency(&self) -> u64 {
        self.in_flight + self.held
    }
}

/// The shared counters of one service.
#[derive(Debug)]
pub(crate) struct ServiceCounters {
    level: Mutex<Level>,
    arrived: AtomicU64,
    latency: AtomicHistogram,
    hold_time: AtomicHistogram,
    held_outcomes: [AtomicU64; HoldOutcome::ALL.len()],
    responses: Mutex<BTreeMap<u16, u64>>,
}

impl Default for ServiceCounters {
    fn default() -> Self {
        Self {
            level: Mutex::new(Level {
                in_flight: 0,
                held: 0,
                since: Instant::now(),
                integral: 0.0,
                last_active: None,
            }),
            arrived: AtomicU64::new(0),
            latency: AtomicHistogram::default(),
            hold_time: AtomicHistogram::default(),
            held_outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
            responses: Mutex::new(BTreeMap::new()),
        }
    }
}

impl ServiceCounters {
    /// Applies `change` to the levels at the current time.
    fn change<T>(&self, change: impl FnOnce(&mut Level) -> T) -> T {
        let now = Instant::now();
        let mut level = self.level.lock().unwrap_or_else(PoisonError::into_inner);
        level.advance(now);
        change(&mut level)
    }

    fn arrive(&self) {
        self.arrived.fetch_add(1, Ordering::Relaxed);
        self.change(|_| ());
    }

    /// Counts one more held request, unless `max_held` already are.
    fn try_hold(&self, max_held: usize) -> bool {
        let max_held = u64::try_from(max_held).unwrap_or(u64::MAX);
        self.change(|level| {
            let admitted = level.held < max_held;
            if admitted {
                level.held += 1;
            }
            admitted
        })
    }

    fn unhold(&self, outcome: HoldOutcome, held_for: Duration) {
        self.change(|level| level.held = level.held.saturating_sub(1));
        self.hold_time.record(held_for);
        self.count_outcome(outcome);
    }

    fn count_outcome(&self, outcome: HoldOutcome) {
        self.held_outcomes[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn enter_instance(&self) {
        self.change(|level| level.in_flight += 1);
    }

    fn leave_instance(&self) {
        self.change(|level| level.in_flight = level.in_flight.saturating_sub(1));
    }

    fn respond(&self, status: StatusCode, latency: Duration) {
        self.latency.record(latency);
        let mut responses = self
            .responses
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *responses.entry(status.as_u16()).or_default() += 1;
    }

    /// Requests held now.
    pub(crate) fn held(&self) -> u64 {
        self.level
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .held
    }

    /// A consistent-enough copy of everything, as of now.
    pub(crate) fn snapshot(&self) -> ServiceStats {
        let now = Instant::now();
        let (in_flight, held, concurrency_seconds_total, last_active) = {
            let level = self.level.lock().unwrap_or_else(PoisonError::into_inner);
            let now = now.max(level.since);
            let pending = level.concurrency() as f64 * (now - level.since).as_secs_f64();
            let last_active = if level.concurrency() > 0 {
                Some(now)
            } else {
                level.last_active
            };
            (
                level.in_flight,
                level.held,
                level.integral + pending,
                last_active,
            )
        };
        let outcome =
            |outcome: HoldOutcome| self.held_outcomes[outcome.index()].load(Ordering::Relaxed);
        ServiceStats {
            in_flight,
            held,
            arrived_total: self.arrived.load(Ordering::Relaxed),
            concurrency_seconds_total,
            latency: self.latency.snapshot(),
            last_active,
            responses: self
                .responses
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            hold_time: self.hold_time.snapshot(),
            held_outcomes: HeldOutcomes {
                forwarded: outcome(HoldOutcome::Forwarded),
                timeout: outcome(HoldOutcome::Timeout),
                rejected: outcome(HoldOutcome::Rejected),
                wake_failed: outcome(HoldOutcome::WakeFailed),
                canceled: outcome(HoldOutcome::Canceled),
            },
        }
    }
}

/// Where a request stands, as far as its service's levels go.
#[derive(Debug)]
enum Stage {
    /// Counted as arrived, in no level.
    Routed,
    /// In the held level since the instant.
    Held(Instant),
    /// In the in-flight level.
    AtInstance,
    /// Out of every level for good.
    Done,
}

/// One request's share of its service's counters. Whatever the path out, the
/// levels it raised go back down when it is dropped; a request dropped while
/// held (the client went away) counts as `canceled`.
#[derive(Debug)]
pub(crate) struct RequestStats {
    service: Arc<ServiceState>,
    stage: Stage,
    responded: bool,
}

impl RequestStats {
    /// Counts a request arriving for `service`.
    pub(crate) fn arrive(service: Arc<ServiceState>) -> Self {
        service.counters.arrive();
        Self {
            service,
            stage: Stage::Routed,
            responded: false,
        }
    }

    fn counters(&self) -> &ServiceCounters {
        &self.service.counters
    }

    /// Starts holding the request, unless `max_held` requests already are
    /// held for the service: then it counts as `rejected` and this is false.
    pub(crate) fn hold(&mut self, max_held: usize) -> bool {
        if !matches!(self.stage, Stage::Routed) {
            return false;
        }
        if !self.counters().try_hold(max_held) {
            self.counters().count_outcome(HoldOutcome::Rejected);
            return false;
        }
        self.stage = Stage::Held(Instant::now());
        true
    }

    /// Ends the hold with `outcome`.
    pub(crate) fn unhold(&mut self, outcome: HoldOutcome) {
        if let Stage::Held(since) = self.stage {
            self.counters().unhold(outcome, since.elapsed());
            self.stage = Stage::Routed;
        }
    }

    /// The request was sent to an instance (the first time counts).
    pub(crate) fn enter_instance(&mut self) {
        if matches!(self.stage, Stage::Routed) {
            self.counters().enter_instance();
            self.stage = Stage::AtInstance;
        }
    }

    /// The instance is done with the request (it failed).
    pub(crate) fn leave_instance(&mut self) {
        if matches!(self.stage, Stage::AtInstance) {
            self.counters().leave_instance();
        }
        self.stage = Stage::Done;
    }

    /// Response headers with `status` leave, `latency` after arrival.
    pub(crate) fn respond(&mut self, status: StatusCode, latency: Duration) {
        if !self.responded {
            self.responded = true;
            self.counters().respond(status, latency);
        }
    }
}

impl Drop for RequestStats {
    fn drop(&mut self) {
        match self.stage {
            Stage::Held(_) => self.unhold(HoldOutcome::Canceled),
            Stage::AtInstance => self.counters().leave_instance(),
            // Finishing counts as activity.
            Stage::Routed | Stage::Done => self.counters().change(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn histogram(durations: &[Duration]) -> LatencyHistogram {
        let mut histogram = LatencyHistogram::default();
        for duration in durations {
            histogram.record(*duration);
        }
        histogram
    }

    #[test]
    fn durations_land_in_the_first_bucket_whose_bound_is_not_below() {
        assert_eq!(bucket_index(Duration::ZERO), 0);
        assert_eq!(bucket_index(Duration::from_micros(100)), 0);
        assert_eq!(bucket_index(Duration::from_nanos(100_001)), 1);
        assert_eq!(bucket_index(ms(1)), 3);
        assert_eq!(bucket_index(ms(60_000)), BUCKETS - 2);
        assert_eq!(bucket_index(ms(60_001)), BUCKETS - 1);
        assert_eq!(bucket_index(Duration::MAX), BUCKETS - 1);
    }

    #[test]
    fn an_empty_histogram_has_no_quantile() {
        let empty = LatencyHistogram::default();
        assert_eq!(empty.count(), 0);
        assert_eq!(empty.quantile(0.5), None);
        assert_eq!(histogram(&[ms(1)]).quantile(f64::NAN), None);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        // Ten values in (50 ms, 100 ms]: the median is halfway through it.
        let tens = histogram(&[ms(80); 10]);
        assert_eq!(tens.quantile(0.5), Some(ms(75)));
        assert_eq!(tens.quantile(1.0), Some(ms(100)));
        assert_eq!(tens.quantile(0.0), Some(ms(50)));
        // Out-of-range q is clamped.
        assert_eq!(tens.quantile(7.0), Some(ms(100)));
        assert_eq!(tens.quantile(-1.0), Some(ms(50)));

        // The first bucket starts at zero.
        let fast = histogram(&[Duration::from_micros(10); 4]);
        assert_eq!(fast.quantile(0.5), Some(Duration::from_micros(50)));
    }

    #[test]
    fn quantiles_pick_the_bucket_of_the_ranked_value() {
        // 90 fast (≤ 1 ms), 10 slow (in (1 s, 2 s]).
        let mut durations = vec![Duration::from_micros(900); 90];
        durations.extend([ms(1500); 10]);
        let mixed = histogram(&durations);
        assert_eq!(mixed.count(), 100);
        let p50 = mixed.quantile(0.5).unwrap();
        assert!(p50 > Duration::from_micros(500) && p50 <= ms(1), "{p50:?}");
        assert_eq!(mixed.quantile(0.9), Some(ms(1)));
        let p95 = mixed.quantile(0.95).unwrap();
        assert_eq!(p95, ms(1500));
        assert_eq!(mixed.quantile(0.99), Some(ms(1900)));
    }

    #[test]
    fn overflow_reports_the_largest_bound() {
        let slow = histogram(&[ms(90_000), ms(120_000)]);
        assert_eq!(slow.quantile(0.5), Some(ms(60_000)));
        assert_eq!(slow.sum(), ms(210_000));
        let (bound, count) = slow.buckets().last().unwrap();
        assert_eq!((bound, count), (None, 2));
    }

    #[test]
    fn since_subtracts_bucket_wise_and_saturates() {
        let earlier = histogram(&[ms(1), ms(10)]);
        let mut later = earlier.clone();
        later.record(ms(10));
        later.record(ms(500));
        let delta = later.since(&earlier);
        assert_eq!(delta.count(), 2);
        assert_eq!(delta.sum(), ms(510));
        assert_eq!(delta.quantile(1.0), Some(ms(500)));
        // Reversed arguments (a reset): nothing negative.
        assert_eq!(earlier.since(&later).count(), 0);
        assert_eq!(LatencyHistogram::default().since(&earlier).count(), 0);
        assert_eq!(later.since(&LatencyHistogram::default()), later);
    }

    #[test]
    fn buckets_list_every_bound_once() {
        let buckets: Vec<_> = histogram(&[ms(3)]).buckets().collect();
        assert_eq!(buckets.len(), BUCKETS);
        assert_eq!(buckets[0], (Some(Duration::from_micros(100)), 0));
        assert_eq!(buckets[5], (Some(ms(5)), 1));
        let bounds: Vec<_> = LatencyHistogram::bounds().collect();
        assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(bounds.last(), Some(&ms(60_000)));
    }

    #[test]
    fn atomic_histogram_snapshots_match_plain_recording() {
        let atomic = AtomicHistogram::default();
        let durations = [ms(0), ms(2), ms(2), ms(700), ms(99_000)];
        for duration in durations {
            atomic.record(duration);
        }
        assert_eq!(atomic.snapshot(), histogram(&durations));
    }

    fn counters() -> Arc<ServiceState> {
        Arc::new(ServiceState::new("hello", "web"))
    }

    #[test]
    fn requests_move_the_levels_and_drop_restores_them() {
        let service = counters();
        assert!(service.counters.snapshot().last_active.is_none());
        let mut forwarded = RequestStats::arrive(service.clone());
        let mut held = RequestStats::arrive(service.clone());
        assert!(held.hold(10));
        forwarded.enter_instance();
        forwarded.enter_instance(); // a retry: still one request
        let stats = service.counters.snapshot();
        assert_eq!(
            (stats.in_flight, stats.held, stats.arrived_total),
            (1, 1, 2)
        );
        assert!(stats.last_active.is_some());

        forwarded.respond(StatusCode::OK, ms(3));
        forwarded.respond(StatusCode::OK, ms(3)); // once only
        drop(forwarded);
        drop(held); // the client went away
        let stats = service.counters.snapshot();
        assert_eq!((stats.in_flight, stats.held), (0, 0));
        assert_eq!(stats.responses.get(&200), Some(&1));
        assert_eq!(stats.latency.count(), 1);
        assert_eq!(stats.held_outcomes.canceled, 1);
        assert_eq!(stats.hold_time.count(), 1);
    }

    #[test]
    fn holds_beyond_the_limit_are_rejected() {
        let service = counters();
        let mut first = RequestStats::arrive(service.clone());
        let mut second = RequestStats::arrive(service.clone());
        assert!(first.hold(1));
        assert!(!second.hold(1));
        assert_eq!(service.counters.held(), 1);
        first.unhold(HoldOutcome::Forwarded);
        first.enter_instance();
        assert!(second.hold(1), "room again once the first left the hold");
        second.unhold(HoldOutcome::Timeout);
        let outcomes = service.counters.snapshot().held_outcomes;
        assert_eq!(
            outcomes,
            HeldOutcomes {
                forwarded: 1,
                timeout: 1,
                rejected: 1,
                ..HeldOutcomes::default()
            }
        );
        assert_eq!(outcomes.by_label()[2], ("rejected", 1));
    }

    #[test]
    fn a_failed_request_leaves_the_instance_level_once() {
        let service = counters();
        let mut failed = RequestStats::arrive(service.clone());
        failed.enter_instance();
        failed.leave_instance();
        assert_eq!(service.counters.snapshot().in_flight, 0);
        drop(failed);
        assert_eq!(service.counters.snapshot().in_flight, 0);
    }

    #[test]
    fn concurrency_integrates_levels_over_time() {
        let level = |in_flight, held, since| Level {
            in_flight,
            held,
            since,
            integral: 0.0,
            last_active: None,
        };
        let start = Instant::now();
        let mut two = level(1, 1, start);
        two.advance(start + ms(500));
        assert!((two.integral - 1.0).abs() < 1e-9, "{}", two.integral);
        // A clock read from before the last change adds nothing.
        two.advance(start);
        assert!((two.integral - 1.0).abs() < 1e-9);
        assert_eq!(two.since, start + ms(500));
        let mut idle = level(0, 0, start);
        idle.advance(start + ms(500));
        assert_eq!(idle.integral, 0.0);
        assert_eq!(idle.last_active, Some(start + ms(500)));
    }
}
