-- Telehealth: profiles (one per Epic video-visit integration), single-use launch records,
-- pending OAuth states, conferences and their participants. Secrets (launch keys, client
-- secrets, OAuth tokens, pending launch contexts) live sealed in `secrets`; rows hold their ids.
CREATE TABLE telehealth_profiles (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    environment_id     TEXT NOT NULL,
    encryption         TEXT NOT NULL CHECK (encryption IN ('aes256', 'aes128')),
    key_ref            TEXT NOT NULL,
    iv_mode            TEXT NOT NULL CHECK (iv_mode IN ('zero', 'prefixed')),
    launch_param       TEXT NOT NULL,
    field_map          TEXT NOT NULL,
    clients            TEXT NOT NULL,
    link_validity_secs BIGINT NOT NULL,
    video              TEXT NOT NULL,
    status_codes       TEXT NOT NULL,
    vendor_name        TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);

CREATE TABLE telehealth_launches (
    digest     TEXT PRIMARY KEY,
    profile_id TEXT NOT NULL,
    used_at    BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX telehealth_launches_expiry ON telehealth_launches (expires_at);

CREATE TABLE telehealth_states (
    digest     TEXT PRIMARY KEY,
    profile_id TEXT NOT NULL,
    role       TEXT NOT NULL,
    secret_ref TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX telehealth_states_expiry ON telehealth_states (expires_at);

CREATE TABLE conferences (
    id             TEXT PRIMARY KEY,
    profile_id     TEXT NOT NULL,
    profile_name   TEXT NOT NULL,
    environment_id TEXT NOT NULL,
    appointment_id TEXT NOT NULL,
    csn            TEXT,
    name           TEXT NOT NULL,
    patient_name   TEXT NOT NULL,
    department     TEXT,
    room           TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('active', 'ended')),
    started_at     BIGINT NOT NULL,
    ended_at       BIGINT,
    ended_reason   TEXT,
    -- When Epic accepted SetExternalConnectionStatus for the start and the end of the call.
    epic_connected_at BIGINT,
    epic_ended_at     BIGINT
);
-- One live conference per (profile, Epic appointment): racing launches meet in it.
CREATE UNIQUE INDEX conferences_one_active ON conferences (profile_id, appointment_id) WHERE state = 'active';
CREATE INDEX conferences_by_state ON conferences (state, started_at, id);
CREATE INDEX conferences_by_end ON conferences (ended_at);

CREATE TABLE conference_participants (
    id               TEXT PRIMARY KEY,
    conference_id    TEXT NOT NULL,
    role             TEXT NOT NULL CHECK (role IN ('provider', 'patient')),
    display_name     TEXT NOT NULL,
    epic_user        TEXT,
    state            TEXT NOT NULL CHECK (state IN ('lobby', 'joined', 'left')),
    session_digest   TEXT NOT NULL UNIQUE,
    client_id        TEXT NOT NULL,
    arrived_at       BIGINT NOT NULL,
    joined_at        BIGINT,
    left_at          BIGINT,
    token_ref        TEXT,
    token_issued_at  BIGINT,
    token_expires_at BIGINT,
    token_renewals   BIGINT NOT NULL DEFAULT 0,
    token_error      TEXT
);
CREATE INDEX conference_participants_by_conference ON conference_participants (conference_id, arrived_at);
