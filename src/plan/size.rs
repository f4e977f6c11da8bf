//! Sizes as people write them in plans: `2GiB`, `2048MiB`, `2G`, `512M`.

/// Parse a size to bytes. Binary units (`K`, `M`, `G`, `T`, with or without
/// `iB`) as Proxmox and most infra tools read them; `KB`/`MB`/`GB`/`TB` are decimal.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim();
    if num.is_empty() {
        return Err(format!("`{text}` is not a size — write it like 2GiB, 2048MiB or 2G"));
    }
    let mult: u64 = match unit {
        "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "" => return Err(format!("`{text}` has no unit — write it like {text}GiB or {text}MiB")),
        _ => return Err(format!("`{unit}` is not a size unit in `{text}` — use B, KiB, MiB, GiB, TiB (or K, M, G, T)")),
    };
    let value: f64 = num.parse().map_err(|_| format!("`{text}` is not a size — write it like 2GiB"))?;
    let bytes = value * mult as f64;
    if !(bytes.is_finite()) || bytes < 1.0 || bytes > u64::MAX as f64 / 2.0 {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(bytes.round() as u64)
}

/// Bytes to the shortest exact binary form: 2147483648 → "2GiB".
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn sizes() {
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("2048MiB"), Ok(2 << 30));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert!(parse_size("2").is_err());
        assert!(parse_size("2 gigs").is_err());
        assert!(parse_size("GiB").is_err());
        assert_eq!(format_size(4 << 30), "4GiB");
        assert_eq!(format_size(1536 << 20), "1536MiB");
    }
}
