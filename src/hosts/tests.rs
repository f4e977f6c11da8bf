//! The config phase's real code (facts → changes → stage → start → gate)
//! against scripted hosts (remote::scripted): no machines, no root, seconds.
//! Each host starts as a fresh Debian machine; the rules below answer the
//! health gates the way the daemons would once rigger started them.

use super::phase::{self, ConfigPlan};
use crate::cloud::engine::Shared;
use rigger_events::Events;
use crate::project::Project;
use crate::hosts::remote::scripted::{fail, ok, Action, Hang, HostView, Rule, ScriptedHost};
use crate::hosts::remote::session::{RunOutput, COMMAND_LIMIT, INSTALL_LIMIT};
use crate::cloud::resource::{Address, Kind, LiveResource};
use crate::state::{State, StateStore};
use anyhow::Result;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Mutex;

const PLAN: &str = "version: 1\nproject: hf-phase\nprovider: { kind: local }\nssh: { user: rigger, private_key_file: ./k }\n\
    network: { name: main, subnets: [ { name: app, cidr: 10.9.0.0/24 } ] }\n\
    hosts:\n  - { name: cache, roles: [redis], ip: 10.9.0.31 }\n  - { name: lb, count: 2, roles: [haproxy, keepalived], ip: 10.9.0.11 }\n\
    services:\n  redis: { port: 6379, maxmemory: 64mb }\n  keepalived: { vip: 10.9.0.10 }\n";

/// What the packages rigger installs bring along on Debian.
pub(super) fn fresh_debian() -> HostView {
    let mut v = HostView::default();
    for (pkg, unit) in [("redis-server", "redis-server"), ("nftables", "nftables"), ("haproxy", "haproxy"), ("keepalived", "keepalived")] {
        v.provides.insert(pkg.into(), vec![unit.into()]);
    }
    for (checker, pkg) in [("haproxy", "haproxy"), ("keepalived", "keepalived"), ("nft", "nftables"), ("patroni", "patroni")] {
        v.checkers.insert(checker.into(), pkg.into());
    }
    v
}

/// The gates' commands, answered as the daemons answer once they run
/// (keepalived takes the VIP on lb-1, the higher priority).
fn daemons(host: &str) -> Vec<Rule> {
    let vip = (host == "lb-1").then_some("10.9.0.10");
    vec![
        Rule::new("redis PING", "redis-cli", |v, _| if v.running("redis-server") { ok("PONG\n") } else { fail(1, "Could not connect to Redis at 127.0.0.1:6379: Connection refused") }),
        Rule::new("nft -f", "nft -f /etc/nftables.conf", |_, _| ok("")),
        Rule::new("nft list", "nft list table inet rigger", |_, _| fail(1, "Error: No such file or directory")),
        Rule::new("addresses", "ip -4 -o addr show", move |v, _| {
            let mut out = "1: lo    inet 127.0.0.1/8 scope host lo\n".to_string();
            if let Some(vip) = vip.filter(|_| v.running("keepalived")) {
                out.push_str(&format!("2: host0    inet {vip}/24 scope global host0\n"));
            }
            ok(&out)
        }),
    ]
}

pub(super) struct World {
    _dir: tempfile::TempDir,
    project: Project,
    shared: Arc<Mutex<Shared>>,
    pub(super) hosts: BTreeMap<String, Arc<ScriptedHost>>,
}

impl World {
    pub(super) fn new(plan_text: &str, hosts: impl Fn(&str) -> Arc<ScriptedHost>) -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let plan = crate::plan::load_str(&dir.path().join("plan.yaml"), plan_text).unwrap_or_else(|e| panic!("{e:#}"));
        let project = Project { state_path: dir.path().join(".rigger/hf-phase.state.json"), plan };
        let mut state = State::new(&project.plan.project, "local");
        crate::commands::ensure_generated(&mut state, &project.plan).expect("secrets");
        let mut scripted = BTreeMap::new();
        for h in &project.plan.hosts {
            let address = Address::new(Kind::Machine, h.name.as_str());
            let outputs = [("ssh_host".to_string(), serde_json::json!(h.ip.to_string()))].into_iter().collect();
            state.resources.insert(address.clone(), LiveResource { address, id: h.name.clone(), attrs: Default::default(), outputs });
            scripted.insert(h.name.clone(), hosts(&h.name));
        }
        let store = StateStore::open(&project.state_path, "test").expect("state store");
        let shared = Arc::new(Mutex::new(Shared::new(store, state, Arc::new(project.clone()))));
        World { _dir: dir, project, shared, hosts: scripted }
    }

    pub(super) async fn prepare(&self) -> Result<ConfigPlan> {
        let state = self.shared.lock().await.state.clone();
        let hosts = &self.hosts;
        phase::prepare_with(&self.project, &state, 4, phase::Gather::APPLY, &Events::silent(), |name| async move { Ok(hosts[&name].session()) }).await
    }

    /// One config phase, as `apply` runs it: prepare, then apply.
    pub(super) async fn run(&self) -> Result<()> {
        let cp = self.prepare().await?;
        let result = phase::apply(&self.project, &cp, &self.shared, &Events::silent()).await;
        cp.close().await;
        // Whatever the phase sent, the stand-ins knew: a script nobody answers
        // is a script the tests did not expect (the phase may ignore its failure).
        for h in self.hosts.values() {
            if let Some(s) = h.sent().iter().find(|s| s.action == Action::Unanswered) {
                panic!("{} was sent a script nothing answers:\n{}", h.name, s.script);
            }
        }
        result
    }

    pub(super) fn host(&self, name: &str) -> &Arc<ScriptedHost> {
        &self.hosts[name]
    }

    pub(super) fn clear(&self) {
        self.hosts.values().for_each(|h| h.clear_sent());
    }

    /// A new plan text for the same hosts (their views and state kept).
    pub(super) fn replan(&mut self, text: &str) {
        self.project.plan = crate::plan::load_str(&self.project.plan.file, text).unwrap_or_else(|e| panic!("{e:#}"));
    }
}

pub(super) fn writes(h: &ScriptedHost) -> Vec<Action> {
    h.actions().into_iter().filter(Action::writes).collect()
}

pub(super) fn systemctl(verb: &str, unit: &str) -> Action {
    Action::Systemctl(verb.into(), unit.into())
}

#[tokio::test]
async fn a_first_run_builds_every_role_and_a_second_run_only_gathers_facts() {
    let w = World::new(PLAN, |name| ScriptedHost::new(name, fresh_debian(), daemons(name)));
    w.run().await.unwrap();

    let cache = w.host("cache").view();
    assert!(cache.running("redis-server") && cache.services["redis-server"].enabled, "{cache:?}");
    assert!(cache.files["/etc/redis/redis.conf"].content.contains("maxmemory 64mb"));
    assert_eq!((cache.files["/etc/redis/redis.conf"].mode, cache.files["/etc/redis/redis.conf"].group.as_str()), (0o640, "redis"));
    let lb = w.host("lb-1").view();
    assert!(lb.running("haproxy") && lb.running("keepalived"), "{lb:?}");
    assert!(lb.files.contains_key("/etc/haproxy/haproxy.cfg") && lb.files.contains_key("/etc/keepalived/keepalived.conf"));
    // One install per host, for all of its roles, before any checked upload (the
    // scripted host refuses `keepalived -t` while keepalived is missing).
    for (name, h) in &w.hosts {
        assert_eq!(h.actions().iter().filter(|a| matches!(a, Action::Install(_))).count(), 1, "{name}: {:?}", h.actions());
    }
    // Packages come before the services that need them (the host refuses an unknown unit).
    let first = w.host("cache").actions();
    let installed = first.iter().position(|a| matches!(a, Action::Install(p) if p.contains(&"redis-server".to_string()))).expect("redis installed");
    let started = first.iter().position(|a| *a == systemctl("start", "redis-server")).expect("redis started");
    assert!(installed < started, "{first:?}");
    // Installs may take their own long limit on the host; everything else the default.
    for (name, h) in &w.hosts {
        for sent in h.sent() {
            let limit = if matches!(sent.action, Action::Install(_)) { INSTALL_LIMIT } else { COMMAND_LIMIT };
            assert_eq!(sent.limit, limit, "{name}: {:?}", sent.action);
        }
    }
    // The services were started, and nothing is left owing a restart.
    let state = w.shared.lock().await.state.clone();
    assert_eq!(state.hosts["cache"]["pending"], serde_json::json!([]));

    // Second run: the facts match, so nothing is written, installed or restarted.
    w.clear();
    let cp = w.prepare().await.unwrap();
    assert!(cp.is_empty(), "a converged host has no changes");
    cp.close().await;
    w.run().await.unwrap();
    // keepalived's gate read the addresses asked ahead in the facts round trip, not live.
    assert!(!w.host("lb-1").actions().contains(&Action::Rule("addresses".into())), "{:?}", w.host("lb-1").actions());
    for (name, h) in &w.hosts {
        assert_eq!(writes(h), vec![], "{name} was changed by a no-change run: {:?}", h.actions());
        assert!(h.actions().iter().all(|a| matches!(a, Action::Facts | Action::Rule(_))), "{name}: {:?}", h.actions());
        assert_eq!(h.actions().iter().filter(|a| **a == Action::Facts).count(), 2, "{name}: one facts round trip per prepare");
    }
}

#[tokio::test]
async fn a_changed_template_uploads_that_file_and_restarts_its_service_only() {
    let mut w = World::new(PLAN, |name| ScriptedHost::new(name, fresh_debian(), daemons(name)));
    w.run().await.unwrap();
    w.clear();
    w.replan(&PLAN.replace("maxmemory: 64mb", "maxmemory: 128mb"));
    w.run().await.unwrap();

    assert_eq!(writes(w.host("cache")), vec![Action::Upload("/etc/redis/redis.conf".into()), systemctl("restart", "redis-server")]);
    assert!(w.host("cache").view().files["/etc/redis/redis.conf"].content.contains("maxmemory 128mb"));
    assert_eq!(writes(w.host("lb-1")), vec![], "the lb's files did not change");
}

/// `rigger plan`'s diff never shows the live lines of a file others may not
/// read: they may hold a secret the state no longer knows (here a Redis
/// password rotated with RIGGER_SECRET_REDIS_PASSWORD), which masking the
/// state's values cannot catch. The new lines show, their secrets masked.
#[tokio::test]
async fn a_private_files_live_lines_are_not_shown() {
    let cat = || {
        Rule::new("cat a file", "cat /", |v, cmd| {
            let path = cmd.trim_start_matches("cat ").split(' ').next().unwrap_or_default();
            ok(v.files.get(path).map(|f| f.content.as_str()).unwrap_or_default())
        })
    };
    let w = World::new(PLAN, |name| ScriptedHost::new(name, fresh_debian(), daemons(name).into_iter().chain([cat()]).collect()));
    w.run().await.unwrap();
    let old = w.shared.lock().await.state.secrets["redis_password"].clone();
    assert!(w.host("cache").view().files["/etc/redis/redis.conf"].content.contains(&old));
    let mut state = w.shared.lock().await.state.clone();
    state.secrets.insert("redis_password".into(), "rotated-redis-password".into());
    let hosts = &w.hosts;
    let cp = phase::prepare_with(&w.project, &state, 4, phase::Gather::PLAN, &Events::silent(), |name| async move { Ok(hosts[&name].session()) }).await.unwrap();
    let text = crate::ui::hosts::render_human(&cp, &state.secrets, &crate::ui::Paint { on: false });
    cp.close().await;
    assert!(text.contains("~ /etc/redis/redis.conf (content)"), "{text}");
    assert!(text.contains("-(… 1 line(s) of the live file, not shown: it may hold secrets)\n          +requirepass (sensitive)"), "{text}");
    assert!(!text.contains(&old) && !text.contains("rotated-redis-password"), "{text}");
}

#[tokio::test]
async fn a_role_starts_only_after_the_roles_it_needs_are_up() {
    // keepalived needs haproxy: on the lb, haproxy starts (and passes its gate) first.
    let w = World::new(PLAN, |name| ScriptedHost::new(name, fresh_debian(), daemons(name)));
    w.run().await.unwrap();
    let lb = w.host("lb-1").actions();
    let at = |a: Action| lb.iter().position(|x| *x == a).unwrap_or_else(|| panic!("{a:?} never sent: {lb:?}"));
    assert!(at(systemctl("start", "haproxy")) < at(systemctl("start", "keepalived")), "{lb:?}");

    // When haproxy cannot start, keepalived is staged but never started, and the error says why.
    let w = World::new(PLAN, |name| {
        let mut rules = daemons(name);
        rules.insert(0, Rule::new("haproxy fails", "systemctl start haproxy", |_, _| fail(1, "Job for haproxy.service failed because the control process exited with error code.")));
        ScriptedHost::new(name, fresh_debian(), rules)
    });
    let err = format!("{:#}", w.run().await.unwrap_err());
    assert!(err.contains("role keepalived: not started — a role it needs (haproxy) failed"), "{err}");
    assert!(err.contains("lb-1: haproxy did not start"), "{err}");
    let lb = w.host("lb-1").view();
    assert!(lb.files.contains_key("/etc/keepalived/keepalived.conf"), "staging does not wait for the roles it needs");
    assert!(!lb.running("keepalived"));
    // The independent role on the other host still came up.
    assert!(w.host("cache").view().running("redis-server"));
}

/// A package install that never ends (apt waiting on a lock) fails the
/// apply at its limit, naming the host and the command, instead of hanging
/// it; the roles of the other hosts still come up.
#[tokio::test(start_paused = true)]
async fn a_hung_install_fails_the_apply_at_its_limit() {
    let w = World::new(PLAN, |name| {
        let h = ScriptedHost::new(name, fresh_debian(), daemons(name));
        if name == "cache" {
            h.hang("apt-get", Hang::UntilTheLimit);
        }
        h
    });
    let started = tokio::time::Instant::now();
    let ran = tokio::time::timeout(INSTALL_LIMIT * 10, w.run()).await.expect("the apply is bounded");
    let err = format!("{:#}", ran.unwrap_err());
    assert!(started.elapsed() >= INSTALL_LIMIT, "{:?}", started.elapsed());
    assert!(err.contains("role redis: cache: `DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y nftables redis-server 2>&1` did not finish within 30 min, so it was ended on the host"), "{err}");
    assert!(err.contains("RIGGER_COMMAND_TIMEOUT"), "{err}");
    assert!(!w.host("cache").view().running("redis-server"));
    assert!(w.host("lb-1").view().running("keepalived"));
}

#[tokio::test(start_paused = true)]
async fn a_failing_gate_names_the_host_the_role_and_what_it_waited_for() {
    // Redis runs but refuses every PING (a wrong password, say) until `fixed`.
    let fixed = Arc::new(AtomicBool::new(false));
    let w = World::new(PLAN, |name| {
        let mut rules = daemons(name);
        let fixed = fixed.clone();
        rules.insert(0, Rule::new("redis refuses", "redis-cli", move |v, _| if fixed.load(Ordering::SeqCst) && v.running("redis-server") { ok("PONG\n") } else { ok("NOAUTH Authentication required.\n") }));
        ScriptedHost::new(name, fresh_debian(), rules)
    });
    let err = format!("{:#}", w.run().await.unwrap_err());
    assert!(err.contains("role redis: cache: redis answers PING: not reached after 30s — last seen: NOAUTH Authentication required."), "{err}");
    // The restart it owes is remembered for the next run.
    let state = w.shared.lock().await.state.clone();
    assert_eq!(state.hosts["cache"]["pending"], serde_json::json!(["redis-server"]));

    // Fixed by hand on the host: the next run's files match, but the owed restart still happens, once.
    fixed.store(true, Ordering::SeqCst);
    w.clear();
    w.run().await.unwrap();
    assert_eq!(writes(w.host("cache")), vec![systemctl("restart", "redis-server")]);
    assert_eq!(w.shared.lock().await.state.hosts["cache"]["pending"], serde_json::json!([]));
    w.clear();
    w.run().await.unwrap();
    assert_eq!(writes(w.host("cache")), vec![]);
}

#[tokio::test]
async fn a_config_the_daemon_rejects_leaves_the_live_file_and_the_service_alone() {
    let w = World::new(PLAN, |name| ScriptedHost::new(name, fresh_debian(), daemons(name)));
    w.run().await.unwrap();
    let before = w.host("lb-1").view();
    // The same host, now with an haproxy -c that refuses the next candidate.
    let lb = ScriptedHost::rejecting("lb-1", before.clone(), daemons("lb-1"), "/etc/haproxy/haproxy.cfg", "[ALERT] config : parsing [haproxy.cfg:3] : unknown keyword 'bogus'");
    let mut hosts = w.hosts.clone();
    hosts.insert("lb-1".into(), lb);
    let mut w2 = World { hosts, ..w };
    w2.replan(&PLAN.replace("keepalived: { vip: 10.9.0.10 }", "keepalived: { vip: 10.9.0.10 }\n  haproxy: { stats_port: 8405 }"));
    let err = format!("{:#}", w2.run().await.unwrap_err());
    assert!(err.contains("lb-1: /etc/haproxy/haproxy.cfg was rejected by `haproxy -c`") && err.contains("unknown keyword 'bogus'"), "{err}");
    let after = w2.host("lb-1").view();
    assert_eq!(after.files["/etc/haproxy/haproxy.cfg"], before.files["/etc/haproxy/haproxy.cfg"], "the live file stays");
    assert!(!w2.host("lb-1").actions().iter().any(|a| matches!(a, Action::Systemctl(v, u) if u == "haproxy" && v != "daemon-reload")), "{:?}", w2.host("lb-1").actions());
}

/// Who started etcd, and when (tokio's clock: the etcd tests pause it).
pub(super) type Members = Arc<std::sync::Mutex<BTreeMap<String, tokio::time::Instant>>>;

/// How long a started member takes to join its peers.
const ETCD_JOINS_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// The members that are up: started at least ETCD_JOINS_AFTER ago.
pub(super) fn etcd_up(members: &Members) -> Vec<String> {
    members.lock().unwrap().iter().filter(|(_, at)| at.elapsed() >= ETCD_JOINS_AFTER).map(|(m, _)| m.clone()).collect()
}

/// An etcd member whose peers are seen through `members` (who has etcd
/// up), as etcd's own member list would show them. A member that `crashes`
/// never comes up (`systemctl start --no-block` returns at once regardless).
fn etcd_member(name: &str, members: &Members, crashes: bool) -> Arc<ScriptedHost> {
    let mut view = fresh_debian();
    view.provides.insert("etcd-server".into(), vec!["etcd".into()]);
    ScriptedHost::new(name, view, etcd_member_rules(name, members, crashes))
}

/// The rules of `etcd_member` (and the firewall's), for hosts with more roles.
pub(super) fn etcd_member_rules(name: &str, members: &Members, crashes: bool) -> Vec<Rule> {
    let (me, up, health, list) = (name.to_string(), members.clone(), members.clone(), members.clone());
    vec![
        Rule::new("etcd start", "systemctl start --no-block etcd", move |v, _| {
            if !crashes {
                v.services.get_mut("etcd").expect("etcd installed").active = true;
                up.lock().unwrap().entry(me.clone()).or_insert_with(tokio::time::Instant::now);
            }
            ok("")
        }),
        Rule::new("etcd health", "endpoint health", move |v, _| {
            if v.running("etcd") && etcd_up(&health).len() >= 2 {
                ok("https://127.0.0.1:2379 is healthy: successfully committed proposal: took = 2ms\n")
            } else {
                // (etcdctl runs with 2>&1: its complaint arrives on stdout.)
                RunOutput { code: 1, stdout: "https://127.0.0.1:2379 is unhealthy: failed to commit proposal: context deadline exceeded\n".into(), stderr: String::new() }
            }
        }),
        Rule::new("etcd members", "member list", move |_, _| {
            ok(&etcd_up(&list).iter().enumerate().map(|(i, m)| format!("{i:x}, started, {m}, https://{m}:2380, https://{m}:2379, false\n")).collect::<String>())
        }),
        Rule::new("nft -f", "nft -f /etc/nftables.conf", |_, _| ok("")),
        Rule::new("nft list", "nft list table inet rigger", |_, _| fail(1, "Error: No such file or directory")),
    ]
}

const ETCD_PLAN: &str = "version: 1\nproject: hf-phase\nprovider: { kind: local }\nssh: { user: rigger, private_key_file: ./k }\n\
    network: { name: main, subnets: [ { name: db, cidr: 10.9.0.0/24 } ] }\n\
    hosts:\n  - { name: pg, count: 3, roles: [etcd], ip: 10.9.0.21 }\n";

/// A lone member is never healthy (no quorum): only members started together come up.
#[tokio::test(start_paused = true)]
async fn a_fresh_etcd_cluster_comes_up_only_because_its_members_start_together() {
    let members = Members::default();
    let w = World::new(ETCD_PLAN, |name| etcd_member(name, &members, false));
    w.run().await.unwrap();
    assert_eq!(members.lock().unwrap().len(), 3);
    for (name, h) in &w.hosts {
        let view = h.view();
        assert!(view.running("etcd") && view.services["etcd"].enabled, "{name}: {view:?}");
        assert!(view.files["/etc/default/etcd"].content.contains(&format!("ETCD_NAME=\"{name}\"")));
        // The drop-in that makes etcd read the bootstrap file was loaded before the start
        // (by a daemon-reload, or by `systemctl enable`, which reloads systemd after it).
        let actions = h.actions();
        let reload = actions.iter().position(|a| matches!(a, Action::Systemctl(verb, _) if verb == "daemon-reload" || verb == "enable")).expect("daemon-reload or enable");
        let start = actions.iter().position(|a| *a == Action::Rule("etcd start".into())).expect("etcd started");
        assert!(reload < start, "{name}: {actions:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_etcd_member_that_never_comes_up_fails_the_gate_on_every_host_by_name() {
    let members = Members::default();
    let w = World::new(ETCD_PLAN, |name| etcd_member(name, &members, name == "pg-3"));
    let err = format!("{:#}", w.run().await.unwrap_err());
    assert!(err.contains("pg-3: etcd healthy with 3 members: not reached after 120s — last seen: https://127.0.0.1:2379 is unhealthy"), "{err}");
    assert!(err.contains("pg-1: etcd healthy with 3 members: not reached after 120s — last seen: 2 of 3 members started"), "{err}");
    assert!(err.starts_with("role etcd:"), "{err}");
}
