//! backup: a pgBackRest repository on a host of its own (`roles: [backup]`),
//! reached over SSH as `postgres` in both directions — the members push WAL
//! to it (archive_command) and fetch WAL and backups from it (restore_command,
//! replica creation), the repository host runs backups against the primary.
//! SSH because rigger already knows every machine's host key and can generate
//! the key pairs into the state: no certificate authority to depend on.
//! The repository is encrypted (aes-256-cbc, passphrase generated into the
//! state, written only into the repository host's 0640 config).
//! Gate: `stanza-create` (idempotent) and `check` (a WAL switch archived end
//! to end); the first run also takes the first full backup, so a restore and
//! a replica built from the repository are possible from then on.

use super::{file, pgbackrest, service};
use crate::hosts::ops::{HostDesired, OnChange};
use crate::hosts::run::RoleRun;
use crate::plan::model::{Host, Plan};
use crate::hosts::remote::session::HostSession;
use crate::render::Renderer;
use crate::state::State;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use crate::plan::services::{Setting, SettingType};
use crate::flows::{FlowSink, Service, Transport};
use super::role::PlanCheck;
use crate::plan::diag::{suggestion, Diags};

/// postgres's home on Debian (postgresql-common, which pgbackrest depends on, creates the user).
const PG_HOME: &str = "/var/lib/postgresql";
const CONFIG: &str = "/etc/pgbackrest/pgbackrest.conf";
const KEY_FILE: &str = "id_pgbackrest";

/// The backup types a schedule may name.
pub const KINDS: &[&str] = &["full", "diff", "incr"];

/// The pgBackRest stanza: the Patroni cluster's scope.
pub fn stanza(plan: &Plan) -> String {
    plan.str_setting(super::patroni::NAME, "scope")
}

/// The repository host, when the plan has one.
pub fn repo_host(plan: &Plan) -> Option<&Host> {
    plan.hosts_with_role(NAME).next()
}

/// PostgreSQL parameters every member needs to archive into the repository.
pub fn archive_parameters(plan: &Plan) -> Vec<(String, Value)> {
    if repo_host(plan).is_none() {
        return vec![];
    }
    let timeout = plan.int_setting(NAME, "archive_timeout");
    vec![
        ("archive_mode".into(), json!("on")),
        ("archive_command".into(), json!(format!("pgbackrest --stanza={} archive-push %p", stanza(plan)))),
        ("archive_timeout".into(), json!(format!("{timeout}s"))),
    ]
}

/// Secrets of the backup role beyond plain passwords: two SSH key pairs
/// (repository → members, members → repository), generated once with
/// ssh-keygen into the state. Returns whether the state changed.
pub fn ensure_key_pairs(state: &mut State, plan: &Plan) -> Result<bool> {
    if repo_host(plan).is_none() {
        return Ok(false);
    }
    let mut changed = false;
    for who in ["repo", "member"] {
        let name = format!("backup_{who}_ssh_key");
        if state.secrets.contains_key(&name) && state.secrets.contains_key(&format!("{name}_pub")) {
            continue;
        }
        let (private, public) = generate_key_pair(&format!("rigger-{}-pgbackrest-{who}", plan.project))?;
        state.secrets.insert(name.clone(), private);
        state.secrets.insert(format!("{name}_pub"), public);
        changed = true;
    }
    Ok(changed)
}

fn generate_key_pair(comment: &str) -> Result<(String, String)> {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("key");
    let out = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(&key)
        .output()
        .context("cannot run ssh-keygen — install openssh-client")?;
    if !out.status.success() {
        bail!("ssh-keygen failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let private = std::fs::read_to_string(&key)?;
    let public = std::fs::read_to_string(key.with_extension("pub"))?.trim().to_string();
    Ok((private, public))
}

/// The template context plus what the pgBackRest templates read.
fn context(ctx: &Value, plan: &Plan) -> Result<Value> {
    let repo = repo_host(plan).ok_or_else(|| anyhow!("no host has the role `backup`"))?;
    let mut ctx = ctx.clone();
    ctx["backup"] = json!({
        "stanza": stanza(plan),
        "data_dir": super::patroni::data_dir(plan),
        "repo_host": repo.name,
        "repo_ip": repo.ip.to_string(),
        "s3": s3(plan),
    });
    Ok(ctx)
}

/// `services.backup.s3` with its defaults (`path`: /pgbackrest/<project>), or null.
fn s3(plan: &Plan) -> Value {
    match plan.setting(NAME, "s3").and_then(Value::as_object) {
        Some(m) => {
            let mut m = m.clone();
            m.entry("path").or_insert_with(|| json!(format!("/pgbackrest/{}", plan.project)));
            Value::Object(m)
        }
        None => Value::Null,
    }
}

/// Where the S3 repository's access keys come from: the environment of the
/// `plan`/`apply` that first needs them (saved into the state, 0600, never
/// shown; set them again to rotate).
pub const S3_KEY_ENV: &str = "RIGGER_S3_KEY";
pub const S3_KEY_SECRET_ENV: &str = "RIGGER_S3_KEY_SECRET";

/// Take the S3 keys from the environment into the state, or make sure the
/// state has them. Returns whether the state changed.
pub fn ensure_s3_keys(state: &mut State, plan: &Plan) -> Result<bool> {
    if plan.setting(NAME, "s3").is_none() {
        return Ok(false);
    }
    let mut changed = false;
    for (env, secret) in [(S3_KEY_ENV, "backup_s3_key"), (S3_KEY_SECRET_ENV, "backup_s3_key_secret")] {
        match std::env::var(env).ok().filter(|v| !v.is_empty()) {
            Some(v) if state.secrets.get(secret) != Some(&v) => {
                state.secrets.insert(secret.to_string(), v);
                changed = true;
            }
            Some(_) => {}
            None if state.secrets.contains_key(secret) => {}
            None => bail!("services.backup.s3 needs the bucket's access key: set {S3_KEY_ENV} and {S3_KEY_SECRET_ENV} in the environment of this run (rigger keeps them in the state, 0600, and never prints them)"),
        }
    }
    Ok(changed)
}

/// pgBackRest's own check of an S3 repository config, offline: `info` parses
/// and checks every option (unknown ones warn, missing ones fail), then dials
/// the storage — pointed at a closed port on the host itself, so nothing
/// leaves it; reaching that connection error means the config is complete.
pub fn s3_config_check(stanza: &str) -> String {
    format!(
        "sh -c 'out=$(pgbackrest --config=\"$0\" --stanza={stanza} --repo1-storage-host=127.0.0.1 --repo1-storage-port=9 --io-timeout=1 \
         --log-level-console=warn --log-level-file=off info 2>&1); \
         if echo \"$out\" | grep -q \"^WARN\" || ! echo \"$out\" | grep -q HostConnectError; then echo \"$out\"; exit 1; fi' {{}}"
    )
}

fn secret<'a>(ctx: &'a Value, name: &str) -> Result<&'a str> {
    ctx["secret"][name].as_str().ok_or_else(|| anyhow!("the state has no secret {name} — run `rigger apply` (it generates it)"))
}

/// postgres's SSH files: its config, its private key, who may log in.
fn ssh_files(role: &'static str, ctx: &Value, own_key: &str, peer_key: &str, peers: &[String]) -> Result<Vec<crate::hosts::ops::ManagedFile>> {
    let config = format!(
        "# Managed by rigger: pgBackRest's SSH between the Patroni members and the repository host.\n\
         Host *\n    BatchMode yes\n    StrictHostKeyChecking yes\n    IdentityFile ~/.ssh/{KEY_FILE}\n    IdentitiesOnly yes\n    \
         ConnectTimeout 10\n    ServerAliveInterval 15\n    ServerAliveCountMax 4\n"
    );
    // Only pgBackRest's peers, and nothing but commands (no pty, no forwarding).
    let authorized = format!("restrict,from=\"{}\" {}\n", peers.join(","), secret(ctx, &format!("{peer_key}_pub"))?);
    Ok(vec![
        file(role, &format!("{PG_HOME}/.ssh/config"), config, 0o600, "postgres", "postgres", None, &[]),
        file(role, &format!("{PG_HOME}/.ssh/{KEY_FILE}"), secret(ctx, own_key)?.to_string(), 0o600, "postgres", "postgres", None, &[]),
        file(role, &format!("{PG_HOME}/.ssh/authorized_keys"), authorized, 0o600, "postgres", "postgres", None, &[]),
    ])
}

/// The schedule: (backup type, systemd OnCalendar).
pub fn schedule(plan: &Plan) -> Vec<(String, String)> {
    plan.setting(NAME, "schedule")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default()
}

pub fn timer_name(kind: &str) -> String {
    format!("pgbackrest-{kind}.timer")
}

/// The repository host.
pub fn desired(r: &Renderer, ctx: &Value, plan: &Plan) -> Result<HostDesired> {
    let ctx = context(ctx, plan)?;
    let members: Vec<String> = plan.hosts_with_role(super::patroni::NAME).map(|h| h.ip.to_string()).collect();
    let check = s3_config_check(&stanza(plan));
    let validate = (!ctx["backup"]["s3"].is_null()).then_some(("pgbackrest info (offline)", check.as_str()));
    let mut files = vec![file(NAME, CONFIG, r.render("pgbackrest-repo.conf.j2", &ctx)?, 0o640, "postgres", "postgres", validate, &[])];
    files.extend(ssh_files(NAME, &ctx, "backup_repo_ssh_key", "backup_member_ssh_key", &members)?);
    let timers: Vec<String> = schedule(plan).iter().map(|(k, _)| timer_name(k)).collect();
    let notify: Vec<&str> = timers.iter().map(String::as_str).collect();
    files.push(file(NAME, "/etc/systemd/system/pgbackrest-backup@.service", r.render("pgbackrest-backup@.service.j2", &ctx)?, 0o644, "root", "root", None, &notify));
    // systemd's own parser checks the calendar expression before the timer is replaced.
    let check_calendar = ("systemd-analyze calendar", "sh -c 'systemd-analyze calendar \"$(sed -n \"s/^OnCalendar=//p\" \"$0\")\" >/dev/null' {}");
    let mut services = Vec::new();
    for (kind, on_calendar) in schedule(plan) {
        let mut c = ctx.clone();
        c["timer"] = json!({ "kind": kind, "on_calendar": on_calendar });
        let name = timer_name(&kind);
        files.push(file(NAME, &format!("/etc/systemd/system/{name}"), r.render("pgbackrest-backup.timer.j2", &c)?, 0o644, "root", "root", Some(check_calendar), &[&name]));
        services.push(service(NAME, &name, OnChange::Restart));
    }
    Ok(HostDesired { packages: vec!["pgbackrest".into()], files, services, ..Default::default() })
}

/// What a Patroni member needs to archive into the repository and restore
/// from it (nothing when the plan has no backup host). The files belong to
/// the patroni role: they are in place before Patroni first starts.
pub fn member_desired(r: &Renderer, ctx: &Value, plan: &Plan) -> Result<HostDesired> {
    let Some(repo) = repo_host(plan) else { return Ok(HostDesired::default()) };
    let ctx = context(ctx, plan)?;
    let mut files = vec![file(super::patroni::NAME, CONFIG, r.render("pgbackrest-member.conf.j2", &ctx)?, 0o640, "postgres", "postgres", None, &[])];
    files.extend(ssh_files(super::patroni::NAME, &ctx, "backup_member_ssh_key", "backup_repo_ssh_key", &[repo.ip.to_string()])?);
    Ok(HostDesired { packages: vec!["pgbackrest".into()], files, ..Default::default() })
}

/// The host's own SSH host keys (read over rigger's verified session, so
/// they are the keys rigger recorded when it built the machine).
async fn host_keys(s: &HostSession) -> Result<Vec<String>> {
    let out = s.sudo_ok("reading the SSH host keys", "cat /etc/ssh/ssh_host_*_key.pub").await?;
    let keys: Vec<String> = out
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some(format!("{} {}", parts.next()?, parts.next()?))
        })
        .collect();
    if keys.is_empty() {
        bail!("{}: no SSH host keys in /etc/ssh", s.name);
    }
    Ok(keys)
}

/// Write postgres's known_hosts when it differs. Returns whether it changed.
async fn write_known_hosts(s: &HostSession, content: &str) -> Result<bool> {
    let path = format!("{PG_HOME}/.ssh/known_hosts");
    let hash = crate::hosts::ops::sha256_hex(content.as_bytes());
    let script = format!(
        "set -e\ninstall -d -o postgres -g postgres -m 700 {PG_HOME}/.ssh\nf={path}\n\
         if [ \"$(sha256sum < $f 2>/dev/null | cut -d' ' -f1)\" != {hash} ]; then t=$(mktemp $f.rigger-XXXXXX); cat > $t; chown postgres:postgres $t; chmod 644 $t; mv -f $t $f; echo CHANGED; else cat >/dev/null; fi\n"
    );
    let out = s.sudo(&script, Some(content.as_bytes())).await?;
    if !out.ok() {
        bail!("{}: writing {path} failed: {}", s.name, out.stderr.trim());
    }
    Ok(out.stdout.contains("CHANGED"))
}

/// pgBackRest's SSH trust: the repository knows every member's host key,
/// every member knows the repository's.
async fn ssh_trust(run: &RoleRun<'_>, repo: &Host) -> Result<()> {
    let rs = run.session(&repo.name)?;
    let repo_keys = host_keys(rs).await?;
    let mut member_lines = String::new();
    for m in run.plan.hosts_with_role(super::patroni::NAME) {
        let ms = run.session(&m.name)?;
        for k in host_keys(ms).await? {
            member_lines.push_str(&format!("{} {k}\n", m.ip));
        }
        let repo_lines: String = repo_keys.iter().map(|k| format!("{} {k}\n", repo.ip)).collect();
        if write_known_hosts(ms, &repo_lines).await? {
            run.events.progress(&format!("backup {}", m.name), "trusting the repository host's SSH key");
        }
    }
    if write_known_hosts(rs, &member_lines).await? {
        run.events.progress(&format!("backup {}", repo.name), "trusting the Patroni members' SSH keys");
    }
    Ok(())
}

pub async fn converge(run: &RoleRun<'_>) -> Result<()> {
    let repo = *run.hosts.first().ok_or_else(|| anyhow!("no backup host"))?;
    let rs = run.session(&repo.name)?;
    let subject = format!("backup {}", repo.name);
    rs.sudo_ok("preparing the repository folders", "install -d -o postgres -g postgres -m 750 /var/lib/pgbackrest /var/log/pgbackrest").await?;
    ssh_trust(run, repo).await?;
    run.plain_service_changes(repo, rs).await?;
    gate(run, repo, &subject).await
}

/// stanza-create (idempotent), check (WAL archived end to end), and the
/// first full backup when the repository has none.
async fn gate(run: &RoleRun<'_>, repo: &Host, subject: &str) -> Result<()> {
    let plan = run.plan;
    let rs = run.session(&repo.name)?;
    let stanza = stanza(plan);
    let info = pgbackrest::info(rs, &stanza).await.ok();
    if info.as_ref().is_none_or(|i| !i.stanza_exists()) {
        run.events.progress(subject, format!("creating the stanza {stanza}"));
        pgbackrest::run(rs, &stanza, "stanza-create", 300).await?;
    }
    run.events.progress(subject, "pgbackrest check (a WAL switch archived into the repository)");
    pgbackrest::run(rs, &stanza, "check", 300).await.map_err(|e| anyhow!("{e:#}\n  (archive_command on the primary: see pg_stat_archiver, and /var/log/pgbackrest on both sides)"))?;
    let info = pgbackrest::info(rs, &stanza).await?;
    if info.backups.is_empty() {
        run.events.progress(subject, "no backup yet: taking the first full backup");
        pgbackrest::backup(rs, &stanza, "full", run.events, subject).await?;
    }
    Ok(())
}

/// Every setting the repository needs, for `backups`/`status`/`restore`:
/// the repository host's session and the stanza.
pub fn require_repo(plan: &Plan) -> Result<&Host> {
    repo_host(plan).ok_or_else(|| {
        anyhow!(
            "{}: no host has the role `backup` — add one (e.g. `- {{ name: backup, roles: [backup] }}`) and run `rigger apply`; nothing was changed",
            plan.file.display()
        )
    })
}

/// What `rigger status` shows of backups: the newest backup and its age,
/// and the leader's WAL archiving (segments waiting, a failing archive_command).
#[derive(Debug, Clone, serde::Serialize, Default)]
pub struct BackupStatus {
    pub repo_host: String,
    pub backups: usize,
    pub newest_label: Option<String>,
    pub newest_type: Option<String>,
    /// Seconds since the newest backup ended.
    pub newest_age_secs: Option<i64>,
    pub archive: Option<ArchiveStatus>,
    /// Why the repository or the leader could not be asked.
    pub error: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, Default, PartialEq)]
pub struct ArchiveStatus {
    pub leader: String,
    pub last_archived_wal: String,
    /// Seconds since the last successful archive (-1: never).
    pub last_archived_age_secs: i64,
    pub last_failed_wal: String,
    /// The last attempt failed: archive_command is failing now.
    pub failing: bool,
    /// WAL segments written but not archived yet (the archive lag).
    pub waiting_segments: i64,
}

impl BackupStatus {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.backups > 0 && self.archive.as_ref().is_some_and(|a| !a.failing)
    }
}

/// The leader's pg_stat_archiver and archive_status, as one psql line.
const ARCHIVE_QUERY: &str = "select coalesce(last_archived_wal, ''), coalesce(extract(epoch from now() - last_archived_time)::bigint, -1), \
     coalesce(last_failed_wal, ''), (last_failed_time is not null and (last_archived_time is null or last_failed_time > last_archived_time)), \
     (select count(*) from pg_ls_archive_statusdir() where name like '%.ready') from pg_stat_archiver";

pub fn parse_archive_line(leader: &str, line: &str) -> Option<ArchiveStatus> {
    let f: Vec<&str> = line.trim().split('|').collect();
    if f.len() != 5 {
        return None;
    }
    Some(ArchiveStatus {
        leader: leader.to_string(),
        last_archived_wal: f[0].to_string(),
        last_archived_age_secs: f[1].parse().ok()?,
        last_failed_wal: f[2].to_string(),
        failing: f[3] == "t",
        waiting_segments: f[4].parse().ok()?,
    })
}

/// Gather the backup lines of `status` (nothing when the plan has no backup host).
pub async fn status(plan: &Plan, sessions: &std::collections::BTreeMap<String, HostSession>, leader: Option<&str>) -> Option<BackupStatus> {
    let repo = repo_host(plan)?;
    let mut st = BackupStatus { repo_host: repo.name.clone(), ..Default::default() };
    let mut errors = Vec::new();
    match sessions.get(&repo.name) {
        Some(rs) => match pgbackrest::info(rs, &stanza(plan)).await {
            Ok(info) => {
                st.backups = info.backups.len();
                if let Some(b) = info.newest() {
                    st.newest_label = Some(b.label.clone());
                    st.newest_type = Some(b.kind.clone());
                    st.newest_age_secs = Some(chrono::Utc::now().timestamp() - b.stop);
                }
            }
            Err(e) => errors.push(format!("{e:#}")),
        },
        None => errors.push(format!("{} unreachable", repo.name)),
    }
    match leader.and_then(|l| sessions.get(l).map(|s| (l, s))) {
        Some((l, s)) => {
            let cmd = format!("cd /tmp && runuser -u postgres -- psql -h /var/run/postgresql -XAtqc \"{ARCHIVE_QUERY}\"");
            match s.sudo(&cmd, None).await {
                Ok(out) => match parse_archive_line(l, &out.stdout) {
                    Some(a) => st.archive = Some(a),
                    None => errors.push(format!("{l}: pg_stat_archiver unreadable: {}", out.stderr.trim())),
                },
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        None => errors.push("no Patroni leader to read pg_stat_archiver from".into()),
    }
    if !errors.is_empty() {
        st.error = Some(errors.join("; "));
    }
    Some(st)
}

/// "3h 12m", "45s".
pub fn age(secs: i64) -> String {
    match secs {
        s if s < 0 => "never".into(),
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}


/// The backup role, as the registry lists it.
pub struct Backup;

/// The plan's `roles:` value.
pub const NAME: &str = "backup";

/// The settings under `services: backup:` — each default is written here only.
static SETTINGS: &[Setting] = &[
    Setting::new("schedule", SettingType::Map, |_| json!({ "full": "Sun *-*-* 01:00:00", "diff": "Mon..Sat *-*-* 01:00:00" }), "systemd OnCalendar per backup type (full, diff, incr)"),
    Setting::new("retention_full", SettingType::Int { min: 1, max: 100 }, |_| json!(2), "full backups kept (older ones and their WAL are expired)"),
    Setting::new("retention_diff", SettingType::Int { min: 1, max: 1000 }, |_| json!(7), "differential backups kept"),
    Setting::new("compress", SettingType::OneOf(&["lz4", "zst", "gz", "bz2", "none"]), |_| json!("lz4"), "pgBackRest compress-type: lz4, zst, gz, bz2 or none"),
    Setting::new("process_max", SettingType::Int { min: 1, max: 64 }, |_| json!(2), "parallel processes for backup and restore"),
    Setting::new("archive_timeout", SettingType::Int { min: 10, max: 3600 }, |_| json!(60), "s: PostgreSQL switches WAL at least this often (bounds the data a lost leader takes with it)"),
    Setting::optional("s3", SettingType::Map, "an S3 repository instead of the backup host's disk: { bucket, endpoint, region }"),
];

/// The secrets the role needs (generated once, kept in the state).
const SECRETS: &[&str] = &["backup_cipher_pass"];

#[async_trait::async_trait]
impl super::role::Role for Backup {
    fn name(&self) -> &'static str {
        NAME
    }

    /// One repository host of its own, a Patroni cluster to back up, a
    /// schedule systemd can read the keys of.
    fn check(&self, at: &PlanCheck<'_>, d: &mut Diags) {
        let backup = at.with(NAME);
        if backup.is_empty() {
            return;
        }
        let pos = at.role_pos(NAME);
        for h in backup.iter().filter(|h| h.has_role(super::patroni::NAME)) {
            d.error(pos, format!("host `{}` is both the backup repository and a Patroni member — losing that machine would lose the database and its backups together; give `backup` to a host of its own", h.name));
        }
        if backup.len() > 1 {
            d.error(pos, format!("{} hosts have the role `backup` — pgBackRest keeps one repository; give the role to one host (count 1)", backup.len()));
        }
        if at.with(super::patroni::NAME).is_empty() {
            d.error(pos, "the role `backup` backs up the Patroni cluster — add hosts with the role `patroni`");
        }
        let schedule = at.setting(NAME, "schedule").and_then(Value::as_object);
        let schedule_pos = at.setting_node(NAME, "schedule").map(|n| n.pos).unwrap_or(pos);
        for key in schedule.into_iter().flat_map(|m| m.keys()) {
            if !["full", "diff", "incr"].contains(&key.as_str()) {
                d.error(schedule_pos, format!("services.backup.schedule: unknown backup type `{key}` — {}", suggestion(key, &["full", "diff", "incr"])));
            }
        }
        if let Some(s3) = at.setting(NAME, "s3").and_then(Value::as_object) {
            let s3_pos = at.setting_node(NAME, "s3").map(|n| n.pos).unwrap_or(pos);
            for key in ["bucket", "endpoint", "region"] {
                if !s3.contains_key(key) {
                    d.error(s3_pos, format!("services.backup.s3 needs `{key}` — e.g. s3: {{ bucket: my-backups, endpoint: storage.yandexcloud.net, region: ru-central1 }}"));
                }
            }
            const S3_KEYS: &[&str] = &["bucket", "endpoint", "region", "path"];
            for key in s3.keys().filter(|k| !S3_KEYS.contains(&k.as_str())) {
                d.error(s3_pos, format!("services.backup.s3: unknown key `{key}` — {} (the keys come from the environment: RIGGER_S3_KEY, RIGGER_S3_KEY_SECRET)", suggestion(key, S3_KEYS)));
            }
            for (key, value) in s3 {
                if !value.is_string() {
                    d.error(s3_pos, format!("services.backup.s3.{key} must be a string"));
                }
            }
            if s3.get("endpoint").and_then(Value::as_str).is_some_and(|e| e.contains("://") || e.contains('/')) {
                d.error(s3_pos, "services.backup.s3.endpoint is a host name, not a URL — write e.g. endpoint: storage.yandexcloud.net (pgBackRest always speaks HTTPS)");
            }
            if s3.get("path").and_then(Value::as_str).is_some_and(|p| !p.starts_with('/')) {
                d.error(s3_pos, "services.backup.s3.path is a path inside the bucket and starts with `/` — e.g. path: /pgbackrest");
            }
        }
    }

    fn flows(&self, net: &mut FlowSink<'_>) {
        // pgBackRest reaches the other side over SSH: archive-push from every
        // member, backups and restores from the repository host.
        net.add(super::patroni::NAME, NAME, Transport::Tcp, Some(22), Service::PgBackRestSsh);
        net.add(NAME, super::patroni::NAME, Transport::Tcp, Some(22), Service::PgBackRestSsh);
    }

    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }

    fn secrets(&self) -> &'static [&'static str] {
        SECRETS
    }
    /// The repository host and archiving: the cluster must be up to take a backup.
    fn needs(&self) -> &'static [&'static str] {
        &[super::patroni::NAME]
    }
    fn desired(&self, at: &super::role::HostInput<'_>) -> anyhow::Result<crate::hosts::ops::HostDesired> {
        desired(at.renderer, at.ctx, at.plan)
    }
    async fn converge(&self, run: &RoleRun<'_>) -> anyhow::Result<()> {
        converge(run).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_archive_command_is_not_ok() {
        let a = parse_archive_line("pg-1", "000000010000000000000007|420|000000010000000000000008|t|3\n").unwrap();
        assert!(a.failing);
        assert_eq!(a.waiting_segments, 3);
        let st = BackupStatus { backups: 1, archive: Some(a), ..Default::default() };
        assert!(!st.ok());
    }

    #[test]
    fn archiving_and_a_backup_are_ok() {
        let a = parse_archive_line("pg-1", "000000010000000000000007|5||f|0").unwrap();
        assert!(!a.failing && a.last_failed_wal.is_empty());
        assert!(BackupStatus { backups: 1, archive: Some(a.clone()), ..Default::default() }.ok());
        assert!(!BackupStatus { backups: 0, archive: Some(a), ..Default::default() }.ok(), "no backup at all is not ok");
    }

    #[test]
    fn ages_read_like_people_say_them() {
        assert_eq!(age(45), "45s");
        assert_eq!(age(3 * 3600 + 12 * 60), "3h 12m");
        assert_eq!(age(-1), "never");
    }
}

/// The status lines: the repository's newest backup, then the leader's archiving.
pub fn render_status(b: &BackupStatus, backup_mark: &str, archive_mark: &str) -> String {
    let mut out = match (&b.newest_label, b.newest_age_secs) {
        (Some(label), Some(age_s)) => format!(
            "{backup_mark} backup {}: newest {label} ({}) {} ago, {} backup(s)\n",
            b.repo_host,
            b.newest_type.as_deref().unwrap_or("?"),
            age(age_s),
            b.backups
        ),
        _ => format!("{backup_mark} backup {}: no backup in the repository\n", b.repo_host),
    };
    match &b.archive {
        Some(a) if a.failing => out.push_str(&format!(
            "{archive_mark} wal archive on {}: archive_command FAILING at {} ({} segment(s) waiting; last success {} ago, {})\n",
            a.leader,
            a.last_failed_wal,
            a.waiting_segments,
            age(a.last_archived_age_secs),
            if a.last_archived_wal.is_empty() { "none" } else { &a.last_archived_wal }
        )),
        Some(a) => out.push_str(&format!(
            "{archive_mark} wal archive on {}: {} segment(s) waiting, last archived {} {} ago\n",
            a.leader,
            a.waiting_segments,
            if a.last_archived_wal.is_empty() { "none" } else { &a.last_archived_wal },
            age(a.last_archived_age_secs)
        )),
        None => {}
    }
    if let Some(e) = &b.error {
        out.push_str(&format!("       {e}\n"));
    }
    out
}
