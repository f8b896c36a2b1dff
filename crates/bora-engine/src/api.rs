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
use crate::template::{ChatTurn, TOOL_CALL_CLOSE, TOOL_CALL_OPEN, TemplateToolCall};
use crate::tokenizer::TextTokenizer;

/// Most choices one request may ask for.
pub const MAX_N: u32 = 16;
/// Most stop strings one request may give (OpenAI's limit).
pub const MAX_STOP: usize = 4;
/// Most log-probability alternatives per token (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: i64 = 20;
/// Most tools one request may offer (OpenAI's limit).
pub const MAX_TOOLS: usize = 128;

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
    /// The tools an assistant message called.
    pub tool_calls: Option<Vec<MessageToolCall>>,
    /// A `tool` message: the id of the call it answers.
    pub tool_call_id: Option<String>,
}

/// A tool call in an assistant message of the conversation.
#[derive(Debug, Clone, Deserialize)]
pub struct MessageToolCall {
    /// The call's id, which the `tool` message with the result repeats.
    pub id: String,
    /// `function` (the only kind).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The function called.
    pub function: FunctionCall,
}

/// A function call: the name and the arguments as a JSON text (in requests
/// and responses alike).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct FunctionCall {
    /// The function's name.
    pub name: String,
    /// The arguments, a JSON object as text.
    pub arguments: String,
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
    /// Functions the model may call (see [`ChatCompletionRequest::tool_settings`]).
    pub tools: Option<Json>,
    /// `none`, `auto`, `required` or `{"type": "function", "function": {"name": ...}}`.
    pub tool_choice: Option<Json>,
    /// Whether one answer may call several tools (default true).
    pub parallel_tool_calls: Option<bool>,
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
    pub fn template_messages(&self) -> Result<Vec<ChatTurn>> {
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
                let tool_calls = match &m.tool_calls {
                    None => Vec::new(),
                    Some(_) if m.role != "assistant" => {
                        return Err(EngineError::invalid(
                            &format!("messages[{i}].tool_calls"),
                            "only assistant messages have tool_calls",
                        ));
                    }
                    Some(calls) => calls
                        .iter()
                        .enumerate()
                        .map(|(j, c)| {
                            if c.kind.as_deref().is_some_and(|k| k != "function") {
                                return Err(EngineError::invalid(
                                    &format!("messages[{i}].tool_calls[{j}].type"),
                                    "tool calls must have type 'function'",
                                ));
                            }
                            // Templates read the arguments as an object, as
                            // Hugging Face documents them.
                            let arguments = serde_json::from_str(&c.function.arguments)
                                .unwrap_or_else(|_| Json::String(c.function.arguments.clone()));
                            Ok(TemplateToolCall::function(c.id.clone(), c.function.name.clone(), arguments))
                        })
                        .collect::<Result<_>>()?,
                };
                let tool_call_id = match (m.role.as_str(), &m.tool_call_id) {
                    ("tool", None) => {
                        return Err(EngineError::invalid(
                            &format!("messages[{i}].tool_call_id"),
                            "a tool message needs the tool_call_id of the call it answers",
                        ));
                    }
                    ("tool", Some(id)) => Some(id.clone()),
                    _ => None,
                };
                // The OpenAI "developer" role is the system role for open models.
                let role = if m.role == "developer" { "system".into() } else { m.role.clone() };
                Ok(ChatTurn { role, content, tool_calls, tool_call_id })
            })
            .collect()
    }

    /// The validated `tools`, `tool_choice` and `parallel_tool_calls`.
    ///
    /// A forced call (`required` or a named function) cannot be combined
    /// with a `json_object` or `json_schema` `response_format`: both decide
    /// the whole output. Under `auto`, such a `response_format` decides it,
    /// and the output is not read as tool calls.
    pub fn tool_settings(&self) -> Result<ToolSettings> {
        let tools = match &self.tools {
            None | Some(Json::Null) => Vec::new(),
            Some(Json::Array(items)) => {
                if items.len() > MAX_TOOLS {
                    return Err(EngineError::invalid(
                        "tools",
                        format!("at most {MAX_TOOLS} tools, got {}", items.len()),
                    ));
                }
                let mut tools: Vec<FunctionTool> = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let tool = FunctionTool::from_spec(item, i)?;
                    if tools.iter().any(|t| t.name == tool.name) {
                        return Err(EngineError::invalid(
                            &format!("tools[{i}].function.name"),
                            format!("two tools are named '{}'", tool.name),
                        ));
                    }
                    tools.push(tool);
                }
                tools
            }
            Some(_) => {
                return Err(EngineError::invalid(
                    "tools",
                    "tools must be an array of {\"type\": \"function\", \"function\": {...}} objects",
                ));
            }
        };
        let choice = ToolChoice::parse(self.tool_choice.as_ref(), &tools)?;
        let constrained = self
            .response_format
            .as_ref()
            .and_then(|rf| rf.get("type"))
            .and_then(Json::as_str)
            .is_some_and(|t| t != "text");
        if constrained && matches!(choice, ToolChoice::Required | ToolChoice::Function(_)) {
            return Err(EngineError::invalid(
                "response_format",
                "response_format cannot be combined with a forced tool_choice ('required' or a named function): the call's arguments already follow the function's parameters schema",
            ));
        }
        Ok(ToolSettings {
            parse: choice != ToolChoice::None && !constrained,
            tools,
            choice,
            parallel: self.parallel_tool_calls.unwrap_or(true),
        })
    }

    /// The grammar the output must follow: a forced tool call's (see
    /// [`ToolSettings::call_grammar`]), else `response_format`'s.
    pub fn output_grammar(&self, tools: &ToolSettings) -> Result<Option<Grammar>> {
        match tools.call_grammar()? {
            Some(g) => Ok(Some(g)),
            None => self.response_grammar(),
        }
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

/// One validated entry of `tools`.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionTool {
    /// `function.name`.
    pub name: String,
    /// The schema of the arguments object: `function.parameters`, with
    /// `type: object` when it gives no type (an empty parameter list when it
    /// is missing).
    pub parameters: Json,
    /// The entry as the request gave it (what the chat template sees).
    pub spec: Json,
    /// Its position in `tools`.
    pub index: usize,
}

impl FunctionTool {
    /// Validates `tools[index]`.
    fn from_spec(spec: &Json, index: usize) -> Result<Self> {
        let bad = |field: &str, message: &str| {
            EngineError::invalid(&format!("tools[{index}]{field}"), message)
        };
        if !matches!(spec, Json::Object(_)) {
            return Err(bad("", "a tool must be an object"));
        }
        if spec.get("type").and_then(Json::as_str) != Some("function") {
            return Err(bad(".type", "only tools of type 'function' are supported"));
        }
        let function = match spec.get("function") {
            Some(f @ Json::Object(_)) => f,
            _ => return Err(bad(".function", "a tool needs a function object")),
        };
        let name = match function.get("name").and_then(Json::as_str) {
            Some(n) if valid_function_name(n) => n.to_string(),
            _ => {
                return Err(bad(
                    ".function.name",
                    "function names are 1 to 64 letters, digits, underscores and dashes",
                ));
            }
        };
        if !matches!(
            function.get("description"),
            None | Some(Json::Null | Json::String(_))
        ) {
            return Err(bad(
                ".function.description",
                "the description must be a string",
            ));
        }
        if !matches!(
            function.get("strict"),
            None | Some(Json::Null | Json::Bool(_))
        ) {
            return Err(bad(".function.strict", "strict must be a boolean"));
        }
        let object = || ("type".to_string(), Json::String("object".into()));
        let parameters = match function.get("parameters") {
            None | Some(Json::Null) => {
                Json::Object(vec![object(), ("properties".into(), Json::Object(vec![]))])
            }
            Some(params @ Json::Object(entries)) => match params.get("type") {
                None => Json::Object([vec![object()], entries.clone()].concat()),
                Some(Json::String(t)) if t == "object" => params.clone(),
                Some(_) => {
                    return Err(bad(
                        ".function.parameters.type",
                        "the parameters schema must describe an object",
                    ));
                }
            },
            Some(_) => {
                return Err(bad(
                    ".function.parameters",
                    "the parameters must be a JSON schema object",
                ));
            }
        };
        Ok(Self {
            name,
            parameters,
            spec: spec.clone(),
            index,
        })
    }

    /// The schema of a call of this function:
    /// `{"name": <its name>, "arguments": <its parameters>}`, both required.
    fn call_schema(&self) -> Json {
        let s = |v: &str| Json::String(v.into());
        Json::Object(vec![
            ("type".into(), s("object")),
            (
                "properties".into(),
                Json::Object(vec![
                    (
                        "name".into(),
                        Json::Object(vec![("const".into(), s(&self.name))]),
                    ),
                    ("arguments".into(), self.parameters.clone()),
                ]),
            ),
            (
                "required".into(),
                Json::Array(vec![s("name"), s("arguments")]),
            ),
        ])
    }
}

/// OpenAI's rule: `^[a-zA-Z0-9_-]{1,64}$`.
fn valid_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The tools are not offered (the default without tools).
    None,
    /// The model answers or calls tools (the default with tools).
    Auto,
    /// The model calls one of the tools (decoding is constrained to one call).
    Required,
    /// The model calls this function (decoding is constrained to the call).
    Function(String),
}

impl ToolChoice {
    fn parse(choice: Option<&Json>, tools: &[FunctionTool]) -> Result<Self> {
        let bad = |param: &str, message: String| Err(EngineError::invalid(param, message));
        let choice = match choice {
            None | Some(Json::Null) if tools.is_empty() => Self::None,
            None | Some(Json::Null) => Self::Auto,
            Some(Json::String(s)) => match s.as_str() {
                "none" => Self::None,
                "auto" if tools.is_empty() => Self::None,
                "auto" => Self::Auto,
                "required" => Self::Required,
                other => {
                    return bad(
                        "tool_choice",
                        format!(
                            "tool_choice must be 'none', 'auto', 'required' or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, not '{other}'"
                        ),
                    );
                }
            },
            Some(obj @ Json::Object(_)) => {
                if obj.get("type").and_then(Json::as_str) != Some("function") {
                    return bad(
                        "tool_choice.type",
                        "tool_choice.type must be 'function'".into(),
                    );
                }
                let Some(name) = obj
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Json::as_str)
                else {
                    return bad(
                        "tool_choice.function.name",
                        "tool_choice.function.name must name one of the tools".into(),
                    );
                };
                Self::Function(name.to_string())
            }
            Some(_) => {
                return bad(
                    "tool_choice",
                    "tool_choice must be a string or an object".into(),
                );
            }
        };
        match &choice {
            Self::Required if tools.is_empty() => {
                bad("tool_choice", "tool_choice 'required' needs tools".into())
            }
            Self::Function(name) if !tools.iter().any(|t| t.name == *name) => bad(
                "tool_choice",
                format!("tool_choice names the function '{name}', which is not in tools"),
            ),
            _ => Ok(choice),
        }
    }
}

/// How a chat request uses tools: what the template is offered, which
/// grammar forces a call, and how the output is read.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSettings {
    /// The validated `tools`.
    pub tools: Vec<FunctionTool>,
    /// `tool_choice`.
    pub choice: ToolChoice,
    /// `parallel_tool_calls`: when false, an answer keeps only its first call.
    pub parallel: bool,
    /// Whether the output is read as tool calls.
    parse: bool,
}

impl ToolSettings {
    /// The tool objects to render into the prompt (none under
    /// `tool_choice: none`).
    pub fn prompt_tools(&self) -> Vec<Json> {
        if self.choice == ToolChoice::None {
            return Vec::new();
        }
        self.tools.iter().map(|t| t.spec.clone()).collect()
    }

    /// Whether the answer is forced to be one call (`required` or a named
    /// function).
    pub fn forces_call(&self) -> bool {
        matches!(self.choice, ToolChoice::Required | ToolChoice::Function(_))
    }

    /// The tools a forced call may use: all of them under `required`, the
    /// named one, or none.
    fn forced(&self) -> Vec<&FunctionTool> {
        match &self.choice {
            ToolChoice::Required => self.tools.iter().collect(),
            ToolChoice::Function(name) => self.tools.iter().filter(|t| t.name == *name).collect(),
            ToolChoice::None | ToolChoice::Auto => Vec::new(),
        }
    }

    /// For a forced call, the grammar of the one call the output is:
    /// `{"name": ..., "arguments": ...}` with the function's parameters
    /// schema (an `anyOf` over the functions under `required`). A schema
    /// keyword the grammar does not support is an error naming it under
    /// `tools[i].function.parameters`.
    pub fn call_grammar(&self) -> Result<Option<Grammar>> {
        let forced = self.forced();
        if forced.is_empty() {
            return Ok(None);
        }
        let mut calls = Vec::with_capacity(forced.len());
        for tool in forced {
            // Compiled alone first, so an error names the request's field.
            Grammar::from_schema(
                &tool.parameters,
                &format!("tools[{}].function.parameters", tool.index),
            )?;
            calls.push(tool.call_schema());
        }
        let schema = match calls.len() {
            1 => calls.remove(0),
            _ => Json::Object(vec![("anyOf".into(), Json::Array(calls))]),
        };
        Grammar::from_schema(&schema, "tools").map(Some)
    }

    /// Reads a generated answer as tool calls (see [`parse_tool_calls`]);
    /// `None` when it is a plain answer, when it is not a well-formed call
    /// of an offered function, or when the output is not read as calls.
    pub fn parse_output(&self, text: &str) -> Option<ToolCallOutput> {
        if !self.parse {
            return None;
        }
        let forced = self.forced();
        let callable = if forced.is_empty() {
            self.tools.iter().collect()
        } else {
            forced
        };
        let names: Vec<&str> = callable.iter().map(|t| t.name.as_str()).collect();
        let mut out = parse_tool_calls(text, &names)?;
        if !self.parallel {
            out.calls.truncate(1);
        }
        Some(out)
    }

    /// A filter for streaming an answer that may be tool calls, or `None`
    /// when the output is not read as calls.
    pub fn stream_filter(&self) -> Option<ToolCallStream> {
        self.parse.then(|| ToolCallStream::new(self.forces_call()))
    }

    /// The response message for a generated answer, and its finish reason
    /// (`tool_calls` when the answer is read as calls).
    pub fn message(
        &self,
        text: String,
        finish_reason: FinishReason,
    ) -> (AssistantMessage, FinishReason) {
        match self.parse_output(&text) {
            Some(out) => (
                AssistantMessage {
                    role: "assistant",
                    content: out.content,
                    tool_calls: out.calls.into_iter().map(ToolCall::new).collect(),
                },
                FinishReason::ToolCalls,
            ),
            None => (
                AssistantMessage {
                    role: "assistant",
                    content: Some(text),
                    tool_calls: Vec::new(),
                },
                finish_reason,
            ),
        }
    }
}

/// A generated answer read as tool calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallOutput {
    /// The text outside the calls, trimmed; `None` when there is none.
    pub content: Option<String>,
    /// The calls, in order (at least one).
    pub calls: Vec<FunctionCall>,
}

/// Reads `text` as calls of the functions `names`, in the formats the
/// prompt asks for (see [`crate::template`]): the whole text one JSON
/// object `{"name": ..., "arguments": {...}}` (what a forced call
/// generates), or `<tool_call>` blocks each holding one, with text around
/// them (the last block may lack its `</tool_call>`). `parameters` is read
/// as `arguments` (some models write it), and `arguments` may be a JSON
/// text. Returns `None` when there is no call, or when a block is not a
/// call of one of `names`: the text is then an ordinary answer.
pub fn parse_tool_calls(text: &str, names: &[&str]) -> Option<ToolCallOutput> {
    if let Some(call) = parse_call(text.trim(), names) {
        return Some(ToolCallOutput {
            content: None,
            calls: vec![call],
        });
    }
    let mut content = String::new();
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(TOOL_CALL_OPEN) {
        content.push_str(&rest[..start]);
        let block = &rest[start + TOOL_CALL_OPEN.len()..];
        let (inner, after) = match block.find(TOOL_CALL_CLOSE) {
            Some(end) => (&block[..end], &block[end + TOOL_CALL_CLOSE.len()..]),
            None => (block, ""),
        };
        calls.push(parse_call(inner.trim(), names)?);
        rest = after;
    }
    if calls.is_empty() {
        return None;
    }
    content.push_str(rest);
    let content = content.trim();
    Some(ToolCallOutput {
        content: (!content.is_empty()).then(|| content.to_string()),
        calls,
    })
}

/// One call: a JSON object with a known `name`, an `arguments` object, and
/// nothing else.
fn parse_call(text: &str, names: &[&str]) -> Option<FunctionCall> {
    if !text.starts_with('{') {
        return None;
    }
    let Ok(Json::Object(entries)) = serde_json::from_str::<Json>(text) else {
        return None;
    };
    let (mut name, mut arguments) = (None, None);
    for (key, value) in entries {
        match (key.as_str(), value) {
            ("name", Json::String(n)) if names.contains(&n.as_str()) => name = Some(n),
            ("arguments" | "parameters", args @ Json::Object(_)) => {
                arguments = Some(serde_json::to_string(&args).ok()?);
            }
            ("arguments" | "parameters", Json::String(args))
                if matches!(serde_json::from_str(&args), Ok(Json::Object(_))) =>
            {
                arguments = Some(args);
            }
            _ => return None,
        }
    }
    Some(FunctionCall {
        name: name?,
        arguments: arguments.unwrap_or_else(|| "{}".into()),
    })
}

/// While an answer that may hold tool calls streams, decides which text can
/// be sent at once: ordinary text is, up to a `<tool_call>` tag; from the
/// tag on (or from the start, for a forced call or an answer that opens
/// with `{`) the text is held until the end, when [`ToolCallStream::finish`]
/// hands it over to be read as calls (or sent as text if it is not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallStream {
    held: String,
    state: HoldState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldState {
    /// Nothing but whitespace (or the start of a tag) so far.
    Undecided,
    /// Ordinary text.
    Text,
    /// Everything from here on is held.
    Holding,
}

impl ToolCallStream {
    /// A filter; `forced` holds everything (the output is one call).
    pub fn new(forced: bool) -> Self {
        Self {
            held: String::new(),
            state: if forced {
                HoldState::Holding
            } else {
                HoldState::Undecided
            },
        }
    }

    /// Takes the next piece of the answer; returns the text to send now.
    pub fn push(&mut self, piece: &str) -> String {
        self.held.push_str(piece);
        if self.state == HoldState::Undecided {
            let start = self.held.trim_start();
            if start.is_empty() || TOOL_CALL_OPEN.starts_with(start) {
                return String::new();
            }
            self.state = if start.starts_with('{') || start.starts_with(TOOL_CALL_OPEN) {
                HoldState::Holding
            } else {
                HoldState::Text
            };
        }
        if self.state != HoldState::Text {
            return String::new();
        }
        let keep_from = match self.held.find(TOOL_CALL_OPEN) {
            Some(tag) => {
                self.state = HoldState::Holding;
                tag
            }
            // Hold back an end that may be the start of a tag.
            None => {
                let partial = (1..TOOL_CALL_OPEN.len())
                    .rev()
                    .find(|&n| self.held.ends_with(&TOOL_CALL_OPEN[..n]))
                    .unwrap_or(0);
                self.held.len() - partial
            }
        };
        let rest = self.held.split_off(keep_from);
        std::mem::replace(&mut self.held, rest)
    }

    /// The text held back, to read as tool calls.
    pub fn finish(self) -> String {
        self.held
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The generated text (null when the answer is only tool calls).
    pub content: Option<String>,
    /// The tools the answer calls.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
}

/// A tool call in a response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCall {
    /// `call_…`, for the `tool` message that answers it.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The call.
    pub function: FunctionCall,
}

impl ToolCall {
    /// `function` with a new random id.
    pub fn new(function: FunctionCall) -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Self {
            id: format!("call_{}", &id[..24]),
            kind: "function",
            function,
        }
    }
}

/// A tool call in a streamed delta (each call is sent whole, in one chunk).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToolCallDelta {
    /// The call's position in the message's `tool_calls`.
    pub index: usize,
    /// The call.
    #[serde(flatten)]
    pub call: ToolCall,
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
    /// Tool calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
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

    fn j(v: Value) -> Json {
        serde_json::from_value(v).unwrap()
    }

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

    fn chat(body: Value) -> ChatCompletionRequest {
        let mut body = body;
        body["model"] = json!("m");
        if body.get("messages").is_none() {
            body["messages"] = json!([{"role": "user", "content": "hi"}]);
        }
        serde_json::from_value(body).unwrap()
    }

    fn weather() -> Value {
        json!({"type": "function", "function": {
            "name": "get_weather", "description": "The weather now",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string"},
                "unit": {"enum": ["celsius", "fahrenheit"]}
            }, "required": ["city"]}}})
    }

    fn time() -> Value {
        json!({"type": "function", "function": {"name": "get_time"}})
    }

    #[test]
    fn tools_are_validated() {
        let with = |tools: Value| chat(json!({"tools": tools})).tool_settings();
        for (tools, param) in [
            (json!({"type": "function"}), "tools"),
            (json!(["x"]), "tools[0]"),
            (json!([{"type": "retrieval"}]), "tools[0].type"),
            (json!([{"type": "function"}]), "tools[0].function"),
            (
                json!([{"type": "function", "function": {"name": "has space"}}]),
                "tools[0].function.name",
            ),
            (
                json!([{"type": "function", "function": {"name": "x".repeat(65)}}]),
                "tools[0].function.name",
            ),
            (
                json!([weather(), {"type": "function", "function": {"description": 3, "name": "f"}}]),
                "tools[1].function.description",
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "parameters": "{}"}}]),
                "tools[0].function.parameters",
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]),
                "tools[0].function.parameters.type",
            ),
            (
                json!([{"type": "function", "function": {"name": "f", "strict": "yes"}}]),
                "tools[0].function.strict",
            ),
            (json!([weather(), weather()]), "tools[1].function.name"),
        ] {
            assert_eq!(param_of(with(tools.clone()).unwrap_err()), param, "{tools}");
        }
        let settings = with(json!([weather(), time()])).unwrap();
        assert_eq!(settings.choice, ToolChoice::Auto);
        assert_eq!(settings.prompt_tools().len(), 2);
        // A function without parameters takes an empty object.
        assert_eq!(
            settings.tools[1].parameters,
            serde_json::from_str::<Json>(r#"{"type":"object","properties":{}}"#).unwrap()
        );
        assert_eq!(with(json!([])).unwrap().choice, ToolChoice::None);
        assert_eq!(with(Value::Null).unwrap().choice, ToolChoice::None);
    }

    #[test]
    fn tool_choice_is_validated() {
        let choose = |choice: Value| {
            chat(json!({"tools": [weather(), time()], "tool_choice": choice})).tool_settings()
        };
        assert_eq!(choose(json!("none")).unwrap().choice, ToolChoice::None);
        assert!(choose(json!("none")).unwrap().prompt_tools().is_empty());
        assert_eq!(choose(json!("auto")).unwrap().choice, ToolChoice::Auto);
        assert_eq!(
            choose(json!("required")).unwrap().choice,
            ToolChoice::Required
        );
        assert_eq!(
            choose(json!({"type": "function", "function": {"name": "get_time"}}))
                .unwrap()
                .choice,
            ToolChoice::Function("get_time".into())
        );
        for (choice, param) in [
            (json!("any"), "tool_choice"),
            (json!(3), "tool_choice"),
            (
                json!({"type": "custom", "custom": {"name": "x"}}),
                "tool_choice.type",
            ),
            (json!({"type": "function"}), "tool_choice.function.name"),
            (
                json!({"type": "function", "function": {"name": "get_stock"}}),
                "tool_choice",
            ),
        ] {
            assert_eq!(
                param_of(choose(choice.clone()).unwrap_err()),
                param,
                "{choice}"
            );
        }
        let no_tools = |choice: Value| chat(json!({"tool_choice": choice})).tool_settings();
        assert_eq!(no_tools(json!("auto")).unwrap().choice, ToolChoice::None);
        assert_eq!(
            param_of(no_tools(json!("required")).unwrap_err()),
            "tool_choice"
        );
        // A forced call and a constrained response_format both decide the
        // output; under auto the response_format does, and nothing is parsed.
        let forced = chat(json!({"tools": [weather()], "tool_choice": "required",
                                 "response_format": {"type": "json_object"}}));
        assert_eq!(
            param_of(forced.tool_settings().unwrap_err()),
            "response_format"
        );
        let auto = chat(json!({"tools": [weather()], "response_format": {"type": "json_object"}}))
            .tool_settings()
            .unwrap();
        assert!(auto.stream_filter().is_none());
        assert_eq!(
            auto.parse_output(r#"{"name":"get_weather","arguments":{}}"#),
            None
        );
    }

    #[test]
    fn tool_messages_are_validated() {
        let req = chat(json!({"messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function",
                 "function": {"name": "get_weather", "arguments": "not json"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"}
        ]}));
        let msgs = req.template_messages().unwrap();
        assert_eq!(
            msgs[1].tool_calls,
            vec![
                TemplateToolCall::function("call_1", "get_weather", j(json!({"city": "Paris"}))),
                TemplateToolCall::function(
                    "call_2",
                    "get_weather",
                    Json::String("not json".into())
                ),
            ]
        );
        assert_eq!(msgs[1].content, "");
        assert_eq!(
            (msgs[2].role.as_str(), msgs[2].tool_call_id.as_deref()),
            ("tool", Some("call_1"))
        );
        for (messages, param) in [
            (
                json!([{"role": "tool", "content": "18C"}]),
                "messages[0].tool_call_id",
            ),
            (
                json!([{"role": "user", "content": "x", "tool_calls": []}]),
                "messages[0].tool_calls",
            ),
            (
                json!([{"role": "assistant", "tool_calls": [{"id": "c", "type": "code",
                    "function": {"name": "f", "arguments": "{}"}}]}]),
                "messages[0].tool_calls[0].type",
            ),
        ] {
            let req = chat(json!({ "messages": messages }));
            assert_eq!(
                param_of(req.template_messages().unwrap_err()),
                param,
                "{messages}"
            );
        }
    }

    fn call(name: &str, arguments: &str) -> FunctionCall {
        FunctionCall {
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    #[test]
    fn tool_calls_are_read_from_the_output() {
        let names = ["get_weather", "get_time"];
        let parse = |text: &str| parse_tool_calls(text, &names);
        // A bare call (what a forced call generates), key order kept.
        assert_eq!(
            parse(r#" {"name":"get_weather","arguments":{"unit":"celsius","city":"Paris"}} "#),
            Some(ToolCallOutput {
                content: None,
                calls: vec![call("get_weather", r#"{"unit":"celsius","city":"Paris"}"#)],
            })
        );
        // Hermes blocks with text around them, a missing `</tool_call>` at
        // the end, `parameters` for `arguments`, arguments as a JSON text.
        let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n\
                    <tool_call>{\"name\": \"get_time\", \"parameters\": {}}</tool_call>\n\
                    <tool_call>\n{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Rome\\\"}\"}\n";
        assert_eq!(
            parse(text),
            Some(ToolCallOutput {
                content: Some("Let me check.".into()),
                calls: vec![
                    call("get_weather", r#"{"city":"Paris"}"#),
                    call("get_time", "{}"),
                    call("get_weather", r#"{"city": "Rome"}"#),
                ],
            })
        );
        assert_eq!(
            parse("<tool_call>{\"name\":\"get_time\"}</tool_call>")
                .unwrap()
                .calls,
            vec![call("get_time", "{}")]
        );
        // Not calls: plain text, unknown functions, broken JSON, other keys,
        // arguments that are not an object.
        for text in [
            "The weather is fine.",
            r#"{"name":"get_stock","arguments":{}}"#,
            r#"{"city":"Paris"}"#,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \n</tool_call>",
            "Sure. <tool_call>{\"name\":\"get_stock\",\"arguments\":{}}</tool_call>",
            r#"{"name":"get_time","arguments":{},"extra":1}"#,
            r#"{"name":"get_time","arguments":[1]}"#,
            r#"<tool_call>{"name":"get_time","arguments":"[1]"}</tool_call>"#,
            "<tool_call>",
        ] {
            assert_eq!(parse(text), None, "{text}");
        }
    }

    #[test]
    fn answers_become_messages_with_tool_calls() {
        let settings = chat(json!({"tools": [weather(), time()]}))
            .tool_settings()
            .unwrap();
        let text = "<tool_call>{\"name\":\"get_time\",\"arguments\":{}}</tool_call><tool_call>{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Oslo\"}}</tool_call>";
        let (message, finish) = settings.message(text.into(), FinishReason::Stop);
        assert_eq!(finish, FinishReason::ToolCalls);
        assert_eq!(message.content, None);
        assert_eq!(
            message
                .tool_calls
                .iter()
                .map(|c| c.function.clone())
                .collect::<Vec<_>>(),
            vec![
                call("get_time", "{}"),
                call("get_weather", r#"{"city":"Oslo"}"#)
            ]
        );
        let id = &message.tool_calls[0].id;
        assert!(id.starts_with("call_") && id.len() == 29, "{id}");
        assert_ne!(id, &message.tool_calls[1].id);
        let body = serde_json::to_value(&message).unwrap();
        assert_eq!(body["content"], Value::Null);
        assert_eq!(body["tool_calls"][1]["type"], "function");
        assert_eq!(
            body["tool_calls"][1]["function"]["arguments"],
            r#"{"city":"Oslo"}"#
        );
        // parallel_tool_calls: false keeps the first call.
        let single = chat(json!({"tools": [weather(), time()], "parallel_tool_calls": false}))
            .tool_settings()
            .unwrap();
        assert_eq!(
            single
                .message(text.into(), FinishReason::Stop)
                .0
                .tool_calls
                .len(),
            1
        );
        // A plain answer keeps its text and finish reason; so does any
        // answer under tool_choice none.
        let (message, finish) = settings.message("Hello".into(), FinishReason::Length);
        assert_eq!(
            (message.content.as_deref(), finish),
            (Some("Hello"), FinishReason::Length)
        );
        assert!(
            serde_json::to_value(&message)
                .unwrap()
                .get("tool_calls")
                .is_none()
        );
        let none = chat(json!({"tools": [weather()], "tool_choice": "none"}))
            .tool_settings()
            .unwrap();
        assert_eq!(
            none.message(text.into(), FinishReason::Stop).1,
            FinishReason::Stop
        );
        assert!(none.stream_filter().is_none());
        // Streamed calls carry their index.
        let delta = ToolCallDelta {
            index: 1,
            call: ToolCall::new(call("get_time", "{}")),
        };
        let v = serde_json::to_value(&delta).unwrap();
        assert_eq!(
            (
                v["index"].clone(),
                v["type"].clone(),
                v["function"]["name"].clone()
            ),
            (json!(1), json!("function"), json!("get_time"))
        );
    }

    #[test]
    fn forced_calls_have_a_grammar() {
        use crate::json_grammar::Matcher;
        let accepts = |g: &Grammar, text: &str| {
            let mut m = Matcher::new(std::sync::Arc::new(g.clone()));
            m.advance(text.as_bytes()) && m.is_complete()
        };
        let grammar = |body: Value| {
            let req = chat(body);
            req.output_grammar(&req.tool_settings().unwrap())
        };
        let named = grammar(json!({"tools": [weather(), time()],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}))
        .unwrap()
        .unwrap();
        assert!(accepts(
            &named,
            r#"{"name":"get_weather","arguments":{"city":"Paris"}}"#
        ));
        assert!(accepts(
            &named,
            r#"{"name":"get_weather","arguments":{"city":"Oslo","unit":"celsius"}}"#
        ));
        for text in [
            r#"{"name":"get_time","arguments":{}}"#,
            r#"{"name":"get_weather","arguments":{}}"#,
            r#"{"name":"get_weather","arguments":{"city":"Oslo","unit":"kelvin"}}"#,
            r#"{"arguments":{"city":"Paris"},"name":"get_weather"}"#,
        ] {
            assert!(!accepts(&named, text), "{text}");
        }
        let required = grammar(json!({"tools": [weather(), time()], "tool_choice": "required"}))
            .unwrap()
            .unwrap();
        assert!(accepts(
            &required,
            r#"{"name":"get_weather","arguments":{"city":"Paris"}}"#
        ));
        assert!(accepts(&required, r#"{"name":"get_time","arguments":{}}"#));
        assert!(!accepts(
            &required,
            r#"{"name":"get_time","arguments":{"city":"Paris"}}"#
        ));
        assert!(!accepts(
            &required,
            r#"{"name":"get_stock","arguments":{}}"#
        ));
        // No forced call: response_format's grammar, or none.
        assert_eq!(grammar(json!({"tools": [weather()]})).unwrap(), None);
        assert_eq!(
            grammar(json!({"tools": [weather()], "response_format": {"type": "json_object"}}))
                .unwrap(),
            Some(Grammar::any_object())
        );
        // A keyword the grammar lacks is named in the request's terms.
        let bad = json!({"type": "function", "function": {"name": "f", "parameters":
            {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}}}});
        assert_eq!(
            param_of(
                grammar(json!({"tools": [weather(), bad], "tool_choice": "required"})).unwrap_err()
            ),
            "tools[1].function.parameters.properties.n.minimum"
        );
        // ...but only matters when the call is forced.
        assert_eq!(grammar(json!({"tools": [weather(), bad]})).unwrap(), None);
    }

    /// Feeds `pieces` and returns what is sent at once, then what is held.
    fn stream(forced: bool, pieces: &[&str]) -> (Vec<String>, String) {
        let mut filter = ToolCallStream::new(forced);
        let sent = pieces.iter().map(|p| filter.push(p)).collect();
        (sent, filter.finish())
    }

    #[test]
    fn streams_text_until_a_tool_call() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        // Plain text flows, holding back what may open a tag.
        assert_eq!(
            stream(false, &["Hello", " wor", "ld <", "b>"]),
            (s(&["Hello", " wor", "ld ", "<b>"]), String::new())
        );
        assert_eq!(
            stream(false, &["Sure.", " <tool", "_ca", "ll>{\"name\"", ":1}"]),
            (
                s(&["Sure.", " ", "", "", ""]),
                "<tool_call>{\"name\":1}".into()
            )
        );
        // An answer that opens with a tag or `{` is held whole.
        assert_eq!(
            stream(false, &["\n", "<tool_", "call>", "{}"]),
            (s(&["", "", "", ""]), "\n<tool_call>{}".into())
        );
        assert_eq!(
            stream(false, &[" {", "\"a\": 1}"]),
            (s(&["", ""]), " {\"a\": 1}".into())
        );
        // A tag cut short at the end is handed over (and read as text).
        assert_eq!(
            stream(false, &["ok <tool_c"]),
            (s(&["ok "]), "<tool_c".into())
        );
        // Forced calls are held from the start.
        assert_eq!(stream(true, &["Hi", "!"]), (s(&["", ""]), "Hi!".into()));
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
