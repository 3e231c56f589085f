//! The operator side of the control socket: `vassal-router stats`,
//! `vassal-router cluster` and `vassal-router reload`.

use std::fmt::Write as _;
use std::os::fd::AsFd;
use std::path::Path;
use vassal_attach::transport::{self, TransportError};
use vassal_attach::{ProjectStats, Request, Response};

/// A control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached or the exchange broke.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The router refused or failed the request.
    #[error("the router answered: {0}")]
    Refused(String),
    /// The router answered something else than asked.
    #[error("unexpected answer from the router: {0:?}")]
    Unexpected(Box<Response>),
}

fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let fd = transport::connect(socket)?;
    match transport::call(fd.as_fd(), request, None)? {
        Response::Refused { reason, message } => Err(ClientError::Refused(format!(
            "{}: {message}",
            reason.as_str()
        ))),
        Response::Error { message } => Err(ClientError::Refused(message)),
        other => Ok(other),
    }
}

/// Fetches every project's counters.
pub fn stats(socket: &Path) -> Result<Vec<ProjectStats>, ClientError> {
    match call(socket, &Request::Stats)? {
        Response::Stats { projects, .. } => Ok(projects),
        other => Err(ClientError::Unexpected(Box::new(other))),
    }
}

/// The router's cluster view (`vassal-router cluster`), all datagrams of it
/// merged into one JSON object.
pub fn cluster(socket: &Path) -> Result<serde_json::Value, ClientError> {
    let fd = transport::connect(socket)?;
    transport::send_request(fd.as_fd(), &Request::Cluster, None)?;
    let mut view = serde_json::json!({});
    let (mut blocks, mut identities) = (Vec::new(), Vec::new());
    loop {
        match transport::recv_response(fd.as_fd())? {
            Response::Cluster {
                node,
                etcd_up,
                block,
                blocks: b,
                identities: i,
                more,
            } => {
                view = serde_json::json!({ "node": node, "etcd_up": etcd_up, "block": block });
                blocks.extend(b);
                identities.extend(i);
                if !more {
                    break;
                }
            }
            Response::Refused { reason, message } => {
                return Err(ClientError::Refused(format!(
                    "{}: {message}",
                    reason.as_str()
                )))
            }
            other => return Err(ClientError::Unexpected(Box::new(other))),
        }
    }
    view["blocks"] = serde_json::to_value(blocks).unwrap_or_default();
    view["identities"] = serde_json::to_value(identities).unwrap_or_default();
    Ok(view)
}

/// Asks for a rule reload; returns the out and in rule counts.
pub fn reload(socket: &Path) -> Result<(usize, usize), ClientError> {
    match call(socket, &Request::Reload)? {
        Response::Reloaded {
            out_rules,
            in_rules,
        } => Ok((out_rules, in_rules)),
        other => Err(ClientError::Unexpected(Box::new(other))),
    }
}

/// The human-readable table `vassal-router stats` prints.
pub fn format_table(projects: &[ProjectStats]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<32} {:>8} {:>14} {:>10} {:>14} {:>10} {:>7}  dropped",
        "project", "attached", "tx_bytes", "tx_pkts", "rx_bytes", "rx_pkts", "flows"
    );
    for p in projects {
        let dropped: Vec<String> = p
            .dropped
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        let _ = writeln!(
            s,
            "{:<32} {:>8} {:>14} {:>10} {:>14} {:>10} {:>7}  {}",
            p.project,
            if p.attached { "yes" } else { "no" },
            p.tx_bytes,
            p.tx_packets,
            p.rx_bytes,
            p.rx_packets,
            p.flows,
            if dropped.is_empty() {
                "-".to_owned()
            } else {
                dropped.join(" ")
            }
        );
    }
    s
}
