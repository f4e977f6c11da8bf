//! Host-wide names of what the local provider creates. They are derived from the
//! project (and network or host) alone, so every run finds the same pieces again
//! and two projects on one host never collide. Interface names are limited to 15
//! characters, hence the hashes.

use anyhow::{bail, Result};
use sha2::{Digest, Sha256};

/// Project and host names end up in paths, interface and namespace names:
/// only lowercase letters, digits and inner dashes.
pub fn check_component(what: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if !ok {
        bail!("{what} {value:?} cannot be used by the local provider: use 1-63 lowercase letters, digits and inner dashes");
    }
    Ok(())
}

fn short_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hex::encode(&hasher.finalize()[..5])
}

/// The Linux bridge of a plan network: `rg` + 10 hex digits.
pub fn bridge(project: &str, network: &str) -> String {
    format!("rg{}", short_hash(&["bridge", project, network]))
}

/// The machine's name for systemd-nspawn and its network namespace:
/// `rigger-<project>-<host>`, shortened with a hash past 64 characters
/// (nspawn wants a valid hostname).
pub fn machine(project: &str, host: &str) -> String {
    let full = format!("rigger-{project}-{host}");
    if full.len() <= 64 {
        full
    } else {
        format!("{}-{}", &full[..53], short_hash(&["machine", project, host]))
    }
}

/// Host end of the machine's veth pair (enslaved to the bridge).
pub fn veth_host(project: &str, host: &str) -> String {
    format!("rv{}", short_hash(&["veth", project, host]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        assert!(bridge("a-very-long-project-name", "main").len() <= 15);
        assert!(veth_host("p", "pg-1").len() <= 15);
        assert_ne!(veth_host("p", "pg-1"), veth_host("p", "pg-2"));
        assert_ne!(bridge("p1", "main"), bridge("p2", "main"));
        assert_eq!(bridge("p", "main"), bridge("p", "main"));
    }

    #[test]
    fn machine_names_are_prefixed_and_bounded() {
        assert_eq!(machine("shop", "pg-1"), "rigger-shop-pg-1");
        let long = machine(&"p".repeat(63), "pg-1");
        assert!(long.len() <= 64 && long.starts_with("rigger-"));
    }

    #[test]
    fn rejects_names_unfit_for_paths() {
        assert!(check_component("project", "../x").is_err());
        assert!(check_component("project", "Shop").is_err());
        assert!(check_component("host", "pg-1").is_ok());
    }
}
