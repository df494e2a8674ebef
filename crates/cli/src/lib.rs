//! Wiring: configuration → keyring → store → app → HTTP server and job workers. `main` only
//! parses the command line and calls into here, so tests start the real server in-process.

use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use switchboard_app::jobs::{Registry, WorkerSettings, run_workers};
use switchboard_app::{App, Config, Keyring};
use switchboard_store::ConnectOptions;
use tokio_util::sync::CancellationToken;

/// Opens (creating when needed) the data folder, keyring and database, and migrates it.
pub async fn open_app(config: Config) -> anyhow::Result<(App, bool)> {
    if config.is_sqlite() || config.master_key.is_none() {
        create_private_dir(&config.data_dir)
            .with_context(|| format!("creating data folder {}", config.data_dir.display()))?;
    }
    let (keyring, created) = match &config.master_key {
        Some(k) => (
            Keyring::from_base64(secrecy::ExposeSecret::expose_secret(k)).context("master_key")?,
            false,
        ),
        None => Keyring::open_or_create(&config.master_key_path())?,
    };
    if created {
        tracing::info!(path = %config.master_key_path().display(), "created a new master key file (mode 0600); back it up with the database");
    }
    let opts = ConnectOptions {
        max_connections: config.database_max_connections,
        min_connections: config.effective_min_connections(),
        acquire_timeout: std::time::Duration::from_millis(config.database_acquire_timeout_ms),
        sqlite_synchronous_full: config.sqlite_synchronous
            == switchboard_app::config::SqliteSync::Full,
        sqlite_busy_timeout: std::time::Duration::from_millis(config.sqlite_busy_timeout_ms),
        audit_chains: config.effective_audit_chains(),
    };
    let store = switchboard_store::connect(&config.database_url(), &opts)
        .await
        .context("opening the database")?;
    store
        .migrate()
        .await
        .context("applying database migrations")?;
    Ok((App::new(store, keyring, config)?, created))
}

/// The data folder holds the database, the keyring and the bootstrap token: owner-only (0700).
fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// A running server (HTTP + workers).
pub struct Running {
    pub addr: SocketAddr,
    pub app: App,
    pub stop: CancellationToken,
    /// The bootstrap admin token, when this start created the first admin.
    pub bootstrap_token: Option<String>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    workers: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops accepting requests, lets in-flight requests and jobs finish, closes the database.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.server
            .await
            .context("server task")?
            .context("server")?;
        if let Some(w) = self.workers {
            w.await.context("worker task")?;
        }
        // The last gateway access records of this process go to the database before it closes.
        if let Err(e) = self.app.flush_gateway_requests().await {
            tracing::warn!(error = %e, "gateway access records could not be written at shutdown");
        }
        self.app.store().close().await;
        Ok(())
    }

    /// Waits until the server stops (after `stop` is cancelled).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.stop.cancelled().await;
        self.shutdown().await
    }
}

/// Starts the server on `config.listen` (port 0 picks a free port) with the given job kinds.
pub async fn start(mut config: Config, registry: Registry) -> anyhow::Result<Running> {
    let started = std::time::Instant::now();
    let listen = config.listen;
    let run_workers_here = config.run_workers;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    if config.public_url.is_none() {
        // Without a public URL, JWK URLs and redirect URIs use the address actually bound.
        config.public_url = Some(format!("http://{addr}"));
    }
    let (app, _) = open_app(config).await?;
    let bootstrap_token = app.bootstrap().await?.map(|t| t.secret);
    app.schedule_telehealth_purge(std::time::Duration::from_secs(60))
        .await?;
    app.schedule_device_sweep(std::time::Duration::from_secs(15))
        .await?;
    let stop = CancellationToken::new();
    let router = switchboard_http::router(app.clone(), switchboard_http::metrics_layer::handle());
    let server_stop = stop.clone();
    let server = tokio::spawn(switchboard_http::serve(
        listener,
        app.clone(),
        router,
        async move { server_stop.cancelled().await },
    ));
    let workers = run_workers_here.then(|| {
        let settings = WorkerSettings::from_config(app.config());
        tokio::spawn(run_workers(app.clone(), registry, settings, stop.clone()))
    });
    tracing::info!(%addr, backend = app.store().backend().as_str(), ready_ms = started.elapsed().as_millis() as u64, "switchboard is ready");
    Ok(Running {
        addr,
        app,
        stop,
        bootstrap_token,
        server,
        workers,
    })
}

/// Logging: JSON or pretty lines on stderr, filtered by `log_level` (or `SWITCHBOARD_LOG`).
pub fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("SWITCHBOARD_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| config.log_level.clone());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match config.log_format {
        switchboard_app::config::LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        switchboard_app::config::LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// `keygen N`: N random bytes from the OS CSPRNG as base64 (Epic launch encryption keys).
pub fn keygen(size: usize) -> anyhow::Result<String> {
    use base64::Engine;
    match size {
        32 => Ok(base64::engine::general_purpose::STANDARD
            .encode(switchboard_app::crypto::random_bytes::<32>())),
        16 => Ok(base64::engine::general_purpose::STANDARD
            .encode(switchboard_app::crypto::random_bytes::<16>())),
        other => anyhow::bail!(
            "a key of {other} bytes is not used by Epic: use 32 (AES-256-CBC, Epic August 2019 and later) or 16 (legacy AES-128)"
        ),
    }
}

/// Shared for subcommands that talk to the database directly.
pub fn standard_registry() -> Registry {
    Registry::standard()
}

#[must_use]
pub fn arc_app(app: &App) -> Arc<dyn switchboard_store::Store> {
    Arc::clone(app.store())
}

/// The demo's telehealth profile id (fixed, so the simulator's registered redirect URIs match).
pub const DEMO_TELEHEALTH_PROFILE: &str = "5d3e0c1a-7b2f-4c8e-9a61-0de305e1a7c0";
/// The demo's launch key (a demo only: real keys come from `switchboard keygen 32`).
pub const DEMO_LAUNCH_KEY: &str = "fTW2KwlJZ6JEpRS+RlN2fruKPgggBe+Y9txLIk3QpA0=";

/// The demo: Switchboard and the Epic simulator side by side on loopback.
pub struct Demo {
    pub server: Running,
    pub sim: switchboard_epic_sim::RunningSim,
    /// The admin token (from this start, or read back from the token file of an earlier one).
    pub admin_token: Option<String>,
    pub devices: DemoDevices,
    /// Six simulated phones on the demo ward.
    pub agents: switchboard_agent_sim::RunningAgents,
}

/// The simulator configuration the demo runs with: both Epic instances, a backend client with
/// every API, a Basic-auth system user and a telehealth app pointing back at Switchboard.
#[must_use]
pub fn demo_sim_config(
    listen: std::net::SocketAddr,
    switchboard_url: &str,
) -> switchboard_epic_sim::SimConfig {
    use switchboard_epic_sim::{ClientConfig, SimConfig, SystemUser};
    SimConfig {
        listen,
        clients: vec![
            ClientConfig {
                client_id: "switchboard-demo".to_owned(),
                apis: vec!["*".to_owned()],
                ..ClientConfig::default()
            },
            ClientConfig {
                client_id: "switchboard-demo-telehealth".to_owned(),
                client_secret: Some("demo-telehealth-secret".to_owned()),
                redirect_uris: vec![
                    format!(
                        "{switchboard_url}/telehealth/v1/provider/oauth2authorized/{DEMO_TELEHEALTH_PROFILE}"
                    ),
                    format!(
                        "{switchboard_url}/telehealth/v1/patient/oauth2authorized/{DEMO_TELEHEALTH_PROFILE}"
                    ),
                ],
                ..ClientConfig::default()
            },
        ],
        system_users: vec![SystemUser {
            username: "emp$SWITCHBOARD".to_owned(),
            password: "demo-interconnect-password".to_owned(),
        }],
        ..SimConfig::default()
    }
}

/// What the demo's shared devices need: where the kiosk is and how the simulated phones enrol.
pub struct DemoDevices {
    pub kiosk_url: String,
    pub enrolment_token: String,
    pub badges: Vec<(String, String)>,
}

/// The demo's shared devices: a ward with a kiosk, a group whose check-in force-quits Rover and
/// Haiku and signs the user out of both in Epic, three clinicians with badges, and an enrolment
/// token for the simulated phones (the kiosk key and the token are issued anew at every start).
async fn seed_demo_devices(app: &App, env_id: &str) -> anyhow::Result<DemoDevices> {
    use switchboard_app::devices::{
        DeviceGroupInput, DeviceUserInput, EnrolmentTokenInput, LocationInput,
    };
    use switchboard_domain::devices::StepSpec;
    let cli = switchboard_app::Principal::cli();
    let ctx = switchboard_app::RequestContext::default();
    let loc = app
        .save_location(
            &cli,
            &ctx,
            LocationInput {
                id: "demo-ward".to_owned(),
                name: "Demo ward (4 West)".to_owned(),
            },
        )
        .await
        .map_err(anyhow::Error::new)?;
    let group = match app.get_device_group("Demo ward phones").await {
        Ok(g) => g,
        Err(_) => {
            let ios = vec![
                StepSpec::ForceQuit {
                    app_id: "com.epic.rover".to_owned(),
                    mandatory: true,
                },
                StepSpec::ForceQuit {
                    app_id: "com.epic.haiku".to_owned(),
                    mandatory: true,
                },
                StepSpec::EpicLogout {
                    environment_id: env_id.to_owned(),
                    app: "Rover".to_owned(),
                },
                StepSpec::EpicLogout {
                    environment_id: env_id.to_owned(),
                    app: "Haiku".to_owned(),
                },
            ];
            let input = DeviceGroupInput {
                name: "Demo ward phones".to_owned(),
                lending_minutes: 780,
                workflows: switchboard_app::devices::Workflows {
                    ios,
                    android: Vec::new(),
                },
                required_apps: Vec::new(),
                checkin_on_dock: false,
            };
            app.save_device_group(&cli, &ctx, None, input)
                .await
                .map_err(anyhow::Error::new)?
        }
    };
    let badges = vec![
        ("rn.garcia".to_owned(), "1001".to_owned()),
        ("rn.okafor".to_owned(), "1002".to_owned()),
        ("rn.lindqvist".to_owned(), "1003".to_owned()),
    ];
    for (username, badge) in &badges {
        if app.get_device_user(username).await.is_err() {
            let display = username.trim_start_matches("rn.");
            let mut name = display.to_owned();
            name[..1].make_ascii_uppercase();
            let input = DeviceUserInput {
                username: Some(username.clone()),
                display_name: Some(format!("Nurse {name}")),
                badge: Some(badge.clone()),
                ..DeviceUserInput::default()
            };
            app.save_device_user(&cli, &ctx, None, input)
                .await
                .map_err(anyhow::Error::new)?;
        }
    }
    // Password AutoFill: an Epic Rover profile, and rn.garcia's credential for it.
    if app
        .list_sso_profiles()
        .await
        .map_err(anyhow::Error::new)?
        .is_empty()
    {
        let profile = app
            .save_sso_profile(&cli, &ctx, None, switchboard_domain::sso::EXAMPLE_PROFILE)
            .await
            .map_err(anyhow::Error::new)?;
        app.set_sso_credential(
            &cli,
            &ctx,
            "rn.garcia",
            switchboard_app::sso::CredentialInput {
                profile_id: profile.id,
                username: "GARCIA".to_owned(),
                password: "demo-rover-password".to_owned(),
            },
        )
        .await
        .map_err(anyhow::Error::new)?;
    }
    let token = app
        .create_enrolment_token(
            &cli,
            &ctx,
            EnrolmentTokenInput {
                name: "demo phones".to_owned(),
                group_id: group.id,
                location_id: Some("demo-ward".to_owned()),
                expires_in_days: Some(1),
            },
        )
        .await
        .map_err(anyhow::Error::new)?;
    Ok(DemoDevices {
        kiosk_url: format!("{}?key={}", loc.location.kiosk_url, loc.kiosk_key),
        enrolment_token: token.secret,
        badges,
    })
}

/// On a fresh demo database: a non-production Epic environment on the simulator and a
/// telehealth profile on it whose apps the simulator knows.
async fn seed_demo(
    app: &App,
    sim: &switchboard_epic_sim::RunningSim,
) -> anyhow::Result<DemoDevices> {
    let sim_url = sim.base_url();
    let sim_url = sim_url.as_str();
    use switchboard_app::telehealth::{AppClientsInput, ClientInput, ProfileInput};
    let cli = switchboard_app::Principal::cli();
    let ctx = switchboard_app::RequestContext::default();
    let envs = app.list_environments().await.map_err(anyhow::Error::new)?;
    let env = match envs.into_iter().find(|e| e.name == "Epic simulator (TST)") {
        Some(e) => e,
        None => app
            .create_environment(
                &cli,
                &ctx,
                switchboard_app::epic_env::EnvironmentInput {
                    name: Some("Epic simulator (TST)".to_owned()),
                    kind: Some("non_production".to_owned()),
                    interconnect_url: Some(sim_url.to_owned()),
                    instance: Some("interconnect-tst".to_owned()),
                    client_id: Some("switchboard-demo".to_owned()),
                    apps: Some(vec![
                        "Rover".to_owned(),
                        "Haiku".to_owned(),
                        "Canto".to_owned(),
                    ]),
                    ..Default::default()
                },
            )
            .await
            .map_err(anyhow::Error::new)?,
    };
    // The simulator trusts the environment's hosted key set (Epic would, after registration).
    sim.sim.register_client(switchboard_epic_sim::ClientConfig {
        client_id: "switchboard-demo".to_owned(),
        jwks_url: Some(env.key_set.jwk_url.clone()),
        apis: vec!["*".to_owned()],
        ..switchboard_epic_sim::ClientConfig::default()
    });
    let env_id = env.id.clone();
    if app
        .get_telehealth_profile(DEMO_TELEHEALTH_PROFILE)
        .await
        .is_err()
    {
        let client = || AppClientsInput {
            production: None,
            non_production: Some(ClientInput {
                client_id: "switchboard-demo-telehealth".to_owned(),
                client_secret: Some("demo-telehealth-secret".to_owned()),
            }),
        };
        app.create_telehealth_profile(
            &cli,
            &ctx,
            ProfileInput {
                name: "Demo Health".to_owned(),
                environment_id: env.id,
                key: Some(DEMO_LAUNCH_KEY.to_owned()),
                provider_app: client(),
                patient_app: client(),
                ..ProfileInput::default()
            },
            Some(uuid::Uuid::parse_str(DEMO_TELEHEALTH_PROFILE)?),
        )
        .await
        .map_err(anyhow::Error::new)?;
    }
    seed_demo_devices(app, &env_id).await
}

/// Starts the simulator on `sim_listen`, then Switchboard with `config`.
pub async fn start_demo(config: Config, sim_listen: std::net::SocketAddr) -> anyhow::Result<Demo> {
    let token_file = config.bootstrap_token_path();
    let public = config.public_url();
    let sim = switchboard_epic_sim::start(demo_sim_config(sim_listen, &public))
        .await
        .context("starting the Epic simulator")?;
    let server = start(config, standard_registry()).await?;
    let devices = seed_demo(&server.app, &sim).await?;
    let agents = switchboard_agent_sim::start(switchboard_agent_sim::AgentSimConfig {
        server: format!("http://{}", server.addr),
        enrolment_token: devices.enrolment_token.clone(),
        devices: 6,
        serial_prefix: "DEMO".to_owned(),
        epic_apps: vec!["Rover".to_owned(), "Haiku".to_owned()],
        delay: std::time::Duration::from_millis(300),
        heartbeat: std::time::Duration::from_secs(30),
        epic_sim: Some(sim.base_url()),
        ..switchboard_agent_sim::AgentSimConfig::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("starting the simulated phones: {e}"))?;
    let admin_token = server.bootstrap_token.clone().or_else(|| {
        std::fs::read_to_string(&token_file)
            .ok()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
    });
    Ok(Demo {
        server,
        sim,
        admin_token,
        devices,
        agents,
    })
}
