//! A certificate authority made with `openssl` for a test: the CA of the
//! etcd servers, the certificates it signs, and a second, unrelated CA to
//! play an impostor. EC P-256 keys (fast to make), certificates valid two
//! days, keys written mode 0600 and certificates 0644, all root's: what the
//! router's configuration checks expect of real files.

use crate::run;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One CA in a directory of its own.
pub struct Pki {
    /// The directory holding every file of this CA.
    pub dir: PathBuf,
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    ca_key: PathBuf,
}

/// A certificate and its key.
pub struct Issued {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8, mode 0600).
    pub key: PathBuf,
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn new_key_args(key: &Path) -> Vec<String> {
    vec![
        "-newkey".into(),
        "ec".into(),
        "-pkeyopt".into(),
        "ec_paramgen_curve:prime256v1".into(),
        "-nodes".into(),
        "-keyout".into(),
        key.display().to_string(),
    ]
}

impl Pki {
    /// A new self-signed CA named `name` under `parent/name`.
    pub fn new(parent: &Path, name: &str) -> Pki {
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        let ca_key = dir.join("ca.key");
        run(Command::new("openssl")
            .args(["req", "-x509"])
            .args(new_key_args(&ca_key))
            .arg("-out")
            .arg(&ca)
            .args(["-days", "2", "-subj", &format!("/CN={name}")])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]));
        chmod(&ca_key, 0o600);
        chmod(&ca, 0o644);
        Pki { dir, ca, ca_key }
    }

    /// A certificate for common name `cn` (etcd takes it as the user name
    /// of a client without a password), for servers (with `ips` as its
    /// addresses) and clients alike, as etcd's own gateway dials its
    /// server with the server certificate.
    pub fn issue(&self, file: &str, cn: &str, ips: &[IpAddr]) -> Issued {
        let cert = self.dir.join(format!("{file}.pem"));
        let key = self.dir.join(format!("{file}.key"));
        let csr = self.dir.join(format!("{file}.csr"));
        let ext = self.dir.join(format!("{file}.ext"));
        let mut extensions = String::from(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n",
        );
        if !ips.is_empty() {
            let sans: Vec<String> = ips.iter().map(|a| format!("IP:{a}")).collect();
            extensions.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        std::fs::write(&ext, extensions).unwrap();
        run(Command::new("openssl")
            .args(["req", "-new"])
            .args(new_key_args(&key))
            .arg("-out")
            .arg(&csr)
            .args(["-subj", &format!("/CN={cn}")]));
        run(Command::new("openssl")
            .args(["x509", "-req", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&self.ca)
            .arg("-CAkey")
            .arg(&self.ca_key)
            .args(["-set_serial", &format!("0x{:x}", rand_serial())])
            .arg("-out")
            .arg(&cert)
            .args(["-days", "2", "-extfile"])
            .arg(&ext));
        chmod(&key, 0o600);
        chmod(&cert, 0o644);
        Issued { cert, key }
    }
}

/// A serial number distinct between certificates of one test run.
fn rand_serial() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    (t << 8) ^ NEXT.fetch_add(1, Ordering::Relaxed)
}
