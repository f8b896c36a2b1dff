//! The engine's error type.
//!
//! Loading errors name the file and say what is wrong with it; request errors
//! name the offending field. The HTTP layer turns an [`EngineError`] into an
//! OpenAI-shaped error response in exactly one place (`server::ApiError`).

use std::path::PathBuf;

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A model file could not be read at all.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A model file is truncated, corrupt, or not in the expected format.
    #[error("{path}: invalid model file: {reason}")]
    InvalidModel {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words a user can act on.
        reason: String,
    },
    /// A model file is well-formed but uses something this engine does not
    /// support (an architecture, a tokenizer type, a tensor type).
    #[error("{path}: unsupported model: {reason}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is unsupported.
        reason: String,
    },
    /// The tokenizer could not encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template failed to compile or render.
    #[error("chat template: {0}")]
    Template(String),
    /// A request parameter is invalid.
    #[error("{message}")]
    InvalidRequest {
        /// The request field at fault (`messages`, `temperature`, ...).
        param: Option<String>,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The prompt does not fit in the model's context window.
    #[error(
        "this model's maximum context length is {context_length} tokens, but {requested} tokens were requested ({prompt_tokens} in the prompt, {completion_tokens} for the completion); shorten the prompt or lower max_tokens"
    )]
    ContextLength {
        /// The model's context window.
        context_length: usize,
        /// Prompt plus completion tokens requested.
        requested: usize,
        /// Tokens in the prompt.
        prompt_tokens: usize,
        /// Tokens reserved for the completion.
        completion_tokens: usize,
    },
    /// A tensor operation failed while running a model.
    #[error("model execution failed: {0}")]
    Tensor(candle_core::Error),
    /// The engine worker has stopped (it panicked or shut down).
    #[error("the engine worker is not running")]
    WorkerGone,
}

/// candle attaches a backtrace to its errors when `RUST_BACKTRACE` is set,
/// and prints it as part of the message; messages for users and clients
/// drop it.
pub(crate) fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        other => other,
    }
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        Self::Tensor(without_backtrace(e))
    }
}

impl EngineError {
    /// A bad-request error naming `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self::InvalidRequest {
            param: Some(param.to_string()),
            message: message.into(),
        }
    }
}

/// The engine's result type.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_backtraces_stay_out_of_messages() {
        let e = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("index out of range".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert_eq!(
            EngineError::from(e).to_string(),
            "model execution failed: index out of range"
        );
    }
}
