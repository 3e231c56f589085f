//! Rule-file text to a validated [`RuleSet`]: walks the span-carrying TOML
//! tree so every problem can be reported with its line and column, and
//! keeps going after a problem so the operator sees all of them at once.

use std::borrow::Cow;
use std::net::IpAddr;
use std::ops::Range;
use std::path::Path;

use ipnet::IpNet;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::error::{RuleError, RuleErrorKind, RuleErrors};
use crate::rules::{proto, Action, Chain, Defaults, PeerKind, PortSet, Rule, RuleSet};

const TOP_KEYS: &str = "default, out, in";
const DEFAULT_KEYS: &str = "out, in, established";
const RULE_KEYS: &str =
    "action, src, dst, proto, src_port, dst_port, project, peer, peer_project, log";

type Key<'i> = Spanned<Cow<'i, str>>;
type Value<'i> = Spanned<DeValue<'i>>;

/// Collects problems with their positions.
struct Report<'a> {
    text: &'a str,
    path: &'a Path,
    line_starts: Vec<usize>,
    errors: Vec<RuleError>,
}

impl<'a> Report<'a> {
    fn new(text: &'a str, path: &'a Path) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Report {
            text,
            path,
            line_starts,
            errors: Vec::new(),
        }
    }

    /// 1-based line and character column of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line, column + 1)
    }

    fn error(&mut self, span: Range<usize>, place: impl Into<String>, kind: RuleErrorKind) {
        let (line, column) = self.position(span.start);
        self.errors.push(RuleError {
            path: self.path.to_path_buf(),
            line,
            column,
            place: place.into(),
            kind,
        });
    }

    fn wrong_type(&mut self, value: &Value<'_>, place: &str, expected: &'static str) {
        let found = article_type(value.get_ref());
        self.error(
            value.span(),
            place,
            RuleErrorKind::WrongType { found, expected },
        );
    }
}

fn article_type(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl RuleSet {
    /// Parses and validates rule-file text; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<RuleSet, RuleErrors> {
        parse(text, origin)
    }

    /// Reads, parses and validates a rule file.
    pub fn load(path: &Path) -> Result<RuleSet, RuleErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            RuleErrors::single(
                path,
                "file",
                RuleErrorKind::Read {
                    reason: e.to_string(),
                },
            )
        })?;
        parse(&text, path)
    }
}

pub(crate) fn parse(text: &str, origin: &Path) -> Result<RuleSet, RuleErrors> {
    let mut report = Report::new(text, origin);
    let (doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in syntax {
            let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
            report.error(
                e.span().unwrap_or(0..0),
                "toml",
                RuleErrorKind::Syntax { message },
            );
        }
        return Err(RuleErrors::new(report.errors));
    }

    let mut defaults = Defaults::default();
    let mut chains: [Vec<Rule>; 2] = [Vec::new(), Vec::new()];
    for (key, value) in doc.get_ref() {
        match key.get_ref().as_ref() {
            "default" => defaults = parse_defaults(&mut report, value),
            "out" => chains[0] = parse_chain(&mut report, Chain::Out, value),
            "in" => chains[1] = parse_chain(&mut report, Chain::In, value),
            _ => unknown_key(&mut report, key, "", TOP_KEYS),
        }
    }
    if report.errors.is_empty() {
        Ok(RuleSet {
            origin: origin.to_path_buf(),
            defaults,
            chains,
        })
    } else {
        Err(RuleErrors::new(report.errors))
    }
}

fn unknown_key(report: &mut Report<'_>, key: &Key<'_>, prefix: &str, expected: &'static str) {
    let name = key.get_ref().to_string();
    report.error(
        key.span(),
        format!("{prefix}{name}"),
        RuleErrorKind::UnknownKey {
            key: name,
            expected,
        },
    );
}

fn parse_defaults(report: &mut Report<'_>, value: &Value<'_>) -> Defaults {
    let mut defaults = Defaults::default();
    let DeValue::Table(table) = value.get_ref() else {
        report.wrong_type(value, "default", "a [default] table");
        return defaults;
    };
    for (key, value) in table {
        match key.get_ref().as_ref() {
            "out" => {
                if let Some(a) = parse_action(report, value, "default.out") {
                    defaults.out = a;
                }
            }
            "in" => {
                if let Some(a) = parse_action(report, value, "default.in") {
                    defaults.inbound = a;
                }
            }
            "established" => match value.get_ref() {
                DeValue::Boolean(b) => defaults.established = *b,
                _ => report.wrong_type(value, "default.established", "true or false"),
            },
            _ => unknown_key(report, key, "default.", DEFAULT_KEYS),
        }
    }
    defaults
}

fn parse_action(report: &mut Report<'_>, value: &Value<'_>, place: &str) -> Option<Action> {
    match value.get_ref() {
        DeValue::String(s) => match s.as_ref() {
            "allow" => Some(Action::Allow),
            "deny" => Some(Action::Deny),
            other => {
                report.error(
                    value.span(),
                    place,
                    RuleErrorKind::BadAction {
                        value: other.to_owned(),
                    },
                );
                None
            }
        },
        _ => {
            report.wrong_type(value, place, "\"allow\" or \"deny\"");
            None
        }
    }
}

fn parse_chain(report: &mut Report<'_>, chain: Chain, value: &Value<'_>) -> Vec<Rule> {
    let name = chain.as_str();
    let DeValue::Array(items) = value.get_ref() else {
        let expected = match chain {
            Chain::Out => "an array of tables [[out]]",
            Chain::In => "an array of tables [[in]]",
        };
        report.wrong_type(value, name, expected);
        return Vec::new();
    };
    let mut rules = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let place = format!("{name}[{index}]");
        match item.get_ref() {
            DeValue::Table(table) => {
                if let Some(rule) = parse_rule(report, &place, item.span(), table) {
                    rules.push(rule);
                }
            }
            _ => report.wrong_type(item, &place, "a rule table"),
        }
    }
    rules
}

/// A field's parsed value together with where it was written.
struct Field<T> {
    value: T,
    span: Range<usize>,
}

/// `parse` applied to `value`, with where it was written.
fn located<T>(
    report: &mut Report<'_>,
    value: &Value<'_>,
    place: &str,
    parse: fn(&mut Report<'_>, &Value<'_>, &str) -> Option<T>,
) -> Option<Field<T>> {
    parse(report, value, place).map(|parsed| Field {
        value: parsed,
        span: value.span(),
    })
}

fn parse_rule(
    report: &mut Report<'_>,
    place: &str,
    span: Range<usize>,
    table: &DeTable<'_>,
) -> Option<Rule> {
    let before = report.errors.len();
    let mut action = None;
    let mut src: Option<Field<IpNet>> = None;
    let mut dst: Option<Field<IpNet>> = None;
    let mut protocol: Option<Field<u8>> = None;
    let mut src_port: Option<Field<PortSet>> = None;
    let mut dst_port: Option<Field<PortSet>> = None;
    let mut projects = None;
    let mut peer: Option<Field<PeerKind>> = None;
    let mut peer_projects: Option<Field<Vec<String>>> = None;
    let mut log = false;

    for (key, value) in table {
        let field = key.get_ref().as_ref();
        let here = format!("{place}.{field}");
        match field {
            "action" => action = parse_action(report, value, &here),
            "src" => src = located(report, value, &here, parse_net),
            "dst" => dst = located(report, value, &here, parse_net),
            "proto" => protocol = located(report, value, &here, parse_proto),
            "src_port" => src_port = located(report, value, &here, parse_ports),
            "dst_port" => dst_port = located(report, value, &here, parse_ports),
            "project" => projects = parse_projects(report, value, &here),
            "peer" => peer = located(report, value, &here, parse_peer),
            "peer_project" => peer_projects = located(report, value, &here, parse_projects),
            "log" => match value.get_ref() {
                DeValue::Boolean(b) => log = *b,
                _ => report.wrong_type(value, &here, "true or false"),
            },
            _ => unknown_key(report, key, &format!("{place}."), RULE_KEYS),
        }
    }

    if action.is_none() && !table.iter().any(|(k, _)| k.get_ref() == "action") {
        report.error(
            span.clone(),
            format!("{place}.action"),
            RuleErrorKind::MissingAction,
        );
    }

    // Ports exist only for tcp and udp.
    if let Some(p) = &protocol {
        if p.value != proto::TCP && p.value != proto::UDP {
            for (name, ports) in [("src_port", &src_port), ("dst_port", &dst_port)] {
                if let Some(ports) = ports {
                    report.error(
                        ports.span.clone(),
                        format!("{place}.{name}"),
                        RuleErrorKind::PortsWithoutPorts {
                            proto: proto::name(p.value),
                        },
                    );
                }
            }
        }
    }

    // A rule whose fields disagree on the IP family can never match.
    let family = |net: &IpNet| match net {
        IpNet::V4(_) => "IPv4",
        IpNet::V6(_) => "IPv6",
    };
    if let (Some(s), Some(d)) = (&src, &dst) {
        if family(&s.value) != family(&d.value) {
            report.error(
                d.span.clone(),
                format!("{place}.dst"),
                RuleErrorKind::MixedFamily {
                    src_family: family(&s.value),
                    dst_family: family(&d.value),
                },
            );
        }
    }
    if let Some(p) = &protocol {
        for net in [&src, &dst].into_iter().flatten() {
            let kind = match (p.value, &net.value) {
                (proto::ICMP, IpNet::V6(_)) => Some(RuleErrorKind::ProtoFamily {
                    proto: "icmp",
                    family: "IPv6",
                    expected: "proto = \"icmpv6\" for IPv6",
                }),
                (proto::ICMPV6, IpNet::V4(_)) => Some(RuleErrorKind::ProtoFamily {
                    proto: "icmpv6",
                    family: "IPv4",
                    expected: "proto = \"icmp\" for IPv4",
                }),
                _ => None,
            };
            if let Some(kind) = kind {
                report.error(p.span.clone(), format!("{place}.proto"), kind);
                break;
            }
        }
    }

    // An outside or unknown peer has no project to be in a list.
    if let (Some(p), Some(list)) = (&peer, &peer_projects) {
        if !p.value.has_project() {
            report.error(
                list.span.clone(),
                format!("{place}.peer_project"),
                RuleErrorKind::PeerWithoutProject {
                    peer: p.value.as_str(),
                },
            );
        }
    }

    if report.errors.len() != before {
        return None;
    }
    Some(Rule {
        action: action?,
        src: src.map(|f| f.value),
        dst: dst.map(|f| f.value),
        proto: protocol.map(|f| f.value),
        src_port: src_port.map(|f| f.value),
        dst_port: dst_port.map(|f| f.value),
        projects,
        peer: peer.map(|f| f.value),
        peer_projects: peer_projects.map(|f| f.value),
        log,
        line: report.position(span.start).0,
    })
}

/// A CIDR, or a bare address meaning a single host.
fn parse_net(report: &mut Report<'_>, value: &Value<'_>, place: &str) -> Option<IpNet> {
    let DeValue::String(text) = value.get_ref() else {
        report.wrong_type(value, place, "a CIDR string such as \"10.0.0.0/8\"");
        return None;
    };
    let text = text.as_ref();
    let net = if text.contains('/') {
        text.parse::<IpNet>().ok()
    } else {
        text.parse::<IpAddr>().ok().map(IpNet::from)
    };
    let Some(net) = net else {
        report.error(
            value.span(),
            place,
            RuleErrorKind::BadCidr {
                value: text.to_owned(),
            },
        );
        return None;
    };
    if net.trunc() != net {
        report.error(
            value.span(),
            place,
            RuleErrorKind::HostBits {
                value: text.to_owned(),
                network: net.trunc().to_string(),
            },
        );
        return None;
    }
    Some(net)
}

fn integer(value: &DeValue<'_>) -> Option<i128> {
    match value {
        DeValue::Integer(i) => i128::from_str_radix(i.as_str(), i.radix()).ok(),
        _ => None,
    }
}

fn parse_proto(report: &mut Report<'_>, value: &Value<'_>, place: &str) -> Option<u8> {
    let (number, written) = match value.get_ref() {
        DeValue::String(s) => {
            let named = match s.as_ref() {
                "tcp" => Some(proto::TCP),
                "udp" => Some(proto::UDP),
                "icmp" => Some(proto::ICMP),
                "icmpv6" => Some(proto::ICMPV6),
                digits if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                    digits.parse::<u8>().ok()
                }
                _ => None,
            };
            (named, s.to_string())
        }
        DeValue::Integer(i) => {
            let n = integer(value.get_ref()).and_then(|n| u8::try_from(n).ok());
            (n, i.as_str().to_owned())
        }
        _ => {
            report.wrong_type(value, place, "tcp, udp, icmp, icmpv6 or a number 0-255");
            return None;
        }
    };
    if number.is_none() {
        report.error(
            value.span(),
            place,
            RuleErrorKind::UnknownProto { value: written },
        );
    }
    number
}

fn port_number(
    report: &mut Report<'_>,
    text: &str,
    span: &Range<usize>,
    place: &str,
) -> Option<u16> {
    let kind = match text.parse::<u64>() {
        Ok(n @ 1..=65535) => return u16::try_from(n).ok(),
        Ok(_) => RuleErrorKind::PortOutOfRange {
            value: text.to_owned(),
        },
        Err(_) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            RuleErrorKind::PortOutOfRange {
                value: text.to_owned(),
            }
        }
        Err(_) => RuleErrorKind::BadPort {
            value: text.to_owned(),
        },
    };
    report.error(span.clone(), place, kind);
    None
}

/// "25,465,1000-2000" or a single integer.
fn parse_ports(report: &mut Report<'_>, value: &Value<'_>, place: &str) -> Option<PortSet> {
    let span = value.span();
    let text = match value.get_ref() {
        DeValue::String(s) => s.to_string(),
        DeValue::Integer(_) => match integer(value.get_ref()) {
            Some(n) => n.to_string(),
            None => {
                report.wrong_type(
                    value,
                    place,
                    "a port 1-65535 or a string like \"25,1000-2000\"",
                );
                return None;
            }
        },
        _ => {
            report.wrong_type(
                value,
                place,
                "a port 1-65535 or a string like \"25,1000-2000\"",
            );
            return None;
        }
    };
    if text.trim().is_empty() {
        report.error(span, place, RuleErrorKind::EmptyPortList);
        return None;
    }
    let before = report.errors.len();
    let mut ranges = Vec::new();
    for element in text.split(',') {
        let element = element.trim();
        let (low, high) = match element.split_once('-') {
            Some((l, h)) => (l.trim(), h.trim()),
            None => (element, element),
        };
        if low.is_empty() || high.is_empty() {
            report.error(
                span.clone(),
                place,
                RuleErrorKind::BadPort {
                    value: element.to_owned(),
                },
            );
            continue;
        }
        let lo = port_number(report, low, &span, place);
        let hi = if high == low {
            lo
        } else {
            port_number(report, high, &span, place)
        };
        let (Some(lo), Some(hi)) = (lo, hi) else {
            continue;
        };
        if lo > hi {
            report.error(
                span.clone(),
                place,
                RuleErrorKind::PortRangeReversed { low: lo, high: hi },
            );
            continue;
        }
        ranges.push((lo, hi));
    }
    (report.errors.len() == before).then(|| PortSet::from_ranges(ranges))
}

/// One of the peer words of [`PeerKind`].
fn parse_peer(report: &mut Report<'_>, value: &Value<'_>, place: &str) -> Option<PeerKind> {
    let DeValue::String(word) = value.get_ref() else {
        report.wrong_type(
            value,
            place,
            "\"same\", \"other\", \"vassal\", \"unknown\" or \"outside\"",
        );
        return None;
    };
    let found = PeerKind::ALL
        .into_iter()
        .find(|k| k.as_str() == word.as_ref());
    if found.is_none() {
        report.error(
            value.span(),
            place,
            RuleErrorKind::BadPeer {
                value: word.to_string(),
            },
        );
    }
    found
}

/// A project name or a non-empty list of them.
fn parse_projects(report: &mut Report<'_>, value: &Value<'_>, place: &str) -> Option<Vec<String>> {
    let single = std::slice::from_ref(value);
    let items: &[Value<'_>] = match value.get_ref() {
        DeValue::String(_) => single,
        DeValue::Array(items) if items.is_empty() => {
            report.error(value.span(), place, RuleErrorKind::EmptyProjectList);
            return None;
        }
        DeValue::Array(items) => items,
        _ => {
            report.wrong_type(value, place, "a project name or a list of names");
            return None;
        }
    };
    let before = report.errors.len();
    let mut names = Vec::with_capacity(items.len());
    for item in items {
        let DeValue::String(name) = item.get_ref() else {
            report.wrong_type(item, place, "a project name string");
            continue;
        };
        if let Err(why) = vassal_attach::validate_project_name(name) {
            report.error(
                item.span(),
                place,
                RuleErrorKind::BadProjectName {
                    name: name.to_string(),
                    why,
                },
            );
            continue;
        }
        names.push(name.to_string());
    }
    names.sort_unstable();
    names.dedup();
    (report.errors.len() == before).then_some(names)
}
