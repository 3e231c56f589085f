//! How the router reaches etcd: TLS with the configured CA, its client
//! certificate, and an etcd user (docs/cluster.md, "Protecting etcd").
//!
//! The files are read once at start (checked again as `check-config`
//! checks them) and kept in memory for the process's lifetime: a rotated
//! certificate or password takes a restart. [`Credentials`] has no `Debug`
//! on purpose: it holds the key and the password, which must never reach a
//! log line or an error.

use crate::config::etcd_security::{self, EtcdSecurity};
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use std::time::Duration;

/// The security settings could not be loaded at start.
#[derive(Debug, thiserror::Error)]
#[error("loading the etcd {what}: {why}")]
pub struct CredentialsError {
    /// Which file (`CA`, `client certificate`, ...).
    what: &'static str,
    /// The path and what is wrong with it (never the content).
    why: String,
}

fn loading(what: &'static str) -> impl FnOnce(String) -> CredentialsError {
    move |why| CredentialsError { what, why }
}

/// The TLS settings and the etcd user, in memory.
pub struct Credentials {
    tls: Option<TlsOptions>,
    user: Option<(String, String)>,
}

impl Credentials {
    /// Reads the files named by `security`.
    pub fn load(security: &EtcdSecurity) -> Result<Credentials, CredentialsError> {
        let tls = match &security.ca {
            None => None,
            Some(ca) => {
                let ca = etcd_security::read_certificates(ca).map_err(loading("CA"))?;
                let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
                if let Some(client) = &security.client {
                    let cert = etcd_security::read_certificates(&client.cert)
                        .map_err(loading("client certificate"))?;
                    let key = etcd_security::read_private_key(&client.key)
                        .map_err(loading("client key"))?;
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                Some(tls)
            }
        };
        let user = match &security.user {
            None => None,
            Some(u) => Some((
                u.name.clone(),
                etcd_security::read_secret(&u.password_file).map_err(loading("password"))?,
            )),
        };
        Ok(Credentials { tls, user })
    }

    /// Whether the endpoints are `https://`.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The etcd user's name, if any (for messages).
    pub fn user(&self) -> Option<&str> {
        self.user.as_ref().map(|(name, _)| name.as_str())
    }

    /// The connection options of one session.
    pub fn options(&self) -> ConnectOptions {
        let mut o = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            // A member cut off from the majority fails requests instead of
            // serving stale reads or holding watches open.
            .with_require_leader(true);
        if let Some(tls) = &self.tls {
            o = o.with_tls(tls.clone());
        }
        if let Some((name, password)) = &self.user {
            // etcd's tokens expire (--auth-token-ttl); a long session
            // authenticates again instead of failing.
            o = o
                .with_user(name.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        o
    }
}

/// An etcd client error with its causes: etcd-client's own message stops
/// at "transport error" or the gRPC status, and the cause an operator needs
/// (an unknown CA, a certificate etcd refused) is further down the chain.
pub fn describe(e: &etcd_client::Error) -> String {
    let mut text = match e {
        etcd_client::Error::GRpcStatus(s) => {
            format!("{:?}: {}", s.code(), s.message())
        }
        other => other.to_string(),
    };
    let mut source: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::GRpcStatus(s) => std::error::Error::source(s),
        etcd_client::Error::TransportError(t) => std::error::Error::source(t),
        _ => None,
    };
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// The client certificate's keys, for the hints.
const CLIENT_CERT_KEYS: &str =
    "cluster.etcd_cert/etcd_key missing, or not signed by etcd's --trusted-ca-file";

/// A hint for the operator when `text` (from [`describe`]) shows why a
/// secured connection failed, naming the key to look at. `opening_tls`:
/// the error is of the first requests on a new TLS connection, where a
/// closed connection is how etcd refuses a client certificate (its alert
/// comes after the client's side of the handshake is done, and is often
/// lost with the connection).
pub fn hint(text: &str, opening_tls: bool) -> Option<String> {
    let t = text.to_ascii_lowercase();
    let closed = ["connection closed", "broken pipe", "connection reset"]
        .iter()
        .any(|c| t.contains(c));
    let hint = if t.contains("unknownissuer")
        || t.contains("unknown issuer")
        || t.contains("badsignature")
    {
        "TLS handshake: the server's certificate is not signed by cluster.etcd_ca".to_owned()
    } else if t.contains("notvalidforname") || t.contains("not valid for name") {
        "TLS handshake: the server's certificate does not name this endpoint's host".to_owned()
    } else if t.contains("certificaterequired")
        || t.contains("bad certificate")
        || t.contains("badcertificate")
        || t.contains("unknownca")
        || t.contains("unknown ca")
    {
        format!("TLS handshake: etcd refused this router's client certificate ({CLIENT_CERT_KEYS})")
    } else if opening_tls && closed {
        format!("TLS handshake: etcd closed the connection, as it does when it refuses this router's client certificate ({CLIENT_CERT_KEYS})")
    } else if t.contains("invalid user id or password") || t.contains("authentication failed") {
        "authentication: etcd refused cluster.etcd_user with the password of cluster.etcd_password_file".to_owned()
    } else if t.contains("permission denied") {
        "authorization: the etcd user (cluster.etcd_user, else the client certificate's common name) has no role granting readwrite on cluster.key_prefix"
            .to_owned()
    } else if t.contains("user name is empty") {
        "authentication: etcd demands a user: set cluster.etcd_user and cluster.etcd_password_file, or run etcd with --client-cert-auth and a user named after the client certificate's common name".to_owned()
    } else if t.contains("authentication is not enabled") {
        "authentication: etcd has no authentication enabled; remove cluster.etcd_user or run `etcdctl auth enable`".to_owned()
    } else {
        return None;
    };
    Some(hint)
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    /// A directory of files for one test, removed on drop.
    struct Files(PathBuf);

    impl Files {
        fn new(name: &str) -> Files {
            let dir = std::env::temp_dir().join(format!(
                "vassal-etcd-security-{name}-{}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Files(dir)
        }

        fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A PEM section of `kind` (the parser checks the framing and the
    /// base64, not the DER inside).
    fn pem(kind: &str) -> String {
        format!("-----BEGIN {kind}-----\nMIIBfDCC\n-----END {kind}-----\n")
    }

    /// The cluster table with https endpoints and `extra` lines; the
    /// `etcd` line is line 3, `extra` starts at line 9.
    fn config(extra: &str) -> String {
        format!(
            "[cluster]\nnode = \"host-a\"\netcd = [\"https://198.51.100.1:2379\", \"https://198.51.100.2:2379\"]\nunderlay = \"198.51.100.11\"\nprefix = \"10.200.0.0/16\"\nblock = 24\nstate_file = \"/tmp/x.json\"\n\n{extra}"
        )
    }

    struct Good {
        files: Files,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
        password: PathBuf,
    }

    fn good(name: &str) -> Good {
        let files = Files::new(name);
        let ca = files.write("ca.pem", &pem("CERTIFICATE"), 0o644);
        let cert = files.write("client.pem", &pem("CERTIFICATE"), 0o644);
        let key = files.write("client.key", &pem("PRIVATE KEY"), 0o600);
        let password = files.write("password", "s3cret-pw\n", 0o600);
        Good {
            files,
            ca,
            cert,
            key,
            password,
        }
    }

    fn keys(g: &Good) -> String {
        format!(
            "etcd_ca = \"{}\"\netcd_cert = \"{}\"\netcd_key = \"{}\"\netcd_user = \"vassal-host-a\"\netcd_password_file = \"{}\"\n",
            g.ca.display(),
            g.cert.display(),
            g.key.display(),
            g.password.display()
        )
    }

    fn error_of(text: &str) -> String {
        Config::parse(text, "r.toml").unwrap_err().to_string()
    }

    #[test]
    fn a_full_security_table_parses_and_loads() {
        let g = good("full");
        let c = Config::parse(&config(&keys(&g)), "r.toml")
            .unwrap()
            .cluster
            .unwrap();
        let s = &c.security;
        assert_eq!(s.ca.as_deref(), Some(g.ca.as_path()));
        let client = s.client.as_ref().unwrap();
        assert_eq!(
            (client.cert.as_path(), client.key.as_path()),
            (g.cert.as_path(), g.key.as_path())
        );
        let user = s.user.as_ref().unwrap();
        assert_eq!(user.name, "vassal-host-a");
        // The printed configuration (check-config) names the files, never
        // what they hold.
        let printed = format!("{c:#?}");
        assert!(
            printed.contains("client.key") && !printed.contains("s3cret-pw"),
            "{printed}"
        );
        let creds = super::Credentials::load(s).unwrap();
        assert_eq!(creds.user(), Some("vassal-host-a"));
        assert_eq!(
            creds.user.as_ref().map(|u| u.1.as_str()),
            Some("s3cret-pw"),
            "the first line, without its end"
        );
        drop(g.files);
    }

    #[test]
    fn tls_is_optional_with_http_and_required_with_https() {
        let plain = config("").replace("https://", "http://");
        let c = Config::parse(&plain, "r").unwrap().cluster.unwrap();
        assert_eq!(c.security, Default::default());
        let e = error_of(&config(""));
        assert!(
            e.starts_with("r.toml:3:8: cluster.etcd: https:// endpoints need cluster.etcd_ca"),
            "{e}"
        );
        let mixed = config("").replacen("https://198.51.100.2", "http://198.51.100.2", 1);
        let e = error_of(&mixed);
        assert!(
            e.starts_with("r.toml:3:38: cluster.etcd:") && e.contains("mixes http:// and https://"),
            "{e}"
        );
        let e = error_of(&config("").replace("https://198.51.100.1", "ftp://198.51.100.1"));
        assert!(e.contains("must start with http:// or https://"), "{e}");
    }

    #[test]
    fn security_keys_are_refused_over_http() {
        let g = good("http");
        let text = config(&keys(&g)).replace("https://", "http://");
        let e = error_of(&text);
        assert!(
            e.starts_with("r.toml:9:11: cluster.etcd_ca: needs https:// endpoints"),
            "{e}"
        );
        let only_user = config(&format!(
            "etcd_user = \"u\"\netcd_password_file = \"{}\"\n",
            g.password.display()
        ))
        .replace("https://", "http://");
        let e = error_of(&only_user);
        assert!(
            e.starts_with("r.toml:9:13: cluster.etcd_user: needs https://"),
            "{e}"
        );
    }

    #[test]
    fn pairs_are_both_or_neither() {
        let g = good("pairs");
        let ca = format!("etcd_ca = \"{}\"\n", g.ca.display());
        let cases = [
            (
                format!("{ca}etcd_cert = \"{}\"\n", g.cert.display()),
                "r.toml:10:13: cluster.etcd_cert: needs cluster.etcd_key",
            ),
            (
                format!("{ca}etcd_key = \"{}\"\n", g.key.display()),
                "r.toml:10:12: cluster.etcd_key: needs cluster.etcd_cert",
            ),
            (
                format!("{ca}etcd_user = \"u\"\n"),
                "r.toml:10:13: cluster.etcd_user: needs cluster.etcd_password_file",
            ),
            (
                format!("{ca}etcd_password_file = \"{}\"\n", g.password.display()),
                "r.toml:10:22: cluster.etcd_password_file: needs cluster.etcd_user",
            ),
            (
                format!(
                    "{ca}etcd_user = \"a b\"\netcd_password_file = \"{}\"\n",
                    g.password.display()
                ),
                "r.toml:10:13: cluster.etcd_user: \"a b\" may only contain",
            ),
        ];
        for (extra, want) in cases {
            let e = error_of(&config(&extra));
            assert!(e.starts_with(want), "{extra}: {e}");
        }
    }

    #[test]
    fn files_must_exist_parse_and_be_root_s_and_private() {
        let g = good("files");
        let base = keys(&g);
        let missing = g.files.0.join("missing.pem");
        let garbage = g.files.write("garbage.pem", "not a certificate\n", 0o644);
        let cert_as_key = g.files.write("cert-as-key.key", &pem("CERTIFICATE"), 0o600);
        let shared_key = g.files.write("shared.key", &pem("PRIVATE KEY"), 0o640);
        let shared_password = g.files.write("shared-password", "s3cret-pw\n", 0o604);
        let writable_ca = g.files.write("writable-ca.pem", &pem("CERTIFICATE"), 0o666);
        let empty_password = g.files.write("empty-password", "\n", 0o600);
        let dir = g.files.0.clone();
        let cases: Vec<(&Path, PathBuf, &str)> = vec![
            (&g.ca, missing.clone(), "r.toml:9:11: cluster.etcd_ca: "),
            (&g.ca, garbage.clone(), "r.toml:9:11: cluster.etcd_ca: "),
            (&g.ca, writable_ca, "group or others may write it"),
            (&g.ca, dir, "is not a regular file"),
            (&g.ca, PathBuf::from("ca.pem"), "is not an absolute path"),
            (&g.cert, garbage, "r.toml:10:13: cluster.etcd_cert: "),
            (&g.key, cert_as_key, "r.toml:11:12: cluster.etcd_key: "),
            (
                &g.key,
                shared_key,
                "mode 0640: group or others may access it (chmod 600)",
            ),
            (&g.key, missing, "No such file or directory"),
            (
                &g.password,
                shared_password,
                "r.toml:13:22: cluster.etcd_password_file: ",
            ),
            (&g.password, empty_password, "is empty"),
        ];
        for (from, to, want) in cases {
            let text = config(&base.replace(
                &format!("\"{}\"", from.display()),
                &format!("\"{}\"", to.display()),
            ));
            let e = error_of(&text);
            assert!(
                e.contains(want),
                "{} -> {}: {e}",
                from.display(),
                to.display()
            );
            assert!(
                e.contains(&to.display().to_string()),
                "the path is named: {e}"
            );
            assert!(
                !e.contains("s3cret-pw") && !e.contains("MIIB"),
                "no content: {e}"
            );
        }
        // Someone else's file, even private, is refused.
        let theirs = g.files.write("theirs.key", &pem("PRIVATE KEY"), 0o600);
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        let e = error_of(&config(
            &base.replace(&g.key.display().to_string(), &theirs.display().to_string()),
        ));
        assert!(e.contains("owned by uid 65534: it must be root's"), "{e}");
    }

    #[test]
    fn hints_name_the_key_to_look_at() {
        for (text, want) in [
            (
                "Unavailable: error trying to connect: invalid peer certificate: UnknownIssuer",
                "cluster.etcd_ca",
            ),
            (
                "received fatal alert: CertificateRequired",
                "client certificate",
            ),
            (
                "InvalidArgument: etcdserver: authentication failed, invalid user ID or password",
                "cluster.etcd_password_file",
            ),
            (
                "PermissionDenied: etcdserver: permission denied",
                "cluster.key_prefix",
            ),
            (
                "InvalidArgument: etcdserver: user name is empty",
                "set cluster.etcd_user",
            ),
        ] {
            assert!(
                super::hint(text, false).is_some_and(|h| h.contains(want)),
                "{text}"
            );
        }
        let closed = "Cancelled: operation was canceled: transport error: connection closed";
        assert!(super::hint(closed, true).is_some_and(|h| h.contains("client certificate")));
        assert_eq!(
            super::hint(closed, false),
            None,
            "not on a plain or established connection"
        );
        assert_eq!(
            super::hint("Unavailable: tcp connect error: Connection refused", true),
            None
        );
    }
}
