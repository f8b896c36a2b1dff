//! Model services (`type: model`): a model served like any other service,
//! reached through the inference gateway by its name.
//!
//! - Deploy: a model's name (its service's name) is unique across apps.
//! - Pull: the model file must be a readable regular file on the node; for
//!   the built-in engine, a GGUF file of a version the engine reads. Its
//!   SHA-256 is recorded on the deployment (`model_digest`).
//! - Run: a built-in model's replica is a container whose root is the
//!   host's `/usr` (read-only, [`bora_node::hostroot`]), running the node's
//!   own `bora` (bound at `/bora`) as `bora engine serve` on port 8000, as
//!   nobody, with the model file bound read-only at `/models/<file>`. An
//!   `openai-compatible` model runs its image with the file bound there too
//!   (and in `BORA_MODEL_PATH`), serving on its first port (8000 if none).
//! - Ready: a replica is `loading` until `GET /v1/models` answers, then
//!   `healthy`; it is never failed for loading slowly, only for exiting.
//! - Route: [`Controller`]'s route table lists every model with an active
//!   deployment in `RouteTable::models`, never in `services`.

use std::io::Read;
use std::path::Path;

use axum::Json;
use axum::extract::State;
use bora_api::{
    Deployment, DeploymentStatus, InstanceState, List, ModelEngine, ModelService, ServiceSpec,
    ServiceType,
};
use bora_node::health::Probe;
use bora_node::{Mount, Root};
use sha2::{Digest, Sha256};

use crate::ControlError;
use crate::api::{ApiError, ApiState};
use crate::controller::Controller;

/// The port a model's replicas serve the OpenAI API on by default (the
/// built-in engine's always).
pub const MODEL_PORT: u16 = 8000;
/// Where the model file is inside a replica.
pub const MODELS_DIR: &str = "/models";
/// Where the node's `bora` binary is inside a built-in model's replica.
pub const BORA_IN_CONTAINER: &str = "/bora";
/// The environment variable that tells an `openai-compatible` server where
/// its model file is.
pub const MODEL_PATH_ENV: &str = "BORA_MODEL_PATH";
/// The readiness check of a model: the OpenAI API's model list.
pub const READY_PATH: &str = "/v1/models";

/// GGUF versions the built-in engine reads (candle's reader: 1 to 3).
const GGUF_VERSIONS: std::ops::RangeInclusive<u32> = 1..=3;

/// The engine a model runs on, or `None` for a service that is not a model.
pub fn engine_of(spec: &ServiceSpec) -> Option<ModelEngine> {
    (spec.kind == ServiceType::Model)
        .then(|| spec.model.as_ref().map(|m| m.engine).unwrap_or_default())
}

/// Whether `spec` is a model run by the built-in engine (no image).
pub fn is_builtin(spec: &ServiceSpec) -> bool {
    engine_of(spec) == Some(ModelEngine::Builtin)
}

/// The port a model's replicas serve on.
pub fn api_port(spec: &ServiceSpec) -> u16 {
    match engine_of(spec) {
        Some(ModelEngine::OpenaiCompatible) => {
            spec.ports.first().map(|p| p.port).unwrap_or(MODEL_PORT)
        }
        _ => MODEL_PORT,
    }
}

/// The readiness probe of a model: its own health check if an
/// `openai-compatible` model declares one, else `GET /v1/models`.
pub fn probe(spec: &ServiceSpec) -> Probe {
    match Probe::for_service(spec.health_check.as_ref(), None) {
        Some(probe) if !is_builtin(spec) => probe,
        _ => Probe::Http {
            port: api_port(spec),
            path: READY_PATH.to_string(),
        },
    }
}

/// The model file's name, and where it is inside a replica.
pub fn path_in_container(host_path: &str) -> String {
    let name = Path::new(host_path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    format!("{MODELS_DIR}/{name}")
}

/// What the route table and `bora models list` call the engine: the
/// built-in engine with its version, or the server image by digest.
pub fn engine_label(d: &Deployment) -> String {
    match engine_of(&d.spec) {
        Some(ModelEngine::OpenaiCompatible) => format!(
            "openai-compatible {}",
            d.image_digest.as_deref().unwrap_or(&d.spec.image)
        ),
        _ => format!("bora-engine/{}", env!("CARGO_PKG_VERSION")),
    }
}

/// The KV cache and prefix cache sizes, in MiB, for an instance with
/// `memory_bytes` of memory: a quarter and an eighth, with floors.
pub fn cache_mib(memory_bytes: u64) -> (u64, u64) {
    let mib = memory_bytes / (1024 * 1024);
    ((mib / 4).max(32), (mib / 8).max(16))
}

/// `bora engine serve …` for a built-in model's replica.
pub fn builtin_command(spec: &ServiceSpec, model_in_container: &str) -> Vec<String> {
    let (kv, prefix) = cache_mib(spec.instance_type.limits().memory_bytes);
    [
        BORA_IN_CONTAINER,
        "engine",
        "serve",
        "--model",
        model_in_container,
        "--name",
        &spec.name,
        "--listen",
        &format!("0.0.0.0:{MODEL_PORT}"),
        "--kv-cache-mib",
        &kv.to_string(),
        "--prefix-cache-mib",
        &prefix.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// What in a GGUF file's first 8 bytes the built-in engine cannot read,
/// or `None` when it can.
pub fn gguf_header_problem(head: &[u8]) -> Option<String> {
    if head.len() < 8 {
        return Some(format!(
            "it is {} bytes long, too short for a GGUF header",
            head.len()
        ));
    }
    if &head[..4] != b"GGUF" {
        return Some(format!(
            "it does not start with the GGUF magic (found {:02x?})",
            &head[..4]
        ));
    }
    let version = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if !GGUF_VERSIONS.contains(&version) {
        return Some(format!(
            "it is GGUF version {version}, and the built-in engine reads versions {} to {}",
            GGUF_VERSIONS.start(),
            GGUF_VERSIONS.end()
        ));
    }
    None
}

/// The pull phase of a model: checks the file and returns its SHA-256
/// (`sha256:…`). Blocking: reads the whole file (it can be gigabytes).
pub fn inspect_model_file(path: &str, engine: ModelEngine) -> Result<String, String> {
    let what_to_do = "put the model file on the node at that path (readable by everyone), or deploy with the path where it is";
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("model file {path} does not exist: {what_to_do}")
        } else {
            format!("cannot read model file {path}: {e}: {what_to_do}")
        }
    })?;
    if !meta.is_file() {
        return Err(format!(
            "model path {path} is not a regular file: name the model file itself"
        ));
    }
    use std::os::unix::fs::PermissionsExt;
    if engine == ModelEngine::Builtin && meta.permissions().mode() & 0o004 == 0 {
        return Err(format!(
            "model file {path} is not readable by everyone, and the built-in engine runs as nobody: `chmod o+r {path}`"
        ));
    }
    let mut file = std::fs::File::open(path)
        .map_err(|e| format!("cannot open model file {path}: {e}: {what_to_do}"))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut head: Vec<u8> = Vec::with_capacity(8);
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("cannot read model file {path}: {e}"))?;
        if n == 0 {
            break;
        }
        if head.len() < 8 {
            let take = (8 - head.len()).min(n);
            head.extend_from_slice(&buf[..take]);
        }
        if engine == ModelEngine::Builtin
            && head.len() >= 8
            && let Some(problem) = gguf_header_problem(&head)
        {
            return Err(not_gguf(path, &problem));
        }
        hasher.update(&buf[..n]);
    }
    if engine == ModelEngine::Builtin
        && let Some(problem) = gguf_header_problem(&head)
    {
        return Err(not_gguf(path, &problem));
    }
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

fn not_gguf(path: &str, problem: &str) -> String {
    format!(
        "model file {path} is not a GGUF file the built-in engine can serve: {problem}; give a GGUF model (llama.cpp's format, e.g. `*.Q4_K_M.gguf`), or set `engine: openai-compatible` with a server image that reads it"
    )
}

/// The mounts and root of one replica of model deployment `d`.
pub(crate) fn replica_mounts(ctl: &Controller, d: &Deployment) -> Vec<Mount> {
    let Some(model) = &d.spec.model else {
        return Vec::new();
    };
    let mut mounts = vec![Mount {
        source: model.path.clone().into(),
        destination: path_in_container(&model.path),
    }];
    if model.engine == ModelEngine::Builtin {
        mounts.push(Mount {
            source: ctl.node.bora_exe().to_path_buf(),
            destination: BORA_IN_CONTAINER.into(),
        });
    }
    mounts
}

impl Controller {
    /// Refuses a model whose name another app's model already has: clients
    /// name models without their app.
    pub(crate) fn check_model_name(
        &self,
        app: &str,
        spec: &ServiceSpec,
    ) -> Result<(), ControlError> {
        if spec.kind != ServiceType::Model {
            return Ok(());
        }
        let taken =
            self.store.list_services(None)?.into_iter().find(|svc| {
                svc.kind == ServiceType::Model && svc.name == spec.name && svc.app != app
            });
        match taken {
            Some(svc) => Err(ControlError::Conflict(format!(
                "a model named {:?} already exists in app {:?}: model names are unique across apps (clients ask for a model by name); choose another name, or delete it with `bora services delete {}/{}`",
                spec.name, svc.app, svc.app, svc.name
            ))),
            None => Ok(()),
        }
    }

    /// The root filesystem of a replica of `d`.
    pub(crate) fn instance_root(&self, d: &Deployment) -> Result<Root, String> {
        if is_builtin(&d.spec) {
            Ok(Root::Host)
        } else {
            self.deployment_image(d)
                .map(|image| Root::Image(Box::new(image)))
        }
    }

    /// Every model service with an active deployment, as the gateway
    /// routes them.
    pub(crate) fn model_routes(&self) -> Result<Vec<bora_router::ModelRoutes>, ControlError> {
        let mut models = Vec::new();
        for svc in self.store.list_services(None)? {
            let Some(active) = &svc.active_deployment else {
                continue;
            };
            let d = self.store.get_deployment(active)?;
            if d.spec.kind != ServiceType::Model {
                continue;
            }
            let backends = self.healthy_backends(active)?;
            models.push(bora_router::ModelRoutes {
                name: svc.name.clone(),
                app: svc.app.clone(),
                service: svc.name.clone(),
                port: api_port(&d.spec),
                backends,
                wakeable: d.spec.scaling.min == 0,
                digest: d.model_digest.clone(),
                engine: engine_label(&d),
                created: d.created_at.timestamp().max(0) as u64,
            });
        }
        Ok(models)
    }

    /// The model services, for `bora models list`.
    pub fn model_services(&self) -> Result<Vec<ModelService>, ControlError> {
        let endpoint = format!("http://{}/v1", self.config.http_addr);
        let mut out = Vec::new();
        for svc in self.store.list_services(None)? {
            if svc.kind != ServiceType::Model {
                continue;
            }
            let Some(id) = svc
                .active_deployment
                .as_ref()
                .or(svc.latest_deployment.as_ref())
            else {
                continue;
            };
            let d = self.store.get_deployment(id)?;
            let latest = match &svc.latest_deployment {
                Some(latest) if latest != id => Some(self.store.get_deployment(latest)?),
                _ => None,
            };
            let instances = self.live_instances(id)?;
            let count = |s: InstanceState| instances.iter().filter(|i| i.state == s).count();
            let ready = count(InstanceState::Healthy);
            let (state, reason) = if ready > 0 {
                ("ready", None)
            } else if let Some(i) = instances.iter().find(|i| i.state == InstanceState::Loading) {
                ("loading", Some(i.reason.clone()))
            } else if count(InstanceState::Sleeping) > 0 || count(InstanceState::Standby) > 0 {
                ("sleeping", None)
            } else if let Some(i) = instances.iter().find(|i| {
                matches!(
                    i.state,
                    InstanceState::Pending | InstanceState::Pulling | InstanceState::Starting
                )
            }) {
                ("starting", Some(i.reason.clone()))
            } else {
                match d.status {
                    DeploymentStatus::Failed => ("failed", d.reason.clone()),
                    DeploymentStatus::Canceled | DeploymentStatus::Stopped => {
                        ("stopped", d.reason.clone())
                    }
                    s if s.is_in_progress() => ("deploying", d.reason.clone()),
                    _ => ("stopped", d.reason.clone()),
                }
            };
            // A newer deployment that failed says so, even while the
            // previous one serves.
            let reason = match latest {
                Some(l) if l.status == DeploymentStatus::Failed => l.reason,
                _ => reason,
            };
            out.push(ModelService {
                name: svc.name.clone(),
                app: svc.app.clone(),
                engine: engine_of(&d.spec).unwrap_or_default(),
                path: d
                    .spec
                    .model
                    .as_ref()
                    .map(|m| m.path.clone())
                    .unwrap_or_default(),
                digest: d.model_digest.clone(),
                state: state.to_string(),
                ready: ready as u32,
                total: instances.len() as u32,
                reason,
                endpoint: endpoint.clone(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[utoipa::path(
    get, path = "/v1/model-services",
    responses((status = 200, body = List<ModelService>))
)]
pub(crate) async fn list_model_services(
    State(s): State<ApiState>,
) -> Result<Json<List<ModelService>>, ApiError> {
    Ok(Json(List {
        items: s.ctl.model_services()?,
    }))
}

/// Runs [`inspect_model_file`] off the async threads.
pub(crate) async fn pull_model(path: String, engine: ModelEngine) -> Result<String, String> {
    tokio::task::spawn_blocking(move || inspect_model_file(&path, engine))
        .await
        .unwrap_or_else(|e| Err(format!("checking the model file: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_headers() {
        assert_eq!(gguf_header_problem(b"GGUF\x03\0\0\0"), None);
        assert_eq!(gguf_header_problem(b"GGUF\x02\0\0\0rest"), None);
        let p = gguf_header_problem(b"GGUF\x09\0\0\0").unwrap();
        assert!(p.contains("version 9"), "{p}");
        let p = gguf_header_problem(b"PK\x03\x04abcd").unwrap();
        assert!(p.contains("GGUF magic"), "{p}");
        let p = gguf_header_problem(b"GG").unwrap();
        assert!(p.contains("2 bytes"), "{p}");
    }

    #[test]
    fn inspecting_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("m.gguf");
        std::fs::write(&good, b"GGUF\x03\0\0\0weights").unwrap();
        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
        let digest = inspect_model_file(good.to_str().unwrap(), ModelEngine::Builtin).unwrap();
        assert_eq!(
            digest,
            format!(
                "sha256:{}",
                hex::encode(Sha256::digest(b"GGUF\x03\0\0\0weights"))
            )
        );

        let missing = dir.path().join("nope.gguf");
        let e = inspect_model_file(missing.to_str().unwrap(), ModelEngine::Builtin).unwrap_err();
        assert!(
            e.contains("does not exist") && e.contains("nope.gguf"),
            "{e}"
        );

        let e = inspect_model_file(dir.path().to_str().unwrap(), ModelEngine::Builtin).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");

        let text = dir.path().join("notes.txt");
        std::fs::write(&text, b"hello, this is not a model").unwrap();
        std::fs::set_permissions(&text, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = inspect_model_file(text.to_str().unwrap(), ModelEngine::Builtin).unwrap_err();
        assert!(
            e.contains("not a GGUF file") && e.contains("notes.txt"),
            "{e}"
        );
        // Any file will do for a server image.
        assert!(inspect_model_file(text.to_str().unwrap(), ModelEngine::OpenaiCompatible).is_ok());

        std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = inspect_model_file(good.to_str().unwrap(), ModelEngine::Builtin).unwrap_err();
        assert!(e.contains("chmod o+r"), "{e}");
    }

    #[test]
    fn caches_follow_the_instance_type() {
        use bora_api::InstanceType;
        assert_eq!(
            cache_mib(InstanceType::Small.limits().memory_bytes),
            (256, 128)
        );
        assert_eq!(
            cache_mib(InstanceType::Nano.limits().memory_bytes),
            (64, 32)
        );
        assert_eq!(cache_mib(64 << 20), (32, 16));
    }

    #[test]
    fn builtin_replicas_run_the_engine() {
        let spec: ServiceSpec = serde_json::from_value(serde_json::json!({
            "name": "smollm2", "type": "model",
            "model": {"path": "/srv/models/SmolLM2.gguf"}
        }))
        .unwrap();
        assert!(is_builtin(&spec));
        assert_eq!(api_port(&spec), 8000);
        let inside = path_in_container("/srv/models/SmolLM2.gguf");
        assert_eq!(inside, "/models/SmolLM2.gguf");
        let cmd = builtin_command(&spec, &inside);
        assert_eq!(
            cmd.join(" "),
            "/bora engine serve --model /models/SmolLM2.gguf --name smollm2 --listen 0.0.0.0:8000 --kv-cache-mib 256 --prefix-cache-mib 128"
        );
        assert_eq!(
            probe(&spec),
            Probe::Http {
                port: 8000,
                path: "/v1/models".into()
            }
        );

        let other: ServiceSpec = serde_json::from_value(serde_json::json!({
            "name": "vllm", "type": "model", "image": "vllm:1", "ports": [{"port": 9000}],
            "model": {"path": "/srv/m.gguf", "engine": "openai-compatible"}
        }))
        .unwrap();
        assert!(!is_builtin(&other));
        assert_eq!(api_port(&other), 9000);
        assert_eq!(
            probe(&other),
            Probe::Http {
                port: 9000,
                path: "/v1/models".into()
            }
        );
    }
}
