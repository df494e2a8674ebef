-- FHIR gateway: data adapters (where Epic is), gateways (the URL apps call), apps (OAuth2
-- client credentials), activations (an app on a gateway, with its backend auth to Epic),
-- token revocations, and the per-request access record.
CREATE TABLE data_adapters (
    id                    TEXT PRIMARY KEY,
    name                  TEXT NOT NULL UNIQUE,
    kind                  TEXT NOT NULL CHECK (kind IN ('epic_r4_external')),
    environment_id        TEXT,
    settings              TEXT NOT NULL,
    external_client_id    TEXT,
    external_secret_ref   TEXT,
    external_api_endpoint TEXT,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL
);

CREATE TABLE gateways (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    adapter_id         TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);

CREATE TABLE gateway_apps (
    id                     TEXT PRIMARY KEY,
    name                   TEXT NOT NULL,
    client_id              TEXT NOT NULL UNIQUE,
    secret_digest          TEXT NOT NULL,
    previous_secret_digest TEXT,
    previous_valid_until   BIGINT,
    launch_uri             TEXT,
    scopes                 TEXT NOT NULL,
    token_ttl_secs         BIGINT NOT NULL,
    rate_limit_per_sec     BIGINT,
    jwks_url               TEXT,
    tokens_not_before      BIGINT NOT NULL DEFAULT 0,
    disabled               BOOLEAN NOT NULL DEFAULT FALSE,
    created_at             BIGINT NOT NULL,
    updated_at             BIGINT NOT NULL
);

CREATE TABLE activations (
    id             TEXT PRIMARY KEY,
    app_id         TEXT NOT NULL,
    gateway_id     TEXT NOT NULL,
    ehr_auth       TEXT NOT NULL CHECK (ehr_auth IN ('none', 'backend')),
    epic_client_id TEXT,
    epic_app_name  TEXT,
    key_set_id     TEXT,
    token_url      TEXT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    UNIQUE (app_id, gateway_id)
);

CREATE TABLE token_revocations (
    jti        TEXT PRIMARY KEY,
    app_id     TEXT NOT NULL,
    revoked_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX token_revocations_at ON token_revocations (revoked_at);

CREATE TABLE gateway_requests (
    seq           BIGSERIAL PRIMARY KEY,
    at            BIGINT NOT NULL,
    app_id        TEXT,
    gateway_id    TEXT NOT NULL,
    kind          TEXT NOT NULL,
    interaction   TEXT,
    resource_type TEXT,
    resource_id   TEXT,
    status        BIGINT NOT NULL,
    latency_us    BIGINT NOT NULL,
    request_id    TEXT
);
CREATE INDEX gateway_requests_at ON gateway_requests (gateway_id, at);
