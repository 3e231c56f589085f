//! Prints a rule file for the datapath benchmark: allow rules for the
//! benchmark's own flows first, then N generated rules (the same seeded mix
//! as the classification benchmark), so every packet pays a lookup in a
//! large rule set while the flows under test stay allowed.
//!
//! Usage: gen-rules N GATEWAY_ADDRESS VASSAL_SUBNET

use vassal_bench::rulegen;

fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let gateway = args.next().unwrap_or_else(|| "10.251.0.1".into());
    let subnet = args.next().unwrap_or_else(|| "10.251.0.0/24".into());
    let generated = rulegen::rules_toml(n, 0x7661_7373_616c);
    let body = generated
        .split_once("established = true\n")
        .map_or(generated.as_str(), |(_, b)| b);
    print!(
        "[default]\nout = \"allow\"\nin = \"allow\"\nestablished = true\n\n[[out]]\naction = \"allow\"\ndst = \"{gateway}/32\"\n\n[[in]]\naction = \"allow\"\nsrc = \"{gateway}/32\"\n\n[[out]]\naction = \"allow\"\nsrc = \"{subnet}\"\ndst = \"{subnet}\"\n\n[[in]]\naction = \"allow\"\nsrc = \"{subnet}\"\ndst = \"{subnet}\"\n{body}"
    );
}
