//! `switchboard agent-sim`: simulated shared devices. Each device enrols with an enrolment
//! token, sends heartbeats, long-polls for commands and carries them out after a delay, failing
//! a configurable share of them (deterministically from the seed). When a check-out tells it
//! whose device it is, it can "sign that clinician in" to the Epic apps in `switchboard
//! epic-sim`, so the simulator has Install IDs for Switchboard to log out at check-in. It can
//! also drive scripted check-out / check-in cycles by badge.

use serde::Serialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How the devices look and behave.
#[derive(Debug, Clone)]
pub struct AgentSimConfig {
    /// Switchboard's base URL.
    pub server: String,
    pub enrolment_token: String,
    pub devices: usize,
    /// Serial numbers are `<prefix><5 digits>` (`SIM00001`, ...).
    pub serial_prefix: String,
    /// `ios` or `android`.
    pub platform: String,
    /// Epic apps installed and configured (`Rover`, `Haiku`, `Canto`).
    pub epic_apps: Vec<String>,
    /// `EpicMobileDeviceIDAppName` of every Epic app.
    pub append_app_name: bool,
    /// `EpicMobileDeviceID` is the UUID (true) or the serial (false).
    pub id_from_uuid: bool,
    /// Report the locker's `epicRoverEpicMobileDeviceID` (Enhanced Rover logout).
    pub enhanced_rover: bool,
    /// Report AppConfig values as the MDM's unsubstituted variables (a misconfigured MDM).
    pub unsubstituted: bool,
    /// Share of commands that fail (0–1).
    pub fail_rate: f64,
    /// How long a command takes on the device.
    pub delay: Duration,
    pub heartbeat: Duration,
    /// Long-poll wait in seconds.
    pub poll_wait_secs: u64,
    /// When set, a check-out signs the clinician in to the Epic apps in this simulator.
    pub epic_sim: Option<String>,
    pub seed: u64,
}

impl Default for AgentSimConfig {
    fn default() -> Self {
        Self {
            server: "http://127.0.0.1:8080".to_owned(),
            enrolment_token: String::new(),
            devices: 1,
            serial_prefix: "SIM".to_owned(),
            platform: "ios".to_owned(),
            epic_apps: vec!["Rover".to_owned()],
            append_app_name: true,
            id_from_uuid: false,
            enhanced_rover: false,
            unsubstituted: false,
            fail_rate: 0.0,
            delay: Duration::from_millis(20),
            heartbeat: Duration::from_secs(30),
            poll_wait_secs: 20,
            epic_sim: None,
            seed: 1,
        }
    }
}

/// The Epic apps' bundle ids / package names as the simulated devices report them.
#[must_use]
pub fn app_id(app: &str) -> String {
    format!("com.epic.{}", app.to_ascii_lowercase())
}

/// What one simulated device knows about itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceState {
    pub serial: String,
    pub uuid: String,
    pub device_id: String,
    pub credential: String,
    /// The "Ready for …" message on screen.
    pub screen: String,
    pub user: Option<String>,
    pub pin_set: bool,
    pub locked: bool,
    /// Apps running with a signed-in user.
    pub running: Vec<String>,
    /// Commands carried out, by kind.
    pub executed: BTreeMap<String, u64>,
    pub failed: u64,
    /// The installed apps the device reports (`id`, `name`, `version`).
    pub apps: Vec<Value>,
    /// The AppConfig values the device reports, per app.
    pub appconfig: Value,
}

/// Totals over all devices.
#[derive(Debug, Default)]
pub struct Stats {
    pub enrolled: AtomicU64,
    pub heartbeats: AtomicU64,
    pub commands: AtomicU64,
    pub failures: AtomicU64,
    pub errors: AtomicU64,
    pub checkouts: AtomicU64,
    pub checkins: AtomicU64,
}

/// The running devices.
pub struct RunningAgents {
    pub devices: Vec<Arc<Mutex<DeviceState>>>,
    pub stats: Arc<Stats>,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    http: reqwest::Client,
    server: String,
    cfg: AgentSimConfig,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    #[allow(
        clippy::cast_precision_loss,
        reason = "a uniform fraction needs no more precision"
    )]
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1_u64 << 53) as f64
    }
}

/// The AppConfig a device reports: as the MDM should deliver it, or with its variables left
/// unsubstituted (`unsubstituted`).
fn appconfig(cfg: &AgentSimConfig, serial: &str, uuid: &str, unsubstituted: bool) -> Value {
    let id = if unsubstituted {
        if cfg.id_from_uuid {
            "{DeviceUuId}"
        } else {
            "{DeviceSerialNumber}"
        }
        .to_owned()
    } else if cfg.id_from_uuid {
        uuid.to_owned()
    } else {
        serial.to_owned()
    };
    let mut out = serde_json::Map::new();
    for app in &cfg.epic_apps {
        out.insert(
            app.clone(),
            json!({"EpicMobileDeviceID": id, "EpicMobileDeviceIDAppName": cfg.append_app_name.to_string()}),
        );
    }
    if cfg.enhanced_rover {
        out.insert(
            "locker".to_owned(),
            json!({"epicRoverEpicMobileDeviceID": id}),
        );
    }
    Value::Object(out)
}

/// The Install ID Epic gets when a user signs in to `app` on this device.
fn install_id(cfg: &AgentSimConfig, serial: &str, uuid: &str, app: &str) -> String {
    let id = if cfg.id_from_uuid { uuid } else { serial };
    if cfg.append_app_name {
        format!("{id}{app}")
    } else {
        id.to_owned()
    }
}

/// Enrols every device and starts its heartbeat and command loops.
pub async fn start(cfg: AgentSimConfig) -> Result<RunningAgents, String> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(cfg.poll_wait_secs + 30))
        .build()
        .map_err(|e| e.to_string())?;
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let server = cfg.server.trim_end_matches('/').to_owned();
    let mut devices = Vec::with_capacity(cfg.devices);
    let mut tasks = Vec::new();
    // Enrol in parallel batches so thousands of devices come up quickly.
    let mut pending = Vec::new();
    for i in 0..cfg.devices {
        let serial = format!("{}{:05}", cfg.serial_prefix, i + 1);
        let uuid = format!(
            "0000{:04X}-5EED-4000-8000-{:012X}",
            cfg.seed & 0xFFFF,
            i + 1
        );
        let http = http.clone();
        let cfg2 = cfg.clone();
        let server = server.clone();
        pending.push(tokio::spawn(async move {
            enrol(&http, &server, &cfg2, serial, uuid).await
        }));
        if pending.len() == 32 || i + 1 == cfg.devices {
            for p in pending.drain(..) {
                let st = p.await.map_err(|e| e.to_string())??;
                stats.enrolled.fetch_add(1, Ordering::Relaxed);
                devices.push(Arc::new(Mutex::new(st)));
            }
        }
    }
    for (i, d) in devices.iter().enumerate() {
        let ctx = AgentCtx {
            http: http.clone(),
            server: server.clone(),
            cfg: cfg.clone(),
            state: Arc::clone(d),
            stats: Arc::clone(&stats),
            stop: stop.clone(),
        };
        let seed = cfg.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        let c2 = ctx.clone();
        tasks.push(tokio::spawn(async move { c2.heartbeat_loop().await }));
        tasks.push(tokio::spawn(
            async move { ctx.command_loop(Rng(seed)).await },
        ));
    }
    Ok(RunningAgents {
        devices,
        stats,
        stop,
        tasks,
        http,
        server,
        cfg,
    })
}

async fn enrol(
    http: &reqwest::Client,
    server: &str,
    cfg: &AgentSimConfig,
    serial: String,
    uuid: String,
) -> Result<DeviceState, String> {
    let apps: Vec<Value> = cfg
        .epic_apps
        .iter()
        .map(|a| json!({"id": app_id(a), "name": a, "version": "24.2.0"}))
        .chain(std::iter::once(
            json!({"id": "org.switchboard.locker", "name": "Locker", "version": "1.0.0"}),
        ))
        .collect();
    let body = json!({
        "serial": serial,
        "uuid": uuid,
        "platform": cfg.platform,
        "model": if cfg.platform == "ios" { "iPhone 15" } else { "Zebra TC52" },
        "os_version": if cfg.platform == "ios" { "17.5" } else { "13" },
        "apps": apps,
        "appconfig": appconfig(cfg, &serial, &uuid, cfg.unsubstituted),
    });
    let mut last = String::new();
    for attempt in 0..5 {
        match http
            .post(format!("{server}/agent/v1/enrol"))
            .bearer_auth(&cfg.enrolment_token)
            .json(&body)
            .send()
            .await
        {
            Ok(r) if r.status().as_u16() == 201 => {
                let v: Value = r.json().await.map_err(|e| e.to_string())?;
                return Ok(DeviceState {
                    device_id: v["device_id"].as_str().unwrap_or_default().to_owned(),
                    credential: v["credential"].as_str().unwrap_or_default().to_owned(),
                    apps,
                    appconfig: body["appconfig"].clone(),
                    serial,
                    uuid,
                    ..DeviceState::default()
                });
            }
            Ok(r) => {
                let status = r.status();
                last = format!(
                    "enrolment of {serial} answered {status}: {}",
                    r.text().await.unwrap_or_default()
                );
                if status.is_client_error() {
                    return Err(last);
                }
            }
            Err(e) => last = format!("enrolment of {serial} failed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
    }
    Err(last)
}

#[derive(Clone)]
struct AgentCtx {
    http: reqwest::Client,
    server: String,
    cfg: AgentSimConfig,
    state: Arc<Mutex<DeviceState>>,
    stats: Arc<Stats>,
    stop: CancellationToken,
}

impl AgentCtx {
    fn credential(&self) -> String {
        lock(&self.state).credential.clone()
    }

    async fn heartbeat_loop(self) {
        let mut n: i64 = 0;
        loop {
            let battery = 100 - (n % 40);
            let r = self
                .http
                .post(format!("{}/agent/v1/heartbeat", self.server))
                .bearer_auth(self.credential())
                .json(&json!({"battery": battery, "charging": true, "docked": true}))
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => {
                    self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            n += 1;
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(self.cfg.heartbeat) => {}
            }
        }
    }

    async fn command_loop(self, mut rng: Rng) {
        while !self.stop.is_cancelled() {
            let r = tokio::select! {
                () = self.stop.cancelled() => return,
                r = self
                    .http
                    .get(format!("{}/agent/v1/commands?wait={}", self.server, self.cfg.poll_wait_secs))
                    .bearer_auth(self.credential())
                    .send() => r,
            };
            let commands: Vec<Value> = match r {
                Ok(r) if r.status().is_success() => r.json().await.unwrap_or_default(),
                _ => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        () = self.stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                    continue;
                }
            };
            let mut results = Vec::with_capacity(commands.len());
            for c in &commands {
                results.push(self.execute(c, &mut rng).await);
            }
            if !results.is_empty() {
                self.report(&results).await;
            }
        }
    }

    /// Runs one command; answers its result for the report.
    async fn execute(&self, c: &Value, rng: &mut Rng) -> Value {
        let kind = c["kind"].as_str().unwrap_or_default().to_owned();
        let id = c["id"].as_str().unwrap_or_default().to_owned();
        if !self.cfg.delay.is_zero() {
            tokio::time::sleep(self.cfg.delay).await;
        }
        let fails = rng.unit() < self.cfg.fail_rate;
        let (status, detail) = if fails {
            ("failed", format!("simulated failure of {kind}"))
        } else {
            self.apply(&kind, &c["params"]).await
        };
        {
            let mut st = lock(&self.state);
            *st.executed.entry(kind.clone()).or_default() += 1;
            if fails {
                st.failed += 1;
            }
        }
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        if fails {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
        }
        json!({"id": id, "status": status, "detail": detail})
    }

    /// Reports the results of one poll's commands in one request, retrying through a server
    /// restart (about 30 s): results are idempotent on the server, and a result that never
    /// arrives makes the server hand the command out again.
    async fn report(&self, results: &[Value]) {
        for attempt in 0..40_u64 {
            let r = self
                .http
                .post(format!("{}/agent/v1/commands/results", self.server))
                .bearer_auth(self.credential())
                .json(&json!({ "results": results }))
                .send()
                .await;
            if r.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            if self.stop.is_cancelled() {
                return;
            }
            tokio::time::sleep(Duration::from_millis((100 * (attempt + 1)).min(1000))).await;
        }
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Carries out a command on the simulated device.
    async fn apply(&self, kind: &str, params: &Value) -> (&'static str, String) {
        match kind {
            "show_ready" => {
                let user = params["username"].as_str().unwrap_or_default().to_owned();
                let message = params["message"].as_str().unwrap_or_default().to_owned();
                let (serial, uuid) = {
                    let mut st = lock(&self.state);
                    st.screen.clone_from(&message);
                    st.user = Some(user.clone());
                    st.running.clone_from(&self.cfg.epic_apps);
                    (st.serial.clone(), st.uuid.clone())
                };
                if let Some(sim) = &self.cfg.epic_sim {
                    for app in &self.cfg.epic_apps {
                        let _ = self
                            .http
                            .post(format!("{sim}/_sim/mobile"))
                            .json(&json!({"install_id": install_id(&self.cfg, &serial, &uuid, app), "user": user, "app": app}))
                            .send()
                            .await;
                    }
                }
                ("succeeded", format!("showing \"{message}\""))
            }
            "set_pin" => {
                let ok = params["pin"]
                    .as_str()
                    .is_some_and(|p| (4..=8).contains(&p.len()));
                if ok {
                    lock(&self.state).pin_set = true;
                    ("succeeded", "PIN set".to_owned())
                } else {
                    ("failed", "no usable PIN in the command".to_owned())
                }
            }
            "clear_pin" => {
                lock(&self.state).pin_set = false;
                ("succeeded", "PIN removed".to_owned())
            }
            "force_quit" | "clear_data" => {
                let app = params["app_id"].as_str().unwrap_or_default();
                let mut st = lock(&self.state);
                let before = st.running.len();
                st.running.retain(|a| app_id(a) != app);
                let what = if kind == "force_quit" {
                    "force quit"
                } else {
                    "stopped and cleared"
                };
                if st.running.len() < before {
                    ("succeeded", format!("{app} {what}"))
                } else {
                    ("succeeded", format!("{app} was not running"))
                }
            }
            "universal_link_logout" => (
                "succeeded",
                "logout link opened; the app called back with success".to_owned(),
            ),
            "lock" => {
                lock(&self.state).locked = true;
                ("succeeded", "locked".to_owned())
            }
            "lock_with_message" | "show_message" => {
                let mut st = lock(&self.state);
                st.screen = params["message"].as_str().unwrap_or_default().to_owned();
                st.locked |= kind == "lock_with_message";
                ("succeeded", "message shown".to_owned())
            }
            other => ("skipped", format!("this agent does not know `{other}`")),
        }
    }
}

impl RunningAgents {
    /// A device's state by serial.
    #[must_use]
    pub fn device(&self, serial: &str) -> Option<DeviceState> {
        self.devices
            .iter()
            .map(|d| lock(d).clone())
            .find(|d| d.serial == serial)
    }

    /// Device `index` sends a heartbeat with its inventory and AppConfig now; answers the
    /// server's reply (`ready` among it).
    pub async fn report(&self, index: usize) -> Result<Value, String> {
        let body = {
            let d = lock(self.devices.get(index).ok_or("no such device")?);
            json!({"battery": 100, "charging": true, "docked": true, "apps": d.apps, "appconfig": d.appconfig})
        };
        self.call(index, "heartbeat", Some(body), "heartbeat").await
    }

    /// Device `index` POSTs to `/agent/v1/{path}` with its credential; a 2xx answer's JSON, or
    /// what went wrong.
    async fn call(
        &self,
        index: usize,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<Value, String> {
        let cred = self
            .devices
            .get(index)
            .map(|d| lock(d).credential.clone())
            .ok_or("no such device")?;
        let mut req = self
            .http
            .post(format!("{}/agent/v1/{path}", self.server))
            .bearer_auth(cred);
        if let Some(b) = &body {
            req = req.json(b);
        }
        let r = req.send().await.map_err(|e| e.to_string())?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            Ok(v)
        } else {
            Err(format!("{what} answered {status}: {v}"))
        }
    }

    /// The MDM installs, updates or downgrades an app on device `index` (`version: None`
    /// removes it); the device reports it.
    pub async fn report_app(
        &self,
        index: usize,
        app: &str,
        version: Option<&str>,
    ) -> Result<Value, String> {
        {
            let mut d = lock(self.devices.get(index).ok_or("no such device")?);
            d.apps.retain(|a| a["name"] != app);
            if let Some(v) = version {
                d.apps
                    .push(json!({"id": app_id(app), "name": app, "version": v}));
            }
        }
        self.report(index).await
    }

    /// The MDM delivers device `index`'s AppConfig with its variables substituted, or (a
    /// misconfigured MDM) left literal; the device reports it.
    pub async fn report_appconfig(&self, index: usize, substituted: bool) -> Result<Value, String> {
        {
            let mut d = lock(self.devices.get(index).ok_or("no such device")?);
            d.appconfig = appconfig(&self.cfg, &d.serial, &d.uuid, !substituted);
        }
        self.report(index).await
    }

    /// Checks device `index` out on the device itself by badge.
    pub async fn checkout_by_badge(
        &self,
        index: usize,
        badge: &str,
        pin_set: bool,
    ) -> Result<Value, String> {
        let v = self
            .call(
                index,
                "checkout",
                Some(json!({"badge": badge, "pin_set": pin_set})),
                "check-out",
            )
            .await?;
        self.stats.checkouts.fetch_add(1, Ordering::Relaxed);
        Ok(v)
    }

    /// Checks device `index` in from the device.
    pub async fn checkin(&self, index: usize) -> Result<Value, String> {
        let v = self.call(index, "checkin", None, "check-in").await?;
        self.stats.checkins.fetch_add(1, Ordering::Relaxed);
        Ok(v)
    }

    /// Scripted cycles: each device checks out with its badge (`badges[i % len]`), keeps the
    /// device for `hold`, checks in, and starts again, `cycles` times.
    pub async fn cycle(&self, badges: &[String], cycles: usize, hold: Duration) -> (u64, u64) {
        let mut ok = 0;
        let mut failed = 0;
        for _ in 0..cycles {
            let mut handles = Vec::new();
            for i in 0..self.devices.len() {
                let badge = badges
                    .get(i % badges.len().max(1))
                    .cloned()
                    .unwrap_or_default();
                let me = self;
                handles.push(async move {
                    let out = me.checkout_by_badge(i, &badge, false).await;
                    if out.is_ok() {
                        tokio::time::sleep(hold).await;
                        me.checkin(i).await.map(|_| ())
                    } else {
                        out.map(|_| ())
                    }
                });
            }
            for r in futures_util::future::join_all(handles).await {
                if r.is_ok() {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
        }
        (ok, failed)
    }

    /// Stops every loop.
    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}
