-- Results of "Test connection" and "Test Epic API logout" per Epic environment.
CREATE TABLE connection_checks (
    id             TEXT PRIMARY KEY,
    environment_id TEXT NOT NULL,
    kind           TEXT NOT NULL CHECK (kind IN ('connection', 'logout')),
    at             BIGINT NOT NULL,
    ok             BOOLEAN NOT NULL,
    steps          TEXT NOT NULL
);
CREATE INDEX connection_checks_env ON connection_checks (environment_id, kind, at);
