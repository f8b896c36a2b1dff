//! The OpenAI-compatible HTTP server.
//!
//! Routes: `GET /v1/models`, `POST /v1/chat/completions`,
//! `POST /v1/completions`, `POST /v1/embeddings`. Handlers validate and
//! tokenize, then hand generation to the [`Engine`] queue; streaming
//! responses are server-sent events ending with `data: [DONE]`. Every error
//! becomes an OpenAI error body in one place, [`ApiError`].

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::mpsc;

use crate::api::{
    self, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest,
    ChatDelta, ChatLogprobs, Completion, CompletionChoice, CompletionLogprobs, CompletionRequest,
    EmbeddingData, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, ModelCard, ModelList,
    Prompt, ToolCall, ToolCallDelta, ToolCallStream, ToolSettings, Usage,
};
use crate::bert::BertEmbedder;
use crate::engine::{Engine, EngineConfig, GenEvent, TextModel, default_device};
use crate::error::{EngineError, Result};
use crate::generate::{FinishReason, GenerateParams, Generation};
use crate::json_grammar::Grammar;
use crate::llama::WeightPrecision;
use crate::logprobs::TokenLogprob;

/// What `bora engine serve` takes.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The GGUF chat model.
    pub model: PathBuf,
    /// Its name in the API (default: the file name without extension).
    pub name: Option<String>,
    /// Where to listen; port 0 picks a free port.
    pub listen: SocketAddr,
    /// A directory with a BERT embedding model (safetensors, tokenizer.json, config.json).
    pub embedding_model: Option<PathBuf>,
    /// Its name in the API (default: the directory name).
    pub embedding_name: Option<String>,
    /// How the chat model's weights are held (default: as quantized in the file).
    pub precision: WeightPrecision,
    /// The scheduler's limits: batch size, KV memory, prefix cache.
    pub engine: EngineConfig,
}

impl ServeOptions {
    /// Options for `model` on `listen`, everything else by default.
    pub fn new(model: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            model: model.into(),
            name: None,
            listen,
            embedding_model: None,
            embedding_name: None,
            precision: WeightPrecision::default(),
            engine: EngineConfig::default(),
        }
    }
}

struct Embedder {
    name: String,
    model: Arc<BertEmbedder>,
}

struct AppState {
    engine: Engine,
    embedder: Option<Embedder>,
    created: u64,
}

type Shared = Arc<AppState>;

/// A server whose models are loaded and whose socket is bound.
pub struct Server {
    listener: tokio::net::TcpListener,
    router: Router,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Loads the models and binds the listening socket.
    pub async fn bind(opts: ServeOptions) -> Result<Self> {
        let device = default_device();
        let load_device = device.clone();
        let (model_path, name, precision) = (opts.model.clone(), opts.name.clone(), opts.precision);
        let model = tokio::task::spawn_blocking(move || {
            TextModel::load(&model_path, name, &load_device, precision)
        })
        .await
        .map_err(|_| EngineError::WorkerGone)??;
        tracing::info!(model = %model.name, path = %opts.model.display(), "loaded chat model");
        let embedder = match &opts.embedding_model {
            None => None,
            Some(dir) => {
                let (dir, device) = (dir.clone(), device.clone());
                let name = opts.embedding_name.clone().unwrap_or_else(|| {
                    dir.file_name()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| "embeddings".into())
                });
                let model = tokio::task::spawn_blocking(move || BertEmbedder::load(&dir, &device))
                    .await
                    .map_err(|_| EngineError::WorkerGone)??;
                tracing::info!(model = %name, "loaded embedding model");
                Some(Embedder {
                    name,
                    model: Arc::new(model),
                })
            }
        };
        let state = Arc::new(AppState {
            engine: Engine::start(model, opts.engine.clone()),
            embedder,
            created: now(),
        });
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|source| EngineError::Io {
                path: PathBuf::from(opts.listen.to_string()),
                source,
            })?;
        Ok(Self {
            listener,
            router: router(state),
        })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has a local address")
    }

    /// Serves until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let addr = self.local_addr();
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| EngineError::Io {
                path: PathBuf::from(addr.to_string()),
                source,
            })
    }
}

/// Loads the models, listens, prints `bora engine: listening on
/// http://ADDR` once bound, and serves until Ctrl-C or SIGTERM.
pub async fn serve(opts: ServeOptions) -> Result<()> {
    let server = Server::bind(opts).await?;
    println!("bora engine: listening on http://{}", server.local_addr());
    server.run(shutdown_signal()).await
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM. Run as a container's first
/// process, the engine must handle SIGTERM itself: the kernel ignores a
/// signal PID 1 has no handler for, and the instance would be killed only
/// after its stop grace.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/v1/models", get(list_models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such endpoint",
                "invalid_request_error",
                None,
                None,
            )
        })
        .with_state(state)
}

/// The engine's Prometheus metrics (see [`crate::metrics`]).
async fn metrics(State(state): State<Shared>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.engine.metrics().encode(),
    )
        .into_response()
}

/// An error as the OpenAI API returns it: `{"error": {message, type, param, code}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        message: impl Into<String>,
        kind: &'static str,
        param: Option<String>,
        code: Option<&'static str>,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param,
            code,
        }
    }

    fn model_not_found(name: &str, available: &[&str]) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!(
                "the model '{name}' does not exist; this server serves: {}",
                available.join(", ")
            ),
            "invalid_request_error",
            Some("model".into()),
            Some("model_not_found"),
        )
    }

    fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }

    /// Attaches a field name to a context-length error (`messages`/`prompt`).
    fn from_engine(e: EngineError, prompt_param: &str) -> Self {
        let mut err = Self::from(e);
        if err.code == Some("context_length_exceeded") {
            err.param = Some(prompt_param.into());
        }
        err
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::InvalidRequest { param, .. } => Self::new(
                StatusCode::BAD_REQUEST,
                message,
                "invalid_request_error",
                param,
                None,
            ),
            EngineError::ContextLength { .. } => Self::new(
                StatusCode::BAD_REQUEST,
                message,
                "invalid_request_error",
                None,
                Some("context_length_exceeded"),
            ),
            _ => {
                tracing::error!(error = %message, "request failed");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    message,
                    "server_error",
                    None,
                    None,
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

/// Parses a JSON body; a bad field is reported by its path.
fn parse<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let param = (path != ".").then_some(path);
        let message = match &param {
            Some(p) => format!("invalid request body at '{p}': {}", e.inner()),
            None => format!("invalid request body: {}", e.inner()),
        };
        ApiError::new(
            StatusCode::BAD_REQUEST,
            message,
            "invalid_request_error",
            param,
            None,
        )
    })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

async fn list_models(State(state): State<Shared>) -> axum::Json<ModelList> {
    let card = |id: &str| ModelCard {
        id: id.to_string(),
        object: "model",
        created: state.created,
        owned_by: "bora",
    };
    let mut data = vec![card(&state.engine.model().name)];
    if let Some(e) = &state.embedder {
        data.push(card(&e.name));
    }
    axum::Json(ModelList {
        object: "list",
        data,
    })
}

fn check_text_model(state: &AppState, name: &str) -> ApiResult<()> {
    if name == state.engine.model().name {
        Ok(())
    } else {
        Err(ApiError::model_not_found(
            name,
            &[&state.engine.model().name],
        ))
    }
}

/// One sequence to generate, with its position in `choices`.
struct ChoiceJob {
    index: usize,
    params: GenerateParams,
}

/// Runs the jobs one after another and collects their results.
async fn run_all(engine: &Engine, jobs: Vec<ChoiceJob>) -> ApiResult<Vec<(usize, Generation)>> {
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        let mut events = engine.submit(job.params).await?;
        loop {
            match events.recv().await {
                Some(GenEvent::Text(..)) => {}
                Some(GenEvent::Done(g)) => {
                    out.push((job.index, g));
                    break;
                }
                Some(GenEvent::Failed(e)) => return Err(e.into()),
                None => return Err(EngineError::WorkerGone.into()),
            }
        }
    }
    Ok(out)
}

/// How one streamed response renders its chunks.
trait ChunkFormat: Send + 'static {
    /// Chunks that open choice `index`.
    fn start(&mut self, index: usize) -> Option<serde_json::Value>;
    /// A chunk with new text and its tokens' log-probabilities (empty when
    /// not asked for), or none while the text is held back.
    fn text(
        &mut self,
        index: usize,
        text: String,
        logprobs: &[TokenLogprob],
    ) -> Option<serde_json::Value>;
    /// The choice's last chunks (held-back output, then the finish reason).
    fn finish(&mut self, index: usize, reason: FinishReason) -> Vec<serde_json::Value>;
    /// The usage chunk.
    fn usage(&self, usage: Usage) -> serde_json::Value;
}

/// Streams the jobs' output as server-sent events ending with `[DONE]`.
fn stream_all<F: ChunkFormat>(
    engine: Engine,
    jobs: Vec<ChoiceJob>,
    mut format: F,
    prompt_tokens: usize,
    include_usage: bool,
) -> Sse<impl Stream<Item = std::result::Result<Event, std::convert::Infallible>>> {
    let (tx, rx) = mpsc::channel::<String>(64);
    tokio::spawn(async move {
        let send = |v: serde_json::Value| {
            let tx = tx.clone();
            async move { tx.send(v.to_string()).await.is_ok() }
        };
        let mut completion_tokens = 0;
        'jobs: for job in jobs {
            if let Some(first) = format.start(job.index)
                && !send(first).await
            {
                return;
            }
            let mut events = match engine.submit(job.params).await {
                Ok(events) => events,
                Err(e) => {
                    let _ = send(ApiError::from(e).body()).await;
                    break 'jobs;
                }
            };
            loop {
                let ok = match events.recv().await {
                    Some(GenEvent::Text(t, lps)) => match format.text(job.index, t, &lps) {
                        Some(chunk) => send(chunk).await,
                        None => true,
                    },
                    Some(GenEvent::Done(g)) => {
                        completion_tokens += g.completion_tokens;
                        for chunk in format.finish(job.index, g.finish_reason) {
                            if !send(chunk).await {
                                return;
                            }
                        }
                        break;
                    }
                    Some(GenEvent::Failed(e)) => {
                        let _ = send(ApiError::from(e).body()).await;
                        break 'jobs;
                    }
                    None => {
                        let _ = send(ApiError::from(EngineError::WorkerGone).body()).await;
                        break 'jobs;
                    }
                };
                if !ok {
                    return; // client gone; dropping `events` cancels the generation
                }
            }
        }
        if include_usage && !send(format.usage(Usage::new(prompt_tokens, completion_tokens))).await
        {
            return;
        }
        let _ = tx.send("[DONE]".to_string()).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|data| (Ok(Event::default().data(data)), rx))
    });
    Sse::new(stream)
}

fn choice_jobs(
    prompts: Vec<Vec<u32>>,
    settings: &api::GenerationSettings,
    budgets: &[usize],
    grammar: Option<Arc<Grammar>>,
) -> Vec<ChoiceJob> {
    let mut jobs = Vec::new();
    for (p, ids) in prompts.into_iter().enumerate() {
        for i in 0..settings.n {
            let mut sampling = settings.sampling.clone();
            sampling.seed = sampling.seed.map(|s| s.wrapping_add(i as u64));
            jobs.push(ChoiceJob {
                index: p * settings.n + i,
                params: GenerateParams {
                    prompt_ids: ids.clone(),
                    max_tokens: budgets[p],
                    sampling,
                    stop: settings.stop.clone(),
                    logprobs: settings.logprobs,
                    grammar: grammar.clone(),
                },
            });
        }
    }
    jobs
}

struct ChatChunks {
    engine: Engine,
    logprobs: bool,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    /// The request's tools: an answer that may be tool calls is held back
    /// as [`ToolCallStream`] decides, and read as calls when it ends.
    tools: ToolSettings,
    /// Per choice being streamed: its filter, and the log-probabilities of
    /// the text it holds (sent with the next chunk).
    held: HashMap<usize, (ToolCallStream, Vec<TokenLogprob>)>,
}

impl ChatChunks {
    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<Usage>) -> serde_json::Value {
        serde_json::to_value(ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
        })
        .unwrap_or_default()
    }

    fn choice(
        index: usize,
        delta: ChatDelta,
        finish_reason: Option<FinishReason>,
    ) -> ChatChunkChoice {
        ChatChunkChoice {
            index,
            delta,
            logprobs: None,
            finish_reason,
        }
    }

    /// A chunk of choice `index` with `delta` and, when asked for, the
    /// log-probabilities of its tokens.
    fn delta(
        &self,
        index: usize,
        delta: ChatDelta,
        logprobs: &[TokenLogprob],
    ) -> serde_json::Value {
        let mut choice = Self::choice(index, delta, None);
        choice.logprobs = self
            .logprobs
            .then(|| ChatLogprobs::new(&self.engine.model().tokenizer, logprobs));
        self.chunk(vec![choice], None)
    }

    fn content(&self, index: usize, text: String, logprobs: &[TokenLogprob]) -> serde_json::Value {
        let delta = ChatDelta {
            content: Some(text),
            ..ChatDelta::default()
        };
        self.delta(index, delta, logprobs)
    }
}

impl ChunkFormat for ChatChunks {
    fn start(&mut self, index: usize) -> Option<serde_json::Value> {
        if let Some(filter) = self.tools.stream_filter() {
            self.held.insert(index, (filter, Vec::new()));
        }
        // A forced call has no text: its content stays null.
        let delta = ChatDelta {
            role: Some("assistant"),
            content: (!self.tools.forces_call()).then(String::new),
            tool_calls: None,
        };
        Some(self.chunk(vec![Self::choice(index, delta, None)], None))
    }

    fn text(
        &mut self,
        index: usize,
        text: String,
        logprobs: &[TokenLogprob],
    ) -> Option<serde_json::Value> {
        let Some((filter, held_logprobs)) = self.held.get_mut(&index) else {
            return Some(self.content(index, text, logprobs));
        };
        held_logprobs.extend_from_slice(logprobs);
        let text = filter.push(&text);
        if text.is_empty() {
            return None;
        }
        let logprobs = std::mem::take(held_logprobs);
        Some(self.content(index, text, &logprobs))
    }

    fn finish(&mut self, index: usize, reason: FinishReason) -> Vec<serde_json::Value> {
        let mut chunks = Vec::new();
        let mut reason = reason;
        if let Some((filter, mut logprobs)) = self.held.remove(&index) {
            let held = filter.finish();
            match self.tools.parse_output(&held) {
                Some(out) => {
                    if let Some(text) = out.content {
                        chunks.push(self.content(index, text, &std::mem::take(&mut logprobs)));
                    }
                    for (i, call) in out.calls.into_iter().enumerate() {
                        let delta = ChatDelta {
                            tool_calls: Some(vec![ToolCallDelta {
                                index: i,
                                call: ToolCall::new(call),
                            }]),
                            ..ChatDelta::default()
                        };
                        chunks.push(self.delta(index, delta, &std::mem::take(&mut logprobs)));
                    }
                    reason = FinishReason::ToolCalls;
                }
                None if !held.is_empty() || !logprobs.is_empty() => {
                    chunks.push(self.content(index, held, &logprobs));
                }
                None => {}
            }
        }
        chunks.push(self.chunk(
            vec![Self::choice(index, ChatDelta::default(), Some(reason))],
            None,
        ));
        chunks
    }

    fn usage(&self, usage: Usage) -> serde_json::Value {
        self.chunk(vec![], Some(usage))
    }
}

async fn chat_completions(State(state): State<Shared>, body: Bytes) -> ApiResult<Response> {
    let req: ChatCompletionRequest = parse(&body)?;
    check_text_model(&state, &req.model)?;
    let settings = req.sampling.validate()?;
    let tools = req.tool_settings()?;
    let grammar = req.output_grammar(&tools)?.map(Arc::new);
    let messages = req.template_messages()?;
    let model = state.engine.model();
    let prompt = model
        .template
        .render_chat(&messages, &tools.prompt_tools(), true)?;
    let ids = model.tokenizer.encode(&prompt)?;
    let budget = api::completion_budget(model.context_length(), ids.len(), settings.max_tokens)
        .map_err(|e| ApiError::from_engine(e, "messages"))?;
    let prompt_tokens = ids.len();
    let jobs = choice_jobs(vec![ids], &settings, &[budget], grammar);
    let (id, created) = (new_id("chatcmpl"), now());
    tracing::info!(request = %id, prompt_tokens, n = settings.n, stream = settings.stream, "chat completion");
    if settings.stream {
        let format = ChatChunks {
            engine: state.engine.clone(),
            logprobs: settings.logprobs.is_some(),
            id,
            created,
            model: model.name.clone(),
            include_usage: settings.include_usage,
            tools,
            held: HashMap::new(),
        };
        let engine = state.engine.clone();
        return Ok(
            stream_all(engine, jobs, format, prompt_tokens, settings.include_usage).into_response(),
        );
    }
    let results = run_all(&state.engine, jobs).await?;
    let completion_tokens = results.iter().map(|(_, g)| g.completion_tokens).sum();
    let choices = results
        .into_iter()
        .map(|(index, g)| {
            let logprobs = settings
                .logprobs
                .map(|_| ChatLogprobs::new(&model.tokenizer, &g.logprobs));
            let (message, finish_reason) = tools.message(g.text, g.finish_reason);
            ChatChoice {
                index,
                logprobs,
                message,
                finish_reason,
            }
        })
        .collect();
    Ok(axum::Json(ChatCompletion {
        id,
        object: "chat.completion",
        created,
        model: model.name.clone(),
        choices,
        usage: Usage::new(prompt_tokens, completion_tokens),
    })
    .into_response())
}

struct TextChunks {
    engine: Engine,
    logprobs: bool,
    /// Byte offset of the next token in the current choice's text.
    offset: usize,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl TextChunks {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<Usage>) -> serde_json::Value {
        serde_json::to_value(Completion {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage: self.include_usage.then_some(usage),
        })
        .unwrap_or_default()
    }
}

impl ChunkFormat for TextChunks {
    fn start(&mut self, _index: usize) -> Option<serde_json::Value> {
        self.offset = 0;
        None
    }

    fn text(
        &mut self,
        index: usize,
        text: String,
        logprobs: &[TokenLogprob],
    ) -> Option<serde_json::Value> {
        let logprobs = self.logprobs.then(|| {
            CompletionLogprobs::new(&self.engine.model().tokenizer, logprobs, &mut self.offset)
        });
        let c = CompletionChoice {
            text,
            index,
            logprobs,
            finish_reason: None,
        };
        Some(self.chunk(vec![c], None))
    }

    fn finish(&mut self, index: usize, reason: FinishReason) -> Vec<serde_json::Value> {
        let c = CompletionChoice {
            text: String::new(),
            index,
            logprobs: None,
            finish_reason: Some(reason),
        };
        vec![self.chunk(vec![c], None)]
    }

    fn usage(&self, usage: Usage) -> serde_json::Value {
        self.chunk(vec![], Some(usage))
    }
}

async fn completions(State(state): State<Shared>, body: Bytes) -> ApiResult<Response> {
    let req: CompletionRequest = parse(&body)?;
    check_text_model(&state, &req.model)?;
    req.check_unsupported()?;
    let settings = req.sampling.validate()?;
    let model = state.engine.model();
    let vocab = model.llama.vocab_size();
    let mut prompts = Vec::new();
    let mut budgets = Vec::new();
    for prompt in req.prompt.into_prompts()? {
        let ids = match prompt {
            Prompt::Text(text) => model.tokenizer.encode(&text)?,
            Prompt::Tokens(ids) => {
                if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
                    return Err(EngineError::invalid(
                        "prompt",
                        format!("token id {bad} is outside the vocabulary of {vocab} tokens"),
                    )
                    .into());
                }
                ids
            }
        };
        budgets.push(
            api::completion_budget(model.context_length(), ids.len(), settings.max_tokens)
                .map_err(|e| ApiError::from_engine(e, "prompt"))?,
        );
        prompts.push(ids);
    }
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    let jobs = choice_jobs(prompts, &settings, &budgets, None);
    let (id, created) = (new_id("cmpl"), now());
    tracing::info!(request = %id, prompt_tokens, stream = settings.stream, "completion");
    if settings.stream {
        let format = TextChunks {
            engine: state.engine.clone(),
            logprobs: settings.logprobs.is_some(),
            offset: 0,
            id,
            created,
            model: model.name.clone(),
            include_usage: settings.include_usage,
        };
        let engine = state.engine.clone();
        return Ok(
            stream_all(engine, jobs, format, prompt_tokens, settings.include_usage).into_response(),
        );
    }
    let results = run_all(&state.engine, jobs).await?;
    let completion_tokens = results.iter().map(|(_, g)| g.completion_tokens).sum();
    let choices = results
        .into_iter()
        .map(|(index, g)| CompletionChoice {
            logprobs: settings
                .logprobs
                .map(|_| CompletionLogprobs::new(&model.tokenizer, &g.logprobs, &mut 0)),
            text: g.text,
            index,
            finish_reason: Some(g.finish_reason),
        })
        .collect();
    Ok(axum::Json(Completion {
        id,
        object: "text_completion",
        created,
        model: model.name.clone(),
        choices,
        usage: Some(Some(Usage::new(prompt_tokens, completion_tokens))),
    })
    .into_response())
}

/// Inputs per forward pass of the embedding model.
const EMBEDDING_BATCH: usize = 32;

/// Embeds `inputs` in batches of similar lengths (sorted, so little is
/// padded); the vectors come back in input order.
fn embed_in_batches(model: &BertEmbedder, inputs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
    let mut order: Vec<usize> = (0..inputs.len()).collect();
    order.sort_by_key(|&i| inputs[i].len());
    let mut vectors = vec![Vec::new(); inputs.len()];
    for chunk in order.chunks(EMBEDDING_BATCH) {
        let batch: Vec<Vec<u32>> = chunk.iter().map(|&i| inputs[i].clone()).collect();
        let out = model.embed_batch(&batch).map_err(|e| match e {
            // Name the input by its index in the request.
            EngineError::InvalidRequest { message, .. } => {
                let bad = chunk
                    .iter()
                    .find(|&&i| inputs[i].is_empty() || inputs[i].len() > model.max_tokens())
                    .copied()
                    .unwrap_or(chunk[0]);
                EngineError::invalid(&format!("input[{bad}]"), message)
            }
            other => other,
        })?;
        for (&i, v) in chunk.iter().zip(out) {
            vectors[i] = v;
        }
    }
    Ok(vectors)
}

async fn embeddings(State(state): State<Shared>, body: Bytes) -> ApiResult<Response> {
    let req: EmbeddingRequest = parse(&body)?;
    let Some(embedder) = &state.embedder else {
        return Err(ApiError::model_not_found(&req.model, &[]));
    };
    if req.model != embedder.name {
        return Err(ApiError::model_not_found(&req.model, &[&embedder.name]));
    }
    let model = Arc::clone(&embedder.model);
    let name = embedder.name.clone();
    let (texts, format) = req.validate(model.dimensions())?;
    let (vectors, tokens) =
        tokio::task::spawn_blocking(move || -> Result<(Vec<Vec<f32>>, usize)> {
            let ids = texts
                .iter()
                .map(|text| model.tokenize(text))
                .collect::<Result<Vec<_>>>()?;
            let tokens = ids.iter().map(Vec::len).sum();
            Ok((embed_in_batches(&model, &ids)?, tokens))
        })
        .await
        .map_err(|_| EngineError::WorkerGone)??;
    let data = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| EmbeddingData {
            object: "embedding",
            index,
            embedding: api::encode_embedding(v, format),
        })
        .collect();
    Ok(axum::Json(EmbeddingResponse {
        object: "list",
        data,
        model: name,
        usage: EmbeddingUsage {
            prompt_tokens: tokens,
            total_tokens: tokens,
        },
    })
    .into_response())
}
