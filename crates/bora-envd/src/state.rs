//! What every request handler shares: the settings `/init` may change, the
//! process table, the watchers, and the account files.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::Config;
use crate::connect::{Code, RpcError};
use crate::process::ProcessManager;
use crate::users::{Accounts, DEFAULT_PATH, User};
use crate::watch::Watchers;

/// Settings that start from [`Config`] and that `POST /init` may replace.
#[derive(Debug, Clone)]
pub struct Settings {
    pub access_token: Option<String>,
    pub default_user: String,
    pub default_workdir: Option<PathBuf>,
    /// Added to the environment of every process envd starts.
    pub env_vars: HashMap<String, String>,
}

pub struct Shared {
    settings: RwLock<Settings>,
    pub processes: Arc<ProcessManager>,
    pub watchers: Watchers,
    pub accounts: Accounts,
    /// envd's own environment, minus its own variables: the image's `ENV`
    /// (PATH, LANG, ...) that processes inherit.
    pub base_env: HashMap<String, String>,
}

impl Shared {
    pub fn new(config: Config, processes: Arc<ProcessManager>) -> Self {
        let base_env = std::env::vars()
            .filter(|(k, _)| !k.starts_with("BORA_ENVD_"))
            .collect();
        Self {
            settings: RwLock::new(Settings {
                access_token: config.access_token.clone(),
                default_user: config.default_user.clone(),
                default_workdir: config.default_workdir.clone(),
                env_vars: config.env_vars.clone(),
            }),
            processes,
            watchers: Watchers::default(),
            accounts: Accounts::new(&config.etc_dir),
            base_env,
        }
    }

    pub fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn update_settings(&self, f: impl FnOnce(&mut Settings)) {
        f(&mut self.settings.write().unwrap_or_else(|e| e.into_inner()))
    }

    /// The user a request acts as: the one it names, else the default.
    pub fn user(&self, requested: Option<&str>) -> Result<User, RpcError> {
        let name = match requested {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => self.settings().default_user,
        };
        self.accounts
            .lookup(&name)
            .map_err(|e| RpcError::new(Code::Unauthenticated, format!("invalid user: {e}")))
    }

    /// The environment of a new process: envd's own, the user's identity,
    /// the `/init` variables, then the request's.
    pub fn process_env(
        &self,
        user: &User,
        request: &HashMap<String, String>,
    ) -> HashMap<String, String> {
        let mut env = self.base_env.clone();
        env.entry("PATH".into())
            .or_insert_with(|| DEFAULT_PATH.into());
        env.insert("HOME".into(), user.home.display().to_string());
        env.insert("USER".into(), user.name.clone());
        env.insert("LOGNAME".into(), user.name.clone());
        if !user.shell.is_empty() {
            env.insert("SHELL".into(), user.shell.clone());
        }
        env.extend(self.settings().env_vars);
        env.extend(request.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }
}
