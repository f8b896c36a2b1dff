//! The control plane's Prometheus metrics. With the router's (see
//! `bora_router::metrics`) they are served at `GET /metrics`.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `bora_wakeups_total` | counter | app, service, kind | services woken, by `light` (thawed) or `deep` (started) |
//! | `bora_wakeup_duration_seconds` | histogram | kind | from the first held request's wake call to the instance routed |
//! | `bora_wake_failures_total` | counter | app, service | wakes given up, the held requests answered with the reason |
//! | `bora_scaling_decisions_total` | counter | app, service, direction | autoscaler decisions that changed the instance count (`scaled_up`, `scaled_down`) |
//! | `bora_service_instances` | gauge | app, service, state | per autoscaled service: `current` (healthy), `desired`, `sleeping` |
//! | `bora_autoscaler_panicking` | gauge | app, service | 1 while the autoscaler is in panic mode |
//! | `bora_sandboxes_created_total` | counter | source | sandboxes created, by `pool` (a warm one claimed) or `cold` (started for the request) |
//! | `bora_sandbox_create_duration_seconds` | histogram | source | from the create call to the sandbox running |
//! | `bora_sandbox_pool_ready` | gauge | template, isolation | warm sandboxes waiting in the pool |

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    app: String,
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WakeLabels {
    app: String,
    service: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    template: String,
    isolation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    app: String,
    service: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    app: String,
    service: String,
    state: String,
}

/// 0.5 ms … ~16 s.
fn wake_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

pub(crate) struct ControlMetrics {
    wakeups: Family<WakeLabels, Counter>,
    wakeup_duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    wake_failures: Family<ServiceLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    instances: Family<StateLabels, Gauge>,
    panicking: Family<ServiceLabels, Gauge>,
    sandboxes_created: Family<SourceLabels, Counter>,
    sandbox_create_duration: Family<SourceLabels, Histogram, fn() -> Histogram>,
    pool_ready: Family<PoolLabels, Gauge>,
}

impl Default for ControlMetrics {
    fn default() -> Self {
        Self {
            wakeups: Family::default(),
            wakeup_duration: Family::new_with_constructor(wake_histogram),
            wake_failures: Family::default(),
            decisions: Family::default(),
            instances: Family::default(),
            panicking: Family::default(),
            sandboxes_created: Family::default(),
            sandbox_create_duration: Family::new_with_constructor(wake_histogram),
            pool_ready: Family::default(),
        }
    }
}

fn service(app: &str, service: &str) -> ServiceLabels {
    ServiceLabels {
        app: app.into(),
        service: service.into(),
    }
}

impl ControlMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "bora_wakeups",
            "Services woken from sleep, by kind (light: thawed, deep: started)",
            self.wakeups.clone(),
        );
        registry.register(
            "bora_wakeup_duration_seconds",
            "Time from the wake call (first held request) to the instance routed",
            self.wakeup_duration.clone(),
        );
        registry.register(
            "bora_wake_failures",
            "Wakes given up; held requests were answered with the reason",
            self.wake_failures.clone(),
        );
        registry.register(
            "bora_scaling_decisions",
            "Autoscaler decisions that changed the desired instance count",
            self.decisions.clone(),
        );
        registry.register(
            "bora_service_instances",
            "Instances of autoscaled services: current (healthy), desired, sleeping",
            self.instances.clone(),
        );
        registry.register(
            "bora_autoscaler_panicking",
            "1 while the service's autoscaler is in panic mode",
            self.panicking.clone(),
        );
        registry.register(
            "bora_sandboxes_created",
            "Sandboxes created, by source (pool: a warm one claimed; cold: started for the request)",
            self.sandboxes_created.clone(),
        );
        registry.register(
            "bora_sandbox_create_duration_seconds",
            "Time from a sandbox create call to the sandbox running",
            self.sandbox_create_duration.clone(),
        );
        registry.register(
            "bora_sandbox_pool_ready",
            "Warm sandboxes waiting in a pool",
            self.pool_ready.clone(),
        );
    }

    pub(crate) fn sandbox_created(&self, source: &str, took: Duration) {
        let labels = SourceLabels {
            source: source.into(),
        };
        self.sandboxes_created.get_or_create(&labels).inc();
        self.sandbox_create_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub(crate) fn pool_ready(&self, template: &str, isolation: &str, ready: usize) {
        self.pool_ready
            .get_or_create(&PoolLabels {
                template: template.into(),
                isolation: isolation.into(),
            })
            .set(ready as i64);
    }

    pub(crate) fn wakeup(&self, app: &str, svc: &str, kind: &str, took: Duration) {
        self.wakeups
            .get_or_create(&WakeLabels {
                app: app.into(),
                service: svc.into(),
                kind: kind.into(),
            })
            .inc();
        self.wakeup_duration
            .get_or_create(&KindLabels { kind: kind.into() })
            .observe(took.as_secs_f64());
    }

    pub(crate) fn wake_failed(&self, app: &str, svc: &str) {
        self.wake_failures.get_or_create(&service(app, svc)).inc();
    }

    pub(crate) fn decision(&self, app: &str, svc: &str, direction: &str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                app: app.into(),
                service: svc.into(),
                direction: direction.into(),
            })
            .inc();
    }

    /// Current, desired and sleeping instances, and panic mode.
    pub(crate) fn instances(
        &self,
        app: &str,
        svc: &str,
        (current, desired, sleeping, panic): (u32, u32, u32, bool),
    ) {
        for (state, n) in [
            ("current", current),
            ("desired", desired),
            ("sleeping", sleeping),
        ] {
            self.instances
                .get_or_create(&StateLabels {
                    app: app.into(),
                    service: svc.into(),
                    state: state.into(),
                })
                .set(i64::from(n));
        }
        self.panicking
            .get_or_create(&service(app, svc))
            .set(i64::from(panic));
    }
}
