//! The engine's Prometheus metrics, served at `GET /metrics`.
//!
//! Names follow vLLM's where vLLM has the same quantity, so dashboards and
//! routers that read a vLLM replica (llm-d's scorers, the SGLang router,
//! Bora's gateway) read this engine unchanged. Every series carries
//! `model_name`.
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `vllm:num_requests_running` | gauge | sequences in the running batch |
//! | `vllm:num_requests_waiting` | gauge | requests queued, not yet admitted (the queue depth) |
//! | `vllm:kv_cache_usage_perc` | gauge | positions held by running sequences ÷ the KV budget, 0–1 (also as `vllm:gpu_cache_usage_perc`, vLLM's older name) |
//! | `vllm:prompt_tokens_total` | counter | prompt tokens admitted |
//! | `vllm:generation_tokens_total` | counter | tokens generated |
//! | `vllm:avg_generation_throughput_toks_per_s` | gauge | tokens generated per second over the last 10 s |
//! | `vllm:avg_prompt_throughput_toks_per_s` | gauge | prompt tokens processed per second over the last 10 s |
//! | `vllm:request_success_total` | counter | finished requests, by `finished_reason` (`stop`, `length`, `abort`, `error`) |
//! | `vllm:time_to_first_token_seconds` | histogram | arrival → first token sampled |
//! | `vllm:time_per_output_token_seconds` | histogram | between consecutive tokens of a request |
//! | `vllm:e2e_request_latency_seconds` | histogram | arrival → finished |
//! | `vllm:request_queue_time_seconds` | histogram | arrival → admitted to the batch |
//! | `vllm:prefix_cache_queries_total` | counter | prompt tokens looked up in the prefix cache |
//! | `vllm:prefix_cache_hits_total` | counter | of those, tokens whose keys and values were reused |
//! | `bora_engine_batch_size` | histogram | sequences per forward pass |

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishLabels {
    model_name: String,
    finished_reason: String,
}

/// 1 ms … ~65 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// 1 … 128 sequences.
fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 8))
}

type Hist = Family<ModelLabels, Histogram, fn() -> Histogram>;
type FloatGauge = Family<ModelLabels, Gauge<f64, AtomicU64>>;

/// How long the throughput gauges look back.
const WINDOW: Duration = Duration::from_secs(10);

/// The engine's metrics; the scheduler records, `/metrics` encodes.
pub struct EngineMetrics {
    labels: ModelLabels,
    registry: Registry,
    running: Family<ModelLabels, Gauge>,
    waiting: Family<ModelLabels, Gauge>,
    kv_usage: FloatGauge,
    prompt_tokens: Family<ModelLabels, Counter>,
    generation_tokens: Family<ModelLabels, Counter>,
    generation_throughput: FloatGauge,
    prompt_throughput: FloatGauge,
    success: Family<FinishLabels, Counter>,
    ttft: Hist,
    tpot: Hist,
    e2e: Hist,
    queue_time: Hist,
    prefix_queries: Family<ModelLabels, Counter>,
    prefix_hits: Family<ModelLabels, Counter>,
    batch_size: Hist,
    /// (when, prompt tokens, generated tokens) of recent steps.
    recent: Mutex<VecDeque<(Instant, u64, u64)>>,
}

impl std::fmt::Debug for EngineMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineMetrics").finish_non_exhaustive()
    }
}

impl EngineMetrics {
    /// Metrics for the model clients call `model_name`.
    pub fn new(model_name: &str) -> Self {
        let mut m = Self {
            labels: ModelLabels {
                model_name: model_name.to_string(),
            },
            registry: Registry::default(),
            running: Family::default(),
            waiting: Family::default(),
            kv_usage: Family::default(),
            prompt_tokens: Family::default(),
            generation_tokens: Family::default(),
            generation_throughput: Family::default(),
            prompt_throughput: Family::default(),
            success: Family::default(),
            ttft: Family::new_with_constructor(latency_histogram),
            tpot: Family::new_with_constructor(latency_histogram),
            e2e: Family::new_with_constructor(latency_histogram),
            queue_time: Family::new_with_constructor(latency_histogram),
            prefix_queries: Family::default(),
            prefix_hits: Family::default(),
            batch_size: Family::new_with_constructor(batch_histogram),
            recent: Mutex::new(VecDeque::new()),
        };
        m.register();
        // Series that exist before the first request, so a scraper sees
        // zeros rather than nothing.
        let _ = m.running.get_or_create(&m.labels);
        let _ = m.waiting.get_or_create(&m.labels);
        let _ = m.kv_usage.get_or_create(&m.labels);
        let _ = m.prompt_tokens.get_or_create(&m.labels);
        let _ = m.generation_tokens.get_or_create(&m.labels);
        let _ = m.prefix_queries.get_or_create(&m.labels);
        let _ = m.prefix_hits.get_or_create(&m.labels);
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "vllm:num_requests_running",
            "Sequences in the running batch",
            self.running.clone(),
        );
        r.register(
            "vllm:num_requests_waiting",
            "Requests queued and not yet admitted to the batch",
            self.waiting.clone(),
        );
        r.register(
            "vllm:kv_cache_usage_perc",
            "KV-cache positions held by running sequences over the KV budget (0-1)",
            self.kv_usage.clone(),
        );
        r.register(
            "vllm:gpu_cache_usage_perc",
            "Same as vllm:kv_cache_usage_perc (vLLM's older name)",
            self.kv_usage.clone(),
        );
        r.register(
            "vllm:prompt_tokens",
            "Prompt tokens admitted",
            self.prompt_tokens.clone(),
        );
        r.register(
            "vllm:generation_tokens",
            "Tokens generated",
            self.generation_tokens.clone(),
        );
        r.register(
            "vllm:avg_generation_throughput_toks_per_s",
            "Tokens generated per second over the last 10 s",
            self.generation_throughput.clone(),
        );
        r.register(
            "vllm:avg_prompt_throughput_toks_per_s",
            "Prompt tokens processed per second over the last 10 s",
            self.prompt_throughput.clone(),
        );
        r.register(
            "vllm:request_success",
            "Finished requests by finish reason",
            self.success.clone(),
        );
        r.register(
            "vllm:time_to_first_token_seconds",
            "Time from arrival to the first generated token",
            self.ttft.clone(),
        );
        r.register(
            "vllm:time_per_output_token_seconds",
            "Time between consecutive generated tokens of a request",
            self.tpot.clone(),
        );
        r.register(
            "vllm:e2e_request_latency_seconds",
            "Time from arrival to the end of generation",
            self.e2e.clone(),
        );
        r.register(
            "vllm:request_queue_time_seconds",
            "Time from arrival to admission into the running batch",
            self.queue_time.clone(),
        );
        r.register(
            "vllm:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache",
            self.prefix_queries.clone(),
        );
        r.register(
            "vllm:prefix_cache_hits",
            "Prompt tokens whose keys and values came from the prefix cache",
            self.prefix_hits.clone(),
        );
        r.register(
            "bora_engine_batch_size",
            "Sequences per forward pass",
            self.batch_size.clone(),
        );
    }

    /// The Prometheus text exposition (OpenMetrics).
    pub fn encode(&self) -> String {
        self.update_throughput(Instant::now(), 0, 0);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    pub(crate) fn set_queue(&self, running: usize, waiting: usize, kv_usage: f64) {
        self.running.get_or_create(&self.labels).set(running as i64);
        self.waiting.get_or_create(&self.labels).set(waiting as i64);
        self.kv_usage.get_or_create(&self.labels).set(kv_usage);
    }

    pub(crate) fn admitted(&self, prompt_tokens: usize, cached: usize, queued: Duration) {
        self.prompt_tokens
            .get_or_create(&self.labels)
            .inc_by(prompt_tokens as u64);
        self.prefix_queries
            .get_or_create(&self.labels)
            .inc_by(prompt_tokens as u64);
        self.prefix_hits
            .get_or_create(&self.labels)
            .inc_by(cached as u64);
        self.queue_time
            .get_or_create(&self.labels)
            .observe(queued.as_secs_f64());
    }

    pub(crate) fn step(&self, sequences: usize, prompt_tokens: usize, generated: usize) {
        self.batch_size
            .get_or_create(&self.labels)
            .observe(sequences as f64);
        self.generation_tokens
            .get_or_create(&self.labels)
            .inc_by(generated as u64);
        self.update_throughput(Instant::now(), prompt_tokens as u64, generated as u64);
    }

    pub(crate) fn first_token(&self, since_arrival: Duration) {
        self.ttft
            .get_or_create(&self.labels)
            .observe(since_arrival.as_secs_f64());
    }

    pub(crate) fn next_token(&self, since_previous: Duration) {
        self.tpot
            .get_or_create(&self.labels)
            .observe(since_previous.as_secs_f64());
    }

    pub(crate) fn finished(&self, reason: &str, since_arrival: Duration) {
        self.success
            .get_or_create(&FinishLabels {
                model_name: self.labels.model_name.clone(),
                finished_reason: reason.to_string(),
            })
            .inc();
        self.e2e
            .get_or_create(&self.labels)
            .observe(since_arrival.as_secs_f64());
    }

    fn update_throughput(&self, now: Instant, prompt: u64, generated: u64) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if prompt > 0 || generated > 0 {
            recent.push_back((now, prompt, generated));
        }
        while recent
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) > WINDOW)
        {
            recent.pop_front();
        }
        let (p, g) = recent
            .iter()
            .fold((0, 0), |(p, g), (_, dp, dg)| (p + dp, g + dg));
        let secs = WINDOW.as_secs_f64();
        self.prompt_throughput
            .get_or_create(&self.labels)
            .set(p as f64 / secs);
        self.generation_throughput
            .get_or_create(&self.labels)
            .set(g as f64 / secs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_vllm_names_with_the_model_label() {
        let m = EngineMetrics::new("smol");
        m.set_queue(2, 3, 0.25);
        m.admitted(100, 64, Duration::from_millis(5));
        m.step(2, 100, 2);
        m.first_token(Duration::from_millis(40));
        m.finished("stop", Duration::from_millis(90));
        let text = m.encode();
        for line in [
            "vllm:num_requests_running{model_name=\"smol\"} 2",
            "vllm:num_requests_waiting{model_name=\"smol\"} 3",
            "vllm:kv_cache_usage_perc{model_name=\"smol\"} 0.25",
            "vllm:gpu_cache_usage_perc{model_name=\"smol\"} 0.25",
            "vllm:prompt_tokens_total{model_name=\"smol\"} 100",
            "vllm:generation_tokens_total{model_name=\"smol\"} 2",
            "vllm:prefix_cache_queries_total{model_name=\"smol\"} 100",
            "vllm:prefix_cache_hits_total{model_name=\"smol\"} 64",
            "vllm:request_success_total{model_name=\"smol\",finished_reason=\"stop\"} 1",
            "vllm:time_to_first_token_seconds_count{model_name=\"smol\"} 1",
            "vllm:avg_generation_throughput_toks_per_s{model_name=\"smol\"} 0.2",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
