//! Rule-file errors: every problem names the file, line, column, rule field
//! and what was expected, and all of them are collected before refusing.

use std::fmt;
use std::path::{Path, PathBuf};

/// What is wrong with one value of a rule file. The `Display` form is
/// `<what is wrong>; expected <what>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleErrorKind {
    /// The file could not be read at all.
    #[error("cannot read the rule file ({reason}); expected a readable TOML file")]
    Read {
        /// The operating system's reason.
        reason: String,
    },
    /// The text is not TOML.
    #[error("{message}; expected valid TOML")]
    Syntax {
        /// The TOML parser's message (one line).
        message: String,
    },
    /// A key this language does not know.
    #[error("unknown key `{key}`; expected one of {expected}")]
    UnknownKey {
        /// The key as written.
        key: String,
        /// The keys allowed at this place.
        expected: &'static str,
    },
    /// A value of the wrong TOML type.
    #[error("found {found}; expected {expected}")]
    WrongType {
        /// The TOML type found.
        found: &'static str,
        /// What belongs here.
        expected: &'static str,
    },
    /// A rule without its mandatory `action`.
    #[error("rule has no action; expected action = \"allow\" or \"deny\"")]
    MissingAction,
    /// An action or policy other than allow/deny.
    #[error("unknown action `{value}`; expected \"allow\" or \"deny\"")]
    BadAction {
        /// The value as written.
        value: String,
    },
    /// Not parseable as an address or CIDR.
    #[error("`{value}` is not an address or CIDR; expected an IPv4 or IPv6 CIDR such as 10.0.0.0/8 or 2001:db8::/32")]
    BadCidr {
        /// The value as written.
        value: String,
    },
    /// A CIDR whose address has bits set beyond the prefix.
    #[error("`{value}` has host bits set; expected the network address {network}")]
    HostBits {
        /// The value as written.
        value: String,
        /// The network the operator probably meant.
        network: String,
    },
    /// A protocol name this language does not know.
    #[error("unknown protocol `{value}`; expected tcp, udp, icmp, icmpv6 or a number 0-255")]
    UnknownProto {
        /// The value as written.
        value: String,
    },
    /// A port list element that is not a number or range.
    #[error(
        "`{value}` is not a port or port range; expected ports 1-65535 like \"25,465,1000-2000\""
    )]
    BadPort {
        /// The element as written.
        value: String,
    },
    /// Port 0 (never a real destination) or beyond 65535.
    #[error("port {value} is out of range; expected ports 1-65535")]
    PortOutOfRange {
        /// The number as written.
        value: String,
    },
    /// A range whose low end is above its high end.
    #[error("port range {low}-{high} is upside down; expected the low port first ({high}-{low})")]
    PortRangeReversed {
        /// The first number as written.
        low: u16,
        /// The second number as written.
        high: u16,
    },
    /// Ports on a protocol that has none.
    #[error("ports given with proto {proto}, which has no ports; expected proto tcp or udp (or no proto)")]
    PortsWithoutPorts {
        /// The rule's protocol.
        proto: String,
    },
    /// Source and destination of different IP families.
    #[error("src is {src_family} but dst is {dst_family}, so the rule can never match; expected addresses of one family")]
    MixedFamily {
        /// "IPv4" or "IPv6".
        src_family: &'static str,
        /// "IPv4" or "IPv6".
        dst_family: &'static str,
    },
    /// ICMP with an IPv6 address, or ICMPv6 with an IPv4 address.
    #[error("proto {proto} with an {family} address can never match; expected {expected}")]
    ProtoFamily {
        /// The rule's protocol name.
        proto: &'static str,
        /// The family of the rule's addresses.
        family: &'static str,
        /// The fix.
        expected: &'static str,
    },
    /// A project name that breaks the project naming rule.
    #[error("project name `{name}` {why}; expected 1-32 lowercase letters, digits, '-' or '_', starting with a letter or digit")]
    BadProjectName {
        /// The name as written.
        name: String,
        /// Which part of the rule it breaks.
        why: &'static str,
    },
    /// A `peer` word this language does not know.
    #[error("unknown peer `{value}`; expected \"same\" (a vassal of this vassal's project), \"other\" (a vassal of another project), \"vassal\", \"unknown\" (a vassal address nobody known holds) or \"outside\" (not a vassal address)")]
    BadPeer {
        /// The value as written.
        value: String,
    },
    /// `peer_project` beside a `peer` that has no project.
    #[error("peer_project with peer = \"{peer}\" can never match (such a peer has no project); expected peer = \"same\", \"other\" or \"vassal\", or no peer")]
    PeerWithoutProject {
        /// The rule's peer word.
        peer: &'static str,
    },
    /// `project = []`, which would match nothing.
    #[error("empty project list matches nothing; expected a project name or a non-empty list (omit the key for every project)")]
    EmptyProjectList,
    /// A uWSGI firewall line that is neither `<action> <src> <dst>` nor a
    /// single action word.
    #[error("`{value}` is not a tuntap firewall rule; expected \"<allow|deny> <src[/mask]> <dst[/mask]>\" or a single \"allow\"/\"deny\"")]
    UwsgiRule {
        /// The value as written.
        value: String,
    },
    /// A uWSGI action word other than allow/deny (uWSGI itself would
    /// silently treat it as allow).
    #[error(
        "unknown action `{value}` (uWSGI would silently allow); expected \"allow\" or \"deny\""
    )]
    UwsgiAction {
        /// The word as written.
        value: String,
    },
    /// A uWSGI address that is not IPv4 `a.b.c.d[/mask]`.
    #[error(
        "`{value}` is not an IPv4 address with an optional mask; expected a.b.c.d or a.b.c.d/0-32"
    )]
    UwsgiAddress {
        /// The value as written.
        value: String,
    },
    /// A `/0` mask on a non-zero address: undefined behaviour in uWSGI (a
    /// 32-bit shift by 32), which x86 builds turn into `/32`.
    #[error("`{value}`: a /0 mask on a non-zero address is undefined in uWSGI (x86 builds match it as /32); expected 0.0.0.0 for any address, or an explicit /32")]
    UwsgiZeroMask {
        /// The value as written.
        value: String,
    },
    /// An empty port string.
    #[error("empty port list; expected ports 1-65535 like \"25,465,1000-2000\" (omit the key for every port)")]
    EmptyPortList,
}

/// One problem in a rule file, with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// The rule file.
    pub path: PathBuf,
    /// 1-based line; 0 when the problem has no position (the file is unreadable).
    pub line: usize,
    /// 1-based column in characters; 0 when `line` is 0.
    pub column: usize,
    /// Where in the rule language: `out[3].dst_port`, `default.in`, `toml`, ...
    pub place: String,
    /// What is wrong and what was expected.
    pub kind: RuleErrorKind,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.path.display(),
            self.line,
            self.column,
            self.place,
            self.kind
        )
    }
}

impl std::error::Error for RuleError {}

/// Every problem found in a rule file; the file is refused as a whole.
/// `Display` prints one line per problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleErrors {
    errors: Vec<RuleError>,
}

impl RuleErrors {
    pub(crate) fn new(mut errors: Vec<RuleError>) -> Self {
        errors.sort_by_key(|e| (e.line, e.column));
        RuleErrors { errors }
    }

    pub(crate) fn single(path: &Path, place: &str, kind: RuleErrorKind) -> Self {
        RuleErrors::new(vec![RuleError {
            path: path.to_path_buf(),
            line: 0,
            column: 0,
            place: place.to_owned(),
            kind,
        }])
    }

    /// The problems, in file order.
    pub fn errors(&self) -> &[RuleError] {
        &self.errors
    }
}

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RuleErrors {}
