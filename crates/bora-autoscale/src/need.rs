//! How many instances each target needs, given averaged inputs.

use std::time::Duration;

use crate::decision::driver;
use crate::policy::Targets;
use crate::text;
use crate::window::Averages;

/// Slack for float error in `ceil`: 40.0 / 20.0 must need 2 instances
/// even if the division lands a hair above 2.
const EPSILON: f64 = 1e-6;

/// `ceil(ratio)`, forgiving float error of up to [`EPSILON`]; 0 for a
/// ratio at or below it (or NaN), saturating at `u32::MAX`.
pub(crate) fn ceil_ratio(ratio: f64) -> u32 {
    if ratio > EPSILON {
        // `as` saturates, and infinity becomes u32::MAX.
        (ratio - EPSILON).ceil() as u32
    } else {
        0
    }
}

/// What one target needs, with the words to explain it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Need {
    /// The driver name: the target's field name.
    pub(crate) metric: &'static str,
    pub(crate) instances: u32,
    /// The averaged input, e.g. `concurrency 43.1`.
    value: String,
    /// How it scales with the ready instances, e.g. ` × 2 ready`, or empty.
    scale: String,
    /// The target, e.g. `/ target 20 per instance`.
    per: String,
    /// A note on a cap, e.g. ` (capped at 2× the 2 ready: …)`, or empty.
    note: String,
}

impl Need {
    /// `concurrency 43.1 (avg over 60s) / target 20 per instance → 3 instances`
    pub(crate) fn stable_text(&self, window: Duration) -> String {
        format!(
            "{} (avg over {}){} {} → {}{}",
            self.value,
            text::duration(window),
            self.scale,
            self.per,
            text::instances(self.instances),
            self.note,
        )
    }

    /// `concurrency 96.0 over 6s / target 20 per instance needs 5 instances`
    pub(crate) fn panic_text(&self, window: Duration) -> String {
        format!(
            "{} over {}{} {} needs {}{}",
            self.value,
            text::duration(window),
            self.scale,
            self.per,
            text::instances(self.instances),
            self.note,
        )
    }
}

/// The largest need over the `targets` (already [`Targets::effective`]),
/// first in field order among equals; `None` when no target has data
/// (utilisation and latency need ready instances and a measurement).
pub(crate) fn largest(targets: &Targets, averages: &Averages, ready: u32) -> Option<Need> {
    needs(targets, averages, ready)
        .into_iter()
        .reduce(|best, need| {
            if need.instances > best.instances {
                need
            } else {
                best
            }
        })
}

/// Every target's need, in field order, skipping targets without data.
///
/// - concurrency and requests per second are service-wide totals:
///   `ceil(avg / target)`;
/// - cpu and memory are per-instance utilisation: `ceil(ready × avg /
///   target)`, skipped with nothing ready or no data;
/// - p95 latency: `ceil(ready × p95 / target)`, at most `2 × ready`,
///   skipped with nothing ready or no data. Latency does not fall in
///   proportion to instances added (queueing, a slow dependency), so one
///   decision at most doubles on latency alone.
pub(crate) fn needs(targets: &Targets, averages: &Averages, ready: u32) -> Vec<Need> {
    let mut needs = Vec::new();
    if let Some(target) = targets.concurrency {
        needs.push(Need {
            metric: driver::CONCURRENCY,
            instances: ceil_ratio(averages.concurrency / target),
            value: format!("concurrency {:.1}", averages.concurrency),
            scale: String::new(),
            per: format!("/ target {} per instance", text::number(target)),
            note: String::new(),
        });
    }
    if let Some(target) = targets.requests_per_second {
        needs.push(Need {
            metric: driver::REQUESTS_PER_SECOND,
            instances: ceil_ratio(averages.requests_per_second / target),
            value: format!("requests/s {:.1}", averages.requests_per_second),
            scale: String::new(),
            per: format!("/ target {} per instance", text::number(target)),
            note: String::new(),
        });
    }
    let utilisation = [
        (driver::CPU, targets.cpu, averages.cpu),
        (driver::MEMORY, targets.memory, averages.memory),
    ];
    for (metric, target, average) in utilisation {
        if let (Some(target), Some(average), 1..) = (target, average, ready) {
            needs.push(Need {
                metric,
                instances: ceil_ratio(f64::from(ready) * average / target),
                value: format!("{metric} {} of limit", text::percent(average)),
                scale: format!(" × {ready} ready"),
                per: format!("/ target {}", text::percent(target)),
                note: String::new(),
            });
        }
    }
    if let (Some(target), Some(p95), 1..) = (targets.p95_latency, averages.p95_latency, ready) {
        let proportional = ceil_ratio(f64::from(ready) * p95.as_secs_f64() / target.as_secs_f64());
        let cap = ready.saturating_mul(2);
        needs.push(Need {
            metric: driver::P95_LATENCY,
            instances: proportional.min(cap),
            value: format!("p95 latency {}", text::duration(p95)),
            scale: format!(" × {ready} ready"),
            per: format!("/ target {}", text::duration(target)),
            note: if proportional > cap {
                format!(" (capped at 2× the {ready} ready: latency is not linear in instances)")
            } else {
                String::new()
            },
        });
    }
    needs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn averages() -> Averages {
        Averages::default()
    }

    #[test]
    fn ceil_forgives_float_error() {
        assert_eq!(ceil_ratio(40.0 / 20.0), 2);
        assert_eq!(ceil_ratio(2.000_000_000_1), 2);
        assert_eq!(ceil_ratio(2.01), 3);
        assert_eq!(ceil_ratio(0.7 * 3.0 / 0.7), 3);
        assert_eq!(ceil_ratio(0.0), 0);
        assert_eq!(ceil_ratio(-3.0), 0);
        assert_eq!(ceil_ratio(f64::NAN), 0);
        assert_eq!(ceil_ratio(f64::INFINITY), u32::MAX);
        assert_eq!(ceil_ratio(0.001), 1);
    }

    #[test]
    fn concurrency_is_service_wide() {
        let targets = Targets {
            concurrency: Some(20.0),
            ..Targets::default()
        };
        let avg = Averages {
            concurrency: 43.1,
            ..averages()
        };
        let need = largest(&targets, &avg, 7).unwrap();
        assert_eq!((need.metric, need.instances), ("concurrency", 3));
        assert_eq!(
            need.stable_text(Duration::from_secs(60)),
            "concurrency 43.1 (avg over 60s) / target 20 per instance → 3 instances"
        );
        let exact = Averages {
            concurrency: 40.0,
            ..averages()
        };
        assert_eq!(largest(&targets, &exact, 0).unwrap().instances, 2);
    }

    #[test]
    fn requests_per_second_is_service_wide() {
        let targets = Targets {
            requests_per_second: Some(10.0),
            ..Targets::default()
        };
        let avg = Averages {
            requests_per_second: 25.0,
            ..averages()
        };
        let need = largest(&targets, &avg, 0).unwrap();
        assert_eq!((need.metric, need.instances), ("requests_per_second", 3));
        assert_eq!(
            need.stable_text(Duration::from_secs(60)),
            "requests/s 25.0 (avg over 60s) / target 10 per instance → 3 instances"
        );
    }

    #[test]
    fn cpu_and_memory_scale_the_ready_instances() {
        let targets = Targets {
            cpu: Some(0.6),
            memory: Some(0.8),
            ..Targets::default()
        };
        // 2 ready at 90% CPU against 60%: ceil(2 × 0.9 / 0.6) = 3.
        // Memory at 50% of 80%: ceil(2 × 0.5 / 0.8) = 2.
        let avg = Averages {
            cpu: Some(0.9),
            memory: Some(0.5),
            ..averages()
        };
        let all = needs(&targets, &avg, 2);
        assert_eq!(
            all.iter()
                .map(|n| (n.metric, n.instances))
                .collect::<Vec<_>>(),
            [("cpu", 3), ("memory", 2)]
        );
        assert_eq!(
            all[0].stable_text(Duration::from_secs(60)),
            "cpu 90% of limit (avg over 60s) × 2 ready / target 60% → 3 instances"
        );
        // Nothing ready, or no data: no need at all.
        assert!(needs(&targets, &avg, 0).is_empty());
        assert!(needs(&targets, &averages(), 2).is_empty());
        assert_eq!(largest(&targets, &averages(), 2), None);
    }

    #[test]
    fn latency_scales_the_ready_instances_at_most_doubling() {
        let targets = Targets {
            p95_latency: Some(Duration::from_millis(200)),
            ..Targets::default()
        };
        // 2 ready at 300 ms against 200 ms: ceil(2 × 1.5) = 3.
        let avg = Averages {
            p95_latency: Some(Duration::from_millis(300)),
            ..averages()
        };
        assert_eq!(largest(&targets, &avg, 2).unwrap().instances, 3);
        // At 900 ms: ceil(2 × 4.5) = 9, capped at 4.
        let slow = Averages {
            p95_latency: Some(Duration::from_millis(900)),
            ..averages()
        };
        let need = largest(&targets, &slow, 2).unwrap();
        assert_eq!((need.metric, need.instances), ("p95_latency", 4));
        assert_eq!(
            need.stable_text(Duration::from_secs(60)),
            "p95 latency 900ms (avg over 60s) × 2 ready / target 200ms → 4 instances \
             (capped at 2× the 2 ready: latency is not linear in instances)"
        );
        // Fast enough: fewer.
        let fast = Averages {
            p95_latency: Some(Duration::from_millis(50)),
            ..averages()
        };
        assert_eq!(largest(&targets, &fast, 4).unwrap().instances, 1);
        assert!(needs(&targets, &slow, 0).is_empty());
    }

    #[test]
    fn the_largest_need_wins_and_ties_go_to_the_first() {
        let targets = Targets {
            concurrency: Some(10.0),
            requests_per_second: Some(10.0),
            cpu: Some(0.5),
            ..Targets::default()
        };
        let avg = Averages {
            concurrency: 20.0,         // 2
            requests_per_second: 20.0, // 2
            cpu: Some(1.0),            // ceil(2 × 1.0 / 0.5) = 4
            ..averages()
        };
        assert_eq!(largest(&targets, &avg, 2).unwrap().metric, "cpu");
        let avg = Averages {
            cpu: Some(0.25), // 1
            ..avg
        };
        assert_eq!(largest(&targets, &avg, 2).unwrap().metric, "concurrency");
    }

    #[test]
    fn panic_text_names_the_window() {
        let targets = Targets {
            concurrency: Some(20.0),
            ..Targets::default()
        };
        let avg = Averages {
            concurrency: 96.0,
            ..averages()
        };
        assert_eq!(
            largest(&targets, &avg, 2)
                .unwrap()
                .panic_text(Duration::from_secs(6)),
            "concurrency 96.0 over 6s / target 20 per instance needs 5 instances"
        );
    }
}
