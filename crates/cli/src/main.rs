//! `switchboard`: the one binary. `main` parses the command line and calls the library.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use switchboard_app::accounts::{NewToken, NewUser};
use switchboard_app::{AppError, Config, Principal, RequestContext};
use switchboard_cli::{init_tracing, keygen, open_app, standard_registry, start};
use switchboard_store::{AuditFilter, JobFilter};

/// mimalloc: per-thread free lists suit a server whose event loops allocate and free per request
/// (the system allocator's arena locks showed in the gateway's profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Connects shared mobile devices, apps and video visits to Epic."
)]
struct Cli {
    /// TOML configuration file (keys: see config/example.toml). Environment: SWITCHBOARD_CONFIG.
    #[arg(long, global = true, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (HTTP and job workers).
    Serve,
    /// Run Switchboard and the Epic simulator together, pre-wired, with seeded data.
    Demo {
        /// Where the Epic simulator listens.
        #[arg(long, default_value = "127.0.0.1:9090")]
        sim_listen: std::net::SocketAddr,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The job queue and its dead letters.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// Staff users.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// API tokens.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Epic environments.
    Epic {
        #[command(subcommand)]
        command: EpicCommand,
    },
    /// FHIR gateway: data adapters, gateways, apps and activations.
    Gateway {
        #[command(subcommand)]
        command: GatewayCommand,
    },
    /// Telehealth profiles and conferences.
    Telehealth {
        #[command(subcommand)]
        command: TelehealthCommand,
    },
    /// Generate a new master key and re-seal every stored secret with it.
    RotateMasterKey,
    /// Run the Epic simulator (a stand-in for a customer's Interconnect) on its own port.
    EpicSim(EpicSimArgs),
    /// Simulate shared devices running the locker app against a Switchboard server.
    AgentSim(AgentSimArgs),
    /// Render the managed AppConfig of Rover / Haiku / Canto and the locker app for your MDM
    /// (checked first; see `POST /admin/api/v1/devices/appconfig` for the plan's fields).
    Appconfig {
        /// The plan (JSON): `{"mdm"?, "apps": [...], "locker": {...}, "bundle_ids"?}`.
        #[arg(long)]
        file: PathBuf,
        /// Write the documents into this folder instead of printing them.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check an SSO credential profile (`<SSO>` XML) before importing it: prints the apps it
    /// covers and whether each gets one-tap autofill, or every reason it would be refused.
    SsoProfile {
        /// The profile's XML file.
        file: PathBuf,
        /// Also print the profile as Switchboard would store and export it.
        #[arg(long)]
        export: bool,
    },
    /// Print a random key as `value: <base64>` (32 bytes for Epic AES-256-CBC; 16 for legacy).
    Keygen {
        /// Key size in bytes: 32 or 16.
        size: usize,
    },
}

#[derive(clap::Args)]
struct EpicSimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: std::net::SocketAddr,
    /// Simulator configuration (TOML or JSON): instances, clients, system users. See docs/epic-sim.md.
    #[arg(long)]
    sim_config: Option<PathBuf>,
    /// Seed of the generated data set and of fault injection.
    #[arg(long)]
    seed: Option<u64>,
    /// Lifetime of issued access tokens, in seconds.
    #[arg(long)]
    token_lifetime_secs: Option<u64>,
    /// Inject a fault: `PATH_PART:EFFECT[:RATE]`, EFFECT = an HTTP status, `timeout` or `drop`
    /// (e.g. `DisassociateMobileDevice:503:0.2`). Repeatable.
    #[arg(long = "fault")]
    faults: Vec<String>,
}

#[derive(clap::Args)]
struct AgentSimArgs {
    /// Switchboard's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// An enrolment token (`switchboard` admin API or console: Devices → Enrolment tokens).
    #[arg(long)]
    enrolment_token: String,
    /// How many devices.
    #[arg(long, default_value_t = 10)]
    devices: usize,
    #[arg(long, default_value = "SIM")]
    serial_prefix: String,
    /// `ios` or `android`.
    #[arg(long, default_value = "ios")]
    platform: String,
    /// Epic apps on the devices, comma-separated (Rover, Haiku, Canto).
    #[arg(long, default_value = "Rover,Haiku")]
    epic_apps: String,
    /// `EpicMobileDeviceIDAppName` of the Epic apps.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    app_name: bool,
    /// Use the UUID rather than the serial number as `EpicMobileDeviceID`.
    #[arg(long)]
    id_from_uuid: bool,
    /// Report the locker's `epicRoverEpicMobileDeviceID` (Enhanced Rover logout).
    #[arg(long)]
    enhanced_rover: bool,
    /// Share of commands that fail (0-1).
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
    /// Milliseconds a command takes on the device.
    #[arg(long, default_value_t = 50)]
    delay_ms: u64,
    #[arg(long, default_value_t = 30)]
    heartbeat_secs: u64,
    /// Sign checked-out users in to the Epic apps in this `switchboard epic-sim` (base URL).
    #[arg(long)]
    epic_sim: Option<String>,
    /// Scripted check-out / check-in by badge: comma-separated badge numbers.
    #[arg(long)]
    badges: Option<String>,
    /// Scripted cycles (with --badges).
    #[arg(long, default_value_t = 1)]
    cycles: usize,
    /// Seconds each scripted check-out keeps its device.
    #[arg(long, default_value_t = 5)]
    hold_secs: u64,
    /// Stop after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    duration_secs: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(Subcommand)]
enum EpicCommand {
    /// List Epic environments with their JWK URLs.
    List,
    /// Test the connection to an environment (by name or id): DNS, TCP, TLS, metadata, token.
    Test { environment: String },
    /// Add an environment; prints the JWK URL to register with Epic.
    Create {
        #[arg(long)]
        name: String,
        /// `production` or `non_production`.
        #[arg(long)]
        kind: String,
        /// The Interconnect server URL, e.g. https://epic.hospital.org
        #[arg(long)]
        url: String,
        /// The instance, e.g. interconnect-prd
        #[arg(long)]
        instance: String,
        #[arg(long)]
        client_id: String,
        /// Comma-separated Epic apps: Rover,Haiku,Canto
        #[arg(long, value_delimiter = ',')]
        apps: Vec<String>,
        /// RS384 (default) or ES384
        #[arg(long)]
        key_algorithm: Option<String>,
    },
    /// Rotate an environment's signing key now (by name or id).
    Rotate { environment: String },
}

#[derive(Subcommand)]
enum GatewayCommand {
    /// List adapters, gateways, apps and activations.
    List,
    /// Create from a JSON file (the admin API's body): KIND is adapter, gateway, app or activation.
    /// An app's client secret is printed once.
    Create {
        kind: String,
        #[arg(long)]
        file: PathBuf,
    },
    /// Rotate an app's client secret (by id); the old one keeps working for `--grace-secs`.
    RotateSecret {
        app: String,
        #[arg(long, default_value_t = 86_400)]
        grace_secs: i64,
    },
    /// Health report of an activation (by id): token from Epic, metadata, one sample read.
    Health { activation: String },
}

#[derive(Subcommand)]
enum TelehealthCommand {
    /// List profiles with the launch URLs and redirect URIs to put in Epic.
    Profiles,
    /// Create a profile from a JSON file (the admin API's body; secrets stay off the command line).
    Create {
        #[arg(long)]
        file: PathBuf,
    },
    /// Remove a profile (by name or id); `--force` ends its active conferences first.
    Remove {
        profile: String,
        #[arg(long)]
        force: bool,
    },
    /// List conferences, newest first.
    Conferences {
        /// `active` or `ended`.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and explain mistakes.
    Check,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the hash chains; exits 1 if anything was altered or deleted.
    Verify,
    /// Write every entry as JSON lines (oldest first) to stdout or a file.
    Export {
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum JobsCommand {
    /// List jobs (newest first).
    List {
        /// `queued` or `dead`.
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Put a dead job back in the queue.
    Retry { id: i64 },
    /// Discard a dead job.
    Discard { id: i64 },
}

#[derive(Subcommand)]
enum UsersCommand {
    List,
    /// Create a user; with --password-stdin the password is read from the first line of stdin.
    Create {
        username: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a user's console password, read from the first line of stdin.
    SetPassword {
        username: String,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    List,
    /// Create a token for a user; prints the secret once.
    Create {
        #[arg(long)]
        user: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    Revoke {
        id: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::EpicSim(args) = cli.command {
        return run_epic_sim(&args);
    }
    if let Command::AgentSim(args) = cli.command {
        return run_agent_sim(args);
    }
    if let Command::Appconfig { file, out } = &cli.command {
        return match appconfig(file, out.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::SsoProfile { file, export } = &cli.command {
        return match sso_profile(file, *export) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Command::Keygen { size } = cli.command {
        return match keygen(size) {
            Ok(v) => {
                println!("value: {v}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        };
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn appconfig(file: &std::path::Path, out: Option<&std::path::Path>) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let plan: switchboard_app::appconfig::AppConfigPlan =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let files = switchboard_app::appconfig::render_appconfig(&plan).map_err(|e| match e {
        switchboard_app::AppError::Validation(v) => v
            .errors
            .iter()
            .map(|f| format!("{}: {}", f.field, f.message))
            .collect::<Vec<_>>()
            .join("\n       "),
        other => other.to_string(),
    })?;
    for f in files {
        match out {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                let path = dir.join(&f.filename);
                std::fs::write(&path, &f.content)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                println!(
                    "{} ({} for {}, {})",
                    path.display(),
                    f.mdm,
                    f.app,
                    f.bundle_id
                );
            }
            None => println!(
                "==> {} ({} for {}, {})\n{}",
                f.filename, f.mdm, f.app, f.bundle_id, f.content
            ),
        }
    }
    Ok(())
}

fn sso_profile(file: &std::path::Path, export: bool) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let profile = switchboard_domain::sso::parse_profile(&text)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    for app in &profile.apps {
        println!(
            "{}: {} ({})",
            app.nm,
            app.desc,
            if app.one_tap {
                "one-tap autofill for this associated domain"
            } else {
                "chosen from a list: nm is not a domain"
            }
        );
    }
    if export {
        print!("{}", switchboard_domain::sso::to_xml(&profile.tree));
    }
    Ok(())
}

/// Logs of the simulators (`SWITCHBOARD_LOG` filter, stderr): they run without a configuration.
fn init_simulator_logs() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(std::env::var("SWITCHBOARD_LOG").unwrap_or_else(|_| "info".to_owned()))
        .try_init();
}

/// The async runtime of the simulators, or the exit code when it cannot start.
fn simulator_runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        })
}

fn run_agent_sim(args: AgentSimArgs) -> ExitCode {
    init_simulator_logs();
    if !(0.0..=1.0).contains(&args.fail_rate) {
        eprintln!("error: --fail-rate must be between 0 and 1");
        return ExitCode::from(2);
    }
    let cfg = switchboard_agent_sim::AgentSimConfig {
        server: args.server,
        enrolment_token: args.enrolment_token,
        devices: args.devices,
        serial_prefix: args.serial_prefix,
        platform: args.platform,
        epic_apps: args
            .epic_apps
            .split(',')
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect(),
        append_app_name: args.app_name,
        id_from_uuid: args.id_from_uuid,
        enhanced_rover: args.enhanced_rover,
        fail_rate: args.fail_rate,
        delay: std::time::Duration::from_millis(args.delay_ms),
        heartbeat: std::time::Duration::from_secs(args.heartbeat_secs.max(1)),
        epic_sim: args.epic_sim,
        seed: args.seed,
        ..switchboard_agent_sim::AgentSimConfig::default()
    };
    let runtime = match simulator_runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let agents = match switchboard_agent_sim::start(cfg).await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!(
            "{} devices enrolled and polling for commands",
            agents.devices.len()
        );
        if let Some(badges) = &args.badges {
            let badges: Vec<String> = badges.split(',').map(|b| b.trim().to_owned()).collect();
            let (ok, failed) = agents
                .cycle(
                    &badges,
                    args.cycles,
                    std::time::Duration::from_secs(args.hold_secs),
                )
                .await;
            println!("scripted cycles: {ok} check-out/check-in cycles completed, {failed} refused");
        }
        if args.duration_secs > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(args.duration_secs)).await;
        } else if args.badges.is_none() {
            let _ = tokio::signal::ctrl_c().await;
        }
        let s = &agents.stats;
        println!(
            "heartbeats {}, commands {} ({} simulated failures), errors {}",
            s.heartbeats.load(std::sync::atomic::Ordering::Relaxed),
            s.commands.load(std::sync::atomic::Ordering::Relaxed),
            s.failures.load(std::sync::atomic::Ordering::Relaxed),
            s.errors.load(std::sync::atomic::Ordering::Relaxed),
        );
        agents.stop().await;
        ExitCode::SUCCESS
    })
}

fn run_epic_sim(args: &EpicSimArgs) -> ExitCode {
    init_simulator_logs();
    let mut config = match &args.sim_config {
        Some(p) => match switchboard_epic_sim::SimConfig::from_file(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        None => switchboard_epic_sim::SimConfig::default(),
    };
    config.listen = args.listen;
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    if let Some(t) = args.token_lifetime_secs {
        config.token_lifetime_secs = t;
    }
    let mut rules = Vec::new();
    for spec in &args.faults {
        match switchboard_epic_sim::faults::parse_fault_spec(spec) {
            Ok(r) => rules.push(r),
            Err(e) => {
                eprintln!("error: --fault {spec}: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let runtime = match simulator_runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let sim = match switchboard_epic_sim::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: starting the Epic simulator: {e}");
                return ExitCode::FAILURE;
            }
        };
        for r in rules {
            sim.sim.add_fault(r);
        }
        println!("Epic simulator listening on {}", sim.base_url());
        for i in &sim.sim.config().instances {
            println!(
                "  {} ({}):",
                i.name,
                if i.production {
                    "production"
                } else {
                    "non-production"
                }
            );
            println!("    token URL  {}", sim.token_url(&i.name));
            println!("    FHIR R4    {}", sim.fhir_base(&i.name));
        }
        println!(
            "  control API {}/_sim/ (clients, mobile, faults, calls)",
            sim.base_url()
        );
        std::io::stdout().flush().ok();
        shutdown_signal().await;
        sim.shutdown().await;
        ExitCode::SUCCESS
    })
}

fn read_line_from_stdin(what: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .with_context(|| format!("reading {what} from stdin"))?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    anyhow::ensure!(!line.is_empty(), "no {what} on stdin");
    Ok(line)
}

fn describe(e: AppError) -> anyhow::Error {
    match e {
        AppError::Validation(v) => anyhow::anyhow!(
            "{}",
            v.errors
                .iter()
                .map(|f| format!("{}: {}", f.field, f.message))
                .collect::<Vec<_>>()
                .join("\n")
        ),
        other => anyhow::anyhow!("{other}"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one match arm per subcommand reads best in one place"
)]
async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    let cli = Principal::cli();
    let ctx = RequestContext::default();
    match command {
        Command::Keygen { .. }
        | Command::EpicSim(_)
        | Command::AgentSim(_)
        | Command::Appconfig { .. }
        | Command::SsoProfile { .. } => {
            unreachable!("handled before configuration is loaded")
        }
        Command::Serve => {
            let token_path = config.bootstrap_token_path();
            let running = start(config, standard_registry()).await?;
            if let Some(token) = &running.bootstrap_token {
                println!(
                    "First start: created the admin user `{}`.",
                    running.app.config().bootstrap_admin
                );
                println!(
                    "Its API token (shown once; also written to {} with mode 0600):",
                    token_path.display()
                );
                println!("  {token}");
            }
            println!(
                "Switchboard is listening on http://{} (console: http://{}/console)",
                running.addr, running.addr
            );
            std::io::stdout().flush().ok();
            let stop = running.stop.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                tracing::info!("shutting down");
                stop.cancel();
            });
            running.wait().await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { sim_listen } => {
            let mut config = config;
            if config.data_dir == std::path::Path::new("./switchboard-data") {
                // Keep demo data apart from a real installation's.
                config.data_dir = PathBuf::from("./switchboard-demo-data");
            }
            let demo = switchboard_cli::start_demo(config, sim_listen).await?;
            let url = format!("http://{}", demo.server.addr);
            let sim = demo.sim.base_url();
            println!("Switchboard demo");
            println!();
            println!("  Console       {url}/console");
            match &demo.admin_token {
                Some(t) => println!("  Admin token   {t}"),
                None => println!(
                    "  Admin token   (not found: delete ./switchboard-demo-data to start afresh)"
                ),
            }
            println!("  API           {url}/admin/api/v1  (OpenAPI: {url}/openapi.json)");
            println!();
            println!("  Epic simulator {sim}");
            println!(
                "    non-production token URL  {}",
                demo.sim.token_url("interconnect-tst")
            );
            println!(
                "    non-production FHIR R4    {}",
                demo.sim.fhir_base("interconnect-tst")
            );
            println!("    control API               {sim}/_sim/ (clients, mobile, faults, calls)");
            println!();
            println!(
                "  Telehealth    profile \"Demo Health\" ({})",
                switchboard_cli::DEMO_TELEHEALTH_PROFILE
            );
            println!(
                "    a video-visit link as Epic would make it (open the \"url\" in a browser):"
            );
            println!(
                "        curl -X POST -H 'content-type: application/json' -d '{{\"launch_url\":\"{url}/telehealth/v1/provider/launch/{}\",\"instance\":\"interconnect-tst\",\"key\":\"{}\"}}' {sim}/_sim/telehealth/launch",
                switchboard_cli::DEMO_TELEHEALTH_PROFILE,
                switchboard_cli::DEMO_LAUNCH_KEY
            );
            println!("    status pages  {url}/console/telehealth/conferences");
            println!();
            println!(
                "  Shared devices  6 simulated phones on the demo ward ({url}/console/devices)"
            );
            println!(
                "    kiosk         {} (type a badge and press Enter)",
                demo.devices.kiosk_url
            );
            let badges: Vec<String> = demo
                .devices
                .badges
                .iter()
                .map(|(u, b)| format!("{b} ({u})"))
                .collect();
            println!("    badges        {}", badges.join(", "));
            println!(
                "    check-in      device page → Check in now: force quit Rover and Haiku, Epic logout of both ({sim}/_sim/mobile shows who is signed in)"
            );
            println!(
                "    AutoFill      an Epic Rover SSO profile; rn.garcia's Rover credential is released only to the phone she holds ({url}/console/devices/sso-profiles)"
            );
            println!();
            println!(
                "  Try:  curl -H \"Authorization: Bearer <admin token>\" {url}/admin/api/v1/users"
            );
            println!(
                "        curl -X POST -H 'content-type: application/json' -d '{{\"client_id\":\"switchboard-demo\",\"instance\":\"interconnect-tst\"}}' {sim}/_sim/tokens"
            );
            println!();
            println!("Press Ctrl-C to stop.");
            std::io::stdout().flush().ok();
            let stop = demo.server.stop.clone();
            tokio::spawn(async move {
                shutdown_signal().await;
                stop.cancel();
            });
            demo.server.wait().await?;
            demo.agents.stop().await;
            demo.sim.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let (app, _) = open_app(config).await?;
            let status = app.store().migration_status().await?;
            println!(
                "database is at migration {} ({} applied)",
                status.applied.last().copied().unwrap_or(0),
                status.applied.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check,
        } => {
            let vars: Vec<(String, String)> = std::env::vars().collect();
            println!("configuration is valid");
            println!("  listen        {}", config.listen);
            println!("  public_url    {}", config.public_url());
            println!(
                "  database      {}",
                if config.is_sqlite() {
                    config.database_url()
                } else {
                    "postgres (URL hidden)".to_owned()
                }
            );
            println!(
                "  master key    {}",
                if config.master_key.is_some() {
                    "from master_key".to_owned()
                } else {
                    config.master_key_path().display().to_string()
                }
            );
            let warnings = config.warnings(&vars);
            for w in &warnings {
                println!("warning: {w}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit { command } => {
            let (app, _) = open_app(config).await?;
            match command {
                AuditCommand::Verify => {
                    let r = app.verify_audit().await.map_err(describe)?;
                    if r.ok {
                        println!(
                            "audit log intact: {} entries in {} chains verified",
                            r.entries_checked, r.chains
                        );
                        Ok(ExitCode::SUCCESS)
                    } else {
                        println!("AUDIT LOG TAMPERED: {} problem(s)", r.problems.len());
                        for p in &r.problems {
                            println!("  {p}");
                        }
                        Ok(ExitCode::from(1))
                    }
                }
                AuditCommand::Export { output } => {
                    let mut out: Box<dyn Write> = match &output {
                        Some(p) => Box::new(std::io::BufWriter::new(
                            std::fs::File::create(p)
                                .with_context(|| format!("creating {}", p.display()))?,
                        )),
                        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
                    };
                    let mut filter = AuditFilter {
                        oldest_first: true,
                        limit: 1_000,
                        ..AuditFilter::default()
                    };
                    let mut n = 0u64;
                    loop {
                        let page = app.list_audit(filter.clone()).await.map_err(describe)?;
                        for r in &page {
                            serde_json::to_writer(&mut out, r)?;
                            out.write_all(b"\n")?;
                            n += 1;
                        }
                        match page.last() {
                            Some(last) if page.len() >= 1_000 => filter.after_id = Some(last.id),
                            _ => break,
                        }
                    }
                    out.flush()?;
                    eprintln!("exported {n} audit entries");
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Jobs { command } => {
            let (app, _) = open_app(config).await?;
            match command {
                JobsCommand::List { state, limit } => {
                    for j in app
                        .list_jobs(JobFilter {
                            state,
                            kind: None,
                            limit,
                        })
                        .await
                        .map_err(describe)?
                    {
                        println!(
                            "{}\t{}\t{}\t{}/{}\t{}",
                            j.id,
                            j.kind,
                            j.state,
                            j.attempts,
                            j.max_attempts,
                            j.last_error.unwrap_or_default()
                        );
                    }
                }
                JobsCommand::Retry { id } => {
                    app.retry_dead_job(&cli, &ctx, id).await.map_err(describe)?;
                    println!("job {id} is queued again");
                }
                JobsCommand::Discard { id } => {
                    app.discard_dead_job(&cli, &ctx, id)
                        .await
                        .map_err(describe)?;
                    println!("job {id} discarded");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Users { command } => {
            let (app, _) = open_app(config).await?;
            match command {
                UsersCommand::List => {
                    for u in app.list_users().await.map_err(describe)? {
                        println!(
                            "{}\t{}\t{}\t{}",
                            u.id,
                            u.username,
                            u.role,
                            if u.disabled { "disabled" } else { "active" }
                        );
                    }
                }
                UsersCommand::Create {
                    username,
                    role,
                    display_name,
                    password_stdin,
                } => {
                    let password = if password_stdin {
                        Some(read_line_from_stdin("password")?)
                    } else {
                        None
                    };
                    let u = app
                        .create_user(
                            &cli,
                            &ctx,
                            NewUser {
                                username,
                                display_name,
                                role,
                                password,
                            },
                        )
                        .await
                        .map_err(describe)?;
                    println!("created user {} ({}) with id {}", u.username, u.role, u.id);
                }
                UsersCommand::SetPassword { username } => {
                    let user = app
                        .list_users()
                        .await
                        .map_err(describe)?
                        .into_iter()
                        .find(|u| u.username == username);
                    let user = user.with_context(|| format!("no user named `{username}`"))?;
                    let password = read_line_from_stdin("password")?;
                    app.set_password(&cli, &ctx, &user.id, password)
                        .await
                        .map_err(describe)?;
                    println!("password set for {username}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tokens { command } => {
            let (app, _) = open_app(config).await?;
            let admin = Principal {
                role: switchboard_domain::Role::Admin,
                ..cli.clone()
            };
            match command {
                TokensCommand::List => {
                    for t in app.list_tokens(&admin).await.map_err(describe)? {
                        let state = if t.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        };
                        println!(
                            "{}\t{}\t{}…\t{}\t{state}",
                            t.id, t.user_id, t.prefix, t.name
                        );
                    }
                }
                TokensCommand::Create {
                    user,
                    name,
                    role,
                    expires_in_days,
                } => {
                    let owner = app
                        .list_users()
                        .await
                        .map_err(describe)?
                        .into_iter()
                        .find(|u| u.username == user);
                    let owner = owner.with_context(|| format!("no user named `{user}`"))?;
                    let t = app
                        .create_token(
                            &admin,
                            &ctx,
                            NewToken {
                                name,
                                user_id: Some(owner.id),
                                role,
                                expires_in_days,
                            },
                        )
                        .await
                        .map_err(describe)?;
                    println!("{}", t.secret);
                    eprintln!(
                        "token {} created for {user}; the secret above is shown once",
                        t.token.id
                    );
                }
                TokensCommand::Revoke { id } => {
                    app.revoke_token(&admin, &ctx, &id)
                        .await
                        .map_err(describe)?;
                    println!("token {id} revoked");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Gateway { command } => {
            let (app, _) = open_app(config).await?;
            match command {
                GatewayCommand::List => {
                    for a in app.list_adapters().await.map_err(describe)? {
                        println!(
                            "adapter\t{}\t{}\t{}",
                            a.id, a.name, a.settings.epic_r4_endpoint
                        );
                    }
                    for g in app.list_gateways().await.map_err(describe)? {
                        println!("gateway\t{}\t{}\t{}", g.id, g.name, g.fhir_base);
                    }
                    for a in app.list_gateway_apps().await.map_err(describe)? {
                        println!("app\t{}\t{}\t{}\t{}", a.id, a.name, a.client_id, a.scopes);
                    }
                    for a in app.list_activations().await.map_err(describe)? {
                        println!(
                            "activation\t{}\tapp {}\tgateway {}\t{}{}",
                            a.id,
                            a.app_id,
                            a.gateway_id,
                            a.ehr_auth,
                            a.jwk_url
                                .map(|u| format!("\tJWK URL {u}"))
                                .unwrap_or_default()
                        );
                    }
                }
                GatewayCommand::Create { kind, file } => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    let bad = |e: serde_json::Error| anyhow::anyhow!("{}: {e}", file.display());
                    let out = match kind.as_str() {
                        "adapter" => serde_json::to_string_pretty(
                            &app.save_adapter(
                                &cli,
                                &ctx,
                                None,
                                serde_json::from_str(&text).map_err(bad)?,
                            )
                            .await
                            .map_err(describe)?,
                        ),
                        "gateway" => serde_json::to_string_pretty(
                            &app.save_gateway(
                                &cli,
                                &ctx,
                                None,
                                serde_json::from_str(&text).map_err(bad)?,
                            )
                            .await
                            .map_err(describe)?,
                        ),
                        "app" => serde_json::to_string_pretty(
                            &app.create_gateway_app(
                                &cli,
                                &ctx,
                                serde_json::from_str(&text).map_err(bad)?,
                            )
                            .await
                            .map_err(describe)?,
                        ),
                        "activation" => serde_json::to_string_pretty(
                            &app.save_activation(
                                &cli,
                                &ctx,
                                None,
                                serde_json::from_str(&text).map_err(bad)?,
                            )
                            .await
                            .map_err(describe)?,
                        ),
                        other => {
                            anyhow::bail!("`{other}`: use adapter, gateway, app or activation")
                        }
                    }?;
                    println!("{out}");
                }
                GatewayCommand::RotateSecret {
                    app: id,
                    grace_secs,
                } => {
                    let r = app
                        .rotate_gateway_app_secret(&cli, &ctx, &id, grace_secs)
                        .await
                        .map_err(describe)?;
                    println!("new client secret (shown once): {}", r.client_secret);
                }
                GatewayCommand::Health { activation } => {
                    let r = app.activation_health(&activation).await.map_err(describe)?;
                    for s in &r.steps {
                        println!(
                            "{}\t{}\t{}{}",
                            if s.ok { "pass" } else { "FAIL" },
                            s.name,
                            s.detail,
                            s.hint
                                .as_ref()
                                .map(|h| format!("\n\tfix: {h}"))
                                .unwrap_or_default()
                        );
                    }
                    if !r.ok {
                        return Ok(ExitCode::from(1));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Telehealth { command } => {
            let (app, _) = open_app(config).await?;
            match command {
                TelehealthCommand::Profiles => {
                    for p in app.list_telehealth_profiles().await.map_err(describe)? {
                        println!(
                            "{}\t{}\t{} ({})\tactive {}\n  provider launch {}\n  patient launch  {}\n  redirect URIs   {} {}",
                            p.id,
                            p.name,
                            p.environment_name,
                            p.environment_kind.to_uppercase(),
                            p.active_conferences,
                            p.provider_launch_url,
                            p.patient_launch_url,
                            p.provider_redirect_uri,
                            p.patient_redirect_uri
                        );
                    }
                }
                TelehealthCommand::Create { file } => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("reading {}", file.display()))?;
                    let input: switchboard_app::telehealth::ProfileInput =
                        serde_json::from_str(&text)
                            .with_context(|| format!("{} is not a profile", file.display()))?;
                    let p = app
                        .create_telehealth_profile(&cli, &ctx, input, None)
                        .await
                        .map_err(describe)?;
                    println!("created {} with id {}", p.name, p.id);
                    println!("provider launch URL: {}", p.provider_launch_url);
                    println!("patient launch URL:  {}", p.patient_launch_url);
                }
                TelehealthCommand::Remove { profile, force } => {
                    let p = app
                        .list_telehealth_profiles()
                        .await
                        .map_err(describe)?
                        .into_iter()
                        .find(|p| p.id == profile || p.name == profile)
                        .with_context(|| format!("no telehealth profile named `{profile}`"))?;
                    app.delete_telehealth_profile(&cli, &ctx, &p.id, force)
                        .await
                        .map_err(describe)?;
                    println!(
                        "removed {}; its launch links now answer \"integration not found\"",
                        p.name
                    );
                }
                TelehealthCommand::Conferences { state, limit } => {
                    let page = app
                        .list_conferences(
                            &cli,
                            &switchboard_app::telehealth::ConferenceQuery {
                                state,
                                limit: Some(limit),
                                ..Default::default()
                            },
                        )
                        .await
                        .map_err(describe)?;
                    for c in page.items {
                        println!(
                            "{}\t{}\t{}\t{} participant(s)\t{}",
                            c.id,
                            c.state,
                            c.duration_secs
                                .map_or_else(|| "running".to_owned(), |d| format!("{d} s")),
                            c.participants.len(),
                            c.name
                        );
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Epic { command } => {
            let (app, _) = open_app(config).await?;
            let envs = app.list_environments().await.map_err(describe)?;
            match command {
                EpicCommand::Create {
                    name,
                    kind,
                    url,
                    instance,
                    client_id,
                    apps,
                    key_algorithm,
                } => {
                    let input = switchboard_app::epic_env::EnvironmentInput {
                        name: Some(name),
                        kind: Some(kind),
                        interconnect_url: Some(url),
                        instance: Some(instance),
                        client_id: Some(client_id),
                        apps: Some(apps),
                        key_algorithm,
                        ..Default::default()
                    };
                    let e = app
                        .create_environment(&cli, &ctx, input)
                        .await
                        .map_err(describe)?;
                    println!(
                        "created {} ({}) with id {}",
                        e.name,
                        e.kind.to_uppercase(),
                        e.id
                    );
                    println!("register this JWK URL with Epic: {}", e.key_set.jwk_url);
                    Ok(ExitCode::SUCCESS)
                }
                EpicCommand::Rotate { environment } => {
                    let env = envs
                        .into_iter()
                        .find(|e| e.id == environment || e.name == environment);
                    let env =
                        env.with_context(|| format!("no Epic environment named `{environment}`"))?;
                    let e = app
                        .rotate_environment_keys(&cli, &ctx, &env.id)
                        .await
                        .map_err(describe)?;
                    let new = e
                        .key_set
                        .keys
                        .iter()
                        .find(|k| k.state == "published")
                        .map(|k| k.kid.clone())
                        .unwrap_or_default();
                    println!(
                        "new key {new} published; it starts signing after {} s (the workers of a running server take the next steps)",
                        e.key_set.publish_delay_secs
                    );
                    Ok(ExitCode::SUCCESS)
                }
                EpicCommand::List => {
                    for e in envs {
                        println!(
                            "{}\t{}\t{}\t{}\t{}",
                            e.id,
                            e.name,
                            e.kind.to_uppercase(),
                            e.token_url,
                            e.key_set.jwk_url
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
                EpicCommand::Test { environment } => {
                    let env = envs
                        .into_iter()
                        .find(|e| e.id == environment || e.name == environment);
                    let env =
                        env.with_context(|| format!("no Epic environment named `{environment}`"))?;
                    let report = app
                        .test_connection(&cli, &ctx, &env.id)
                        .await
                        .map_err(describe)?;
                    println!(
                        "{} ({}): {}",
                        env.name,
                        env.kind.to_uppercase(),
                        if report.ok { "OK" } else { "PROBLEMS FOUND" }
                    );
                    for s in &report.steps {
                        let mark = match s.status {
                            switchboard_app::doctor::StepStatus::Pass => "pass",
                            switchboard_app::doctor::StepStatus::Warn => "WARN",
                            switchboard_app::doctor::StepStatus::Fail => "FAIL",
                            switchboard_app::doctor::StepStatus::Skipped => "skip",
                        };
                        println!("  [{mark}] {:<9} {}", s.name, s.detail);
                        if let Some(h) = &s.hint {
                            println!("              fix: {h}");
                        }
                    }
                    Ok(if report.ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    })
                }
            }
        }
        Command::RotateMasterKey => {
            let (app, _) = open_app(config).await?;
            let (old, new, n) = app.rotate_master_key(&cli).await.map_err(describe)?;
            println!(
                "master key rotated: {old} -> {new}; {n} secrets re-sealed; the old key was removed from the keyring"
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
