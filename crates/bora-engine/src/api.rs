//! OpenAI API request and response bodies, and request validation.
//!
//! Validation is pure: it turns a request into [`GenerateParams`]-ready
//! settings or an [`EngineError::InvalidRequest`] naming the field, so every
//! rule here is unit-tested without a model.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{EngineError, Result};
use crate::generate::FinishReason;
use crate::json_grammar::{Grammar, Json};
use crate::logprobs::TokenLogprob;
use crate::sampling::SamplingParams;
use crate::template::TemplateMessage;
use crate::tokenizer::TextTokenizer;

/// Most choices one request may ask for.
pub const MAX_N: u32 = 16;
/// Most stop strings one request may give (OpenAI's limit).
pub const MAX_STOP: usize = 4;
/// Most log-probability alternatives per token (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: i64 = 20;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopParam {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with `usage` before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling fields shared by chat and text completions.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingFields {
    /// Completion length limit (deprecated name in chat).
    pub max_tokens: Option<i64>,
    /// Completion length limit.
    pub max_completion_tokens: Option<i64>,
    /// 0..=2.
    pub temperature: Option<f32>,
    /// (0, 1].
    pub top_p: Option<f32>,
    /// 0 disables; an extension many servers accept.
    pub top_k: Option<i64>,
    /// Same seed, same output.
    pub seed: Option<i64>,
    /// Stop strings.
    pub stop: Option<StopParam>,
    /// Choices to generate.
    pub n: Option<i64>,
    /// -2..=2.
    pub presence_penalty: Option<f32>,
    /// -2..=2.
    pub frequency_penalty: Option<f32>,
    /// Stream server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Log-probabilities: `true` in chat; the number of alternatives
    /// (0..=20) in text completions (also accepted in chat).
    pub logprobs: Option<Value>,
    /// Alternatives per position in chat (0..=20; needs `logprobs: true`).
    pub top_logprobs: Option<i64>,
}

/// A chat message's `content`: a string or a list of parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts; only `text` parts are supported.
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// `text`, `image_url`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

/// One message of a chat.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant`, `tool`.
    pub role: String,
    /// The content; may be null for an assistant message.
    pub content: Option<MessageContent>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    /// The model name.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Sampling and streaming settings.
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Structured output: `text`, `json_object` or `json_schema` (see
    /// [`ChatCompletionRequest::response_grammar`]).
    pub response_format: Option<Json>,
    /// Tools (not supported yet).
    pub tools: Option<Value>,
    /// Tool choice (not supported yet).
    pub tool_choice: Option<Value>,
}

/// `prompt` of a text completion.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    /// One prompt.
    Text(String),
    /// Several prompts.
    Texts(Vec<String>),
    /// One prompt as token ids.
    Tokens(Vec<u32>),
    /// Several prompts as token ids.
    TokenLists(Vec<Vec<u32>>),
}

/// A prompt after decoding the `prompt` field's shapes.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Text to tokenize.
    Text(String),
    /// Token ids as given.
    Tokens(Vec<u32>),
}

impl PromptInput {
    /// The prompts, one per batch entry.
    pub fn into_prompts(self) -> Result<Vec<Prompt>> {
        let prompts: Vec<Prompt> = match self {
            Self::Text(t) => vec![Prompt::Text(t)],
            Self::Texts(ts) => ts.into_iter().map(Prompt::Text).collect(),
            Self::Tokens(ids) => vec![Prompt::Tokens(ids)],
            Self::TokenLists(lists) => lists.into_iter().map(Prompt::Tokens).collect(),
        };
        if prompts.is_empty() {
            return Err(EngineError::invalid("prompt", "prompt must not be empty"));
        }
        Ok(prompts)
    }
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The model name.
    pub model: String,
    /// The prompt(s).
    pub prompt: PromptInput,
    /// Sampling and streaming settings.
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Echo the prompt (not supported yet: rejected when true).
    pub echo: Option<bool>,
    /// Text after the completion (not supported: rejected when set).
    pub suffix: Option<String>,
    /// Generate several and return the best (not supported: rejected when > n).
    pub best_of: Option<i64>,
}

/// `input` of an embeddings request.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    /// One text.
    Text(String),
    /// Several texts.
    Texts(Vec<String>),
}

/// `POST /v1/embeddings`.
#[derive(Debug, Clone, Deserialize)]
pub struct EmbeddingRequest {
    /// The model name.
    pub model: String,
    /// The text(s) to embed.
    pub input: EmbeddingInput,
    /// `float` (default) or `base64` (little-endian f32).
    pub encoding_format: Option<String>,
    /// Output size; only the model's own size is accepted.
    pub dimensions: Option<i64>,
}

/// How a request asked for embeddings to be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingFormat {
    /// JSON numbers.
    Float,
    /// Base64 of little-endian `f32` bytes.
    Base64,
}

impl EmbeddingRequest {
    /// The texts to embed and the output encoding, validated.
    pub fn validate(self, dimensions: usize) -> Result<(Vec<String>, EncodingFormat)> {
        let texts = match self.input {
            EmbeddingInput::Text(t) => vec![t],
            EmbeddingInput::Texts(ts) => ts,
        };
        if texts.is_empty() {
            return Err(EngineError::invalid("input", "input must not be empty"));
        }
        if texts.len() > 2048 {
            return Err(EngineError::invalid(
                "input",
                "at most 2048 inputs per request",
            ));
        }
        let format = match self.encoding_format.as_deref() {
            None | Some("float") => EncodingFormat::Float,
            Some("base64") => EncodingFormat::Base64,
            Some(other) => {
                return Err(EngineError::invalid(
                    "encoding_format",
                    format!("encoding_format must be 'float' or 'base64', not '{other}'"),
                ));
            }
        };
        if let Some(d) = self.dimensions
            && d != dimensions as i64
        {
            return Err(EngineError::invalid(
                "dimensions",
                format!("this model produces {dimensions} dimensions; it cannot return {d}"),
            ));
        }
        Ok((texts, format))
    }
}

/// Validated generation settings for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationSettings {
    /// Sampling parameters (the seed of choice `i` is `seed + i`).
    pub sampling: SamplingParams,
    /// The requested limit, if any.
    pub max_tokens: Option<usize>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Choices per prompt.
    pub n: usize,
    /// Whether to stream.
    pub stream: bool,
    /// Whether the stream ends with a usage chunk.
    pub include_usage: bool,
    /// Report log-probabilities with this many alternatives per token.
    pub logprobs: Option<usize>,
}

fn range(param: &str, v: Option<f32>, lo: f32, hi: f32, default: f32) -> Result<f32> {
    match v {
        None => Ok(default),
        Some(x) if x.is_finite() && (lo..=hi).contains(&x) => Ok(x),
        Some(x) => Err(EngineError::invalid(
            param,
            format!("{param} must be between {lo} and {hi}, got {x}"),
        )),
    }
}

impl SamplingFields {
    /// Checks every field and builds the settings.
    pub fn validate(&self) -> Result<GenerationSettings> {
        let temperature = range("temperature", self.temperature, 0.0, 2.0, 1.0)?;
        let top_p = range("top_p", self.top_p, 0.0, 1.0, 1.0)?;
        if top_p <= 0.0 {
            return Err(EngineError::invalid(
                "top_p",
                "top_p must be greater than 0",
            ));
        }
        let top_k = match self.top_k {
            None => 0,
            Some(k) if k >= 0 => k as usize,
            Some(k) => {
                return Err(EngineError::invalid(
                    "top_k",
                    format!("top_k must be 0 or more, got {k}"),
                ));
            }
        };
        let presence_penalty = range("presence_penalty", self.presence_penalty, -2.0, 2.0, 0.0)?;
        let frequency_penalty = range("frequency_penalty", self.frequency_penalty, -2.0, 2.0, 0.0)?;
        let max_tokens = match (self.max_completion_tokens, self.max_tokens) {
            (Some(v), _) => Some(("max_completion_tokens", v)),
            (None, Some(v)) => Some(("max_tokens", v)),
            (None, None) => None,
        };
        let max_tokens = match max_tokens {
            None => None,
            Some((_, v)) if v >= 1 => Some(v as usize),
            Some((param, v)) => {
                return Err(EngineError::invalid(
                    param,
                    format!("{param} must be at least 1, got {v}"),
                ));
            }
        };
        let n = match self.n {
            None => 1,
            Some(n) if (1..=i64::from(MAX_N)).contains(&n) => n as usize,
            Some(n) => {
                return Err(EngineError::invalid(
                    "n",
                    format!("n must be between 1 and {MAX_N}, got {n}"),
                ));
            }
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(StopParam::One(s)) => vec![s.clone()],
            Some(StopParam::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOP {
            return Err(EngineError::invalid(
                "stop",
                format!("at most {MAX_STOP} stop strings, got {}", stop.len()),
            ));
        }
        if stop.iter().any(String::is_empty) {
            return Err(EngineError::invalid(
                "stop",
                "stop strings must not be empty",
            ));
        }
        let top_logprobs = match self.top_logprobs {
            None => None,
            Some(k) if (0..=MAX_TOP_LOGPROBS).contains(&k) => Some(k as usize),
            Some(k) => {
                return Err(EngineError::invalid(
                    "top_logprobs",
                    format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
                ));
            }
        };
        let logprobs = match &self.logprobs {
            None | Some(Value::Null) | Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(top_logprobs.unwrap_or(0)),
            Some(Value::Number(n))
                if n.as_i64()
                    .is_some_and(|k| (0..=MAX_TOP_LOGPROBS).contains(&k)) =>
            {
                if top_logprobs.is_some() {
                    return Err(EngineError::invalid(
                        "top_logprobs",
                        "give the number of alternatives either as logprobs or as top_logprobs (with logprobs: true), not both",
                    ));
                }
                n.as_u64().map(|k| k as usize)
            }
            Some(other) => {
                return Err(EngineError::invalid(
                    "logprobs",
                    format!(
                        "logprobs must be a boolean or a number of alternatives between 0 and {MAX_TOP_LOGPROBS}, got {other}"
                    ),
                ));
            }
        };
        if logprobs.is_none() && top_logprobs.is_some_and(|k| k > 0) {
            return Err(EngineError::invalid(
                "top_logprobs",
                "top_logprobs requires logprobs: true",
            ));
        }
        let stream = self.stream.unwrap_or(false);
        if self.stream_options.is_some() && !stream {
            return Err(EngineError::invalid(
                "stream_options",
                "stream_options is only allowed with stream: true",
            ));
        }
        Ok(GenerationSettings {
            sampling: SamplingParams {
                temperature,
                top_p,
                top_k,
                presence_penalty,
                frequency_penalty,
                seed: self.seed.map(|s| s as u64),
            },
            max_tokens,
            stop,
            n,
            stream,
            logprobs,
            include_usage: self
                .stream_options
                .as_ref()
                .is_some_and(|o| o.include_usage),
        })
    }
}

impl ChatCompletionRequest {
    /// The messages as the chat template sees them, validated.
    pub fn template_messages(&self) -> Result<Vec<TemplateMessage>> {
        if self.messages.is_empty() {
            return Err(EngineError::invalid(
                "messages",
                "messages must not be empty",
            ));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                if !matches!(m.role.as_str(), "system" | "developer" | "user" | "assistant" | "tool") {
                    return Err(EngineError::invalid(
                        &format!("messages[{i}].role"),
                        format!("unknown role '{}'", m.role),
                    ));
                }
                let content = match &m.content {
                    None => String::new(),
                    Some(MessageContent::Text(t)) => t.clone(),
                    Some(MessageContent::Parts(parts)) => {
                        let mut text = String::new();
                        for (j, p) in parts.iter().enumerate() {
                            match (p.kind.as_str(), &p.text) {
                                ("text", Some(t)) => text.push_str(t),
                                (kind, _) => {
                                    return Err(EngineError::invalid(
                                        &format!("messages[{i}].content[{j}]"),
                                        format!("content parts of type '{kind}' are not supported; this model reads text"),
                                    ));
                                }
                            }
                        }
                        text
                    }
                };
                // The OpenAI "developer" role is the system role for open models.
                let role = if m.role == "developer" { "system".into() } else { m.role.clone() };
                Ok(TemplateMessage { role, content })
            })
            .collect()
    }

    /// The grammar `response_format` asks for: none for `text`, any JSON
    /// object for `json_object`, the schema's subset (see
    /// [`Grammar::from_schema`]) for `json_schema` (`strict` or not, the
    /// schema is always enforced).
    pub fn response_grammar(&self) -> Result<Option<Grammar>> {
        let Some(rf) = &self.response_format else {
            return Ok(None);
        };
        if matches!(rf, Json::Null) {
            return Ok(None);
        }
        match rf.get("type").and_then(Json::as_str) {
            Some("text") => Ok(None),
            Some("json_object") => Ok(Some(Grammar::any_object())),
            Some("json_schema") => {
                let Some(spec @ Json::Object(_)) = rf.get("json_schema") else {
                    return Err(EngineError::invalid(
                        "response_format.json_schema",
                        "response_format.json_schema must be an object with name and schema",
                    ));
                };
                if spec.get("name").and_then(Json::as_str).is_none() {
                    return Err(EngineError::invalid(
                        "response_format.json_schema.name",
                        "response_format.json_schema.name must be a string",
                    ));
                }
                match spec.get("strict") {
                    None | Some(Json::Null | Json::Bool(_)) => {}
                    Some(_) => {
                        return Err(EngineError::invalid(
                            "response_format.json_schema.strict",
                            "response_format.json_schema.strict must be a boolean",
                        ));
                    }
                }
                let any = Json::Object(vec![]);
                let schema = spec.get("schema").unwrap_or(&any);
                Grammar::from_schema(schema, "response_format.json_schema.schema").map(Some)
            }
            other => Err(EngineError::invalid(
                "response_format.type",
                format!(
                    "response_format.type must be 'text', 'json_object' or 'json_schema', not {}",
                    other.map_or("missing".to_string(), |t| format!("'{t}'"))
                ),
            )),
        }
    }

    /// Rejects the features this server does not implement yet.
    pub fn check_unsupported(&self) -> Result<()> {
        if self
            .tools
            .as_ref()
            .is_some_and(|t| !t.is_null() && t.as_array().is_none_or(|a| !a.is_empty()))
        {
            return Err(EngineError::invalid(
                "tools",
                "tools are not supported by this server yet",
            ));
        }
        if self
            .tool_choice
            .as_ref()
            .is_some_and(|c| !c.is_null() && c.as_str() != Some("none"))
        {
            return Err(EngineError::invalid(
                "tool_choice",
                "tool_choice is not supported by this server yet",
            ));
        }
        Ok(())
    }
}

impl CompletionRequest {
    /// Rejects the features this server does not implement yet.
    pub fn check_unsupported(&self) -> Result<()> {
        if self.echo == Some(true) {
            return Err(EngineError::invalid(
                "echo",
                "echo is not supported by this server yet",
            ));
        }
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            return Err(EngineError::invalid(
                "suffix",
                "suffix is not supported by this model",
            ));
        }
        if let Some(b) = self.best_of
            && b != self.sampling.n.unwrap_or(1)
        {
            return Err(EngineError::invalid(
                "best_of",
                "best_of is not supported by this server yet",
            ));
        }
        Ok(())
    }
}

/// Decides how many tokens to generate, or fails when the prompt and the
/// requested completion do not fit in the context window.
pub fn completion_budget(
    context_length: usize,
    prompt_tokens: usize,
    max_tokens: Option<usize>,
) -> Result<usize> {
    if prompt_tokens == 0 {
        return Err(EngineError::invalid(
            "prompt",
            "the prompt is empty after tokenization",
        ));
    }
    let requested = max_tokens.unwrap_or(1);
    if prompt_tokens + requested > context_length {
        return Err(EngineError::ContextLength {
            context_length,
            requested: prompt_tokens + requested,
            prompt_tokens,
            completion_tokens: requested,
        });
    }
    Ok(max_tokens.unwrap_or(context_length - prompt_tokens))
}

/// `usage` in every response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Tokens in the prompt(s).
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// The sum.
    pub total_tokens: usize,
}

impl Usage {
    /// Usage from prompt and completion counts.
    pub fn new(prompt_tokens: usize, completion_tokens: usize) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
        }
    }
}

/// An assistant message in a response.
#[derive(Debug, Clone, Serialize)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The generated text.
    pub content: String,
}

/// One choice of a chat completion.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    /// Position in `choices`.
    pub index: usize,
    /// The answer.
    pub message: AssistantMessage,
    /// Log-probabilities, when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// Why generation ended.
    pub finish_reason: FinishReason,
}

/// A chat completion response.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletion {
    /// `chatcmpl-…`.
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model name.
    pub model: String,
    /// The answers.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: Usage,
}

/// The `delta` of a streamed chat chunk.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatDelta {
    /// `assistant`, in the first chunk of a choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice in a streamed chat chunk.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChunkChoice {
    /// Position in `choices`.
    pub index: usize,
    /// What changed.
    pub delta: ChatDelta,
    /// Log-probabilities of this chunk's tokens, when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// Set in the choice's last chunk.
    pub finish_reason: Option<FinishReason>,
}

/// A streamed chat chunk (`chat.completion.chunk`).
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionChunk {
    /// Same for every chunk of a response.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model name.
    pub model: String,
    /// Empty in the usage chunk.
    pub choices: Vec<ChatChunkChoice>,
    /// Present (null until the last chunk) when `include_usage` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// One choice of a text completion (also its streamed chunk form).
#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    /// The text (a piece of it when streaming).
    pub text: String,
    /// Position in `choices`.
    pub index: usize,
    /// Log-probabilities, when asked for.
    pub logprobs: Option<CompletionLogprobs>,
    /// Why generation ended (null in a stream until the choice's last chunk).
    pub finish_reason: Option<FinishReason>,
}

/// A text completion response or streamed chunk (`text_completion`).
#[derive(Debug, Clone, Serialize)]
pub struct Completion {
    /// `cmpl-…`.
    pub id: String,
    /// `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model name.
    pub model: String,
    /// The choices.
    pub choices: Vec<CompletionChoice>,
    /// Token counts (null in stream chunks except the usage chunk).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<Usage>>,
}

/// The log-probability OpenAI reports for an impossible token (JSON has
/// no infinity).
pub const MIN_LOGPROB: f32 = -9999.0;

fn finite(logprob: f32) -> f32 {
    if logprob.is_finite() {
        logprob
    } else {
        MIN_LOGPROB
    }
}

/// A token's text as OpenAI reports it: its bytes read as UTF-8, with
/// U+FFFD for a partial character (the exact bytes are in `bytes`).
fn token_text(tokenizer: &TextTokenizer, id: u32) -> String {
    String::from_utf8_lossy(tokenizer.token_bytes(id)).into_owned()
}

/// One alternative in chat `top_logprobs`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// Its UTF-8 bytes.
    pub bytes: Vec<u8>,
}

/// One generated token in chat `logprobs.content`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatTokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-probability (the model's log-softmax; see [`crate::logprobs`]).
    pub logprob: f32,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// The most likely tokens at this position, most likely first.
    pub top_logprobs: Vec<TopLogprob>,
}

/// `choices[].logprobs` of a chat completion (or chunk).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatLogprobs {
    /// One entry per generated token (the end-of-turn token excluded).
    pub content: Vec<ChatTokenLogprob>,
    /// Always null: this server never refuses.
    pub refusal: Option<Vec<ChatTokenLogprob>>,
}

impl ChatLogprobs {
    /// Renders `tokens` with `tokenizer`'s token texts.
    pub fn new(tokenizer: &TextTokenizer, tokens: &[TokenLogprob]) -> Self {
        let content = tokens
            .iter()
            .map(|t| ChatTokenLogprob {
                token: token_text(tokenizer, t.id),
                logprob: finite(t.logprob),
                bytes: tokenizer.token_bytes(t.id).to_vec(),
                top_logprobs: t
                    .top
                    .iter()
                    .map(|&(id, logprob)| TopLogprob {
                        token: token_text(tokenizer, id),
                        logprob: finite(logprob),
                        bytes: tokenizer.token_bytes(id).to_vec(),
                    })
                    .collect(),
            })
            .collect();
        Self {
            content,
            refusal: None,
        }
    }
}

/// `choices[].logprobs` of a text completion (the legacy shape).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompletionLogprobs {
    /// Each generated token's text.
    pub tokens: Vec<String>,
    /// Each token's log-probability.
    pub token_logprobs: Vec<f32>,
    /// Per token, the alternatives as `{token text: logprob}` (a text that
    /// several tokens share appears once, with the most likely).
    pub top_logprobs: Vec<serde_json::Map<String, Value>>,
    /// Each token's byte offset in the completion text (from the start of
    /// the choice's text, the prompt not counted).
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    /// Renders `tokens`, the first of which starts at byte `offset` of the
    /// completion; returns the offset after the last.
    pub fn new(tokenizer: &TextTokenizer, tokens: &[TokenLogprob], offset: &mut usize) -> Self {
        let mut out = Self {
            tokens: Vec::with_capacity(tokens.len()),
            token_logprobs: Vec::with_capacity(tokens.len()),
            top_logprobs: Vec::with_capacity(tokens.len()),
            text_offset: Vec::with_capacity(tokens.len()),
        };
        for t in tokens {
            out.tokens.push(token_text(tokenizer, t.id));
            out.token_logprobs.push(finite(t.logprob));
            let mut top = serde_json::Map::new();
            for &(id, logprob) in &t.top {
                top.entry(token_text(tokenizer, id))
                    .or_insert_with(|| Value::from(finite(logprob)));
            }
            out.top_logprobs.push(top);
            out.text_offset.push(*offset);
            *offset += tokenizer.token_bytes(t.id).len();
        }
        out
    }
}

/// One model in `GET /v1/models`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    /// The name to use in requests.
    pub id: String,
    /// `model`.
    pub object: &'static str,
    /// Unix seconds when the server loaded it.
    pub created: u64,
    /// `bora`.
    pub owned_by: &'static str,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelList {
    /// `list`.
    pub object: &'static str,
    /// The models.
    pub data: Vec<ModelCard>,
}

/// One embedding in a response.
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingData {
    /// `embedding`.
    pub object: &'static str,
    /// Position of the input.
    pub index: usize,
    /// Numbers, or a base64 string.
    pub embedding: Value,
}

/// `POST /v1/embeddings` response.
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingResponse {
    /// `list`.
    pub object: &'static str,
    /// One per input.
    pub data: Vec<EmbeddingData>,
    /// The model name.
    pub model: String,
    /// Token counts (completion is 0).
    pub usage: EmbeddingUsage,
}

/// `usage` of an embeddings response.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EmbeddingUsage {
    /// Tokens in the inputs.
    pub prompt_tokens: usize,
    /// The same.
    pub total_tokens: usize,
}

/// Encodes `v` as OpenAI does for `encoding_format: base64`.
pub fn encode_embedding(v: &[f32], format: EncodingFormat) -> Value {
    match format {
        EncodingFormat::Float => Value::from(v.iter().map(|x| f64::from(*x)).collect::<Vec<_>>()),
        EncodingFormat::Base64 => {
            use base64::Engine as _;
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> SamplingFields {
        serde_json::from_value(v).unwrap()
    }

    fn param_of(e: EngineError) -> String {
        match e {
            EngineError::InvalidRequest { param, .. } => param.unwrap_or_default(),
            other => panic!("not a bad request: {other:?}"),
        }
    }

    #[test]
    fn defaults_match_openai() {
        let s = fields(json!({})).validate().unwrap();
        assert_eq!(s.sampling, SamplingParams::default());
        assert_eq!((s.n, s.stream, s.max_tokens), (1, false, None));
    }

    #[test]
    fn bad_values_name_their_field() {
        for (body, field) in [
            (json!({"temperature": 2.5}), "temperature"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"top_k": -1}), "top_k"),
            (json!({"presence_penalty": 3}), "presence_penalty"),
            (json!({"frequency_penalty": -2.1}), "frequency_penalty"),
            (json!({"max_tokens": 0}), "max_tokens"),
            (
                json!({"max_completion_tokens": -5}),
                "max_completion_tokens",
            ),
            (json!({"n": 0}), "n"),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
            (json!({"stop": ""}), "stop"),
            (json!({"logprobs": "yes"}), "logprobs"),
            (json!({"logprobs": 21}), "logprobs"),
            (
                json!({"logprobs": true, "top_logprobs": 21}),
                "top_logprobs",
            ),
            (json!({"top_logprobs": 2}), "top_logprobs"),
            (json!({"logprobs": 2, "top_logprobs": 2}), "top_logprobs"),
            (
                json!({"stream_options": {"include_usage": true}}),
                "stream_options",
            ),
        ] {
            assert_eq!(
                param_of(fields(body.clone()).validate().unwrap_err()),
                field,
                "{body}"
            );
        }
    }

    #[test]
    fn logprobs_settings() {
        let lp = |v: Value| fields(v).validate().unwrap().logprobs;
        assert_eq!(lp(json!({})), None);
        assert_eq!(lp(json!({"logprobs": false, "top_logprobs": 0})), None);
        assert_eq!(lp(json!({"logprobs": true})), Some(0));
        assert_eq!(lp(json!({"logprobs": true, "top_logprobs": 20})), Some(20));
        assert_eq!(lp(json!({"logprobs": 0})), Some(0));
        assert_eq!(lp(json!({"logprobs": 5})), Some(5));
    }

    #[test]
    fn logprobs_render_in_openai_shapes() {
        let tok = crate::generate::tests::tiny_tokenizer();
        // Token 6 is `Ġ`, a space; token 0 is the control token `<|im_end|>`.
        let tokens = [
            TokenLogprob {
                id: 1,
                logprob: -0.5,
                top: vec![(1, -0.5), (6, -1.5)],
            },
            TokenLogprob {
                id: 6,
                logprob: f32::NEG_INFINITY,
                top: vec![],
            },
        ];
        let chat = serde_json::to_value(ChatLogprobs::new(&tok, &tokens)).unwrap();
        assert_eq!(
            chat,
            json!({"content": [
                {"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": [
                    {"token": "a", "logprob": -0.5, "bytes": [97]},
                    {"token": " ", "logprob": -1.5, "bytes": [32]}
                ]},
                {"token": " ", "logprob": -9999.0, "bytes": [32], "top_logprobs": []}
            ], "refusal": null})
        );
        let mut offset = 3;
        let text =
            serde_json::to_value(CompletionLogprobs::new(&tok, &tokens, &mut offset)).unwrap();
        assert_eq!(
            text,
            json!({"tokens": ["a", " "], "token_logprobs": [-0.5, -9999.0],
                   "top_logprobs": [{"a": -0.5, " ": -1.5}, {}], "text_offset": [3, 4]})
        );
        assert_eq!(offset, 5);
    }

    #[test]
    fn max_completion_tokens_wins() {
        let s =
            fields(json!({"max_tokens": 5, "max_completion_tokens": 7, "stop": "x", "seed": 3}))
                .validate()
                .unwrap();
        assert_eq!(s.max_tokens, Some(7));
        assert_eq!(s.stop, vec!["x".to_string()]);
        assert_eq!(s.sampling.seed, Some(3));
    }

    #[test]
    fn context_budget() {
        assert_eq!(completion_budget(100, 10, None).unwrap(), 90);
        assert_eq!(completion_budget(100, 10, Some(90)).unwrap(), 90);
        match completion_budget(100, 10, Some(91)).unwrap_err() {
            EngineError::ContextLength {
                context_length,
                requested,
                prompt_tokens,
                completion_tokens,
            } => {
                assert_eq!(
                    (context_length, requested, prompt_tokens, completion_tokens),
                    (100, 101, 10, 91)
                );
            }
            other => panic!("{other:?}"),
        }
        let msg = completion_budget(100, 100, None).unwrap_err().to_string();
        assert!(msg.contains("100 tokens") && msg.contains("101"), "{msg}");
    }

    #[test]
    fn chat_messages_are_validated() {
        let req: ChatCompletionRequest = serde_json::from_value(json!({
            "model": "m",
            "messages": [
                {"role": "developer", "content": "be nice"},
                {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": null}
            ]
        }))
        .unwrap();
        let msgs = req.template_messages().unwrap();
        assert_eq!(msgs[0].role, "system");
        assert_eq!(msgs[1].content, "hi there");
        assert_eq!(msgs[2].content, "");
        let bad: ChatCompletionRequest = serde_json::from_value(
            json!({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}),
        )
        .unwrap();
        assert_eq!(
            param_of(bad.template_messages().unwrap_err()),
            "messages[0].role"
        );
        let empty: ChatCompletionRequest =
            serde_json::from_value(json!({"model": "m", "messages": []})).unwrap();
        assert_eq!(param_of(empty.template_messages().unwrap_err()), "messages");
    }

    #[test]
    fn response_formats() {
        let grammar = |rf: Value| {
            let req: ChatCompletionRequest = serde_json::from_value(
                json!({"model": "m", "messages": [], "response_format": rf}),
            )
            .unwrap();
            req.response_grammar()
        };
        assert_eq!(grammar(json!({"type": "text"})).unwrap(), None);
        assert_eq!(grammar(Value::Null).unwrap(), None);
        assert_eq!(
            grammar(json!({"type": "json_object"})).unwrap(),
            Some(Grammar::any_object())
        );
        assert!(
            grammar(
                json!({"type": "json_schema", "json_schema": {"name": "x", "strict": true,
                "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}})
            )
            .unwrap()
            .is_some()
        );
        for (rf, param) in [
            (json!({"type": "yaml"}), "response_format.type"),
            (json!({}), "response_format.type"),
            (
                json!({"type": "json_schema"}),
                "response_format.json_schema",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"schema": {}}}),
                "response_format.json_schema.name",
            ),
            (
                json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "format": "date"}}}),
                "response_format.json_schema.schema.format",
            ),
        ] {
            assert_eq!(param_of(grammar(rf.clone()).unwrap_err()), param, "{rf}");
        }
    }

    #[test]
    fn unsupported_features_are_rejected_not_ignored() {
        let req: ChatCompletionRequest = serde_json::from_value(json!({
            "model": "m", "messages": [], "response_format": {"type": "text"}, "tools": []
        }))
        .unwrap();
        req.check_unsupported().unwrap();
    }

    #[test]
    fn prompt_shapes() {
        let p: PromptInput = serde_json::from_value(json!(["a", "b"])).unwrap();
        assert_eq!(p.into_prompts().unwrap().len(), 2);
        let p: PromptInput = serde_json::from_value(json!([1, 2, 3])).unwrap();
        assert_eq!(
            p.into_prompts().unwrap(),
            vec![Prompt::Tokens(vec![1, 2, 3])]
        );
        let p: PromptInput = serde_json::from_value(json!([])).unwrap();
        assert!(p.into_prompts().is_err());
    }

    #[test]
    fn embeddings_encoding() {
        assert_eq!(
            encode_embedding(&[1.0, -0.5], EncodingFormat::Float),
            json!([1.0, -0.5])
        );
        // 1.0f32 = 00 00 80 3f, -0.5f32 = 00 00 00 bf
        assert_eq!(
            encode_embedding(&[1.0, -0.5], EncodingFormat::Base64),
            json!("AACAPwAAAL8=")
        );
        let req: EmbeddingRequest =
            serde_json::from_value(json!({"model": "e", "input": "x", "encoding_format": "hex"}))
                .unwrap();
        assert_eq!(param_of(req.validate(384).unwrap_err()), "encoding_format");
        let req: EmbeddingRequest =
            serde_json::from_value(json!({"model": "e", "input": ["x", "y"], "dimensions": 384}))
                .unwrap();
        assert_eq!(req.validate(384).unwrap().0.len(), 2);
    }
}
