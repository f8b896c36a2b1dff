//! What the gateway knows of each model replica beyond its own counts:
//! the queue and KV-cache use the replica reports on its `/metrics`
//! (vLLM's names, which Bora's engine uses too), read every second, and
//! whether it was marked down after failing a request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio_util::sync::CancellationToken;

use crate::Router;

/// How often replicas' metrics are read.
const SCRAPE_EVERY: Duration = Duration::from_secs(1);
/// How long one read may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);
/// Reports older than this are ignored (the replica stopped answering).
const STALE_AFTER: Duration = Duration::from_secs(5);
/// The most of a `/metrics` page read.
const MAX_PAGE: usize = 1024 * 1024;

/// One replica's state as the chooser reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Report {
    pub(crate) waiting: f64,
    pub(crate) kv_usage: f64,
    pub(crate) down: bool,
}

#[derive(Debug, Default)]
struct Entry {
    waiting: f64,
    kv_usage: f64,
    read_at: Option<Instant>,
    down_until: Option<Instant>,
}

/// Every replica's entry, by instance id.
#[derive(Debug, Default)]
pub(crate) struct Replicas(Mutex<HashMap<Arc<str>, Entry>>);

impl Replicas {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Entry>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn get(&self, instance: &str) -> Report {
        let now = Instant::now();
        let entries = self.lock();
        let Some(entry) = entries.get(instance) else {
            return Report::default();
        };
        let fresh = entry
            .read_at
            .is_some_and(|at| now.saturating_duration_since(at) < STALE_AFTER);
        Report {
            waiting: if fresh { entry.waiting } else { 0.0 },
            kv_usage: if fresh { entry.kv_usage } else { 0.0 },
            down: entry.down_until.is_some_and(|until| until > now),
        }
    }

    /// No new requests to `instance` for `period` (unless no other
    /// replica is left).
    pub(crate) fn mark_down(&self, instance: &Arc<str>, period: Duration) {
        tracing::info!(%instance, "model replica marked down for {period:?}");
        self.lock().entry(instance.clone()).or_default().down_until = Some(Instant::now() + period);
    }

    fn report(&self, instance: &Arc<str>, waiting: f64, kv_usage: f64) {
        let mut entries = self.lock();
        let entry = entries.entry(instance.clone()).or_default();
        entry.waiting = waiting;
        entry.kv_usage = kv_usage;
        entry.read_at = Some(Instant::now());
    }

    /// Forgets replicas not in `live`.
    fn retain(&self, live: &[Arc<str>]) {
        self.lock().retain(|id, _| live.contains(id));
    }
}

/// Reads every model replica's metrics each second until `stop`.
pub(crate) async fn watch(router: Arc<Router>, stop: CancellationToken) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(SCRAPE_TIMEOUT));
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(connector);
    loop {
        tokio::select! {
            () = tokio::time::sleep(SCRAPE_EVERY) => {}
            () = stop.cancelled() => return,
        }
        let targets: Vec<(Arc<str>, std::net::SocketAddr)> = router
            .table
            .load()
            .models()
            .flat_map(|model| {
                model
                    .service
                    .backends
                    .iter()
                    .map(|b| {
                        (
                            b.instance_id.clone(),
                            std::net::SocketAddr::new(b.ip, model.port),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let replicas = &router.gateway.replicas;
        replicas.retain(&targets.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>());
        let mut reads = tokio::task::JoinSet::new();
        for (id, addr) in targets {
            let client = client.clone();
            reads.spawn(async move {
                let page = tokio::time::timeout(SCRAPE_TIMEOUT, read_metrics(&client, addr)).await;
                (id, page.ok().flatten())
            });
        }
        while let Some(read) = reads.join_next().await {
            if let Ok((id, Some(page))) = read {
                let (waiting, kv_usage) = parse_metrics(&page);
                replicas.report(&id, waiting, kv_usage);
            }
        }
    }
}

async fn read_metrics(
    client: &Client<HttpConnector, Empty<Bytes>>,
    addr: std::net::SocketAddr,
) -> Option<String> {
    let uri: Uri = format!("http://{addr}/metrics").parse().ok()?;
    let request = Request::get(uri).body(Empty::new()).ok()?;
    let response = client.request(request).await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = http_body_util::Limited::new(response.into_body(), MAX_PAGE)
        .collect()
        .await
        .ok()?
        .to_bytes();
    String::from_utf8(body.to_vec()).ok()
}

/// `vllm:num_requests_waiting` and `vllm:kv_cache_usage_perc` (0 when a
/// replica does not report them), summed over label sets.
pub(crate) fn parse_metrics(page: &str) -> (f64, f64) {
    let (mut waiting, mut kv_usage) = (0.0, 0.0);
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| v.is_finite());
        let Some(value) = value else { continue };
        match &line[..name_end] {
            "vllm:num_requests_waiting" => waiting += value,
            "vllm:kv_cache_usage_perc" => kv_usage += value,
            _ => {}
        }
    }
    (waiting, kv_usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_and_kv_use_are_read_from_vllm_names() {
        let page = "# HELP vllm:num_requests_waiting Requests waiting\n\
            # TYPE vllm:num_requests_waiting gauge\n\
            vllm:num_requests_waiting{model_name=\"smollm2\"} 3\n\
            vllm:num_requests_running{model_name=\"smollm2\"} 8\n\
            vllm:kv_cache_usage_perc{model_name=\"smollm2\"} 0.25\n\
            vllm:kv_cache_usage_percentile 9\n";
        assert_eq!(parse_metrics(page), (3.0, 0.25));
        assert_eq!(
            parse_metrics("garbage\n{}\nvllm:num_requests_waiting NaN"),
            (0.0, 0.0)
        );
    }

    #[test]
    fn down_marks_expire_and_stale_reports_are_ignored() {
        let replicas = Replicas::default();
        let id: Arc<str> = "r1".into();
        replicas.report(&id, 2.0, 0.5);
        assert_eq!(
            replicas.get("r1"),
            Report {
                waiting: 2.0,
                kv_usage: 0.5,
                down: false
            }
        );
        replicas.mark_down(&id, Duration::from_millis(20));
        assert!(replicas.get("r1").down);
        std::thread::sleep(Duration::from_millis(30));
        assert!(!replicas.get("r1").down);
        replicas.lock().get_mut("r1").unwrap().read_at =
            Some(Instant::now() - STALE_AFTER - Duration::from_secs(1));
        assert_eq!(replicas.get("r1").waiting, 0.0);
        replicas.retain(&[]);
        assert_eq!(replicas.get("r1"), Report::default());
    }
}
