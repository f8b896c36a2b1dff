//! OpenAI API request and response bodies, and request validation.
//!
//! Validation is pure: it turns a request into [`GenerateParams`]-ready
//! settings or an [`EngineError::InvalidRequest`] naming the field, so every
//! rule here is unit-tested without a model.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{EngineError, Result};
use crate::generate::FinishReason;
use crate::sampling::SamplingParams;
use crate::template::TemplateMessage;

/// Most choices one request may ask for.
pub const MAX_N: u32 = 16;
/// Most stop strings one request may give (OpenAI's limit).
pub const MAX_STOP: usize = 4;

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
    /// Log-probabilities (not supported yet: rejected when true).
    pub logprobs: Option<Value>,
    /// Alternatives per position (not supported yet: rejected when > 0).
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
    /// Structured output (not supported yet beyond `text`).
    pub response_format: Option<Value>,
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
        match &self.logprobs {
            None | Some(Value::Null) | Some(Value::Bool(false)) => {}
            Some(Value::Number(n)) if n.as_i64() == Some(0) => {}
            Some(_) => {
                return Err(EngineError::invalid(
                    "logprobs",
                    "logprobs is not supported by this server yet",
                ));
            }
        }
        if self.top_logprobs.unwrap_or(0) != 0 {
            return Err(EngineError::invalid(
                "top_logprobs",
                "top_logprobs is not supported by this server yet",
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

    /// Rejects the features this server does not implement yet.
    pub fn check_unsupported(&self) -> Result<()> {
        if let Some(rf) = &self.response_format {
            let kind = rf.get("type").and_then(Value::as_str).unwrap_or("");
            if kind != "text" {
                return Err(EngineError::invalid(
                    "response_format",
                    format!(
                        "response_format type '{kind}' is not supported by this server yet (only 'text')"
                    ),
                ));
            }
        }
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
    /// Always null (log-probabilities are not supported yet).
    pub logprobs: Option<Value>,
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
    /// Always null.
    pub logprobs: Option<Value>,
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
    /// Always null.
    pub logprobs: Option<Value>,
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
            (json!({"logprobs": true}), "logprobs"),
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
    fn unsupported_features_are_rejected_not_ignored() {
        let req: ChatCompletionRequest = serde_json::from_value(json!({
            "model": "m", "messages": [], "response_format": {"type": "json_object"}
        }))
        .unwrap();
        assert_eq!(
            param_of(req.check_unsupported().unwrap_err()),
            "response_format"
        );
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
