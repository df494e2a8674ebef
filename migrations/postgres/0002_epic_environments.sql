-- Epic environments and the key sets whose public halves Switchboard hosts as JWK sets.

CREATE TABLE key_sets (
    id                 TEXT PRIMARY KEY,
    owner              TEXT NOT NULL,
    alg                TEXT NOT NULL CHECK (alg IN ('RS384', 'ES384')),
    publish_delay_secs BIGINT NOT NULL,
    rotate_every_days  BIGINT,
    next_rotation_at   BIGINT,
    created_at         BIGINT NOT NULL
);

CREATE TABLE signing_keys (
    kid            TEXT PRIMARY KEY,
    key_set_id     TEXT NOT NULL REFERENCES key_sets (id),
    alg            TEXT NOT NULL,
    public_jwk     TEXT NOT NULL,
    private_secret TEXT NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('published', 'active', 'retiring', 'retired')),
    created_at     BIGINT NOT NULL,
    activate_after BIGINT NOT NULL,
    activated_at   BIGINT,
    retiring_at    BIGINT,
    retired_at     BIGINT,
    last_used_at   BIGINT
);
CREATE INDEX signing_keys_set ON signing_keys (key_set_id, state);

CREATE TABLE epic_environments (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE,
    kind                TEXT NOT NULL CHECK (kind IN ('production', 'non_production')),
    interconnect_url    TEXT NOT NULL,
    instance            TEXT NOT NULL,
    token_url_override  TEXT,
    client_id           TEXT NOT NULL,
    apps                TEXT NOT NULL,
    basic_username      TEXT,
    basic_password_ref  TEXT,
    epic_client_id      TEXT,
    timeout_ms          BIGINT NOT NULL,
    rate_limit_per_sec  BIGINT,
    ca_bundle           TEXT,
    key_set_id          TEXT NOT NULL REFERENCES key_sets (id),
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);
