use std::path::PathBuf;

/// What can go wrong running an instance. Messages name the instance, the
/// path or the command, and say what to do where there is something to do.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error(
        "{program} is not installed (looked for {path}): run `scripts/install-deps.sh` or install the Debian package {package}"
    )]
    MissingProgram {
        program: String,
        path: String,
        package: &'static str,
    },
    #[error("network setup for instance {instance} failed: {detail}")]
    Network { instance: String, detail: String },
    /// The instance could not start; `detail` says why (the instance is
    /// named by whoever reports it).
    #[error("{detail}")]
    Start { instance: String, detail: String },
    #[error("instance {0} is not known on this node")]
    UnknownInstance(String),
    #[error("image: {0}")]
    Image(#[from] bora_image::ImageError),
    #[error("the image's user {user:?} is not in the image's /etc/passwd: use a numeric uid")]
    UnknownUser { user: String },
}

impl NodeError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        NodeError::Io {
            path: path.into(),
            source,
        }
    }
}
