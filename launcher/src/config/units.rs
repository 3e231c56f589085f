//! Units of the vassal file: sizes (`256M`), durations (`500ms`, `2m`) and
//! user namespace id maps (`0:100000:65536`). No knowledge of the file.

use std::time::Duration;

/// At most this many ranges in a uid or gid map (the kernel's limit before
/// 4.15, and plenty for a vassal).
pub const MAX_ID_MAP_RANGES: usize = 5;

/// A contiguous id range of a user namespace map: ids `inside..inside+count`
/// in the vassal are `outside..outside+count` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id inside the vassal.
    pub inside: u32,
    /// First id on the host.
    pub outside: u32,
    /// Number of ids.
    pub count: u32,
}

/// Parses a size: an integer of bytes or a number with a K, M, G or T
/// suffix (powers of 1024), like `256M`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = digits.parse().map_err(|_| {
        format!(
            "{text:?} is not a size; expected bytes or a number with K, M, G or T, like \"256M\""
        )
    })?;
    let mult: u64 = match unit
        .trim_end_matches(['i', 'B'])
        .to_ascii_uppercase()
        .as_str()
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit; expected K, M, G or T"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a duration: a number with ms, s, m, h or d, like `1h` or `500ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| {
        format!("{text:?} is not a duration; expected a number with ms, s, m, h or d, like \"1h\"")
    })?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(format!("{text:?} has no unit; expected ms, s, m, h or d")),
    };
    let ms = ms.ok_or_else(|| format!("{text:?} is too long"))?;
    if ms == 0 {
        return Err("must be longer than zero".into());
    }
    Ok(Duration::from_millis(ms))
}

/// Parses `guest:host:count[,guest:host:count...]`, at most
/// [`MAX_ID_MAP_RANGES`] ranges that do not overlap on either side.
pub fn parse_id_map(text: &str) -> Result<Vec<IdRange>, String> {
    let mut ranges = Vec::new();
    for part in text.split(',') {
        let fields: Vec<&str> = part.trim().split(':').collect();
        let [inside, outside, count] = fields.as_slice() else {
            return Err(format!("{part:?} is not guest:host:count"));
        };
        let num = |s: &str, what: &str| {
            s.trim().parse::<u32>().map_err(|_| {
                format!("{what} {s:?} in {part:?} is not a number from 0 to 4294967295")
            })
        };
        let r = IdRange {
            inside: num(inside, "guest id")?,
            outside: num(outside, "host id")?,
            count: num(count, "count")?,
        };
        if r.count == 0 {
            return Err(format!("{part:?} maps zero ids"));
        }
        if r.inside.checked_add(r.count).is_none() || r.outside.checked_add(r.count).is_none() {
            return Err(format!("{part:?} runs past the largest id"));
        }
        ranges.push(r);
    }
    if ranges.len() > MAX_ID_MAP_RANGES {
        return Err(format!(
            "{} ranges; at most {MAX_ID_MAP_RANGES} are allowed",
            ranges.len()
        ));
    }
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            let overlap =
                |x: u32, y: u32, n: u32, m: u32| x < y.saturating_add(m) && y < x.saturating_add(n);
            if overlap(a.inside, b.inside, a.count, b.count)
                || overlap(a.outside, b.outside, a.count, b.count)
            {
                return Err("ranges overlap".into());
            }
        }
    }
    Ok(ranges)
}

/// Maps an id inside the namespace to the host, when the map covers it.
pub fn map_to_host(map: &[IdRange], id: u32) -> Option<u32> {
    map.iter()
        .find(|r| id >= r.inside && id - r.inside < r.count)
        .map(|r| r.outside + (id - r.inside))
}
