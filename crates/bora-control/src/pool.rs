//! Warm pools: sandboxes started ahead of time, so `create` is a claim.
//!
//! `bora server --sandbox-pool base=4` keeps four sandboxes of the `base`
//! template running and idle: container started, network and firewall in
//! place, envd answering. A create that the pool can serve — same
//! template and isolation, default resources, no outbound allow-list —
//! takes one, records it under the id and access token it was started
//! with (both fresh and secret until then), sends envd its `/init` (the
//! request's env vars and the default user) and returns: one HTTP round
//! trip instead of a container start. A filler task per pool starts
//! replacements one at a time, backing off while the template is missing
//! or starts fail.
//!
//! Warm sandboxes are not in the store: a server restart stops them (see
//! `Controller::recover_sandboxes`) and fills the pools anew.

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bora_api::{Isolation, SandboxResources};
use bora_image::Image;
use tokio::sync::Notify;

use crate::ControlError;
use crate::controller::Controller;

/// The longest a filler waits between failed starts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The most sandboxes one pool may keep.
pub const MAX_POOL_SIZE: usize = 256;

/// One `--sandbox-pool`: `TEMPLATE=N` or `TEMPLATE=N:ISOLATION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSpec {
    pub template: String,
    pub isolation: Isolation,
    pub size: usize,
}

impl FromStr for PoolSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = "give TEMPLATE=N or TEMPLATE=N:ISOLATION, e.g. base=4 or base=4:container";
        let (template, rest) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("sandbox pool {s:?} has no '=': {usage}"))?;
        let template = template.trim();
        if template.is_empty() {
            return Err(format!("sandbox pool {s:?} names no template: {usage}"));
        }
        let (size, isolation) = match rest.split_once(':') {
            Some((size, isolation)) => (size, Some(isolation)),
            None => (rest, None),
        };
        let size: usize = size
            .trim()
            .parse()
            .ok()
            .filter(|n| (1..=MAX_POOL_SIZE).contains(n))
            .ok_or_else(|| {
                format!("sandbox pool {s:?}: the size must be a number from 1 to {MAX_POOL_SIZE}")
            })?;
        let isolation = match isolation.map(str::trim) {
            None | Some("gvisor") => Isolation::Gvisor,
            Some("container") => Isolation::Container,
            Some(other) => {
                return Err(format!(
                    "sandbox pool {s:?}: unknown isolation {other:?}: use gvisor or container"
                ));
            }
        };
        Ok(PoolSpec {
            template: template.to_string(),
            isolation,
            size,
        })
    }
}

impl fmt::Display for PoolSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.template, self.size)?;
        if self.isolation != Isolation::Gvisor {
            write!(f, ":{}", self.isolation)?;
        }
        Ok(())
    }
}

/// A started, idle sandbox waiting to be claimed.
pub(crate) struct Warm {
    pub id: String,
    pub access_token: String,
    pub image: Image,
    pub ip: IpAddr,
    /// Whether the image has the user `user` (else commands run as root).
    pub has_user: bool,
}

/// One template's pool.
pub(crate) struct Pool {
    pub spec: PoolSpec,
    ready: Mutex<VecDeque<Warm>>,
    /// Woken when a sandbox was claimed.
    claimed: Notify,
    /// Held by the filler while it starts a sandbox and puts it in the
    /// pool (or stops it, once closed): [`Controller::drain_pools`] takes
    /// it, so it never returns while a sandbox is half started.
    starting: tokio::sync::Mutex<()>,
}

impl Pool {
    fn new(spec: PoolSpec) -> Self {
        Self {
            spec,
            ready: Mutex::new(VecDeque::new()),
            claimed: Notify::new(),
            starting: tokio::sync::Mutex::new(()),
        }
    }

    pub fn ready(&self) -> usize {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Takes the oldest warm sandbox, if any, and wakes the filler.
    fn take(&self) -> Option<Warm> {
        let warm = self
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        if warm.is_some() {
            self.claimed.notify_one();
        }
        warm
    }

    fn put(&self, warm: Warm) {
        self.ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(warm);
    }
}

/// Every configured pool.
#[derive(Default)]
pub(crate) struct Pools {
    pools: Vec<Arc<Pool>>,
    /// Set by [`Controller::drain_pools`]: no more filling.
    closed: AtomicBool,
}

impl Pools {
    pub fn new(specs: &[PoolSpec]) -> Self {
        Self {
            pools: specs.iter().cloned().map(Pool::new).map(Arc::new).collect(),
            closed: AtomicBool::new(false),
        }
    }

    pub fn all(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// A warm sandbox for a create asking for `template` under
    /// `isolation`, if a pool has one and the request fits what pooled
    /// sandboxes are: default resources and no outbound network.
    pub fn claim(
        &self,
        template: &str,
        isolation: Isolation,
        resources: &SandboxResources,
        allow_out: &[String],
    ) -> Option<Warm> {
        if *resources != SandboxResources::default() || !allow_out.is_empty() {
            return None;
        }
        self.pools
            .iter()
            .find(|p| p.spec.template == template && p.spec.isolation == isolation)?
            .take()
    }
}

impl Controller {
    /// Keeps every pool full until the process ends: one filler per pool,
    /// starting one sandbox at a time.
    pub async fn fill_pools_forever(self: Arc<Self>) {
        let fillers: Vec<_> = self
            .pools
            .all()
            .iter()
            .map(|pool| tokio::spawn(self.clone().fill_pool(pool.clone())))
            .collect();
        for filler in fillers {
            let _ = filler.await;
        }
    }

    async fn fill_pool(self: Arc<Self>, pool: Arc<Pool>) {
        let mut backoff = Duration::from_millis(500);
        loop {
            self.metrics.pool_ready(
                &pool.spec.template,
                &pool.spec.isolation.to_string(),
                pool.ready(),
            );
            if pool.ready() >= pool.spec.size {
                pool.claimed.notified().await;
                continue;
            }
            match self.fill_one(&pool).await {
                None => return,
                Some(Ok(())) => backoff = Duration::from_millis(500),
                Some(Err(e)) => {
                    tracing::warn!(pool = %pool.spec, error = %e, retry_in = ?backoff, "cannot fill the sandbox pool");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Starts one warm sandbox into `pool`, holding its `starting` lock
    /// throughout; `None` once the pools are closed (a sandbox started
    /// meanwhile is stopped).
    async fn fill_one(&self, pool: &Pool) -> Option<Result<(), ControlError>> {
        let _starting = pool.starting.lock().await;
        if self.pools.closed.load(Ordering::SeqCst) {
            return None;
        }
        match self.start_warm(&pool.spec).await {
            Ok(warm) if self.pools.closed.load(Ordering::SeqCst) => {
                tracing::debug!(pool = %pool.spec, sandbox = %warm.id, "stopping a warm sandbox started while the pools closed");
                self.stop_warm(&warm).await;
                None
            }
            Ok(warm) => {
                tracing::debug!(pool = %pool.spec, sandbox = %warm.id, "warm sandbox ready");
                pool.put(warm);
                Some(Ok(()))
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// Stops filling the pools and stops their warm sandboxes: at
    /// shutdown, so idle sandboxes do not outlive the server. A sandbox
    /// being started right now is waited for (its filler stops it): the
    /// process exits next, and would leave it half started.
    pub async fn drain_pools(&self) {
        self.pools.closed.store(true, Ordering::SeqCst);
        for pool in self.pools.all() {
            let _starting = pool.starting.lock().await;
            while let Some(warm) = pool.take() {
                self.stop_warm(&warm).await;
            }
        }
    }

    async fn stop_warm(&self, warm: &Warm) {
        if let Err(e) = self.node.stop_sandbox(&warm.id).await {
            tracing::warn!(sandbox = %warm.id, error = %e, "stopping a warm sandbox");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_specs_parse_and_print_back() {
        let spec: PoolSpec = "base=4".parse().unwrap();
        assert_eq!(
            spec,
            PoolSpec {
                template: "base".into(),
                isolation: Isolation::Gvisor,
                size: 4
            }
        );
        assert_eq!(spec.to_string(), "base=4");
        let runc: PoolSpec = "127.0.0.1:5000/tpl/py:1=2:container".parse().unwrap();
        assert_eq!(runc.template, "127.0.0.1:5000/tpl/py:1");
        assert_eq!(runc.isolation, Isolation::Container);
        assert_eq!(runc.size, 2);
        assert_eq!(runc.to_string(), "127.0.0.1:5000/tpl/py:1=2:container");
    }

    #[test]
    fn bad_pool_specs_say_what_to_write() {
        for (bad, says) in [
            ("base", "no '='"),
            ("=3", "names no template"),
            ("base=0", "from 1 to 256"),
            ("base=many", "from 1 to 256"),
            ("base=2:kvm", "unknown isolation \"kvm\""),
        ] {
            let err = bad.parse::<PoolSpec>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    fn warm(id: &str) -> Warm {
        Warm {
            id: id.into(),
            access_token: "t".into(),
            image: Image {
                pinned: "bora.local/templates/base@sha256:0".into(),
                manifest_digest: "sha256:0".into(),
                config_digest: "sha256:1".into(),
                platform: bora_image::Platform::host(),
                config: Default::default(),
                layers: vec![],
            },
            ip: "10.89.0.2".parse().unwrap(),
            has_user: true,
        }
    }

    #[test]
    fn only_requests_a_pooled_sandbox_fits_claim_one() {
        let pools = Pools::new(&["base=2".parse().unwrap()]);
        pools.all()[0].put(warm("a"));
        pools.all()[0].put(warm("b"));
        let default = SandboxResources::default();
        let bigger = SandboxResources {
            memory_mib: 1024,
            ..default
        };
        assert!(
            pools
                .claim("python", Isolation::Gvisor, &default, &[])
                .is_none()
        );
        assert!(
            pools
                .claim("base", Isolation::Container, &default, &[])
                .is_none()
        );
        assert!(
            pools
                .claim("base", Isolation::Gvisor, &bigger, &[])
                .is_none()
        );
        assert!(
            pools
                .claim("base", Isolation::Gvisor, &default, &["0.0.0.0/0".into()])
                .is_none()
        );
        assert_eq!(pools.all()[0].ready(), 2);
        let first = pools
            .claim("base", Isolation::Gvisor, &default, &[])
            .unwrap();
        assert_eq!(first.id, "a", "the oldest warm sandbox goes first");
        assert_eq!(
            pools
                .claim("base", Isolation::Gvisor, &default, &[])
                .unwrap()
                .id,
            "b"
        );
        assert!(
            pools
                .claim("base", Isolation::Gvisor, &default, &[])
                .is_none()
        );
    }
}
