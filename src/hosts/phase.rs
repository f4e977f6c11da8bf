//! The config phase: connect to every host, gather facts (one round trip per
//! host), compute what differs from the roles' wishes, then walk the roles'
//! needs graph (dag.rs): stage each role (install, upload what changed,
//! checked by the daemon first) and bring it up to its health gate once the
//! roles it needs are healthy. A no-change run uploads nothing and restarts
//! nothing.

use super::facts::{self, HostFacts};
use super::ops::{self, HostChanges, HostDesired};
use super::run::RoleRun;
use crate::cloud::engine::Shared;
use rigger_events::Events;
use crate::plan::model::{Host, Plan};
use crate::project::Project;
use crate::hosts::remote::session::{HostSession, INSTALL_LIMIT};
use crate::render::Renderer;
use crate::hosts::roles;
use crate::state::State;
use anyhow::{anyhow, bail, Result};
use futures::stream::{self, StreamExt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Mutex;

/// One host's part of the config plan.
pub struct HostPlan {
    pub desired: HostDesired,
    pub facts: HostFacts,
    pub changes: HostChanges,
    /// Old content of changed files (only gathered for showing a plan).
    pub old_content: BTreeMap<String, String>,
}

pub struct ConfigPlan {
    pub hosts: BTreeMap<String, HostPlan>,
    /// Hosts of the plan whose machines do not exist yet.
    pub not_built: Vec<String>,
    /// PostgreSQL parameters to change in the DCS: (name, now, wanted).
    pub parameter_changes: Vec<(String, Option<String>, String)>,
    /// Patroni members whose PostgreSQL still owes a restart.
    pub pending_restarts: Vec<String>,
    /// What the probes could not read although the daemon runs (roles'
    /// ClusterChanges::unread): apply reads it again live.
    pub unread: Vec<String>,
    pub sessions: BTreeMap<String, HostSession>,
    /// When the facts (and the answers asked ahead) were gathered.
    pub gathered: Instant,
    /// `apply --target`: the only hosts that change (None: every host).
    /// The others keep their sessions and facts, so the targets' roles
    /// still see the whole stack and their gates still reach it.
    pub scope: Option<BTreeSet<String>>,
}

impl ConfigPlan {
    pub fn is_empty(&self) -> bool {
        self.hosts.values().all(|h| h.changes.is_empty()) && self.parameter_changes.is_empty() && self.pending_restarts.is_empty() && self.unread.is_empty() && self.not_built.is_empty()
    }

    /// Limit the changes to `targets` (`apply --target`; none: every host).
    /// Other hosts change nothing, and a host not built yet is only missing
    /// if it is a target. Cluster-wide settings (Patroni's DCS parameters)
    /// stay in the plan only when a target runs that cluster.
    pub fn limit_to(&mut self, plan: &Plan, targets: &[String]) {
        if targets.is_empty() {
            return;
        }
        let scope: BTreeSet<String> = targets.iter().cloned().collect();
        for (name, hp) in self.hosts.iter_mut().filter(|(n, _)| !scope.contains(*n)) {
            tracing::debug!(host = name.as_str(), "out of --target: no changes");
            hp.changes = HostChanges::default();
        }
        self.not_built.retain(|h| scope.contains(h));
        self.pending_restarts.retain(|h| scope.contains(h));
        if !plan.hosts_with_role(roles::patroni::NAME).any(|h| scope.contains(&h.name)) {
            self.parameter_changes.clear();
            self.unread.clear();
        }
        self.scope = Some(scope);
    }

    /// Whether `host` may change in this run.
    pub fn in_scope(&self, host: &str) -> bool {
        self.scope.as_ref().is_none_or(|s| s.contains(host))
    }

    /// Close every host's SSH master at once (one after another they cost
    /// an `ssh -O exit` each at the end of every run).
    pub async fn close(self) {
        futures::future::join_all(self.sessions.into_values().map(HostSession::close)).await;
    }
}

#[cfg(test)]
impl ConfigPlan {
    /// A plan of these hosts with no cluster-wide change and no session (tests).
    pub fn of_hosts(hosts: BTreeMap<String, HostPlan>, not_built: Vec<String>) -> ConfigPlan {
        ConfigPlan { hosts, not_built, parameter_changes: vec![], pending_restarts: vec![], unread: vec![], sessions: BTreeMap::new(), gathered: Instant::now(), scope: None }
    }
}

/// Hosts that have at least one role rigger configures.
fn configured_hosts(plan: &Plan) -> Vec<&Host> {
    plan.hosts.iter().filter(|h| roles::registry::all().any(|r| r.applies_to(h))).collect()
}

fn pending(state: &State, host: &str) -> BTreeSet<String> {
    pending_in(state.hosts.get(host))
}

/// The services a host's state entry says still owe a restart.
fn pending_in(host_entry: Option<&Value>) -> BTreeSet<String> {
    host_entry.and_then(|h| h.get("pending")).and_then(Value::as_array).into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect()
}

/// What a facts round trip gathers besides the facts.
#[derive(Debug, Clone, Copy)]
pub struct Gather {
    /// The current content of files that will change (a plan shows the diff).
    pub old_content: bool,
    /// The health gates' commands, asked ahead: only an apply runs gates, and
    /// they are most of a no-change round trip's cost (client logins).
    pub gates_ahead: bool,
}

impl Gather {
    /// `rigger plan`: diffs, no gates.
    pub const PLAN: Gather = Gather { old_content: true, gates_ahead: false };
    /// An apply's preview before the cloud step: diffs, and the gates ahead
    /// for when nothing changes.
    pub const APPLY_PREVIEW: Gather = Gather { old_content: true, gates_ahead: true };
    /// An apply's look at the hosts it is about to configure.
    pub const APPLY: Gather = Gather { old_content: false, gates_ahead: true };
}

/// Connect, gather facts and compute every host's changes.
pub async fn prepare(project: &Project, state: &State, parallelism: usize, gather: Gather, events: &Events) -> Result<ConfigPlan> {
    let config = crate::hosts::remote::ssh_config_path(project);
    let connect = |name: String| {
        let config = config.clone();
        async move { HostSession::connect(&config, &name).await }
    };
    prepare_with(project, state, parallelism, gather, events, connect).await
}

/// `prepare`, with the sessions opened by `connect` (tests hand in scripted hosts).
pub async fn prepare_with<C, CF>(project: &Project, state: &State, parallelism: usize, gather: Gather, events: &Events, connect: C) -> Result<ConfigPlan>
where
    C: Fn(String) -> CF,
    CF: std::future::Future<Output = Result<HostSession>>,
{
    let plan = &project.plan;
    let renderer = Renderer::new()?;
    let built: BTreeSet<&str> = state.machines().map(|m| m.address.name.as_str()).collect();
    let hosts = configured_hosts(plan);
    let not_built: Vec<String> = hosts.iter().filter(|h| !built.contains(h.name.as_str())).map(|h| h.name.clone()).collect();
    let hosts: Vec<&Host> = hosts.into_iter().filter(|h| built.contains(h.name.as_str())).collect();

    // Render first: a template error needs no network to be found.
    let mut desired: BTreeMap<String, HostDesired> = BTreeMap::new();
    for h in &hosts {
        desired.insert(h.name.clone(), roles::desired(plan, h, &state.secrets, &renderer)?);
    }

    let started = Instant::now();
    events.started("facts", &format!("connecting to {} hosts", hosts.len()));
    let connect = &connect;
    let results: Vec<Result<(String, HostSession, HostFacts)>> = stream::iter(hosts.iter().map(|h| {
        let d = &desired[&h.name];
        let probes = roles::probes(plan, h);
        // A host rigger configured before and owes nothing is likely to need
        // no change: its gates' commands ride along (a first build skips them,
        // its daemons are not up yet).
        let asks = if gather.gates_ahead && configured_before(state, &h.name) { roles::gate_asks(plan, h, &state.secrets) } else { vec![] };
        async move {
            let session = connect(h.name.clone()).await?;
            let mut query = d.query(probes);
            query.asks = asks;
            let f = facts::gather(&session, &query).await?;
            Ok((h.name.clone(), session, f))
        }
    }))
    .buffer_unordered(parallelism.max(1))
    .collect()
    .await;
    let mut sessions = BTreeMap::new();
    let mut all_facts = BTreeMap::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok((name, s, f)) => {
                sessions.insert(name.clone(), s);
                all_facts.insert(name, f);
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        for (_, s) in sessions {
            s.close().await;
        }
        events.failed("facts", "gathering facts", &errors.join("; "));
        bail!("cannot reach every host:\n  {}", errors.join("\n  "));
    }
    events.finished("facts", "facts gathered", started);

    let mut host_plans = BTreeMap::new();
    for (name, d) in desired {
        let f = all_facts.remove(&name).unwrap_or_default();
        let changes = ops::compute(&d, &f, &pending(state, &name));
        let mut old_content = BTreeMap::new();
        if gather.old_content {
            for fc in changes.files.iter().filter(|c| c.content_changed) {
                if let Ok(out) = sessions[&name].sudo(&format!("cat {} 2>/dev/null", crate::hosts::remote::session::sh_quote(&fc.file.path)), None).await {
                    old_content.insert(fc.file.path.clone(), out.stdout);
                }
            }
        }
        host_plans.insert(name, HostPlan { desired: d, facts: f, changes, old_content });
    }
    // What the roles' clusters owe beyond files (Patroni's DCS settings and pending restarts).
    let facts: BTreeMap<&str, &HostFacts> = host_plans.iter().map(|(n, hp)| (n.as_str(), &hp.facts)).collect();
    let (mut parameter_changes, mut pending_restarts, mut unread) = (Vec::new(), Vec::new(), Vec::new());
    for role in roles::registry::all() {
        let owed = role.cluster_changes(plan, &facts);
        parameter_changes.extend(owed.parameters);
        pending_restarts.extend(owed.pending_restarts);
        unread.extend(owed.unread);
    }
    Ok(ConfigPlan { hosts: host_plans, not_built, parameter_changes, pending_restarts, unread, sessions, gathered: started, scope: None })
}

/// Rigger finished configuring this host before and it owes no restart.
fn configured_before(state: &State, host: &str) -> bool {
    state.hosts.get(host).and_then(|h| h.get("pending")).and_then(Value::as_array).is_some_and(|p| p.is_empty())
}

/// Carry the config plan out, role by role.
pub async fn apply(project: &Project, cp: &ConfigPlan, shared: &Arc<Mutex<Shared>>, events: &Events) -> Result<()> {
    let plan = &project.plan;
    if !cp.not_built.is_empty() {
        bail!("these hosts have no machine yet: {} — run apply without --target, or build them first", cp.not_built.join(", "));
    }
    let secrets = shared.lock().await.state.secrets.clone();
    let facts: BTreeMap<String, HostFacts> = cp.hosts.iter().map(|(n, hp)| (n.clone(), hp.facts.clone())).collect();
    let present: BTreeSet<&str> = plan.roles();
    let mut roles: Vec<&'static str> = roles::registry::NAMES.iter().copied().filter(|r| present.contains(r)).collect();
    roles.insert(0, roles::registry::FIREWALL.name());
    let installs: BTreeMap<String, Install> = cp.hosts.keys().map(|n| (n.clone(), Install::new())).collect();
    let ctx = RoleContext { project, cp, shared, events, secrets: &secrets, facts: &facts, installs: &installs };
    if cp.is_empty() {
        // Nothing will change: the gates may read the answers asked ahead in
        // the facts round trip, while fresh (a command that failed, or a gate
        // whose first answer is not healthy, asks live).
        if cp.gathered.elapsed() < crate::hosts::remote::ahead::FRESH {
            for (name, hp) in &cp.hosts {
                cp.sessions[name].answer_ahead(hp.facts.answers.iter().filter(|(_, out)| out.ok()).cloned().collect());
            }
        }
        // Nothing to change anywhere: no role waits for another, so every
        // role's health gate runs at once (a no-change apply near the SSH floor).
        let results = futures::future::join_all(roles.iter().map(|role| async { bring_up_role(&ctx, stage_role(&ctx, role).await?).await })).await;
        let errors: Vec<String> = results.into_iter().filter_map(|r| r.err().map(|e| format!("{e:#}"))).collect();
        if !errors.is_empty() {
            bail!("{}", errors.join("\n"));
        }
    } else {
        // Roles walk their needs graph: independent roles together, staging early.
        super::dag::apply_roles(&roles, events, |role| stage_role(&ctx, role), |staged| bring_up_role(&ctx, staged)).await?;
    }
    Ok(())
}

/// Every configured host now runs exactly the plan's roles (the config phase
/// and the drain of the roles they lost succeeded): remember them, so a role
/// the plan later takes away is drained (reshape::drain::retiring).
pub async fn record_applied_roles(plan: &Plan, cp: &ConfigPlan, shared: &Arc<Mutex<Shared>>) -> Result<()> {
    let mut sh = shared.lock().await;
    let mut changed = false;
    for name in cp.hosts.keys().filter(|n| cp.in_scope(n)) {
        if let Some(h) = plan.host(name) {
            let roles: Vec<String> = h.roles.iter().filter(|r| roles::registry::is_role(r)).cloned().collect();
            changed |= crate::state::record_roles(&mut sh.state, name, &roles);
        }
    }
    if changed {
        sh.commit()?;
    }
    Ok(())
}

/// What every role's bring-up shares.
pub(super) struct RoleContext<'a> {
    project: &'a Project,
    cp: &'a ConfigPlan,
    shared: &'a Arc<Mutex<Shared>>,
    events: &'a Events,
    secrets: &'a BTreeMap<String, String>,
    facts: &'a BTreeMap<String, HostFacts>,
    /// Each host's missing packages, installed once for all of its roles.
    installs: &'a BTreeMap<String, Install>,
}

/// The one install of a host's missing packages (its outcome, shared).
type Install = tokio::sync::OnceCell<std::result::Result<(), String>>;

/// A role whose files are in place: what its bring-up starts from.
pub(super) struct StagedRole<'a> {
    role: &'static str,
    started: Instant,
    changes: BTreeMap<String, HostChanges>,
    ok_hosts: Vec<&'a Host>,
    /// Hosts whose config was rejected (their service is left untouched).
    rejected: Vec<String>,
}

/// Stage one role on all of its hosts at once: packages, services to retire,
/// files. Needs nothing else to be up, so it may run before the role's needs.
pub(super) async fn stage_role<'a>(ctx: &RoleContext<'a>, role: &'static str) -> Result<StagedRole<'a>> {
    let RoleContext { project, cp, shared, events, .. } = *ctx;
    let plan = &project.plan;
    let role_hosts: Vec<&Host> = roles::hosts_for(plan, role).into_iter().filter(|h| cp.hosts.contains_key(&h.name) && cp.in_scope(&h.name)).collect();
    let subject = format!("role {role}");
    let started = Instant::now();
    events.started(&subject, &format!("{} host(s)", role_hosts.len()));
    let changes: BTreeMap<String, HostChanges> = role_hosts.iter().map(|h| (h.name.clone(), cp.hosts[&h.name].changes.for_role(&cp.hosts[&h.name].desired, role))).collect();

    // Stage 1: packages, services to retire, files — every host at once.
    let staged = futures::future::join_all(role_hosts.iter().map(|h| {
        let ch = &changes[&h.name];
        let session = &cp.sessions[&h.name];
        let install = (&cp.hosts[&h.name].changes.install, &ctx.installs[&h.name]);
        async move { (h.name.clone(), stage(session, ch, install, events).await) }
    }))
    .await;
    let mut rejected = Vec::new();
    let mut ok_hosts = Vec::new();
    for (name, result) in staged {
        match result {
            Ok(touched) => {
                if !touched.is_empty() {
                    mark_pending(shared, &name, &touched, true).await?;
                }
                ok_hosts.push(*role_hosts.iter().find(|h| h.name == name).expect("host of the role"));
            }
            Err(e) => rejected.push(format!("{e:#}")),
        }
    }

    // Work a role does before its start that needs no other role (e.g. the app's virtualenv).
    if !ok_hosts.is_empty() {
        let run = RoleRun { role, plan, secrets: ctx.secrets, hosts: ok_hosts.clone(), sessions: &cp.sessions, changes: changes.clone(), facts: ctx.facts, events };
        prepare_role(role, &run).await.map_err(|e| {
            events.failed(&format!("role {role}"), "preparing", &format!("{e:#}"));
            anyhow!("role {role}: {e:#}")
        })?;
    }
    Ok(StagedRole { role, started, changes, ok_hosts, rejected })
}

async fn prepare_role(role: &str, run: &RoleRun<'_>) -> Result<()> {
    roles::registry::runnable(role).ok_or_else(|| anyhow!("role {role} is in no registry"))?.prepare(run).await
}

/// Bring a staged role up to its gate on the hosts whose files are in place.
pub(super) async fn bring_up_role(ctx: &RoleContext<'_>, staged: StagedRole<'_>) -> Result<()> {
    let RoleContext { project, cp, shared, events, secrets, facts, .. } = *ctx;
    let plan = &project.plan;
    let StagedRole { role, started, changes, ok_hosts, rejected } = staged;
    let subject = format!("role {role}");
    let run = RoleRun { role, plan, secrets, hosts: ok_hosts.clone(), sessions: &cp.sessions, changes: changes.clone(), facts, events };
    let converged = if ok_hosts.is_empty() { Ok(()) } else { converge(role, &run).await };
    if converged.is_ok() {
        for h in &ok_hosts {
            let services: BTreeSet<String> = cp.hosts[&h.name].desired.services.iter().filter(|s| s.role == role).map(|s| s.name.clone()).collect();
            mark_pending(shared, &h.name, &services, false).await?;
        }
    }
    match (converged, rejected.is_empty()) {
        (Ok(()), true) => events.finished(&subject, "healthy", started),
        (Ok(()), false) => {
            events.failed(&subject, "config", &rejected.join("; "));
            bail!("role {role}: {}", rejected.join("\n"));
        }
        (Err(e), _) => {
            events.failed(&subject, "bring-up", &format!("{e:#}"));
            let mut all = rejected;
            all.push(format!("{e:#}"));
            bail!("role {role}: {}", all.join("\n"));
        }
    }
    Ok(())
}

async fn converge(role: &str, run: &RoleRun<'_>) -> Result<()> {
    roles::registry::runnable(role).ok_or_else(|| anyhow!("role {role} has no bring-up"))?.converge(run).await
}

/// Install, retire, upload. Returns the services whose files changed.
/// Every role staged on a host waits for the one install of the host's
/// missing packages (`install`): the roles stage at once, and a role's
/// checked upload (`keepalived -t`) needs its package in place.
async fn stage(session: &HostSession, ch: &HostChanges, (packages, once): (&Vec<String>, &Install), events: &Events) -> Result<BTreeSet<String>> {
    let subject = format!("host {}", session.name);
    if !packages.is_empty() {
        let installed = once
            .get_or_init(|| async {
                events.progress(&subject, format!("installing {}", packages.join(" ")));
                let script = format!("DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y {} 2>&1", packages.join(" "));
                session.within(INSTALL_LIMIT).sudo_ok("installing packages", &script).await.map(|_| ()).map_err(|e| format!("{e:#}"))
            })
            .await;
        installed.clone().map_err(|e| anyhow!(e))?;
    }
    for s in &ch.stop_disable {
        session.sudo_ok(&format!("stopping {s}"), &format!("systemctl disable --now {s} 2>&1")).await?;
    }
    let mut touched = BTreeSet::new();
    if !ch.files.is_empty() {
        let paths: Vec<&str> = ch.files.iter().map(|fc| fc.file.path.as_str()).collect();
        events.progress(&subject, format!("writing {}", paths.join(", ")));
        let files: Vec<&ops::ManagedFile> = ch.files.iter().map(|fc| &fc.file).collect();
        ops::upload_all(session, &files).await?;
    }
    for fc in ch.files.iter().filter(|fc| fc.content_changed) {
        touched.extend(fc.file.notify.iter().cloned());
    }
    // Enabling at boot starts nothing, so it needs no other role up: done
    // here, off the bring-up's critical path (`systemctl enable` reloads
    // systemd and runs the SysV helper: a second or two on a busy host).
    // That reload also makes systemd know the role's new units before any of
    // its services starts (roles never reload systemd themselves), so a
    // separate daemon-reload is only needed when nothing is enabled.
    if !ch.enable.is_empty() {
        events.progress(&subject, format!("enabling {} at boot", ch.enable.join(" ")));
        let units: Vec<String> = ch.enable.iter().map(|u| crate::hosts::remote::session::sh_quote(u)).collect();
        session.sudo_ok(&format!("enabling {}", ch.enable.join(" ")), &format!("systemctl enable {} 2>&1", units.join(" "))).await?;
    } else if ch.needs_daemon_reload() {
        session.sudo_ok("reloading systemd's units", "systemctl daemon-reload").await?;
    }
    Ok(touched)
}

/// Remember (or forget) that a host's services still owe a restart, so an
/// interrupted run restarts them next time even though the files now match.
async fn mark_pending(shared: &Arc<Mutex<Shared>>, host: &str, services: &BTreeSet<String>, add: bool) -> Result<()> {
    let mut sh = shared.lock().await;
    let entry = sh.state.hosts.entry(host.to_string()).or_insert_with(|| json!({}));
    let mut now = pending_in(Some(entry));
    let before = now.clone();
    if add {
        now.extend(services.iter().cloned());
    } else {
        now.retain(|s| !services.contains(s));
    }
    if now == before {
        return Ok(());
    }
    entry["pending"] = json!(now);
    sh.commit()
}
