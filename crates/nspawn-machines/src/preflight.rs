//! What the local provider needs from the host, checked up front so the user
//! gets one clear message instead of a failing command halfway through.

use crate::cmd::install_hint;
use anyhow::{bail, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// Root, systemd-nspawn, iproute2, util-linux, ssh-keygen and overlayfs.
/// (mmdebstrap is checked only when the image has to be built.)
pub fn check_host() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the local provider must run as root (it creates network namespaces, bridges and overlay mounts): run rigger with sudo");
    }
    for program in ["systemd-nspawn", "ip", "mount", "umount", "setsid", "chroot", "ssh-keygen"] {
        require_program(program)?;
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems.lines().any(|l| l.split_whitespace().last() == Some("overlay")) {
        bail!("this kernel has no overlayfs, which the local provider uses for machine disks: run `modprobe overlay` (or use a kernel with CONFIG_OVERLAY_FS)");
    }
    Ok(())
}

pub fn require_program(program: &str) -> Result<PathBuf> {
    find_in_path(program).ok_or_else(|| anyhow::anyhow!("{program} not found in PATH — {}", install_hint(program)))
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}
