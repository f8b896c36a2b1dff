//! The embedded store: one SQLite file in WAL mode.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use std::collections::BTreeMap;

use bora_api::{
    App, Deployment, DeploymentStatus, Event, InferenceKey, Instance, InstanceState, Isolation,
    RequestRecord, Sandbox, SandboxState, ScalingStatus, Secret, Service, ServiceSpec, ServiceType,
    Transition, UsageRow,
};
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use crate::migrations::MIGRATIONS;
use crate::{
    DeploymentFilter, EVENTS_KEPT_PER_SERVICE, EventFilter, InstanceFilter, NewKeyRecord,
    NewSandboxRecord, RequestFilter, Result, SecretCipher, Store, StoreError, StoredKey,
    StoredRequest, UsageFilter,
};

/// A [`Store`] in one SQLite database file.
pub struct SqliteStore {
    conn: Mutex<Connection>,
    cipher: SecretCipher,
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn time(row: &Row<'_>, col: &str) -> rusqlite::Result<DateTime<Utc>> {
    let s: String = row.get(col)?;
    DateTime::parse_from_rfc3339(&s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })
}

fn parsed<T: std::str::FromStr<Err = String>>(row: &Row<'_>, col: &str) -> rusqlite::Result<T> {
    let s: String = row.get(col)?;
    s.parse::<T>().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
}

fn service_kind(s: &str) -> ServiceType {
    match s {
        "worker" => ServiceType::Worker,
        "model" => ServiceType::Model,
        _ => ServiceType::Web,
    }
}

const APP_COLS: &str = "a.id, a.name, a.created_at, a.updated_at";
const SERVICE_COLS: &str = "s.id, a.name AS app_name, s.name, s.kind, s.active_deployment, s.latest_deployment, s.scaling, s.created_at, s.updated_at";
const DEPLOYMENT_COLS: &str = "d.id, a.name AS app_name, s.name AS service_name, d.version, d.spec, d.image_digest, d.model_digest, d.status, d.reason, d.created_at, d.updated_at";
const INSTANCE_COLS: &str = "i.id, a.name AS app_name, s.name AS service_name, i.deployment_id, i.node, i.state, i.reason, i.ip, i.restarts, i.created_at, i.updated_at";
const DEPLOYMENT_JOIN: &str =
    "deployments d JOIN services s ON s.id = d.service_id JOIN apps a ON a.id = s.app_id";
const INSTANCE_JOIN: &str = "instances i JOIN deployments d ON d.id = i.deployment_id JOIN services s ON s.id = d.service_id JOIN apps a ON a.id = s.app_id";

fn app_row(row: &Row<'_>) -> rusqlite::Result<App> {
    Ok(App {
        id: row.get("id")?,
        name: row.get("name")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

fn service_row(row: &Row<'_>) -> rusqlite::Result<Service> {
    Ok(Service {
        id: row.get("id")?,
        app: row.get("app_name")?,
        name: row.get("name")?,
        kind: service_kind(&row.get::<_, String>("kind")?),
        active_deployment: row.get("active_deployment")?,
        latest_deployment: row.get("latest_deployment")?,
        url: None,
        scaling: json_column(row, "scaling")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

/// A nullable JSON column.
fn json_column<T: serde::de::DeserializeOwned>(
    row: &Row<'_>,
    col: &str,
) -> rusqlite::Result<Option<T>> {
    let Some(text) = row.get::<_, Option<String>>(col)? else {
        return Ok(None);
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn event_row(row: &Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        seq: row.get("seq")?,
        at: time(row, "at")?,
        app: row.get("app")?,
        service: row.get("service")?,
        kind: row.get("kind")?,
        message: row.get("message")?,
    })
}

fn deployment_row(row: &Row<'_>) -> rusqlite::Result<Deployment> {
    let spec: String = row.get("spec")?;
    let spec: ServiceSpec = serde_json::from_str(&spec).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(Deployment {
        id: row.get("id")?,
        app: row.get("app_name")?,
        service: row.get("service_name")?,
        version: row.get::<_, i64>("version")? as u64,
        spec,
        image_digest: row.get("image_digest")?,
        model_digest: row.get("model_digest")?,
        status: parsed(row, "status")?,
        reason: row.get("reason")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

fn instance_row(row: &Row<'_>) -> rusqlite::Result<Instance> {
    Ok(Instance {
        id: row.get("id")?,
        app: row.get("app_name")?,
        service: row.get("service_name")?,
        deployment: row.get("deployment_id")?,
        node: row.get("node")?,
        state: parsed(row, "state")?,
        reason: row.get("reason")?,
        ip: row.get("ip")?,
        restarts: row.get::<_, i64>("restarts")? as u32,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
        history: Vec::new(),
    })
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and runs any
    /// migrations it has not had yet.
    pub fn open(path: &Path, cipher: SecretCipher) -> Result<Self> {
        let conn = Connection::open(path)?;
        Self::init(conn, cipher, &path.display().to_string())
    }

    /// An in-memory store, for tests.
    pub fn in_memory(cipher: SecretCipher) -> Result<Self> {
        Self::init(Connection::open_in_memory()?, cipher, ":memory:")
    }

    fn init(mut conn: Connection, cipher: SecretCipher, path: &str) -> Result<Self> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn, path)?;
        Ok(Self {
            conn: Mutex::new(conn),
            cipher,
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-done change
        // behind (transactions roll back on drop), so a poisoned lock is safe
        // to keep using.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

fn migrate(conn: &mut Connection, path: &str) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
    )?;
    let current: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?;
    let known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if current > known {
        return Err(StoreError::SchemaTooNew {
            path: path.to_string(),
            found: current,
            known,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
            params![version, now()],
        )?;
        tx.commit()?;
    }
    Ok(())
}

fn app_id(tx: &Connection, name: &str) -> Result<String> {
    tx.query_row("SELECT id FROM apps WHERE name = ?1", [name], |r| r.get(0))
        .optional()?
        .ok_or_else(|| StoreError::not_found("app", name))
}

fn service_id(tx: &Connection, app: &str, name: &str) -> Result<String> {
    tx.query_row(
        "SELECT s.id FROM services s JOIN apps a ON a.id = s.app_id WHERE a.name = ?1 AND s.name = ?2",
        [app, name],
        |r| r.get(0),
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found("service", format!("{app}/{name}")))
}

fn query_deployment(conn: &Connection, id: &str) -> Result<Deployment> {
    conn.query_row(
        &format!("SELECT {DEPLOYMENT_COLS} FROM {DEPLOYMENT_JOIN} WHERE d.id = ?1"),
        [id],
        deployment_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found("deployment", id))
}

fn query_service(conn: &Connection, app: &str, name: &str) -> Result<Service> {
    conn.query_row(
        &format!(
            "SELECT {SERVICE_COLS} FROM services s JOIN apps a ON a.id = s.app_id WHERE a.name = ?1 AND s.name = ?2"
        ),
        [app, name],
        service_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found("service", format!("{app}/{name}")))
}

fn query_instance(conn: &Connection, id: &str) -> Result<Instance> {
    conn.query_row(
        &format!("SELECT {INSTANCE_COLS} FROM {INSTANCE_JOIN} WHERE i.id = ?1"),
        [id],
        instance_row,
    )
    .optional()?
    .ok_or_else(|| StoreError::not_found("instance", id))
}

fn record_transition(
    tx: &Connection,
    id: &str,
    from: Option<InstanceState>,
    to: InstanceState,
    reason: &str,
    at: &str,
) -> Result<()> {
    tx.execute(
        "INSERT INTO instance_transitions (instance_id, at, from_state, to_state, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![id, at, from.map(|s| s.as_str()), to.as_str(), reason],
    )?;
    Ok(())
}

impl Store for SqliteStore {
    fn list_apps(&self) -> Result<Vec<App>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {APP_COLS} FROM apps a ORDER BY a.name"))?;
        let rows = stmt.query_map([], app_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn get_app(&self, name: &str) -> Result<App> {
        self.conn()
            .query_row(
                &format!("SELECT {APP_COLS} FROM apps a WHERE a.name = ?1"),
                [name],
                app_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::not_found("app", name))
    }

    fn delete_app(&self, name: &str) -> Result<()> {
        self.write(|tx| {
            let n = tx.execute("DELETE FROM apps WHERE name = ?1", [name])?;
            if n == 0 {
                return Err(StoreError::not_found("app", name));
            }
            Ok(())
        })
    }

    fn list_services(&self, app: Option<&str>) -> Result<Vec<Service>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {SERVICE_COLS} FROM services s JOIN apps a ON a.id = s.app_id
             WHERE (?1 IS NULL OR a.name = ?1) ORDER BY a.name, s.name"
        ))?;
        let rows = stmt.query_map([app], service_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn get_service(&self, app: &str, name: &str) -> Result<Service> {
        query_service(&self.conn(), app, name)
    }

    fn set_service_scaling(&self, app: &str, name: &str, status: &ScalingStatus) -> Result<()> {
        let json = serde_json::to_string(status).map_err(|e| StoreError::Corrupt {
            what: format!("scaling status of {app}/{name}"),
            detail: e.to_string(),
        })?;
        self.write(|tx| {
            let id = service_id(tx, app, name)?;
            tx.execute(
                "UPDATE services SET scaling = ?2 WHERE id = ?1",
                params![id, json],
            )?;
            Ok(())
        })
    }

    fn record_event(&self, app: &str, service: &str, kind: &str, message: &str) -> Result<Event> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO events (at, app, service, kind, message) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![now(), app, service, kind, message],
            )?;
            let seq = tx.last_insert_rowid();
            tx.execute(
                "DELETE FROM events WHERE app = ?1 AND service = ?2 AND seq <= ?3",
                params![app, service, seq - EVENTS_KEPT_PER_SERVICE],
            )?;
            Ok(tx.query_row(
                "SELECT seq, at, app, service, kind, message FROM events WHERE seq = ?1",
                [seq],
                event_row,
            )?)
        })
    }

    fn list_events(&self, filter: &EventFilter<'_>) -> Result<Vec<Event>> {
        let limit = if filter.limit == 0 { 100 } else { filter.limit };
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT seq, at, app, service, kind, message FROM events
             WHERE (?1 IS NULL OR app = ?1) AND (?2 IS NULL OR service = ?2) AND seq > ?3
             ORDER BY seq DESC LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![
                filter.app,
                filter.service,
                filter.after.unwrap_or(0),
                limit as i64
            ],
            event_row,
        )?;
        let mut events: Vec<Event> = rows.collect::<rusqlite::Result<_>>()?;
        events.reverse();
        Ok(events)
    }

    fn delete_service(&self, app: &str, name: &str) -> Result<()> {
        self.write(|tx| {
            let id = service_id(tx, app, name)?;
            tx.execute("DELETE FROM services WHERE id = ?1", [id])?;
            tx.execute(
                "DELETE FROM events WHERE app = ?1 AND service = ?2",
                [app, name],
            )?;
            Ok(())
        })
    }

    fn create_deployment(&self, app: &str, spec: &ServiceSpec) -> Result<Deployment> {
        let spec_json = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt {
            what: "deployment spec".into(),
            detail: e.to_string(),
        })?;
        self.write(|tx| {
            let at = now();
            let app_id = match app_id(tx, app) {
                Ok(id) => id,
                Err(StoreError::NotFound { .. }) => {
                    let id = new_id();
                    tx.execute(
                        "INSERT INTO apps (id, name, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                        params![id, app, at],
                    )?;
                    id
                }
                Err(e) => return Err(e),
            };
            let service_id = match service_id(tx, app, &spec.name) {
                Ok(id) => {
                    tx.execute(
                        "UPDATE services SET kind = ?2, updated_at = ?3 WHERE id = ?1",
                        params![id, spec.kind.to_string(), at],
                    )?;
                    id
                }
                Err(StoreError::NotFound { .. }) => {
                    let id = new_id();
                    tx.execute(
                        "INSERT INTO services (id, app_id, name, kind, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                        params![id, app_id, spec.name, spec.kind.to_string(), at],
                    )?;
                    id
                }
                Err(e) => return Err(e),
            };
            let version: i64 = tx.query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM deployments WHERE service_id = ?1",
                [&service_id],
                |r| r.get(0),
            )?;
            let id = new_id();
            tx.execute(
                "INSERT INTO deployments (id, service_id, version, spec, status, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5)",
                params![id, service_id, version, spec_json, at],
            )?;
            tx.execute(
                "UPDATE services SET latest_deployment = ?2, updated_at = ?3 WHERE id = ?1",
                params![service_id, id, at],
            )?;
            query_deployment(tx, &id)
        })
    }

    fn get_deployment(&self, id: &str) -> Result<Deployment> {
        query_deployment(&self.conn(), id)
    }

    fn list_deployments(&self, filter: &DeploymentFilter<'_>) -> Result<Vec<Deployment>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {DEPLOYMENT_COLS} FROM {DEPLOYMENT_JOIN}
             WHERE (?1 IS NULL OR a.name = ?1) AND (?2 IS NULL OR s.name = ?2)
             ORDER BY d.created_at DESC, d.version DESC"
        ))?;
        let rows = stmt.query_map(params![filter.app, filter.service], deployment_row)?;
        let all: Vec<Deployment> = rows.collect::<rusqlite::Result<_>>()?;
        Ok(all
            .into_iter()
            .filter(|d| filter.statuses.is_empty() || filter.statuses.contains(&d.status))
            .collect())
    }

    fn set_deployment_status(
        &self,
        id: &str,
        status: DeploymentStatus,
        reason: Option<&str>,
    ) -> Result<Deployment> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE deployments SET status = ?2, reason = ?3, updated_at = ?4 WHERE id = ?1",
                params![id, status.as_str(), reason, now()],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("deployment", id));
            }
            query_deployment(tx, id)
        })
    }

    fn set_deployment_image(&self, id: &str, image_digest: &str) -> Result<Deployment> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE deployments SET image_digest = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, image_digest, now()],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("deployment", id));
            }
            query_deployment(tx, id)
        })
    }

    fn set_deployment_model(&self, id: &str, model_digest: &str) -> Result<Deployment> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE deployments SET model_digest = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, model_digest, now()],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("deployment", id));
            }
            query_deployment(tx, id)
        })
    }

    fn set_active_deployment(&self, deployment: &str) -> Result<Service> {
        self.write(|tx| {
            let d = query_deployment(tx, deployment)?;
            tx.execute(
                "UPDATE services SET active_deployment = ?1, updated_at = ?2
                 WHERE id = (SELECT service_id FROM deployments WHERE id = ?1)",
                params![deployment, now()],
            )?;
            query_service(tx, &d.app, &d.service)
        })
    }

    fn delete_deployment(&self, id: &str) -> Result<()> {
        self.write(|tx| {
            let n = tx.execute("DELETE FROM deployments WHERE id = ?1", [id])?;
            if n == 0 {
                return Err(StoreError::not_found("deployment", id));
            }
            tx.execute(
                "UPDATE services SET active_deployment = NULL WHERE active_deployment = ?1",
                [id],
            )?;
            tx.execute(
                "UPDATE services SET latest_deployment = NULL WHERE latest_deployment = ?1",
                [id],
            )?;
            Ok(())
        })
    }

    fn create_instance(&self, deployment: &str, node: &str, reason: &str) -> Result<Instance> {
        self.write(|tx| {
            query_deployment(tx, deployment)?;
            let id = new_id();
            let at = now();
            tx.execute(
                "INSERT INTO instances (id, deployment_id, node, state, reason, created_at, updated_at)
                 VALUES (?1, ?2, ?3, 'pending', ?4, ?5, ?5)",
                params![id, deployment, node, reason, at],
            )?;
            record_transition(tx, &id, None, InstanceState::Pending, reason, &at)?;
            query_instance(tx, &id)
        })
    }

    fn transition_instance(&self, id: &str, to: InstanceState, reason: &str) -> Result<Instance> {
        self.write(|tx| {
            let current = query_instance(tx, id)?;
            if current.state == to {
                return Ok(current);
            }
            if !current.state.can_become(to) {
                return Err(StoreError::InvalidTransition {
                    id: id.to_string(),
                    from: current.state,
                    to,
                });
            }
            let at = now();
            tx.execute(
                "UPDATE instances SET state = ?2, reason = ?3, updated_at = ?4 WHERE id = ?1",
                params![id, to.as_str(), reason, at],
            )?;
            record_transition(tx, id, Some(current.state), to, reason, &at)?;
            query_instance(tx, id)
        })
    }

    fn set_instance_ip(&self, id: &str, ip: Option<&str>) -> Result<()> {
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE instances SET ip = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, ip, now()],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("instance", id));
            }
            Ok(())
        })
    }

    fn increment_instance_restarts(&self, id: &str, reason: &str) -> Result<Instance> {
        self.write(|tx| {
            let current = query_instance(tx, id)?;
            let at = now();
            tx.execute(
                "UPDATE instances SET restarts = restarts + 1, reason = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, reason, at],
            )?;
            record_transition(tx, id, Some(current.state), current.state, reason, &at)?;
            query_instance(tx, id)
        })
    }

    fn get_instance(&self, id: &str) -> Result<Instance> {
        let conn = self.conn();
        let mut instance = query_instance(&conn, id)?;
        let mut stmt = conn.prepare(
            "SELECT at, from_state, to_state, reason FROM instance_transitions WHERE instance_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([id], |row| {
            let from: Option<String> = row.get("from_state")?;
            let from = from
                .map(|s| s.parse::<InstanceState>())
                .transpose()
                .map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        0,
                        rusqlite::types::Type::Text,
                        e.into(),
                    )
                })?;
            Ok(Transition {
                at: time(row, "at")?,
                from,
                to: parsed(row, "to_state")?,
                reason: row.get("reason")?,
            })
        })?;
        instance.history = rows.collect::<rusqlite::Result<_>>()?;
        Ok(instance)
    }

    fn list_instances(&self, filter: &InstanceFilter<'_>) -> Result<Vec<Instance>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {INSTANCE_COLS} FROM {INSTANCE_JOIN}
             WHERE (?1 IS NULL OR a.name = ?1) AND (?2 IS NULL OR s.name = ?2)
               AND (?3 IS NULL OR i.deployment_id = ?3)
               AND (?4 OR i.state NOT IN ('stopped', 'failed'))
             ORDER BY i.created_at, i.id"
        ))?;
        let rows = stmt.query_map(
            params![
                filter.app,
                filter.service,
                filter.deployment,
                filter.include_final
            ],
            instance_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn delete_instance(&self, id: &str) -> Result<()> {
        self.write(|tx| {
            let n = tx.execute("DELETE FROM instances WHERE id = ?1", [id])?;
            if n == 0 {
                return Err(StoreError::not_found("instance", id));
            }
            Ok(())
        })
    }

    fn create_sandbox(&self, new: &NewSandboxRecord) -> Result<Sandbox> {
        let sealed = self.cipher.seal(&serde_json::to_vec(&SandboxSecrets {
            envd_access_token: new.envd_access_token.clone(),
            env: new.env.clone(),
        })?);
        self.write(|tx| {
            let at = now();
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO sandboxes (id, template, image, state, reason, isolation, resources, metadata, allow_out, ip, created_at, end_at, updated_at, sealed)
                 VALUES (?1, ?2, ?3, 'starting', 'creating', ?4, ?5, ?6, ?7, NULL, ?8, ?9, ?8, ?10)",
                params![
                    new.id,
                    new.template,
                    new.image,
                    new.isolation.to_string(),
                    serde_json::to_string(&new.resources)?,
                    serde_json::to_string(&new.metadata)?,
                    serde_json::to_string(&new.allow_out)?,
                    at,
                    new.end_at.to_rfc3339_opts(SecondsFormat::Micros, true),
                    sealed,
                ],
            )?;
            if inserted == 0 {
                return Err(StoreError::AlreadyExists {
                    kind: "sandbox",
                    name: new.id.clone(),
                });
            }
            Ok(())
        })?;
        self.get_sandbox(&new.id)
    }

    fn get_sandbox(&self, id: &str) -> Result<Sandbox> {
        let conn = self.conn();
        let row = conn
            .query_row(
                &format!("SELECT {SANDBOX_COLUMNS} FROM sandboxes WHERE id = ?1"),
                [id],
                sandbox_row,
            )
            .optional()?
            .ok_or_else(|| StoreError::not_found("sandbox", id))?;
        self.unseal_sandbox(row)
    }

    fn list_sandboxes(&self, include_final: bool) -> Result<Vec<Sandbox>> {
        let conn = self.conn();
        let filter = if include_final {
            ""
        } else {
            "WHERE state NOT IN ('killed', 'timed_out', 'failed')"
        };
        let mut stmt = conn.prepare(&format!(
            "SELECT {SANDBOX_COLUMNS} FROM sandboxes {filter} ORDER BY created_at, id"
        ))?;
        let rows = stmt
            .query_map([], sandbox_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|row| self.unseal_sandbox(row))
            .collect()
    }

    fn set_sandbox_state(&self, id: &str, state: SandboxState, reason: &str) -> Result<Sandbox> {
        self.update_sandbox(
            id,
            "state = ?3, reason = ?4",
            params![state.as_str(), reason],
        )?;
        self.get_sandbox(id)
    }

    fn set_sandbox_ip(&self, id: &str, ip: Option<&str>) -> Result<()> {
        self.update_sandbox(id, "ip = ?3", params![ip])
    }

    fn set_sandbox_end_at(&self, id: &str, end_at: DateTime<Utc>) -> Result<Sandbox> {
        let end_at = end_at.to_rfc3339_opts(SecondsFormat::Micros, true);
        self.update_sandbox(id, "end_at = ?3", params![end_at])?;
        self.get_sandbox(id)
    }

    fn sandbox_env(&self, id: &str) -> Result<BTreeMap<String, String>> {
        let sealed: Vec<u8> = self
            .conn()
            .query_row("SELECT sealed FROM sandboxes WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| StoreError::not_found("sandbox", id))?;
        Ok(self.open_sandbox_secrets(id, &sealed)?.env)
    }

    fn prune_sandboxes(&self, before: DateTime<Utc>) -> Result<usize> {
        self.write(|tx| {
            Ok(tx.execute(
                "DELETE FROM sandboxes WHERE state IN ('killed', 'timed_out', 'failed') AND updated_at < ?1",
                [before.to_rfc3339_opts(SecondsFormat::Micros, true)],
            )?)
        })
    }

    fn create_secret(&self, name: &str, value: &str) -> Result<Secret> {
        let sealed = self.cipher.seal(value.as_bytes());
        self.write(|tx| {
            let exists: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM secrets WHERE name = ?1)",
                [name],
                |r| r.get(0),
            )?;
            if exists {
                return Err(StoreError::AlreadyExists {
                    kind: "secret",
                    name: name.to_string(),
                });
            }
            let at = now();
            tx.execute(
                "INSERT INTO secrets (name, sealed, created_at, updated_at) VALUES (?1, ?2, ?3, ?3)",
                params![name, sealed, at],
            )?;
            secret_meta(tx, name)
        })
    }

    fn update_secret(&self, name: &str, value: &str) -> Result<Secret> {
        let sealed = self.cipher.seal(value.as_bytes());
        self.write(|tx| {
            let n = tx.execute(
                "UPDATE secrets SET sealed = ?2, updated_at = ?3 WHERE name = ?1",
                params![name, sealed, now()],
            )?;
            if n == 0 {
                return Err(StoreError::not_found("secret", name));
            }
            secret_meta(tx, name)
        })
    }

    fn list_secrets(&self) -> Result<Vec<Secret>> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT name, created_at, updated_at FROM secrets ORDER BY name")?;
        let rows = stmt.query_map([], secret_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn secret_value(&self, name: &str) -> Result<String> {
        let sealed: Vec<u8> = self
            .conn()
            .query_row("SELECT sealed FROM secrets WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?
            .ok_or_else(|| StoreError::not_found("secret", name))?;
        let corrupt = |detail: &str| StoreError::Corrupt {
            what: format!("secret {name:?}"),
            detail: detail.to_string(),
        };
        let plain = self.cipher.open(&sealed).ok_or_else(|| {
            corrupt(
                "it does not decrypt with this data directory's secret.key (was the key replaced?)",
            )
        })?;
        String::from_utf8(plain).map_err(|_| corrupt("not UTF-8"))
    }

    fn delete_secret(&self, name: &str) -> Result<()> {
        self.write(|tx| {
            let n = tx.execute("DELETE FROM secrets WHERE name = ?1", [name])?;
            if n == 0 {
                return Err(StoreError::not_found("secret", name));
            }
            Ok(())
        })
    }

    fn create_key(&self, new: &NewKeyRecord) -> Result<InferenceKey> {
        let models = serde_json::to_string(&new.models)?;
        self.write(|tx| {
            let taken: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM inference_keys WHERE name = ?1 AND revoked_at IS NULL)",
                [&new.name],
                |r| r.get(0),
            )?;
            if taken {
                return Err(StoreError::AlreadyExists {
                    kind: "inference key",
                    name: new.name.clone(),
                });
            }
            tx.execute(
                "INSERT INTO inference_keys (id, name, hint, hash, models, rpm, tpm, expires_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![
                    new.id,
                    new.name,
                    new.hint,
                    hex::encode(new.hash),
                    models,
                    new.rpm,
                    new.tpm.map(saturating_i64),
                    new.expires_at.map(stamp),
                    now(),
                ],
            )?;
            Ok(query_key(tx, "id = ?1", &new.id)?
                .expect("the key was just inserted")
                .key)
        })
    }

    fn list_keys(&self, include_revoked: bool) -> Result<Vec<StoredKey>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {KEY_COLUMNS} FROM inference_keys WHERE ?1 OR revoked_at IS NULL ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map([include_revoked], key_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn revoke_key(&self, id_or_name: &str) -> Result<InferenceKey> {
        self.write(|tx| {
            let found = match query_key(tx, "id = ?1", id_or_name)? {
                Some(key) => Some(key),
                None => query_key(tx, "name = ?1 AND revoked_at IS NULL", id_or_name)?,
            };
            let Some(StoredKey { key, .. }) = found else {
                return Err(StoreError::not_found("inference key", id_or_name));
            };
            if key.revoked_at.is_some() {
                return Ok(key);
            }
            tx.execute(
                "UPDATE inference_keys SET revoked_at = ?2 WHERE id = ?1",
                params![key.id, now()],
            )?;
            Ok(query_key(tx, "id = ?1", &key.id)?
                .expect("the key was just read")
                .key)
        })
    }

    fn insert_requests(&self, records: &[RequestRecord]) -> Result<()> {
        self.write(|tx| {
            let mut stmt = tx.prepare(
                "INSERT INTO requests (id, at, key_id, key_name, model, app, service, instance,
                    model_digest, engine, endpoint, stream, status, error, prompt_tokens,
                    completion_tokens, duration_ms, ttft_ms, prompt, completion)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
            )?;
            for r in records {
                stmt.execute(params![
                    r.id,
                    stamp(r.at),
                    r.key_id,
                    r.key_name,
                    r.model,
                    r.app,
                    r.service,
                    r.instance,
                    r.model_digest,
                    r.engine,
                    r.endpoint,
                    r.stream,
                    r.status,
                    r.error,
                    saturating_i64(r.prompt_tokens),
                    saturating_i64(r.completion_tokens),
                    saturating_i64(r.duration_ms),
                    r.ttft_ms.map(saturating_i64),
                    r.prompt,
                    r.completion,
                ])?;
            }
            Ok(())
        })
    }

    fn usage(&self, filter: &UsageFilter<'_>) -> Result<Vec<UsageRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT key_id, key_name, model, COUNT(*) AS requests,
                    SUM(CASE WHEN status >= 400 OR error IS NOT NULL THEN 1 ELSE 0 END) AS errors,
                    SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens
             FROM requests
             WHERE (?1 IS NULL OR key_id = ?1 OR key_name = ?1) AND (?2 IS NULL OR model = ?2)
               AND (?3 IS NULL OR at >= ?3)
             GROUP BY key_id, key_name, model
             ORDER BY key_name, key_id, model",
        )?;
        let rows = stmt.query_map(
            params![filter.key, filter.model, filter.since.map(stamp)],
            |row| {
                Ok(UsageRow {
                    key_id: row.get("key_id")?,
                    key_name: row.get("key_name")?,
                    model: row.get("model")?,
                    requests: row.get::<_, i64>("requests")? as u64,
                    errors: row.get::<_, i64>("errors")? as u64,
                    prompt_tokens: row.get::<_, i64>("prompt_tokens")? as u64,
                    completion_tokens: row.get::<_, i64>("completion_tokens")? as u64,
                })
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    fn list_requests(&self, filter: &RequestFilter<'_>) -> Result<Vec<StoredRequest>> {
        let limit = if filter.limit == 0 {
            1000
        } else {
            filter.limit
        };
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT * FROM requests
             WHERE seq > ?1 AND (?2 IS NULL OR at >= ?2) AND (?3 IS NULL OR at < ?3)
               AND (?4 IS NULL OR key_id = ?4 OR key_name = ?4) AND (?5 IS NULL OR model = ?5)
             ORDER BY seq LIMIT ?6",
        )?;
        let rows = stmt.query_map(
            params![
                filter.after.unwrap_or(0),
                filter.since.map(stamp),
                filter.until.map(stamp),
                filter.key,
                filter.model,
                i64::try_from(limit).unwrap_or(i64::MAX),
            ],
            request_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// A time as the store writes it: RFC 3339, UTC, microseconds — one width,
/// so text order is time order.
fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// SQLite integers are signed; counts beyond `i64::MAX` do not happen, but
/// must not wrap.
fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn optional_time(row: &Row<'_>, col: &str) -> rusqlite::Result<Option<DateTime<Utc>>> {
    match row.get::<_, Option<String>>(col)? {
        None => Ok(None),
        Some(_) => time(row, col).map(Some),
    }
}

const KEY_COLUMNS: &str =
    "id, name, hint, hash, models, rpm, tpm, expires_at, created_at, revoked_at";

fn key_row(row: &Row<'_>) -> rusqlite::Result<StoredKey> {
    let corrupt = |detail: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, detail.into())
    };
    let hash: String = row.get("hash")?;
    let hash: [u8; 32] = hex::decode(&hash)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| corrupt(format!("inference key hash {hash:?} is not 64 hex digits")))?;
    let models: String = row.get("models")?;
    let models: Vec<String> =
        serde_json::from_str(&models).map_err(|e| corrupt(format!("inference key models: {e}")))?;
    Ok(StoredKey {
        key: InferenceKey {
            id: row.get("id")?,
            name: row.get("name")?,
            hint: row.get("hint")?,
            models,
            rpm: row.get("rpm")?,
            tpm: row.get::<_, Option<i64>>("tpm")?.map(|n| n.max(0) as u64),
            expires_at: optional_time(row, "expires_at")?,
            created_at: time(row, "created_at")?,
            revoked_at: optional_time(row, "revoked_at")?,
        },
        hash,
    })
}

/// The first key `WHERE <condition>` (with `?1` = `value`).
fn query_key(conn: &Connection, condition: &str, value: &str) -> Result<Option<StoredKey>> {
    Ok(conn
        .query_row(
            &format!("SELECT {KEY_COLUMNS} FROM inference_keys WHERE {condition} ORDER BY created_at DESC LIMIT 1"),
            [value],
            key_row,
        )
        .optional()?)
}

fn request_row(row: &Row<'_>) -> rusqlite::Result<StoredRequest> {
    let count = |col: &str| row.get::<_, i64>(col).map(|n| n.max(0) as u64);
    Ok(StoredRequest {
        seq: row.get("seq")?,
        record: RequestRecord {
            id: row.get("id")?,
            at: time(row, "at")?,
            key_id: row.get("key_id")?,
            key_name: row.get("key_name")?,
            model: row.get("model")?,
            app: row.get("app")?,
            service: row.get("service")?,
            instance: row.get("instance")?,
            model_digest: row.get("model_digest")?,
            engine: row.get("engine")?,
            endpoint: row.get("endpoint")?,
            stream: row.get("stream")?,
            status: row.get("status")?,
            error: row.get("error")?,
            prompt_tokens: count("prompt_tokens")?,
            completion_tokens: count("completion_tokens")?,
            duration_ms: count("duration_ms")?,
            ttft_ms: row
                .get::<_, Option<i64>>("ttft_ms")?
                .map(|n| n.max(0) as u64),
            prompt: row.get("prompt")?,
            completion: row.get("completion")?,
        },
    })
}

fn secret_row(row: &Row<'_>) -> rusqlite::Result<Secret> {
    Ok(Secret {
        name: row.get("name")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

/// What a sandbox row keeps sealed.
#[derive(serde::Serialize, serde::Deserialize)]
struct SandboxSecrets {
    envd_access_token: String,
    env: BTreeMap<String, String>,
}

const SANDBOX_COLUMNS: &str = "id, template, image, state, reason, isolation, resources, metadata, allow_out, ip, created_at, end_at, sealed";

/// A sandbox row, its token still sealed.
struct SandboxRow {
    sandbox: Sandbox,
    sealed: Vec<u8>,
}

fn sandbox_row(row: &Row<'_>) -> rusqlite::Result<SandboxRow> {
    fn json<T: serde::de::DeserializeOwned>(row: &Row<'_>, col: &str) -> rusqlite::Result<T> {
        let text: String = row.get(col)?;
        serde_json::from_str(&text).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })
    }
    fn parsed<T: std::str::FromStr<Err = String>>(row: &Row<'_>, col: &str) -> rusqlite::Result<T> {
        let text: String = row.get(col)?;
        text.parse().map_err(|e: String| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
        })
    }
    let isolation: String = row.get("isolation")?;
    Ok(SandboxRow {
        sandbox: Sandbox {
            id: row.get("id")?,
            template: row.get("template")?,
            image: row.get("image")?,
            state: parsed(row, "state")?,
            reason: row.get("reason")?,
            isolation: if isolation == "container" {
                Isolation::Container
            } else {
                Isolation::Gvisor
            },
            resources: json(row, "resources")?,
            metadata: json(row, "metadata")?,
            allow_out: json(row, "allow_out")?,
            ip: row.get("ip")?,
            created_at: time(row, "created_at")?,
            end_at: time(row, "end_at")?,
            envd_access_token: String::new(),
        },
        sealed: row.get("sealed")?,
    })
}

impl SqliteStore {
    fn open_sandbox_secrets(&self, id: &str, sealed: &[u8]) -> Result<SandboxSecrets> {
        let corrupt = |detail: String| StoreError::Corrupt {
            what: format!("sandbox {id}"),
            detail,
        };
        let plain = self
            .cipher
            .open(sealed)
            .ok_or_else(|| corrupt("cannot decrypt its token (a different secret key?)".into()))?;
        serde_json::from_slice(&plain).map_err(|e| corrupt(e.to_string()))
    }

    /// `UPDATE sandboxes SET <set>` for sandbox `id` (`?1`), stamping
    /// `updated_at` (`?2`); `values` are `?3` onwards. Not found if there
    /// is no such sandbox.
    fn update_sandbox(&self, id: &str, set: &str, values: &[&dyn rusqlite::ToSql]) -> Result<()> {
        let at = now();
        let mut all: Vec<&dyn rusqlite::ToSql> = vec![&id, &at];
        all.extend_from_slice(values);
        self.write(|tx| {
            let sql = format!("UPDATE sandboxes SET {set}, updated_at = ?2 WHERE id = ?1");
            if tx.execute(&sql, all.as_slice())? == 0 {
                return Err(StoreError::not_found("sandbox", id));
            }
            Ok(())
        })
    }

    fn unseal_sandbox(&self, row: SandboxRow) -> Result<Sandbox> {
        let mut sandbox = row.sandbox;
        sandbox.envd_access_token = self
            .open_sandbox_secrets(&sandbox.id, &row.sealed)?
            .envd_access_token;
        Ok(sandbox)
    }
}

fn secret_meta(tx: &Connection, name: &str) -> Result<Secret> {
    Ok(tx.query_row(
        "SELECT name, created_at, updated_at FROM secrets WHERE name = ?1",
        [name],
        secret_row,
    )?)
}
