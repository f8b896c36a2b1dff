//! The control plane's error, and its one mapping onto API errors.

use bora_api::ErrorCode;
use bora_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Node(#[from] bora_node::NodeError),
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ControlError::NotFound(e.to_string()),
            StoreError::AlreadyExists { .. } => ControlError::Conflict(e.to_string()),
            other => ControlError::Store(other),
        }
    }
}

impl ControlError {
    pub fn code(&self) -> ErrorCode {
        match self {
            ControlError::Invalid(_) => ErrorCode::InvalidArgument,
            ControlError::NotFound(_) => ErrorCode::NotFound,
            ControlError::Conflict(_) => ErrorCode::Conflict,
            ControlError::Node(_) => ErrorCode::Upstream,
            ControlError::Store(_) | ControlError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<bora_image::ImageError> for ControlError {
    fn from(e: bora_image::ImageError) -> Self {
        ControlError::Node(bora_node::NodeError::Image(e))
    }
}
