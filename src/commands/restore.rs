//! `rigger restore`: the whole Patroni cluster back to a point in time (or
//! the latest archived state, or the end of one backup) from the pgBackRest
//! repository, the way Patroni documents it: stop Patroni everywhere, remove
//! the cluster's keys from the DCS, restore one member's data directory and
//! let it recover and promote, start Patroni there (it takes the empty DCS
//! over with its data), rebuild every other member from the repository
//! (Patroni's create_replica_methods: pgbackrest first), and end at the same
//! health gates as `apply`.
//!
//! Nothing is touched until the plan is shown and confirmed; a target the
//! repository cannot reach (before the oldest backup, in the future, an
//! unknown label) is refused before that.

use crate::cli::RestoreCmd;
use crate::hosts::phase;
use crate::cloud::engine::Shared;
use rigger_events::Events;
use crate::plan::model::Plan;
use crate::project::Project;
use crate::hosts::remote::session::{sh_quote, HostSession};
use crate::hosts::roles::rest_auth::local_curl;
use crate::hosts::roles::{backup, patroni, pgbackrest};
use crate::ui::printer::Printer;
use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use crate::hosts::roles::etcd;

#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Time(DateTime<Utc>),
    Latest,
    Backup(String),
}

impl Target {
    fn describe(&self) -> String {
        match self {
            Target::Time(t) => format!("the state at {}", t.format("%Y-%m-%d %H:%M:%S%.3f UTC")),
            Target::Latest => "the latest state the WAL archive holds".into(),
            Target::Backup(l) => format!("the end of backup {l}"),
        }
    }
}

/// `--to` accepts RFC 3339 or `YYYY-MM-DD HH:MM:SS[.fff][+zz[:zz]]`; no zone means UTC.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>> {
    let t = text.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Ok(d.with_timezone(&Utc));
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(d) = DateTime::parse_from_str(t, f) {
            return Ok(d.with_timezone(&Utc));
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M"] {
        if let Ok(d) = NaiveDateTime::parse_from_str(t, f) {
            return Ok(d.and_utc());
        }
    }
    bail!("--to {text:?} is not a time — write e.g. \"2026-11-28 20:15:00+00\" or 2026-11-28T20:15:00Z (no zone: UTC)")
}

/// The backup a target restores from, or why the repository cannot reach it.
pub fn choose_backup<'a>(info: &'a pgbackrest::StanzaInfo, target: &Target, now: DateTime<Utc>) -> Result<&'a pgbackrest::Backup> {
    let oldest = info.oldest().ok_or_else(|| anyhow!("the repository has no backup of {} yet — take one with `rigger backup`; nothing was changed", info.stanza))?;
    match target {
        Target::Latest => Ok(info.newest().expect("a backup exists")),
        Target::Backup(label) => info.backups.iter().find(|b| &b.label == label).ok_or_else(|| {
            anyhow!(
                "the repository has no backup {label} — `rigger backups` lists them ({}); nothing was changed",
                info.backups.iter().map(|b| b.label.as_str()).collect::<Vec<_>>().join(", ")
            )
        }),
        Target::Time(t) => {
            if *t > now {
                bail!("--to {} is in the future (now is {}) — nothing was changed", t.format("%Y-%m-%d %H:%M:%S UTC"), now.format("%Y-%m-%d %H:%M:%S UTC"));
            }
            let ts = t.timestamp();
            if ts < oldest.stop {
                bail!(
                    "--to {} is before the oldest backup ({}, consistent from {} UTC) — the repository cannot go back that far; pick a later time (`rigger backups` shows them); nothing was changed",
                    t.format("%Y-%m-%d %H:%M:%S UTC"),
                    oldest.label,
                    super::backup::utc(oldest.stop)
                );
            }
            Ok(info.backups.iter().filter(|b| b.stop <= ts).max_by_key(|b| b.stop).expect("the oldest backup qualifies"))
        }
    }
}

/// What a finished restore measured.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub backup: pgbackrest::Backup,
    pub leader: String,
    /// Replica → rebuilt from the repository (pgBackRest), not by pg_basebackup.
    pub replicas: BTreeMap<String, bool>,
    /// pgBackRest restore of the leader's data directory.
    pub restore_secs: f64,
    /// WAL replay up to the target and promotion.
    pub recovery_secs: f64,
    /// From stopping Patroni until the leader accepts writes.
    pub writable_secs: f64,
    /// From stopping Patroni until every gate of apply passes.
    pub total_secs: f64,
    /// The restored data directory, bytes.
    pub data_bytes: u64,
    /// When Patroni was stopped: the clock of the restore's RTO.
    pub started: Instant,
}

pub async fn run(args: &RestoreCmd, state_override: Option<&Path>, verbose: bool) -> Result<i32> {
    let target = match (&args.to, args.latest, &args.backup) {
        (Some(t), _, _) => Target::Time(parse_time(t)?),
        (_, true, _) => Target::Latest,
        (_, _, Some(l)) => Target::Backup(l.clone()),
        _ => bail!("say what to restore to: --to TIME, --latest or --backup LABEL"),
    };
    let project = Project::load(&args.plan, state_override)?;
    match restore(&project, &target, args.auto_approve, verbose).await? {
        None => Ok(1),
        Some(r) => {
            print_report(&r);
            Ok(0)
        }
    }
}

pub fn print_report(r: &RestoreReport) {
    println!("\nRestore complete: {} leads, restored from {} ({}).", r.leader, r.backup.label, r.backup.kind);
    for (name, from_repo) in &r.replicas {
        println!("  {name}: {}, streaming", if *from_repo { "rebuilt from the repository (pgBackRest)" } else { "rebuilt by pg_basebackup from the leader" });
    }
    println!(
        "  pgBackRest restore {:.1}s ({} at {}/s), WAL replay and promotion {:.1}s; writes again after {:.1}s, every gate passed after {:.1}s",
        r.restore_secs,
        super::backup::human_size(r.data_bytes),
        super::backup::human_size((r.data_bytes as f64 / r.restore_secs.max(0.001)) as u64),
        r.recovery_secs,
        r.writable_secs,
        r.total_secs
    );
}

/// Plan, ask, restore. `None`: the user said no (nothing was changed).
pub async fn restore(project: &Project, target: &Target, auto_approve: bool, verbose: bool) -> Result<Option<RestoreReport>> {
    let plan = &project.plan;
    let repo = backup::require_repo(plan)?.name.clone();
    let provider = project.provider()?;
    let super::LoadedState { store, state, .. } = super::load_state(project, provider.kind(), "rigger restore")?;
    if state.serial == 0 {
        bail!("nothing was applied for project {} yet — run `rigger apply` first", plan.project);
    }
    let with_addresses = project.with_cloud_addresses(&state);
    let project = &with_addresses;
    let (events, printer) = Printer::start(verbose);
    let prepared = phase::prepare(project, &state, 15, phase::Gather::APPLY, &events).await;
    drop(events);
    printer.finish().await;
    let cp = prepared?;
    let drift: Vec<String> = cp.hosts.iter().filter(|(_, h)| !h.changes.files.is_empty() || !h.changes.install.is_empty()).map(|(n, _)| n.clone()).collect();
    if !drift.is_empty() {
        cp.close().await;
        bail!("the hosts {drift:?} differ from the plan — run `rigger apply` first (a restore ends at apply's gates and changes no config on the way); nothing was changed");
    }
    let result = plan_and_restore(project, &cp, &repo, target, auto_approve, verbose).await;
    cp.close().await;
    let Some(mut report) = result? else { return Ok(None) };

    // The same gates as apply, on fresh facts.
    let shared = Arc::new(Mutex::new(Shared::new(store, state, Arc::new(project.clone()))));
    let (events, printer) = Printer::start(verbose);
    let state_now = shared.lock().await.state.clone();
    let gates = async {
        let cp = phase::prepare(project, &state_now, 15, phase::Gather::APPLY, &events).await?;
        let r = phase::apply(project, &cp, &shared, &events).await;
        cp.close().await;
        r
    }
    .await;
    drop(events);
    printer.finish().await;
    gates.context("the restored cluster does not pass apply's gates")?;
    report.total_secs = report.started.elapsed().as_secs_f64();
    Ok(Some(report))
}

async fn cluster_leader(plan: &Plan, sessions: &BTreeMap<String, HostSession>) -> Option<String> {
    let port = plan.int_setting(patroni::NAME, "rest_port");
    for h in plan.hosts_with_role(patroni::NAME) {
        let Some(s) = sessions.get(&h.name) else { continue };
        let Ok(out) = s.sudo(&local_curl(port, "-m 3", "/cluster"), None).await else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&out.stdout) else { continue };
        if let Some(l) = v["members"].as_array().into_iter().flatten().find(|m| m["role"] == "leader").and_then(|m| m["name"].as_str()) {
            return Some(l.to_string());
        }
    }
    None
}

fn psql(sql: &str) -> String {
    format!("cd /tmp && runuser -u postgres -- psql -h /var/run/postgresql -XAtqc {}", sh_quote(sql))
}

#[allow(clippy::too_many_arguments)]
async fn plan_and_restore(project: &Project, cp: &phase::ConfigPlan, repo: &str, target: &Target, auto_approve: bool, verbose: bool) -> Result<Option<RestoreReport>> {
    let plan = &project.plan;
    let stanza = backup::stanza(plan);
    let session = |name: &str| cp.sessions.get(name).ok_or_else(|| anyhow!("{name}: not reachable over SSH"));
    let rs = session(repo)?;
    let info = pgbackrest::info(rs, &stanza).await?;
    let chosen = choose_backup(&info, target, Utc::now())?.clone();
    let members: Vec<String> = plan.hosts_with_role(patroni::NAME).map(|h| h.name.clone()).collect();
    for m in &members {
        session(m)?;
    }
    let old_leader = cluster_leader(plan, &cp.sessions).await;
    let leader = old_leader.clone().unwrap_or_else(|| members[0].clone());
    let replicas: Vec<String> = members.iter().filter(|m| **m != leader).cloned().collect();

    println!("Restore of the Patroni cluster {stanza} to {}:", target.describe());
    println!("  from backup  {} ({}, consistent from {} UTC, database {})", chosen.label, chosen.kind, super::backup::utc(chosen.stop), super::backup::human_size(chosen.size));
    println!("  stopped      Patroni and PostgreSQL on {} — no reads or writes until the restore ends", members.join(", "));
    println!("  DCS          the cluster's keys under /service/{}/ are removed", patroni_scope(plan));
    println!("  restored     {leader}: its data directory from the backup, WAL replayed to the target, then promoted (a new timeline)");
    if !replicas.is_empty() {
        println!("  rebuilt      {}: data directories removed, rebuilt from the repository by Patroni, streaming from {leader}", replicas.join(", "));
    }
    match target {
        Target::Latest => println!("  lost         changes whose WAL never reached the archive (rigger switches and archives the current WAL first)"),
        _ => println!("  LOST         every change committed after the target, on every member (the archive keeps their WAL, the cluster does not)"),
    }
    if !super::confirm("\nDo you want to restore the cluster?", auto_approve)? {
        println!("Restore cancelled; nothing was changed.");
        return Ok(None);
    }

    let (events, printer) = Printer::start(verbose);
    let result = carry_out(project, cp, &stanza, &leader, old_leader.is_some(), &replicas, target, &chosen, &events).await;
    if let Err(e) = &result {
        events.failed("restore", "restore", &format!("{e:#}"));
    }
    drop(events);
    printer.finish().await;
    result.map(Some)
}

fn patroni_scope(plan: &Plan) -> String {
    backup::stanza(plan)
}

#[allow(clippy::too_many_arguments)]
async fn carry_out(
    project: &Project,
    cp: &phase::ConfigPlan,
    stanza: &str,
    leader: &str,
    leader_running: bool,
    replicas: &[String],
    target: &Target,
    chosen: &pgbackrest::Backup,
    events: &Events,
) -> Result<RestoreReport> {
    let plan = &project.plan;
    let session = |name: &str| cp.sessions.get(name).ok_or_else(|| anyhow!("{name}: not reachable over SSH"));
    let ls = session(leader)?;
    let data = patroni::data_dir(plan);
    let version = patroni::version(plan);
    let mut steps = Steps { events, current: None };

    // 1. Whatever the leader wrote so far goes to the archive first: a target
    //    near "now" must find its WAL there, and --latest means "all of it".
    if leader_running {
        steps.next(format!("{leader}: switching WAL and waiting until it is archived"));
        flush_archive(ls).await.context("the current WAL does not reach the archive, so a restore would lose it — fix archiving first (`rigger status`); nothing was changed")?;
    }

    // 2. Stop Patroni everywhere, replicas first.
    let started = Instant::now();
    for m in replicas.iter().map(String::as_str).chain(std::iter::once(leader)) {
        steps.next(format!("{m}: stopping Patroni"));
        let s = session(m)?;
        s.sudo_ok("stopping patroni", "systemctl stop patroni").await?;
        crate::hosts::run::wait_for(&format!("{m}: PostgreSQL stopped"), Duration::from_secs(120), || async {
            let out = s.sudo(&format!("test -f {}/postmaster.pid && echo running", sh_quote(&data)), None).await?;
            Ok(if out.stdout.contains("running") { Err("postmaster.pid still there".to_string()) } else { Ok(()) })
        })
        .await?;
    }

    // 3. The cluster's keys out of the DCS, so the restored member starts a new history.
    let etcd = plan.hosts_with_role(etcd::NAME).next().ok_or_else(|| anyhow!("the plan has no etcd host"))?;
    let key = format!("/service/{}/", patroni_scope(plan));
    steps.next(format!("{}: removing the cluster's DCS keys {key}", etcd.name));
    session(&etcd.name)?
        .sudo_ok("clearing the cluster's DCS keys", &crate::hosts::roles::tls::etcdctl(plan.int_setting(etcd::NAME, "client_port"), &format!("del --prefix {}", sh_quote(&key))))
        .await?;

    // 4. The leader's data directory from the repository.
    let args = match target {
        Target::Time(t) => format!("--delta --set={} --type=time --target={} --target-action=promote restore", chosen.label, sh_quote(&t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())),
        Target::Backup(l) => format!("--delta --set={l} --type=immediate --target-action=promote restore"),
        Target::Latest => "--delta restore".to_string(),
    };
    steps.next(format!("{leader}: pgbackrest restore from {}", chosen.label));
    let t0 = Instant::now();
    pgbackrest::run(ls, stanza, &args, 6 * 3600).await?;
    let restore_secs = t0.elapsed().as_secs_f64();
    let data_bytes: u64 = ls.sudo_ok("measuring the data directory", &format!("du -sb {} | cut -f1", sh_quote(&data))).await?.trim().parse().unwrap_or(0);

    // 5. Recovery to the target and promotion, under pg_ctl (Patroni would
    //    start it as a standby and never reach the target).
    steps.next(format!("{leader}: replaying WAL to the target"));
    let t1 = Instant::now();
    let pg_ctl = format!("/usr/lib/postgresql/{version}/bin/pg_ctl -D {}", sh_quote(&data));
    let log = "/var/log/postgresql/rigger-restore.log";
    // pg_ctl waits up to an hour for recovery to open the server: so may this command.
    let out = ls.within(Duration::from_secs(3600 + 5 * 60)).sudo(&format!("cd /tmp && runuser -u postgres -- {pg_ctl} -l {log} -w -t 3600 start"), None).await?;
    if !out.ok() {
        let tail = ls.sudo(&format!("tail -n 15 {log}"), None).await.map(|o| o.stdout).unwrap_or_default();
        bail!("{leader}: PostgreSQL did not recover from the restored data:\n    {}", tail.trim().replace('\n', "\n    "));
    }
    let promoted = crate::hosts::run::wait_for(&format!("{leader}: recovery reaches the target and promotes"), Duration::from_secs(3600), || async {
        let out = ls.sudo(&psql("select pg_is_in_recovery()"), None).await?;
        if out.stdout.trim() == "f" {
            return Ok(Ok(()));
        }
        let alive = ls.sudo(&format!("runuser -u postgres -- {pg_ctl} status >/dev/null && echo up"), None).await?;
        if !alive.stdout.contains("up") {
            let tail = ls.sudo(&format!("tail -n 15 {log}"), None).await.map(|o| o.stdout).unwrap_or_default();
            return Err(anyhow!("PostgreSQL stopped during recovery:\n    {}", tail.trim().replace('\n', "\n    ")));
        }
        Ok(Err(format!("still in recovery: {}", out.stdout.trim())))
    })
    .await;
    if let Err(e) = promoted {
        let _ = ls.sudo(&format!("runuser -u postgres -- {pg_ctl} -m fast -w stop"), None).await;
        return Err(e);
    }
    // The recovery target must not follow this member when it is a standby later.
    let reset: String = ["restore_command", "recovery_target_time", "recovery_target_action", "recovery_target", "recovery_target_timeline", "recovery_target_lsn", "recovery_target_name", "recovery_target_xid", "recovery_target_inclusive"]
        .iter()
        .map(|p| format!("ALTER SYSTEM RESET {p};"))
        .collect();
    for stmt in reset.split_inclusive(';') {
        ls.sudo_ok("resetting the recovery settings", &psql(stmt)).await?;
    }
    ls.within(Duration::from_secs(300 + 5 * 60)).sudo_ok("stopping the recovered PostgreSQL", &format!("cd /tmp && runuser -u postgres -- {pg_ctl} -m fast -w -t 300 stop")).await?;
    let recovery_secs = t1.elapsed().as_secs_f64();

    // 6. Patroni on the restored member: it finds no cluster in the DCS and takes it over with its data.
    steps.next(format!("{leader}: starting Patroni"));
    crate::hosts::run::start(ls, patroni::SERVICE).await?;
    let port = plan.int_setting(patroni::NAME, "rest_port");
    crate::hosts::run::wait_for(&format!("{leader}: Patroni leads the restored cluster"), Duration::from_secs(300), || async {
        let out = ls.sudo(&local_curl(port, "-m 3 -o /dev/null -w '%{http_code}'", "/primary"), None).await?;
        Ok(if out.stdout.trim() == "200" { Ok(()) } else { Err(format!("/primary answers {}", out.stdout.trim())) })
    })
    .await
    .map_err(|e| anyhow!("{e:#} (see `journalctl -u patroni` on {leader})"))?;
    let writable_secs = started.elapsed().as_secs_f64();

    // 7. Every other member rebuilt from the repository.
    let restore_log = format!("/var/log/pgbackrest/{stanza}-restore.log");
    let mut log_lines = BTreeMap::new();
    for r in replicas {
        let s = session(r)?;
        let n: u64 = s.sudo(&format!("wc -l < {restore_log} 2>/dev/null || echo 0"), None).await?.stdout.trim().parse().unwrap_or(0);
        log_lines.insert(r.clone(), n);
        steps.next(format!("{r}: removing the old data directory, Patroni rebuilds it"));
        s.sudo_ok("removing the old data directory", &format!("rm -rf {}", sh_quote(&data))).await?;
        crate::hosts::run::start(s, patroni::SERVICE).await?;
    }
    if !replicas.is_empty() {
        steps.next(format!("{}: rebuilt from the repository and streaming", replicas.join(", ")));
    }
    for r in replicas {
        let s = session(r)?;
        crate::hosts::run::wait_for(&format!("{r}: rebuilt and streaming"), Duration::from_secs(1800), || async {
            let out = s.sudo(&local_curl(port, "-m 3", "/patroni"), None).await?;
            let v: Value = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
            Ok(if v["role"] == "replica" && (v["state"] == "streaming" || v["state"] == "running") { Ok(()) } else { Err(format!("role {}, state {}", v["role"], v["state"])) })
        })
        .await?;
    }
    steps.finish();
    let mut rebuilt = BTreeMap::new();
    for r in replicas {
        let s = session(r)?;
        let from = log_lines[r] + 1;
        let out = s.sudo(&format!("tail -n +{from} {restore_log} 2>/dev/null | grep -c 'restore command end: completed successfully' || true"), None).await?;
        rebuilt.insert(r.clone(), out.stdout.trim().parse::<u64>().unwrap_or(0) > 0);
    }
    Ok(RestoreReport {
        backup: chosen.clone(),
        leader: leader.to_string(),
        replicas: rebuilt,
        restore_secs,
        recovery_secs,
        writable_secs,
        total_secs: started.elapsed().as_secs_f64(),
        data_bytes,
        started,
    })
}

/// The restore's steps as the printer's lines: each one shown with its time.
struct Steps<'a> {
    events: &'a Events,
    current: Option<(String, Instant)>,
}

impl Steps<'_> {
    fn next(&mut self, what: String) {
        self.finish();
        self.events.started("restore", &what);
        self.current = Some((what, Instant::now()));
    }

    fn finish(&mut self) {
        if let Some((what, at)) = self.current.take() {
            self.events.finished("restore", &what, at);
        }
    }
}

/// Close the current WAL segment and wait until the archiver has it.
pub async fn flush_archive(s: &HostSession) -> Result<()> {
    // A commit first, so the switch always has something to close.
    let out = s.sudo_ok("switching WAL", &psql("select txid_current(); select pg_walfile_name(pg_switch_wal())")).await?;
    let segment = out.lines().last().unwrap_or("").trim().to_string();
    if segment.len() != 24 {
        bail!("{}: unexpected answer to pg_switch_wal: {out:?}", s.name);
    }
    crate::hosts::run::wait_for(&format!("{}: WAL {segment} archived", s.name), Duration::from_secs(120), || async {
        let out = s.sudo(&psql("select coalesce(last_archived_wal, ''), coalesce(last_failed_wal, '') from pg_stat_archiver"), None).await?;
        let line = out.stdout.trim().to_string();
        let (archived, failed) = line.split_once('|').unwrap_or((&line, ""));
        Ok(if archived_at_least(archived, &segment) { Ok(()) } else { Err(format!("last archived {archived:?}, last failed {failed:?}")) })
    })
    .await
}

/// Whether the archiver's last file is `segment` or a later one.
fn archived_at_least(last: &str, segment: &str) -> bool {
    if last.len() < 24 {
        return false;
    }
    let head = &last[..24];
    head > segment || (head == segment && last.len() == 24)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosts::roles::pgbackrest::{Backup, StanzaInfo};

    fn info() -> StanzaInfo {
        let b = |label: &str, stop: i64| Backup { label: label.into(), kind: "full".into(), start: stop - 5, stop, size: 1, repo_size: 1, wal_start: String::new(), wal_stop: String::new(), prior: None };
        StanzaInfo { stanza: "main".into(), backups: vec![b("A", 1_000), b("B", 2_000)], ..Default::default() }
    }

    fn at(unix: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(unix, 0).unwrap()
    }

    #[test]
    fn a_time_uses_the_newest_backup_before_it() {
        assert_eq!(choose_backup(&info(), &Target::Time(at(1_500)), at(3_000)).unwrap().label, "A");
        assert_eq!(choose_backup(&info(), &Target::Time(at(2_500)), at(3_000)).unwrap().label, "B");
    }

    #[test]
    fn a_time_before_the_oldest_backup_is_refused() {
        let e = choose_backup(&info(), &Target::Time(at(999)), at(3_000)).unwrap_err().to_string();
        assert!(e.contains("before the oldest backup (A") && e.contains("nothing was changed"), "{e}");
    }

    #[test]
    fn a_future_time_and_an_unknown_label_are_refused() {
        assert!(choose_backup(&info(), &Target::Time(at(4_000)), at(3_000)).unwrap_err().to_string().contains("in the future"));
        assert!(choose_backup(&info(), &Target::Backup("C".into()), at(3_000)).unwrap_err().to_string().contains("no backup C"));
    }

    #[test]
    fn no_backup_at_all_is_refused() {
        let empty = StanzaInfo { stanza: "main".into(), ..Default::default() };
        assert!(choose_backup(&empty, &Target::Latest, at(3_000)).unwrap_err().to_string().contains("no backup"));
    }

    #[test]
    fn times_parse_with_and_without_a_zone() {
        assert_eq!(parse_time("2026-11-28T20:15:00Z").unwrap(), parse_time("2026-11-28 20:15:00").unwrap());
        assert_eq!(parse_time("2026-11-28 23:15:00+03").unwrap(), parse_time("2026-11-28 20:15:00+00").unwrap());
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn archived_compares_segments_not_backup_labels() {
        assert!(archived_at_least("000000010000000000000005", "000000010000000000000005"));
        assert!(archived_at_least("000000010000000000000006", "000000010000000000000005"));
        assert!(!archived_at_least("000000010000000000000005.00000028.backup", "000000010000000000000005"));
        assert!(!archived_at_least("", "000000010000000000000005"));
    }
}
