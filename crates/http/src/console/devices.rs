//! Console pages for shared devices: the device list with its filters, the per-location
//! dashboard, a device's page (facts, check-in receipts, commands, timeline and the operator's
//! actions), device groups with their check-in workflows, locations with their kiosk keys,
//! enrolment tokens, and the directory of clinicians who borrow devices.

use super::{Chrome, Console, app_error, fmt_time, query_string, render};
use crate::AppState;
use crate::error::{Form, Query, UploadForm};
use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use std::collections::HashMap;
use switchboard_app::AppError;
use switchboard_app::devices::{
    DeviceGroup, DeviceGroupInput, DeviceUserInput, EnrolmentTokenInput, LocationInput, Workflows,
};
use switchboard_app::lending::{CommandInput, DeviceQuery, LostInput, Receipt};
use switchboard_domain::devices::{RequiredApp, StepSpec};
use switchboard_domain::{FieldError, Permission};

mod appconfig;
mod sso;

const CURRENT: &str = "devices";

pub fn router() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/console/devices", get(list_page))
        .route("/console/devices/dashboard", get(dashboard))
        .route("/console/devices/groups", get(groups_page).post(save_group))
        .route("/console/devices/locations", post(create_location))
        .route("/console/devices/enrolment-tokens", post(create_token))
        .route(
            "/console/devices/enrolment-tokens/{id}/revoke",
            post(revoke_token),
        )
        .route("/console/devices/users", get(users_page).post(add_user))
        .route("/console/devices/users/import", post(import_users))
        .route("/console/devices/{id}", get(device_page))
        .route("/console/devices/{id}/{action}", post(device_action))
        .merge(sso::router())
        .merge(appconfig::router())
}

/// What a form post re-renders its page with.
struct Outcome {
    status: StatusCode,
    notice: Option<String>,
    error: Option<String>,
    errors: Vec<FieldError>,
}

impl Outcome {
    const fn ok() -> Self {
        Self {
            status: StatusCode::OK,
            notice: None,
            error: None,
            errors: Vec::new(),
        }
    }

    fn notice(m: String) -> Self {
        Self {
            notice: Some(m),
            ..Self::ok()
        }
    }

    fn error(status: StatusCode, m: String) -> Self {
        Self {
            status,
            error: Some(m),
            ..Self::ok()
        }
    }

    fn invalid(errors: Vec<FieldError>) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            error: Some("Nothing was saved: correct the fields below.".to_owned()),
            errors,
            ..Self::ok()
        }
    }

    /// A CSV import refused as a whole (its per-line errors go beside the form).
    fn import_refused() -> Self {
        Self {
            error: Some(
                "Nothing was imported: the file has errors (below). Correct them and paste it again."
                    .to_owned(),
            ),
            ..Self::invalid(Vec::new())
        }
    }

    /// The outcome of a failed use case when it is one the page can show (else `None`).
    fn from_error(e: &AppError) -> Option<Self> {
        match e {
            AppError::Validation(v) => Some(Self::invalid(v.errors.clone())),
            AppError::Conflict(m) => Some(Self::error(StatusCode::CONFLICT, m.clone())),
            _ => None,
        }
    }
}

fn dash(v: Option<impl std::fmt::Display>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| v.to_string())
}

fn yes_no(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "—",
    }
}

/// "3 min ago" and the like, for heartbeats.
fn ago(at: i64, now: i64) -> String {
    let s = (now - at).max(0) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=172_799 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    }
}

fn minutes(m: i64) -> String {
    if m % 60 == 0 {
        format!("{} h", m / 60)
    } else if m > 60 {
        format!("{} h {} min", m / 60, m % 60)
    } else {
        format!("{m} min")
    }
}

fn status_label(s: &str) -> String {
    s.replace('_', " ")
}

// ------------------------------------------------------------------ the device list

#[derive(Deserialize, Default)]
struct ListQuery {
    status: Option<String>,
    location: Option<String>,
    platform: Option<String>,
    readiness: Option<String>,
    group: Option<String>,
}

struct DeviceLine {
    id: String,
    name: String,
    serial: String,
    platform: String,
    location: String,
    status: String,
    status_label: String,
    holder: String,
    due: String,
    overdue: bool,
    battery: String,
    docked: &'static str,
    heartbeat: String,
    ready: bool,
    not_ready: String,
    lost: bool,
}

struct Choice {
    value: String,
    label: String,
}

fn choices(pairs: &[(&str, &str)]) -> Vec<Choice> {
    pairs
        .iter()
        .map(|(v, l)| Choice {
            value: (*v).to_owned(),
            label: (*l).to_owned(),
        })
        .collect()
}

#[derive(Template)]
#[template(path = "devices.html")]
struct ListPage {
    chrome: Chrome,
    error: Option<String>,
    devices: Vec<DeviceLine>,
    f_status: String,
    f_location: String,
    f_platform: String,
    f_readiness: String,
    f_group: String,
    statuses: Vec<Choice>,
    locations: Vec<Choice>,
    platforms: Vec<Choice>,
    readiness: Vec<Choice>,
    filtered: bool,
}

async fn list_page(State(s): State<AppState>, c: Console, Query(q): Query<ListQuery>) -> Response {
    if let Some(r) = c.denied(Permission::Read, CURRENT) {
        return r;
    }
    let keep = |v: Option<String>| v.map(|v| v.trim().to_owned()).unwrap_or_default();
    let (f_status, f_location, f_platform, f_readiness, f_group) = (
        keep(q.status),
        keep(q.location),
        keep(q.platform),
        keep(q.readiness),
        keep(q.group),
    );
    let some = |v: &str| Some(v.to_owned()).filter(|v| !v.is_empty());
    let query = DeviceQuery {
        status: some(&f_status),
        location: some(&f_location),
        platform: some(&f_platform),
        group: some(&f_group),
        readiness: some(&f_readiness),
    };
    let locations = match s.app.list_locations().await {
        Ok(l) => l,
        Err(e) => return app_error(c.chrome(CURRENT), e),
    };
    let names: HashMap<String, String> = locations
        .iter()
        .map(|l| (l.id.clone(), l.name.clone()))
        .collect();
    let (status, error, devices) = match s.app.list_devices(&query).await {
        Ok(d) => (StatusCode::OK, None, d),
        Err(AppError::Validation(v)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some(v.to_string()),
            Vec::new(),
        ),
        Err(e) => return app_error(c.chrome(CURRENT), e),
    };
    let now = switchboard_app::now_ms();
    let devices = devices
        .into_iter()
        .map(|d| DeviceLine {
            location: d
                .location_id
                .as_ref()
                .map_or_else(|| "—".to_owned(), |l| names.get(l).unwrap_or(l).clone()),
            status_label: status_label(&d.status),
            holder: d
                .holder
                .as_ref()
                .map_or_else(|| "—".to_owned(), |h| h.display_name.clone()),
            due: d.due_at.map_or_else(|| "—".to_owned(), fmt_time),
            battery: d.battery.map_or_else(
                || "—".to_owned(),
                |b| {
                    format!(
                        "{b}%{}",
                        if d.charging == Some(true) {
                            " (charging)"
                        } else {
                            ""
                        }
                    )
                },
            ),
            docked: yes_no(d.docked),
            heartbeat: d
                .last_heartbeat_at
                .map_or_else(|| "never".to_owned(), |t| ago(t, now)),
            not_ready: d.not_ready.join("; "),
            lost: d.lost_at.is_some(),
            overdue: d.overdue,
            ready: d.ready,
            id: d.id,
            name: d.name,
            serial: d.serial,
            platform: d.platform,
            status: d.status,
        })
        .collect();
    let filtered = [&f_status, &f_location, &f_platform, &f_readiness, &f_group]
        .iter()
        .any(|v| !v.is_empty());
    render(
        status,
        &ListPage {
            chrome: c.chrome(CURRENT),
            error,
            devices,
            statuses: choices(&[
                ("available", "available"),
                ("checked_out", "checked out"),
                ("overdue", "overdue"),
                ("returning", "returning"),
                ("attention", "attention"),
            ]),
            locations: locations
                .into_iter()
                .map(|l| Choice {
                    value: l.id,
                    label: l.name,
                })
                .collect(),
            platforms: choices(&[("ios", "iOS"), ("android", "Android")]),
            readiness: choices(&[("ready", "ready"), ("not_ready", "not ready")]),
            f_status,
            f_location,
            f_platform,
            f_readiness,
            f_group,
            filtered,
        },
    )
}

// ------------------------------------------------------------------ the dashboard

struct SummaryLine {
    id: String,
    name: String,
    available: usize,
    checked_out: usize,
    overdue: usize,
    returning: usize,
    attention: usize,
    not_ready: usize,
    lost: usize,
    overdue_link: String,
    not_ready_link: String,
    location_link: String,
}

/// A device check-out skips, and why.
struct NotReadyLine {
    name: String,
    link: String,
    location: String,
    reasons: Vec<String>,
}

/// The dashboard lists at most this many devices that are not ready.
const NOT_READY_SHOWN: usize = 50;

#[derive(Template)]
#[template(path = "devices_dashboard.html")]
struct DashboardPage {
    chrome: Chrome,
    rows: Vec<SummaryLine>,
    not_ready: Vec<NotReadyLine>,
    not_ready_more: usize,
    updated: String,
}

async fn dashboard(State(s): State<AppState>, c: Console) -> Response {
    if let Some(r) = c.denied(Permission::Read, CURRENT) {
        return r;
    }
    let not_ready = s
        .app
        .list_devices(&DeviceQuery {
            readiness: Some("not_ready".to_owned()),
            ..Default::default()
        })
        .await;
    match s
        .app
        .location_summaries()
        .await
        .and_then(|l| Ok((l, not_ready?)))
    {
        Ok((list, not_ready)) => render(
            StatusCode::OK,
            &DashboardPage {
                chrome: c.chrome(CURRENT),
                not_ready_more: not_ready.len().saturating_sub(NOT_READY_SHOWN),
                not_ready: not_ready
                    .into_iter()
                    .take(NOT_READY_SHOWN)
                    .map(|d| NotReadyLine {
                        link: format!("/console/devices/{}", d.id),
                        location: list
                            .iter()
                            .find(|l| Some(&l.location_id) == d.location_id.as_ref())
                            .map_or_else(|| "—".to_owned(), |l| l.name.clone()),
                        name: d.name,
                        reasons: d.not_ready,
                    })
                    .collect(),
                rows: list
                    .into_iter()
                    .map(|l| SummaryLine {
                        overdue_link: format!(
                            "/console/devices?{}",
                            query_string(&[("status", "overdue"), ("location", &l.location_id)])
                        ),
                        location_link: format!(
                            "/console/devices?{}",
                            query_string(&[("location", &l.location_id)])
                        ),
                        not_ready_link: format!(
                            "/console/devices?{}",
                            query_string(&[
                                ("readiness", "not_ready"),
                                ("location", &l.location_id)
                            ])
                        ),
                        id: l.location_id,
                        name: l.name,
                        available: l.available,
                        checked_out: l.checked_out,
                        overdue: l.overdue,
                        returning: l.returning,
                        attention: l.attention,
                        not_ready: l.not_ready,
                        lost: l.lost,
                    })
                    .collect(),
                updated: fmt_time(switchboard_app::now_ms()),
            },
        ),
        Err(e) => app_error(c.chrome(CURRENT), e),
    }
}

// ------------------------------------------------------------------ one device

struct Fact {
    name: &'static str,
    value: String,
}

struct StepRow {
    number: i64,
    description: String,
    side: String,
    mandatory: bool,
    status: String,
    detail: String,
    install_id: String,
    attempts: String,
}

struct ReceiptCard {
    id: String,
    status: String,
    status_label: String,
    started: String,
    completed: String,
    requested_by: String,
    user: String,
    warnings: Vec<String>,
    steps: Vec<StepRow>,
}

fn receipt_card(r: Receipt) -> ReceiptCard {
    ReceiptCard {
        status_label: status_label(&r.status),
        started: fmt_time(r.started_at),
        completed: r.completed_at.map_or_else(|| "—".to_owned(), fmt_time),
        user: r.user.map_or_else(
            || "—".to_owned(),
            |u| format!("{} ({})", u.display_name, u.username),
        ),
        steps: r
            .steps
            .into_iter()
            .map(|s| StepRow {
                number: s.position + 1,
                description: s.description,
                side: s.side,
                mandatory: s.mandatory,
                status: s.status,
                detail: s.detail,
                install_id: s.install_id.unwrap_or_default(),
                attempts: if s.repeats > 0 {
                    format!("{} ({} repeated)", s.attempts, s.repeats)
                } else {
                    s.attempts.to_string()
                },
            })
            .collect(),
        id: r.id,
        status: r.status,
        requested_by: r.requested_by,
        warnings: r.warnings,
    }
}

struct CommandLine {
    kind: String,
    state: String,
    created: String,
    finished: String,
    result: String,
    checkin: String,
}

struct TimelineLine {
    at: String,
    kind: String,
    text: String,
}

#[derive(Template)]
#[template(path = "devices_device.html")]
struct DevicePage {
    chrome: Chrome,
    notice: Option<String>,
    error: Option<String>,
    errors: Vec<FieldError>,
    id: String,
    name: String,
    serial: String,
    status: String,
    status_label: String,
    overdue: bool,
    holder: String,
    facts: Vec<Fact>,
    install_ids: Vec<(String, String)>,
    warnings: Vec<String>,
    not_ready: Vec<String>,
    apps: Vec<String>,
    receipts: Vec<ReceiptCard>,
    commands: Vec<CommandLine>,
    timeline: Vec<TimelineLine>,
    /// Lost mode: (since, UTC; why).
    lost: Option<(String, String)>,
    can_operate: bool,
}

async fn device_page_with(s: &AppState, c: &Console, id: &str, x: Outcome) -> Response {
    let detail = match s.app.get_device(id).await {
        Ok(d) => d,
        Err(e) => return app_error(c.chrome(CURRENT), e),
    };
    let location = match &detail.device.location_id {
        None => "—".to_owned(),
        Some(l) => s
            .app
            .list_locations()
            .await
            .ok()
            .and_then(|all| all.into_iter().find(|x| &x.id == l))
            .map_or_else(|| l.clone(), |x| format!("{} ({})", x.name, x.id)),
    };
    let now = switchboard_app::now_ms();
    let d = detail.device;
    let holder = d.holder.as_ref().map_or_else(
        || "—".to_owned(),
        |h| format!("{} ({})", h.display_name, h.username),
    );
    let facts = vec![
        Fact {
            name: "Serial",
            value: d.serial.clone(),
        },
        Fact {
            name: "UUID",
            value: dash(d.uuid.as_ref()),
        },
        Fact {
            name: "Platform",
            value: d.platform.clone(),
        },
        Fact {
            name: "Model",
            value: dash(d.model.as_ref()),
        },
        Fact {
            name: "OS version",
            value: dash(d.os_version.as_ref()),
        },
        Fact {
            name: "Group",
            value: detail.group_name,
        },
        Fact {
            name: "Location",
            value: location,
        },
        Fact {
            name: "Slot",
            value: dash(d.slot.as_ref()),
        },
        Fact {
            name: "Due back (UTC)",
            value: d.due_at.map_or_else(|| "—".to_owned(), fmt_time),
        },
        Fact {
            name: "PIN set",
            value: if d.pin_set { "yes" } else { "no" }.to_owned(),
        },
        Fact {
            name: "Battery",
            value: d.battery.map_or_else(
                || "—".to_owned(),
                |b| {
                    format!(
                        "{b}%{}",
                        if d.charging == Some(true) {
                            " (charging)"
                        } else {
                            ""
                        }
                    )
                },
            ),
        },
        Fact {
            name: "Docked",
            value: yes_no(d.docked).to_owned(),
        },
        Fact {
            name: "Reported location",
            value: dash(d.reported_location.as_ref()),
        },
        Fact {
            name: "Last heartbeat (UTC)",
            value: d.last_heartbeat_at.map_or_else(
                || "never".to_owned(),
                |t| format!("{} ({})", fmt_time(t), ago(t, now)),
            ),
        },
        Fact {
            name: "Enrolled (UTC)",
            value: fmt_time(d.enrolled_at),
        },
        Fact {
            name: "Credential",
            value: if d.revoked {
                "revoked: the agent must enrol again"
            } else {
                "active"
            }
            .to_owned(),
        },
    ];
    render(
        x.status,
        &DevicePage {
            chrome: c.chrome(CURRENT),
            notice: x.notice,
            error: x.error,
            errors: x.errors,
            id: d.id.clone(),
            name: d.name.clone(),
            serial: d.serial.clone(),
            status_label: status_label(&d.status),
            status: d.status.clone(),
            overdue: d.overdue,
            holder,
            facts,
            install_ids: d
                .install_ids
                .iter()
                .map(|(app, id)| {
                    (
                        app.clone(),
                        id.clone().unwrap_or_else(|| {
                            "cannot be formed from the reported AppConfig".to_owned()
                        }),
                    )
                })
                .collect(),
            warnings: d.warnings.clone(),
            not_ready: d.not_ready.clone(),
            apps: d
                .apps
                .iter()
                .map(|a| {
                    format!(
                        "{} {}",
                        a.id,
                        a.version.as_deref().unwrap_or("(version unknown)")
                    )
                })
                .collect(),
            receipts: detail.receipts.into_iter().map(receipt_card).collect(),
            commands: detail
                .commands
                .into_iter()
                .map(|cmd| CommandLine {
                    kind: cmd.kind,
                    state: cmd.state,
                    created: fmt_time(cmd.created_at),
                    finished: cmd.finished_at.map_or_else(|| "—".to_owned(), fmt_time),
                    result: cmd.result.unwrap_or_default(),
                    checkin: cmd.checkin_id.unwrap_or_default(),
                })
                .collect(),
            timeline: detail
                .timeline
                .into_iter()
                .map(|t| TimelineLine {
                    at: fmt_time(t.at),
                    kind: t.kind,
                    text: t.text,
                })
                .collect(),
            lost: d.lost_at.map(|at| {
                (
                    fmt_time(at),
                    d.lost_reason
                        .clone()
                        .unwrap_or_else(|| "no reason recorded".to_owned()),
                )
            }),
            can_operate: c.allows(Permission::Operate),
        },
    )
}

async fn device_page(State(s): State<AppState>, c: Console, Path(id): Path<String>) -> Response {
    if let Some(r) = c.denied(Permission::Read, CURRENT) {
        return r;
    }
    device_page_with(&s, &c, &id, Outcome::ok()).await
}

#[derive(Deserialize)]
struct DeviceActionForm {
    csrf: String,
    message: Option<String>,
}

async fn device_action(
    State(s): State<AppState>,
    c: Console,
    Path((id, action)): Path<(String, String)>,
    Form(f): Form<DeviceActionForm>,
) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Operate, CURRENT) {
        return r;
    }
    let command = |kind: &str| CommandInput {
        kind: kind.to_owned(),
        message: f.message.clone(),
    };
    let result = match action.as_str() {
        "checkin" => s
            .app
            .checkin(&c.principal, &c.ctx, &id, &c.principal.actor())
            .await
            .map(|r| {
                if r.already_checked_in {
                    "The device was not checked out; its last receipt is below.".to_owned()
                } else {
                    format!(
                        "Checked in: receipt {} is {}.",
                        r.id,
                        status_label(&r.status)
                    )
                }
            }),
        "release" => s
            .app
            .release_device(&c.principal, &c.ctx, &id)
            .await
            .map(|d| format!("{} is marked available.", d.name)),
        "lock" => s
            .app
            .send_command(&c.principal, &c.ctx, &id, command("lock"))
            .await
            .map(|_| "The lock command is queued for the device.".to_owned()),
        "message" => s
            .app
            .send_command(&c.principal, &c.ctx, &id, command("show_message"))
            .await
            .map(|_| "The message is queued for the device.".to_owned()),
        "lost" => {
            let message = f.message.clone().filter(|m| !m.trim().is_empty());
            s.app
                .mark_lost(&c.principal, &c.ctx, &id, LostInput { message })
                .await
                .map(|d| {
                    format!(
                        "{} is in lost mode: a lock with the message is queued for it. Docking it again ends lost mode.",
                        d.name
                    )
                })
        }
        _ => Err(AppError::NotFound(format!("device action `{action}`"))),
    };
    match result {
        Ok(m) => device_page_with(&s, &c, &id, Outcome::notice(m)).await,
        Err(e) => match Outcome::from_error(&e) {
            Some(x) => device_page_with(&s, &c, &id, x).await,
            None => app_error(c.chrome(CURRENT), e),
        },
    }
}

// ------------------------------------------------------------------ groups, locations, tokens

struct StepLine {
    action: &'static str,
    description: String,
    side: &'static str,
    mandatory: bool,
}

fn step_lines(w: &[StepSpec]) -> Vec<StepLine> {
    w.iter()
        .map(|s| StepLine {
            action: s.action(),
            description: s.describe(),
            side: if s.on_device() { "device" } else { "server" },
            mandatory: s.mandatory(),
        })
        .collect()
}

struct GroupCard {
    id: String,
    name: String,
    lending: String,
    checkin_on_dock: bool,
    required_apps: Vec<String>,
    ios: Vec<StepLine>,
    android: Vec<StepLine>,
    edit_link: String,
}

fn required_app_text(r: &RequiredApp) -> String {
    match &r.min_version {
        Some(v) => format!("{} >= {v}", r.app_id),
        None => r.app_id.clone(),
    }
}

/// The group editor's fields, as typed (kept when the form comes back with errors).
struct GroupEditor {
    id: String,
    name: String,
    lending_minutes: String,
    checkin_on_dock: bool,
    required_apps: String,
    ios: String,
    android: String,
}

impl GroupEditor {
    fn blank() -> Self {
        Self {
            id: String::new(),
            name: String::new(),
            lending_minutes: "720".to_owned(),
            checkin_on_dock: false,
            required_apps: String::new(),
            ios: "[]".to_owned(),
            android: "[]".to_owned(),
        }
    }

    fn of(g: &DeviceGroup) -> Self {
        let pretty =
            |w: &[StepSpec]| serde_json::to_string_pretty(w).unwrap_or_else(|_| "[]".to_owned());
        Self {
            id: g.id.clone(),
            name: g.name.clone(),
            lending_minutes: g.lending_minutes.to_string(),
            checkin_on_dock: g.checkin_on_dock,
            required_apps: g
                .required_apps
                .iter()
                .map(required_app_text)
                .collect::<Vec<_>>()
                .join("\n"),
            ios: pretty(&g.workflows.ios),
            android: pretty(&g.workflows.android),
        }
    }
}

struct LocationLine {
    id: String,
    name: String,
    kiosk_url: String,
    devices_link: String,
}

struct TokenLine {
    id: String,
    name: String,
    prefix: String,
    group: String,
    location: String,
    created: String,
    expires: String,
    state: &'static str,
    uses: i64,
}

#[derive(Default)]
struct SetupExtra {
    /// The editor to show instead of a blank one.
    editor: Option<GroupEditor>,
    group_errors: Vec<FieldError>,
    location_errors: Vec<FieldError>,
    token_errors: Vec<FieldError>,
    /// (location name, kiosk link with its key), shown once.
    new_kiosk: Option<(String, String)>,
    /// (token name, secret), shown once.
    new_token: Option<(String, String)>,
}

#[derive(Template)]
#[template(path = "devices_groups.html")]
struct GroupsPage {
    chrome: Chrome,
    notice: Option<String>,
    error: Option<String>,
    groups: Vec<GroupCard>,
    editor: GroupEditor,
    group_errors: Vec<FieldError>,
    locations: Vec<LocationLine>,
    location_errors: Vec<FieldError>,
    new_kiosk: Option<(String, String)>,
    tokens: Vec<TokenLine>,
    token_errors: Vec<FieldError>,
    new_token: Option<(String, String)>,
    group_choices: Vec<Choice>,
    location_choices: Vec<Choice>,
    can_admin: bool,
}

async fn groups_with(s: &AppState, c: &Console, x: Outcome, extra: SetupExtra) -> Response {
    let loaded = async {
        Ok::<_, AppError>((
            s.app.list_device_groups().await?,
            s.app.list_locations().await?,
            s.app.list_enrolment_tokens().await?,
        ))
    }
    .await;
    let (groups, locations, tokens) = match loaded {
        Ok(v) => v,
        Err(e) => return app_error(c.chrome(CURRENT), e),
    };
    let group_names: HashMap<String, String> = groups
        .iter()
        .map(|g| (g.id.clone(), g.name.clone()))
        .collect();
    let location_names: HashMap<String, String> = locations
        .iter()
        .map(|l| (l.id.clone(), l.name.clone()))
        .collect();
    let now = switchboard_app::now_ms();
    render(
        x.status,
        &GroupsPage {
            chrome: c.chrome(CURRENT),
            notice: x.notice,
            error: x.error,
            group_choices: groups
                .iter()
                .map(|g| Choice {
                    value: g.id.clone(),
                    label: g.name.clone(),
                })
                .collect(),
            location_choices: locations
                .iter()
                .map(|l| Choice {
                    value: l.id.clone(),
                    label: l.name.clone(),
                })
                .collect(),
            groups: groups
                .iter()
                .map(|g| GroupCard {
                    id: g.id.clone(),
                    name: g.name.clone(),
                    lending: minutes(g.lending_minutes),
                    checkin_on_dock: g.checkin_on_dock,
                    required_apps: g.required_apps.iter().map(required_app_text).collect(),
                    ios: step_lines(&g.workflows.ios),
                    android: step_lines(&g.workflows.android),
                    edit_link: format!(
                        "/console/devices/groups?{}#group-editor",
                        query_string(&[("edit", &g.id)])
                    ),
                })
                .collect(),
            editor: extra.editor.unwrap_or_else(GroupEditor::blank),
            group_errors: extra.group_errors,
            locations: locations
                .into_iter()
                .map(|l| LocationLine {
                    devices_link: format!(
                        "/console/devices?{}",
                        query_string(&[("location", &l.id)])
                    ),
                    id: l.id,
                    name: l.name,
                    kiosk_url: l.kiosk_url,
                })
                .collect(),
            location_errors: extra.location_errors,
            new_kiosk: extra.new_kiosk,
            tokens: tokens
                .into_iter()
                .map(|t| TokenLine {
                    group: group_names
                        .get(&t.group_id)
                        .cloned()
                        .unwrap_or_else(|| t.group_id.clone()),
                    location: t.location_id.as_ref().map_or_else(
                        || "—".to_owned(),
                        |l| location_names.get(l).unwrap_or(l).clone(),
                    ),
                    created: fmt_time(t.created_at),
                    expires: t.expires_at.map_or_else(|| "never".to_owned(), fmt_time),
                    state: if t.revoked_at.is_some() {
                        "revoked"
                    } else if t.expires_at.is_some_and(|e| e <= now) {
                        "expired"
                    } else {
                        "active"
                    },
                    id: t.id,
                    name: t.name,
                    prefix: t.prefix,
                    uses: t.uses,
                })
                .collect(),
            token_errors: extra.token_errors,
            new_token: extra.new_token,
            can_admin: c.allows(Permission::Administer),
        },
    )
}

#[derive(Deserialize, Default)]
struct GroupsQuery {
    edit: Option<String>,
}

async fn groups_page(
    State(s): State<AppState>,
    c: Console,
    Query(q): Query<GroupsQuery>,
) -> Response {
    if let Some(r) = c.denied(Permission::Read, CURRENT) {
        return r;
    }
    let editor = match q.edit.filter(|e| !e.is_empty()) {
        None => None,
        Some(id) => match s.app.get_device_group(&id).await {
            Ok(g) => Some(GroupEditor::of(&g)),
            Err(e) => return app_error(c.chrome(CURRENT), e),
        },
    };
    groups_with(
        &s,
        &c,
        Outcome::ok(),
        SetupExtra {
            editor,
            ..SetupExtra::default()
        },
    )
    .await
}

#[derive(Deserialize)]
struct GroupForm {
    csrf: String,
    id: Option<String>,
    name: String,
    lending_minutes: String,
    checkin_on_dock: Option<String>,
    #[serde(default)]
    required_apps: String,
    #[serde(default)]
    ios: String,
    #[serde(default)]
    android: String,
}

/// Required apps as typed in the editor: one a line, `app.id` or `app.id >= version`.
fn parse_required_apps(text: &str, errors: &mut Vec<FieldError>) -> Vec<RequiredApp> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parts: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == '>' || c == '=')
            .filter(|p| !p.is_empty())
            .collect();
        match parts.as_slice() {
            [app] => out.push(RequiredApp {
                app_id: (*app).to_owned(),
                min_version: None,
            }),
            [app, version] => out.push(RequiredApp {
                app_id: (*app).to_owned(),
                min_version: Some((*version).to_owned()),
            }),
            _ => errors.push(FieldError {
                field: format!("required_apps (line {})", i + 1),
                message: "write `com.epic.rover` or `com.epic.rover >= 9.10`".to_owned(),
            }),
        }
    }
    out
}

/// A workflow typed as JSON (an empty box is an empty workflow).
fn parse_workflow(text: &str, field: &str, errors: &mut Vec<FieldError>) -> Vec<StepSpec> {
    if text.trim().is_empty() {
        return Vec::new();
    }
    match serde_json::from_str::<Vec<StepSpec>>(text) {
        Ok(w) => w,
        Err(e) => {
            errors.push(FieldError {
                field: field.to_owned(),
                message: format!("is not a list of steps: {e}"),
            });
            Vec::new()
        }
    }
}

async fn save_group(State(s): State<AppState>, c: Console, Form(f): Form<GroupForm>) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Administer, CURRENT) {
        return r;
    }
    let id = f.id.clone().filter(|i| !i.trim().is_empty());
    let editor = GroupEditor {
        id: id.clone().unwrap_or_default(),
        name: f.name.clone(),
        lending_minutes: f.lending_minutes.clone(),
        checkin_on_dock: f.checkin_on_dock.is_some(),
        required_apps: f.required_apps.clone(),
        ios: f.ios.clone(),
        android: f.android.clone(),
    };
    let mut errors = Vec::new();
    let lending_minutes = match f.lending_minutes.trim().parse::<i64>() {
        Ok(m) => m,
        Err(_) => {
            errors.push(FieldError {
                field: "lending_minutes".to_owned(),
                message: "must be a whole number of minutes".to_owned(),
            });
            0
        }
    };
    let required_apps = parse_required_apps(&f.required_apps, &mut errors);
    let workflows = Workflows {
        ios: parse_workflow(&f.ios, "workflows.ios", &mut errors),
        android: parse_workflow(&f.android, "workflows.android", &mut errors),
    };
    let invalid = |group_errors: Vec<FieldError>, editor: GroupEditor| SetupExtra {
        editor: Some(editor),
        group_errors,
        ..SetupExtra::default()
    };
    if !errors.is_empty() {
        let x = invalid(errors, editor);
        return groups_with(&s, &c, Outcome::invalid(Vec::new()), x).await;
    }
    let input = DeviceGroupInput {
        name: f.name,
        lending_minutes,
        workflows,
        required_apps,
        checkin_on_dock: f.checkin_on_dock.is_some(),
    };
    match s
        .app
        .save_device_group(&c.principal, &c.ctx, id.as_deref(), input)
        .await
    {
        Ok(g) => {
            let m = if id.is_some() {
                format!("Device group `{}` saved.", g.name)
            } else {
                format!("Device group `{}` created.", g.name)
            };
            groups_with(&s, &c, Outcome::notice(m), SetupExtra::default()).await
        }
        Err(AppError::Validation(v)) => {
            let x = invalid(v.errors, editor);
            groups_with(&s, &c, Outcome::invalid(Vec::new()), x).await
        }
        Err(e) => app_error(c.chrome(CURRENT), e),
    }
}

#[derive(Deserialize)]
struct LocationForm {
    csrf: String,
    id: String,
    name: String,
}

async fn create_location(
    State(s): State<AppState>,
    c: Console,
    Form(f): Form<LocationForm>,
) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Administer, CURRENT) {
        return r;
    }
    let input = LocationInput {
        id: f.id.trim().to_owned(),
        name: f.name,
    };
    match s.app.save_location(&c.principal, &c.ctx, input).await {
        Ok(l) => {
            let link = format!("{}?key={}", l.location.kiosk_url, l.kiosk_key);
            let x = SetupExtra {
                new_kiosk: Some((l.location.name.clone(), link)),
                ..SetupExtra::default()
            };
            let m = format!(
                "Location `{}` saved with a new kiosk key. Open the kiosk link below on the kiosk's screen: it is not shown again.",
                l.location.name
            );
            groups_with(&s, &c, Outcome::notice(m), x).await
        }
        Err(AppError::Validation(v)) => {
            let x = SetupExtra {
                location_errors: v.errors,
                ..SetupExtra::default()
            };
            groups_with(&s, &c, Outcome::invalid(Vec::new()), x).await
        }
        Err(e) => app_error(c.chrome(CURRENT), e),
    }
}

#[derive(Deserialize)]
struct TokenForm {
    csrf: String,
    name: String,
    group_id: String,
    location_id: Option<String>,
    expires_in_days: Option<String>,
}

async fn create_token(State(s): State<AppState>, c: Console, Form(f): Form<TokenForm>) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Administer, CURRENT) {
        return r;
    }
    let expires = f
        .expires_in_days
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty());
    let expires_in_days = match expires.map(str::parse::<i64>) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(_)) => {
            let x = SetupExtra {
                token_errors: vec![FieldError {
                    field: "expires_in_days".to_owned(),
                    message: "must be a whole number of days".to_owned(),
                }],
                ..SetupExtra::default()
            };
            return groups_with(&s, &c, Outcome::invalid(Vec::new()), x).await;
        }
    };
    let input = EnrolmentTokenInput {
        name: f.name,
        group_id: f.group_id,
        location_id: f.location_id.filter(|l| !l.is_empty()),
        expires_in_days,
    };
    match s
        .app
        .create_enrolment_token(&c.principal, &c.ctx, input)
        .await
    {
        Ok(t) => {
            let m = format!(
                "Enrolment token `{}` created. Put the secret below in the locker app's AppConfig (SwitchboardEnrollmentToken): it is not shown again.",
                t.token.name
            );
            let x = SetupExtra {
                new_token: Some((t.token.name, t.secret)),
                ..SetupExtra::default()
            };
            groups_with(&s, &c, Outcome::notice(m), x).await
        }
        Err(AppError::Validation(v)) => {
            let x = SetupExtra {
                token_errors: v.errors,
                ..SetupExtra::default()
            };
            groups_with(&s, &c, Outcome::invalid(Vec::new()), x).await
        }
        Err(e) => app_error(c.chrome(CURRENT), e),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn revoke_token(
    State(s): State<AppState>,
    c: Console,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Administer, CURRENT) {
        return r;
    }
    match s
        .app
        .revoke_enrolment_token(&c.principal, &c.ctx, &id)
        .await
    {
        Ok(()) => {
            let m = "The enrolment token is revoked: devices can no longer enrol with it (enrolled devices keep working).".to_owned();
            groups_with(&s, &c, Outcome::notice(m), SetupExtra::default()).await
        }
        Err(AppError::NotFound(m)) => {
            let x = Outcome::error(StatusCode::NOT_FOUND, format!("No {m}."));
            groups_with(&s, &c, x, SetupExtra::default()).await
        }
        Err(e) => app_error(c.chrome(CURRENT), e),
    }
}

// ------------------------------------------------------------------ the directory

struct UserLine {
    id: String,
    username: String,
    display_name: String,
    badge: bool,
    password: bool,
    limit: String,
    source: String,
    disabled: bool,
    held: usize,
}

/// The add-user form as typed (never the badge or the password).
#[derive(Default)]
struct UserDraft {
    username: String,
    display_name: String,
    device_limit: String,
}

#[derive(Template)]
#[template(path = "devices_users.html")]
struct UsersPage {
    chrome: Chrome,
    notice: Option<String>,
    error: Option<String>,
    user_errors: Vec<FieldError>,
    import_errors: Vec<FieldError>,
    credential_import_errors: Vec<FieldError>,
    users: Vec<UserLine>,
    draft: UserDraft,
    default_limit: u32,
    can_admin: bool,
}

#[derive(Default)]
struct UsersExtra {
    user_errors: Vec<FieldError>,
    import_errors: Vec<FieldError>,
    /// Of the credential CSV import (`sso::import_credentials`).
    credential_import_errors: Vec<FieldError>,
    draft: UserDraft,
}

async fn users_with(s: &AppState, c: &Console, x: Outcome, extra: UsersExtra) -> Response {
    let list = match s.app.device_user_holdings().await {
        Ok(l) => l,
        Err(e) => return app_error(c.chrome(CURRENT), e),
    };
    let default_limit = s.app.config().device_limit_per_user;
    render(
        x.status,
        &UsersPage {
            chrome: c.chrome(CURRENT),
            notice: x.notice,
            error: x.error,
            user_errors: extra.user_errors,
            import_errors: extra.import_errors,
            credential_import_errors: extra.credential_import_errors,
            users: list
                .into_iter()
                .map(|(u, held)| UserLine {
                    limit: u
                        .device_limit
                        .map_or_else(|| format!("default ({default_limit})"), |l| l.to_string()),
                    id: u.id,
                    username: u.username,
                    display_name: u.display_name,
                    badge: u.has_badge,
                    password: u.has_password,
                    source: u.source,
                    disabled: u.disabled,
                    held,
                })
                .collect(),
            draft: extra.draft,
            default_limit,
            can_admin: c.allows(Permission::Administer),
        },
    )
}

async fn users_page(State(s): State<AppState>, c: Console) -> Response {
    if let Some(r) = c.denied(Permission::Read, CURRENT) {
        return r;
    }
    users_with(&s, &c, Outcome::ok(), UsersExtra::default()).await
}

#[derive(Deserialize)]
struct UserForm {
    csrf: String,
    username: String,
    display_name: String,
    badge: Option<String>,
    device_limit: Option<String>,
    password: Option<String>,
}

async fn add_user(State(s): State<AppState>, c: Console, Form(f): Form<UserForm>) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Administer, CURRENT) {
        return r;
    }
    let draft = UserDraft {
        username: f.username.clone(),
        display_name: f.display_name.clone(),
        device_limit: f.device_limit.clone().unwrap_or_default(),
    };
    let limit = f
        .device_limit
        .as_deref()
        .map(str::trim)
        .filter(|l| !l.is_empty());
    let device_limit = match limit.map(str::parse::<i64>) {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(_)) => {
            let x = UsersExtra {
                user_errors: vec![FieldError {
                    field: "device_limit".to_owned(),
                    message: "must be a whole number".to_owned(),
                }],
                draft,
                ..UsersExtra::default()
            };
            return users_with(&s, &c, Outcome::invalid(Vec::new()), x).await;
        }
    };
    let input = DeviceUserInput {
        username: Some(f.username.trim().to_owned()),
        display_name: Some(f.display_name),
        badge: f.badge.filter(|b| !b.trim().is_empty()),
        password: f.password.filter(|p| !p.is_empty()),
        device_limit,
        disabled: None,
    };
    match s
        .app
        .save_device_user(&c.principal, &c.ctx, None, input)
        .await
    {
        Ok(u) => {
            let m = format!(
                "`{}` ({}) is in the directory{}.",
                u.username,
                u.display_name,
                if u.has_badge { " with a badge" } else { "" }
            );
            users_with(&s, &c, Outcome::notice(m), UsersExtra::default()).await
        }
        Err(AppError::Validation(v)) => {
            let x = UsersExtra {
                user_errors: v.errors,
                draft,
                ..UsersExtra::default()
            };
            users_with(&s, &c, Outcome::invalid(Vec::new()), x).await
        }
        Err(e) => app_error(c.chrome(CURRENT), e),
    }
}

#[derive(Deserialize)]
struct ImportForm {
    csrf: String,
    csv: String,
}

async fn import_users(
    State(s): State<AppState>,
    c: Console,
    UploadForm(f): UploadForm<ImportForm>,
) -> Response {
    if let Some(r) = c.form_guard(&f.csrf, Permission::Administer, CURRENT) {
        return r;
    }
    match s
        .app
        .import_device_users(&c.principal, &c.ctx, &f.csv)
        .await
    {
        Ok(r) => {
            let m = format!("Imported: {} created, {} updated.", r.created, r.updated);
            users_with(&s, &c, Outcome::notice(m), UsersExtra::default()).await
        }
        Err(AppError::Validation(v)) => {
            let x = UsersExtra {
                import_errors: v.errors,
                ..UsersExtra::default()
            };
            users_with(&s, &c, Outcome::import_refused(), x).await
        }
        Err(e) => app_error(c.chrome(CURRENT), e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_apps_are_read_one_a_line_with_an_optional_minimum_version() {
        let mut errors = Vec::new();
        let apps = parse_required_apps(
            "com.epic.rover >= 9.10\n\n  com.epic.haiku\ncom.x 1 2",
            &mut errors,
        );
        assert_eq!(apps.len(), 2);
        assert_eq!(apps[0].min_version.as_deref(), Some("9.10"));
        assert_eq!(apps[1].app_id, "com.epic.haiku");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "required_apps (line 4)");
    }

    #[test]
    fn a_workflow_that_is_not_json_steps_is_a_field_error() {
        let mut errors = Vec::new();
        assert!(parse_workflow("  ", "workflows.ios", &mut errors).is_empty());
        assert!(errors.is_empty());
        parse_workflow(r#"[{"action":"dance"}]"#, "workflows.ios", &mut errors);
        assert_eq!(errors[0].field, "workflows.ios");
        let ok = parse_workflow(
            r#"[{"action":"lock","mandatory":false}]"#,
            "workflows.android",
            &mut errors,
        );
        assert_eq!(ok.len(), 1);
    }

    #[test]
    fn durations_and_ages_read_naturally() {
        assert_eq!(minutes(720), "12 h");
        assert_eq!(minutes(90), "1 h 30 min");
        assert_eq!(minutes(45), "45 min");
        assert_eq!(ago(0, 5_000), "5 s ago");
        assert_eq!(ago(0, 180_000), "3 min ago");
    }
}
