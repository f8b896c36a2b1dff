//! The engine: loaded models and the scheduler that runs generation
//! requests.
//!
//! Requests reach the model through a bounded queue owned by one scheduler
//! thread ([`Scheduler`]), which runs them together by continuous batching
//! and streams events back over a per-request channel. The HTTP layer only
//! ever calls [`Engine::submit`].

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use candle_core::Device;
use tokio::sync::mpsc;

use crate::error::{EngineError, Result};
use crate::generate::{FinishReason, Flow, GenerateParams, Generation, Sequence, Step};
use crate::gguf::GgufFile;
use crate::llama::{BatchItem, KvCache, Llama, WeightPrecision};
use crate::logprobs::TokenLogprob;
use crate::metrics::EngineMetrics;
use crate::prefix_cache::PrefixCache;
use crate::template::{CHATML_TEMPLATE, ChatTemplate};
use crate::tokenizer::TextTokenizer;

/// The device models run on: the first CUDA GPU when built with the `cuda`
/// feature and one is present, otherwise the CPU.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    if let Ok(device) = Device::new_cuda(0) {
        return device;
    }
    Device::Cpu
}

/// A chat/completion model: weights, tokenizer and chat template from one
/// GGUF file.
#[derive(Debug)]
pub struct TextModel {
    /// The name clients use in `model`.
    pub name: String,
    /// The weights.
    pub llama: Llama,
    /// The tokenizer.
    pub tokenizer: TextTokenizer,
    /// The chat template.
    pub template: ChatTemplate,
}

impl TextModel {
    /// Loads and validates a GGUF file. `name` defaults to the file name
    /// without its extension.
    pub fn load(
        path: &Path,
        name: Option<String>,
        device: &Device,
        precision: WeightPrecision,
    ) -> Result<Self> {
        let mut file = GgufFile::open(path)?;
        let tokenizer = TextTokenizer::from_gguf(&file.tokenizer).map_err(|reason| {
            EngineError::Unsupported {
                path: path.to_path_buf(),
                reason,
            }
        })?;
        let source = match &file.chat_template {
            Some(t) => t.clone(),
            None => {
                tracing::warn!(path = %path.display(), "no tokenizer.chat_template in the model file; using ChatML");
                CHATML_TEMPLATE.to_string()
            }
        };
        let template = ChatTemplate::new(&source, tokenizer.bos_token(), tokenizer.eos_token())
            .map_err(|e| EngineError::InvalidModel {
                path: path.to_path_buf(),
                reason: format!("tokenizer.chat_template: {e}"),
            })?;
        let llama = Llama::load(&mut file, device, precision)?;
        if tokenizer.vocab_size() > llama.vocab_size() {
            return Err(EngineError::InvalidModel {
                path: path.to_path_buf(),
                reason: format!(
                    "the tokenizer has {} tokens but the model only {}",
                    tokenizer.vocab_size(),
                    llama.vocab_size()
                ),
            });
        }
        let name = name.unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into())
        });
        Ok(Self {
            name,
            llama,
            tokenizer,
            template,
        })
    }

    /// The context window in tokens.
    pub fn context_length(&self) -> usize {
        self.llama.config().context_length
    }
}

/// What the worker reports about a request, in order: text pieces, then
/// exactly one `Done` or `Failed`.
#[derive(Debug)]
pub enum GenEvent {
    /// More output text, and the log-probabilities (when asked for) of the
    /// tokens sampled since the previous event (the text may be empty).
    Text(String, Vec<crate::logprobs::TokenLogprob>),
    /// Generation finished.
    Done(Generation),
    /// Generation failed; only this request is affected.
    Failed(EngineError),
}

/// How the scheduler shares the model between requests.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most sequences in the running batch (vLLM's `max_num_seqs`).
    pub max_running: usize,
    /// Bytes of keys and values the running sequences may hold together.
    /// A request is admitted once its prompt plus its `max_tokens` (within
    /// the context window) fit beside the running ones' reservations.
    pub kv_cache_bytes: usize,
    /// Most prompt tokens run in one step: a long prompt is prefilled in
    /// chunks over several steps, so running sequences keep generating.
    pub prefill_chunk: usize,
    /// Bytes the prefix cache may hold (0 turns it off).
    pub prefix_cache_bytes: usize,
    /// Requests that may wait in the submission queue before submitters are
    /// held back.
    pub queue: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_running: 16,
            kv_cache_bytes: 4 << 30,
            prefill_chunk: 512,
            prefix_cache_bytes: 1 << 30,
            queue: 1024,
        }
    }
}

struct Job {
    params: GenerateParams,
    events: mpsc::UnboundedSender<GenEvent>,
    arrived: Instant,
}

/// A handle to the running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    model: Arc<TextModel>,
    jobs: mpsc::Sender<Job>,
    metrics: Arc<EngineMetrics>,
    /// Requests submitted and not yet admitted to the batch.
    waiting: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.model.name)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts the scheduler thread for `model`.
    pub fn start(model: TextModel, config: EngineConfig) -> Self {
        let model = Arc::new(model);
        let metrics = Arc::new(EngineMetrics::new(&model.name));
        let waiting = Arc::new(AtomicUsize::new(0));
        let (jobs, rx) = mpsc::channel(config.queue.max(1));
        let scheduler = Scheduler::new(
            Arc::clone(&model),
            config,
            Arc::clone(&metrics),
            Arc::clone(&waiting),
        );
        std::thread::Builder::new()
            .name("bora-engine-scheduler".into())
            .spawn(move || scheduler.run(rx))
            .expect("spawning the engine scheduler thread");
        Self {
            model,
            jobs,
            metrics,
            waiting,
        }
    }

    /// The model this engine serves.
    pub fn model(&self) -> &TextModel {
        &self.model
    }

    /// The engine's metrics.
    pub fn metrics(&self) -> &EngineMetrics {
        &self.metrics
    }

    /// Queues a generation; events arrive on the returned channel. Dropping
    /// the receiver cancels the request, queued or running.
    pub async fn submit(
        &self,
        params: GenerateParams,
    ) -> Result<mpsc::UnboundedReceiver<GenEvent>> {
        let (events, rx) = mpsc::unbounded_channel();
        let arrived = Instant::now();
        self.waiting.fetch_add(1, Ordering::Relaxed);
        let sent = self
            .jobs
            .send(Job {
                params,
                events,
                arrived,
            })
            .await;
        if sent.is_err() {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(EngineError::WorkerGone);
        }
        Ok(rx)
    }
}

/// A sequence in the running batch.
struct Running {
    sequence: Sequence,
    cache: KvCache,
    events: mpsc::UnboundedSender<GenEvent>,
    arrived: Instant,
    /// Prompt tokens whose keys and values are in `cache`.
    prefilled: usize,
    /// The sampled token to run next; `None` while the prompt is prefilled.
    next: Option<u32>,
    /// KV positions reserved for it (prompt plus its token limit).
    reserved: usize,
    /// Tokens to run in the step being built (0: sits this step out).
    step_tokens: usize,
    last_token_at: Option<Instant>,
}

impl Running {
    fn prompt_len(&self) -> usize {
        self.sequence.prompt_ids().len()
    }

    /// Whether this step's forward pass must produce logits: the sequence
    /// samples after it (not after a prompt chunk that is not the last).
    fn wants_logits(&self) -> bool {
        self.next.is_some() || self.prefilled + self.step_tokens == self.prompt_len()
    }
}

/// Continuous batching on one thread: between forward passes it takes in
/// new requests, admits waiting ones in arrival order while the running
/// batch has room (sequences and reserved KV positions), and drops finished
/// and cancelled ones; each forward pass runs one token of every decoding
/// sequence plus a bounded chunk of prompt tokens. Admission is first come,
/// first served and every admitted request has a bounded length, so a
/// request waits only for earlier ones: none starves.
struct Scheduler {
    model: Arc<TextModel>,
    config: EngineConfig,
    metrics: Arc<EngineMetrics>,
    waiting_count: Arc<AtomicUsize>,
    /// Positions the running sequences may reserve together.
    kv_budget: usize,
    prefix_cache: PrefixCache,
    waiting: VecDeque<Job>,
    running: Vec<Running>,
}

impl Scheduler {
    fn new(
        model: Arc<TextModel>,
        config: EngineConfig,
        metrics: Arc<EngineMetrics>,
        waiting_count: Arc<AtomicUsize>,
    ) -> Self {
        let per_token = model.llama.kv_bytes_per_token().max(1);
        // A request larger than the whole budget still runs, alone (see
        // `admit`), so a small budget slows the engine but never blocks it.
        let kv_budget = (config.kv_cache_bytes / per_token).max(1);
        Self {
            prefix_cache: PrefixCache::new(config.prefix_cache_bytes),
            model,
            config,
            metrics,
            waiting_count,
            kv_budget,
            waiting: VecDeque::new(),
            running: Vec::new(),
        }
    }

    fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                self.publish();
                match jobs.blocking_recv() {
                    Some(job) => self.waiting.push_back(job),
                    None => return, // every Engine handle is gone
                }
            }
            while let Ok(job) = jobs.try_recv() {
                self.waiting.push_back(job);
            }
            self.drop_cancelled();
            self.admit();
            self.publish();
            self.step();
        }
    }

    fn reserved(&self) -> usize {
        self.running.iter().map(|r| r.reserved).sum()
    }

    fn publish(&self) {
        let held: usize = self.running.iter().map(|r| r.cache.len()).sum();
        self.metrics.set_queue(
            self.running.len(),
            self.waiting_count.load(Ordering::Relaxed),
            held as f64 / self.kv_budget as f64,
        );
    }

    fn drop_cancelled(&mut self) {
        let metrics = &self.metrics;
        let waiting_count = &self.waiting_count;
        self.waiting.retain(|job| {
            let keep = !job.events.is_closed();
            if !keep {
                waiting_count.fetch_sub(1, Ordering::Relaxed);
                metrics.finished("abort", job.arrived.elapsed());
            }
            keep
        });
        self.running.retain(|r| {
            let keep = !r.events.is_closed();
            if !keep {
                metrics.finished("abort", r.arrived.elapsed());
            }
            keep
        });
    }

    /// Moves waiting requests into the batch, first come first served,
    /// while there is room.
    fn admit(&mut self) {
        let context_length = self.model.context_length();
        while self.running.len() < self.config.max_running.max(1) {
            let Some(job) = self.waiting.front() else {
                return;
            };
            let prompt = job.params.prompt_ids.len();
            let reserve = (prompt + job.params.max_tokens).min(context_length);
            if !self.running.is_empty() && self.reserved() + reserve > self.kv_budget {
                return; // the head waits for room; nobody overtakes it
            }
            let job = self.waiting.pop_front().expect("front exists");
            self.waiting_count.fetch_sub(1, Ordering::Relaxed);
            if prompt == 0 {
                // The server never sends one; a library caller might.
                let _ = job.events.send(GenEvent::Failed(EngineError::invalid(
                    "prompt",
                    "the prompt is empty",
                )));
                self.metrics.finished("error", job.arrived.elapsed());
                continue;
            }
            let sequence = Sequence::new(job.params);
            let cache = self
                .prefix_cache
                .lookup(sequence.prompt_ids())
                .unwrap_or_else(|| self.model.llama.new_cache());
            self.metrics
                .admitted(prompt, cache.len(), job.arrived.elapsed());
            self.running.push(Running {
                sequence,
                prefilled: cache.len(),
                cache,
                events: job.events,
                arrived: job.arrived,
                next: None,
                reserved: reserve,
                step_tokens: 0,
                last_token_at: None,
            });
        }
    }

    /// One forward pass over the batch, then one sampling step for every
    /// sequence that got logits.
    fn step(&mut self) {
        if self.running.is_empty() {
            return;
        }
        let mut prefill_budget = self.config.prefill_chunk.max(1);
        let mut prompt_tokens = 0;
        for r in &mut self.running {
            r.step_tokens = if r.next.is_some() {
                1
            } else {
                let n = (r.prompt_len() - r.prefilled).min(prefill_budget);
                prefill_budget -= n;
                prompt_tokens += n;
                n
            };
        }
        let outcomes = self.forward();
        let mut outcomes = outcomes.into_iter();
        let mut sequences = 0;
        let mut generated = 0;
        let tokenizer = &self.model.tokenizer;
        let context_length = self.model.context_length();
        let mut finished = Vec::new();
        for (i, r) in self.running.iter_mut().enumerate() {
            let out = match outcomes.next().expect("one outcome per sequence") {
                Outcome::Skipped => continue,
                Outcome::Failed(e) => {
                    finished.push((i, Err(e)));
                    continue;
                }
                Outcome::Ran(None) => {
                    sequences += 1;
                    r.prefilled += r.step_tokens; // a middle chunk of the prompt
                    continue;
                }
                Outcome::Ran(Some(logits)) => logits,
            };
            sequences += 1;
            if r.next.is_none() {
                r.prefilled = r.prompt_len();
                self.prefix_cache.insert(r.sequence.prompt_ids(), &r.cache);
            }
            let before = r.sequence.generated();
            let events = &r.events;
            let mut on_text = |text: &str, logprobs: &[TokenLogprob]| match events
                .send(GenEvent::Text(text.to_string(), logprobs.to_vec()))
            {
                Ok(()) => Flow::Continue,
                Err(_) => Flow::Cancel,
            };
            let stepped = std::panic::catch_unwind(AssertUnwindSafe(|| {
                r.sequence
                    .step(out, tokenizer, context_length, &mut on_text)
            }))
            .unwrap_or_else(|_| Err(panicked()));
            let now = Instant::now();
            let after = match &stepped {
                Ok(Step::Done(generation)) => generation.completion_tokens,
                _ => r.sequence.generated(),
            };
            if after > before {
                generated += after - before;
                match r.last_token_at {
                    None => self.metrics.first_token(now - r.arrived),
                    Some(previous) => self.metrics.next_token(now - previous),
                }
                r.last_token_at = Some(now);
            }
            match stepped {
                Ok(Step::Next(id)) => r.next = Some(id),
                Ok(Step::Done(generation)) => finished.push((i, Ok(generation))),
                Err(e) => finished.push((i, Err(e))),
            }
        }
        self.metrics.step(sequences, prompt_tokens, generated);
        // Leave the batch (and say so in the metrics) before telling the
        // clients, so a client that reads the metrics next sees it gone.
        let mut done = Vec::with_capacity(finished.len());
        for (i, outcome) in finished.into_iter().rev() {
            done.push((self.running.remove(i), outcome));
        }
        self.publish();
        for (r, outcome) in done {
            let elapsed = r.arrived.elapsed();
            let event = match outcome {
                Ok(generation) => {
                    let label = match r.events.is_closed() {
                        true => "abort", // the client left; its last send failed
                        false => finish_label(generation.finish_reason),
                    };
                    self.metrics.finished(label, elapsed);
                    GenEvent::Done(generation)
                }
                Err(e) => {
                    self.metrics.finished("error", elapsed);
                    GenEvent::Failed(e)
                }
            };
            let _ = r.events.send(event);
        }
    }
}

/// What a forward pass did for one running sequence.
enum Outcome {
    /// It was not in the pass.
    Skipped,
    /// It ran; its logits when it wanted them.
    Ran(Option<Vec<f32>>),
    /// Its pass failed; only this sequence is affected.
    Failed(EngineError),
}

impl Scheduler {
    /// Runs the step's batch; one outcome per running sequence. When the
    /// batch fails, each sequence is run alone (a failed pass leaves every
    /// cache as it was) so only the culprit fails.
    fn forward(&mut self) -> Vec<Outcome> {
        let llama = &self.model.llama;
        if let Ok(logits) = run_batch(llama, &mut self.running) {
            let mut logits = logits.into_iter();
            return self
                .running
                .iter()
                .map(|r| match r.step_tokens {
                    0 => Outcome::Skipped,
                    _ => Outcome::Ran(logits.next().flatten()),
                })
                .collect();
        }
        self.running
            .iter_mut()
            .map(|r| {
                if r.step_tokens == 0 {
                    return Outcome::Skipped;
                }
                match run_batch(llama, std::slice::from_mut(r)) {
                    Ok(mut logits) => Outcome::Ran(logits.pop().flatten()),
                    Err(e) => Outcome::Failed(e),
                }
            })
            .collect()
    }
}

fn finish_label(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
    }
}

fn panicked() -> EngineError {
    EngineError::Tensor(candle_core::Error::Msg(
        "the model panicked on this request".into(),
    ))
}

/// One forward pass over the sequences with `step_tokens > 0`; their
/// logits (when they want them) in order. A panic is an error.
fn run_batch(llama: &Llama, running: &mut [Running]) -> Result<Vec<Option<Vec<f32>>>> {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut batch: Vec<BatchItem<'_>> = running
            .iter_mut()
            .filter(|r| r.step_tokens > 0)
            .map(|r| {
                let logits = r.wants_logits();
                let Running {
                    sequence,
                    cache,
                    next,
                    prefilled,
                    step_tokens,
                    ..
                } = r;
                let tokens = match next {
                    Some(token) => std::slice::from_ref(&*token),
                    None => &sequence.prompt_ids()[*prefilled..*prefilled + *step_tokens],
                };
                BatchItem {
                    tokens,
                    cache,
                    logits,
                }
            })
            .collect();
        llama.forward_batch(&mut batch)
    }))
    .unwrap_or_else(|_| Err(panicked()))
}
