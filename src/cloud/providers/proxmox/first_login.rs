//! The plan's SSH user on an LXC container.
//!
//! Proxmox installs a container's `ssh-public-keys` for root only, and api2/json
//! has no way to run a command or write a file inside a container (`pct exec`
//! and `pct push` exist only on the node's shell). So once the container runs,
//! rigger logs in once as root with the plan's key — over strict host-key
//! checking against keys verified by their creation-log fingerprints (see
//! `host_keys.rs`) — and creates `ssh.user`: a home, the plan's key in its
//! authorized_keys, passwordless sudo (installing sudo if the template lacks
//! it). Root keeps the key Proxmox gave it, as with any `pct create`.
//! Everything after that logs in as `ssh.user`. Running it again changes nothing.

use crate::hosts::remote::session::sh_quote;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

/// The script root runs on the container.
pub fn user_script(user: &str, public_keys: &str) -> String {
    let user = sh_quote(user);
    let keys: String = public_keys.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| format!("{l}\n")).collect();
    format!(
        r#"set -eu
user={user}
if ! command -v sudo >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sudo >/dev/null
fi
id -u "$user" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
group=$(id -gn "$user")
home=$(getent passwd "$user" | cut -d: -f6)
install -d -m 700 -o "$user" -g "$group" "$home/.ssh"
cat > "$home/.ssh/.authorized_keys.rigger" <<'RIGGER_KEYS_END'
{keys}RIGGER_KEYS_END
install -m 600 -o "$user" -g "$group" "$home/.ssh/.authorized_keys.rigger" "$home/.ssh/authorized_keys"
rm -f "$home/.ssh/.authorized_keys.rigger"
echo "$user ALL=(ALL) NOPASSWD:ALL" > "/etc/sudoers.d/.90-rigger-$user"
chmod 440 "/etc/sudoers.d/.90-rigger-$user"
mv "/etc/sudoers.d/.90-rigger-$user" "/etc/sudoers.d/90-rigger-$user"
"#
    )
}

/// Run `user_script` as root on `address`, trusting only `known_hosts`.
pub async fn create_user(address: &str, known_hosts: &Path, private_key: &Path, user: &str, public_keys: &str) -> Result<()> {
    let mut child = tokio::process::Command::new("ssh")
        .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "GlobalKnownHostsFile=/dev/null", "-i"])
        .arg(private_key)
        .args(["-l", "root", address, "sh -s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run ssh (apt-get install openssh-client)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(user_script(user, public_keys).as_bytes()).await.context("sending the user script to ssh")?;
    }
    let output = child.wait_with_output().await.context("waiting for ssh")?;
    if !output.status.success() {
        bail!(
            "creating user {user} as root@{address} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_quotes_the_user_and_carries_every_key() {
        let script = user_script("rigger", "ssh-ed25519 AAAA one\n\n ssh-rsa BBBB two \n");
        assert!(script.contains("user='rigger'") || script.contains("user=rigger"), "{script}");
        assert!(script.contains("ssh-ed25519 AAAA one\nssh-rsa BBBB two\nRIGGER_KEYS_END"), "{script}");
    }
}
