//! The host plan as data: what `plan --out` saves of the host changes the user
//! saw, and what `apply FILE` compares the hosts' plan of the moment with
//! before it changes any host. Files are summarised by path, mode, owner and
//! a keyed hash of the desired content — never the content (files hold
//! secrets), and not a plain hash either: with the rest of a config file known
//! from the plan, a plain sha256 would let whoever holds the saved plan test
//! guesses of a weak password offline. The key is a state secret
//! (`PLAN_HASH_KEY`), so only a holder of the state can recompute one.

use super::ops::HostChanges;
use super::phase::ConfigPlan;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How many differences a refusal names.
const SHOWN_DIFFERENCES: usize = 5;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlanSummary {
    /// Every configured host, also those with nothing to change: a host that
    /// gains a change since is a difference.
    pub hosts: BTreeMap<String, HostChangeSummary>,
    /// PostgreSQL parameters to change in the DCS.
    pub parameter_changes: Vec<ParameterChange>,
    /// Patroni members whose PostgreSQL still owes a restart.
    pub pending_restarts: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostChangeSummary {
    pub install: Vec<String>,
    pub files: Vec<FileSummary>,
    pub start: Vec<String>,
    pub enable: Vec<String>,
    pub restart: Vec<String>,
    pub reload: Vec<String>,
    /// Services with custom handling (Patroni) whose files changed.
    pub custom: Vec<String>,
    pub stop_disable: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSummary {
    pub path: String,
    /// Why it is written: "new", "content", "mode", "owner".
    pub reasons: Vec<String>,
    /// Octal, as `ls` and `chmod` speak it.
    pub mode: String,
    pub owner: String,
    pub group: String,
    /// HMAC-SHA256 of the content to write, keyed by the state's `PLAN_HASH_KEY`.
    pub content_hmac: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParameterChange {
    pub name: String,
    pub now: Option<String>,
    pub wanted: String,
}

/// The state secret that keys the saved plan's file hashes (generated with the others).
pub const PLAN_HASH_KEY: &str = "plan_hash_key";

/// The keyed hash a saved plan holds of a file's content.
pub fn content_hmac(key: &str, content: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(content);
    hex::encode(mac.finalize().into_bytes())
}

/// The one way a host plan becomes data. `secrets` are masked out of the few
/// values kept as text (parameter values), in case a plan puts one there, and
/// key the file hashes.
pub fn summarize(cp: &ConfigPlan, secrets: &BTreeMap<String, String>) -> HostPlanSummary {
    let mask = |v: &str| crate::ui::hosts::mask(v, secrets);
    let key = secrets.get(PLAN_HASH_KEY).map(String::as_str).unwrap_or_default();
    HostPlanSummary {
        hosts: cp.hosts.iter().map(|(name, hp)| (name.clone(), summarize_host(&hp.changes, key))).collect(),
        parameter_changes: cp.parameter_changes.iter().map(|(name, now, wanted)| ParameterChange { name: name.clone(), now: now.as_deref().map(mask), wanted: mask(wanted) }).collect(),
        pending_restarts: cp.pending_restarts.clone(),
    }
}

fn summarize_host(c: &HostChanges, key: &str) -> HostChangeSummary {
    HostChangeSummary {
        install: c.install.clone(),
        files: c
            .files
            .iter()
            .map(|fc| FileSummary {
                path: fc.file.path.clone(),
                reasons: fc.reasons.iter().map(|r| r.to_string()).collect(),
                mode: format!("{:04o}", fc.file.mode),
                owner: fc.file.owner.clone(),
                group: fc.file.group.clone(),
                content_hmac: content_hmac(key, fc.file.content.as_bytes()),
            })
            .collect(),
        start: c.start.clone(),
        enable: c.enable.clone(),
        restart: c.restart.clone(),
        reload: c.reload.clone(),
        custom: c.custom.clone(),
        stop_disable: c.stop_disable.clone(),
    }
}

/// What differs between the saved summary and the one of now, one line per
/// item ("host: what"), in host order.
pub fn differences(saved: &HostPlanSummary, now: &HostPlanSummary) -> Vec<String> {
    let mut out = Vec::new();
    let names: std::collections::BTreeSet<&String> = saved.hosts.keys().chain(now.hosts.keys()).collect();
    for name in names {
        match (saved.hosts.get(name), now.hosts.get(name)) {
            (Some(_), None) => out.push(format!("{name}: in the saved plan, not configured now")),
            (None, Some(_)) => out.push(format!("{name}: configured now, not in the saved plan")),
            (Some(s), Some(n)) => host_differences(name, s, n, &mut out),
            (None, None) => {}
        }
    }
    let key = |p: &ParameterChange| format!("PostgreSQL parameter {} = {} -> {:?}", p.name, p.now.as_deref().map(|n| format!("{n:?}")).unwrap_or("(unset)".into()), p.wanted);
    list_differences("cluster", &saved.parameter_changes.iter().map(key).collect::<Vec<_>>(), &now.parameter_changes.iter().map(key).collect::<Vec<_>>(), &mut out);
    list_differences("cluster", &saved.pending_restarts.iter().map(|h| format!("pending PostgreSQL restart on {h}")).collect::<Vec<_>>(), &now.pending_restarts.iter().map(|h| format!("pending PostgreSQL restart on {h}")).collect::<Vec<_>>(), &mut out);
    out
}

fn host_differences(host: &str, saved: &HostChangeSummary, now: &HostChangeSummary, out: &mut Vec<String>) {
    let saved_files: BTreeMap<&str, &FileSummary> = saved.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let now_files: BTreeMap<&str, &FileSummary> = now.files.iter().map(|f| (f.path.as_str(), f)).collect();
    for (path, s) in &saved_files {
        match now_files.get(path) {
            None => out.push(format!("{host}: {path} was to be written ({}), now it needs no change", s.reasons.join(", "))),
            Some(n) if n != s => out.push(format!("{host}: {path}: saved {}, now {}", describe(s), describe(n))),
            Some(_) => {}
        }
    }
    for (path, n) in &now_files {
        if !saved_files.contains_key(path) {
            out.push(format!("{host}: {path} now needs writing ({}), the saved plan left it as it was", n.reasons.join(", ")));
        }
    }
    for (what, s, n) in [
        ("install", &saved.install, &now.install),
        ("start", &saved.start, &now.start),
        ("enable at boot", &saved.enable, &now.enable),
        ("restart", &saved.restart, &now.restart),
        ("reload", &saved.reload, &now.reload),
        ("reload (custom)", &saved.custom, &now.custom),
        ("stop and disable", &saved.stop_disable, &now.stop_disable),
    ] {
        let label = |v: &Vec<String>| v.iter().map(|x| format!("{what} {x}")).collect::<Vec<_>>();
        list_differences(host, &label(s), &label(n), out);
    }
}

fn describe(f: &FileSummary) -> String {
    format!("({}) mode {} {}:{} hmac {}", f.reasons.join(", "), f.mode, f.owner, f.group, &f.content_hmac[..f.content_hmac.len().min(12)])
}

fn list_differences(who: &str, saved: &[String], now: &[String], out: &mut Vec<String>) {
    for s in saved.iter().filter(|s| !now.contains(s)) {
        out.push(format!("{who}: {s} — in the saved plan, not needed now"));
    }
    for n in now.iter().filter(|n| !saved.contains(n)) {
        out.push(format!("{who}: {n} — needed now, not in the saved plan"));
    }
}

/// The refusal `apply FILE` gives when the hosts moved: the hosts named, the
/// first few differences listed.
pub fn refusal(differences: &[String]) -> String {
    let mut hosts: Vec<&str> = differences.iter().filter_map(|d| d.split(':').next()).filter(|h| *h != "cluster").collect();
    hosts.dedup();
    let which = if hosts.is_empty() { "the PostgreSQL cluster".to_string() } else { hosts.join(", ") };
    let mut text = format!("the hosts changed since this plan was saved ({which}) — run `rigger plan --out` again and review it:\n");
    for d in differences.iter().take(SHOWN_DIFFERENCES) {
        text.push_str(&format!("  {d}\n"));
    }
    if differences.len() > SHOWN_DIFFERENCES {
        text.push_str(&format!("  … and {} more\n", differences.len() - SHOWN_DIFFERENCES));
    }
    text.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::super::facts::{FileFact, HostFacts, ServiceFact};
    use super::super::ops::{self, HostDesired, ManagedFile, ManagedService, OnChange};
    use super::super::phase::HostPlan;
    use super::*;
    use std::collections::BTreeSet;

    const SECRET: &str = "s3cret-redis-password-42";

    fn desired() -> HostDesired {
        HostDesired {
            host: "cache-1".into(),
            packages: vec!["redis-server".into()],
            files: vec![ManagedFile {
                role: "redis",
                path: "/etc/redis/redis.conf".into(),
                content: format!("port 6379\nrequirepass {SECRET}\n"),
                mode: 0o640,
                owner: "redis".into(),
                group: "redis".into(),
                validate: None,
                notify: vec!["redis-server".into()],
            }],
            services: vec![ManagedService { role: "redis", name: "redis-server".into(), on_change: OnChange::Restart }],
            stop_disable: vec![],
        }
    }

    /// The host's facts: the file as rigger would write it, or with `content` instead.
    fn facts(content: &str) -> HostFacts {
        let mut f = HostFacts::default();
        f.files.insert("/etc/redis/redis.conf".into(), Some(FileFact { sha256: ops::sha256_hex(content.as_bytes()), mode: 0o640, owner: "redis".into(), group: "redis".into() }));
        f.services.insert("redis-server".into(), ServiceFact { active: "active".into(), enabled: "enabled".into(), stale: false });
        f
    }

    fn config_plan(facts: HostFacts) -> ConfigPlan {
        let d = desired();
        let changes = ops::compute(&d, &facts, &BTreeSet::new());
        let hp = HostPlan { desired: d, facts, changes, old_content: BTreeMap::new() };
        ConfigPlan::of_hosts([("cache-1".to_string(), hp)].into(), vec![])
    }

    fn secrets() -> BTreeMap<String, String> {
        [("redis_password".to_string(), SECRET.to_string()), (PLAN_HASH_KEY.to_string(), "k".repeat(32))].into()
    }

    fn converged() -> String {
        desired().files[0].content.clone()
    }

    #[test]
    fn a_file_is_summarised_by_its_hash_never_its_content() {
        let cp = config_plan(facts("port 6379\n"));
        let s = summarize(&cp, &secrets());
        let f = &s.hosts["cache-1"].files[0];
        assert_eq!((f.path.as_str(), f.mode.as_str(), f.owner.as_str(), f.reasons.clone()), ("/etc/redis/redis.conf", "0640", "redis", vec!["content".to_string()]));
        assert_eq!(f.content_hmac, content_hmac(&"k".repeat(32), converged().as_bytes()));
        // Keyed: not the plain hash, and another state's key gives another one.
        assert_ne!(f.content_hmac, ops::sha256_hex(converged().as_bytes()));
        let mut others = secrets();
        others.insert(PLAN_HASH_KEY.into(), "x".repeat(32));
        assert_ne!(summarize(&cp, &others).hosts["cache-1"].files[0].content_hmac, f.content_hmac);
        assert_eq!(s.hosts["cache-1"].restart, vec!["redis-server"]);
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains(SECRET) && !json.contains("requirepass"), "{json}");
    }

    #[test]
    fn a_secret_in_a_parameter_value_is_masked() {
        let mut cp = config_plan(facts(&converged()));
        cp.parameter_changes = vec![("some_password".into(), Some(SECRET.into()), format!("x{SECRET}"))];
        let json = serde_json::to_string(&summarize(&cp, &secrets())).unwrap();
        assert!(!json.contains(SECRET), "{json}");
        assert!(json.contains("(sensitive)"), "{json}");
    }

    #[test]
    fn the_same_hosts_have_no_differences() {
        for content in [converged(), "port 6379\n".to_string()] {
            let a = summarize(&config_plan(facts(&content)), &secrets());
            let b = summarize(&config_plan(facts(&content)), &secrets());
            assert_eq!(differences(&a, &b), Vec::<String>::new());
        }
    }

    #[test]
    fn a_file_changed_by_hand_after_the_plan_is_a_difference_naming_host_and_path() {
        let saved = summarize(&config_plan(facts(&converged())), &secrets());
        assert!(saved.hosts["cache-1"].files.is_empty(), "converged: nothing to write");
        let now = summarize(&config_plan(facts("port 6380\n")), &secrets());
        let d = differences(&saved, &now);
        assert_eq!(
            d,
            vec![
                "cache-1: /etc/redis/redis.conf now needs writing (content), the saved plan left it as it was",
                "cache-1: restart redis-server — needed now, not in the saved plan"
            ]
        );
        let text = refusal(&d);
        assert!(text.starts_with("the hosts changed since this plan was saved (cache-1) — run `rigger plan --out` again"), "{text}");
    }

    #[test]
    fn a_stopped_service_and_a_new_desired_content_are_differences() {
        let saved = summarize(&config_plan(facts("old\n")), &secrets());
        let mut stopped = facts("old\n");
        stopped.services.insert("redis-server".into(), ServiceFact { active: "inactive".into(), enabled: "enabled".into(), stale: false });
        let d = differences(&saved, &summarize(&config_plan(stopped), &secrets()));
        assert!(d.contains(&"cache-1: start redis-server — needed now, not in the saved plan".to_string()), "{d:?}");
        assert!(d.contains(&"cache-1: restart redis-server — in the saved plan, not needed now".to_string()), "{d:?}");

        // The plan file would render other content: the same path, another hash.
        let mut other = summarize(&config_plan(facts("old\n")), &secrets());
        other.hosts.get_mut("cache-1").unwrap().files[0].content_hmac = content_hmac("k", b"other");
        let d = differences(&saved, &other);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(d[0].starts_with("cache-1: /etc/redis/redis.conf: saved (content) mode 0640 redis:redis hmac "), "{d:?}");
    }

    #[test]
    fn a_host_gone_or_added_and_a_pending_restart_are_differences() {
        let saved = summarize(&config_plan(facts(&converged())), &secrets());
        let mut now = saved.clone();
        now.hosts.insert("cache-2".into(), HostChangeSummary::default());
        now.pending_restarts.push("pg-1".into());
        let d = differences(&saved, &now);
        assert_eq!(d, vec!["cache-2: configured now, not in the saved plan", "cluster: pending PostgreSQL restart on pg-1 — needed now, not in the saved plan"]);
        assert!(refusal(&d).contains("(cache-2)"), "{}", refusal(&d));
    }

    #[test]
    fn a_refusal_lists_the_first_few_differences_and_counts_the_rest() {
        let d: Vec<String> = (0..8).map(|i| format!("h-{i}: start s")).collect();
        let text = refusal(&d);
        assert!(text.contains("h-4: start s") && !text.contains("h-5: start s"), "{text}");
        assert!(text.ends_with("… and 3 more"), "{text}");
    }
}
