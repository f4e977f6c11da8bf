//! What is mounted where, read from `/proc/self/mountinfo`, so that nothing is
//! deleted while a mount still sits inside it and stale mounts can be undone.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
    /// Per-superblock options; for overlayfs these hold `lowerdir=`.
    pub super_options: String,
}

pub fn list() -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    Ok(text.lines().filter_map(parse_line).collect())
}

/// One mountinfo line: `id parent maj:min root mount_point opts [optional…] - fstype source super_opts`.
fn parse_line(line: &str) -> Option<MountEntry> {
    let (left, right) = line.split_once(" - ")?;
    let mount_point = left.split(' ').nth(4)?;
    let mut right = right.split(' ');
    let fs_type = right.next()?.to_string();
    let _source = right.next();
    let super_options = right.next().unwrap_or("").to_string();
    Some(MountEntry { mount_point: PathBuf::from(unescape(mount_point)), fs_type, super_options })
}

/// mountinfo escapes space, tab, newline and backslash as octal `\040` etc.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let value = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(value);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn is_mount_point(path: &Path) -> Result<bool> {
    Ok(list()?.iter().any(|m| m.mount_point == path))
}

/// Mount points at or below `dir`, deepest first (the order to unmount them in).
pub fn mounts_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = list()?.into_iter().map(|m| m.mount_point).filter(|p| p.starts_with(dir)).collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// Whether any overlay mount uses `dir` as (part of) its lower layer.
pub fn used_as_lower(dir: &Path) -> Result<bool> {
    let needle = dir.to_string_lossy().into_owned();
    Ok(list()?.iter().filter(|m| m.fs_type == "overlay").any(|m| {
        m.super_options
            .split(',')
            .filter_map(|opt| opt.strip_prefix("lowerdir="))
            .flat_map(|lower| lower.split(':'))
            .any(|layer| layer == needle)
    }))
}

/// Unmounts everything at or below `dir` (deepest first), then checks nothing is left.
pub async fn unmount_all_under(dir: &Path) -> Result<()> {
    for mount_point in mounts_under(dir)? {
        unmount(&mount_point).await?;
    }
    let left = mounts_under(dir)?;
    anyhow::ensure!(left.is_empty(), "still mounted below {}: {:?} — unmount them by hand (umount), then retry", dir.display(), left);
    Ok(())
}

/// Unmounts one mount point, retrying while it is busy (a container's processes
/// can take a moment to go away), then falling back to a lazy unmount.
pub async fn unmount(mount_point: &Path) -> Result<()> {
    let path = mount_point.to_string_lossy().into_owned();
    for _ in 0..20 {
        if !is_mount_point(mount_point)? {
            return Ok(());
        }
        if crate::cmd::succeeds("umount", &[&path]).await? {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    crate::cmd::run_hinted("umount", &["--lazy", &path], "something still uses it; see `fuser -vm` on it").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_overlay_line() {
        let line = "120 25 0:50 / /var/lib/rigger/machines/p/h/rootfs rw,relatime shared:60 - overlay overlay rw,lowerdir=/var/lib/rigger/images/debian-12/rootfs,upperdir=/u,workdir=/w";
        let m = parse_line(line).expect("parses");
        assert_eq!(m.mount_point, PathBuf::from("/var/lib/rigger/machines/p/h/rootfs"));
        assert_eq!(m.fs_type, "overlay");
        assert!(m.super_options.contains("lowerdir=/var/lib/rigger/images/debian-12/rootfs"));
    }

    #[test]
    fn unescapes_spaces() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
    }
}
