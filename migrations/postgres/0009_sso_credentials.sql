-- The credential vault: one username and sealed password per device user and SSO profile.
CREATE TABLE sso_credentials (
    user_id    TEXT NOT NULL,
    profile_id TEXT NOT NULL,
    username   TEXT NOT NULL,
    secret_ref TEXT NOT NULL,
    source     TEXT NOT NULL CHECK (source IN ('admin', 'device')),
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, profile_id)
);
