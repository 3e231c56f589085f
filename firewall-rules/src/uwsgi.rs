//! Import of uWSGI tuntap router firewall rules (in progress).

use std::path::Path;

use crate::RuleErrors;

/// Converts the tuntap firewall lines of a uWSGI .ini file to a rule file.
pub fn import(ini_text: &str, origin: &Path) -> Result<String, RuleErrors> {
    let _ = (ini_text, origin);
    Ok(String::from(
        "[default]\nout = \"allow\"\nin = \"allow\"\nestablished = false\n",
    ))
}
