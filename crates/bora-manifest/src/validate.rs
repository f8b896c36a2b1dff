//! The rules a well-typed service spec must also follow: rules that span
//! fields (a route must name a declared port) or limit values beyond their
//! type (a port is not 0). Pure functions, no I/O.

use std::collections::HashMap;

use bora_api::names::{self, NameError};
use bora_api::{
    EnvValue, HealthCheckSpec, ModelEngine, Protocol, RouteSpec, ServiceSpec, ServiceType,
    SleepMode,
};

use crate::error::Violation;
use crate::path::Path;

/// The most instances a service may ask for.
pub(crate) const MAX_INSTANCES: u32 = 100;

/// One broken rule, located by field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    pub path: Path,
    /// Whether the problem is the key at `path` (an environment variable's
    /// name) rather than its value.
    pub on_key: bool,
    pub message: String,
    pub help: Option<String>,
}

impl Finding {
    pub(crate) fn new(path: Path, message: impl Into<String>) -> Self {
        Finding {
            path,
            on_key: false,
            message: message.into(),
            help: None,
        }
    }

    pub(crate) fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    fn on_key(mut self) -> Self {
        self.on_key = true;
        self
    }

    /// The finding as the API reports it: path, and message with its help.
    pub(crate) fn into_violation(self) -> Violation {
        let message = match self.help {
            Some(help) => format!("{}; {help}", self.message),
            None => self.message,
        };
        Violation {
            path: self.path.to_string(),
            message,
        }
    }
}

/// Checks a name that becomes part of a host name (an app's or a service's).
/// `what` is how the message calls it: "app name", "service name".
pub(crate) fn check_name(what: &str, name: &str, path: Path) -> Option<Finding> {
    const RULE: &str =
        "use lower-case letters, digits and '-', starting with a letter and not ending with '-'";
    let error = names::validate_name(name).err()?;
    let finding = match error {
        NameError::Empty => Finding::new(path, format!("{what} is empty"))
            .help(format!("{RULE}, at most 63 characters")),
        NameError::TooLong(_) => Finding::new(
            path,
            format!("{what} `{name}` is longer than 63 characters"),
        )
        .help(RULE),
        NameError::BadCharacters(_) => {
            let finding = Finding::new(path, format!("{what} `{name}` is not allowed"));
            match suggest_name(name) {
                Some(suggestion) => finding.help(format!("{RULE}, e.g. `{suggestion}`")),
                None => finding.help(RULE),
            }
        }
    };
    Some(finding)
}

/// A valid name close to `name` (`My_App` → `my-app`), if there is one.
fn suggest_name(name: &str) -> Option<String> {
    let mut out = String::new();
    for c in name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed: String = out
        .trim_start_matches(|c: char| !c.is_ascii_lowercase())
        .chars()
        .take(63)
        .collect();
    let suggestion = trimmed.trim_end_matches('-').to_string();
    names::validate_name(&suggestion)
        .is_ok()
        .then_some(suggestion)
}

/// `[A-Za-z_][A-Za-z0-9_]*`, what a shell accepts as a variable name.
fn is_env_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A valid variable name close to `key` (`log-level` → `log_level`).
fn suggest_env_name(key: &str) -> Option<String> {
    let mut out: String = key
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    is_env_name(&out).then_some(out)
}

/// How the declared ports are listed in help texts: `8000, 8080`.
fn list_ports(spec: &ServiceSpec) -> String {
    spec.ports
        .iter()
        .map(|p| p.port.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Help for a port that is used but not declared.
fn declare_port_help(spec: &ServiceSpec, port: u16, use_declared: &str) -> String {
    if spec.ports.is_empty() {
        format!("declare it: `ports: [{{ port: {port} }}]`")
    } else {
        format!(
            "declare it under `ports`, or {use_declared} a declared port: {}",
            list_ports(spec)
        )
    }
}

/// Every rule the service breaks; paths are relative to the service.
pub(crate) fn check_service(spec: &ServiceSpec) -> Vec<Finding> {
    let root = Path::root();
    let mut findings = Vec::new();
    findings.extend(check_name("service name", &spec.name, root.key("name")));
    check_model(spec, &mut findings);
    if !is_builtin_model(spec) {
        check_image(spec, &mut findings);
    }
    check_command(spec.command.as_deref(), "command", &mut findings);
    check_command(spec.args.as_deref(), "args", &mut findings);
    if let Some(secret) = &spec.registry_secret {
        findings.extend(check_secret_name(secret, root.key("registry_secret")));
    }
    check_env(spec, &mut findings);
    check_ports(spec, &mut findings);
    check_routes(spec, &mut findings);
    if let Some(check) = &spec.health_check {
        check_health(spec, check, &mut findings);
    }
    check_scaling(spec, &mut findings);
    findings
}

/// A `type: model` service run by Bora's own engine: no image, and none of
/// the fields that describe what an image runs.
fn is_builtin_model(spec: &ServiceSpec) -> bool {
    spec.kind == ServiceType::Model
        && spec
            .model
            .as_ref()
            .is_none_or(|m| m.engine == ModelEngine::Builtin)
}

/// The rules of `type: model`: a `model` with an absolute path, no routes
/// (models are reached through the inference gateway), and for the
/// built-in engine nothing about an image.
fn check_model(spec: &ServiceSpec, findings: &mut Vec<Finding>) {
    let root = Path::root();
    if spec.kind != ServiceType::Model {
        if spec.model.is_some() {
            findings.push(
                Finding::new(
                    root.key("model"),
                    format!("a {} service cannot have `model`", spec.kind),
                )
                .help("set `type: model` to serve a model, or remove `model`"),
            );
        }
        return;
    }
    match &spec.model {
        None => findings.push(
            Finding::new(root.key("model"), "a model service needs `model`").help(
                "add the model file, e.g. `model: { path: /srv/models/SmolLM2-135M-Instruct.Q4_1.gguf }`",
            ),
        ),
        Some(model) => {
            let path = root.key("model").key("path");
            if model.path.trim().is_empty() {
                findings.push(
                    Finding::new(path, "the model path is empty")
                        .help("give the model file's absolute path on the node, e.g. `/srv/models/model.gguf`"),
                );
            } else if !model.path.starts_with('/') {
                findings.push(
                    Finding::new(
                        path,
                        format!("model path `{}` is not absolute", model.path),
                    )
                    .help(format!(
                        "give the file's full path on the node, e.g. `/srv/models/{}`",
                        model.path.rsplit('/').next().unwrap_or(&model.path)
                    )),
                );
            } else if model.path.ends_with('/') {
                findings.push(
                    Finding::new(
                        path,
                        format!("model path `{}` names a directory", model.path),
                    )
                    .help("name the model file itself, e.g. `/srv/models/model.gguf`"),
                );
            }
        }
    }
    if !spec.routes.is_empty() {
        findings.push(
            Finding::new(root.key("routes"), "a model service cannot have routes").help(
                "models are reached through the inference gateway (`/v1/...` on the router) by their name; remove `routes`",
            ),
        );
    }
    if !is_builtin_model(spec) {
        return;
    }
    let refused: [(&str, bool, &str); 6] = [
        (
            "image",
            !spec.image.is_empty(),
            "the built-in engine runs from Bora's own binary; remove `image`, or set `engine: openai-compatible` to run a server image",
        ),
        (
            "registry_secret",
            spec.registry_secret.is_some(),
            "the built-in engine pulls no image; remove `registry_secret`",
        ),
        (
            "command",
            spec.command.is_some(),
            "the built-in engine runs `bora engine serve`; remove `command`, or set `engine: openai-compatible` to run your own server",
        ),
        (
            "args",
            spec.args.is_some(),
            "the built-in engine runs `bora engine serve`; remove `args`, or set `engine: openai-compatible` to run your own server",
        ),
        (
            "ports",
            !spec.ports.is_empty(),
            "the built-in engine serves the OpenAI API on port 8000; remove `ports`",
        ),
        (
            "health_check",
            spec.health_check.is_some(),
            "the built-in engine is ready when `GET /v1/models` answers; remove `health_check`",
        ),
    ];
    for (field, present, help) in refused {
        if present {
            findings.push(
                Finding::new(
                    root.key(field),
                    format!("a model served by the built-in engine cannot have `{field}`"),
                )
                .help(help)
                .on_key(),
            );
        }
    }
}

fn check_image(spec: &ServiceSpec, findings: &mut Vec<Finding>) {
    let path = Path::root().key("image");
    if spec.image.is_empty() {
        let help = if spec.kind == ServiceType::Model {
            "an `openai-compatible` model runs a server image: add `image: <image reference>`, e.g. `image: registry.example.com/vllm/vllm-openai:v0.6`"
        } else {
            "add `image: <image reference>`, e.g. `image: registry.example.com/team/web:1.0`"
        };
        findings.push(
            Finding::new(path, format!("a {} service needs an `image`", spec.kind)).help(help),
        );
    } else if spec.image.trim().is_empty() {
        findings.push(
            Finding::new(path, "image is empty")
                .help("give an image reference, e.g. `registry.example.com/team/web:1.0`"),
        );
    } else if spec.image.chars().any(char::is_whitespace) {
        findings.push(
            Finding::new(path, format!("image `{}` contains whitespace", spec.image))
                .help("an image reference has no spaces, e.g. `registry.example.com/team/web:1.0`"),
        );
    }
}

fn check_command(list: Option<&[String]>, field: &str, findings: &mut Vec<Finding>) {
    let Some(list) = list else { return };
    let path = Path::root().key(field);
    let (is_empty, first_is_empty) = match field {
        "command" => (
            "remove `command` to run the image's entrypoint, or give the program to run, e.g. [\"/app/server\"]",
            "the program to run comes first, e.g. [\"httpd\", \"-f\"]",
        ),
        _ => (
            "remove `args` to keep the image's command, or give at least one argument",
            "remove the empty argument",
        ),
    };
    match list.first() {
        None => {
            findings.push(Finding::new(path, format!("`{field}` is an empty list")).help(is_empty))
        }
        Some(first) if first.is_empty() => findings.push(
            Finding::new(
                path.index(0),
                format!("the first element of `{field}` is empty"),
            )
            .help(first_is_empty),
        ),
        Some(_) => {}
    }
}

fn check_env(spec: &ServiceSpec, findings: &mut Vec<Finding>) {
    let env = Path::root().key("env");
    for (key, value) in &spec.env {
        let path = env.key(key);
        if !is_env_name(key) {
            let rule = "use letters, digits and '_', not starting with a digit";
            let finding = Finding::new(
                path.clone(),
                format!("invalid environment variable name `{key}`"),
            )
            .on_key();
            findings.push(match suggest_env_name(key) {
                Some(suggestion) => finding.help(format!("{rule}, e.g. `{suggestion}`")),
                None => finding.help(rule),
            });
        }
        if let EnvValue::Secret { secret } = value {
            findings.extend(check_secret_name(secret, path.key("secret")));
        }
    }
}

fn check_secret_name(secret: &str, path: Path) -> Option<Finding> {
    names::validate_secret_name(secret).err()?;
    Some(
        Finding::new(path, format!("invalid secret name `{secret}`"))
            .help("use 1 to 63 letters, digits, '-', '_' and '.', starting with a letter or digit"),
    )
}

fn check_ports(spec: &ServiceSpec, findings: &mut Vec<Finding>) {
    let ports = Path::root().key("ports");
    let mut first_use: HashMap<u16, usize> = HashMap::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let path = ports.index(i).key("port");
        if port.port == 0 {
            findings.push(
                Finding::new(path, "port 0 is not allowed").help("use a port from 1 to 65535"),
            );
        } else if let Some(first) = first_use.get(&port.port) {
            findings.push(
                Finding::new(path, format!("port {} is declared twice", port.port)).help(format!(
                    "it is already declared as ports[{first}]; remove one of them"
                )),
            );
        } else {
            first_use.insert(port.port, i);
        }
    }
    if spec.kind == ServiceType::Web && spec.ports.is_empty() {
        findings.push(
            Finding::new(ports, "a web service needs at least one port").help(
                "declare the port your server listens on, e.g. `ports: [{ port: 8000 }]`, or set `type: worker` if it serves no HTTP",
            ),
        );
    }
}

fn is_declared(spec: &ServiceSpec, port: u16) -> bool {
    spec.ports.iter().any(|p| p.port == port)
}

fn check_routes(spec: &ServiceSpec, findings: &mut Vec<Finding>) {
    let routes = Path::root().key("routes");
    if spec.kind == ServiceType::Model {
        // Refused in `check_model`.
        return;
    }
    if spec.kind == ServiceType::Worker && !spec.routes.is_empty() {
        findings.push(
            Finding::new(routes, "a worker service cannot have routes")
                .help("remove `routes`, or set `type: web` to serve HTTP"),
        );
        return;
    }
    let mut first_use: HashMap<&str, usize> = HashMap::new();
    for (i, RouteSpec { path, port }) in spec.routes.iter().enumerate() {
        let here = routes.index(i);
        if !path.starts_with('/') {
            findings.push(
                Finding::new(
                    here.key("path"),
                    format!("route path `{path}` does not start with `/`"),
                )
                .help(format!("write `/{path}`")),
            );
        } else if let Some(first) = first_use.get(path.as_str()) {
            findings.push(
                Finding::new(
                    here.key("path"),
                    format!("route path `{path}` is used twice"),
                )
                .help(format!(
                    "routes[{first}] already routes it; each path is routed once"
                )),
            );
        } else {
            first_use.insert(path, i);
        }
        if !is_declared(spec, *port) {
            findings.push(
                Finding::new(
                    here.key("port"),
                    format!("route to port {port}, which is not declared in `ports`"),
                )
                .help(declare_port_help(spec, *port, "route to")),
            );
        }
    }
}

fn check_health(spec: &ServiceSpec, check: &HealthCheckSpec, findings: &mut Vec<Finding>) {
    let health = Path::root().key("health_check");
    let port = match (&check.http, &check.tcp) {
        (Some(_), Some(_)) => {
            findings.push(
                Finding::new(
                    health.key("tcp"),
                    "a health check has either `http` or `tcp`, not both",
                )
                .help("keep one of them")
                .on_key(),
            );
            None
        }
        (None, None) => {
            findings.push(
                Finding::new(health.clone(), "a health check needs `http` or `tcp`").help(
                    "add one, e.g. `http: { path: /healthz, port: 8000 }` or `tcp: { port: 8000 }`",
                ),
            );
            None
        }
        (Some(http), None) => {
            if !http.path.starts_with('/') {
                findings.push(
                    Finding::new(
                        health.key("http").key("path"),
                        format!("health check path `{}` does not start with `/`", http.path),
                    )
                    .help(format!("write `/{}`", http.path)),
                );
            }
            Some((health.key("http").key("port"), http.port))
        }
        (None, Some(tcp)) => Some((health.key("tcp").key("port"), tcp.port)),
    };
    if let Some((path, port)) = port
        && !is_declared(spec, port)
    {
        findings.push(
            Finding::new(
                path,
                format!("health check port {port} is not declared in `ports`"),
            )
            .help(declare_port_help(spec, port, "check")),
        );
    }
    for (field, value) in [("interval", check.interval), ("timeout", check.timeout)] {
        if value.get().is_zero() {
            findings.push(
                Finding::new(
                    health.key(field),
                    format!("`{field}` must be longer than 0"),
                )
                .help(format!(
                    "e.g. `{field}: {}`",
                    if field == "interval" { "10s" } else { "2s" }
                )),
            );
        }
    }
    if check.restart_limit == 0 {
        findings.push(
            Finding::new(
                health.key("restart_limit"),
                "`restart_limit` must be at least 1",
            )
            .help(
                "it is how many checks in a row may fail before the instance is restarted, e.g. 3",
            ),
        );
    }
}

fn check_scaling(spec: &ServiceSpec, findings: &mut Vec<Finding>) {
    let scaling = Path::root().key("scaling");
    let s = &spec.scaling;
    let (min, max) = (s.min, s.max);
    if max == 0 {
        findings.push(
            Finding::new(scaling.key("max"), "`max` must be at least 1").help("e.g. `max: 1`"),
        );
    } else if max > MAX_INSTANCES {
        findings.push(
            Finding::new(
                scaling.key("max"),
                format!("`max: {max}` is more than {MAX_INSTANCES} instances"),
            )
            .help(format!("use `max: {MAX_INSTANCES}` or less")),
        );
    } else if min > max {
        findings.push(
            Finding::new(
                scaling.key("min"),
                format!("`min` ({min}) is greater than `max` ({max})"),
            )
            .help(format!("raise `max` to at least {min}, or lower `min`")),
        );
    }
    if min == 0 && spec.kind == ServiceType::Worker {
        findings.push(
            Finding::new(
                scaling.key("min"),
                format!("a {} service cannot scale to zero", spec.kind),
            )
            .help("only web and model services wake on a request; use `min: 1`"),
        );
    }

    let targets = scaling.key("targets");
    let counts = [
        ("concurrency", s.targets.concurrency),
        ("requests_per_second", s.targets.requests_per_second),
    ];
    for (name, value) in counts {
        if value == Some(0) {
            findings.push(
                Finding::new(targets.key(name), format!("`{name}` must be at least 1"))
                    .help("it is the amount each instance should handle, e.g. 20"),
            );
        }
    }
    for (name, value) in [("cpu", s.targets.cpu), ("memory", s.targets.memory)] {
        if let Some(percent) = value
            && !(1..=100).contains(&percent)
        {
            findings.push(
                Finding::new(
                    targets.key(name),
                    format!("`{name}: {percent}` is not a percentage between 1 and 100"),
                )
                .help(format!(
                    "the share of the instance's {name} limit to aim for, e.g. 70"
                )),
            );
        }
    }
    if s.targets.p95_latency.is_some_and(|d| d.get().is_zero()) {
        findings.push(
            Finding::new(
                targets.key("p95_latency"),
                "`p95_latency` must be more than 0",
            )
            .help("e.g. `p95_latency: 200ms`"),
        );
    }

    if s.scale_to_zero_after.get() < std::time::Duration::from_secs(1) {
        findings.push(
            Finding::new(
                scaling.key("scale_to_zero_after"),
                format!(
                    "`scale_to_zero_after: {}` is shorter than 1s",
                    s.scale_to_zero_after
                ),
            )
            .help("the idle time before the service sleeps, e.g. `5m`; at least `1s`"),
        );
    }
    let window = s.stable_window.get();
    if window < std::time::Duration::from_secs(6) || window > std::time::Duration::from_secs(3600) {
        findings.push(
            Finding::new(
                scaling.key("stable_window"),
                format!(
                    "`stable_window: {}` is not between 6s and 1h",
                    s.stable_window
                ),
            )
            .help("how far back load is averaged; the default is `60s`"),
        );
    }
    if let Some(after) = s.deep_sleep_after {
        if after.get() < std::time::Duration::from_secs(1) {
            findings.push(
                Finding::new(
                    scaling.key("deep_sleep_after"),
                    format!("`deep_sleep_after: {after}` is shorter than 1s"),
                )
                .help("the extra idle time before a frozen instance is stopped, e.g. `30m`"),
            );
        } else if s.sleep != SleepMode::Light {
            findings.push(
                Finding::new(
                    scaling.key("deep_sleep_after"),
                    "`deep_sleep_after` applies only to `sleep: light`",
                )
                .help("with `sleep: deep` the instance is stopped at once; remove the field"),
            );
        }
    }
}

/// See [`normalize_service`](crate::normalize_service).
pub(crate) fn normalize(spec: &mut ServiceSpec) {
    if spec.kind == ServiceType::Web && spec.routes.is_empty() {
        let first_http = spec.ports.iter().find(|p| p.protocol == Protocol::Http);
        if let Some(port) = first_http {
            spec.routes.push(RouteSpec {
                path: "/".to_string(),
                port: port.port,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_names() {
        assert_eq!(suggest_name("My_App"), Some("my-app".into()));
        assert_eq!(suggest_name("1web"), Some("web".into()));
        assert_eq!(suggest_name("web-"), Some("web".into()));
        assert_eq!(suggest_name("__"), None);
        assert_eq!(suggest_name("api.v2"), Some("api-v2".into()));
    }

    #[test]
    fn env_names() {
        for ok in ["A", "_A", "GREETING", "a1_b"] {
            assert!(is_env_name(ok), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A.B", "A B", "É"] {
            assert!(!is_env_name(bad), "{bad}");
        }
        assert_eq!(suggest_env_name("log-level"), Some("log_level".into()));
        assert_eq!(suggest_env_name("1A"), Some("_1A".into()));
    }
}
