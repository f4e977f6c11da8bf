//! SSH host keys of Proxmox guests, learned without trusting the network.
//!
//! The API never returns a guest's host keys, and no API call can put keys of
//! rigger's choosing into a guest (there is no file push for containers, and
//! cloud-init on Proxmox has no `ssh_keys` host-key option). What the API does
//! give, over the pinned TLS channel:
//! - LXC: `pct create` generates the container's host keys itself and prints
//!   each fingerprint in the creation task's log
//!   (`done: SHA256:… root@<hostname>`, pve-container `rewrite_ssh_host_keys`).
//!   rigger reads that log, then scans the keys the container offers and keeps
//!   only those whose fingerprint matches: a key that does not match is refused.
//! - QEMU: the guest agent reads files inside the VM
//!   (`GET …/qemu/{vmid}/agent/file-read?file=/etc/ssh/ssh_host_ed25519_key.pub`),
//!   so the public keys come through the API whole.

use base64::Engine;
use sha2::{Digest, Sha256};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Key types rigger asks for, preferred first.
pub const KEY_TYPES: &[&str] = &["ed25519", "ecdsa", "rsa"];

/// `SHA256:<base64, no padding>` of a public key line (`type base64 [comment]`),
/// as `ssh-keygen -l -E sha256` prints it.
pub fn fingerprint(key_line: &str) -> Option<String> {
    let blob = key_line.split_whitespace().nth(1)?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(blob).ok()?;
    let digest = Sha256::digest(bytes);
    Some(format!("SHA256:{}", base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)))
}

/// `type base64` of a key line (the comment dropped), or `None` if it is not one.
pub fn key_without_comment(line: &str) -> Option<String> {
    let mut fields = line.split_whitespace();
    let (kind, blob) = (fields.next()?, fields.next()?);
    (kind.starts_with("ssh-") || kind.starts_with("ecdsa-")).then(|| format!("{kind} {blob}"))
}

/// The fingerprints a container creation task logged (`done: SHA256:… root@host`).
pub fn fingerprints_in_creation_log(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|line| line.strip_prefix("done: "))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter(|fp| fp.starts_with("SHA256:") && fp.len() == "SHA256:".len() + 43)
        .map(str::to_string)
        .collect()
}

/// The newest successful creation task of `vmid` among `GET /nodes/{node}/tasks` entries.
pub fn newest_successful_creation(tasks: &Value, vmid: u64) -> Option<String> {
    tasks
        .as_array()?
        .iter()
        .filter(|t| t.get("type").and_then(Value::as_str) == Some("vzcreate"))
        .filter(|t| t.get("id").and_then(Value::as_str) == Some(vmid.to_string().as_str()))
        .filter(|t| t.get("status").and_then(Value::as_str).is_some_and(super::tasks::succeeded))
        .max_by_key(|t| (t.get("starttime").and_then(Value::as_u64).unwrap_or(0), t.get("pid").and_then(Value::as_u64).unwrap_or(0)))
        .and_then(|t| t.get("upid").and_then(Value::as_str))
        .map(str::to_string)
}

/// The keys `address` offers (`ssh-keyscan`), kept only where the fingerprint is
/// one the API reported. `Ok(None)`: sshd does not answer yet. An offered key
/// of a reported type with a different fingerprint is an error: someone else
/// answers at that address.
pub async fn scan_verified(address: &str, expected: &[String]) -> anyhow::Result<Option<Vec<String>>> {
    let output = tokio::process::Command::new("ssh-keyscan")
        .args(["-T", "5", "-t", &KEY_TYPES.join(","), address])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| anyhow::anyhow!("cannot run ssh-keyscan (apt-get install openssh-client): {e}"))?;
    let offered: Vec<String> =
        String::from_utf8_lossy(&output.stdout).lines().filter(|l| !l.starts_with('#')).filter_map(|l| key_without_comment(l.split_once(' ')?.1)).collect();
    if offered.is_empty() {
        return Ok(None);
    }
    let (verified, foreign): (Vec<String>, Vec<String>) =
        offered.into_iter().partition(|key| fingerprint(key).is_some_and(|fp| expected.contains(&fp)));
    if verified.is_empty() {
        let seen: Vec<String> = foreign.iter().filter_map(|k| fingerprint(k)).collect();
        anyhow::bail!(
            "{address} offers SSH host keys {seen:?}, none of which Proxmox generated for this guest ({expected:?}); refusing to trust them"
        );
    }
    Ok(Some(verified))
}

/// known_hosts lines for `address` (for a one-off ssh call).
pub fn write_known_hosts(path: &Path, address: &str, keys: &[String]) -> std::io::Result<()> {
    let text: String = keys.iter().map(|k| format!("{address} {k}\n")).collect();
    std::fs::write(path, text)
}

/// How long to wait for a started container's sshd.
pub const SSHD_WAIT: Duration = Duration::from_secs(180);

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBbOT2vYcFq7uYdK0r5oQzGJmS0t2C3mA5YbQm1cJx3f root@pg102";

    #[test]
    fn fingerprints_match_ssh_keygen() {
        // `ssh-keygen -lf` of KEY.
        let fp = fingerprint(KEY).unwrap();
        assert_eq!(fp, "SHA256:nrNxPP28Erf9XiiKUuLMXzSONM0KLE7Ym0hXmJMt9kM");
        assert_eq!(fingerprint("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBbOT2vYcFq7uYdK0r5oQzGJmS0t2C3mA5YbQm1cJx3f"), Some(fp));
        assert_eq!(fingerprint("garbage"), None);
    }

    #[test]
    fn reads_fingerprints_from_a_creation_log() {
        let log: Vec<String> = [
            "extracting archive '/var/lib/vz/template/cache/debian-12-standard_12.7-1_amd64.tar.zst'",
            "Creating SSH host key 'ssh_host_ed25519_key' - this may take some time ...",
            "done: SHA256:W9m0GZq6pLhDJ0yQdZ0Z5nV9p3mXQ2o0N7wDkq2cR1c root@pg102",
            "done: not-a-fingerprint",
            "TASK OK",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(fingerprints_in_creation_log(&log), vec!["SHA256:W9m0GZq6pLhDJ0yQdZ0Z5nV9p3mXQ2o0N7wDkq2cR1c".to_string()]);
    }

    #[test]
    fn picks_the_newest_successful_creation() {
        let tasks = serde_json::json!([
            { "upid": "UPID:a", "type": "vzcreate", "id": "100", "status": "OK", "starttime": 10, "pid": 1 },
            { "upid": "UPID:b", "type": "vzcreate", "id": "100", "status": "got timeout", "starttime": 20, "pid": 2 },
            { "upid": "UPID:c", "type": "vzcreate", "id": "100", "status": "OK", "starttime": 15, "pid": 3 },
            { "upid": "UPID:d", "type": "vzstart", "id": "100", "status": "OK", "starttime": 30, "pid": 4 },
            // A creation that ended with warnings made the container all the same.
            { "upid": "UPID:e", "type": "vzcreate", "id": "102", "status": "WARNINGS: 2", "starttime": 40, "pid": 5 },
        ]);
        assert_eq!(newest_successful_creation(&tasks, 100).as_deref(), Some("UPID:c"));
        assert_eq!(newest_successful_creation(&tasks, 102).as_deref(), Some("UPID:e"));
        assert_eq!(newest_successful_creation(&tasks, 101), None);
    }
}
