//! The control host's build cache (`/var/lib/rigger/artifacts/<kind>/<hash>`):
//! each build rigger uses is marked as used, and after a build only the most
//! recently used ones of its kind stay. The Storefront and the dashboard are
//! rebuilt for every API URL, so without this each URL a plan ever had would
//! keep ~100 MB forever. Folders of builds still under way (`.work-<pid>`,
//! `.partial-<pid>` of a live process) are never touched. pnpm's store is
//! not pruned: every build links from it.

use rigger_events::Events;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// How many builds of each kind stay: `RIGGER_ARTIFACTS_KEEP`, default 3.
pub fn keep() -> usize {
    std::env::var("RIGGER_ARTIFACTS_KEEP").ok().and_then(|v| v.parse().ok()).filter(|n| *n >= 1).unwrap_or(3)
}

const MARKER: &str = ".last-used";

/// Remember that `build` was used now.
pub fn mark_used(build: &Path) {
    let _ = std::fs::write(build.join(MARKER), format!("{}\n", std::process::id()));
}

fn last_used(dir: &Path) -> SystemTime {
    let at = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    at(&dir.join(MARKER)).or_else(|| at(dir)).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// A work folder (`<hash>.work-<pid>`, `<hash>.partial-<pid>`): whether its
/// process has ended (a build that died); `None` for a build.
fn abandoned_work(name: &str) -> Option<bool> {
    let pid: u32 = name.rsplit_once(".work-").or_else(|| name.rsplit_once(".partial-"))?.1.parse().ok()?;
    Some(!Path::new(&format!("/proc/{pid}")).exists())
}

/// Remove every build of `kind` beyond the `keep` most recently used, never
/// `current`, and the work folders of builds that died. Returns what was removed.
pub fn prune(kind: &Path, current: &Path, keep: usize) -> Result<Vec<PathBuf>> {
    let mut builds = Vec::new();
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(kind)?.filter_map(|e| e.ok()) {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !path.is_dir() {
            continue;
        }
        match abandoned_work(&name) {
            Some(true) => removed.push(path),
            Some(false) => {}
            None if path == current => {}
            None => builds.push((last_used(&path), path)),
        }
    }
    // Newest first; `current` counts as one of the kept.
    builds.sort_by(|a, b| b.0.cmp(&a.0));
    removed.extend(builds.into_iter().skip(keep.saturating_sub(1)).map(|(_, p)| p));
    for p in &removed {
        std::fs::remove_dir_all(p)?;
    }
    Ok(removed)
}

/// Mark `build` used and prune its kind, reporting what went; a failure to
/// prune is reported, never fatal.
pub fn used_and_pruned(build: &Path, subject: &str, events: &Events) {
    mark_used(build);
    let Some(kind) = build.parent() else { return };
    let keep = keep();
    match prune(kind, build, keep) {
        Ok(gone) if !gone.is_empty() => {
            let names: Vec<String> = gone.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
            events.progress(subject, format!("removed {} older cached build(s) from {}: {} (RIGGER_ARTIFACTS_KEEP={keep})", gone.len(), kind.display(), names.join(", ")));
        }
        Ok(_) => {}
        Err(e) => events.progress(subject, format!("could not prune {}: {e:#}", kind.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(kind: &Path, name: &str, age_s: u64) -> PathBuf {
        let p = kind.join(name);
        std::fs::create_dir_all(&p).unwrap();
        mark_used(&p);
        let when = SystemTime::now() - std::time::Duration::from_secs(age_s);
        std::fs::File::options().write(true).open(p.join(MARKER)).unwrap().set_modified(when).unwrap();
        p
    }

    #[test]
    fn keeps_the_most_recently_used_and_the_current_build() {
        let d = tempfile::tempdir().unwrap();
        let kind = d.path();
        let oldest = build(kind, "aaa", 400);
        let old = build(kind, "bbb", 300);
        let recent = build(kind, "ccc", 200);
        let newer = build(kind, "ddd", 100);
        // The build in use is the oldest by its marker: it stays anyway.
        let gone = prune(kind, &oldest, 3).unwrap();
        assert_eq!(gone, vec![old.clone()]);
        assert!(oldest.exists() && recent.exists() && newer.exists() && !old.exists());
    }

    #[test]
    fn work_folders_of_live_builds_stay_and_dead_ones_go() {
        let d = tempfile::tempdir().unwrap();
        let kind = d.path();
        let current = build(kind, "aaa", 0);
        let live = kind.join(format!("bbb.work-{}", std::process::id()));
        let dead = kind.join("ccc.work-999999999");
        std::fs::create_dir_all(&live).unwrap();
        std::fs::create_dir_all(&dead).unwrap();
        let gone = prune(kind, &current, 1).unwrap();
        assert_eq!(gone, vec![dead.clone()]);
        assert!(live.exists() && current.exists());
    }
}
