//! `vassal-router`: command line.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vassal_router::config::Config;
use vassal_router::{client, daemon};

const DEFAULT_SOCKET: &str = "/run/vassal/router.sock";

/// The vassal router: gateway, firewall, NAT egress and accounting for
/// vassals' tun devices.
///
/// It creates a host tun device (the vassals' gateway), listens on a unix
/// control socket where vassal-launch attaches each vassal's tun fd, and
/// moves packets between vassals, the host and (through kernel NAT) the
/// internet, applying the operator's firewall rules and counting bytes per
/// project for Prometheus.
#[derive(Parser)]
#[command(name = "vassal-router", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
Examples:
  vassal-router run                                  # built-in defaults (vr0, 10.200.0.1/16)
  vassal-router run --config /etc/vassal/router.toml
  vassal-router check-config /etc/vassal/router.toml
  vassal-router check-rules /etc/vassal/firewall.toml
  vassal-router import-uwsgi emperor.ini > /etc/vassal/firewall.toml
  vassal-router stats --json
  vassal-router cluster                              # blocks and identity cache, JSON
  vassal-router reload                               # same as: kill -HUP <pid>

Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more.";

#[derive(Subcommand)]
enum Command {
    /// Run the router (as root) until SIGTERM or SIGINT; SIGHUP reloads the rules.
    ///
    /// Every configuration key is optional; without --config the built-in
    /// defaults apply: device vr0, gateway 10.200.0.1/16, control socket
    /// /run/vassal/router.sock, metrics on 127.0.0.1:9810, the embedded
    /// default rules (vassals reach the internet, not each other nor private
    /// ranges; nothing reaches into a vassal) and NAT masquerade on. The
    /// router's nftables table (inet vassal_<device>) is installed NAT on or
    /// off: it drops packets with vassal sources sent into the device, and
    /// closes every address of the host to vassals but the gateway (left to
    /// the rules) and the ports of `[host] allow = ["udp/53", "tcp/8000-8080"]`.
    Run {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and print the effective configuration.
    CheckConfig {
        /// Configuration file (TOML).
        file: PathBuf,
    },
    /// Validate a firewall rule file: prints a summary (exit 0) or every
    /// problem with file:line:column (exit 2).
    CheckRules {
        /// Rule file (TOML).
        file: PathBuf,
    },
    /// Convert the tuntap-router-firewall-in/out lines of a uWSGI .ini file
    /// into a vassal rule file, printed on stdout.
    ImportUwsgi {
        /// uWSGI .ini file.
        file: PathBuf,
    },
    /// Print per-project counters of a running router.
    Stats {
        /// Print JSON (one array of project objects) instead of a table.
        #[arg(long)]
        json: bool,
        /// The router's control socket.
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Print a running router's cluster view as JSON: its node and block,
    /// whether etcd answers, every node's block and the identity cache.
    Cluster {
        /// The router's control socket.
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Make a running router re-read its rule file (like SIGHUP). An invalid
    /// file is refused and the old rules stay in force.
    Reload {
        /// The router's control socket.
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vassal-router: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run { config } => {
            let config = match &config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            runtime
                .block_on(daemon::run(config))
                .context("running the router")?;
        }
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            println!("{}: ok\n{config:#?}", file.display());
        }
        Command::CheckRules { file } => match firewall_rules::RuleSet::load(&file) {
            Ok(set) => println!("{}", set.summary()),
            Err(errors) => {
                eprintln!("{errors}");
                return Ok(ExitCode::from(2));
            }
        },
        Command::ImportUwsgi { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            match firewall_rules::uwsgi::import(&text, &file) {
                Ok(toml) => print!("{toml}"),
                Err(errors) => {
                    eprintln!("{errors}");
                    return Ok(ExitCode::from(2));
                }
            }
        }
        Command::Stats { json, socket } => {
            let projects = client::stats(&socket)
                .with_context(|| format!("asking {} for stats", socket.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&projects)?);
            } else {
                print!("{}", client::format_table(&projects));
            }
        }
        Command::Cluster { socket } => {
            let view = client::cluster(&socket)
                .with_context(|| format!("asking {} for the cluster view", socket.display()))?;
            println!("{}", serde_json::to_string_pretty(&view)?);
        }
        Command::Reload { socket } => {
            let (out_rules, in_rules) = client::reload(&socket)
                .with_context(|| format!("asking {} to reload", socket.display()))?;
            println!("reloaded: {out_rules} out rules, {in_rules} in rules");
        }
    }
    Ok(ExitCode::SUCCESS)
}
