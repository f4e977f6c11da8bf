//! The request checks the real API makes before it starts any work.

use super::wire::{ApiError, ApiResult};
use ipnet::Ipv4Net;
use std::collections::BTreeMap;

pub const ZONES: &[&str] = &["ru-central1-a", "ru-central1-b", "ru-central1-d"];
pub const PLATFORMS: &[&str] = &["standard-v1", "standard-v2", "standard-v3"];
pub const DISK_TYPES: &[&str] = &["network-hdd", "network-ssd", "network-ssd-nonreplicated", "network-ssd-io-m3"];

const GIB: i64 = 1 << 30;
pub const MIN_DISK: i64 = 4 << 20;
pub const MAX_DISK: i64 = 4 << 40;
/// Metadata must stay below 512 KB in total (keys and values).
pub const MAX_METADATA: usize = 512 * 1024;

/// `[a-z]([-a-z0-9]{0,61}[a-z0-9])?`; empty is allowed by the API (an unnamed resource).
pub fn name(field: &str, name: &str) -> ApiResult<()> {
    if name.is_empty() {
        return Ok(());
    }
    let b = name.as_bytes();
    let ok = b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && (b.len() == 1 || b[b.len() - 1] != b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(field, format!("Value {name:?} must match the regular expression [a-z]([-a-z0-9]{{0,61}}[a-z0-9])?")))
    }
}

/// At most 64 labels; keys `[a-z][-_./\@0-9a-z]*` of 1..63 chars; values `[-_./\@0-9a-z]*` up to 63.
pub fn labels(labels: &BTreeMap<String, String>) -> ApiResult<()> {
    if labels.len() > 64 {
        return Err(ApiError::field("labels", "The number of elements must be less than or equal to 64"));
    }
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_./\\@".contains(c);
    for (k, v) in labels {
        let key_ok = (1..=63).contains(&k.len()) && k.starts_with(|c: char| c.is_ascii_lowercase()) && k.chars().all(allowed);
        if !key_ok {
            return Err(ApiError::field(&format!("labels.{k}"), "label key must match [a-z][-_./\\@0-9a-z]* and be 1..63 characters long"));
        }
        if v.len() > 63 || !v.chars().all(allowed) {
            return Err(ApiError::field(&format!("labels.{k}"), "label value must match [-_./\\@0-9a-z]* and be at most 63 characters long"));
        }
    }
    Ok(())
}

pub fn zone(field: &str, zone: &str) -> ApiResult<()> {
    if ZONES.contains(&zone) {
        Ok(())
    } else {
        Err(ApiError::field(field, format!("unknown zone {zone:?}; available zones: {}", ZONES.join(", "))))
    }
}

/// A subnet range: a private (RFC 1918) IPv4 network between /28 and /16.
pub fn subnet_cidr(field: &str, text: &str) -> ApiResult<Ipv4Net> {
    let net: Ipv4Net = text.parse().map_err(|_| ApiError::field(field, format!("{text:?} is not a valid IPv4 CIDR")))?;
    if net.network() != net.addr() {
        return Err(ApiError::field(field, format!("{text:?} has host bits set; did you mean {}?", net.trunc())));
    }
    if !(16..=28).contains(&net.prefix_len()) {
        return Err(ApiError::field(field, format!("prefix length of {text} must be between /16 and /28")));
    }
    let private = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
        .iter()
        .any(|p| p.parse::<Ipv4Net>().map(|p| p.contains(&net)).unwrap_or(false));
    if !private {
        return Err(ApiError::field(field, format!("{text} is not inside a private range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)")));
    }
    Ok(net)
}

pub fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// CPU and memory rules of a platform (standard-v3 is the one rigger uses).
pub fn resources(platform: &str, cores: i64, memory: i64, core_fraction: i64) -> ApiResult<()> {
    if !PLATFORMS.contains(&platform) {
        return Err(ApiError::field("platformId", format!("unknown platform {platform:?}")));
    }
    let (fractions, max_cores): (&[i64], i64) = match platform {
        "standard-v1" => (&[5, 20, 100], 32),
        "standard-v2" => (&[5, 20, 50, 100], 80),
        _ => (&[20, 50, 100], 80),
    };
    // ResourcesSpec.cores: even up to 36, then multiples of 4.
    let sold = |c: i64| matches!(c, 2..=36 if c % 2 == 0) || matches!(c, 40..=80 if c % 4 == 0);
    if cores > max_cores || !sold(cores) {
        let allowed = if max_cores > 36 { format!("2, 4, ..., 36, 40, 44, ..., {max_cores}") } else { format!("2, 4, ..., {max_cores}") };
        return Err(ApiError::invalid(format!("the specified number of cores is not available on platform \"{platform}\"; allowed number of cores: {allowed}")));
    }
    if !fractions.contains(&core_fraction) {
        let list = fractions.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        return Err(ApiError::invalid(format!(
            "core fraction is not available on platform \"{platform}\"; allowed core fractions: {list}"
        )));
    }
    if memory <= 0 || memory % GIB != 0 {
        return Err(ApiError::invalid(format!(
            "the specified amount of memory {memory} is not available on platform \"{platform}\"; memory must be a multiple of 1 GB"
        )));
    }
    let per_core = memory / cores;
    if !(GIB..=16 * GIB).contains(&per_core) {
        return Err(ApiError::invalid(format!(
            "the specified amount of memory is not available on platform \"{platform}\"; allowed memory per core: 1 GB..16 GB, requested {} GB for {cores} cores",
            memory / GIB
        )));
    }
    Ok(())
}

pub fn disk_size(field: &str, size: i64, image_min: i64) -> ApiResult<()> {
    if !(MIN_DISK..=MAX_DISK).contains(&size) {
        return Err(ApiError::field(field, format!("disk size {size} must be between 4 MB and 4 TB")));
    }
    if size < image_min {
        return Err(ApiError::field(field, format!("disk size {size} is smaller than the image's minimal disk size {image_min}")));
    }
    Ok(())
}

pub fn metadata(metadata: &BTreeMap<String, String>) -> ApiResult<()> {
    let total: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if total >= MAX_METADATA {
        return Err(ApiError::field("metadata", format!("total metadata size {total} bytes exceeds the limit of 512 KB")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_api_regex() {
        assert!(name("name", "pg-1").is_ok());
        assert!(name("name", "").is_ok());
        assert!(name("name", "1pg").is_err());
        assert!(name("name", "pg-").is_err());
        assert!(name("name", "Pg").is_err());
        assert!(name("name", &"a".repeat(64)).is_err());
    }

    #[test]
    fn subnet_ranges() {
        assert!(subnet_cidr("c", "10.20.0.0/24").is_ok());
        assert!(subnet_cidr("c", "10.20.0.0/29").is_err());
        assert!(subnet_cidr("c", "10.0.0.0/15").is_err());
        assert!(subnet_cidr("c", "8.8.8.0/24").is_err());
        assert!(subnet_cidr("c", "10.20.0.1/24").is_err());
        let a: Ipv4Net = "10.0.0.0/16".parse().unwrap();
        let b: Ipv4Net = "10.0.5.0/24".parse().unwrap();
        assert!(overlaps(&a, &b) && overlaps(&b, &a));
    }

    #[test]
    fn standard_v3_rules() {
        assert!(resources("standard-v3", 2, 2 << 30, 100).is_ok());
        let e = resources("standard-v3", 2, 2 << 30, 5).unwrap_err();
        assert_eq!(e.message, "core fraction is not available on platform \"standard-v3\"; allowed core fractions: 20, 50, 100");
        assert!(resources("standard-v3", 3, 3 << 30, 100).is_err());
        assert!(resources("standard-v3", 2, 1 << 30, 100).is_err());
    }
}
