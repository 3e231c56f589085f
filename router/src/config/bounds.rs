//! The located range check every bounded numeric key shares.

use std::fmt::Display;
use std::ops::{Range, RangeInclusive};
use toml::Spanned;

/// `value`, or `default` when the key is absent; a value outside `range`
/// is `at`'s located error "`field`: must be between LO and HI`unit`".
pub fn bounded<T, E>(
    value: Option<&Spanned<T>>,
    field: &str,
    range: RangeInclusive<T>,
    unit: &str,
    default: T,
    at: impl Fn(Option<Range<usize>>, String) -> E,
) -> Result<T, E>
where
    T: PartialOrd + Copy + Display,
{
    match value {
        Some(v) if !range.contains(v.get_ref()) => Err(at(
            Some(v.span()),
            format!(
                "{field}: must be between {} and {}{unit}",
                range.start(),
                range.end()
            ),
        )),
        Some(v) => Ok(*v.get_ref()),
        None => Ok(default),
    }
}
