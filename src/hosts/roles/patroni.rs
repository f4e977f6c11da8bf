//! Patroni/PostgreSQL: etcd3 as DCS, scram-sha-256 for exactly the hosts that connect (src/flows.rs),
//! the distro's own cluster stopped and disabled. A fresh cluster bootstraps
//! on one node first (stale DCS keys of a failed build are cleared when no
//! node has data), replicas join after. PostgreSQL parameters live in the DCS:
//! a change is PATCHed there and, when it needs a restart, rolls: replicas
//! first, then a switchover, then the old leader.
//! Gate: one leader, every other member streaming from it.

use super::{file, service};
use crate::hosts::ops::{HostDesired, OnChange, StoppedService};
use crate::hosts::run::{start, wait_for, RoleRun};
use crate::plan::model::{Host, Plan};
use crate::hosts::remote::session::{sh_quote, HostSession};
use crate::render::Renderer;
use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use crate::plan::services::{Setting, SettingType, PORT};
use crate::flows::{FlowSink, Service};
use super::role::Outputs;
use serde_json::Map;
use super::role::PlanCheck;
use crate::plan::diag::Diags;

pub fn version(plan: &Plan) -> u64 {
    plan.int_setting(NAME, "postgres_version")
}

/// PostgreSQL's port (its socket's name too).
pub fn pg_port(plan: &Plan) -> u64 {
    plan.int_setting(NAME, "port")
}

pub(crate) fn rest_port(plan: &Plan) -> u64 {
    plan.int_setting(NAME, "rest_port")
}

fn scope(plan: &Plan) -> String {
    plan.str_setting(NAME, "scope")
}

pub fn data_dir(plan: &Plan) -> String {
    format!("/var/lib/postgresql/{}/{}", version(plan), scope(plan))
}

/// `patroni --validate-config` of Patroni 3.0 also reports its own listen
/// ports as "already in use" while Patroni runs: that alone is not a bad config.
/// Nor is an etcd that is not up yet: the file is staged while etcd starts,
/// and Patroni starts only after etcd's gate (hosts::dag).
const VALIDATE: &str = "sh -c 'o=$(patroni --validate-config \"$0\" 2>&1) || { echo \"$o\" | grep -v -e \"is already in use\" -e \"is not reachable\" | grep -q . && { echo \"$o\"; exit 1; }; }; exit 0' {}";

pub fn desired(r: &Renderer, ctx: &Value, plan: &Plan) -> Result<HostDesired> {
    let v = version(plan);
    Ok(HostDesired {
        packages: vec!["patroni".into(), format!("postgresql-{v}"), "python3-psycopg2".into()],
        files: vec![file(NAME, "/etc/patroni/config.yml", r.render("patroni.yml.j2", ctx)?, 0o600, "postgres", "postgres", Some(("patroni --validate-config", VALIDATE)), &["patroni"])],
        services: vec![service(NAME, "patroni", OnChange::Custom)],
        stop_disable: ["postgresql".to_string(), format!("postgresql@{v}-main")].into_iter().map(|name| StoppedService { role: NAME, name }).collect(),
        ..Default::default()
    })
}

/// The probes the plan needs: the DCS config and the member's state as Patroni
/// serves them. They are the gate's own `/config` and `/patroni` asks, so the
/// facts round trip runs each request once (`FactQuery` shares them); an
/// answer is the body and then the status line (`answered_ok`).
pub fn probes(plan: &Plan) -> Vec<(String, String)> {
    let port = rest_port(plan);
    vec![("patroni_config".into(), rest_script(port, "GET", "/config", None)), ("patroni_state".into(), rest_script(port, "GET", "/patroni", None))]
}

/// A `rest_script` answer (the body, a newline, the status code) as
/// (status, body); status 0 when curl printed none.
fn rest_answer(stdout: &str) -> (u16, &str) {
    let text = stdout.trim_end();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text));
    (code.trim().parse().unwrap_or(0), body)
}

/// The body of a `rest_script` answer when Patroni answered 200.
fn answered_ok(answer: &str) -> Option<&str> {
    match rest_answer(answer) {
        (200, body) => Some(body),
        _ => None,
    }
}

/// Parameters whose DCS value differs from the plan's: (name, now, wanted).
pub fn parameter_changes(plan: &Plan, live_config: &str) -> Vec<(String, Option<String>, String)> {
    let Ok(live) = serde_json::from_str::<Value>(live_config) else { return vec![] };
    let live_params = live.pointer("/postgresql/parameters").cloned().unwrap_or(json!({}));
    super::pg_parameters(plan)
        .into_iter()
        .filter_map(|(k, want)| {
            let want = as_text(&want);
            let now = live_params.get(&k).map(as_text);
            (now.as_deref() != Some(want.as_str())).then_some((k, now, want))
        })
        .collect()
}

/// Whether this member's PostgreSQL waits for a restart to take a setting.
pub fn restart_pending(state_probe: &str) -> bool {
    serde_json::from_str::<Value>(state_probe).ok().and_then(|v| v["pending_restart"].as_bool()).unwrap_or(false)
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Every call to Patroni's REST API goes through here (one place for its credentials).
fn rest_script(port: u64, method: &str, path: &str, body: Option<&Value>) -> String {
    let data = body.map(|b| format!(" -H 'Content-Type: application/json' --data-binary {}", sh_quote(&b.to_string()))).unwrap_or_default();
    let auth = super::rest_auth::curl_args();
    super::rest_auth::local_curl(port, &format!("-m 60 {auth} -w '\\n%{{http_code}}' -X {method}{data}"), path)
}

/// The member's own psql binary (the server package ships it), not Debian's
/// Perl wrapper `/usr/bin/psql`, which costs about 40 ms of CPU per call:
/// health checks call it on every member in every run.
pub fn psql_bin(plan: &Plan) -> String {
    format!("/usr/lib/postgresql/{}/bin/psql", version(plan))
}

fn streaming_script(plan: &Plan) -> String {
    format!("runuser -u postgres -- {} -h /var/run/postgresql -p {} -Atc \"select application_name from pg_stat_replication where state = 'streaming'\"", psql_bin(plan), pg_port(plan))
}

/// A member that may be the leader: no `standby.signal` in its data
/// directory (a shell test, no process). Questions only the leader is asked
/// are asked ahead there only.
pub fn leader_guess(plan: &Plan) -> String {
    format!("[ ! -e {}/standby.signal ]", sh_quote(&data_dir(plan)))
}

/// The gate's commands on a member, asked ahead in the facts round trip:
/// the cluster (on the first member, the one `gate` asks), the DCS config,
/// its own state and (on the leader, not known ahead) who streams.
pub fn gate_asks(plan: &Plan, host: &crate::plan::model::Host) -> Vec<crate::hosts::remote::ahead::Ask> {
    let port = rest_port(plan);
    let first = plan.hosts_with_role(NAME).next().is_some_and(|h| h.name == host.name);
    let paths = if first { &["/cluster", "/config", "/patroni"][..] } else { &["/config", "/patroni"][..] };
    let mut asks: Vec<crate::hosts::remote::ahead::Ask> = paths.iter().map(|p| crate::hosts::remote::ahead::Ask::sudo(rest_script(port, "GET", p, None), None)).collect();
    asks.push(crate::hosts::remote::ahead::Ask::sudo(streaming_script(plan), None).skip_unless(leader_guess(plan)));
    asks
}

pub async fn rest(s: &HostSession, port: u64, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, String)> {
    let out = s.sudo(&rest_script(port, method, path, body), None).await?;
    let (code, body) = rest_answer(&out.stdout);
    Ok((code, body.to_string()))
}

/// The cluster as Patroni reports it: member name → (role, state).
pub(crate) async fn cluster(s: &HostSession, port: u64) -> Result<BTreeMap<String, (String, String)>> {
    let (code, body) = rest(s, port, "GET", "/cluster", None).await?;
    if code != 200 {
        bail!("GET /cluster answered {code}");
    }
    let v: Value = serde_json::from_str(&body)?;
    Ok(v["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| (m["name"].as_str().unwrap_or("").to_string(), (m["role"].as_str().unwrap_or("").to_string(), m["state"].as_str().unwrap_or("").to_string())))
        .collect())
}

pub async fn converge(run: &RoleRun<'_>) -> Result<()> {
    let plan = run.plan;
    let port = rest_port(plan);
    let needs_start = |h: &Host| run.changes_of(&h.name).start.iter().any(|s| s == "patroni");
    let to_start: Vec<&Host> = run.hosts.iter().copied().filter(|h| needs_start(h)).collect();
    let running: Vec<&Host> = run.hosts.iter().copied().filter(|h| !needs_start(h)).collect();
    if running.is_empty() && !to_start.is_empty() {
        let has_data = futures::future::join_all(to_start.iter().map(|h| async move {
            let out = run.session(&h.name)?.sudo(&format!("test -f {}/PG_VERSION", sh_quote(&data_dir(plan))), None).await?;
            anyhow::Ok(out.ok().then(|| h.name.clone()))
        }))
        .await;
        let mut with_data = Vec::new();
        for r in has_data {
            with_data.extend(r?);
        }
        if with_data.is_empty() {
            // A brand-new cluster: no node has data, so whatever the DCS holds
            // for this scope is left over from a failed build — clear it, or the
            // bootstrap waits forever for a leader that never comes.
            clear_dcs(run).await?;
            let first = to_start[0];
            run.events.progress(&format!("patroni {}", first.name), "bootstrapping the first node");
            start(run.session(&first.name)?, "patroni").await?;
            wait_for(&format!("{}: bootstrap as leader", first.name), Duration::from_secs(240), || async {
                let (code, _) = rest(run.session(&first.name)?, port, "GET", "/primary", None).await?;
                Ok(if code == 200 { Ok(()) } else { Err(format!("/primary answers {code}")) })
            })
            .await
            .map_err(|e| anyhow!("{e:#} (see `journalctl -u patroni` on {})", first.name))?;
            start_all(run, &to_start[1..]).await?;
        } else {
            // The cluster existed: start everyone and let Patroni pick the leader.
            start_all(run, &to_start).await?;
        }
    } else {
        start_all(run, &to_start).await?;
    }

    // Running members whose patroni.yml changed re-read it (SIGHUP).
    for h in &running {
        if run.changes_of(&h.name).custom.iter().any(|s| s == "patroni") {
            run.session(&h.name)?.sudo_ok("reloading patroni", "systemctl reload patroni").await?;
            // A renewed certificate keeps its path: PostgreSQL re-reads it on a reload only.
            run.session(&h.name)?.sudo("runuser -u postgres -- psql -h /var/run/postgresql -Atqc 'select pg_reload_conf()'", None).await?;
        }
    }
    gate(run).await?;
    if sync_parameters(run).await? {
        gate(run).await?;
    }
    Ok(())
}

async fn start_all(run: &RoleRun<'_>, hosts: &[&Host]) -> Result<()> {
    let futures = hosts.iter().map(|h| async move {
        run.events.progress(&format!("patroni {}", h.name), "starting patroni");
        start(run.session(&h.name)?, "patroni").await
    });
    let errors: Vec<String> = futures::future::join_all(futures).await.into_iter().filter_map(|r| r.err().map(|e| format!("{e:#}"))).collect();
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(())
}

async fn clear_dcs(run: &RoleRun<'_>) -> Result<()> {
    let Some(etcd) = run.plan.hosts_with_role(super::etcd::NAME).next() else { return Ok(()) };
    let Ok(s) = run.session(&etcd.name) else { return Ok(()) };
    let key = format!("/service/{}/", scope(run.plan));
    // The plan's client port, not etcd's default (a generated plan with 12379 found this).
    let port = run.plan.int_setting(super::etcd::NAME, "client_port");
    s.sudo_ok("clearing stale Patroni keys", &super::tls::etcdctl(port, &format!("del --prefix {}", sh_quote(&key)))).await?;
    Ok(())
}

/// Healthy: exactly one leader, every other member running as a replica and
/// streaming from it (checked in pg_stat_replication on the leader).
pub async fn gate(run: &RoleRun<'_>) -> Result<()> {
    let port = rest_port(run.plan);
    let names: Vec<String> = run.plan.hosts_with_role(NAME).map(|h| h.name.clone()).collect();
    let probe = run.hosts.first().ok_or_else(|| anyhow!("no patroni host"))?;
    wait_for("Patroni: one leader, the others streaming", Duration::from_secs(240), || async {
        let members = cluster(run.session(&probe.name)?, port).await?;
        let leaders: Vec<&String> = members.iter().filter(|(_, (role, _))| role == "leader").map(|(n, _)| n).collect();
        if leaders.len() != 1 {
            return Ok(Err(format!("{} leaders: {members:?}", leaders.len())));
        }
        let leader = leaders[0].clone();
        let missing: Vec<&String> = names.iter().filter(|n| !members.contains_key(*n)).collect();
        if !missing.is_empty() {
            return Ok(Err(format!("not in the cluster yet: {missing:?}")));
        }
        let streaming = streaming_replicas(run.session(&leader)?, run.plan).await?;
        let lagging: Vec<&String> = names.iter().filter(|n| **n != leader && !streaming.contains(n)).collect();
        if lagging.is_empty() {
            Ok(Ok(()))
        } else {
            wake_leader(run.session(&leader)?, port).await;
            Ok(Err(format!("leader {leader}; not streaming yet: {lagging:?}")))
        }
    })
    .await
}

/// Run the leader's HA loop now instead of at its next `loop_wait`: it
/// creates the replication slots of members that just joined, which their
/// streaming waits for (a new replica otherwise streams up to loop_wait plus
/// PostgreSQL's 5 s retry later). Patroni's API wakes the loop after every
/// PATCH /config; this one sets `ttl` to the value it has, so nothing
/// changes. Best effort: the gate goes on polling either way.
async fn wake_leader(leader: &HostSession, port: u64) {
    let Ok((200, body)) = rest(leader, port, "GET", "/config", None).await else { return };
    let Some(ttl) = serde_json::from_str::<Value>(&body).ok().and_then(|c| c.get("ttl").cloned()) else { return };
    let _ = rest(leader, port, "PATCH", "/config", Some(&json!({ "ttl": ttl }))).await;
}

/// Members the leader sees streaming (pg_stat_replication), by name.
/// The socket is named by `services.patroni.port`.
pub async fn streaming_replicas(leader: &HostSession, plan: &Plan) -> Result<Vec<String>> {
    let out = leader.sudo(&streaming_script(plan), None).await?;
    Ok(out.stdout.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect())
}

/// Bring the DCS parameters to the plan's; roll restarts when needed.
/// Returns whether anything restarted.
async fn sync_parameters(run: &RoleRun<'_>) -> Result<bool> {
    let plan = run.plan;
    let port = rest_port(plan);
    let probe = run.session(&run.hosts[0].name)?;
    let (code, body) = rest(probe, port, "GET", "/config", None).await?;
    if code != 200 {
        bail!("{}: GET /config answered {code}", probe.name);
    }
    super::failover::sync_dcs_timing(run, probe, port, &body).await?;
    let changes = parameter_changes(plan, &body);
    if changes.is_empty() {
        return finish_pending_restarts(run).await;
    }
    let patch: serde_json::Map<String, Value> = changes.iter().map(|(k, _, v)| (k.clone(), json!(v))).collect();
    let subject = "patroni parameters".to_string();
    run.events.progress(&subject, format!("setting {}", changes.iter().map(|(k, _, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")));
    let mut patched_at = BTreeMap::new();
    for h in &run.hosts {
        patched_at.insert(h.name.clone(), clock(run.session(&h.name)?).await?);
    }
    let (code, body) = rest(probe, port, "PATCH", "/config", Some(&json!({ "postgresql": { "parameters": patch } }))).await?;
    if code != 200 {
        bail!("PATCH /config answered {code}: {body}");
    }
    // Patroni applies a DCS change in its own loop, a moment later, on every
    // member: wait until each has rewritten its config and PostgreSQL has
    // loaded it, so the apply ends with the change in effect.
    let loop_wait = plan.int_setting(NAME, "loop_wait");
    for h in &run.hosts {
        let s = run.session(&h.name)?;
        let since = patched_at[&h.name];
        wait_for(&format!("{}: Patroni writes the new parameters and PostgreSQL loads them", h.name), Duration::from_secs(loop_wait * 3 + 10), || async {
            let (written, loaded) = config_times(s, pg_port(plan)).await?;
            Ok(if written < since {
                Err("postgresql.conf not rewritten yet".to_string())
            } else if loaded < written {
                Err("postgresql.conf rewritten, not loaded yet".to_string())
            } else {
                Ok(())
            })
        })
        .await?;
    }
    // Which of them only take effect after a restart?
    let members = cluster(probe, port).await?;
    let leader = members.iter().find(|(_, (r, _))| r == "leader").map(|(n, _)| n.clone()).ok_or_else(|| anyhow!("no leader"))?;
    let names: Vec<String> = changes.iter().map(|(k, _, _)| format!("'{k}'")).collect();
    let out = run
        .session(&leader)?
        .sudo(
            &format!("runuser -u postgres -- psql -h /var/run/postgresql -p {} -Atc \"select name from pg_settings where context = 'postmaster' and name in ({})\"", pg_port(plan), names.join(",")),
            None,
        )
        .await?;
    if out.stdout.trim().is_empty() {
        return Ok(false); // Reloaded above: in effect.
    }
    // Wait until every member knows it must restart.
    for h in &run.hosts {
        let s = run.session(&h.name)?;
        wait_for(&format!("{}: Patroni notices the pending restart", h.name), Duration::from_secs(loop_wait * 3 + 10), || async {
            let (_, body) = rest(s, port, "GET", "/patroni", None).await?;
            let v: Value = serde_json::from_str(&body).unwrap_or(json!({}));
            Ok(if v["pending_restart"].as_bool() == Some(true) { Ok(()) } else { Err("no pending_restart yet".to_string()) })
        })
        .await?;
    }
    if lowers_a_replica_limit(&changes) {
        // A replica refuses to run with less of these than its primary has:
        // the primary restarts first (a short write pause), then the replicas.
        restart_member(run, &leader).await?;
        for h in run.hosts.iter().filter(|h| h.name != leader) {
            restart_member(run, &h.name).await?;
        }
        return Ok(true);
    }
    // Replicas first, one by one.
    for h in run.hosts.iter().filter(|h| h.name != leader) {
        restart_member(run, &h.name).await?;
    }
    // Then hand the leadership to a replica, then the old leader.
    let candidate = run.hosts.iter().find(|h| h.name != leader).map(|h| h.name.clone()).ok_or_else(|| anyhow!("no replica to switch over to"))?;
    switchover(run, &leader, &candidate).await?;
    let (_, body) = rest(run.session(&leader)?, port, "GET", "/patroni", None).await?;
    let still_pending = serde_json::from_str::<Value>(&body).ok().and_then(|v| v["pending_restart"].as_bool()).unwrap_or(false);
    if still_pending {
        restart_member(run, &leader).await?;
    }
    Ok(true)
}

/// The host's clock, in seconds since the epoch (nanosecond precision, like
/// the file times it is compared with).
async fn clock(session: &HostSession) -> Result<f64> {
    let out = session.sudo("date +%s.%N", None).await?;
    out.stdout.trim().parse().map_err(|e| anyhow!("{}: reading the clock ({e}): {:?}", session.name, out.stdout))
}

/// When PostgreSQL's config file was last written and when PostgreSQL last
/// loaded its configuration, in seconds since the epoch.
async fn config_times(session: &HostSession, pg_port: u64) -> Result<(f64, f64)> {
    let psql = format!("runuser -u postgres -- psql -h /var/run/postgresql -p {pg_port} -Atc");
    let out = session
        .sudo(&format!("f=$({psql} 'show config_file') && stat -c %.9Y \"$f\" && {psql} 'select extract(epoch from pg_conf_load_time())'"), None)
        .await?;
    let times: Vec<f64> = out.stdout.lines().filter_map(|l| l.trim().parse().ok()).collect();
    match times[..] {
        [written, loaded] if out.ok() => Ok((written, loaded)),
        _ => bail!("{}: reading the config file and load times: {} {}", session.name, out.stdout.trim(), out.stderr.trim()),
    }
}

/// Members that still owe a restart (an interrupted run, or a change made by
/// hand): replicas first, then the leader after a switchover.
async fn finish_pending_restarts(run: &RoleRun<'_>) -> Result<bool> {
    let pending = pending_members(run).await?;
    if pending.is_empty() {
        return Ok(false);
    }
    let port = rest_port(run.plan);
    let members = cluster(run.session(&run.hosts[0].name)?, port).await?;
    let leader = members.iter().find(|(_, (r, _))| r == "leader").map(|(n, _)| n.clone()).ok_or_else(|| anyhow!("no leader"))?;
    for name in pending.iter().filter(|n| **n != leader) {
        restart_member(run, name).await?;
    }
    if pending.contains(&leader) {
        let candidate = members.keys().find(|n| **n != leader).cloned().ok_or_else(|| anyhow!("no replica to switch over to"))?;
        switchover(run, &leader, &candidate).await?;
        restart_member(run, &leader).await?;
    }
    Ok(true)
}

async fn pending_members(run: &RoleRun<'_>) -> Result<Vec<String>> {
    let port = rest_port(run.plan);
    let mut out = Vec::new();
    for h in &run.hosts {
        let (_, body) = rest(run.session(&h.name)?, port, "GET", "/patroni", None).await?;
        if serde_json::from_str::<Value>(&body).ok().and_then(|v| v["pending_restart"].as_bool()) == Some(true) {
            out.push(h.name.clone());
        }
    }
    Ok(out)
}

async fn switchover(run: &RoleRun<'_>, leader: &str, candidate: &str) -> Result<()> {
    let port = rest_port(run.plan);
    run.events.progress("patroni parameters", format!("switchover {leader} → {candidate}"));
    let (code, body) = rest(run.session(leader)?, port, "POST", "/switchover", Some(&json!({ "leader": leader, "candidate": candidate }))).await?;
    if code != 200 {
        bail!("switchover {leader} → {candidate} answered {code}: {body}");
    }
    wait_for(&format!("{candidate} leads"), Duration::from_secs(60), || async {
        let m = cluster(run.session(candidate)?, port).await?;
        Ok(if m.get(candidate).map(|(r, _)| r.as_str()) == Some("leader") { Ok(()) } else { Err(format!("{m:?}")) })
    })
    .await?;
    // The old leader is demoted and restarted as a replica: wait until it runs again.
    wait_for(&format!("{leader} back as a replica"), Duration::from_secs(120), || async {
        let (_, body) = rest(run.session(leader)?, port, "GET", "/patroni", None).await?;
        let v: Value = serde_json::from_str(&body).unwrap_or(json!({}));
        Ok(if v["role"] == "replica" && v["state"] == "running" { Ok(()) } else { Err(format!("role {}, state {}", v["role"], v["state"])) })
    })
    .await
}

/// Settings a hot standby must have at least as high as its primary.
const REPLICA_LIMITS: &[&str] = &["max_connections", "max_worker_processes", "max_wal_senders", "max_prepared_transactions", "max_locks_per_transaction"];

fn lowers_a_replica_limit(changes: &[(String, Option<String>, String)]) -> bool {
    changes.iter().any(|(k, now, want)| {
        let (Some(now), Ok(want)) = (now.as_deref().and_then(|n| n.parse::<i64>().ok()), want.parse::<i64>()) else { return false };
        REPLICA_LIMITS.contains(&k.as_str()) && want < now
    })
}

async fn restart_member(run: &RoleRun<'_>, name: &str) -> Result<()> {
    let port = rest_port(run.plan);
    let s = run.session(name)?;
    run.events.progress(&format!("patroni {name}"), "restarting PostgreSQL (rolling)");
    // 503 while Patroni is busy (a demotion or a restart still running): ask again.
    wait_for(&format!("{name}: Patroni accepts the restart"), Duration::from_secs(90), || async {
        let (code, body) = rest(s, port, "POST", "/restart", Some(&json!({}))).await?;
        match code {
            200 => Ok(Ok(())),
            503 => Ok(Err(format!("busy: {body}"))),
            other => Err(anyhow!("{name}: POST /restart answered {other}: {body}")),
        }
    })
    .await?;
    wait_for(&format!("{name}: back and running after the restart"), Duration::from_secs(120), || async {
        let (_, body) = rest(s, port, "GET", "/patroni", None).await?;
        let v: Value = serde_json::from_str(&body).unwrap_or(json!({}));
        let state = v["state"].as_str().unwrap_or("");
        let pending = v["pending_restart"].as_bool().unwrap_or(false);
        Ok(if (state == "running" || state == "streaming") && !pending { Ok(()) } else { Err(format!("state {state:?}, pending_restart {pending}")) })
    })
    .await
}

/// The patroni role, as the registry lists it.
pub struct Patroni;

/// The plan's `roles:` value.
pub const NAME: &str = "patroni";

/// The systemd unit the role runs (what the reshape and restore stop and start).
pub const SERVICE: &str = "patroni";

/// `databases:` creates nothing itself: the roles that own a database create
/// it with its login role and password (`database::ensure`). So the list may
/// only name databases those roles make, and anything else is refused rather
/// than silently left out.
fn check_databases(at: &PlanCheck<'_>, d: &mut Diags) {
    let Some(items) = at.setting_node(NAME, "databases").and_then(|n| n.as_seq()) else { return };
    let made: Vec<(&str, &str)> = [super::app::NAME, super::saleor::NAME]
        .into_iter()
        .filter(|role| !at.with(role).is_empty())
        .filter_map(|role| at.setting(role, "database").and_then(Value::as_str).map(|db| (role, db)))
        .collect();
    for item in items {
        let Some(db) = item.as_scalar() else { continue };
        if !made.iter().any(|(_, m)| *m == db) {
            let have = if made.is_empty() { "this plan's roles create none".to_string() } else { made.iter().map(|(r, m)| format!("{m} (services.{r}.database)")).collect::<Vec<_>>().join(", ") };
            d.at(item, format!("services.patroni.databases: creating database `{db}` on its own is not supported — a database comes with the role that uses it: set services.app.database or services.saleor.database (made here: {have}), or remove it from the list"));
        }
    }
}

/// The settings under `services: patroni:` — each default is written here only.
static SETTINGS: &[Setting] = &[
    Setting::new("scope", SettingType::Name, |p| json!(p), "cluster name in the DCS"),
    Setting::new("postgres_version", SettingType::Int { min: 12, max: 17 }, |_| json!(15), "PostgreSQL major version"),
    Setting::new("synchronous_mode", SettingType::Bool, |_| json!(false), "synchronous replication"),
    Setting::new("rto", SettingType::Str, |_| json!(crate::plan::rto::DEFAULT), "failover preset: fast | normal | safe (sets ttl, loop_wait, retry_timeout and HAProxy's checks)"),
    Setting::new("ttl", SettingType::Int { min: 10, max: 3600 }, |_| json!(30), "leader key TTL, s"),
    Setting::new("loop_wait", SettingType::Int { min: 1, max: 3600 }, |_| json!(10), "s"),
    Setting::new("retry_timeout", SettingType::Int { min: 1, max: 3600 }, |_| json!(10), "s"),
    Setting::new("maximum_lag_on_failover", SettingType::Int { min: 0, max: i64::MAX }, |_| json!(1048576), "bytes"),
    Setting::new("port", PORT, |_| json!(5432), "PostgreSQL port"),
    Setting::new("rest_port", PORT, |_| json!(8008), "Patroni REST port"),
    Setting::new("parameters", SettingType::Map, |_| json!({}), "PostgreSQL parameters"),
    Setting::new("databases", SettingType::List, |_| json!([]), "the databases the app and saleor roles create (services.app.database, services.saleor.database); only those may be listed"),
];

/// The secrets the role needs (generated once, kept in the state).
const SECRETS: &[&str] = &["postgres_superuser_password", "replication_password", "rewind_password", "patroni_rest_password"];

#[async_trait::async_trait]
impl super::role::Role for Patroni {
    fn name(&self) -> &'static str {
        NAME
    }

    fn check(&self, at: &PlanCheck<'_>, d: &mut Diags) {
        if !at.with(NAME).is_empty() && at.with(super::etcd::NAME).is_empty() {
            d.error(at.role_pos(NAME), "patroni keeps its leader lock in etcd — add hosts with the role `etcd` (3 of them)");
        }
        check_databases(at, d);
    }

    fn outputs(&self, at: &Outputs<'_>, o: &mut Map<String, Value>) {
        let pg = at.ips(NAME);
        if !pg.is_empty() {
            o.insert("patroni_rest".into(), json!(pg.iter().map(|ip| format!("{}://{ip}:{}/", super::tls::scheme(at.plan), at.setting(NAME, "rest_port"))).collect::<Vec<_>>()));
            o.insert("postgres_superuser".into(), json!("postgres"));
            o.insert("postgres_superuser_password".into(), at.secret("postgres_superuser_password"));
        }
    }

    fn inventory_vars(&self) -> &'static [(&'static str, &'static str)] {
        &[("postgres_port", "port"), ("patroni_rest_port", "rest_port"), ("patroni_scope", "scope")]
    }

    fn flows(&self, net: &mut FlowSink<'_>) {
        // HAProxy relays every client session and health-checks Patroni's REST API.
        net.tcp(super::haproxy::NAME, NAME, "port", Service::Postgres);
        net.tcp(super::haproxy::NAME, NAME, "rest_port", Service::PatroniRest);
        // Members: replication, pg_rewind (an SQL session), and each other's REST API in a leader race.
        net.tcp(NAME, NAME, "port", Service::Replication);
        net.tcp(NAME, NAME, "port", Service::Postgres);
        net.tcp(NAME, NAME, "rest_port", Service::PatroniRest);
    }

    fn listens(&self, _plan: &Plan) -> Vec<(&'static str, &'static str)> {
        vec![(NAME, "port"), (NAME, "rest_port")]
    }

    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }

    fn secrets(&self) -> &'static [&'static str] {
        SECRETS
    }

    fn needs(&self) -> &'static [&'static str] {
        &[super::etcd::NAME]
    }
    fn services(&self) -> &'static [&'static str] {
        &[SERVICE]
    }
    fn desired(&self, at: &super::role::HostInput<'_>) -> anyhow::Result<crate::hosts::ops::HostDesired> {
        use anyhow::Context;
        let mut d = desired(at.renderer, at.ctx, at.plan)?;
        // A member of a plan with a backup host archives into it.
        let member = super::backup::member_desired(at.renderer, at.ctx, at.plan).context("pgBackRest on a Patroni member")?;
        d.packages.extend(member.packages);
        d.files.extend(member.files);
        d.files.push(super::rest_auth::curlrc(at.secrets)?);
        Ok(d)
    }
    fn gate_asks(&self, plan: &crate::plan::model::Plan, host: &crate::plan::model::Host, secrets: &std::collections::BTreeMap<String, String>) -> Vec<crate::hosts::remote::ahead::Ask> {
        let _ = secrets;
        gate_asks(plan, host)
    }
    /// The DCS config and the member's state, for the parameter changes and pending restarts.
    fn probes(&self, plan: &crate::plan::model::Plan) -> Vec<(String, String)> {
        probes(plan)
    }
    /// The DCS settings to PATCH (failover timing and PostgreSQL parameters,
    /// read from the first member that answered) and the members whose
    /// PostgreSQL owes a restart.
    /// A member whose Patroni runs but whose REST API did not answer leaves
    /// the plan unable to say what it owes: that is said (`unread`), not
    /// shown as "no change".
    fn cluster_changes(&self, plan: &Plan, facts: &std::collections::BTreeMap<&str, &crate::hosts::facts::HostFacts>) -> super::role::ClusterChanges {
        let probe = |f: &crate::hosts::facts::HostFacts, name: &str| f.probes.get(name).and_then(|c| answered_ok(c)).map(str::to_string);
        let parameters = facts
            .values()
            .find_map(|f| probe(f, "patroni_config"))
            .map(|c| [crate::plan::rto::dcs_changes(plan, &c), parameter_changes(plan, &c)].concat());
        let pending_restarts = facts.iter().filter(|(_, f)| probe(f, "patroni_state").is_some_and(|s| restart_pending(&s))).map(|(n, _)| n.to_string()).collect();
        let runs = |f: &crate::hosts::facts::HostFacts| f.services.get(SERVICE).is_some_and(crate::hosts::facts::ServiceFact::running);
        let running: Vec<&str> = facts.iter().filter(|(_, f)| runs(f)).map(|(n, _)| *n).collect();
        let mut unread = Vec::new();
        if parameters.is_none() && !running.is_empty() {
            unread.push(format!("Patroni's DCS settings: no member answered GET /config (Patroni runs on {})", running.join(", ")));
        }
        let silent: Vec<&str> = facts.iter().filter(|(_, f)| runs(f) && probe(f, "patroni_state").is_none()).map(|(n, _)| *n).collect();
        if !silent.is_empty() {
            unread.push(format!("whether PostgreSQL owes a restart on {}: GET /patroni did not answer", silent.join(", ")));
        }
        super::role::ClusterChanges { parameters: parameters.unwrap_or_default(), pending_restarts, unread }
    }
    async fn converge(&self, run: &RoleRun<'_>) -> anyhow::Result<()> {
        converge(run).await
    }
}
