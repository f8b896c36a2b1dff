//! Chat templates: the Jinja template a model ships (`tokenizer.chat_template`)
//! rendered with minijinja, set up like Hugging Face's `apply_chat_template`
//! (trimmed blocks, `raise_exception`, Python string methods, loop controls).
//!
//! # Tools
//!
//! A template written for tool calling mentions `tools`: it gets them as
//! Hugging Face passes them (`tools`, the request's tool objects, or none),
//! and the messages with their tool fields (`tool_calls` with `arguments`
//! parsed into an object, as vLLM does, and `tool_call_id`).
//!
//! A template that does not mention `tools` (plain ChatML, SmolLM2) gets the
//! Hermes format (as Qwen2.5's template writes it) spelled out in the
//! messages instead:
//!
//! - the tools are described at the end of the system message (one is added
//!   when the conversation has none), with the instruction to answer with
//!   [`TOOL_CALL_OPEN`]` {"name": ..., "arguments": {...}} `[`TOOL_CALL_CLOSE`]
//!   blocks;
//! - an assistant message's `tool_calls` become such blocks after its text;
//! - `tool` messages become one `user` message with each result in a
//!   `<tool_response>` block (consecutive results share the message).

use minijinja::{Environment, Error, ErrorKind, Value};
use serde::Serialize;

use crate::error::{EngineError, Result};
use crate::json_grammar::Json;

/// The template used when a model file has none: ChatML.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Opens a tool call in the Hermes format.
pub const TOOL_CALL_OPEN: &str = "<tool_call>";
/// Closes a tool call in the Hermes format.
pub const TOOL_CALL_CLOSE: &str = "</tool_call>";

const NAME: &str = "chat";

/// One message as the template sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The message text.
    pub content: String,
}

/// A message of a conversation that may involve tools (see
/// [`ChatTemplate::render_chat`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChatTurn {
    /// `system`, `user`, `assistant`, `tool`.
    pub role: String,
    /// The message text (empty for an assistant message that only calls tools).
    pub content: String,
    /// An assistant message's tool calls.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<TemplateToolCall>,
    /// A `tool` message: the call it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatTurn {
    /// A message with text only.
    pub fn text(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A tool call in a message, shaped as OpenAI sends it:
/// `{id, type: "function", function: {name, arguments}}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateToolCall {
    /// The call's id (`call_...`).
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// What is called.
    pub function: TemplateFunction,
}

/// The function of a [`TemplateToolCall`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TemplateFunction {
    /// The function's name.
    pub name: String,
    /// The arguments: the object the call's JSON text holds (a string when
    /// that text is not JSON).
    pub arguments: Json,
}

impl TemplateToolCall {
    /// A call of function `name`.
    pub fn function(id: impl Into<String>, name: impl Into<String>, arguments: Json) -> Self {
        Self {
            id: id.into(),
            kind: "function",
            function: TemplateFunction {
                name: name.into(),
                arguments,
            },
        }
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Whether the template renders `tools` itself.
    renders_tools: bool,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

fn raise_exception(message: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Hugging Face's `strftime_now(format)`: the current UTC time, formatted
/// with strftime directives (templates use it to print today's date).
fn strftime_now(format: String) -> std::result::Result<String, Error> {
    use std::fmt::Write;
    let mut out = String::new();
    write!(out, "{}", chrono::Utc::now().format(&format)).map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        )
    })?;
    Ok(out)
}

impl ChatTemplate {
    /// Compiles `source`. `bos_token`/`eos_token` are exposed to the template
    /// under those names, as Hugging Face does.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| EngineError::Template(format!("does not compile: {e:#}")))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            renders_tools: source.contains("tools"),
        })
    }

    /// Whether the template renders tools and tool messages itself (its
    /// source mentions `tools`); otherwise [`ChatTemplate::render_chat`]
    /// writes them in the Hermes format (see the module docs).
    pub fn renders_tools(&self) -> bool {
        self.renders_tools
    }

    /// Renders `messages` into the prompt text, ending with the assistant
    /// turn's opening when `add_generation_prompt` is set. A template that
    /// rejects the conversation (`raise_exception`) yields a bad-request error
    /// on `messages`.
    pub fn render(
        &self,
        messages: &[TemplateMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.render_with(messages, None, add_generation_prompt)
    }

    /// Renders a conversation that may involve tools, offering `tools` (the
    /// request's tool objects; empty for none) to the model: natively when
    /// the template handles tools, in the Hermes format otherwise (see the
    /// module docs).
    pub fn render_chat(
        &self,
        messages: &[ChatTurn],
        tools: &[Json],
        add_generation_prompt: bool,
    ) -> Result<String> {
        if self.renders_tools {
            let tools = (!tools.is_empty()).then_some(tools);
            self.render_with(messages, tools, add_generation_prompt)
        } else {
            self.render_with(
                &hermes_messages(messages, tools),
                None,
                add_generation_prompt,
            )
        }
    }

    fn render_with<M: Serialize>(
        &self,
        messages: &[M],
        tools: Option<&[Json]>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| EngineError::Template(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidOperation => EngineError::invalid(
                "messages",
                format!(
                    "the model's chat template rejected the messages: {}",
                    e.detail().unwrap_or("")
                ),
            ),
            _ => EngineError::Template(format!("rendering failed: {e:#}")),
        })
    }
}

/// Compact JSON, keys in document order.
fn compact(json: &Json) -> String {
    serde_json::to_string(json).unwrap_or_default()
}

/// A call as the Hermes format writes it: `<tool_call>`, the JSON
/// `{"name": ..., "arguments": ...}` on its own line, `</tool_call>`.
pub fn hermes_tool_call(name: &str, arguments: &Json) -> String {
    let call = Json::Object(vec![
        ("name".into(), Json::String(name.into())),
        ("arguments".into(), arguments.clone()),
    ]);
    format!("{TOOL_CALL_OPEN}\n{}\n{TOOL_CALL_CLOSE}", compact(&call))
}

/// The system-prompt section that offers `tools` (Qwen2.5's wording).
fn hermes_tools_prompt(tools: &[Json]) -> String {
    let mut out = String::from(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>",
    );
    for tool in tools {
        out.push('\n');
        out.push_str(&compact(tool));
    }
    out.push_str("\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>");
    out
}

/// The conversation with its tool parts written out in the Hermes format,
/// for templates that only know role and content.
fn hermes_messages(messages: &[ChatTurn], tools: &[Json]) -> Vec<TemplateMessage> {
    let mut out: Vec<TemplateMessage> = Vec::with_capacity(messages.len() + 1);
    let mut in_results = false;
    for m in messages {
        if m.role == "tool" {
            let block = format!("<tool_response>\n{}\n</tool_response>", m.content);
            match out.last_mut() {
                Some(last) if in_results => {
                    last.content.push('\n');
                    last.content.push_str(&block);
                }
                _ => out.push(TemplateMessage {
                    role: "user".into(),
                    content: block,
                }),
            }
            in_results = true;
            continue;
        }
        in_results = false;
        let mut content = m.content.clone();
        for call in &m.tool_calls {
            if !content.is_empty() {
                content.push('\n');
            }
            content.push_str(&hermes_tool_call(
                &call.function.name,
                &call.function.arguments,
            ));
        }
        out.push(TemplateMessage {
            role: m.role.clone(),
            content,
        });
    }
    if !tools.is_empty() {
        let prompt = hermes_tools_prompt(tools);
        match out.first_mut() {
            Some(first) if first.role == "system" => {
                if !first.content.is_empty() {
                    first.content.push_str("\n\n");
                }
                first.content.push_str(&prompt);
            }
            _ => out.insert(
                0,
                TemplateMessage {
                    role: "system".into(),
                    content: prompt,
                },
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str) -> TemplateMessage {
        TemplateMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    /// SmolLM2's template, as stored in its GGUF file.
    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_smollm2_template_with_default_system_prompt() {
        let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
        let out = t
            .render(&[msg("user", "What is the capital of France?")], true)
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
        );
        let out = t
            .render(&[msg("system", "Be brief."), msg("user", "Hi")], false)
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        );
    }

    #[test]
    fn supports_hf_helpers_and_python_methods() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% if loop.index0 > 1 %}{% break %}{% endif %}[{{ m.role.upper() }}] {{ m.content.strip() }}{{ '\\n' }}{% endfor %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let out = t
            .render(
                &[
                    msg("user", "  hi "),
                    msg("assistant", "yo"),
                    msg("user", "dropped"),
                ],
                false,
            )
            .unwrap();
        assert_eq!(out, "<s>[USER] hi\n[ASSISTANT] yo\n");
        let err = t.render(&[msg("system", "x")], false).unwrap_err();
        match err {
            EngineError::InvalidRequest { param, message } => {
                assert_eq!(param.as_deref(), Some("messages"));
                assert!(
                    message.contains("Only user and assistant roles"),
                    "{message}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn trims_blocks_like_hugging_face() {
        let src = "{% for m in messages %}\n  {{ m.content }}\n{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert_eq!(
            t.render(&[msg("user", "a"), msg("user", "b")], false)
                .unwrap(),
            "  a\n  b\n"
        );
    }

    #[test]
    fn bad_template_fails_to_compile() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(EngineError::Template(_))
        ));
    }

    fn j(text: &str) -> Json {
        serde_json::from_str(text).unwrap()
    }

    const WEATHER: &str = r#"{"type":"function","function":{"name":"get_weather","description":"Weather now","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}"#;

    fn tool_conversation() -> Vec<ChatTurn> {
        let mut call = ChatTurn::text("assistant", "");
        call.tool_calls = vec![
            TemplateToolCall::function("call_1", "get_weather", j(r#"{"city":"Paris"}"#)),
            TemplateToolCall::function("call_2", "get_weather", j(r#"{"city":"Rome"}"#)),
        ];
        let result = |id: &str, text: &str| ChatTurn {
            tool_call_id: Some(id.into()),
            ..ChatTurn::text("tool", text)
        };
        vec![
            ChatTurn::text("user", "Weather in Paris and Rome?"),
            call,
            result("call_1", "18C"),
            result("call_2", "25C"),
            ChatTurn::text("assistant", "Paris 18C, Rome 25C."),
        ]
    }

    #[test]
    fn chatml_templates_get_tools_in_the_hermes_format() {
        let t = ChatTemplate::new(SMOLLM2, "<|im_start|>", "<|im_end|>").unwrap();
        assert!(!t.renders_tools());
        let tools = [j(WEATHER)];
        let out = t
            .render_chat(&[ChatTurn::text("user", "Hi")], &tools, true)
            .unwrap();
        // The tools replace the template's default system prompt.
        let want_system = format!(
            "<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{WEATHER}\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call><|im_end|>\n"
        );
        assert_eq!(
            out,
            format!("{want_system}<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
        );
        // An existing system message keeps its text, the tools follow it.
        let out = t
            .render_chat(
                &[
                    ChatTurn::text("system", "Be brief."),
                    ChatTurn::text("user", "Hi"),
                ],
                &tools,
                false,
            )
            .unwrap();
        assert!(
            out.starts_with("<|im_start|>system\nBe brief.\n\n# Tools\n"),
            "{out}"
        );
        // No tools: the same prompt as `render`.
        assert_eq!(
            t.render_chat(&[ChatTurn::text("user", "Hi")], &[], true)
                .unwrap(),
            t.render(&[msg("user", "Hi")], true).unwrap()
        );
    }

    #[test]
    fn chatml_templates_get_tool_history_as_text() {
        let t = ChatTemplate::new(CHATML_TEMPLATE, "", "<|im_end|>").unwrap();
        let out = t.render_chat(&tool_conversation(), &[], false).unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n\
             <|im_start|>assistant\n<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}\n</tool_call>\n\
             <tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Rome\"}}\n</tool_call><|im_end|>\n\
             <|im_start|>user\n<tool_response>\n18C\n</tool_response>\n<tool_response>\n25C\n</tool_response><|im_end|>\n\
             <|im_start|>assistant\nParis 18C, Rome 25C.<|im_end|>\n"
        );
        let mut with_text = ChatTurn::text("assistant", "Checking.");
        with_text.tool_calls = vec![TemplateToolCall::function("c", "f", j("{}"))];
        let out = t.render_chat(&[with_text], &[], false).unwrap();
        assert!(
            out.contains("Checking.\n<tool_call>\n{\"name\":\"f\",\"arguments\":{}}\n</tool_call>"),
            "{out}"
        );
    }

    #[test]
    fn tool_aware_templates_get_tools_and_tool_fields() {
        let src = "{% if tools is not none %}{% for t in tools %}[{{ t.function.name }}]{% endfor %}{% else %}[no tools]{% endif %}\
                   {% for m in messages %}{{ m.role }}:{{ m.content }}\
                   {% for c in m.tool_calls or [] %}<{{ c.id }} {{ c.type }} {{ c.function.name }} {{ c.function.arguments.city }}>{% endfor %}\
                   {% if m.tool_call_id is defined %}#{{ m.tool_call_id }}{% endif %};{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert!(t.renders_tools());
        let out = t
            .render_chat(&tool_conversation(), &[j(WEATHER)], false)
            .unwrap();
        assert_eq!(
            out,
            "[get_weather]user:Weather in Paris and Rome?;\
             assistant:<call_1 function get_weather Paris><call_2 function get_weather Rome>;\
             tool:18C#call_1;tool:25C#call_2;assistant:Paris 18C, Rome 25C.;"
        );
        let out = t
            .render_chat(&[ChatTurn::text("user", "Hi")], &[], false)
            .unwrap();
        assert_eq!(out, "[no tools]user:Hi;");
    }
}
