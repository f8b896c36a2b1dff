//! Prometheus metrics, rendered from the per-service statistics at scrape
//! time (no second set of counters on the hot path).
//!
//! `Router::register_metrics` adds them to a `prometheus_client` registry.
//! These names are stable and documented for users:
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `bora_router_requests_total` | counter | `app`, `service`, `code` | responses sent to clients, by HTTP status `code` (router errors included; requests whose client left before any response are not counted) |
//! | `bora_router_request_duration_seconds` | histogram | `app`, `service` | time from arrival at the router to response headers, hold time included |
//! | `bora_router_requests_in_flight` | gauge | `app`, `service` | requests at instances now, open upgraded (WebSocket) connections included |
//! | `bora_router_requests_held` | gauge | `app`, `service` | requests held now, waiting for the service to wake |
//! | `bora_router_held_requests_total` | counter | `app`, `service`, `outcome` | requests that were held (or refused a hold), by how they left: `forwarded`, `timeout`, `rejected` (too many already held), `wake_failed` (wake reported failed, or the service left the table or stopped being wakeable), `canceled` (client went away) |
//! | `bora_router_hold_duration_seconds` | histogram | `app`, `service` | how long held requests waited, whatever the outcome (`rejected` ones never waited and are not counted) |
//!
//! Histogram buckets are fixed: 100 µs, 200 µs, 500 µs, 1 ms, … 20 s, 50 s,
//! 60 s, `+Inf`.
//!
//! Requests that match no service (unknown host, no `Host` header, bad
//! request line) are counted under `app=""`, `service=""`, in
//! `bora_router_requests_total` and `bora_router_request_duration_seconds`
//! only, once there is one. A service that leaves the route table disappears
//! from the metrics once its last request is over; if it comes back, its
//! counters restart from zero (Prometheus handles that as a counter reset).

use std::fmt;
use std::sync::{Arc, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::Router;
use crate::stats::{LatencyHistogram, ServiceStats};

/// Renders the router's statistics on every scrape.
#[derive(Debug)]
pub(crate) struct RouterCollector {
    /// Weak, so a registry that outlives the router does not keep it alive.
    router: Weak<Router>,
}

impl RouterCollector {
    pub(crate) fn new(router: &Arc<Router>) -> Self {
        Self {
            router: Arc::downgrade(router),
        }
    }
}

/// One service's statistics, as of the scrape.
struct Row {
    app: Arc<str>,
    service: Arc<str>,
    stats: ServiceStats,
    /// The requests that matched no service: only the request metrics.
    unrouted: bool,
}

impl Row {
    fn labels(&self) -> [(&'static str, &str); 2] {
        [("app", &self.app), ("service", &self.service)]
    }
}

impl Collector for RouterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Some(router) = self.router.upgrade() else {
            return Ok(());
        };
        let rows = rows(&router);
        let routed = || rows.iter().filter(|row| !row.unrouted);

        let mut family = encoder.encode_descriptor(
            "bora_router_requests",
            "Responses sent to clients, by HTTP status code.",
            None,
            MetricType::Counter,
        )?;
        for row in &rows {
            for (code, count) in &row.stats.responses {
                let code = code.to_string();
                let [app, service] = row.labels();
                let labels = [app, service, ("code", code.as_str())];
                let metric = family.encode_family(&labels)?;
                ConstCounter::new(*count).encode(metric)?;
            }
        }

        encode_histograms(
            &mut encoder,
            "bora_router_request_duration_seconds",
            "Time from arrival at the router to response headers, hold time included.",
            rows.iter().map(|row| (row, &row.stats.latency)),
        )?;

        let mut family = encoder.encode_descriptor(
            "bora_router_requests_in_flight",
            "Requests at instances now, upgraded connections included.",
            None,
            MetricType::Gauge,
        )?;
        for row in routed() {
            ConstGauge::new(row.stats.in_flight).encode(family.encode_family(&row.labels())?)?;
        }

        let mut family = encoder.encode_descriptor(
            "bora_router_requests_held",
            "Requests held now, waiting for the service to wake.",
            None,
            MetricType::Gauge,
        )?;
        for row in routed() {
            ConstGauge::new(row.stats.held).encode(family.encode_family(&row.labels())?)?;
        }

        let mut family = encoder.encode_descriptor(
            "bora_router_held_requests",
            "Requests that were held for a sleeping service, or refused a hold, by outcome.",
            None,
            MetricType::Counter,
        )?;
        for row in routed() {
            for (outcome, count) in row.stats.held_outcomes.by_label() {
                let [app, service] = row.labels();
                let labels = [app, service, ("outcome", outcome)];
                ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
            }
        }

        encode_histograms(
            &mut encoder,
            "bora_router_hold_duration_seconds",
            "How long held requests waited for their service to wake.",
            routed().map(|row| (row, &row.stats.hold_time)),
        )
    }
}

/// The statistics of every known service, sorted by app and service; the
/// unrouted requests only once there is one.
fn rows(router: &Router) -> Vec<Row> {
    let mut rows: Vec<Row> = router
        .services
        .all()
        .into_iter()
        .map(|state| {
            let unrouted = state.app.is_empty() && state.service.is_empty();
            Row {
                app: state.app.clone(),
                service: state.service.clone(),
                stats: state.counters.snapshot(),
                unrouted,
            }
        })
        .filter(|row| !row.unrouted || row.stats.arrived_total > 0)
        .collect();
    rows.sort_by(|a, b| (&a.app, &a.service).cmp(&(&b.app, &b.service)));
    rows
}

/// One histogram family, a histogram per row.
fn encode_histograms<'r>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    histograms: impl Iterator<Item = (&'r Row, &'r LatencyHistogram)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (row, histogram) in histograms {
        let buckets: Vec<(f64, u64)> = histogram
            .buckets()
            .map(|(bound, count)| {
                (
                    bound.map_or(f64::INFINITY, |bound| bound.as_secs_f64()),
                    count,
                )
            })
            .collect();
        family
            .encode_family(&row.labels())?
            .encode_histogram::<NoLabelSet>(
                histogram.sum().as_secs_f64(),
                histogram.count(),
                &buckets,
                None,
            )?;
    }
    Ok(())
}
