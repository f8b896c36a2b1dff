//! What a user writes: `bora.yaml` is an [`AppManifest`]; each of its services
//! is a [`ServiceSpec`], which is also the body of `POST .../deployments`.
//!
//! These types only describe shapes and defaults. Rules that span fields
//! (a route must name a declared port, say) live in `bora-manifest`'s
//! validation, which reports them with file, line and column.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::Duration;

/// A `bora.yaml` file: one app and its services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppManifest {
    /// The app's name (a DNS label).
    pub app: String,
    pub services: Vec<ServiceSpec>,
}

/// One service: the deployment definition. Every field of a service in
/// `bora.yaml` is a field here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// The service's name (a DNS label), unique within its app.
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: ServiceType,
    /// An image reference: `registry/repo:tag`, `registry/repo@sha256:…`, or
    /// a local OCI layout `oci:/path/to/layout:tag`. Not set for a model
    /// served by the built-in engine (`type: model`, `engine: builtin`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// Replaces the image's entrypoint and command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Replaces the image's command (its arguments), keeping the entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// A secret holding `username:password` for a private registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_secret: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, EnvValue>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckSpec>,
    #[serde(default)]
    pub instance_type: InstanceType,
    #[serde(default)]
    pub isolation: Isolation,
    #[serde(default)]
    pub scaling: ScalingSpec,
    /// The model a `type: model` service serves (required there, refused
    /// elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelSpec>,
}

/// What a `type: model` service serves. Clients reach it through the
/// inference gateway (`/v1/...` on the router) under the service's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// The model file on the node, an absolute path. `builtin`: a GGUF
    /// file (Llama architecture). `openai-compatible`: mounted read-only
    /// into the container at `/models/<file name>` (also in
    /// `BORA_MODEL_PATH`).
    pub path: String,
    #[serde(default)]
    pub engine: ModelEngine,
}

/// Which server runs a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ModelEngine {
    /// Bora's own engine (`bora engine serve`), run from the node's `bora`
    /// binary in a container: no image needed.
    #[default]
    Builtin,
    /// Any server image speaking the OpenAI API (vLLM, llama.cpp's
    /// `llama-server`, …): the service's `image`, listening on its first
    /// port (default 8000).
    OpenaiCompatible,
}

impl ModelEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelEngine::Builtin => "builtin",
            ModelEngine::OpenaiCompatible => "openai-compatible",
        }
    }
}

impl fmt::Display for ModelEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServiceType {
    /// Serves HTTP, reached through the router.
    #[default]
    Web,
    /// Runs in the background, no route.
    Worker,
    /// Serves a model through the inference gateway (see [`ModelSpec`]).
    Model,
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServiceType::Web => "web",
            ServiceType::Worker => "worker",
            ServiceType::Model => "model",
        })
    }
}

/// An environment variable's value: a plain string, or a reference to a
/// secret (`{ secret: name }`) resolved when the instance starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum EnvValue {
    Plain(String),
    Secret {
        /// The name of a secret created with `bora secrets create`.
        secret: String,
    },
}

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, a number, a boolean, or { secret: NAME }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue::Plain(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue::Plain(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue::Plain(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue::Plain(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue::Plain(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<EnvValue, A::Error> {
                let mut secret = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "secret" {
                        secret = Some(map.next_value::<String>()?);
                    } else {
                        return Err(serde::de::Error::unknown_field(&key, &["secret"]));
                    }
                }
                secret
                    .map(|secret| EnvValue::Secret { secret })
                    .ok_or_else(|| serde::de::Error::missing_field("secret"))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Http,
    Tcp,
}

/// Requests whose path starts with `path` go to `port` of the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub path: String,
    pub port: u16,
}

/// How Bora decides an instance is healthy. Exactly one of `http` and `tcp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpCheck>,
    /// Failures during this time after start do not count.
    #[serde(default = "defaults::grace_period")]
    pub grace_period: Duration,
    /// Time between checks once the instance is healthy.
    #[serde(default = "defaults::interval")]
    pub interval: Duration,
    /// How long one check may take.
    #[serde(default = "defaults::timeout")]
    pub timeout: Duration,
    /// Consecutive failures after which the instance is restarted.
    #[serde(default = "defaults::restart_limit")]
    pub restart_limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    #[serde(default = "defaults::http_path")]
    pub path: String,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpCheck {
    pub port: u16,
}

mod defaults {
    use crate::Duration;
    pub fn grace_period() -> Duration {
        Duration::from_secs(5)
    }
    pub fn interval() -> Duration {
        Duration::from_secs(10)
    }
    pub fn timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn restart_limit() -> u32 {
        3
    }
    pub fn http_path() -> String {
        "/".to_string()
    }
    pub fn one() -> u32 {
        1
    }
    pub fn scale_to_zero_after() -> Duration {
        Duration::from_secs(300)
    }
    pub fn stable_window() -> Duration {
        Duration::from_secs(60)
    }
}

/// Sizes of instance, as Koyeb names them: CPU, memory and process limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum InstanceType {
    Nano,
    Micro,
    #[default]
    Small,
    Medium,
    Large,
}

/// The limits an instance type stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU in thousandths of a core.
    pub millicpu: u64,
    pub memory_bytes: u64,
    pub pids: u64,
}

impl InstanceType {
    pub const ALL: [InstanceType; 5] = [
        InstanceType::Nano,
        InstanceType::Micro,
        InstanceType::Small,
        InstanceType::Medium,
        InstanceType::Large,
    ];

    pub fn limits(self) -> Limits {
        const MIB: u64 = 1024 * 1024;
        let (millicpu, memory_mib, pids) = match self {
            InstanceType::Nano => (100, 256, 128),
            InstanceType::Micro => (250, 512, 256),
            InstanceType::Small => (500, 1024, 512),
            InstanceType::Medium => (1000, 2048, 1024),
            InstanceType::Large => (2000, 4096, 2048),
        };
        Limits {
            millicpu,
            memory_bytes: memory_mib * MIB,
            pids,
        }
    }
}

/// How strongly instances are isolated from the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Linux namespaces, cgroups and seccomp, run by `runc`.
    #[default]
    Container,
    /// A user-space kernel, run by gVisor's `runsc`.
    Gvisor,
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isolation::Container => "container",
            Isolation::Gvisor => "gvisor",
        })
    }
}

/// How many instances run, and how they follow demand.
///
/// With `min == max` the service runs exactly that many instances. With
/// `min < max` the autoscaler adds and removes instances to keep each
/// target. With `min: 0` the service sleeps after `scale_to_zero_after`
/// without requests and wakes on the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScalingSpec {
    #[serde(default = "defaults::one")]
    pub min: u32,
    #[serde(default = "defaults::one")]
    pub max: u32,
    /// Per-instance targets the autoscaler keeps; concurrency 100 when none
    /// is given.
    #[serde(default, skip_serializing_if = "ScalingTargets::is_empty")]
    pub targets: ScalingTargets,
    /// Idle time (no request arriving or in flight) before a `min: 0`
    /// service sleeps.
    #[serde(default = "defaults::scale_to_zero_after")]
    pub scale_to_zero_after: Duration,
    /// How a `min: 0` service sleeps.
    #[serde(default)]
    pub sleep: SleepMode,
    /// For `sleep: light`: after this much more idle time, a frozen
    /// instance is stopped too (deep sleep), to free its memory. Never when
    /// unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deep_sleep_after: Option<Duration>,
    /// How far back the autoscaler averages load (Knative's stable
    /// window, 6s to 1h). The panic window is a tenth of it.
    #[serde(default = "defaults::stable_window")]
    pub stable_window: Duration,
}

impl Default for ScalingSpec {
    fn default() -> Self {
        Self {
            min: 1,
            max: 1,
            targets: ScalingTargets::default(),
            scale_to_zero_after: defaults::scale_to_zero_after(),
            sleep: SleepMode::default(),
            deep_sleep_after: None,
            stable_window: defaults::stable_window(),
        }
    }
}

impl ScalingSpec {
    /// Whether the autoscaler has anything to decide.
    pub fn is_autoscaled(&self) -> bool {
        self.min < self.max || self.min == 0
    }
}

/// What the autoscaler keeps per instance. Any subset; the instance count
/// is the largest any of them asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScalingTargets {
    /// Requests in flight per instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Requests per second per instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    /// CPU use, in percent of the instance type's CPU limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// Memory use, in percent of the instance type's memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u32>,
    /// 95th-percentile response time, measured at the router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_latency: Option<Duration>,
}

impl ScalingTargets {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// How a service scaled to zero sleeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SleepMode {
    /// Freeze the instance (cgroup freezer), keeping its memory: waking
    /// takes milliseconds.
    #[default]
    Light,
    /// Stop the instance: waking is a cold start.
    Deep,
}

impl SleepMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SleepMode::Light => "light",
            SleepMode::Deep => "deep",
        }
    }
}

impl fmt::Display for SleepMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ServiceSpec {
    /// The names of the secrets this spec's environment refers to.
    pub fn secret_refs(&self) -> impl Iterator<Item = &str> {
        self.env
            .values()
            .filter_map(|v| match v {
                EnvValue::Secret { secret } => Some(secret.as_str()),
                EnvValue::Plain(_) => None,
            })
            .chain(self.registry_secret.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_accept_scalars_and_secret_refs() {
        let env: BTreeMap<String, EnvValue> =
            serde_json::from_str(r#"{"A":"x","B":8000,"C":true,"D":{"secret":"db-pass"}}"#)
                .unwrap();
        assert_eq!(env["A"], EnvValue::Plain("x".into()));
        assert_eq!(env["B"], EnvValue::Plain("8000".into()));
        assert_eq!(env["C"], EnvValue::Plain("true".into()));
        assert_eq!(
            env["D"],
            EnvValue::Secret {
                secret: "db-pass".into()
            }
        );
        let err = serde_json::from_str::<EnvValue>(r#"{"secrt":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `secrt`"), "{err}");
    }

    #[test]
    fn defaults_fill_a_minimal_service() {
        let s: ServiceSpec = serde_json::from_str(r#"{"name":"web","image":"busybox"}"#).unwrap();
        assert_eq!(s.kind, ServiceType::Web);
        assert_eq!(s.instance_type, InstanceType::Small);
        assert_eq!(s.isolation, Isolation::Container);
        assert_eq!(s.scaling, ScalingSpec::default());
        assert_eq!((s.scaling.min, s.scaling.max), (1, 1));
        assert!(!s.scaling.is_autoscaled());
        assert_eq!(s.scaling.scale_to_zero_after, Duration::from_secs(300));
        assert_eq!(s.scaling.stable_window, Duration::from_secs(60));
        assert_eq!(s.scaling.sleep, SleepMode::Light);
        assert!(s.scaling.targets.is_empty());
    }

    #[test]
    fn unknown_fields_are_errors() {
        let err = serde_json::from_str::<ServiceSpec>(r#"{"name":"web","image":"x","imagee":"y"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `imagee`"), "{err}");
    }

    #[test]
    fn a_spec_round_trips_through_json() {
        let s: ServiceSpec = serde_json::from_str(
            r#"{"name":"web","image":"x","env":{"A":"1","B":{"secret":"s"}},
                "health_check":{"http":{"port":8000}},"ports":[{"port":8000}],
                "routes":[{"path":"/","port":8000}]}"#,
        )
        .unwrap();
        let back: ServiceSpec = serde_json::from_value(serde_json::to_value(&s).unwrap()).unwrap();
        assert_eq!(s, back);
        assert_eq!(s.health_check.unwrap().grace_period, Duration::from_secs(5));
    }

    #[test]
    fn instance_types_grow() {
        let limits: Vec<_> = InstanceType::ALL.iter().map(|t| t.limits()).collect();
        for w in limits.windows(2) {
            assert!(w[0].millicpu < w[1].millicpu && w[0].memory_bytes < w[1].memory_bytes);
        }
    }
}
