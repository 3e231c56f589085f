//! Interface names, checked as the kernel and nft need them (a file of
//! its own so that `cluster.rs` uses it without an import cycle).

/// Checks an interface name as the kernel's `dev_valid_name` does (1 to 15
/// bytes, not `.` or `..`, no `/`, `:`, whitespace or NUL), and refuses
/// what nft cannot match literally inside a quoted string: `"`, `\`, `*`
/// (a trailing `*` is a wildcard there) and anything but printable ASCII.
pub fn validate_interface_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 15 {
        return Err("must be 1 to 15 bytes long");
    }
    if name == "." || name == ".." {
        return Err("may not be \".\" or \"..\"");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
    {
        return Err("may not contain '/', ':', whitespace or NUL (the kernel refuses them)");
    }
    if name
        .bytes()
        .any(|b| !b.is_ascii_graphic() || b == b'"' || b == b'\\' || b == b'*')
    {
        return Err("may only contain printable ASCII other than '\"', '\\' and '*' (nft could not match it literally)");
    }
    Ok(())
}
