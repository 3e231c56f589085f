//! The etcd security keys of `[cluster]`: the CA that signs the etcd
//! servers' certificates, the router's client certificate and key, and an
//! etcd user whose password is read from a file (docs/cluster.md,
//! "Protecting etcd").
//!
//! The files are checked when the configuration is read, so that
//! `check-config` refuses what the router could not use or should not
//! trust: whoever can replace the CA file can impersonate etcd, and whoever
//! can read the key or the password can write the cluster's keys. A secret
//! or a key never appears in a message; only paths and the user's name do.
//!
//! Self-contained (imports nothing of the crate), like `cluster.rs`.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// Largest file read (certificates, key, password): a mistaken path to a
/// big file is refused instead of read whole.
const MAX_FILE: u64 = 1 << 20;

/// Longest etcd user name accepted.
const MAX_USER_LEN: usize = 128;

/// The etcd security keys, validated. Holds paths and the user's name
/// only: the secrets are read when the router connects (see
/// [`read_secret`]), so that no `{:?}` of the configuration shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdSecurity {
    /// `etcd_ca`: PEM file of the CA (or CAs) the etcd servers'
    /// certificates must chain to; set exactly when the endpoints are
    /// `https://`.
    pub ca: Option<PathBuf>,
    /// `etcd_cert` and `etcd_key`: the router's client certificate (PEM
    /// chain) and its private key (PEM).
    pub client: Option<ClientCert>,
    /// `etcd_user` and `etcd_password_file`.
    pub user: Option<EtcdUser>,
}

/// A client certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The certificate chain (PEM).
    pub cert: PathBuf,
    /// The private key (PEM), root's and private.
    pub key: PathBuf,
}

/// An etcd user (role-based access control).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdUser {
    /// The user's name.
    pub name: String,
    /// The file holding its password (root's and private).
    pub password_file: PathBuf,
}

/// The security keys as written (fields of `[cluster]`).
pub struct RawSecurity {
    /// `etcd_ca`.
    pub ca: Option<Spanned<PathBuf>>,
    /// `etcd_cert`.
    pub cert: Option<Spanned<PathBuf>>,
    /// `etcd_key`.
    pub key: Option<Spanned<PathBuf>>,
    /// `etcd_user`.
    pub user: Option<Spanned<String>>,
    /// `etcd_password_file`.
    pub password_file: Option<Spanned<PathBuf>>,
}

/// What a file holds, for the checks on it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Public (a certificate): nobody but its owner may write it.
    Public,
    /// A private key or a password: nobody but its owner may read it.
    Secret,
}

/// Checks that `path` is an absolute path to a regular file (symbolic links
/// followed, the target checked) owned by root or by the user running us,
/// that nobody else may write, and for a secret nobody else may read; then
/// reads it. The messages name the path and never the content.
fn read_checked(path: &Path, kind: Kind) -> Result<Vec<u8>, String> {
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != euid {
        return Err(format!(
            "{} is owned by uid {}: it must be root's",
            path.display(),
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    match kind {
        Kind::Secret if mode & 0o077 != 0 => {
            return Err(format!(
                "{} has mode {mode:04o}: group or others may access it (chmod 600)",
                path.display()
            ))
        }
        Kind::Public if mode & 0o022 != 0 => {
            return Err(format!(
                "{} has mode {mode:04o}: group or others may write it (chmod 644)",
                path.display()
            ))
        }
        _ => {}
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(format!(
            "{} is larger than {MAX_FILE} bytes",
            path.display()
        ));
    }
    Ok(bytes)
}

/// Reads a PEM file of certificates, checked as by the configuration.
pub fn read_certificates(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = read_checked(path, Kind::Public)?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        cert.map_err(|e| format!("{}: not a PEM certificate file ({e})", path.display()))?;
        count += 1;
    }
    if count == 0 {
        return Err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(bytes)
}

/// Reads a PEM private key, checked as by the configuration. The parser's
/// own message is left out: it may quote the file.
pub fn read_private_key(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = read_checked(path, Kind::Secret)?;
    if PrivateKeyDer::from_pem_slice(&bytes).is_err() {
        return Err(format!(
            "{} holds no PEM private key (-----BEGIN PRIVATE KEY----- or its RSA/EC forms)",
            path.display()
        ));
    }
    Ok(bytes)
}

/// Reads the password file: its first line, without the line end. Checked
/// as by the configuration; the password itself is never in a message.
pub fn read_secret(path: &Path) -> Result<String, String> {
    let bytes = read_checked(path, Kind::Secret)?;
    let text =
        String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        return Err(format!(
            "{} is empty: the password is its first line",
            path.display()
        ));
    }
    Ok(line.to_owned())
}

fn validate_user(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_USER_LEN {
        return Err("must be 1 to 128 bytes long");
    }
    if !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        return Err("may only contain printable ASCII without spaces or ':'");
    }
    Ok(())
}

/// Validates the keys against the endpoints' scheme: `https` says whether
/// they are all `https://`, `etcd` is the span of the endpoint list. `at`
/// turns a span and a message into the caller's located error.
pub fn validate<E>(
    raw: RawSecurity,
    https: bool,
    etcd: Range<usize>,
    at: &impl Fn(Option<Range<usize>>, String) -> E,
) -> Result<EtcdSecurity, E> {
    let file = |field: &str,
                value: &Spanned<PathBuf>,
                read: fn(&Path) -> Result<Vec<u8>, String>|
     -> Result<PathBuf, E> {
        read(value.get_ref())
            .map_err(|why| at(Some(value.span()), format!("cluster.{field}: {why}")))?;
        Ok(value.get_ref().clone())
    };
    if !https {
        // Over http:// a certificate would be unused and a password would
        // cross the network in clear text.
        for (field, span) in [
            ("etcd_ca", raw.ca.as_ref().map(Spanned::span)),
            ("etcd_cert", raw.cert.as_ref().map(Spanned::span)),
            ("etcd_key", raw.key.as_ref().map(Spanned::span)),
            ("etcd_user", raw.user.as_ref().map(Spanned::span)),
            (
                "etcd_password_file",
                raw.password_file.as_ref().map(Spanned::span),
            ),
        ] {
            if let Some(span) = span {
                return Err(at(
                    Some(span),
                    format!("cluster.{field}: needs https:// endpoints in cluster.etcd (over http:// nothing is encrypted)"),
                ));
            }
        }
        return Ok(EtcdSecurity::default());
    }
    let ca = match &raw.ca {
        Some(ca) => file("etcd_ca", ca, read_certificates)?,
        None => {
            return Err(at(
                Some(etcd),
                "cluster.etcd: https:// endpoints need cluster.etcd_ca, the PEM file of the CA that signs the etcd servers' certificates".into(),
            ))
        }
    };
    let client = match (&raw.cert, &raw.key) {
        (Some(cert), Some(key)) => Some(ClientCert {
            cert: file("etcd_cert", cert, read_certificates)?,
            key: file("etcd_key", key, read_private_key)?,
        }),
        (None, None) => None,
        (Some(cert), None) => {
            return Err(at(
                Some(cert.span()),
                "cluster.etcd_cert: needs cluster.etcd_key (both or neither)".into(),
            ))
        }
        (None, Some(key)) => {
            return Err(at(
                Some(key.span()),
                "cluster.etcd_key: needs cluster.etcd_cert (both or neither)".into(),
            ))
        }
    };
    let user = match (raw.user, &raw.password_file) {
        (Some(user), Some(password)) => {
            validate_user(user.get_ref()).map_err(|why| {
                at(
                    Some(user.span()),
                    format!("cluster.etcd_user: {:?} {why}", user.get_ref()),
                )
            })?;
            read_secret(password.get_ref())
                .map_err(|why| at(Some(password.span()), format!("cluster.etcd_password_file: {why}")))?;
            Some(EtcdUser {
                name: user.into_inner(),
                password_file: password.get_ref().clone(),
            })
        }
        (None, None) => None,
        (Some(user), None) => {
            return Err(at(
                Some(user.span()),
                "cluster.etcd_user: needs cluster.etcd_password_file (both or neither; the password is never written in the configuration)".into(),
            ))
        }
        (None, Some(password)) => {
            return Err(at(
                Some(password.span()),
                "cluster.etcd_password_file: needs cluster.etcd_user (both or neither)".into(),
            ))
        }
    };
    Ok(EtcdSecurity {
        ca: Some(ca),
        client,
        user,
    })
}
