-- SSO credential profiles (the <SSO> XML of the locker's Password AutoFill): the validated
-- document kept exactly, and the apps it covers.
CREATE TABLE sso_profiles (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    apps       TEXT NOT NULL,
    xml        TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
