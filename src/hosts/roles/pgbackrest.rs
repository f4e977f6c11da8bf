//! Talking to pgBackRest on the repository host: run a command as postgres
//! (bounded by `timeout`), read `info --output=json`, run a backup through
//! its systemd unit (the same one the timers start) while showing progress.

use rigger_events::Events;
use crate::hosts::remote::session::{sh_quote, HostSession, RunOutput};
use anyhow::{anyhow, bail, Result};
use serde::Serialize;
use serde_json::Value;
use std::time::{Duration, Instant};

/// One backup of the repository, as `pgbackrest info --output=json` describes it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Backup {
    pub label: String,
    /// full, diff or incr.
    #[serde(rename = "type")]
    pub kind: String,
    /// Unix seconds.
    pub start: i64,
    pub stop: i64,
    /// The database's size at backup time, bytes.
    pub size: u64,
    /// What this backup added to the repository, bytes (compressed, encrypted).
    pub repo_size: u64,
    pub wal_start: String,
    pub wal_stop: String,
    /// The backup this one depends on (diff/incr).
    pub prior: Option<String>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct StanzaInfo {
    pub stanza: String,
    /// pgBackRest's status code (0 ok, 1 missing stanza path, 2 no valid backups, 3 missing stanza data, …).
    pub status_code: i64,
    pub status: String,
    pub cipher: String,
    pub backups: Vec<Backup>,
    /// Oldest and newest WAL segment in the archive.
    pub wal_min: Option<String>,
    pub wal_max: Option<String>,
    /// A backup is running right now.
    pub backup_running: bool,
}

impl StanzaInfo {
    /// The stanza exists in the repository (it may have no backup yet).
    pub fn stanza_exists(&self) -> bool {
        self.status_code == 0 || self.status_code == 2
    }

    pub fn newest(&self) -> Option<&Backup> {
        self.backups.iter().max_by_key(|b| b.stop)
    }

    pub fn oldest(&self) -> Option<&Backup> {
        self.backups.iter().min_by_key(|b| b.stop)
    }
}

/// Parse `pgbackrest --stanza=S info --output=json`.
pub fn parse_info(json: &str, stanza: &str) -> Result<StanzaInfo> {
    let v: Value = serde_json::from_str(json).map_err(|e| anyhow!("pgbackrest info printed no JSON ({e}): {}", json.chars().take(300).collect::<String>()))?;
    let s = v.as_array().and_then(|a| a.iter().find(|s| s["name"] == stanza)).ok_or_else(|| anyhow!("pgbackrest info does not know the stanza {stanza}"))?;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let backups = s["backup"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["error"].as_bool() != Some(true))
        .map(|b| Backup {
            label: text(&b["label"]),
            kind: text(&b["type"]),
            start: b["timestamp"]["start"].as_i64().unwrap_or(0),
            stop: b["timestamp"]["stop"].as_i64().unwrap_or(0),
            size: b["info"]["size"].as_u64().unwrap_or(0),
            repo_size: b["info"]["repository"]["delta"].as_u64().unwrap_or(0),
            wal_start: text(&b["archive"]["start"]),
            wal_stop: text(&b["archive"]["stop"]),
            prior: b["prior"].as_str().map(str::to_string),
        })
        .collect();
    let archive = s["archive"].as_array().and_then(|a| a.last());
    Ok(StanzaInfo {
        stanza: stanza.to_string(),
        status_code: s["status"]["code"].as_i64().unwrap_or(99),
        status: text(&s["status"]["message"]),
        cipher: text(&s["cipher"]),
        backups,
        wal_min: archive.and_then(|a| a["min"].as_str()).map(str::to_string),
        wal_max: archive.and_then(|a| a["max"].as_str()).map(str::to_string),
        backup_running: s["status"]["lock"]["backup"]["held"].as_bool().unwrap_or(false),
    })
}

/// `pgbackrest --stanza=S <args>` as postgres, ended on the host after
/// `limit_s` seconds (or `RIGGER_COMMAND_TIMEOUT`, when longer: a restore of
/// a large database) — past it, an error that says so.
pub async fn run_raw(s: &HostSession, stanza: &str, args: &str, limit_s: u64) -> Result<RunOutput> {
    s.within(Duration::from_secs(limit_s)).sudo(&format!("cd /tmp && runuser -u postgres -- pgbackrest --stanza={} {args}", sh_quote(stanza)), None).await
}

/// Like `run_raw`, but a failure is an error with pgBackRest's own words.
pub async fn run(s: &HostSession, stanza: &str, args: &str, limit_s: u64) -> Result<String> {
    let out = run_raw(s, stanza, args, limit_s).await?;
    if !out.ok() {
        bail!("{}: pgbackrest {args} failed (exit {}):\n    {}", s.name, out.code, last_lines(&format!("{}\n{}", out.stdout, out.stderr), 8).replace('\n', "\n    "));
    }
    Ok(out.stdout)
}

pub async fn info(s: &HostSession, stanza: &str) -> Result<StanzaInfo> {
    let out = run(s, stanza, "--output=json info", 120).await?;
    parse_info(&out, stanza)
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// "backup/expire running - 34.12% complete" in `info`'s text output.
pub fn running_percent(info_text: &str) -> Option<f64> {
    let rest = info_text.split("running - ").nth(1)?;
    rest.split('%').next()?.trim().parse().ok()
}

/// The unit the timers start; `rigger backup` starts the same one.
pub fn unit(kind: &str) -> String {
    format!("pgbackrest-backup@{kind}.service")
}

/// How long `systemctl start` of a backup unit may wait: the unit's own
/// TimeoutStartSec (12 h, templates/pgbackrest-backup@.service.j2) and a
/// margin, so systemd's deadline, with its message in the journal, comes first.
pub const BACKUP_LIMIT: Duration = Duration::from_secs(12 * 3600 + 10 * 60);

/// Run one backup now through its systemd unit, showing pgBackRest's progress;
/// returns the new backup. Bounded by the unit's own 12 h TimeoutStartSec.
pub async fn backup(s: &HostSession, stanza: &str, kind: &str, events: &Events, subject: &str) -> Result<Backup> {
    if !super::backup::KINDS.contains(&kind) {
        bail!("unknown backup type {kind:?} — full, diff or incr");
    }
    let before: Vec<String> = info(s, stanza).await.map(|i| i.backups.into_iter().map(|b| b.label).collect()).unwrap_or_default();
    let unit = unit(kind);
    let started = Instant::now();
    let script = format!("systemctl reset-failed {unit} 2>/dev/null; systemctl start {unit}");
    let start = s.within(BACKUP_LIMIT).sudo(&script, None);
    tokio::pin!(start);
    let out = loop {
        tokio::select! {
            out = &mut start => break out?,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {
                let text = run_raw(s, stanza, "info", 30).await.map(|o| o.stdout).unwrap_or_default();
                match running_percent(&text) {
                    Some(p) => events.progress(subject, format!("{kind} backup {p:.1}% ({}s)", started.elapsed().as_secs())),
                    None => events.progress(subject, format!("{kind} backup running ({}s)", started.elapsed().as_secs())),
                }
            }
        }
    };
    if !out.ok() {
        let journal = s.sudo(&format!("journalctl -u {unit} -n 12 --no-pager -o cat"), None).await.map(|o| o.stdout).unwrap_or_default();
        bail!("{}: the {kind} backup failed ({}):\n    {}", s.name, out.stderr.trim(), last_lines(&journal, 12).replace('\n', "\n    "));
    }
    let after = info(s, stanza).await?;
    after
        .backups
        .into_iter()
        .filter(|b| !before.contains(&b.label))
        .max_by_key(|b| b.stop)
        .ok_or_else(|| anyhow!("{}: {unit} ended well but pgbackrest info shows no new backup", s.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = r#"[{"archive":[{"database":{"id":1,"repo-key":1},"id":"15-1","max":"000000010000000000000009","min":"000000010000000000000003"}],
      "backup":[
        {"archive":{"start":"000000010000000000000003","stop":"000000010000000000000003"},"error":false,
         "info":{"delta":30000000,"repository":{"delta":4000000,"size":4000000},"size":30000000},"label":"20261128-190000F",
         "prior":null,"timestamp":{"start":1764356400,"stop":1764356410},"type":"full"},
        {"archive":{"start":"000000010000000000000007","stop":"000000010000000000000007"},"error":false,
         "info":{"delta":100000,"repository":{"delta":20000,"size":4100000},"size":30100000},"label":"20261128-190000F_20261128-191000D",
         "prior":"20261128-190000F","timestamp":{"start":1764357000,"stop":1764357003},"type":"diff"}],
      "cipher":"aes-256-cbc","name":"main","repo":[{"cipher":"aes-256-cbc","key":1,"status":{"code":0,"message":"ok"}}],
      "status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]"#;

    #[test]
    fn reads_backups_and_the_wal_range() {
        let i = parse_info(INFO, "main").unwrap();
        assert_eq!(i.backups.len(), 2);
        assert_eq!(i.newest().unwrap().kind, "diff");
        assert_eq!(i.oldest().unwrap().label, "20261128-190000F");
        assert_eq!(i.newest().unwrap().prior.as_deref(), Some("20261128-190000F"));
        assert_eq!(i.wal_max.as_deref(), Some("000000010000000000000009"));
        assert_eq!(i.cipher, "aes-256-cbc");
        assert!(i.stanza_exists() && !i.backup_running);
    }

    #[test]
    fn an_unknown_stanza_is_an_error() {
        assert!(parse_info(INFO, "other").is_err());
    }

    #[test]
    fn reads_the_running_percentage() {
        assert_eq!(running_percent("stanza: main\n    status: ok (backup/expire running - 34.12% complete)\n"), Some(34.12));
        assert_eq!(running_percent("status: ok\n"), None);
    }
}
