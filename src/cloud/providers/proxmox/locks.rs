//! Guest config locks, as the GUI shows them (`lock: create`, `backup`, …).
//!
//! A lock is held while a task works on the guest; pve-common's
//! PVE/AbstractConfig.pm `check_lock` refuses every other change with
//! `CT is locked (create)` / `VM is locked (clone)` (HTTP 500), and
//! pve-container's destroy_vm checks it too — the API has no way to lift a
//! lock (only `pct unlock` / `qm unlock` on the node; qemu's `skiplock` is for
//! root@pam, never a token). A worker killed mid-way (pvedaemon restart, node
//! crash) leaves its `create`/`clone` lock behind with no task holding it:
//! waiting would never end, so rigger tells such a lock apart from a busy one
//! by the node's active tasks.

use super::client::{ApiError, ProxmoxClient};
use super::tasks::Upid;
use serde_json::Value;

/// Locks only a creation or a clone sets: stale when no task holds them.
pub fn set_by_creation(lock: &str) -> bool {
    matches!(lock, "create" | "clone")
}

/// The active task working on `vmid`, if any. A clone's task carries the
/// *source* VMID (qemu-server forks `qmclone` with the template's id), so any
/// running clone counts for a guest locked `clone`.
pub async fn holder(client: &ProxmoxClient, node: &str, vmid: u64, lock: &str) -> Result<Option<String>, ApiError> {
    let active = client.get(&format!("/nodes/{node}/tasks"), &[("source", "active".into()), ("limit", "500".into())]).await?;
    let id = vmid.to_string();
    Ok(active.as_array().into_iter().flatten().filter_map(|t| t.get("upid").and_then(Value::as_str)).find_map(|raw| {
        let upid = Upid::parse(raw)?;
        (upid.id == id || (lock == "clone" && upid.worker_type == "qmclone")).then(|| raw.to_string())
    }))
}

pub fn noun(kind: &str) -> &'static str {
    if kind == "qemu" {
        "VM"
    } else {
        "CT"
    }
}

pub fn tool(kind: &str) -> &'static str {
    if kind == "qemu" {
        "qm"
    } else {
        "pct"
    }
}

/// A lock nothing will ever release: say which guest, which lock, and what to do.
pub fn stale(kind: &str, vmid: u64, name: &str, lock: &str, node: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{} {vmid} ('{name}') is locked ({lock}) and no task on node {node} holds the lock: an interrupted {} left it. \
         The Proxmox API cannot lift a lock; on node {node} run `{} unlock {vmid}` (or remove the guest with `{} destroy {vmid} --purge`), then run rigger again",
        noun(kind),
        if lock == "clone" { "clone" } else { "creation" },
        tool(kind),
        tool(kind),
    )
}

/// A lock still held by a running task when the bounded wait ended.
pub fn still_held(kind: &str, vmid: u64, name: &str, lock: &str, holder: Option<&str>, waited_secs: u64) -> anyhow::Error {
    anyhow::anyhow!(
        "{} {vmid} ('{name}') is still locked ({lock}) after {waited_secs} s{}; wait for that task to finish (Tasks in the GUI) or stop it, then run rigger again",
        noun(kind),
        holder.map(|u| format!(", held by task {u}")).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_guest_the_lock_and_the_way_out() {
        let text = stale("lxc", 103, "pg-3", "create", "pve").to_string();
        assert!(text.contains("CT 103 ('pg-3') is locked (create)"), "{text}");
        assert!(text.contains("`pct unlock 103`"), "{text}");
        let text = still_held("qemu", 105, "app-1", "backup", Some("UPID:pve:1:2:3:vzdump:105:root@pam:"), 120).to_string();
        assert!(text.contains("VM 105 ('app-1') is still locked (backup) after 120 s, held by task UPID:"), "{text}");
        assert!(set_by_creation("create") && set_by_creation("clone") && !set_by_creation("backup"));
    }
}
