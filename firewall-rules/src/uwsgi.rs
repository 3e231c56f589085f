//! Import of uWSGI 2.0 tuntap router firewall rules into a rule file.
//!
//! What uWSGI does (plugins/tuntap/firewall.c), and so what the import
//! reproduces:
//! - `tuntap-router-firewall-out` checks packets from the vassals toward
//!   the tun device, `-in` the opposite; first match wins; when nothing
//!   matches the packet is allowed (both chains).
//! - `<action> <src[/mask]> <dst[/mask]>`: a missing mask is /32; the
//!   address is masked (`10.1.2.3/8` is `10.0.0.0/8`); a side whose masked
//!   address is 0 (`0.0.0.0`, any mask) matches every address.
//! - A single word appends a rule matching every packet: `deny` denies,
//!   anything else allows. Rules after it in the same chain can never
//!   match, so it becomes the chain's default policy and later lines are
//!   kept as comments.
//! - There is no connection state: `established = false`.
//!
//! uWSGI is more lenient than this import: it treats any action word but
//! `deny` as allow and skips malformed lines with a log message. Those are
//! errors here, naming the .ini line, so a typo cannot silently open a
//! firewall.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use crate::error::{RuleError, RuleErrorKind, RuleErrors};
use crate::rules::Action;

const OUT_KEY: &str = "tuntap-router-firewall-out";
const IN_KEY: &str = "tuntap-router-firewall-in";

/// One side of a uWSGI rule after uWSGI's own masking: `None` = any.
type Side = Option<(Ipv4Addr, u8)>;

enum Line {
    Rule {
        action: Action,
        src: Side,
        dst: Side,
        host_bits: bool,
    },
    MatchAll(Action),
}

struct Imported {
    line: usize,
    text: String,
    parsed: Line,
}

/// Converts the tuntap firewall lines of the `[uwsgi]` section of an .ini
/// file to an equivalent rule file (TOML text). Other keys are ignored.
pub fn import(ini_text: &str, origin: &Path) -> Result<String, RuleErrors> {
    let mut chains: [Vec<Imported>; 2] = [Vec::new(), Vec::new()];
    let mut errors = Vec::new();
    let mut in_uwsgi = false;
    for (number, raw) in ini_text.lines().enumerate() {
        let line = number + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') {
            continue;
        }
        if trimmed.starts_with('[') {
            in_uwsgi = trimmed == "[uwsgi]";
            continue;
        }
        if !in_uwsgi {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            continue;
        };
        let chain = match key.trim() {
            OUT_KEY => 0,
            IN_KEY => 1,
            _ => continue,
        };
        let value = value.trim();
        // The value starts after the first '=' of the raw line.
        let column = raw.find('=').map_or(1, |eq| {
            let after = &raw[eq + 1..];
            let lead = after.len() - after.trim_start().len();
            raw[..eq + 1 + lead].chars().count() + 1
        });
        match parse_value(value) {
            Ok(parsed) => chains[chain].push(Imported {
                line,
                text: format!("{} = {value}", key.trim()),
                parsed,
            }),
            Err(kind) => errors.push(RuleError {
                path: origin.to_path_buf(),
                line,
                column,
                place: key.trim().to_owned(),
                kind,
            }),
        }
    }
    if !errors.is_empty() {
        return Err(RuleErrors::new(errors));
    }
    Ok(emit(&chains, origin))
}

fn parse_value(value: &str) -> Result<Line, RuleErrorKind> {
    let words: Vec<&str> = value.split_whitespace().collect();
    let action = |word: &str| match word {
        "allow" => Ok(Action::Allow),
        "deny" => Ok(Action::Deny),
        other => Err(RuleErrorKind::UwsgiAction {
            value: other.to_owned(),
        }),
    };
    match words[..] {
        [word] => Ok(Line::MatchAll(action(word)?)),
        [word, src, dst] => {
            let (src, src_host_bits) = parse_side(src)?;
            let (dst, dst_host_bits) = parse_side(dst)?;
            Ok(Line::Rule {
                action: action(word)?,
                src,
                dst,
                host_bits: src_host_bits || dst_host_bits,
            })
        }
        _ => Err(RuleErrorKind::UwsgiRule {
            value: value.to_owned(),
        }),
    }
}

/// `a.b.c.d[/mask]` as uWSGI reads it; also whether masking dropped bits.
fn parse_side(text: &str) -> Result<(Side, bool), RuleErrorKind> {
    let bad = || RuleErrorKind::UwsgiAddress {
        value: text.to_owned(),
    };
    let (addr, mask) = match text.split_once('/') {
        Some((addr, mask)) => {
            let mask: u8 = mask.parse().map_err(|_| bad())?;
            if mask > 32 {
                return Err(bad());
            }
            (addr, mask)
        }
        None => (text, 32),
    };
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let raw = u32::from(addr);
    if mask == 0 && raw != 0 {
        return Err(RuleErrorKind::UwsgiZeroMask {
            value: text.to_owned(),
        });
    }
    let bits = if mask == 0 {
        0
    } else {
        u32::MAX << (32 - mask)
    };
    let network = raw & bits;
    // uWSGI skips the comparison when the masked address is 0.
    let side = (network != 0).then(|| (Ipv4Addr::from(network), mask));
    Ok((side, network != raw))
}

/// Text fit for a TOML comment: control characters other than tab (which
/// TOML refuses there, and which would end the comment early if a newline)
/// become `?`. Found by fuzzing (fuzz/fuzz_targets/uwsgi_import.rs).
fn comment_safe(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect()
}

fn emit(chains: &[Vec<Imported>; 2], origin: &Path) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Imported from {} (uWSGI tuntap router firewall).",
        comment_safe(&origin.display().to_string())
    );
    t.push_str(
        "# uWSGI semantics: first match wins; no match allows on both chains;\n\
         # a bare address is /32; 0.0.0.0 (any mask) is any address.\n\
         # uWSGI keeps no connection state, so replies are checked like any\n\
         # packet: established = false. uWSGI carried IPv4 only; every imported\n\
         # rule is IPv4, so IPv6 packets meet only the default policies.\n",
    );
    let mut policies = [Action::Allow, Action::Allow];
    for (chain, lines) in chains.iter().enumerate() {
        if let Some(first) = lines.iter().find_map(|l| match l.parsed {
            Line::MatchAll(action) => Some(action),
            Line::Rule { .. } => None,
        }) {
            policies[chain] = first;
        }
    }
    let _ = writeln!(
        t,
        "\n[default]\nout = \"{}\"\nin = \"{}\"\nestablished = false",
        policies[0].as_str(),
        policies[1].as_str()
    );
    for (chain, lines) in chains.iter().enumerate() {
        let name = if chain == 0 { "out" } else { "in" };
        let mut reachable = true;
        for l in lines {
            let origin_line = comment_safe(&format!("{}:{}: {}", origin.display(), l.line, l.text));
            if !reachable {
                let _ = writeln!(
                    t,
                    "\n# unreachable in uWSGI (an earlier match-all rule wins): {origin_line}"
                );
                continue;
            }
            match &l.parsed {
                Line::MatchAll(action) => {
                    reachable = false;
                    let _ = writeln!(
                        t,
                        "\n# {origin_line}\n# (matches every packet: the {name} default above is {})",
                        action.as_str()
                    );
                }
                Line::Rule {
                    action,
                    src,
                    dst,
                    host_bits,
                } => {
                    let _ = writeln!(t, "\n# {origin_line}");
                    if *host_bits {
                        t.push_str("# (uWSGI masks the address: host bits dropped)\n");
                    }
                    let _ = writeln!(t, "[[{name}]]\naction = \"{}\"", action.as_str());
                    if let Some((net, len)) = src {
                        let _ = writeln!(t, "src = \"{net}/{len}\"");
                    }
                    if let Some((net, len)) = dst {
                        let _ = writeln!(t, "dst = \"{net}/{len}\"");
                    }
                    if src.is_none() && dst.is_none() {
                        // Keep the rule IPv4-only, as it was in uWSGI.
                        t.push_str("dst = \"0.0.0.0/0\"\n");
                    }
                }
            }
        }
    }
    t
}
