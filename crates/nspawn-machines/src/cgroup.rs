//! A cgroup of its own for every machine.
//!
//! `systemd-nspawn --keep-unit` (the only way on a host without systemd) makes
//! the cgroup nspawn runs in the container's root cgroup. Started from one
//! process tree, every machine got the same one, so their systemds shared one
//! `system.slice`: two machines starting the same oneshot unit at once fought
//! over its cgroup (`status=219/CGROUP`), and one machine stopping a unit
//! could reach into another's. Each machine is therefore started inside
//! `rigger/<machine>` of the hierarchies systemd uses (the named `systemd`
//! v1 hierarchy and/or the unified v2 one), and that subtree goes with it.
//!
//! On a host that runs systemd, cgroups belong to it: nothing is done there.

use anyhow::Result;
use std::path::{Path, PathBuf};

/// The mount points of the hierarchies systemd organises units in.
fn hierarchies() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo.lines().filter_map(systemd_hierarchy).collect()
}

/// A mountinfo line's mount point when it is a hierarchy systemd uses:
/// any cgroup2 mount, or the v1 one named `systemd`.
fn systemd_hierarchy(line: &str) -> Option<PathBuf> {
    let fields: Vec<&str> = line.split(' ').collect();
    let mount_point = fields.get(4)?;
    let dash = fields.iter().position(|f| *f == "-")?;
    let fstype = fields.get(dash + 1)?;
    let super_options = fields.get(dash + 3).copied().unwrap_or("");
    let named_systemd = *fstype == "cgroup" && super_options.split(',').any(|o| o == "name=systemd");
    (*fstype == "cgroup2" || named_systemd).then(|| PathBuf::from(mount_point))
}

fn host_runs_systemd() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

fn machine_dir(hierarchy: &Path, machine: &str) -> PathBuf {
    hierarchy.join("rigger").join(machine)
}

/// Creates the machine's cgroups and returns the `cgroup.procs` files the
/// process that becomes nspawn must write its pid to (empty: leave it be).
/// Best effort: where the host does not let rigger make one (a read-only
/// cgroup mount), the machine boots in the shared one and its console log
/// says so (see `enter_then_exec`).
pub fn prepare(machine: &str) -> Result<Vec<PathBuf>> {
    if host_runs_systemd() {
        return Ok(Vec::new());
    }
    Ok(hierarchies()
        .into_iter()
        .map(|h| machine_dir(&h, machine))
        .map(|dir| {
            let _ = std::fs::create_dir_all(&dir);
            dir.join("cgroup.procs")
        })
        .collect())
}

/// The shell that moves itself into the machine's cgroups, then becomes
/// `systemd-nspawn` with the arguments after it. A cgroup it cannot enter is
/// named in the console log (nspawn.log), and the machine boots anyway.
pub fn enter_then_exec(procs: &[PathBuf]) -> String {
    let mut script = String::new();
    for p in procs {
        let p = p.display();
        script.push_str(&format!("echo $$ 2>/dev/null > '{p}' || echo 'rigger: cannot enter the cgroup {p}: this machine shares its systemd cgroup with the others' >&2; "));
    }
    script.push_str("exec systemd-nspawn \"$@\"");
    script
}

/// Removes the machine's cgroups, deepest first, once the stopped machine's
/// last processes have left them (they linger a moment after its init died).
/// What still cannot go after 5 s stays: empty of rigger's work and harmless.
pub async fn remove_when_empty(machine: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !remove(machine) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The CPU time the machine's processes have used so far, from its cgroup2
/// node's `cpu.stat` (what its own processes cost, sshd and the checks run
/// in it included). None where it has no node of its own: on a host that
/// runs systemd, or without a cgroup2 mount.
pub fn cpu_used(machine: &str) -> Option<std::time::Duration> {
    if host_runs_systemd() {
        return None;
    }
    hierarchies().into_iter().find_map(|h| usage(&std::fs::read_to_string(machine_dir(&h, machine).join("cpu.stat")).ok()?))
}

/// `usage_usec` of a cgroup2 `cpu.stat`.
fn usage(cpu_stat: &str) -> Option<std::time::Duration> {
    let usec = cpu_stat.lines().find_map(|l| l.strip_prefix("usage_usec "))?.trim().parse().ok()?;
    Some(std::time::Duration::from_micros(usec))
}

/// One attempt at removing the machine's cgroups; true when none is left.
pub fn remove(machine: &str) -> bool {
    if host_runs_systemd() {
        return true;
    }
    let mut gone = true;
    for hierarchy in hierarchies() {
        let dir = machine_dir(&hierarchy, machine);
        remove_tree(&dir);
        gone &= !dir.exists();
    }
    gone
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_hierarchies_systemd_uses() {
        let v1 = "35 29 0:30 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd";
        let memory = "36 29 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory";
        let v2 = "37 29 0:32 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw";
        let other = "22 1 0:21 / /proc rw,nosuid - proc proc rw";
        assert_eq!(systemd_hierarchy(v1), Some(PathBuf::from("/sys/fs/cgroup/systemd")));
        assert_eq!(systemd_hierarchy(memory), None);
        assert_eq!(systemd_hierarchy(v2), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(systemd_hierarchy(other), None);
    }

    #[test]
    fn reads_the_cpu_time_of_a_cgroup2_node() {
        assert_eq!(usage("usage_usec 1500250\nuser_usec 1000000\nsystem_usec 500250\n"), Some(std::time::Duration::from_micros(1_500_250)));
        assert_eq!(usage("user_usec 1\n"), None);
    }

    #[test]
    fn the_wrapper_enters_every_cgroup_before_nspawn() {
        let s = enter_then_exec(&[PathBuf::from("/a/cgroup.procs"), PathBuf::from("/b/cgroup.procs")]);
        assert!(s.starts_with("echo $$ 2>/dev/null > '/a/cgroup.procs' || echo 'rigger: cannot enter the cgroup /a/cgroup.procs"), "{s}");
        assert!(s.contains("echo $$ 2>/dev/null > '/b/cgroup.procs' ||") && s.ends_with("exec systemd-nspawn \"$@\""), "{s}");
    }
}
