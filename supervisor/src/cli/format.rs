//! Human-readable numbers for tables: durations and byte sizes.

/// `1h 02m 03s`-style durations for tables.
pub fn human_duration(seconds: u64) -> String {
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m {s:02}s"),
        _ => format!("{h}h {m:02}m {s:02}s"),
    }
}

/// Binary-prefixed sizes (`512.0 MiB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(65), "1m 05s");
        assert_eq!(human_duration(3723), "1h 02m 03s");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(512 << 20), "512.0 MiB");
    }
}
