//! The autoscaling loop. Once a tick, for each autoscaled web or model service (its
//! active deployment has `min < max` or `min: 0`): read what the router and
//! the cgroups measured since the last tick, ask the service's
//! [`Autoscaler`] (pure decision logic, in `bora-autoscale`) for a
//! decision, and act on it — start instances, drain extra ones, put the
//! service to sleep, or turn a light sleep into a deep one.
//!
//! Waking is not here: it is on the request path (`Controller::wake`), so
//! the first held request starts it at once rather than at the next tick.
//! While a service wakes, the loop leaves it alone.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bora_api::{
    Deployment, DeploymentStatus, Instance, InstanceState, ScalingStatus, Service, ServiceType,
    SleepMode,
};
use bora_autoscale::{Autoscaler, Decision, Policy, Sample, Targets};
use bora_router::ServiceStats;
use tokio::time::Instant;

use crate::ControlError;
use crate::controller::Controller;

/// Runs the loop until the process ends.
pub(crate) async fn run_forever(ctl: Arc<Controller>) {
    let mut scaler = Scaler::default();
    let mut ticker = tokio::time::interval(ctl.config.scale_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Err(e) = scaler.tick(&ctl).await {
            tracing::error!(error = %e, "autoscaler tick");
        }
    }
}

/// The autoscaler's policy for a deployment's `scaling` block.
pub(crate) fn policy(d: &Deployment) -> Policy {
    let s = &d.spec.scaling;
    let targets = Targets {
        concurrency: s.targets.concurrency.map(f64::from),
        requests_per_second: s.targets.requests_per_second.map(f64::from),
        cpu: s.targets.cpu.map(|p| f64::from(p) / 100.0),
        memory: s.targets.memory.map(|p| f64::from(p) / 100.0),
        p95_latency: s.targets.p95_latency.map(|d| d.get()),
    };
    let stable = s.stable_window.get();
    Policy {
        stable_window: stable,
        // Knative's panic window is 10% of the stable window by default.
        panic_window: (stable / 10).max(Duration::from_secs(1)),
        ..Policy::new(s.min, s.max, targets, s.scale_to_zero_after.get())
    }
}

#[derive(Default)]
struct Scaler {
    /// By `app/service`.
    services: HashMap<String, Tracked>,
}

/// What the loop remembers about one service between ticks.
struct Tracked {
    deployment: String,
    autoscaler: Autoscaler,
    origin: Instant,
    last_tick: Instant,
    last_stats: ServiceStats,
    /// CPU seconds each instance had used at the last tick.
    cpu_seconds: HashMap<String, f64>,
    /// The last decision acted on, and the status last written.
    last_desired: Option<u32>,
    last_status: Option<(u32, u32, u32, bool)>,
}

/// The instances of a deployment, by what they can do now.
struct Pool<'a> {
    healthy: Vec<&'a Instance>,
    coming: Vec<&'a Instance>,
    sleeping: Vec<&'a Instance>,
    standby: Vec<&'a Instance>,
}

impl<'a> Pool<'a> {
    fn of(instances: &'a [Instance]) -> Self {
        let pick = |want: &[InstanceState]| {
            let mut v: Vec<&Instance> = instances
                .iter()
                .filter(|i| want.contains(&i.state))
                .collect();
            // Newest first: they are the first to go when scaling down.
            v.sort_by_key(|i| std::cmp::Reverse(i.created_at));
            v
        };
        Pool {
            healthy: pick(&[InstanceState::Healthy]),
            coming: pick(&[
                InstanceState::Pending,
                InstanceState::Pulling,
                InstanceState::Starting,
                InstanceState::Loading,
            ]),
            sleeping: pick(&[InstanceState::Sleeping]),
            standby: pick(&[InstanceState::Standby]),
        }
    }

    fn awake(&self) -> usize {
        self.healthy.len() + self.coming.len()
    }
}

impl Scaler {
    async fn tick(&mut self, ctl: &Arc<Controller>) -> Result<(), ControlError> {
        let mut seen = HashSet::new();
        for svc in ctl.store.list_services(None)? {
            let Some(active) = svc.active_deployment.as_deref() else {
                continue;
            };
            let d = ctl.store.get_deployment(active)?;
            // Model services scale like web services: the gateway counts
            // their requests under their app and service.
            if !matches!(d.spec.kind, ServiceType::Web | ServiceType::Model)
                || !d.spec.scaling.is_autoscaled()
                || d.status != DeploymentStatus::Healthy
                || ctl.rollout_running(active)
            {
                continue;
            }
            let key = format!("{}/{}", svc.app, svc.name);
            seen.insert(key.clone());
            if ctl.is_waking(&svc.app, &svc.name) {
                continue;
            }
            let now = Instant::now();
            let tracked = self
                .services
                .entry(key)
                .or_insert_with(|| Tracked::new(ctl, &svc, &d, now));
            if tracked.deployment != d.id {
                tracked.deployment = d.id.clone();
                tracked.autoscaler.set_policy(policy(&d));
            }
            let instances = ctl.live_instances(active)?;
            let pool = Pool::of(&instances);
            let sample = tracked.sample(ctl, &svc, &d, &pool, now);
            let decision = tracked.autoscaler.observe(sample);
            tracked.act(ctl, &svc, &d, &pool, &decision).await?;
        }
        self.services.retain(|key, _| seen.contains(key));
        Ok(())
    }
}

impl Tracked {
    fn new(ctl: &Controller, svc: &Service, d: &Deployment, now: Instant) -> Self {
        Tracked {
            deployment: d.id.clone(),
            autoscaler: Autoscaler::new(policy(d)),
            origin: now,
            last_tick: now,
            last_stats: ctl.router.service_stats(&svc.app, &svc.name),
            cpu_seconds: HashMap::new(),
            last_desired: None,
            last_status: None,
        }
    }

    /// What happened since the last tick.
    fn sample(
        &mut self,
        ctl: &Controller,
        svc: &Service,
        d: &Deployment,
        pool: &Pool<'_>,
        now: Instant,
    ) -> Sample {
        let stats = ctl.router.service_stats(&svc.app, &svc.name);
        let elapsed = now.duration_since(self.last_tick).as_secs_f64().max(1e-3);
        let busy = stats.in_flight + stats.held > 0;
        let last_active = stats
            .last_active
            .map(Instant::from_std)
            .unwrap_or(self.origin)
            .max(self.origin);
        let sample = Sample {
            now: now.duration_since(self.origin),
            ready: pool.healthy.len() as u32,
            concurrency: ((stats.concurrency_seconds_total
                - self.last_stats.concurrency_seconds_total)
                / elapsed)
                .max(0.0),
            in_flight: stats.in_flight as u32,
            held: stats.held as u32,
            requests: stats
                .arrived_total
                .saturating_sub(self.last_stats.arrived_total),
            p95_latency: stats.latency.since(&self.last_stats.latency).quantile(0.95),
            cpu: self.cpu_use(ctl, d, pool, elapsed),
            memory: memory_use(ctl, d, pool),
            idle_for: if busy {
                Duration::ZERO
            } else {
                now.saturating_duration_since(last_active)
            },
        };
        self.last_stats = stats;
        self.last_tick = now;
        sample
    }

    /// Average CPU use of the healthy instances over the tick, as a share
    /// of their limit.
    fn cpu_use(
        &mut self,
        ctl: &Controller,
        d: &Deployment,
        pool: &Pool<'_>,
        elapsed: f64,
    ) -> Option<f64> {
        let cores = d.spec.instance_type.limits().millicpu as f64 / 1000.0;
        let mut seen = HashMap::new();
        let mut shares = Vec::new();
        for i in &pool.healthy {
            let Some(usage) = ctl.node.usage(&i.id) else {
                continue;
            };
            if let Some(before) = self.cpu_seconds.get(&i.id) {
                shares.push(((usage.cpu_seconds - before) / elapsed / cores).max(0.0));
            }
            seen.insert(i.id.clone(), usage.cpu_seconds);
        }
        self.cpu_seconds = seen;
        average(&shares)
    }

    /// Acts on a decision, and records it when it changes.
    async fn act(
        &mut self,
        ctl: &Arc<Controller>,
        svc: &Service,
        d: &Deployment,
        pool: &Pool<'_>,
        decision: &Decision,
    ) -> Result<(), ControlError> {
        let desired = decision.desired as usize;
        let awake = pool.awake();
        let scaling = &d.spec.scaling;
        if desired == 0 && awake > 0 {
            let reason = format!("asleep ({} sleep): {}", scaling.sleep, decision.reason);
            let mut stop: Vec<&Instance> = pool.coming.clone();
            match scaling.sleep {
                SleepMode::Light if pool.sleeping.is_empty() && !pool.healthy.is_empty() => {
                    // Freeze one instance; the others drain.
                    let (keep, rest) = pool.healthy.split_last().expect("not empty");
                    ctl.sleep_instance(&keep.id, &reason);
                    stop.extend(rest);
                }
                _ => stop.extend(&pool.healthy),
            }
            for i in stop {
                ctl.stop_instance(&i.id, &reason, true).await?;
            }
            ctl.event(svc, "slept", &reason);
        } else if desired > awake {
            if !pool.sleeping.is_empty() || !pool.standby.is_empty() {
                // Demand reached the autoscaler before a request did (or the
                // wake is under way): the wake path handles sleepers.
                ctl.wake(&svc.app, &svc.name);
            } else {
                for _ in awake..desired {
                    let i = ctl.start_instance(d)?;
                    tracing::info!(instance = %i.id, deployment = %d.id, "scaling up");
                }
            }
        } else if desired < awake && desired > 0 {
            let reason = format!("scaled down: {}", decision.reason);
            // Instances not yet serving go first, then the newest.
            let victims = pool
                .coming
                .iter()
                .chain(&pool.healthy)
                .take(awake - desired);
            for i in victims {
                ctl.stop_instance(&i.id, &reason, true).await?;
            }
        }

        // Fully asleep without a frozen instance (deep sleep): keep one
        // standby, so that waking costs only the container's start.
        if desired == 0 && awake == 0 && pool.sleeping.is_empty() && scaling.min == 0 {
            if pool.standby.is_empty() {
                let i = ctl.start_standby(d)?;
                tracing::info!(instance = %i.id, deployment = %d.id, "standby for deep sleep");
            }
            for extra in pool.standby.iter().skip(1) {
                ctl.stop_instance(&extra.id, "an extra standby", false)
                    .await?;
            }
        }

        // Light sleep that lasted long enough becomes deep sleep.
        if let Some(after) = scaling.deep_sleep_after {
            for i in &pool.sleeping {
                let asleep_for = chrono::Utc::now() - i.updated_at;
                if asleep_for.to_std().unwrap_or_default() >= after.get() {
                    let reason = format!("deep sleep: frozen for {after} (deep_sleep_after)");
                    ctl.stop_instance(&i.id, &reason, false).await?;
                    ctl.event(svc, "slept", &reason);
                }
            }
        }

        let decided = self.last_desired.replace(decision.desired);
        if decided.is_some_and(|before| before != decision.desired) && desired > 0 {
            let before = decided.unwrap_or_default();
            let kind = if decision.desired > before {
                "scaled_up"
            } else {
                "scaled_down"
            };
            ctl.event(
                svc,
                kind,
                &format!(
                    "{before} → {} instance(s): {}",
                    decision.desired, decision.reason
                ),
            );
            ctl.metrics.decision(&svc.app, &svc.name, kind);
        }
        let status = (
            pool.healthy.len() as u32,
            decision.desired,
            pool.sleeping.len() as u32,
            decision.panicking,
        );
        ctl.metrics.instances(&svc.app, &svc.name, status);
        if self.last_status != Some(status) {
            self.last_status = Some(status);
            ctl.store.set_service_scaling(
                &svc.app,
                &svc.name,
                &ScalingStatus {
                    current: status.0,
                    desired: status.1,
                    sleeping: status.2,
                    panicking: status.3,
                    reason: decision.reason.clone(),
                    updated_at: chrono::Utc::now(),
                },
            )?;
        }
        Ok(())
    }
}

/// Average memory use of the healthy instances, as a share of their limit.
fn memory_use(ctl: &Controller, d: &Deployment, pool: &Pool<'_>) -> Option<f64> {
    let limit = d.spec.instance_type.limits().memory_bytes as f64;
    let shares: Vec<f64> = pool
        .healthy
        .iter()
        .filter_map(|i| ctl.node.usage(&i.id))
        .map(|u| u.memory_bytes as f64 / limit)
        .collect();
    average(&shares)
}

fn average(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(scaling: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "id": "d1", "app": "a", "service": "s", "version": 1,
            "spec": {"name": "s", "image": "img", "scaling": scaling},
            "image_digest": null, "status": "healthy", "reason": null,
            "created_at": "2026-11-22T00:00:00Z", "updated_at": "2026-11-22T00:00:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn the_policy_follows_the_spec() {
        let d = deployment(serde_json::json!({
            "min": 0, "max": 7, "scale_to_zero_after": "30s", "stable_window": "2m",
            "targets": {"concurrency": 20, "cpu": 70, "memory": 50, "p95_latency": "250ms"}
        }));
        let p = policy(&d);
        assert_eq!((p.min, p.max), (0, 7));
        assert_eq!(p.scale_to_zero_after, Duration::from_secs(30));
        assert_eq!(p.stable_window, Duration::from_secs(120));
        assert_eq!(
            p.panic_window,
            Duration::from_secs(12),
            "a tenth of the stable window"
        );
        assert_eq!(p.targets.concurrency, Some(20.0));
        assert_eq!(p.targets.cpu, Some(0.7), "percent becomes a fraction");
        assert_eq!(p.targets.memory, Some(0.5));
        assert_eq!(p.targets.requests_per_second, None);
        assert_eq!(p.targets.p95_latency, Some(Duration::from_millis(250)));

        let short = policy(&deployment(
            serde_json::json!({"max": 2, "stable_window": "6s"}),
        ));
        assert_eq!(
            short.panic_window,
            Duration::from_secs(1),
            "at least a second"
        );
    }
}
