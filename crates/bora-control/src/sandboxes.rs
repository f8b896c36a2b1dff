//! Sandboxes: create, time out, pause, resume, kill.
//!
//! A sandbox is one container on the node's sandbox network (see
//! `bora_node::sandbox`) running `bora-envd` as its first process. Creating
//! one:
//!
//! 1. validate the request, resolve the template to an image (pulled or
//!    built locally) and the allow-list's host names to addresses;
//! 2. record it (`starting`) with a fresh id and envd access token;
//! 3. start its container, wait until envd answers `/health` (polled every
//!    2 ms), and `/init` it with the sandbox's env vars and default user;
//! 4. `running`, routed by the router under its id.
//!
//! Any failure stops what was started and records `failed` with the
//! reason. A reaper kills sandboxes whose timeout passed (`timed_out`) and
//! notices ones whose agent died (`failed`). A server restart re-adopts the
//! sandboxes that still run.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bora_api::{
    DEFAULT_SANDBOX_TIMEOUT, DEFAULT_TEMPLATE, ENVD_PORT, Isolation, MAX_SANDBOX_TIMEOUT,
    NewSandbox, Sandbox, SandboxResources, SandboxState,
};
use bora_image::{Image, PullOptions};
use bora_node::InstanceStatus;
use bora_node::sandbox::{SandboxLimits, SandboxSpec};
use bora_store::NewSandboxRecord;
use chrono::Utc;
use rand::Rng;
use tokio::time::Instant;

use crate::ControlError;
use crate::controller::Controller;
use crate::envd::Envd;
use crate::pool::{PoolSpec, Warm};

/// How long a sandbox's agent may take to answer after its container
/// started.
const ENVD_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How often envd's `/health` is polled while a sandbox starts.
const ENVD_POLL: Duration = Duration::from_millis(2);
/// How often the reaper looks for sandboxes past their timeout.
const REAP_INTERVAL: Duration = Duration::from_secs(1);
/// How long ended sandboxes stay listed (with `include_final`).
const KEEP_ENDED: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// The image reference a template name stands for. Names without a `/`,
/// `:` or `@` are Bora's local templates (`base` →
/// `bora.local/templates/base:latest`, built by `bora templates
/// build-base`); anything else is an image reference, pulled like a
/// service's image.
pub fn template_reference(template: &str) -> String {
    if template.contains(['/', ':', '@']) {
        template.to_string()
    } else {
        format!("bora.local/templates/{template}:latest")
    }
}

/// A sandbox id as E2B's look: 20 lower-case letters and digits.
fn new_sandbox_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// A secret for envd's `X-Access-Token`: 32 random bytes, hex.
fn new_access_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    hex::encode(bytes)
}

/// The allow-list as CIDRs: CIDRs as given (checked), host names resolved
/// now to one `/32` or `/128` per address.
pub(crate) async fn resolve_allow_out(entries: &[String]) -> Result<Vec<String>, ControlError> {
    let mut cidrs = Vec::new();
    for entry in entries {
        let entry = entry.trim();
        if let Some(cidr) = parse_cidr(entry)? {
            cidrs.push(cidr);
            continue;
        }
        if entry.is_empty()
            || !entry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(ControlError::Invalid(format!(
                "allow_out entry {entry:?} is neither a CIDR (203.0.113.0/24) nor a host name"
            )));
        }
        let addrs = tokio::net::lookup_host((entry, 0)).await.map_err(|e| {
            ControlError::Invalid(format!(
                "allow_out entry {entry:?}: cannot resolve the host name: {e}"
            ))
        })?;
        for addr in addrs {
            let cidr = match addr.ip() {
                IpAddr::V4(ip) => format!("{ip}/32"),
                IpAddr::V6(ip) => format!("{ip}/128"),
            };
            if !cidrs.contains(&cidr) {
                cidrs.push(cidr);
            }
        }
    }
    Ok(cidrs)
}

/// `Some(normalised CIDR)` for an address or CIDR, `None` for something
/// that looks like a host name, an error for a malformed CIDR.
fn parse_cidr(entry: &str) -> Result<Option<String>, ControlError> {
    let (addr, len) = match entry.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (entry, None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        if len.is_some() {
            return Err(ControlError::Invalid(format!(
                "allow_out entry {entry:?}: {addr:?} is not an IP address"
            )));
        }
        return Ok(None);
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(len) => len
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| {
                ControlError::Invalid(format!(
                    "allow_out entry {entry:?}: the prefix length must be 0 to {max}"
                ))
            })?,
    };
    Ok(Some(format!("{ip}/{len}")))
}

/// The timeout a request asks for, checked.
fn timeout_of(asked: Option<bora_api::Duration>) -> Result<Duration, ControlError> {
    let timeout = asked.unwrap_or(DEFAULT_SANDBOX_TIMEOUT).get();
    if timeout.is_zero() || timeout > MAX_SANDBOX_TIMEOUT.get() {
        return Err(ControlError::Invalid(format!(
            "timeout {} is out of range: give 1s to {}",
            bora_api::Duration(timeout),
            MAX_SANDBOX_TIMEOUT
        )));
    }
    Ok(timeout)
}

impl Controller {
    /// Creates a sandbox and returns it running; see the module docs. A
    /// warm pool (see [`crate::pool`]) serves the request when it can.
    pub async fn create_sandbox(
        self: &Arc<Self>,
        new: NewSandbox,
    ) -> Result<Sandbox, ControlError> {
        let began = Instant::now();
        let timeout = timeout_of(new.timeout)?;
        let resources = new.resources.unwrap_or_default();
        resources.validate().map_err(ControlError::Invalid)?;
        let template = new
            .template
            .clone()
            .filter(|t| !t.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_TEMPLATE.to_string());
        let isolation = new.isolation.unwrap_or(Isolation::Gvisor);
        let allow_out = resolve_allow_out(&new.allow_out).await?;

        if let Some(warm) = self
            .pools
            .claim(&template, isolation, &resources, &allow_out)
        {
            let id = warm.id.clone();
            match self.claim_warm(warm, &new, &template, timeout).await {
                Ok(sandbox) => {
                    self.metrics.sandbox_created("pool", began.elapsed());
                    return Ok(sandbox);
                }
                Err(e) => {
                    tracing::warn!(sandbox = %id, error = %e, "a warm sandbox failed its claim; starting one anew");
                }
            }
        }

        let image = self.sandbox_image(&template).await?;
        let record = NewSandboxRecord {
            id: new_sandbox_id(),
            template: template.clone(),
            image: image.pinned.clone(),
            isolation,
            resources,
            metadata: new.metadata.clone(),
            allow_out,
            end_at: Utc::now() + timeout,
            envd_access_token: new_access_token(),
            env: new.env.clone(),
        };
        let sandbox = self.store.create_sandbox(&record)?;
        let has_user = image_has_user(&image, "user");
        let started = async {
            let ip = self.launch_sandbox(&sandbox, image).await?;
            init_envd(
                SocketAddr::new(ip, ENVD_PORT),
                &sandbox.envd_access_token,
                &record.env,
                default_user(has_user),
            )
            .await?;
            Ok::<_, String>(ip)
        };
        match started.await {
            Ok(ip) => {
                let running = self.mark_running(&sandbox.id, ip, &template)?;
                self.metrics.sandbox_created("cold", began.elapsed());
                Ok(running)
            }
            Err(reason) => {
                if let Err(e) = self.node.stop_sandbox(&sandbox.id).await {
                    tracing::warn!(sandbox = %sandbox.id, error = %e, "cleanup after a failed start");
                }
                let _ = self.store.set_sandbox_ip(&sandbox.id, None).and_then(|()| {
                    self.store
                        .set_sandbox_state(&sandbox.id, SandboxState::Failed, &reason)
                });
                Err(ControlError::Internal(format!(
                    "sandbox {} failed to start: {reason}",
                    sandbox.id
                )))
            }
        }
    }

    /// Makes a warm sandbox the requested one: `/init` with the request's
    /// env vars first (a warm sandbox that fails it is stopped and never
    /// recorded), then the record, under the id and token it started with.
    async fn claim_warm(
        &self,
        warm: Warm,
        new: &NewSandbox,
        template: &str,
        timeout: Duration,
    ) -> Result<Sandbox, ControlError> {
        let envd = SocketAddr::new(warm.ip, ENVD_PORT);
        if let Err(reason) = init_envd(
            envd,
            &warm.access_token,
            &new.env,
            default_user(warm.has_user),
        )
        .await
        {
            if let Err(e) = self.node.stop_sandbox(&warm.id).await {
                tracing::warn!(sandbox = %warm.id, error = %e, "stopping a failed warm sandbox");
            }
            return Err(ControlError::Internal(reason));
        }
        let record = NewSandboxRecord {
            id: warm.id,
            template: template.to_string(),
            image: warm.image.pinned,
            isolation: new.isolation.unwrap_or(Isolation::Gvisor),
            resources: SandboxResources::default(),
            metadata: new.metadata.clone(),
            allow_out: Vec::new(),
            end_at: Utc::now() + timeout,
            envd_access_token: warm.access_token,
            env: new.env.clone(),
        };
        let sandbox = self.store.create_sandbox(&record)?;
        self.mark_running(&sandbox.id, warm.ip, template)
    }

    /// Records a started sandbox as running and routes it.
    fn mark_running(&self, id: &str, ip: IpAddr, template: &str) -> Result<Sandbox, ControlError> {
        self.store.set_sandbox_ip(id, Some(&ip.to_string()))?;
        let running =
            self.store
                .set_sandbox_state(id, SandboxState::Running, "its agent answers")?;
        self.publish_routes();
        tracing::info!(sandbox = %id, %ip, template, "sandbox running");
        Ok(running)
    }

    /// Starts a warm sandbox for `pool`: the template's image, default
    /// resources, no outbound network, a fresh id and token; envd answers
    /// but has had no `/init`.
    pub(crate) async fn start_warm(&self, pool: &PoolSpec) -> Result<Warm, ControlError> {
        let image = self.sandbox_image(&pool.template).await?;
        let has_user = image_has_user(&image, "user");
        let id = new_sandbox_id();
        let access_token = new_access_token();
        let spec = sandbox_spec(
            &id,
            image.clone(),
            pool.isolation,
            &SandboxResources::default(),
            &access_token,
            &[],
        );
        let started = async {
            let ip = self
                .node
                .start_sandbox(&spec)
                .await
                .map_err(|e| e.to_string())?;
            wait_envd(SocketAddr::new(ip, ENVD_PORT), ENVD_READY_TIMEOUT).await?;
            Ok::<_, String>(ip)
        };
        match started.await {
            Ok(ip) => Ok(Warm {
                id,
                access_token,
                image,
                ip,
                has_user,
            }),
            Err(reason) => {
                if let Err(e) = self.node.stop_sandbox(&id).await {
                    tracing::warn!(sandbox = %id, error = %e, "cleanup after a failed warm start");
                }
                Err(ControlError::Internal(format!(
                    "warm sandbox {id} failed to start: {reason}"
                )))
            }
        }
    }

    /// The image of `template`, pulled (or loaded) now.
    async fn sandbox_image(&self, template: &str) -> Result<Image, ControlError> {
        let reference = template_reference(template);
        let opts = PullOptions {
            insecure_registries: self.config.insecure_registries.clone(),
            ..PullOptions::default()
        };
        self.node
            .images()
            .pull(&reference, &opts, &|_| {})
            .await
            .map_err(|e| {
                let hint = template_hint(template);
                ControlError::Invalid(format!("template {template:?}: {e}{hint}"))
            })
    }

    /// Starts a recorded sandbox's container and waits for its agent;
    /// returns its address.
    async fn launch_sandbox(&self, sandbox: &Sandbox, image: Image) -> Result<IpAddr, String> {
        let spec = sandbox_spec(
            &sandbox.id,
            image,
            sandbox.isolation,
            &sandbox.resources,
            &sandbox.envd_access_token,
            &sandbox.allow_out,
        );
        let ip = self
            .node
            .start_sandbox(&spec)
            .await
            .map_err(|e| e.to_string())?;
        wait_envd(SocketAddr::new(ip, ENVD_PORT), ENVD_READY_TIMEOUT).await?;
        Ok(ip)
    }

    /// A live sandbox, or `NotFound`.
    pub fn sandbox(&self, id: &str) -> Result<Sandbox, ControlError> {
        let sandbox = self.store.get_sandbox(id)?;
        if sandbox.state.is_final() {
            return Err(ControlError::NotFound(format!(
                "sandbox {id} is {} ({})",
                sandbox.state, sandbox.reason
            )));
        }
        Ok(sandbox)
    }

    pub fn sandboxes(&self, include_final: bool) -> Result<Vec<Sandbox>, ControlError> {
        Ok(self.store.list_sandboxes(include_final)?)
    }

    /// Kills a sandbox: its processes, files and network go.
    pub async fn kill_sandbox(&self, id: &str) -> Result<(), ControlError> {
        self.sandbox(id)?;
        self.end_sandbox(id, SandboxState::Killed, "killed by a request")
            .await
    }

    /// Ends a sandbox in `state` with `reason`, removing all it had.
    async fn end_sandbox(
        &self,
        id: &str,
        state: SandboxState,
        reason: &str,
    ) -> Result<(), ControlError> {
        // Out of the route table first: no request reaches a dying sandbox.
        self.store.set_sandbox_state(id, state, reason)?;
        self.publish_routes();
        self.node.stop_sandbox(id).await?;
        self.store.set_sandbox_ip(id, None)?;
        tracing::info!(sandbox = %id, %state, reason, "sandbox ended");
        Ok(())
    }

    /// Gives a sandbox `timeout` more to live, from now.
    pub fn set_sandbox_timeout(
        &self,
        id: &str,
        timeout: bora_api::Duration,
    ) -> Result<Sandbox, ControlError> {
        let timeout = timeout_of(Some(timeout))?;
        self.sandbox(id)?;
        Ok(self.store.set_sandbox_end_at(id, Utc::now() + timeout)?)
    }

    /// Freezes a running sandbox, keeping its processes and files.
    pub async fn pause_sandbox(&self, id: &str) -> Result<Sandbox, ControlError> {
        let sandbox = self.sandbox(id)?;
        match sandbox.state {
            SandboxState::Running => {}
            SandboxState::Paused => {
                return Err(ControlError::Conflict(format!(
                    "sandbox {id} is already paused"
                )));
            }
            other => {
                return Err(ControlError::Conflict(format!(
                    "sandbox {id} is {other}: only a running sandbox can be paused"
                )));
            }
        }
        self.node.pause_sandbox(id).await?;
        let paused =
            self.store
                .set_sandbox_state(id, SandboxState::Paused, "paused by a request")?;
        self.publish_routes();
        Ok(paused)
    }

    /// Thaws a paused sandbox; a running one is left as it is. Returns the
    /// sandbox and whether it was paused.
    pub async fn resume_sandbox(&self, id: &str) -> Result<(Sandbox, bool), ControlError> {
        let sandbox = self.sandbox(id)?;
        if sandbox.state != SandboxState::Paused {
            return Ok((sandbox, false));
        }
        self.node.resume_sandbox(id).await?;
        let resumed =
            self.store
                .set_sandbox_state(id, SandboxState::Running, "resumed by a request")?;
        self.publish_routes();
        Ok((resumed, true))
    }

    /// The addresses of running sandboxes, for the route table.
    pub(crate) fn sandbox_routes(&self) -> Vec<(String, IpAddr)> {
        self.store
            .list_sandboxes(false)
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.state == SandboxState::Running)
            .filter_map(|s| Some((s.id, s.ip?.parse().ok()?)))
            .collect()
    }

    /// After a restart: sandboxes still running are kept, the others are
    /// recorded as failed and cleaned up. Sandboxes the node has but the
    /// store does not — warm ones of the last run's pools, or one whose
    /// record never got written — are stopped.
    pub(crate) async fn recover_sandboxes(&self) {
        let Ok(live) = self.store.list_sandboxes(false) else {
            return;
        };
        for found in self.node.recover_sandboxes() {
            if live.iter().any(|s| s.id == found.id) {
                continue;
            }
            tracing::info!(sandbox = %found.id, "stopping a sandbox Bora has no record of (a warm one, or a lost start)");
            if let Err(e) = self.node.stop_sandbox(&found.id).await {
                tracing::warn!(sandbox = %found.id, error = %e, "stopping an unrecorded sandbox");
            }
        }
        for sandbox in live {
            let running = self.node.sandbox_status(&sandbox.id) == InstanceStatus::Running;
            if running && sandbox.state != SandboxState::Starting {
                tracing::info!(sandbox = %sandbox.id, state = %sandbox.state, "sandbox re-adopted");
                continue;
            }
            let reason = if running {
                "Bora stopped while it was starting"
            } else {
                "its agent stopped while Bora was down"
            };
            if let Err(e) = self
                .end_sandbox(&sandbox.id, SandboxState::Failed, reason)
                .await
            {
                tracing::warn!(sandbox = %sandbox.id, error = %e, "cleaning up a lost sandbox");
            }
        }
        self.publish_routes();
    }

    /// Kills sandboxes past their timeout and records those whose agent
    /// died, every [`REAP_INTERVAL`], until the process ends.
    pub async fn reap_sandboxes_forever(self: Arc<Self>) {
        let mut tick = tokio::time::interval(REAP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.reap_sandboxes_once().await;
        }
    }

    async fn reap_sandboxes_once(&self) {
        let Ok(live) = self.store.list_sandboxes(false) else {
            return;
        };
        let now = Utc::now();
        for sandbox in live {
            let ended = if sandbox.end_at <= now {
                Some((SandboxState::TimedOut, "its timeout passed".to_string()))
            } else if sandbox.state == SandboxState::Running {
                match self.node.sandbox_status(&sandbox.id) {
                    InstanceStatus::Running => None,
                    InstanceStatus::Exited(exit) => Some((
                        SandboxState::Failed,
                        format!(
                            "its agent exited: {}",
                            self.node.exit_reason(&sandbox.id, &exit)
                        ),
                    )),
                    InstanceStatus::Lost => Some((
                        SandboxState::Failed,
                        "its container's supervisor disappeared".to_string(),
                    )),
                }
            } else {
                None
            };
            if let Some((state, reason)) = ended
                && let Err(e) = self.end_sandbox(&sandbox.id, state, &reason).await
            {
                tracing::warn!(sandbox = %sandbox.id, error = %e, "ending a sandbox");
            }
        }
        let _ = self.store.prune_sandboxes(now - KEEP_ENDED);
    }
}

/// What to do about a template that is not there, for its error.
fn template_hint(template: &str) -> String {
    if template == DEFAULT_TEMPLATE {
        "; build it with `bora templates build-base`".to_string()
    } else if template_reference(template).starts_with("bora.local/templates/") {
        format!(
            "; `base` is the one template Bora builds (`bora templates build-base`): for \
             {template:?}, push an image to a registry and pass its reference as the template"
        )
    } else {
        String::new()
    }
}

/// What the node needs to start a sandbox.
fn sandbox_spec(
    id: &str,
    image: Image,
    isolation: Isolation,
    resources: &SandboxResources,
    access_token: &str,
    allow_out: &[String],
) -> SandboxSpec {
    SandboxSpec {
        id: id.to_string(),
        image,
        isolation,
        limits: SandboxLimits {
            millicpu: resources.millicpu,
            memory_bytes: resources.memory_mib * 1024 * 1024,
            pids: resources.pids,
            disk_bytes: resources.disk_mib * 1024 * 1024,
        },
        env: Vec::new(),
        access_token: access_token.to_string(),
        allow_out: allow_out.to_vec(),
        hostname: format!("sandbox-{}", &id[..8.min(id.len())]),
    }
}

/// Who commands run as when a call names nobody: `user`, as in E2B's
/// templates, when the image has it.
fn default_user(has_user: bool) -> &'static str {
    if has_user { "user" } else { "root" }
}

/// Whether the image's `/etc/passwd` (in its top-most layer that has one)
/// names `user`.
fn image_has_user(image: &Image, user: &str) -> bool {
    image
        .layers
        .iter()
        .rev()
        .find_map(|layer| std::fs::read_to_string(layer.join("etc/passwd")).ok())
        .is_some_and(|passwd| {
            passwd
                .lines()
                .any(|line| line.split(':').next() == Some(user))
        })
}

/// Polls envd's `/health` until it answers, or says why not.
async fn wait_envd(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let envd = Envd::new(addr, "");
    loop {
        let last = match envd.health().await {
            Ok(()) => return Ok(()),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(format!(
                "its agent did not answer within {}: {last}",
                bora_api::Duration(timeout)
            ));
        }
        tokio::time::sleep(ENVD_POLL).await;
    }
}

/// Sends envd its `/init`: the env vars of every process and the default
/// user.
async fn init_envd(
    addr: SocketAddr,
    token: &str,
    env: &BTreeMap<String, String>,
    default_user: &str,
) -> Result<(), String> {
    Envd::new(addr, token)
        .init(env, default_user)
        .await
        .map_err(|e| format!("cannot /init its agent: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_names_map_to_local_images_and_references_pass_through() {
        assert_eq!(
            template_reference("base"),
            "bora.local/templates/base:latest"
        );
        assert_eq!(
            template_reference("127.0.0.1:5000/tpl/python:1"),
            "127.0.0.1:5000/tpl/python:1"
        );
    }

    #[test]
    fn a_missing_template_says_what_to_do_and_names_only_real_commands() {
        assert_eq!(
            template_hint("base"),
            "; build it with `bora templates build-base`"
        );
        let python = template_hint("python");
        assert!(python.contains("push an image"), "{python}");
        assert!(!python.contains("build-python"), "{python}");
        assert_eq!(template_hint("127.0.0.1:5000/tpl/python:1"), "");
    }

    #[test]
    fn ids_and_tokens_are_fresh_and_well_formed() {
        let (a, b) = (new_sandbox_id(), new_sandbox_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 20);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        let token = new_access_token();
        assert_eq!(token.len(), 64);
        assert_ne!(token, new_access_token());
    }

    #[test]
    fn timeouts_are_bounded() {
        assert_eq!(timeout_of(None).unwrap(), Duration::from_secs(300));
        assert!(timeout_of(Some(bora_api::Duration::from_secs(0))).is_err());
        let err = timeout_of(Some(bora_api::Duration::from_secs(25 * 3600))).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }

    #[tokio::test]
    async fn allow_lists_take_cidrs_addresses_and_host_names() {
        let resolved = resolve_allow_out(&[
            "203.0.113.0/24".into(),
            "198.51.100.7".into(),
            "localhost".into(),
        ])
        .await
        .unwrap();
        assert_eq!(resolved[0], "203.0.113.0/24");
        assert_eq!(resolved[1], "198.51.100.7/32");
        assert!(
            resolved[2..]
                .iter()
                .any(|c| c == "127.0.0.1/32" || c == "::1/128")
        );
        for bad in ["10.0.0.0/33", "10.0.0.999/8", "not a host!", ""] {
            let err = resolve_allow_out(&[bad.into()]).await.unwrap_err();
            assert!(err.to_string().contains("allow_out"), "{bad}: {err}");
        }
    }
}
