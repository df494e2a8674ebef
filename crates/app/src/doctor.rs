//! The connection doctor ("Test connection") and "Test Epic API logout" for an Epic environment.
//! Each step says pass / fail / skipped with a plain-language cause and fix; results are stored
//! with their time and audited.

use crate::epic_env::oauth_base;
use crate::{App, AppError, Principal, RequestContext, now_ms};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use switchboard_domain::audit::AuditEvent;
use switchboard_domain::devices::LogoutAttempt;
use switchboard_store::ConnectionCheckRow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Pass,
    /// Works, but needs attention soon (e.g. a certificate close to expiry).
    Warn,
    Fail,
    Skipped,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub name: String,
    pub status: StepStatus,
    pub detail: String,
    /// What to do about a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    pub elapsed_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub environment_id: String,
    pub kind: String,
    pub at: i64,
    pub ok: bool,
    pub steps: Vec<Step>,
}

fn step(
    name: &str,
    status: StepStatus,
    detail: impl Into<String>,
    hint: Option<&str>,
    started: std::time::Instant,
) -> Step {
    Step {
        name: name.to_owned(),
        status,
        detail: detail.into(),
        hint: hint.map(str::to_owned),
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

fn skipped(name: &str, why: &str) -> Step {
    Step {
        name: name.to_owned(),
        status: StepStatus::Skipped,
        detail: why.to_owned(),
        hint: None,
        elapsed_ms: 0,
    }
}

/// Describes a TLS or connection failure from reqwest's error chain without URLs.
fn tls_cause(e: &reqwest::Error) -> Option<&'static str> {
    let mut src: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = src {
        let text = s.to_string().to_ascii_lowercase();
        if text.contains("expired") {
            return Some("the server's TLS certificate has expired");
        }
        if text.contains("unknown issuer") || text.contains("unknownissuer") {
            return Some(
                "the server's TLS certificate is not signed by a trusted authority (a private CA needs its bundle configured)",
            );
        }
        if text.contains("not valid for name") || text.contains("notvalidforname") {
            return Some("the server's TLS certificate does not match its host name");
        }
        if text.contains("certificate") || text.contains("handshake") {
            return Some("the TLS handshake failed");
        }
        src = s.source();
    }
    None
}

/// Reads one DER element: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (
            rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
            &rest[n..],
        )
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Days since 1970-01-01 of a calendar date (0 for a date that does not exist).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let date = i32::try_from(y).ok().and_then(|y| {
        chrono::NaiveDate::from_ymd_opt(y, u32::try_from(m).ok()?, u32::try_from(d).ok()?)
    });
    date.and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(0, |t| t.and_utc().timestamp().div_euclid(86_400))
}

/// `notAfter` of an X.509 certificate (DER), in Unix seconds.
#[must_use]
pub fn cert_not_after(cert: &[u8]) -> Option<i64> {
    let (_, certificate, _) = der(cert)?;
    let (_, tbs, _) = der(certificate)?;
    let mut rest = tbs;
    let (tag, _, after_version) = der(rest)?;
    if tag == 0xA0 {
        rest = after_version;
    }
    for _ in 0..3 {
        rest = der(rest)?.2; // serialNumber, signature, issuer
    }
    let (_, validity, _) = der(rest)?;
    let (_, _, after_not_before) = der(validity)?;
    let (tag, t, _) = der(after_not_before)?;
    let text = std::str::from_utf8(t).ok()?;
    let num = |a: usize, b: usize| text.get(a..b).and_then(|x| x.parse::<i64>().ok());
    let (year, o) = match tag {
        0x17 => {
            let yy = num(0, 2)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
        }
        0x18 => (num(0, 4)?, 4),
        _ => return None,
    };
    let (mo, d, h, mi, se) = (
        num(o, o + 2)?,
        num(o + 2, o + 4)?,
        num(o + 4, o + 6)?,
        num(o + 6, o + 8)?,
        num(o + 8, o + 10)?,
    );
    Some(days_from_civil(year, mo, d) * 86_400 + h * 3600 + mi * 60 + se)
}

impl App {
    pub(crate) async fn environment_row(
        &self,
        env_id: &str,
    ) -> Result<switchboard_store::EnvironmentRow, AppError> {
        let mut tx = self.store().read().await?;
        tx.get_environment(env_id)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("Epic environment {env_id}")))
    }

    async fn record_check(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        report: &CheckReport,
    ) -> Result<(), AppError> {
        let mut tx = self.store().begin().await?;
        tx.insert_connection_check(&ConnectionCheckRow {
            id: switchboard_domain::ids::SecretId::new().to_string(),
            environment_id: report.environment_id.clone(),
            kind: report.kind.clone(),
            at: report.at,
            ok: report.ok,
            steps: serde_json::to_string(&report.steps)
                .map_err(|e| AppError::Internal(e.to_string()))?,
        })
        .await?;
        let failed: Vec<&str> = report
            .steps
            .iter()
            .filter(|s| s.status == StepStatus::Fail)
            .map(|s| s.name.as_str())
            .collect();
        let ev = AuditEvent::new(
            "",
            format!("epic_environment.{}_tested", report.kind),
            format!("epic_environment:{}", report.environment_id),
        )
        .with_details(serde_json::json!({"ok": report.ok, "failed_steps": failed}));
        self.audit(&mut *tx, p, ctx, ev).await?;
        tx.commit().await?;
        Ok(())
    }

    /// DNS → TCP → TLS → metadata → token, stopping at the first step everything after depends on.
    pub async fn test_connection(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        env_id: &str,
    ) -> Result<CheckReport, AppError> {
        let env = self.get_environment(env_id).await?;
        let url = url::Url::parse(&env.interconnect_url)
            .map_err(|e| AppError::Internal(format!("stored URL: {e}")))?;
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port_or_known_default().unwrap_or(443);
        let timeout = Duration::from_millis(u64::try_from(env.timeout_ms).unwrap_or(15_000));
        let mut steps = Vec::new();

        let t = std::time::Instant::now();
        let addrs =
            match tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), port)))
                .await
            {
                Ok(Ok(a)) => a.collect::<Vec<_>>(),
                _ => Vec::new(),
            };
        if addrs.is_empty() {
            steps.push(step("dns", StepStatus::Fail, format!("`{host}` does not resolve"), Some("Check the Interconnect server URL, and that this server can resolve it (DNS, split horizon, /etc/hosts)."), t));
        } else {
            steps.push(step(
                "dns",
                StepStatus::Pass,
                format!("`{host}` resolves to {} address(es)", addrs.len()),
                None,
                t,
            ));
        }

        let t = std::time::Instant::now();
        let tcp_ok = if addrs.is_empty() {
            steps.push(skipped("tcp", "no address to connect to"));
            false
        } else {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addrs[0])).await {
                Ok(Ok(_)) => {
                    steps.push(step(
                        "tcp",
                        StepStatus::Pass,
                        format!("connected to port {port}"),
                        None,
                        t,
                    ));
                    true
                }
                Ok(Err(e)) => {
                    steps.push(step("tcp", StepStatus::Fail, format!("connection to port {port} failed ({})", e.kind()), Some("A firewall, proxy or the wrong port blocks the way to Interconnect; it must be reachable from this server."), t));
                    false
                }
                Err(_) => {
                    steps.push(step("tcp", StepStatus::Fail, format!("no answer on port {port} within {} ms", env.timeout_ms), Some("A firewall is probably dropping the connection; ask the network team to allow this server to reach Interconnect."), t));
                    false
                }
            }
        };

        let row = self.environment_row(env_id).await?;
        let http = self.epic_http(&row)?;
        let t = std::time::Instant::now();
        if tcp_ok {
            self.epic_permit(&row).await?;
        }
        let metadata = if tcp_ok {
            Some(
                http.get(format!(
                    "{}/api/FHIR/R4/metadata",
                    oauth_base(&env.interconnect_url, &env.instance)
                ))
                .header("accept", "application/fhir+json")
                .send()
                .await,
            )
        } else {
            None
        };
        match (&metadata, url.scheme()) {
            (None, _) => steps.push(skipped("tls", "no connection")),
            (Some(_), "http") => steps.push(skipped(
                "tls",
                "http:// (allowed for non-production and for a simulator on this machine only)",
            )),
            (Some(Err(e)), _) if tls_cause(e).is_some() => {
                steps.push(step("tls", StepStatus::Fail, tls_cause(e).unwrap_or_default(), Some("Epic requires a valid certificate: renew it, fix the host name, or configure the hospital's CA bundle."), t));
            }
            (Some(Ok(resp)), _) => {
                let not_after = resp
                    .extensions()
                    .get::<reqwest::tls::TlsInfo>()
                    .and_then(|i| i.peer_certificate())
                    .and_then(cert_not_after);
                match not_after {
                    Some(at) => {
                        let days = (at - now_ms() / 1000) / 86_400;
                        if days < 30 {
                            steps.push(step("tls", StepStatus::Warn, format!("the certificate is valid but expires in {days} days"), Some("Renew Interconnect's TLS certificate before it expires: Epic calls fail from that moment."), t));
                        } else {
                            steps.push(step(
                                "tls",
                                StepStatus::Pass,
                                format!(
                                    "the certificate is valid for the host and for {days} more days"
                                ),
                                None,
                                t,
                            ));
                        }
                    }
                    None => steps.push(step(
                        "tls",
                        StepStatus::Pass,
                        "the certificate is valid for the host",
                        None,
                        t,
                    )),
                }
            }
            (Some(Err(_)), _) => steps.push(step(
                "tls",
                StepStatus::Pass,
                "the certificate is valid for the host",
                None,
                t,
            )),
        }
        match &metadata {
            None => steps.push(skipped("metadata", "no connection")),
            Some(Ok(r)) if r.status().is_success() => steps.push(step("metadata", StepStatus::Pass, "the FHIR CapabilityStatement answered", None, t)),
            Some(Ok(r)) => steps.push(step(
                "metadata",
                StepStatus::Fail,
                format!("the FHIR metadata answered HTTP {}", r.status().as_u16()),
                Some("Check the instance name: Switchboard calls {interconnect}/{instance}-oauth/api/FHIR/R4/metadata."),
                t,
            )),
            Some(Err(e)) if tls_cause(e).is_some() => steps.push(skipped("metadata", "TLS failed")),
            Some(Err(e)) => steps.push(step("metadata", StepStatus::Fail, format!("the FHIR metadata request {}", crate::outbound_error(e)), Some("Interconnect did not answer in time; check its health and the timeout."), t)),
        }

        let t = std::time::Instant::now();
        if tcp_ok {
            if let Ok(creds) = self.backend_credentials(env_id).await {
                self.epic_tokens().invalidate(&creds);
            }
            match self.epic_token(env_id).await {
                Ok(_) => steps.push(step(
                    "token",
                    StepStatus::Pass,
                    format!("client {} got an access token", env.client_id),
                    None,
                    t,
                )),
                Err(crate::epic_env::EpicTokenError::Epic(e)) => steps.push(step(
                    "token",
                    StepStatus::Fail,
                    format!("{}: {e}", e.class()),
                    Some(token_hint(e.class())),
                    t,
                )),
                Err(crate::epic_env::EpicTokenError::App(e)) => {
                    steps.push(step("token", StepStatus::Fail, e.to_string(), None, t))
                }
            }
        } else {
            steps.push(skipped("token", "no connection"));
        }
        let report = CheckReport {
            environment_id: env_id.to_owned(),
            kind: "connection".to_owned(),
            at: now_ms(),
            ok: steps.iter().all(|s| s.status != StepStatus::Fail),
            steps,
        };
        self.record_check(p, ctx, &report).await?;
        Ok(report)
    }

    /// Calls DisassociateMobileDevice for a device serial and app, outside any check-in.
    /// The Install ID is the serial with the app name appended when `append_app_name` is set.
    pub async fn test_logout(
        &self,
        p: &Principal,
        ctx: &RequestContext,
        env_id: &str,
        serial: &str,
        app_name: &str,
        append_app_name: bool,
    ) -> Result<CheckReport, AppError> {
        let mut errors = switchboard_domain::ValidationErrors::new();
        if serial.trim().is_empty()
            || serial.len() > 64
            || !serial
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            errors.add(
                "serial",
                "must be a device serial number or UUID (letters, digits, '-')",
            );
        }
        errors.check("app", switchboard_domain::epic::check_app(app_name));
        errors.into_result()?;
        self.get_environment(env_id).await?;
        let install_id = if append_app_name {
            format!("{serial}{app_name}")
        } else {
            serial.to_owned()
        };
        let t = std::time::Instant::now();
        let mut steps = Vec::new();
        let attempt = self.disassociate_device(env_id, &install_id).await?;
        if let LogoutAttempt::NoToken { class, detail } = &attempt {
            steps.push(step(
                "token",
                StepStatus::Fail,
                detail.clone(),
                Some(token_hint(class)),
                t,
            ));
            steps.push(skipped("logout", "no access token"));
        } else {
            steps.push(step(
                "token",
                StepStatus::Pass,
                "access token available",
                None,
                t,
            ));
            let (status, message, hint) = match attempt {
                LogoutAttempt::Accepted => (
                    StepStatus::Pass,
                    format!(
                        "Install ID {install_id} was disassociated; the app returns to its sign-in screen"
                    ),
                    None,
                ),
                LogoutAttempt::InstallIdNotFound => (
                    StepStatus::Fail,
                    format!("Epic does not know Install ID {install_id}"),
                    Some(
                        "No user has signed in to the app on this device since its AppConfig (EpicMobileDeviceID, EpicMobileDeviceIDAppName) was applied, or the Install ID format differs (check the app name's case).",
                    ),
                ),
                LogoutAttempt::Status(code) => (
                    StepStatus::Fail,
                    format!("Epic answered HTTP {code}"),
                    Some(if code == 403 {
                        "DisassociateMobileDevice is not attached to this client in Epic; ask your Epic team."
                    } else {
                        "See Epic's Interconnect logs for this request."
                    }),
                ),
                LogoutAttempt::TimedOut => (
                    StepStatus::Fail,
                    "the request timed out".to_owned(),
                    Some(
                        "Interconnect must be reachable from this server with a valid TLS certificate.",
                    ),
                ),
                LogoutAttempt::NotSent(why) | LogoutAttempt::NoToken { detail: why, .. } => (
                    StepStatus::Fail,
                    format!("the request failed: {why}"),
                    Some(
                        "Interconnect must be reachable from this server with a valid TLS certificate.",
                    ),
                ),
            };
            steps.push(step("logout", status, message, hint, t));
        }
        let report = CheckReport {
            environment_id: env_id.to_owned(),
            kind: "logout".to_owned(),
            at: now_ms(),
            ok: steps.iter().all(|s| s.status != StepStatus::Fail),
            steps,
        };
        self.record_check(p, ctx, &report).await?;
        Ok(report)
    }

    /// The newest stored result of a check (`connection` or `logout`).
    pub async fn latest_check(&self, env_id: &str, kind: &str) -> Result<CheckReport, AppError> {
        let mut tx = self.store().read().await?;
        let row = tx
            .latest_connection_check(env_id, kind)
            .await?
            .ok_or_else(|| AppError::NotFound(format!("a {kind} test of environment {env_id}")))?;
        Ok(CheckReport {
            environment_id: row.environment_id,
            kind: row.kind,
            at: row.at,
            ok: row.ok,
            steps: serde_json::from_str(&row.steps)
                .map_err(|e| AppError::Internal(e.to_string()))?,
        })
    }
}

fn token_hint(class: &str) -> &'static str {
    match class {
        "not_mapped" => {
            "Ask your Epic client systems administrator to map a background user to this client (Interconnect Administrator's menu → OAuth2 Management)."
        }
        "rejected" => {
            "Register this environment's JWK URL with Epic; a newly registered JWK URL can take up to 12 hours to sync, and authentication fails until then."
        }
        "epic_down" => {
            "Epic's token endpoint is failing; try again later or check Interconnect's health."
        }
        "network" => "Interconnect's OAuth endpoint could not be reached.",
        _ => "Check the token URL, the client id and the environment's settings.",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_days_match_known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 24) * 86_400, 1_795_478_400);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert_eq!(cert_not_after(b""), None);
        assert_eq!(cert_not_after(&[0x30, 0x03, 0x02, 0x01, 0x01]), None);
    }
}
