//! The config phase's database roles (etcd → Patroni) against scripted
//! hosts sharing one model of the cluster: Patroni seeds its DCS from the
//! `bootstrap.dcs` of the config rigger uploaded (as the real one does), the
//! first member started leads, the others stream from it.

use super::tests::{etcd_member_rules, etcd_up, fresh_debian, systemctl, writes, Members, World};
use crate::hosts::remote::scripted::{fail, ok, Action, Rule, ScriptedHost};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct Pg {
    leader: Option<String>,
    running: BTreeSet<String>,
    /// The DCS config (`GET /config`), seeded by the first member.
    dcs: Option<Value>,
    patched: Vec<Value>,
    /// The leader answered GET /primary with 200 (it is up).
    primary_seen: bool,
    /// Replicas started before that: must stay empty.
    started_early: Vec<String>,
    /// Members started before all of etcd was up: must stay empty.
    started_without_etcd: Vec<String>,
    /// How many members ran when HAProxy started.
    running_when_haproxy_started: Option<usize>,
}

type Cluster = Arc<Mutex<Pg>>;

const PLAN: &str = "version: 1\nproject: hf-phase\nprovider: { kind: local }\nssh: { user: rigger, private_key_file: ./k }\n\
    network: { name: main, subnets: [ { name: db, cidr: 10.9.0.0/24 } ] }\n\
    hosts:\n  - { name: pg, count: 3, roles: [etcd, patroni], ip: 10.9.0.21 }\n\
    services:\n  patroni: { scope: shop }\n";

/// Patroni's REST answer as rest_script asks it: the body, then the HTTP code on its own line.
fn rest_answer(script: &str, code: u16, body: &Value) -> crate::hosts::remote::session::RunOutput {
    if script.contains("%{http_code}") {
        ok(&format!("{body}\n{code}"))
    } else if code == 200 {
        ok(&body.to_string())
    } else {
        fail(22, "")
    }
}

fn member(name: &str, members: &Members, pg: &Cluster) -> Arc<ScriptedHost> {
    let mut view = fresh_debian();
    view.provides.insert("etcd-server".into(), vec!["etcd".into()]);
    view.provides.insert("patroni".into(), vec!["patroni".into()]);
    let mut rules = etcd_member_rules(name, members, false);
    let me = name.to_string();
    let (start, data, rest, streaming) = (pg.clone(), pg.clone(), pg.clone(), pg.clone());
    let (me_start, etcd) = (me.clone(), members.clone());
    rules.push(Rule::new("etcd del", "del --prefix", |_, _| ok("0\n")));
    rules.push(Rule::new("patroni start", "systemctl start patroni", move |v, _| {
        let mut pg = start.lock().unwrap();
        if etcd_up(&etcd).len() < 3 {
            pg.started_without_etcd.push(me_start.clone());
        }
        if pg.leader.is_none() {
            // Bootstrap: the DCS is seeded from the config's bootstrap.dcs.
            let cfg: serde_yaml_ng::Value = serde_yaml_ng::from_str(&v.files["/etc/patroni/config.yml"].content).expect("patroni config is YAML");
            pg.dcs = Some(serde_json::to_value(&cfg["bootstrap"]["dcs"]).expect("dcs as JSON"));
            pg.leader = Some(me_start.clone());
        } else if !pg.primary_seen {
            pg.started_early.push(me_start.clone());
        }
        pg.running.insert(me_start.clone());
        v.services.get_mut("patroni").expect("patroni installed").active = true;
        ok("")
    }));
    let me_data = me.clone();
    rules.push(Rule::new("PG_VERSION", "PG_VERSION", move |_, _| if data.lock().unwrap().running.contains(&me_data) { ok("") } else { fail(1, "") }));
    let me_rest = me.clone();
    rules.push(Rule::new("patroni REST", "://127.0.0.1:8008", move |_, script| {
        let mut pg = rest.lock().unwrap();
        if !pg.running.contains(&me_rest) {
            return fail(7, "curl: (7) Failed to connect to 127.0.0.1 port 8008");
        }
        let path = script.rsplit("127.0.0.1:8008").next().unwrap_or("").trim();
        let method = script.split(" -X ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or("GET");
        let role = |n: &str| if pg.leader.as_deref() == Some(n) { "leader" } else { "replica" };
        match (method, path) {
            ("GET", "/primary") => {
                let leads = role(&me_rest) == "leader";
                pg.primary_seen |= leads;
                rest_answer(script, if leads { 200 } else { 503 }, &json!({}))
            }
            ("GET", "/cluster") => {
                let members: Vec<Value> = pg.running.iter().map(|n| json!({ "name": n, "role": role(n), "state": if role(n) == "leader" { "running" } else { "streaming" } })).collect();
                rest_answer(script, 200, &json!({ "members": members }))
            }
            ("GET", "/config") => rest_answer(script, 200, pg.dcs.as_ref().unwrap_or(&json!({}))),
            ("GET", "/patroni") => rest_answer(script, 200, &json!({ "role": if role(&me_rest) == "leader" { "primary" } else { "replica" }, "state": "running", "pending_restart": false })),
            ("PATCH", "/config") => {
                let body: Value = script.split("--data-binary '").nth(1).and_then(|r| r.split('\'').next()).and_then(|b| serde_json::from_str(b).ok()).unwrap_or_default();
                pg.patched.push(body);
                rest_answer(script, 200, &json!({}))
            }
            other => fail(127, &format!("the scripted Patroni has no {other:?}")),
        }
    }));
    let me_stream = me;
    rules.push(Rule::new("streaming", "pg_stat_replication", move |_, _| {
        let pg = streaming.lock().unwrap();
        if pg.leader.as_deref() != Some(me_stream.as_str()) {
            return ok("");
        }
        ok(&pg.running.iter().filter(|n| pg.leader.as_deref() != Some(n.as_str())).map(|n| format!("{n}\n")).collect::<String>())
    }));
    ScriptedHost::new(name, view, rules)
}

#[tokio::test(start_paused = true)]
async fn patroni_bootstraps_one_leader_after_etcd_is_up_and_a_second_run_changes_nothing() {
    let (members, pg) = (Members::default(), Cluster::default());
    let w = World::new(PLAN, |name| member(name, &members, &pg));
    w.run().await.unwrap();
    {
        let pg = pg.lock().unwrap();
        assert_eq!(pg.leader.as_deref(), Some("pg-1"), "the first member bootstraps");
        assert_eq!(pg.running.len(), 3);
        assert_eq!(pg.dcs.as_ref().unwrap()["postgresql"]["parameters"]["max_connections"], json!("100"), "{:?}", pg.dcs);
        assert!(pg.started_early.is_empty(), "replicas started before the leader was up: {:?}", pg.started_early);
        assert!(pg.started_without_etcd.is_empty(), "Patroni started before etcd was up: {:?}", pg.started_without_etcd);
        assert!(pg.patched.is_empty(), "the DCS was seeded with the plan's settings: {:?}", pg.patched);
    }
    for (name, h) in &w.hosts {
        let a = h.actions();
        let at = |x: &Action| a.iter().position(|y| y == x).unwrap_or_else(|| panic!("{name}: {x:?} not sent: {a:?}"));
        assert!(at(&systemctl("enable", "patroni")) < at(&Action::Rule("patroni start".into())), "{name}: {a:?}");
    }
    w.clear();
    let cp = w.prepare().await.unwrap();
    assert!(cp.is_empty() && cp.parameter_changes.is_empty() && cp.pending_restarts.is_empty(), "{:?}", cp.parameter_changes);
    cp.close().await;
    w.run().await.unwrap();
    for (name, h) in &w.hosts {
        assert_eq!(writes(h), vec![], "{name}: {:?}", h.actions());
        assert!(!h.actions().iter().any(|a| matches!(a, Action::Rule(r) if r.ends_with("start"))), "{name}: {:?}", h.actions());
    }
}

#[tokio::test(start_paused = true)]
async fn a_changed_parameter_is_planned_as_a_dcs_change() {
    let (members, pg) = (Members::default(), Cluster::default());
    let mut w = World::new(PLAN, |name| member(name, &members, &pg));
    w.run().await.unwrap();
    w.clear();
    w.replan(&PLAN.replace("patroni: { scope: shop }", "patroni: { scope: shop, parameters: { work_mem: 8MB } }"));
    let cp = w.prepare().await.unwrap();
    assert_eq!(cp.parameter_changes, vec![("work_mem".to_string(), None, "8MB".to_string())]);
    cp.close().await;
}

const WITH_LB: &str = "version: 1\nproject: hf-phase\nprovider: { kind: local }\nssh: { user: rigger, private_key_file: ./k }\n\
    network: { name: main, subnets: [ { name: db, cidr: 10.9.0.0/24 } ] }\n\
    hosts:\n  - { name: pg, count: 3, roles: [etcd, patroni], ip: 10.9.0.21 }\n  - { name: lb, roles: [haproxy], ip: 10.9.0.11 }\n\
    services:\n  patroni: { scope: shop }\n";

/// An HAProxy host in front of the cluster: its stats page and the logins
/// through its ports answer from the cluster model (`read_reaches` says
/// whether the read port lands on a replica or, misrouted, on the primary).
fn balancer(name: &str, pg: &Cluster, read_reaches: &'static str) -> Arc<ScriptedHost> {
    let mut view = fresh_debian();
    view.provides.insert("haproxy".into(), vec!["haproxy".into()]);
    let (start, stats, login) = (pg.clone(), pg.clone(), pg.clone());
    let rules = vec![
        Rule::new("haproxy start", "systemctl start haproxy", move |v, _| {
            let mut pg = start.lock().unwrap();
            pg.running_when_haproxy_started = Some(pg.running.len());
            v.services.get_mut("haproxy").expect("haproxy installed").active = true;
            ok("")
        }),
        Rule::new("nft -f", "nft -f /etc/nftables.conf", |_, _| ok("")),
        Rule::new("nft list", "nft list table inet rigger", |_, _| fail(1, "Error: No such file or directory")),
        Rule::new("stats", "/stats;csv", move |v, _| {
            if !v.running("haproxy") {
                return fail(7, "");
            }
            let pg = stats.lock().unwrap();
            let mut csv = String::from("# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status\n");
            for m in &pg.running {
                let leads = pg.leader.as_deref() == Some(m.as_str());
                let row = |backend: &str, up: bool| format!("{backend},{m},0,0,0,0,,0,0,0,,0,,0,0,0,0,{}\n", if up { "UP" } else { "DOWN" });
                csv.push_str(&row("primary", leads));
                csv.push_str(&row("replicas", !leads));
            }
            ok(&csv)
        }),
        Rule::new("login", "pg_is_in_recovery()", move |v, script| {
            if !v.running("haproxy") || login.lock().unwrap().leader.is_none() {
                return ok("psql: error: connection to server at \"10.9.0.11\", port 5000 failed: Connection refused");
            }
            ok(if script.contains("port=5000") { "f\n" } else { read_reaches })
        }),
    ];
    ScriptedHost::new(name, view, rules)
}

#[tokio::test(start_paused = true)]
async fn haproxy_comes_up_after_patroni_and_its_gate_logs_in_through_both_ports() {
    let (members, pg) = (Members::default(), Cluster::default());
    let w = World::new(WITH_LB, |name| if name == "lb" { balancer(name, &pg, "t\n") } else { member(name, &members, &pg) });
    w.run().await.unwrap();
    let lb = w.host("lb").actions();
    assert_eq!(pg.lock().unwrap().running_when_haproxy_started, Some(3), "HAProxy starts once Patroni is up: {lb:?}");
    let logins = lb.iter().filter(|a| **a == Action::Rule("login".into())).count();
    assert_eq!(logins, 2, "one login through each port: {lb:?}");
}

#[tokio::test(start_paused = true)]
async fn a_read_port_that_reaches_the_primary_fails_the_gate_with_what_it_reached() {
    let (members, pg) = (Members::default(), Cluster::default());
    let w = World::new(WITH_LB, |name| if name == "lb" { balancer(name, &pg, "f\n") } else { member(name, &members, &pg) });
    let err = format!("{:#}", w.run().await.unwrap_err());
    assert!(err.contains("role haproxy:") && err.contains("login through the lb read port (10.9.0.11:5001) from lb"), "{err}");
    assert!(err.contains("reached the primary (pg_is_in_recovery() = false), not a replica"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_running_patroni_that_does_not_answer_leaves_the_plan_unsure_not_empty() {
    let (members, pg) = (Members::default(), Cluster::default());
    let w = World::new(PLAN, |name| member(name, &members, &pg));
    // Before the first build nothing runs: nothing is unknown, starting it is the change.
    let cp = w.prepare().await.unwrap();
    assert!(cp.unread.is_empty(), "{:?}", cp.unread);
    cp.close().await;
    w.run().await.unwrap();
    w.clear();
    // The REST API stops answering while systemd still says Patroni runs.
    pg.lock().unwrap().running.clear();
    let cp = w.prepare().await.unwrap();
    assert!(!cp.is_empty(), "a plan that could not read the DCS says it is empty");
    assert!(cp.parameter_changes.is_empty() && cp.pending_restarts.is_empty());
    assert!(cp.unread.iter().any(|u| u.contains("GET /config") && u.contains("pg-1, pg-2, pg-3")), "{:?}", cp.unread);
    let text = crate::ui::hosts::render_human(&cp, &Default::default(), &crate::ui::Paint { on: false });
    assert!(text.contains("Not read") && text.contains("GET /patroni did not answer") && !text.contains("No host changes"), "{text}");
    cp.close().await;
}
