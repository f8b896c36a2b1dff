//! How resources are shown: compact tables (`-o table`, the default), or the
//! API's own objects as pretty JSON (`-o json`) or YAML (`-o yaml`).
//!
//! Tables show short IDs: the first [`SHORT_ID_LEN`] characters of an ID
//! (Bora's IDs are random, so a prefix tells them apart). Commands that take
//! an ID accept such a short ID too (see [`crate::refs`]).

use bora_api::{App, Deployment, Event, Instance, List, LogLine, Sandbox, Secret, Service};
use chrono::{DateTime, SecondsFormat, Utc};
use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;

use crate::error::CliError;

/// How many leading characters of an ID a table shows.
pub const SHORT_ID_LEN: usize = 8;

/// The `-o/--output` format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Compact tables for people.
    #[default]
    Table,
    /// The API's objects as pretty JSON.
    Json,
    /// The API's objects as YAML.
    Yaml,
}

/// The short form of an ID that tables show; IDs of up to
/// `SHORT_ID_LEN + 4` characters are shown whole.
pub fn short_id(id: &str) -> &str {
    if id.chars().count() <= SHORT_ID_LEN + 4 {
        return id;
    }
    let (end, _) = id
        .char_indices()
        .nth(SHORT_ID_LEN)
        .expect("the ID is longer than SHORT_ID_LEN");
    &id[..end]
}

/// How long ago `since` was, in its largest unit: `42s`, `5m`, `3h`, `12d`.
pub fn age(since: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - since).num_seconds().max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// A time as tables and history show it: RFC 3339, UTC, whole seconds.
pub fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The name serde gives a unit enum variant (`small` for `InstanceType::Small`).
fn serde_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        other => format!("{other:?}"),
    }
}

/// `-` for a missing value.
fn or_dash(value: Option<&str>) -> String {
    value.filter(|v| !v.is_empty()).unwrap_or("-").to_string()
}

/// A table without borders: columns two spaces apart, no trailing spaces.
pub fn table<R: Into<comfy_table::Row>>(
    header: &[&str],
    rows: impl IntoIterator<Item = R>,
) -> String {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.to_vec())
        .add_rows(rows);
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    let mut text = table.trim_fmt();
    text.push('\n');
    text
}

/// A resource that lists as one table row.
pub trait Row: Serialize {
    /// The column names.
    const HEADER: &'static [&'static str];
    /// The cells, in [`Row::HEADER`]'s order.
    fn cells(&self, now: DateTime<Utc>) -> Vec<String>;
}

/// A resource that `get` shows as a table of fields.
pub trait Fields: Serialize {
    /// Field names and values, in reading order.
    fn fields(&self, now: DateTime<Utc>) -> Vec<(&'static str, String)>;
}

/// Renders a list response in `format`; an empty table renders as "".
pub fn render_list<T: Row>(
    format: OutputFormat,
    list: &List<T>,
    now: DateTime<Utc>,
) -> Result<String, CliError> {
    match format {
        OutputFormat::Table if list.items.is_empty() => Ok(String::new()),
        OutputFormat::Table => Ok(table(
            T::HEADER,
            list.items.iter().map(|item| item.cells(now)),
        )),
        _ => render_data(format, list),
    }
}

/// Renders one resource in `format`.
pub fn render_one<T: Fields>(
    format: OutputFormat,
    item: &T,
    now: DateTime<Utc>,
) -> Result<String, CliError> {
    match format {
        OutputFormat::Table => Ok(render_fields(&item.fields(now))),
        _ => render_data(format, item),
    }
}

/// A two-column table: `FIELD:  value`.
fn render_fields(fields: &[(&str, String)]) -> String {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .add_rows(
            fields
                .iter()
                .map(|(name, value)| vec![format!("{name}:"), value.clone()]),
        );
    for column in table.column_iter_mut() {
        column.set_padding((0, 1));
    }
    let mut text = table.trim_fmt();
    text.push('\n');
    text
}

/// Renders any API value as JSON or YAML (for `Table`, as JSON too: callers
/// use this only for machine formats).
pub fn render_data<T: Serialize>(format: OutputFormat, value: &T) -> Result<String, CliError> {
    match format {
        OutputFormat::Yaml => serde_saphyr::to_string(value).map_err(|e| CliError::Render {
            format: "yaml",
            detail: e.to_string(),
        }),
        OutputFormat::Table | OutputFormat::Json => serde_json::to_string_pretty(value)
            .map(|mut s| {
                s.push('\n');
                s
            })
            .map_err(|e| CliError::Render {
                format: "json",
                detail: e.to_string(),
            }),
    }
}

/// An instance's history: time, `from → to`, reason.
pub fn render_history(instance: &Instance) -> String {
    table(
        &["TIME", "TRANSITION", "REASON"],
        instance.history.iter().map(|t| {
            let from = t.from.map(|s| s.as_str()).unwrap_or("(new)");
            vec![time(t.at), format!("{from} → {}", t.to), t.reason.clone()]
        }),
    )
}

/// One log line as `bora logs` prints it: `<time> <instance> <line>`.
pub fn log_line(line: &LogLine) -> String {
    format!(
        "{} {} {}",
        line.at.to_rfc3339_opts(SecondsFormat::Millis, true),
        short_id(&line.instance),
        line.line
    )
}

impl Row for App {
    const HEADER: &'static [&'static str] = &["NAME", "ID", "AGE"];
    fn cells(&self, now: DateTime<Utc>) -> Vec<String> {
        vec![
            self.name.clone(),
            short_id(&self.id).to_string(),
            age(self.created_at, now),
        ]
    }
}

impl Fields for App {
    fn fields(&self, _now: DateTime<Utc>) -> Vec<(&'static str, String)> {
        vec![
            ("Name", self.name.clone()),
            ("ID", self.id.clone()),
            ("Created", time(self.created_at)),
            ("Updated", time(self.updated_at)),
        ]
    }
}

impl Row for Service {
    const HEADER: &'static [&'static str] = &["SERVICE", "TYPE", "ACTIVE", "LATEST", "URL", "AGE"];
    fn cells(&self, now: DateTime<Utc>) -> Vec<String> {
        vec![
            format!("{}/{}", self.app, self.name),
            self.kind.to_string(),
            or_dash(self.active_deployment.as_deref().map(short_id)),
            or_dash(self.latest_deployment.as_deref().map(short_id)),
            or_dash(self.url.as_deref()),
            age(self.created_at, now),
        ]
    }
}

impl Row for bora_api::ModelService {
    const HEADER: &'static [&'static str] =
        &["NAME", "APP", "ENGINE", "STATE", "READY", "ENDPOINT"];
    fn cells(&self, _now: DateTime<Utc>) -> Vec<String> {
        vec![
            self.name.clone(),
            self.app.clone(),
            self.engine.to_string(),
            self.state.clone(),
            format!("{}/{}", self.ready, self.total),
            self.endpoint.clone(),
        ]
    }
}

impl Fields for Service {
    fn fields(&self, _now: DateTime<Utc>) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("Service", format!("{}/{}", self.app, self.name)),
            ("ID", self.id.clone()),
            ("Type", self.kind.to_string()),
            ("URL", or_dash(self.url.as_deref())),
            (
                "Active deployment",
                or_dash(self.active_deployment.as_deref()),
            ),
            (
                "Latest deployment",
                or_dash(self.latest_deployment.as_deref()),
            ),
        ];
        if let Some(s) = &self.scaling {
            let mut instances = format!("{} current, {} desired", s.current, s.desired);
            if s.sleeping > 0 {
                instances.push_str(&format!(", {} sleeping", s.sleeping));
            }
            if s.panicking {
                instances.push_str(" (panic mode)");
            }
            fields.push(("Instances", instances));
            fields.push(("Scaling", format!("{} ({})", s.reason, time(s.updated_at))));
        }
        fields.extend([
            ("Created", time(self.created_at)),
            ("Updated", time(self.updated_at)),
        ]);
        fields
    }
}

impl Row for Event {
    const HEADER: &'static [&'static str] = &["TIME", "SERVICE", "EVENT", "MESSAGE"];
    fn cells(&self, _now: DateTime<Utc>) -> Vec<String> {
        vec![
            time(self.at),
            format!("{}/{}", self.app, self.service),
            self.kind.clone(),
            self.message.clone(),
        ]
    }
}

impl Row for Deployment {
    const HEADER: &'static [&'static str] = &[
        "ID", "SERVICE", "VERSION", "STATUS", "IMAGE", "AGE", "REASON",
    ];
    fn cells(&self, now: DateTime<Utc>) -> Vec<String> {
        vec![
            short_id(&self.id).to_string(),
            format!("{}/{}", self.app, self.service),
            self.version.to_string(),
            self.status.to_string(),
            self.spec.image.clone(),
            age(self.created_at, now),
            or_dash(self.reason.as_deref()),
        ]
    }
}

impl Fields for Deployment {
    fn fields(&self, _now: DateTime<Utc>) -> Vec<(&'static str, String)> {
        let spec = &self.spec;
        let ports = spec
            .ports
            .iter()
            .map(|p| p.port.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        vec![
            ("ID", self.id.clone()),
            ("Service", format!("{}/{}", self.app, self.service)),
            ("Version", self.version.to_string()),
            ("Status", self.status.to_string()),
            ("Reason", or_dash(self.reason.as_deref())),
            ("Image", spec.image.clone()),
            ("Digest", or_dash(self.image_digest.as_deref())),
            ("Type", spec.kind.to_string()),
            (
                "Model",
                or_dash(
                    spec.model
                        .as_ref()
                        .map(|m| format!("{} ({})", m.path, m.engine))
                        .as_deref(),
                ),
            ),
            ("Model digest", or_dash(self.model_digest.as_deref())),
            ("Ports", or_dash(Some(&ports))),
            ("Instance type", serde_name(&spec.instance_type)),
            ("Isolation", spec.isolation.to_string()),
            (
                "Scaling",
                format!("min {}, max {}", spec.scaling.min, spec.scaling.max),
            ),
            ("Created", time(self.created_at)),
            ("Updated", time(self.updated_at)),
        ]
    }
}

impl Row for Instance {
    const HEADER: &'static [&'static str] = &[
        "ID",
        "SERVICE",
        "DEPLOYMENT",
        "STATE",
        "IP",
        "RESTARTS",
        "AGE",
        "REASON",
    ];
    fn cells(&self, now: DateTime<Utc>) -> Vec<String> {
        vec![
            short_id(&self.id).to_string(),
            format!("{}/{}", self.app, self.service),
            short_id(&self.deployment).to_string(),
            self.state.to_string(),
            or_dash(self.ip.as_deref()),
            self.restarts.to_string(),
            age(self.created_at, now),
            or_dash(Some(&self.reason)),
        ]
    }
}

impl Fields for Instance {
    fn fields(&self, _now: DateTime<Utc>) -> Vec<(&'static str, String)> {
        vec![
            ("ID", self.id.clone()),
            ("Service", format!("{}/{}", self.app, self.service)),
            ("Deployment", self.deployment.clone()),
            ("Node", self.node.clone()),
            ("State", self.state.to_string()),
            ("Reason", or_dash(Some(&self.reason))),
            ("IP", or_dash(self.ip.as_deref())),
            ("Restarts", self.restarts.to_string()),
            ("Created", time(self.created_at)),
            ("Updated", time(self.updated_at)),
        ]
    }
}

impl Row for Secret {
    const HEADER: &'static [&'static str] = &["NAME", "CREATED", "UPDATED"];
    fn cells(&self, now: DateTime<Utc>) -> Vec<String> {
        vec![
            self.name.clone(),
            age(self.created_at, now),
            age(self.updated_at, now),
        ]
    }
}

/// How long until `end` (`4m`), or `-` for a sandbox that has ended.
fn ends_in(sandbox: &Sandbox, now: DateTime<Utc>) -> String {
    if sandbox.state.is_final() {
        "-".to_string()
    } else {
        age(now, sandbox.end_at)
    }
}

/// `k=v,k2=v2`, or `-`.
fn key_values(map: &std::collections::BTreeMap<String, String>) -> String {
    let joined = map
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    or_dash(Some(&joined))
}

impl Row for Sandbox {
    const HEADER: &'static [&'static str] = &[
        "ID",
        "TEMPLATE",
        "STATE",
        "ISOLATION",
        "AGE",
        "ENDS IN",
        "METADATA",
    ];
    fn cells(&self, now: DateTime<Utc>) -> Vec<String> {
        vec![
            self.id.clone(),
            self.template.clone(),
            self.state.to_string(),
            self.isolation.to_string(),
            age(self.created_at, now),
            ends_in(self, now),
            key_values(&self.metadata),
        ]
    }
}

impl Fields for Sandbox {
    fn fields(&self, now: DateTime<Utc>) -> Vec<(&'static str, String)> {
        let r = &self.resources;
        let ends = if self.state.is_final() {
            time(self.end_at)
        } else {
            format!("{} (in {})", time(self.end_at), ends_in(self, now))
        };
        vec![
            ("ID", self.id.clone()),
            ("Template", self.template.clone()),
            ("Image", self.image.clone()),
            ("State", self.state.to_string()),
            ("Reason", or_dash(Some(&self.reason))),
            ("Isolation", self.isolation.to_string()),
            ("IP", or_dash(self.ip.as_deref())),
            (
                "Resources",
                format!(
                    "{} CPU, {} MiB memory, {} MiB disk, {} processes",
                    r.millicpu as f64 / 1000.0,
                    r.memory_mib,
                    r.disk_mib,
                    r.pids
                ),
            ),
            (
                "Outbound",
                if self.allow_out.is_empty() {
                    "none".to_string()
                } else {
                    self.allow_out.join(", ")
                },
            ),
            ("Metadata", key_values(&self.metadata)),
            ("Created", time(self.created_at)),
            ("Ends", ends),
        ]
    }
}

#[cfg(test)]
mod tests {
    use bora_api::{InstanceState, LogStream, Transition};
    use chrono::TimeZone;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap()
    }

    fn instance(id: &str, state: InstanceState, reason: &str) -> Instance {
        Instance {
            id: id.into(),
            app: "hello".into(),
            service: "web".into(),
            deployment: "0000d0017c3e9b2a4d1f4e6a8b0c9d2e".into(),
            node: "local".into(),
            state,
            reason: reason.into(),
            ip: Some("10.88.0.2".into()),
            restarts: 0,
            created_at: at(0),
            updated_at: at(5),
            history: vec![],
        }
    }

    #[test]
    fn short_ids_are_prefixes() {
        assert_eq!(short_id("4f1c2a9be3d04c6f9a7b1e2d3c4b5a69"), "4f1c2a9b");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(short_id("inst-123456"), "inst-123456");
        assert_eq!(short_id("éééééééééééééx"), "éééééééé");
    }

    #[test]
    fn ages_use_the_largest_unit() {
        assert_eq!(age(at(0), at(42)), "42s");
        assert_eq!(age(at(0), at(59 * 60 + 59)), "59m");
        assert_eq!(age(at(0), at(3 * 3600)), "3h");
        assert_eq!(age(at(0), at(12 * 86400 + 5)), "12d");
        assert_eq!(
            age(at(10), at(0)),
            "0s",
            "clock skew never shows a negative age"
        );
    }

    #[test]
    fn instance_table() {
        let mut failed = instance(
            "000000b27c3e9b2a4d1f4e6a8b0c9d2e",
            InstanceState::Failed,
            "exited with status 1",
        );
        failed.ip = None;
        failed.restarts = 3;
        let list = List {
            items: vec![
                instance(
                    "000000a17c3e9b2a4d1f4e6a8b0c9d2e",
                    InstanceState::Healthy,
                    "health check passed",
                ),
                failed,
            ],
        };
        let text = render_list(OutputFormat::Table, &list, at(125)).unwrap();
        let want = "\
ID        SERVICE    DEPLOYMENT  STATE    IP         RESTARTS  AGE  REASON
000000a1  hello/web  0000d001    healthy  10.88.0.2  0         2m   health check passed
000000b2  hello/web  0000d001    failed   -          3         2m   exited with status 1
";
        assert_eq!(text, want);
        assert_eq!(
            render_list::<Instance>(OutputFormat::Table, &List { items: vec![] }, at(0)).unwrap(),
            ""
        );
    }

    #[test]
    fn instance_fields_and_history() {
        let mut i = instance(
            "000000a17c3e9b2a4d1f4e6a8b0c9d2e",
            InstanceState::Healthy,
            "health check passed",
        );
        i.history = vec![
            Transition {
                at: at(0),
                from: None,
                to: InstanceState::Pending,
                reason: "scheduled".into(),
            },
            Transition {
                at: at(3),
                from: Some(InstanceState::Pending),
                to: InstanceState::Starting,
                reason: "container started".into(),
            },
        ];
        let fields = render_one(OutputFormat::Table, &i, at(10)).unwrap();
        assert!(
            fields.starts_with(
                "ID:         000000a17c3e9b2a4d1f4e6a8b0c9d2e\nService:    hello/web\n"
            ),
            "{fields}"
        );
        assert!(fields.contains("\nIP:         10.88.0.2\n"), "{fields}");
        let history = render_history(&i);
        assert_eq!(
            history,
            "\
TIME                  TRANSITION          REASON
2023-11-14T22:13:20Z  (new) → pending     scheduled
2023-11-14T22:13:23Z  pending → starting  container started
"
        );
    }

    #[test]
    fn machine_formats_are_the_api_objects() {
        let list = List {
            items: vec![Secret {
                name: "db-pass".into(),
                created_at: at(0),
                updated_at: at(0),
            }],
        };
        let json = render_list(OutputFormat::Json, &list, at(0)).unwrap();
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["items"][0]["name"], "db-pass");
        assert!(json.contains("\n  \"items\""), "pretty: {json}");
        let yaml = render_list(OutputFormat::Yaml, &list, at(0)).unwrap();
        assert!(yaml.starts_with("items:\n"), "{yaml}");
        assert!(yaml.contains("name: db-pass"), "{yaml}");
        assert!(
            yaml.contains("created_at: \"2023-11-14T22:13:20Z\""),
            "{yaml}"
        );
    }

    #[test]
    fn yaml_quotes_strings_that_would_read_as_other_types() {
        let value = serde_json::json!({"a": "0123", "b": "1e5", "c": "true", "d": "null", "e": "~", "f": "12:30"});
        let yaml = render_data(OutputFormat::Yaml, &value).unwrap();
        for line in yaml.lines() {
            let (_, v) = line.split_once(": ").unwrap();
            assert!(
                v.starts_with('"') || v.starts_with('\''),
                "unquoted: {line}"
            );
        }
    }

    #[test]
    fn log_lines() {
        let line = LogLine {
            at: at(1),
            instance: "000000a17c3e9b2a4d1f4e6a8b0c9d2e".into(),
            stream: LogStream::Stdout,
            line: "listening on :8000".into(),
        };
        assert_eq!(
            log_line(&line),
            "2023-11-14T22:13:21.000Z 000000a1 listening on :8000"
        );
    }

    fn sandbox(state: bora_api::SandboxState) -> Sandbox {
        Sandbox {
            id: "k3v9q2m8x7c4b1n5z6a0".into(),
            template: "base".into(),
            image: "bora.local/templates/base@sha256:00".into(),
            state,
            reason: "its agent answers".into(),
            isolation: bora_api::Isolation::Gvisor,
            resources: bora_api::SandboxResources::default(),
            metadata: [("team".to_string(), "ml".to_string())].into(),
            allow_out: vec![],
            ip: Some("10.89.0.2".into()),
            created_at: at(0),
            end_at: at(600),
            envd_access_token: "secret".into(),
        }
    }

    #[test]
    fn sandbox_table_and_fields() {
        let mut killed = sandbox(bora_api::SandboxState::Killed);
        killed.id = "a0000000000000000000".into();
        killed.metadata.clear();
        let list = List {
            items: vec![sandbox(bora_api::SandboxState::Running), killed],
        };
        let text = render_list(OutputFormat::Table, &list, at(120)).unwrap();
        let want = "\
ID                    TEMPLATE  STATE    ISOLATION  AGE  ENDS IN  METADATA
k3v9q2m8x7c4b1n5z6a0  base      running  gvisor     2m   8m       team=ml
a0000000000000000000  base      killed   gvisor     2m   -        -
";
        assert_eq!(text, want);
        let fields = render_one(
            OutputFormat::Table,
            &sandbox(bora_api::SandboxState::Running),
            at(120),
        )
        .unwrap();
        assert!(
            fields.contains("Resources: 1 CPU, 512 MiB memory, 1024 MiB disk, 512 processes\n"),
            "{fields}"
        );
        assert!(fields.contains("Outbound:  none\n"), "{fields}");
        assert!(
            fields.contains("Ends:      2023-11-14T22:23:20Z (in 8m)\n"),
            "{fields}"
        );
        assert!(!fields.contains("secret"), "the token stays out of tables");
    }
}
