//! `vassal-launch`: command line.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use vassal_launch::config::{Overrides, VassalConfig};
use vassal_launch::{enter, gc, launch};

/// Runs a customer's command as a vassal: its own namespaces, a read-only
/// root, cgroup limits, no privileges, and a network attached to
/// vassal-router.
#[derive(Parser)]
#[command(name = "vassal-launch", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
Examples:
  vassal-launch run --config /etc/vassal/alice.toml
  vassal-launch run --name alice --uid 10001 --address 10.200.0.2 -- /usr/bin/python3 -m http.server
  vassal-launch run --name job --uid 10001 --report /tmp/job.json -- /bin/sh -c 'make test'
  vassal-launch check /etc/vassal/alice.toml
  vassal-launch enter alice                 # a shell inside alice, as her user
  vassal-launch enter alice -- ps ax
  vassal-launch gc                          # remove what killed launchers left

The vassal file reference and the order of every privileged step are in
docs/design.md; run as root.";

#[derive(Subcommand)]
enum Command {
    /// Run a vassal until its command ends; exits with the command's status
    /// (or 128 + the signal that killed it). The command gets fds 0-2, in a
    /// session of its own; those that are a terminal are replaced by a pty
    /// of the vassal's own, relayed to the operator's terminal.
    Run {
        /// Vassal file (TOML). Flags below override its values.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Project name (also the hostname and cgroup name).
        #[arg(long)]
        name: Option<String>,
        /// The vassal's IPv4 address, or `auto` (leased from the router);
        /// gives it a network through the router.
        #[arg(long)]
        address: Option<vassal_launch::config::AddressChoice>,
        /// uid the command runs as.
        #[arg(long)]
        uid: Option<u32>,
        /// gid the command runs as (default: the uid).
        #[arg(long)]
        gid: Option<u32>,
        /// Root filesystem, bound read-only (default /).
        #[arg(long)]
        rootfs: Option<PathBuf>,
        /// The router's control socket (default /run/vassal/router.sock).
        #[arg(long)]
        router: Option<PathBuf>,
        /// Write a JSON report here when the vassal ends.
        #[arg(long)]
        report: Option<PathBuf>,
        /// The command and its arguments (after `--`).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Validate a vassal file: exit 0, or 2 with every problem named by
    /// line, column and field.
    Check {
        /// Vassal file (TOML).
        file: PathBuf,
    },
    /// Run a command (default: a shell) inside a running vassal, as its
    /// user, on a pseudo-terminal of the vassal's own.
    Enter {
        /// The vassal's name.
        name: String,
        /// Command and arguments (after `--`); default /bin/sh.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Remove the state files and empty cgroups that killed launchers left
    /// (every launch does this too); prints one line per file or cgroup
    /// removed or kept. A live vassal's are never touched.
    Gc,
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            // 125, like other container runners: the launcher itself failed,
            // as opposed to the command (its own status) or a bad file (2).
            eprintln!("vassal-launch: {}", render(&e));
            ExitCode::from(125)
        }
    }
}

/// The error and its causes on one line, each said once (our error types
/// already quote their cause's text).
fn render(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

fn real_main() -> Result<i32> {
    match Cli::parse().command {
        Command::Check { file } => match VassalConfig::load(&file, &Overrides::default()) {
            Ok(c) => {
                println!(
                    "{}: ok (vassal {}, uid {}, gid {}, {})",
                    file.display(),
                    c.name,
                    c.uid,
                    c.gid,
                    c.network
                        .as_ref()
                        .map_or("loopback only".to_string(), |n| if n.auto {
                            "address auto".to_string()
                        } else {
                            format!("address {}", n.address)
                        })
                );
                Ok(0)
            }
            Err(e) => {
                eprintln!("{e}");
                Ok(2)
            }
        },
        Command::Run {
            config,
            name,
            address,
            uid,
            gid,
            rootfs,
            router,
            report,
            command,
        } => {
            let overrides = Overrides {
                name,
                address,
                uid,
                gid,
                rootfs,
                router,
                command,
            };
            let loaded = match &config {
                Some(path) => VassalConfig::load(path, &overrides),
                None => VassalConfig::from_overrides(&overrides),
            };
            let vassal = match loaded {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(2);
                }
            };
            let outcome = launch::run(&vassal, report.as_deref())
                .with_context(|| format!("launching vassal {}", vassal.name))?;
            Ok(outcome.status)
        }
        Command::Gc => {
            let done = gc::gc(std::path::Path::new(launch::MOUNTINFO))
                .context("reaping dead launchers' leftovers")?;
            for item in &done {
                println!("{item}");
            }
            let removed = done
                .iter()
                .filter(|d| !matches!(d, gc::Reaped::Kept { .. }))
                .count();
            println!("gc: removed {removed}");
            Ok(0)
        }
        Command::Enter { name, command } => {
            let command = if command.is_empty() {
                vec!["/bin/sh".to_string()]
            } else {
                command
            };
            enter::enter(&name, &command).with_context(|| format!("entering vassal {name}"))
        }
    }
}
