//! The gateway's Prometheus metrics, per model and key:
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `bora_gateway_requests_total` | counter | `model`, `key`, `code` | gateway requests answered, by HTTP status (`key` is the key's name, empty when none was valid) |
//! | `bora_gateway_errors_total` | counter | `model`, `key` | requests answered with a status ≥ 400 or broken off |
//! | `bora_gateway_tokens_total` | counter | `model`, `key`, `kind` | tokens, `prompt` or `completion` |
//! | `bora_gateway_time_to_first_token_seconds` | histogram | `model` | arrival → first token sent (streams) or the answer (otherwise) |
//! | `bora_gateway_output_tokens_per_second` | histogram | `model` | completion tokens over the time after the first one |
//! | `bora_gateway_queue_seconds` | histogram | `model` | arrival → sent to a replica (waking, retries included) |
//! | `bora_gateway_wakeups_total` | counter | `model` | requests that found their model asleep and waited for it |

use std::time::{Duration, Instant};

use http::StatusCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::Call;
use super::tap::Usage;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model: String,
    key: String,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabels {
    model: String,
    key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    model: String,
    key: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

/// 1 ms … ~65 s.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// 1 … ~32k tokens/s.
fn rate_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

/// The gateway's metric families (cheap to clone: shared inside).
#[derive(Clone)]
pub(crate) struct GatewayMetrics {
    requests: Family<RequestLabels, Counter>,
    errors: Family<KeyLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    ttft: Family<ModelLabels, Histogram, fn() -> Histogram>,
    output_rate: Family<ModelLabels, Histogram, fn() -> Histogram>,
    queue: Family<ModelLabels, Histogram, fn() -> Histogram>,
    wakeups: Family<ModelLabels, Counter>,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            errors: Family::default(),
            tokens: Family::default(),
            ttft: Family::new_with_constructor(seconds_histogram),
            output_rate: Family::new_with_constructor(rate_histogram),
            queue: Family::new_with_constructor(seconds_histogram),
            wakeups: Family::default(),
        }
    }
}

fn model(name: &str) -> ModelLabels {
    ModelLabels {
        model: name.to_string(),
    }
}

impl GatewayMetrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "bora_gateway_requests",
            "Gateway requests answered, by model, key and HTTP status",
            self.requests.clone(),
        );
        registry.register(
            "bora_gateway_errors",
            "Gateway requests answered with a status of 400 or more, or broken off",
            self.errors.clone(),
        );
        registry.register(
            "bora_gateway_tokens",
            "Tokens through the gateway, by model, key and kind (prompt, completion)",
            self.tokens.clone(),
        );
        registry.register(
            "bora_gateway_time_to_first_token_seconds",
            "Arrival at the gateway to the first token sent (the whole answer when not streamed)",
            self.ttft.clone(),
        );
        registry.register(
            "bora_gateway_output_tokens_per_second",
            "Completion tokens per second after the first token, per request",
            self.output_rate.clone(),
        );
        registry.register(
            "bora_gateway_queue_seconds",
            "Arrival at the gateway to the request sent to a replica (wake and retries included)",
            self.queue.clone(),
        );
        registry.register(
            "bora_gateway_wakeups",
            "Gateway requests that found their model asleep and waited for it to wake",
            self.wakeups.clone(),
        );
    }

    pub(crate) fn held(&self, name: &str) {
        self.wakeups.get_or_create(&model(name)).inc();
    }

    pub(crate) fn queued(&self, name: &str, waited: Duration) {
        self.queue
            .get_or_create(&model(name))
            .observe(waited.as_secs_f64());
    }

    pub(crate) fn finished(
        &self,
        call: &Call,
        status: StatusCode,
        usage: &Usage,
        first_token: Option<Instant>,
    ) {
        let key = call
            .key
            .as_ref()
            .map_or("", |k| k.name.as_str())
            .to_string();
        let name = call.model.clone();
        self.requests
            .get_or_create(&RequestLabels {
                model: name.clone(),
                key: key.clone(),
                code: status.as_u16(),
            })
            .inc();
        if status.as_u16() >= 400 {
            self.errors
                .get_or_create(&KeyLabels {
                    model: name.clone(),
                    key: key.clone(),
                })
                .inc();
        }
        for (kind, n) in [
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
        ] {
            if n > 0 {
                self.tokens
                    .get_or_create(&TokenLabels {
                        model: name.clone(),
                        key: key.clone(),
                        kind,
                    })
                    .inc_by(n);
            }
        }
        if let Some(first) = first_token {
            let ttft = first.saturating_duration_since(call.started);
            self.ttft
                .get_or_create(&model(&name))
                .observe(ttft.as_secs_f64());
            let after = first.elapsed().as_secs_f64();
            if usage.completion_tokens > 1 && after > 0.0 {
                self.output_rate
                    .get_or_create(&model(&name))
                    .observe((usage.completion_tokens - 1) as f64 / after);
            }
        }
    }

    /// Counts a stream that broke after its status was counted.
    pub(crate) fn broken(&self, call: &Call) {
        self.errors
            .get_or_create(&KeyLabels {
                model: call.model.clone(),
                key: call
                    .key
                    .as_ref()
                    .map_or("", |k| k.name.as_str())
                    .to_string(),
            })
            .inc();
    }
}
