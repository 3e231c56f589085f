//! The vassal file as written: serde structs that refuse unknown keys and
//! keep every value's span, so validation can point at it.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use toml::Spanned;

/// The whole file.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    pub(super) name: Option<Spanned<String>>,
    pub(super) command: Option<Spanned<Vec<String>>>,
    pub(super) uid: Option<Spanned<u32>>,
    pub(super) gid: Option<Spanned<u32>>,
    pub(super) rootfs: Option<Spanned<PathBuf>>,
    pub(super) hostname: Option<Spanned<String>>,
    pub(super) workdir: Option<Spanned<PathBuf>>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, Spanned<String>>,
    pub(super) network: Option<RawNetwork>,
    #[serde(default)]
    pub(super) mount: Vec<RawMount>,
    pub(super) mask: Option<Vec<Spanned<PathBuf>>>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    pub(super) user_namespace: Option<RawUserNs>,
    pub(super) seccomp: Option<RawSeccomp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    pub(super) router: Option<Spanned<PathBuf>>,
    pub(super) address: Option<Spanned<String>>,
    pub(super) address6: Option<Spanned<String>>,
    pub(super) gateway: Option<Spanned<String>>,
    pub(super) mtu: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMount {
    pub(super) source: Spanned<PathBuf>,
    pub(super) target: Spanned<PathBuf>,
    #[serde(default)]
    pub(super) writable: bool,
    pub(super) quota: Option<Spanned<SizeOrInt>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) memory: Option<Spanned<SizeOrInt>>,
    pub(super) cpu: Option<Spanned<f64>>,
    pub(super) pids: Option<Spanned<u64>>,
    pub(super) nofile: Option<Spanned<u64>>,
    pub(super) tmp_size: Option<Spanned<SizeOrInt>>,
    pub(super) wall_clock: Option<Spanned<String>>,
    pub(super) net_out: Option<Spanned<SizeOrInt>>,
    pub(super) net_out_burst: Option<Spanned<SizeOrInt>>,
    pub(super) net_in: Option<Spanned<SizeOrInt>>,
    pub(super) net_in_burst: Option<Spanned<SizeOrInt>>,
    pub(super) file_size: Option<Spanned<SizeOrInt>>,
    pub(super) io_read: Option<Spanned<SizeOrInt>>,
    pub(super) io_write: Option<Spanned<SizeOrInt>>,
    pub(super) io_read_iops: Option<Spanned<u64>>,
    pub(super) io_write_iops: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum SizeOrInt {
    Int(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUserNs {
    pub(super) uid_map: Spanned<String>,
    pub(super) gid_map: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSeccomp {
    pub(super) profile: Spanned<String>,
}
