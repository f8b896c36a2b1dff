//! The gateway's request records, written to the store off the data path.
//!
//! The router's gateway hands every [`RequestRecord`] to a
//! [`bora_router::Recorder`]. [`RecordWriter`] is that recorder: `record`
//! never blocks and never touches the store — it puts the record on a
//! bounded queue (a full queue drops the record, counts it and warns), and
//! one task writes the queue to the store in batches (every
//! [`RecorderConfig::batch_size`] records or [`RecorderConfig::interval`],
//! whichever comes first), one transaction each, on a blocking thread.
//! [`RecordWriter::flush`] writes what is queued and waits for it: the
//! server calls it when it stops.
//!
//! Without content retention (`bora server --retain-content` off, the
//! default), the prompt and the completion are removed here whatever the
//! gateway put in them.
//!
//! Metrics: `bora_request_records_written_total`, and
//! `bora_request_records_dropped_total{reason}` with `reason` `queue_full`
//! (the store could not keep up) or `store_error` (a batch could not be
//! written).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bora_api::RequestRecord;
use bora_store::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// How the recorder queues and batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecorderConfig {
    /// Records waiting to be written; beyond, new records are dropped.
    pub capacity: usize,
    /// The most records written in one transaction.
    pub batch_size: usize,
    /// The longest a record waits for its batch to fill.
    pub interval: Duration,
    /// Keep the prompt and the completion (`--retain-content`).
    pub retain_content: bool,
}

impl Default for RecorderConfig {
    /// 65 536 records queued, batches of 256 or every 200 ms, no content.
    fn default() -> Self {
        Self {
            capacity: 65_536,
            batch_size: 256,
            interval: Duration::from_millis(200),
            retain_content: false,
        }
    }
}

enum Message {
    Record(Box<RequestRecord>),
    Flush(oneshot::Sender<()>),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabels {
    reason: &'static str,
}

/// What the recorder counts.
#[derive(Default)]
struct Counters {
    written: Counter,
    dropped: Family<DropLabels, Counter>,
    /// Dropped for any reason, for the rate-limited warning.
    dropped_total: AtomicU64,
    batches: AtomicU64,
}

impl Counters {
    fn drop_records(&self, reason: &'static str, n: u64) {
        self.dropped.get_or_create(&DropLabels { reason }).inc_by(n);
        let before = self.dropped_total.fetch_add(n, Ordering::Relaxed);
        // Warn at the first drop and then at every power of two: visible,
        // but never a log line per request.
        let after = before + n;
        if before == 0 || (before + 1..=after).any(|k| k.is_power_of_two()) {
            tracing::warn!(
                reason,
                dropped_so_far = after,
                "request records dropped: the audit trail misses some requests"
            );
        }
    }
}

/// The recorder that writes request records to the store (see the module
/// docs). Install it with `router.set_recorder(writer.clone())`.
pub struct RecordWriter {
    tx: mpsc::Sender<Message>,
    retain_content: bool,
    counters: Arc<Counters>,
}

impl RecordWriter {
    /// Starts the writer task on the current tokio runtime.
    pub fn start(store: Arc<dyn Store>, config: RecorderConfig) -> Arc<Self> {
        let (writer, rx) = Self::unstarted(&config);
        tokio::spawn(write_batches(store, rx, config, writer.counters.clone()));
        writer
    }

    /// The writer without its task, and the queue the task would read.
    fn unstarted(config: &RecorderConfig) -> (Arc<Self>, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let writer = Arc::new(Self {
            tx,
            retain_content: config.retain_content,
            counters: Arc::new(Counters::default()),
        });
        (writer, rx)
    }

    /// Writes every record recorded so far and returns when they are in the
    /// store (or failed to be written).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Records written to the store so far.
    pub fn written(&self) -> u64 {
        self.counters.written.get()
    }

    /// Records dropped so far (queue full or a failed write).
    pub fn dropped(&self) -> u64 {
        self.counters.dropped_total.load(Ordering::Relaxed)
    }

    /// Registers `bora_request_records_written_total` and
    /// `bora_request_records_dropped_total`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "bora_request_records_written",
            "Inference gateway request records written to the store",
            self.counters.written.clone(),
        );
        registry.register(
            "bora_request_records_dropped",
            "Inference gateway request records lost: queue_full (the store could not keep up) or store_error",
            self.counters.dropped.clone(),
        );
    }
}

impl bora_router::Recorder for RecordWriter {
    fn record(&self, mut record: RequestRecord) {
        if !self.retain_content {
            record.prompt = None;
            record.completion = None;
        }
        if self.tx.try_send(Message::Record(Box::new(record))).is_err() {
            self.counters.drop_records("queue_full", 1);
        }
    }
}

/// The writer task: batches from the queue into the store until every
/// sender is gone.
async fn write_batches(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<Message>,
    config: RecorderConfig,
    counters: Arc<Counters>,
) {
    let batch_size = config.batch_size.max(1);
    let mut batch: Vec<RequestRecord> = Vec::with_capacity(batch_size);
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(message) = rx.recv().await {
        take(message, &mut batch, &mut waiters);
        let deadline = Instant::now() + config.interval;
        while batch.len() < batch_size && waiters.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(message)) => take(message, &mut batch, &mut waiters),
                Ok(None) | Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let records = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
            write(&store, records, &counters).await;
        }
        for done in waiters.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Adds a message to the batch being gathered, or a flush to the waiters
/// answered once it is written.
fn take(message: Message, batch: &mut Vec<RequestRecord>, waiters: &mut Vec<oneshot::Sender<()>>) {
    match message {
        Message::Record(record) => batch.push(*record),
        Message::Flush(done) => waiters.push(done),
    }
}

async fn write(store: &Arc<dyn Store>, records: Vec<RequestRecord>, counters: &Counters) {
    let n = records.len() as u64;
    let store = store.clone();
    let result = tokio::task::spawn_blocking(move || store.insert_requests(&records)).await;
    counters.batches.fetch_add(1, Ordering::Relaxed);
    match result {
        Ok(Ok(())) => {
            counters.written.inc_by(n);
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, records = n, "cannot write request records");
            counters.drop_records("store_error", n);
        }
        Err(e) => {
            tracing::error!(error = %e, records = n, "the request record writer failed");
            counters.drop_records("store_error", n);
        }
    }
}

#[cfg(test)]
mod tests {
    use bora_router::Recorder;
    use bora_store::{RequestFilter, SecretCipher, SqliteStore};

    use super::*;

    fn store(dir: &std::path::Path) -> Arc<dyn Store> {
        let cipher = SecretCipher::load_or_create(&dir.join("secret.key")).unwrap();
        Arc::new(SqliteStore::open(&dir.join("bora.db"), cipher).unwrap())
    }

    fn record(i: usize) -> RequestRecord {
        RequestRecord {
            id: format!("req-{i}"),
            at: chrono::Utc::now(),
            key_id: Some("key_0000000000000001".into()),
            key_name: Some("ci".into()),
            model: "llama".into(),
            app: None,
            service: None,
            instance: None,
            model_digest: None,
            engine: None,
            endpoint: "chat.completions".into(),
            stream: false,
            status: 200,
            error: None,
            prompt_tokens: 3,
            completion_tokens: 4,
            duration_ms: 10,
            ttft_ms: None,
            prompt: Some("the prompt".into()),
            completion: Some("the completion".into()),
        }
    }

    fn stored(store: &Arc<dyn Store>) -> Vec<RequestRecord> {
        store
            .list_requests(&RequestFilter {
                limit: 10_000,
                ..Default::default()
            })
            .unwrap()
            .into_iter()
            .map(|r| r.record)
            .collect()
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn full_batches_are_written_at_once_and_the_rest_on_flush() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let writer = RecordWriter::start(
            store.clone(),
            RecorderConfig {
                batch_size: 10,
                interval: Duration::from_secs(3600),
                ..Default::default()
            },
        );
        for i in 0..25 {
            writer.record(record(i));
        }
        wait_for("two full batches", || writer.written() == 20).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(stored(&store).len(), 20, "a partial batch waits");
        assert_eq!(writer.counters.batches.load(Ordering::Relaxed), 2);

        writer.flush().await;
        let all = stored(&store);
        assert_eq!(all.len(), 25);
        assert_eq!(
            all.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
            (0..25).map(|i| format!("req-{i}")).collect::<Vec<_>>(),
            "in the order recorded"
        );
        assert_eq!(writer.counters.batches.load(Ordering::Relaxed), 3);
        assert_eq!(writer.dropped(), 0);
        // Nothing queued: a flush has nothing to write.
        writer.flush().await;
        assert_eq!(writer.counters.batches.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn a_partial_batch_is_written_after_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let writer = RecordWriter::start(
            store.clone(),
            RecorderConfig {
                interval: Duration::from_millis(50),
                ..Default::default()
            },
        );
        for i in 0..3 {
            writer.record(record(i));
        }
        wait_for("the interval's batch", || writer.written() == 3).await;
        assert_eq!(stored(&store).len(), 3);
        assert_eq!(writer.counters.batches.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn content_is_kept_only_when_retained() {
        for retain_content in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let store = store(dir.path());
            let writer = RecordWriter::start(
                store.clone(),
                RecorderConfig {
                    retain_content,
                    ..Default::default()
                },
            );
            writer.record(record(0));
            writer.flush().await;
            let all = stored(&store);
            assert_eq!(all.len(), 1);
            let want = |s: &str| retain_content.then(|| s.to_string());
            assert_eq!(all[0].prompt, want("the prompt"));
            assert_eq!(all[0].completion, want("the completion"));
            assert_eq!(all[0].prompt_tokens, 3, "usage is kept either way");
        }
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let config = RecorderConfig {
            capacity: 4,
            ..Default::default()
        };
        let (writer, rx) = RecordWriter::unstarted(&config);
        for i in 0..7 {
            writer.record(record(i));
        }
        assert_eq!(writer.dropped(), 3);
        let mut registry = prometheus_client::registry::Registry::default();
        writer.register_metrics(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("bora_request_records_dropped_total{reason=\"queue_full\"} 3"),
            "{text}"
        );

        tokio::spawn(write_batches(
            store.clone(),
            rx,
            config,
            writer.counters.clone(),
        ));
        writer.flush().await;
        let ids: Vec<_> = stored(&store).into_iter().map(|r| r.id).collect();
        assert_eq!(ids, vec!["req-0", "req-1", "req-2", "req-3"]);
        assert_eq!(writer.written(), 4);
    }
}
