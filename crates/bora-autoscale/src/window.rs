//! Samples, the bounded history of recent ones, and averages over a window
//! of it.

use std::collections::VecDeque;
use std::time::Duration;

/// The most samples the history keeps, whatever the window: at one sample
/// a second that is over an hour. Ticking faster than
/// `stable_window / MAX_SAMPLES` shortens the windows to the newest
/// `MAX_SAMPLES` samples.
pub const MAX_SAMPLES: usize = 4096;

/// The interval assumed for the very first sample (and the first after a
/// clock reset) until the second one shows the real tick: the controller
/// samples about once a second.
pub const FIRST_INTERVAL: Duration = Duration::from_secs(1);

/// One observation of a service, taken by the caller on each tick (about
/// once a second).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Sample {
    /// Monotonic time since an arbitrary origin, strictly increasing
    /// between calls. A sample at the same time as the previous one is
    /// not recorded (its instantaneous fields still count); one earlier
    /// than the previous one starts a new clock: the history is dropped.
    pub now: Duration,
    /// Instances serving traffic now (healthy, not draining, not asleep).
    pub ready: u32,
    /// Average requests in flight over the last tick, service-wide, held
    /// requests included.
    pub concurrency: f64,
    /// Requests in flight right now, at instances.
    pub in_flight: u32,
    /// Requests held right now, waiting for the service to wake.
    pub held: u32,
    /// Requests that arrived since the previous sample.
    pub requests: u64,
    /// 95th-percentile response time over the last tick; `None` without
    /// requests.
    pub p95_latency: Option<Duration>,
    /// Average over the ready instances of CPU used / CPU limit over the
    /// last tick.
    pub cpu: Option<f64>,
    /// Average over the ready instances of memory used / memory limit.
    pub memory: Option<f64>,
    /// Time since the service last had a request arriving or in flight
    /// (zero while busy).
    pub idle_for: Duration,
}

impl Sample {
    /// Whether anyone is asking: requests held, in flight, arriving, or
    /// in flight on average over the last tick.
    pub fn has_demand(&self) -> bool {
        self.held > 0 || self.in_flight > 0 || self.requests > 0 || self.concurrency > 0.0
    }
}

/// The inputs averaged over a window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Averages {
    /// Mean of the samples' `concurrency` (service-wide).
    pub concurrency: f64,
    /// Requests in the window / the time its samples cover (service-wide).
    pub requests_per_second: f64,
    /// Mean of the samples' `cpu` that have one (per instance); `None` if
    /// none has.
    pub cpu: Option<f64>,
    /// Mean of the samples' `memory` that have one (per instance).
    pub memory: Option<f64>,
    /// Mean of the samples' `p95_latency`, weighted by their `requests`
    /// (at least 1), over the samples that have one.
    pub p95_latency: Option<Duration>,
}

/// A sample as the history keeps it: only what the averages need,
/// cleaned of NaN and negative values.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Recorded {
    now: Duration,
    /// The time since the previous sample; `None` for the first one until
    /// the second arrives.
    covers: Option<Duration>,
    concurrency: f64,
    requests: u64,
    p95_latency: Option<Duration>,
    cpu: Option<f64>,
    memory: Option<f64>,
}

/// Recent samples, oldest first, with strictly increasing `now`.
#[derive(Debug, Clone, Default)]
pub(crate) struct History {
    samples: VecDeque<Recorded>,
}

impl History {
    pub(crate) fn len(&self) -> usize {
        self.samples.len()
    }

    /// The time of the newest sample.
    pub(crate) fn latest(&self) -> Option<Duration> {
        self.samples.back().map(|s| s.now)
    }

    pub(crate) fn clear(&mut self) {
        self.samples.clear();
    }

    /// Appends `sample`, which must be newer than every recorded one.
    pub(crate) fn push(&mut self, sample: &Sample) {
        let covers = self
            .latest()
            .map(|latest| sample.now.saturating_sub(latest));
        if let Some(dt) = covers
            && self.samples.len() == 1
            && self.samples[0].covers.is_none()
        {
            // The first sample's interval was unknown: take the tick the
            // second one shows.
            self.samples[0].covers = Some(dt);
        }
        let fraction = |x: Option<f64>| x.filter(|v| v.is_finite() && *v >= 0.0);
        self.samples.push_back(Recorded {
            now: sample.now,
            covers,
            concurrency: if sample.concurrency.is_finite() && sample.concurrency > 0.0 {
                sample.concurrency
            } else {
                0.0
            },
            requests: sample.requests,
            p95_latency: sample.p95_latency,
            cpu: fraction(sample.cpu),
            memory: fraction(sample.memory),
        });
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// Drops the samples no window at `now` can use: those at least
    /// `stable_window` old. The newest sample always stays.
    pub(crate) fn trim(&mut self, now: Duration, stable_window: Duration) {
        while self.samples.len() > 1
            && self
                .samples
                .front()
                .is_some_and(|s| now.saturating_sub(s.now) >= stable_window)
        {
            self.samples.pop_front();
        }
    }

    /// The averages over the samples less than `window` older than `now`,
    /// and how many samples that is.
    pub(crate) fn average(&self, now: Duration, window: Duration) -> (Averages, usize) {
        let mut count = 0usize;
        let mut concurrency = 0.0;
        let mut requests = 0.0;
        let mut span = Duration::ZERO;
        let mut cpu = Mean::default();
        let mut memory = Mean::default();
        let mut p95_latency = Mean::default();
        let in_window = self
            .samples
            .iter()
            .rev()
            .take_while(|s| now.saturating_sub(s.now) < window);
        for s in in_window {
            count += 1;
            concurrency += s.concurrency;
            requests += s.requests as f64;
            span = span.saturating_add(s.covers.unwrap_or(FIRST_INTERVAL));
            if let Some(v) = s.cpu {
                cpu.add(v, 1.0);
            }
            if let Some(v) = s.memory {
                memory.add(v, 1.0);
            }
            if let Some(p95) = s.p95_latency {
                p95_latency.add(p95.as_secs_f64(), s.requests.max(1) as f64);
            }
        }
        if count == 0 {
            return (Averages::default(), 0);
        }
        let averages = Averages {
            concurrency: concurrency / count as f64,
            requests_per_second: if span.is_zero() {
                0.0
            } else {
                requests / span.as_secs_f64()
            },
            cpu: cpu.value(),
            memory: memory.value(),
            p95_latency: p95_latency
                .value()
                .and_then(|secs| Duration::try_from_secs_f64(secs).ok()),
        };
        (averages, count)
    }
}

/// A weighted mean being summed up.
#[derive(Debug, Default)]
struct Mean {
    sum: f64,
    weight: f64,
}

impl Mean {
    fn add(&mut self, value: f64, weight: f64) {
        self.sum += value * weight;
        self.weight += weight;
    }

    fn value(&self) -> Option<f64> {
        (self.weight > 0.0).then(|| self.sum / self.weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: f64) -> Sample {
        Sample {
            now: Duration::from_secs_f64(secs),
            ..Sample::default()
        }
    }

    fn history(samples: &[Sample]) -> History {
        let mut history = History::default();
        for s in samples {
            history.push(s);
        }
        history
    }

    #[test]
    fn window_holds_samples_less_than_its_length_old() {
        // Ticks at 0..=10 s; a 6 s window at 10 s holds 5..=10, not 4.
        let samples: Vec<Sample> = (0..=10)
            .map(|t| Sample {
                concurrency: f64::from(t),
                ..at(f64::from(t))
            })
            .collect();
        let history = history(&samples);
        let (averages, count) = history.average(Duration::from_secs(10), Duration::from_secs(6));
        assert_eq!(count, 6);
        assert_eq!(averages.concurrency, 7.5); // (5 + … + 10) / 6
    }

    #[test]
    fn requests_per_second_divides_by_the_time_covered() {
        // Ticks every 500 ms, 10 requests each: 20 requests/s.
        let samples: Vec<Sample> = (0..8)
            .map(|i| Sample {
                requests: 10,
                ..at(f64::from(i) * 0.5)
            })
            .collect();
        let (averages, count) =
            history(&samples).average(Duration::from_millis(3500), Duration::from_secs(60));
        assert_eq!(count, 8);
        // The first sample covers the 500 ms the second one shows, not 1 s.
        assert_eq!(averages.requests_per_second, 20.0);
    }

    #[test]
    fn a_lone_sample_is_assumed_to_cover_one_second() {
        let (averages, _) = history(&[Sample {
            requests: 7,
            ..at(3.0)
        }])
        .average(Duration::from_secs(3), Duration::from_secs(60));
        assert_eq!(averages.requests_per_second, 7.0);
    }

    #[test]
    fn a_gap_spreads_its_requests_over_the_gap() {
        let samples = [
            at(0.0),
            at(1.0),
            Sample {
                requests: 30,
                ..at(11.0)
            },
        ];
        let (averages, count) =
            history(&samples).average(Duration::from_secs(11), Duration::from_secs(6));
        assert_eq!(count, 1);
        assert_eq!(averages.requests_per_second, 3.0);
    }

    #[test]
    fn utilisation_averages_only_samples_that_have_it() {
        let samples = [
            Sample {
                cpu: Some(0.5),
                ..at(0.0)
            },
            Sample {
                cpu: None,
                memory: Some(0.25),
                ..at(1.0)
            },
            Sample {
                cpu: Some(0.9),
                memory: Some(f64::NAN),
                ..at(2.0)
            },
        ];
        let (averages, _) =
            history(&samples).average(Duration::from_secs(2), Duration::from_secs(60));
        assert!((averages.cpu.unwrap() - 0.7).abs() < 1e-12);
        assert_eq!(averages.memory, Some(0.25));
    }

    #[test]
    fn latency_is_weighted_by_requests() {
        let samples = [
            Sample {
                requests: 1,
                p95_latency: Some(Duration::from_secs(5)),
                ..at(0.0)
            },
            Sample {
                requests: 9,
                p95_latency: Some(Duration::from_millis(100)),
                ..at(1.0)
            },
            at(2.0), // no requests, no latency
        ];
        let (averages, _) =
            history(&samples).average(Duration::from_secs(2), Duration::from_secs(60));
        // (5 s × 1 + 0.1 s × 9) / 10 = 0.59 s
        let p95 = averages.p95_latency.unwrap().as_secs_f64();
        assert!((p95 - 0.59).abs() < 1e-9, "{p95}");
    }

    #[test]
    fn empty_window_averages_to_zero() {
        let (averages, count) = History::default().average(Duration::ZERO, Duration::from_secs(6));
        assert_eq!((averages, count), (Averages::default(), 0));
    }

    #[test]
    fn bad_values_are_cleaned() {
        let (averages, _) = history(&[Sample {
            concurrency: f64::NAN,
            cpu: Some(-1.0),
            ..at(0.0)
        }])
        .average(Duration::ZERO, Duration::from_secs(6));
        assert_eq!(averages.concurrency, 0.0);
        assert_eq!(averages.cpu, None);
    }

    #[test]
    fn trim_drops_what_the_stable_window_cannot_see() {
        let samples: Vec<Sample> = (0..100).map(|t| at(f64::from(t))).collect();
        let mut history = history(&samples);
        history.trim(Duration::from_secs(99), Duration::from_secs(60));
        assert_eq!(history.len(), 60); // 40..=99
        history.trim(Duration::from_secs(1000), Duration::from_secs(60));
        assert_eq!(history.len(), 1, "the newest sample stays");
    }

    #[test]
    fn history_is_capped() {
        let mut history = History::default();
        for i in 0..(MAX_SAMPLES as u64 + 10) {
            history.push(&Sample {
                now: Duration::from_millis(i),
                ..Sample::default()
            });
        }
        assert_eq!(history.len(), MAX_SAMPLES);
        assert_eq!(
            history.samples.front().unwrap().now,
            Duration::from_millis(10)
        );
    }

    #[test]
    fn demand_is_anything_asking() {
        assert!(!Sample::default().has_demand());
        for sample in [
            Sample {
                held: 1,
                ..Sample::default()
            },
            Sample {
                in_flight: 1,
                ..Sample::default()
            },
            Sample {
                requests: 1,
                ..Sample::default()
            },
            Sample {
                concurrency: 0.1,
                ..Sample::default()
            },
        ] {
            assert!(sample.has_demand(), "{sample:?}");
        }
    }
}
