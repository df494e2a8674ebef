//! Typed, layered configuration: defaults < TOML file (`--config`) < `SWITCHBOARD_*` variables.
//! Secrets have `_file` variants so they can come from mounted files instead of the environment.
//! Every key is listed in `config/example.toml` and `docs/CONFIG.md`.

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const ENV_PREFIX: &str = "SWITCHBOARD_";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    Full,
    Normal,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// The URL by which Epic, devices and apps reach this server (JWK URLs, redirect URIs).
    pub public_url: Option<String>,
    /// Folder for the embedded database, the master key and the bootstrap token.
    pub data_dir: PathBuf,
    /// `sqlite://...` or `postgres://...`; default: SQLite in `data_dir`.
    pub database_url: Option<SecretString>,
    pub database_url_file: Option<PathBuf>,
    pub database_max_connections: u32,
    /// PostgreSQL: connections kept open when idle; default all of `database_max_connections`.
    pub database_min_connections: Option<u32>,
    pub database_acquire_timeout_ms: u64,
    pub sqlite_synchronous: SqliteSync,
    pub sqlite_busy_timeout_ms: u64,
    /// Audit chains to spread appends over (1–16); default 1 on SQLite, 16 on PostgreSQL (a
    /// transaction appends to a chain no other of this replica's holds while there is one).
    pub audit_chains: Option<u32>,
    /// Base64 of 32 bytes; when set it is the only master key (for replicas sharing one key).
    pub master_key: Option<SecretString>,
    /// The keyring file (created on first start when no `master_key` is given).
    pub master_key_file: Option<PathBuf>,
    /// Username of the admin created on first start.
    pub bootstrap_admin: String,
    /// Where the bootstrap admin's token is written (mode 0600).
    pub bootstrap_token_file: Option<PathBuf>,
    pub log_format: LogFormat,
    /// `tracing` filter, e.g. `info` or `switchboard=debug,info`.
    pub log_level: String,
    pub session_ttl_minutes: u64,
    pub max_body_bytes: usize,
    /// Whether this process runs job workers (turn off for API-only replicas).
    pub run_workers: bool,
    /// Jobs this process runs at the same time.
    pub job_concurrency: u32,
    pub job_poll_interval_ms: u64,
    pub job_lease_seconds: u64,
    pub job_max_attempts: u32,
    pub job_backoff_base_ms: u64,
    pub job_backoff_cap_ms: u64,
    /// Timeout of outbound HTTP calls made by jobs (webhooks).
    pub outbound_timeout_ms: u64,
    /// Event loops accepting connections and proxying gateway reads (0: one per core).
    pub event_loops: u32,
    /// Days to keep ended telehealth conferences (0 keeps them forever).
    pub telehealth_retention_days: u32,
    /// Devices one clinician may hold at once (a user's own limit overrides it).
    pub device_limit_per_user: u32,
    /// A device not heard from for longer is not handed out.
    pub device_heartbeat_fresh_secs: u64,
    /// How long a device has to confirm a command before it counts as failed.
    pub device_command_ttl_secs: u64,
    /// Longest wait of an agent's long poll for commands.
    pub agent_poll_max_secs: u64,
    /// Optional identity-lookup hook: `POST {url}` with `{"badge": ...}` → `{"username", "display_name"}`.
    pub identity_lookup_url: Option<String>,
    /// How long a badge resolved by the hook is remembered.
    pub identity_lookup_cache_secs: u64,
    /// Where device alerts are POSTed (lost, found, emergency unlock); none: no webhook.
    pub device_events_webhook_url: Option<String>,
    /// A device overdue by this many minutes goes into lost mode (0: never automatically).
    pub device_lost_after_overdue_minutes: u64,
    /// Days of device timeline and finished commands kept (0 keeps them forever); receipts and
    /// check-outs are kept.
    pub device_history_retention_days: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            public_url: None,
            data_dir: PathBuf::from("./switchboard-data"),
            database_url: None,
            database_url_file: None,
            database_max_connections: 16,
            database_min_connections: None,
            database_acquire_timeout_ms: 5_000,
            sqlite_synchronous: SqliteSync::Full,
            sqlite_busy_timeout_ms: 5_000,
            audit_chains: None,
            master_key: None,
            master_key_file: None,
            bootstrap_admin: "admin".to_owned(),
            bootstrap_token_file: None,
            log_format: LogFormat::Pretty,
            log_level: "info".to_owned(),
            session_ttl_minutes: 12 * 60,
            max_body_bytes: 1024 * 1024,
            run_workers: true,
            job_concurrency: 8,
            job_poll_interval_ms: 1_000,
            job_lease_seconds: 60,
            job_max_attempts: 12,
            job_backoff_base_ms: 2_000,
            job_backoff_cap_ms: 600_000,
            outbound_timeout_ms: 10_000,
            event_loops: 0,
            telehealth_retention_days: 90,
            device_limit_per_user: 1,
            device_heartbeat_fresh_secs: 600,
            device_command_ttl_secs: 600,
            agent_poll_max_secs: 25,
            identity_lookup_url: None,
            identity_lookup_cache_secs: 300,
            device_events_webhook_url: None,
            device_lost_after_overdue_minutes: 0,
            device_history_retention_days: 180,
        }
    }
}

/// Every key, as written in TOML (and, upper-cased with the prefix, as an environment variable).
pub const KEYS: &[&str] = &[
    "listen",
    "public_url",
    "data_dir",
    "database_url",
    "database_url_file",
    "database_max_connections",
    "database_min_connections",
    "database_acquire_timeout_ms",
    "sqlite_synchronous",
    "sqlite_busy_timeout_ms",
    "audit_chains",
    "master_key",
    "master_key_file",
    "bootstrap_admin",
    "bootstrap_token_file",
    "log_format",
    "log_level",
    "session_ttl_minutes",
    "max_body_bytes",
    "run_workers",
    "job_concurrency",
    "job_poll_interval_ms",
    "job_lease_seconds",
    "job_max_attempts",
    "job_backoff_base_ms",
    "job_backoff_cap_ms",
    "outbound_timeout_ms",
    "event_loops",
    "telehealth_retention_days",
    "device_limit_per_user",
    "device_heartbeat_fresh_secs",
    "device_command_ttl_secs",
    "agent_poll_max_secs",
    "identity_lookup_url",
    "identity_lookup_cache_secs",
    "device_events_webhook_url",
    "device_lost_after_overdue_minutes",
    "device_history_retention_days",
];

/// Variables with the prefix that are not configuration keys but are known to Switchboard.
const OTHER_KNOWN_VARS: &[&str] = &[
    "SWITCHBOARD_TEST_POSTGRES_URL",
    "SWITCHBOARD_TEST_BROWSER",
    "SWITCHBOARD_LOG",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Parse(String),
    #[error("configuration file {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("configuration: {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Config {
    /// Loads defaults, then the TOML file (if given; it must exist), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    pub fn load_from(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut fig = Figment::new();
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError::File {
                    path: path.to_owned(),
                    reason: "no such file".to_owned(),
                });
            }
            fig = fig.merge(Toml::file(path));
        }
        let vars: Vec<(String, String)> = vars.into_iter().collect();
        // Environment variables come in as a list (not figment's own `Env`) so tests stay hermetic.
        let env_map: Vec<(String, String)> = vars
            .iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
                KEYS.contains(&key.as_str()).then(|| (key, v.clone()))
            })
            .collect();
        for (k, v) in env_map {
            fig = fig.merge(Serialized::default(&k, parse_env_value(&v)));
        }
        let mut cfg: Self = fig.extract().map_err(|e| ConfigError::Parse(explain(&e)))?;
        cfg.read_secret_files()?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn read_secret_files(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.database_url_file {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                path: path.clone(),
                reason: format!("database_url_file: {e}"),
            })?;
            self.database_url = Some(SecretString::from(text.trim().to_owned()));
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let url = self.database_url();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid {
                key: "database_url",
                reason: "must start with sqlite://, postgres:// or postgresql://".to_owned(),
            });
        }
        if let Some(n) = self.database_min_connections
            && n > self.database_max_connections
        {
            return Err(ConfigError::Invalid {
                key: "database_min_connections",
                reason: format!(
                    "{n} is more than database_max_connections ({})",
                    self.database_max_connections
                ),
            });
        }
        if let Some(n) = self.audit_chains
            && !(1..=16).contains(&n)
        {
            return Err(ConfigError::Invalid {
                key: "audit_chains",
                reason: format!("{n} is outside 1–16"),
            });
        }
        if self.event_loops > 64 {
            return Err(ConfigError::Invalid {
                key: "event_loops",
                reason: format!("{} is more than 64", self.event_loops),
            });
        }
        if let Some(public) = &self.public_url {
            let parsed = url::Url::parse(public).map_err(|e| ConfigError::Invalid {
                key: "public_url",
                reason: format!("`{public}` is not a URL: {e}"),
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(ConfigError::Invalid {
                    key: "public_url",
                    reason: "must be http:// or https://".to_owned(),
                });
            }
        }
        for (key, url) in [
            ("identity_lookup_url", &self.identity_lookup_url),
            ("device_events_webhook_url", &self.device_events_webhook_url),
        ] {
            if let Some(u) = url
                && !(u.starts_with("https://") || u.starts_with("http://"))
            {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be an http:// or https:// URL".to_owned(),
                });
            }
        }
        let positive: [(&'static str, u64); 11] = [
            (
                "device_limit_per_user",
                u64::from(self.device_limit_per_user),
            ),
            (
                "device_heartbeat_fresh_secs",
                self.device_heartbeat_fresh_secs,
            ),
            ("device_command_ttl_secs", self.device_command_ttl_secs),
            ("agent_poll_max_secs", self.agent_poll_max_secs),
            (
                "database_max_connections",
                u64::from(self.database_max_connections),
            ),
            ("job_concurrency", u64::from(self.job_concurrency)),
            ("job_poll_interval_ms", self.job_poll_interval_ms),
            ("job_lease_seconds", self.job_lease_seconds),
            ("job_max_attempts", u64::from(self.job_max_attempts)),
            ("session_ttl_minutes", self.session_ttl_minutes),
            ("max_body_bytes", self.max_body_bytes as u64),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be greater than 0".to_owned(),
                });
            }
        }
        if self.bootstrap_admin.is_empty()
            || switchboard_domain::accounts::Username::parse(&self.bootstrap_admin).is_err()
        {
            return Err(ConfigError::Invalid {
                key: "bootstrap_admin",
                reason: "must be a valid username (lower-case letters, digits, . _ - @)".to_owned(),
            });
        }
        tracing_filter_ok(&self.log_level).map_err(|reason| ConfigError::Invalid {
            key: "log_level",
            reason,
        })?;
        Ok(())
    }

    /// The database URL in effect (the default is SQLite inside `data_dir`).
    #[must_use]
    pub fn database_url(&self) -> String {
        self.database_url.as_ref().map_or_else(
            || {
                format!(
                    "sqlite://{}",
                    self.data_dir.join("switchboard.db").display()
                )
            },
            |s| s.expose_secret().to_owned(),
        )
    }

    #[must_use]
    pub fn is_sqlite(&self) -> bool {
        self.database_url().starts_with("sqlite:")
    }

    #[must_use]
    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
            .trim_end_matches('/')
            .to_owned()
    }

    #[must_use]
    pub fn master_key_path(&self) -> PathBuf {
        self.master_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("master.key"))
    }

    #[must_use]
    pub fn bootstrap_token_path(&self) -> PathBuf {
        self.bootstrap_token_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("bootstrap-admin-token"))
    }

    /// Pooled PostgreSQL connections kept open when idle: all of them unless configured. A
    /// shift change after a quiet night then finds every connection open, its statements
    /// prepared and planned, instead of opening them and preparing every statement while the
    /// check-ins queue (a fixed-size pool, as HikariCP has by default).
    #[must_use]
    pub fn effective_min_connections(&self) -> u32 {
        self.database_min_connections
            .unwrap_or(self.database_max_connections)
    }

    #[must_use]
    pub fn effective_audit_chains(&self) -> u32 {
        self.audit_chains
            .unwrap_or(if self.is_sqlite() { 1 } else { 16 })
    }

    /// Warnings that do not stop the server but deserve a look (`switchboard config check`).
    #[must_use]
    pub fn warnings(&self, vars: &[(String, String)]) -> Vec<String> {
        let mut w = Vec::new();
        for (k, _) in vars {
            if let Some(rest) = k.strip_prefix(ENV_PREFIX) {
                let key = rest.to_ascii_lowercase();
                if !KEYS.contains(&key.as_str()) && !OTHER_KNOWN_VARS.contains(&k.as_str()) {
                    let hint = closest_key(&key)
                        .map(|c| format!(" (did you mean {ENV_PREFIX}{}?)", c.to_ascii_uppercase()))
                        .unwrap_or_default();
                    w.push(format!(
                        "{k} is not a configuration key and is ignored{hint}"
                    ));
                }
            }
        }
        if !self.listen.ip().is_loopback() && !self.public_url().starts_with("https://") {
            w.push(format!(
                "listen is {} (reachable from the network) but public_url is not https://; put TLS in front and set public_url",
                self.listen
            ));
        }
        if self.is_sqlite() && self.sqlite_synchronous == SqliteSync::Normal {
            w.push(
                "sqlite_synchronous = normal: a power cut may lose the last committed transactions"
                    .to_owned(),
            );
        }
        if self.master_key.is_none() && !self.is_sqlite() {
            w.push("PostgreSQL without master_key: every replica must share the same keyring file (master_key_file)".to_owned());
        }
        w
    }
}

fn parse_env_value(v: &str) -> figment::value::Value {
    // Numbers and booleans from the environment arrive as text; let figment's own parser type them.
    match v.parse::<figment::value::Value>() {
        Ok(value) => value,
        Err(never) => match never {},
    }
}

fn explain(e: &figment::Error) -> String {
    e.clone()
        .into_iter()
        .map(|err| {
            let path = err.path.join(".");
            if path.is_empty() {
                err.kind.to_string()
            } else {
                format!("{path}: {}", err.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn tracing_filter_ok(level: &str) -> Result<(), String> {
    if level.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    let ok = level.split(',').all(|d| {
        let lvl = d.rsplit('=').next().unwrap_or("");
        matches!(
            lvl.trim().to_ascii_lowercase().as_str(),
            "trace" | "debug" | "info" | "warn" | "error" | "off"
        ) || !d.contains('=') && !d.trim().is_empty() && !matches!(d.trim(), "")
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{level}` is not a log filter (try `info` or `switchboard=debug,info`)"
        ))
    }
}

fn closest_key(key: &str) -> Option<&'static str> {
    KEYS.iter()
        .map(|k| (strsim(key, k), *k))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// Levenshtein distance, for "did you mean" hints.
fn strsim(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_need_no_configuration() {
        let c = Config::load_from(None, vars(&[])).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert!(c.database_url().starts_with("sqlite://"));
        assert_eq!(c.effective_audit_chains(), 1);
        assert_eq!(c.sqlite_synchronous, SqliteSync::Full);
    }

    #[test]
    fn the_file_overrides_defaults_and_the_environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:9000\"\njob_concurrency = 3\n").unwrap();
        let c = Config::load_from(Some(&f), vars(&[("SWITCHBOARD_JOB_CONCURRENCY", "5")])).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.job_concurrency, 5);
    }

    #[test]
    fn secret_file_variants_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("db");
        std::fs::write(&f, "postgres://u@h/db\n").unwrap();
        let c = Config::load_from(
            None,
            vars(&[("SWITCHBOARD_DATABASE_URL_FILE", f.to_str().unwrap())]),
        )
        .unwrap();
        assert_eq!(c.database_url(), "postgres://u@h/db");
        assert_eq!(c.effective_audit_chains(), 16);
        assert_eq!(c.effective_min_connections(), c.database_max_connections);
    }

    #[test]
    fn an_unknown_file_key_is_a_loud_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "lisen = \"x\"\n").unwrap();
        let e = Config::load_from(Some(&f), vars(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Config::load_from(None, vars(&[("SWITCHBOARD_DATABASE_URL", "mysql://x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("database_url"), "{e}");
        let e = Config::load_from(None, vars(&[("SWITCHBOARD_AUDIT_CHAINS", "40")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("audit_chains"), "{e}");
        let e = Config::load_from(
            None,
            vars(&[
                ("SWITCHBOARD_DATABASE_MAX_CONNECTIONS", "8"),
                ("SWITCHBOARD_DATABASE_MIN_CONNECTIONS", "9"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("database_min_connections"), "{e}");
        let e = Config::load_from(None, vars(&[("SWITCHBOARD_LISTEN", "nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let e = Config::load_from(Some(Path::new("/nonexistent/x.toml")), vars(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such file"), "{e}");
    }

    #[test]
    fn the_example_file_parses_and_every_key_is_documented() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let example = root.join("config/example.toml");
        Config::load_from(Some(&example), vars(&[])).unwrap();
        let example_text = std::fs::read_to_string(&example).unwrap();
        let doc = std::fs::read_to_string(root.join("docs/CONFIG.md")).unwrap();
        for key in KEYS {
            assert!(
                example_text.contains(&format!("{key} =")),
                "config/example.toml lacks {key}"
            );
            assert!(
                doc.contains(&format!("`{key}`")),
                "docs/CONFIG.md lacks {key}"
            );
        }
    }

    #[test]
    fn misspelt_variables_are_warned_about_with_a_suggestion() {
        let c = Config::load_from(None, vars(&[])).unwrap();
        let w = c.warnings(&vars(&[("SWITCHBOARD_DATABSE_URL", "x")]));
        assert!(
            w.iter().any(|m| m.contains("SWITCHBOARD_DATABASE_URL")),
            "{w:?}"
        );
    }
}
