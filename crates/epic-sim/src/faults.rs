//! Fault injection and the call journal, as one middleware in front of every Epic route.
//!
//! A rule matches requests by path substring (and optionally method) and, with a probability
//! drawn from the simulator's seeded generator, answers with an error status, adds latency, hangs
//! (a timeout from the client's view), drops the connection, or — inside an outage window —
//! fails everything it matches. `/_sim/...` routes are never faulted nor journaled.

use crate::state::{Call, Sim, lock, lock_r, now_ms};
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;

const MAX_JOURNALED_BODY: usize = 64 * 1024;
const MAX_BODY: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRule {
    /// Matches when the request path contains this text (`/oauth2/token`, `DisassociateMobileDevice`).
    pub path_contains: String,
    #[serde(default)]
    pub method: Option<String>,
    /// Probability (0–1) that a matching request is faulted; 1 when omitted.
    #[serde(default = "one")]
    pub rate: f64,
    /// What a faulted request gets.
    pub effect: Effect,
    /// Added to every matching request, faulted or not.
    #[serde(default)]
    pub latency_ms: u64,
    /// Outage window (Unix ms): outside it the rule does nothing.
    #[serde(default)]
    pub from_ms: Option<i64>,
    #[serde(default)]
    pub until_ms: Option<i64>,
    /// Stop after this many faults.
    #[serde(default)]
    pub max_faults: Option<u64>,
    #[serde(default, skip_deserializing)]
    pub faulted: u64,
}

const fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Effect {
    /// Answer with this status and an Epic-style `{"Message": ...}` body.
    Status { status: u16 },
    /// Never answer (the client times out); the request is held for `hold_ms` (default 120 s).
    Timeout { hold_ms: Option<u64> },
    /// Close the connection without a complete answer.
    Drop,
    /// Only the rule's latency.
    None,
}

enum Decision {
    Pass { latency: u64 },
    Fault { latency: u64, effect: Effect },
}

fn decide(sim: &Sim, method: &str, path: &str) -> Decision {
    let mut rules = crate::state::lock_w(&sim.inner.faults);
    let now = now_ms();
    let mut latency = 0;
    for rule in rules.iter_mut() {
        if !path.contains(&rule.path_contains)
            || rule
                .method
                .as_deref()
                .is_some_and(|m| !m.eq_ignore_ascii_case(method))
        {
            continue;
        }
        if rule.from_ms.is_some_and(|f| now < f)
            || rule.until_ms.is_some_and(|u| now >= u)
            || rule.max_faults.is_some_and(|m| rule.faulted >= m)
        {
            continue;
        }
        latency += rule.latency_ms;
        if rule.effect == Effect::None {
            continue;
        }
        let roll = lock(&sim.inner.fault_rng).unit();
        if roll < rule.rate {
            rule.faulted += 1;
            return Decision::Fault {
                latency,
                effect: rule.effect.clone(),
            };
        }
    }
    Decision::Pass { latency }
}

fn interesting_headers(req: &Request<Body>) -> HashMap<String, String> {
    let mut h = HashMap::new();
    for name in [
        "content-type",
        "accept",
        "epic-client-id",
        "epic-user-id",
        "epic-user-idtype",
        "user-agent",
    ] {
        if let Some(v) = req.headers().get(name).and_then(|v| v.to_str().ok()) {
            h.insert(name.to_owned(), v.to_owned());
        }
    }
    if let Some(v) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        h.insert(
            "authorization-scheme".to_owned(),
            v.split(' ').next().unwrap_or("").to_owned(),
        );
    }
    h
}

pub async fn journal_and_faults(State(sim): State<Sim>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if path.starts_with("/_sim") {
        return next.run(req).await;
    }
    let started = std::time::Instant::now();
    let method = req.method().as_str().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let headers = interesting_headers(&req);
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => Bytes::new(),
    };
    let body_text =
        String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_JOURNALED_BODY)]).into_owned();
    let decision = decide(&sim, &method, &path);
    let (latency, fault) = match decision {
        Decision::Pass { latency } => (latency, None),
        Decision::Fault { latency, effect } => (latency, Some(effect)),
    };
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let (resp, fault_label) = match fault {
        None => (
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await,
            None,
        ),
        Some(Effect::Status { status }) => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (
                (
                    code,
                    axum::Json(
                        serde_json::json!({"Message": format!("Injected fault: HTTP {status}")}),
                    ),
                )
                    .into_response(),
                Some(format!("status {status}")),
            )
        }
        Some(Effect::Timeout { hold_ms }) => {
            tokio::time::sleep(Duration::from_millis(hold_ms.unwrap_or(120_000))).await;
            (
                StatusCode::GATEWAY_TIMEOUT.into_response(),
                Some("timeout".to_owned()),
            )
        }
        Some(Effect::Drop) => {
            let stream = futures_util::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other("injected connection drop"))
            });
            let mut r = Response::new(Body::from_stream(stream));
            r.headers_mut().insert(
                header::CONTENT_LENGTH,
                header::HeaderValue::from_static("100"),
            );
            (r, Some("drop".to_owned()))
        }
        Some(Effect::None) => (
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await,
            None,
        ),
    };
    let call = Call {
        seq: sim
            .inner
            .journal_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1,
        at_ms: now_ms(),
        method,
        path,
        query,
        headers,
        body: body_text,
        status: resp.status().as_u16(),
        fault: fault_label,
        latency_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    let cap = sim.config().journal_capacity.max(1);
    let mut j = lock(&sim.inner.journal);
    while j.len() >= cap {
        j.pop_front();
    }
    j.push_back(call);
    drop(j);
    resp
}

impl Sim {
    pub fn add_fault(&self, rule: FaultRule) {
        crate::state::lock_w(&self.inner.faults).push(rule);
    }

    pub fn clear_faults(&self) {
        crate::state::lock_w(&self.inner.faults).clear();
    }

    #[must_use]
    pub fn faults(&self) -> Vec<FaultRule> {
        lock_r(&self.inner.faults).clone()
    }
}

/// Parses the command line's `PATH_PART:EFFECT[:RATE]` (EFFECT: an HTTP status, `timeout`, `drop`).
pub fn parse_fault_spec(spec: &str) -> Result<FaultRule, String> {
    let mut parts = spec.split(':');
    let path = parts
        .next()
        .filter(|p| !p.is_empty())
        .ok_or("the path part is empty")?;
    let effect = match parts.next().ok_or("expected PATH_PART:EFFECT[:RATE]")? {
        "timeout" => Effect::Timeout { hold_ms: None },
        "drop" => Effect::Drop,
        code => {
            let status: u16 = code
                .parse()
                .map_err(|_| format!("`{code}` is not an HTTP status, `timeout` or `drop`"))?;
            if !(100..=599).contains(&status) {
                return Err(format!("{status} is not an HTTP status"));
            }
            Effect::Status { status }
        }
    };
    let rate = match parts.next() {
        Some(r) => r
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or("the rate must be a number between 0 and 1")?,
        None => 1.0,
    };
    if parts.next().is_some() {
        return Err("too many parts".to_owned());
    }
    Ok(FaultRule {
        path_contains: path.to_owned(),
        method: None,
        rate,
        effect,
        latency_ms: 0,
        from_ms: None,
        until_ms: None,
        max_faults: None,
        faulted: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs_parse_and_mistakes_are_named() {
        let r = parse_fault_spec("DisassociateMobileDevice:503:0.2").unwrap();
        assert_eq!((r.effect, r.rate), (Effect::Status { status: 503 }, 0.2));
        assert_eq!(
            parse_fault_spec("/oauth2/token:drop").unwrap().effect,
            Effect::Drop
        );
        assert!(parse_fault_spec("x:teapot").unwrap_err().contains("teapot"));
        assert!(parse_fault_spec("x:503:2").unwrap_err().contains("rate"));
        assert!(parse_fault_spec(":503").is_err());
    }
}
