//! The last block held (and the address reservations in it), kept in a
//! file so a router that starts while etcd is unreachable keeps serving
//! its block. The file is input: size-capped, strictly parsed, and checked
//! against the configuration before use.

use super::alloc::Reservation;
use crate::config::cluster::ClusterConfig;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Largest state file read.
const MAX_STATE_LEN: u64 = 1 << 20;

/// The state file could not be read or written, or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Reading or writing failed.
    #[error("{step} the cluster state file {path}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The content is not a state of this configuration.
    #[error("the cluster state file {path} is invalid: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

/// What is persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The node that held the block.
    pub node: String,
    /// The block's IPv4 network.
    pub block: Ipv4Net,
    /// Automatic address reservations in it.
    #[serde(default)]
    pub reservations: Vec<Reservation>,
}

/// Reads and validates the state; `Ok(None)` when there is no file.
pub fn read(config: &ClusterConfig) -> Result<Option<(u32, State)>, PersistError> {
    let path = &config.state_file;
    let invalid = |why: String| PersistError::Invalid {
        path: path.clone(),
        why,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(PersistError::Io {
                step: "opening",
                path: path.clone(),
                source,
            })
        }
    };
    let mut text = String::new();
    file.take(MAX_STATE_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|source| PersistError::Io {
            step: "reading",
            path: path.clone(),
            source,
        })?;
    if text.len() as u64 > MAX_STATE_LEN {
        return Err(invalid(format!("longer than {MAX_STATE_LEN} bytes")));
    }
    let state: State = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    let index = validate(config, &state).map_err(invalid)?;
    Ok(Some((index, state)))
}

/// Checks a state against the configuration: same node, a block of the
/// prefix, reservations inside it with valid names and distinct addresses.
pub fn validate(config: &ClusterConfig, state: &State) -> Result<u32, String> {
    if state.node != config.node {
        return Err(format!(
            "it belongs to node {:?}, this is {:?}",
            state.node, config.node
        ));
    }
    let index = config.blocks.index_of(state.block).ok_or_else(|| {
        format!(
            "{} is not a /{} block of {}",
            state.block,
            config.blocks.block_len(),
            config.blocks.prefix()
        )
    })?;
    let block = config
        .blocks
        .block(index)
        .ok_or_else(|| format!("block {index} does not exist"))?;
    let mut seen = HashSet::new();
    for r in &state.reservations {
        vassal_attach::validate_project_name(&r.project)
            .map_err(|why| format!("reservation project {:?} {why}", r.project))?;
        vassal_attach::validate_vassal_name(&r.name)
            .map_err(|why| format!("reservation name {:?} {why}", r.name))?;
        if !block.hosts().any(|h| h == r.ipv4) {
            return Err(format!(
                "reservation {} is not a vassal address of {}",
                r.ipv4, block.net
            ));
        }
        if !seen.insert(r.ipv4) {
            return Err(format!("reservation {} is listed twice", r.ipv4));
        }
    }
    Ok(index)
}

/// Writes the state atomically (a temporary file renamed over it), mode
/// 0600, creating the directory.
pub fn write(path: &Path, state: &State) -> Result<(), PersistError> {
    let io = |step| {
        move |source| PersistError::Io {
            step,
            path: path.to_owned(),
            source,
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating the directory of"))?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("creating"))?;
    let text = serde_json::to_vec_pretty(state).unwrap_or_default();
    f.write_all(&text).map_err(io("writing"))?;
    f.sync_all().map_err(io("syncing"))?;
    std::fs::rename(&tmp, path).map_err(io("renaming"))
}
