//! The host tun device: the vassals' gateway in the host namespace.
//! Created by the router, addressed and brought up with `ip` (host side,
//! once at start), removed by the kernel when the router's fd closes.

use crate::config::Config;
use crate::tun::{self, TunError};
use std::os::fd::OwnedFd;
use std::process::Command;

/// The host tun could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum HostTunError {
    /// Creating the device failed.
    #[error(transparent)]
    Create(#[from] TunError),
    /// An `ip` command failed.
    #[error("configuring device {device}: `ip {args}` failed: {message}")]
    Ip {
        /// The device.
        device: String,
        /// The arguments.
        args: String,
        /// Its stderr, or why it could not run.
        message: String,
    },
}

/// Txqueuelen of the host tun: a short queue overflows under a large TCP
/// window (see docs/design.md).
pub const TXQUEUELEN: u32 = 5000;

/// Creates the host tun, sets its MTU, queue length and addresses, and
/// brings it up.
pub fn create(config: &Config) -> Result<OwnedFd, HostTunError> {
    let fd = tun::create(&config.device)?;
    let dev = config.device.as_str();
    let mtu = config.limits.mtu.to_string();
    let txq = TXQUEUELEN.to_string();
    ip(
        dev,
        &["link", "set", "dev", dev, "mtu", &mtu, "txqueuelen", &txq],
    )?;
    let gw = config.gateway.to_string();
    ip(dev, &["-4", "addr", "replace", &gw, "dev", dev])?;
    match config.gateway6 {
        Some(g6) => {
            let g6 = g6.to_string();
            ip(dev, &["-6", "addr", "replace", &g6, "dev", dev, "nodad"])?;
        }
        // Without an IPv6 subnet the kernel's link-local chatter on the
        // device (router solicitations, MLD) would only be dropped and
        // counted as host no_route noise.
        None => {
            let path = format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6");
            if std::path::Path::new(&path).exists() {
                std::fs::write(&path, "1").map_err(|e| HostTunError::Ip {
                    device: dev.to_owned(),
                    args: format!("(write 1 to {path})"),
                    message: e.to_string(),
                })?;
            }
        }
    }
    ip(dev, &["link", "set", "dev", dev, "up"])?;
    Ok(fd)
}

fn ip(device: &str, args: &[&str]) -> Result<(), HostTunError> {
    let err = |message: String| HostTunError::Ip {
        device: device.to_owned(),
        args: args.join(" "),
        message,
    };
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(())
}
