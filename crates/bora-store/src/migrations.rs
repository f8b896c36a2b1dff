//! Versioned schema migrations. Each runs once, in a transaction, in order;
//! `schema_migrations` records which ran. Never edit a released migration:
//! add a new one.

pub(crate) const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
CREATE TABLE apps (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE TABLE services (
    id                 TEXT PRIMARY KEY,
    app_id             TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    name               TEXT NOT NULL,
    kind               TEXT NOT NULL,
    active_deployment  TEXT,
    latest_deployment  TEXT,
    created_at         TEXT NOT NULL,
    updated_at         TEXT NOT NULL,
    UNIQUE (app_id, name)
);
CREATE TABLE deployments (
    id            TEXT PRIMARY KEY,
    service_id    TEXT NOT NULL REFERENCES services(id) ON DELETE CASCADE,
    version       INTEGER NOT NULL,
    spec          TEXT NOT NULL,
    image_digest  TEXT,
    status        TEXT NOT NULL,
    reason        TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    UNIQUE (service_id, version)
);
CREATE TABLE instances (
    id             TEXT PRIMARY KEY,
    deployment_id  TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    node           TEXT NOT NULL,
    state          TEXT NOT NULL,
    reason         TEXT NOT NULL,
    ip             TEXT,
    restarts       INTEGER NOT NULL DEFAULT 0,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);
CREATE INDEX instances_by_deployment ON instances (deployment_id);
CREATE TABLE instance_transitions (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id  TEXT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    at           TEXT NOT NULL,
    from_state   TEXT,
    to_state     TEXT NOT NULL,
    reason       TEXT NOT NULL
);
CREATE INDEX transitions_by_instance ON instance_transitions (instance_id);
CREATE TABLE secrets (
    name        TEXT PRIMARY KEY,
    sealed      BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
"#,
    ),
    (
        2,
        r#"
ALTER TABLE services ADD COLUMN scaling TEXT;
CREATE TABLE events (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    at       TEXT NOT NULL,
    app      TEXT NOT NULL,
    service  TEXT NOT NULL,
    kind     TEXT NOT NULL,
    message  TEXT NOT NULL
);
CREATE INDEX events_by_service ON events (app, service, seq);
"#,
    ),
    (
        3,
        r#"
CREATE TABLE sandboxes (
    id          TEXT PRIMARY KEY,
    template    TEXT NOT NULL,
    image       TEXT NOT NULL,
    state       TEXT NOT NULL,
    reason      TEXT NOT NULL,
    isolation   TEXT NOT NULL,
    resources   TEXT NOT NULL,
    metadata    TEXT NOT NULL,
    allow_out   TEXT NOT NULL,
    ip          TEXT,
    created_at  TEXT NOT NULL,
    end_at      TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    sealed      BLOB NOT NULL
);
CREATE INDEX sandboxes_by_state ON sandboxes (state);
"#,
    ),
    (
        4,
        r#"
CREATE TABLE inference_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    hint        TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    models      TEXT NOT NULL,
    rpm         INTEGER,
    tpm         INTEGER,
    expires_at  TEXT,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);
CREATE UNIQUE INDEX inference_keys_live_name ON inference_keys (name) WHERE revoked_at IS NULL;
CREATE TABLE requests (
    seq                INTEGER PRIMARY KEY AUTOINCREMENT,
    id                 TEXT NOT NULL,
    at                 TEXT NOT NULL,
    key_id             TEXT,
    key_name           TEXT,
    model              TEXT NOT NULL,
    app                TEXT,
    service            TEXT,
    instance           TEXT,
    model_digest       TEXT,
    engine             TEXT,
    endpoint           TEXT NOT NULL,
    stream             INTEGER NOT NULL,
    status             INTEGER NOT NULL,
    error              TEXT,
    prompt_tokens      INTEGER NOT NULL,
    completion_tokens  INTEGER NOT NULL,
    duration_ms        INTEGER NOT NULL,
    ttft_ms            INTEGER,
    prompt             TEXT,
    completion         TEXT
);
CREATE INDEX requests_by_at ON requests (at);
CREATE INDEX requests_by_key ON requests (key_id, model, at);
CREATE INDEX requests_by_key_name ON requests (key_name, model, at);
CREATE INDEX requests_by_model ON requests (model, at);
"#,
    ),
    (
        5,
        r#"
ALTER TABLE deployments ADD COLUMN model_digest TEXT;
"#,
    ),
];
