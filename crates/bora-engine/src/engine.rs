//! The engine: loaded models and the worker that runs generation requests.
//!
//! Requests reach the model through a bounded queue owned by one worker
//! thread, which runs them one at a time and streams events back over a
//! per-request channel. That queue is the seam where a continuous-batching
//! scheduler will go: the HTTP layer only ever calls [`Engine::submit`].

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use tokio::sync::mpsc;

use crate::error::{EngineError, Result};
use crate::generate::{Flow, GenerateParams, Generation, generate};
use crate::gguf::GgufFile;
use crate::llama::{Llama, WeightPrecision};
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

struct Job {
    params: GenerateParams,
    events: mpsc::UnboundedSender<GenEvent>,
}

/// A handle to the running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    model: Arc<TextModel>,
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.model.name)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts the worker thread for `model`, with room for `queue` waiting
    /// requests (further submitters wait).
    pub fn start(model: TextModel, queue: usize) -> Self {
        let model = Arc::new(model);
        let (jobs, rx) = mpsc::channel(queue.max(1));
        let worker_model = Arc::clone(&model);
        std::thread::Builder::new()
            .name("bora-engine-worker".into())
            .spawn(move || worker(worker_model, rx))
            .expect("spawning the engine worker thread");
        Self { model, jobs }
    }

    /// The model this engine serves.
    pub fn model(&self) -> &TextModel {
        &self.model
    }

    /// Queues a generation; events arrive on the returned channel. Dropping
    /// the receiver cancels the request.
    pub async fn submit(
        &self,
        params: GenerateParams,
    ) -> Result<mpsc::UnboundedReceiver<GenEvent>> {
        let (events, rx) = mpsc::unbounded_channel();
        self.jobs
            .send(Job { params, events })
            .await
            .map_err(|_| EngineError::WorkerGone)?;
        Ok(rx)
    }
}

fn worker(model: Arc<TextModel>, mut jobs: mpsc::Receiver<Job>) {
    while let Some(job) = jobs.blocking_recv() {
        if job.events.is_closed() {
            continue; // the client left while queued
        }
        let events = job.events.clone();
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
            generate(
                &model.llama,
                &model.tokenizer,
                model.context_length(),
                job.params,
                |text, logprobs| match events
                    .send(GenEvent::Text(text.to_string(), logprobs.to_vec()))
                {
                    Ok(()) => Flow::Continue,
                    Err(_) => Flow::Cancel,
                },
            )
        }));
        let event = match run {
            Ok(Ok(generation)) => GenEvent::Done(generation),
            Ok(Err(e)) => GenEvent::Failed(e),
            Err(_) => GenEvent::Failed(EngineError::Tensor(candle_core::Error::Msg(
                "the model panicked on this request".into(),
            ))),
        };
        let _ = job.events.send(event);
    }
}
