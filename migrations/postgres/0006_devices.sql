-- Shared devices: locations (a dock and its kiosk), device groups (lending period, check-in
-- workflows, required apps), enrolment tokens, devices, the clinicians who borrow them,
-- check-outs (one open per device, enforced here), check-ins with one receipt row per step,
-- the agent command queue, a per-device timeline and idempotency keys.
CREATE TABLE locations (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL,
    kiosk_key_digest  TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);

CREATE TABLE device_groups (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL UNIQUE,
    lending_minutes  BIGINT NOT NULL,
    workflows        TEXT NOT NULL,
    required_apps    TEXT NOT NULL,
    checkin_on_dock  BOOLEAN NOT NULL DEFAULT FALSE,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);

CREATE TABLE enrolment_tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    digest      TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    group_id    TEXT NOT NULL,
    location_id TEXT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT,
    uses        BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE devices (
    id                 TEXT PRIMARY KEY,
    serial             TEXT NOT NULL UNIQUE,
    uuid               TEXT,
    platform           TEXT NOT NULL CHECK (platform IN ('ios', 'android')),
    model              TEXT,
    os_version         TEXT,
    name               TEXT NOT NULL,
    slot               TEXT,
    group_id           TEXT NOT NULL,
    location_id        TEXT,
    credential_digest  TEXT NOT NULL UNIQUE,
    status             TEXT NOT NULL CHECK (status IN ('available', 'checked_out', 'returning', 'attention')),
    holder_id          TEXT,
    checkout_id        TEXT,
    pin_set            BOOLEAN NOT NULL DEFAULT FALSE,
    battery            BIGINT,
    charging           BOOLEAN,
    docked             BOOLEAN,
    reported_location  TEXT,
    apps               TEXT NOT NULL,
    appconfig          TEXT NOT NULL,
    readiness          TEXT NOT NULL,
    last_heartbeat_at  BIGINT,
    enrolled_at        BIGINT NOT NULL,
    revoked_at         BIGINT,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);
CREATE INDEX devices_by_location ON devices (location_id, status);

CREATE TABLE device_users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    display_name  TEXT NOT NULL,
    badge_digest  TEXT UNIQUE,
    password_hash TEXT,
    device_limit  BIGINT,
    source        TEXT NOT NULL CHECK (source IN ('local', 'lookup')),
    disabled      BOOLEAN NOT NULL DEFAULT FALSE,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE checkouts (
    id          TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    location_id TEXT,
    source      TEXT NOT NULL,
    pin_set     BOOLEAN NOT NULL DEFAULT FALSE,
    started_at  BIGINT NOT NULL,
    due_at      BIGINT NOT NULL,
    ended_at    BIGINT,
    checkin_id  TEXT
);
-- Exactly one holder per device: two racing check-outs cannot both commit.
CREATE UNIQUE INDEX checkouts_one_holder ON checkouts (device_id) WHERE ended_at IS NULL;
CREATE INDEX checkouts_open_by_user ON checkouts (user_id) WHERE ended_at IS NULL;
CREATE INDEX checkouts_by_device ON checkouts (device_id, started_at);

CREATE TABLE checkins (
    id           TEXT PRIMARY KEY,
    device_id    TEXT NOT NULL,
    checkout_id  TEXT NOT NULL UNIQUE,
    user_id      TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('in_progress', 'complete', 'complete_with_problems')),
    warnings     TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    completed_at BIGINT
);
CREATE INDEX checkins_by_device ON checkins (device_id, started_at);

CREATE TABLE checkin_steps (
    checkin_id      TEXT NOT NULL,
    position        BIGINT NOT NULL,
    action          TEXT NOT NULL,
    spec            TEXT NOT NULL,
    on_device       BOOLEAN NOT NULL,
    mandatory       BOOLEAN NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'done', 'retrying', 'failed', 'skipped')),
    detail          TEXT NOT NULL,
    install_id      TEXT,
    attempts        BIGINT NOT NULL DEFAULT 0,
    outcome_unknown BOOLEAN NOT NULL DEFAULT FALSE,
    repeats         BIGINT NOT NULL DEFAULT 0,
    command_id      TEXT,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (checkin_id, position)
);

CREATE TABLE device_commands (
    id          TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    params      TEXT NOT NULL,
    secret_ref  TEXT,
    state       TEXT NOT NULL CHECK (state IN ('queued', 'delivered', 'succeeded', 'failed', 'skipped', 'expired')),
    checkin_id  TEXT,
    position    BIGINT,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    delivered_at BIGINT,
    finished_at BIGINT,
    result      TEXT
);
CREATE INDEX device_commands_open ON device_commands (device_id, state);
CREATE INDEX device_commands_expiry ON device_commands (state, expires_at);

CREATE TABLE device_events (
    seq       BIGSERIAL PRIMARY KEY,
    device_id TEXT NOT NULL,
    at        BIGINT NOT NULL,
    kind      TEXT NOT NULL,
    detail    TEXT NOT NULL
);
CREATE INDEX device_events_by_device ON device_events (device_id, seq);

CREATE TABLE idempotency_keys (
    scope          TEXT NOT NULL,
    key            TEXT NOT NULL,
    request_digest TEXT NOT NULL,
    status         BIGINT NOT NULL,
    response       TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
