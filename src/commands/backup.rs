//! `rigger backup` (one pgBackRest backup now, through the same systemd unit
//! the timers start) and `rigger backups` (the repository's backups, from
//! `pgbackrest info --output=json`).

use crate::cli::{BackupCmd, BackupsCmd};
use crate::project::Project;
use crate::hosts::remote::session::HostSession;
use crate::hosts::roles::{backup, pgbackrest};
use crate::ui::printer::Printer;
use anyhow::{bail, Result};
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// The project and a session to its repository host.
pub async fn open_repo(plan_path: &Path, state_override: Option<&Path>) -> Result<(Project, HostSession)> {
    let project = Project::load(plan_path, state_override)?;
    let repo = backup::require_repo(&project.plan)?.name.clone();
    let Some(state) = crate::state::read_state(&project.state_path)? else {
        bail!("nothing was applied for project {} yet — run `rigger apply {}` first", project.plan.project, plan_path.display());
    };
    if !state.machines().any(|m| m.address.name == repo) {
        bail!("the backup host {repo} is not built yet — run `rigger apply {}` first", plan_path.display());
    }
    let session = HostSession::connect(&crate::hosts::remote::ssh_config_path(&project), &repo).await?;
    Ok((project, session))
}

pub async fn run_backup(args: &BackupCmd, state_override: Option<&Path>, verbose: bool) -> Result<i32> {
    let (project, s) = open_repo(&args.plan, state_override).await?;
    let stanza = backup::stanza(&project.plan);
    let kind = args.kind.as_str();
    let (events, printer) = Printer::start(verbose);
    let subject = format!("backup {}", s.name);
    let started = Instant::now();
    events.started(&subject, &format!("{kind} backup of {stanza}"));
    let result = pgbackrest::backup(&s, &stanza, kind, &events, &subject).await;
    match &result {
        Ok(_) => events.finished(&subject, "backup done", started),
        Err(e) => events.failed(&subject, "backup", &format!("{e:#}")),
    }
    drop(events);
    printer.finish().await;
    s.close().await;
    let b = result?;
    println!(
        "\nBackup {} ({}): database {}, {} added to the repository, {:.1}s, WAL {} … {}",
        b.label,
        b.kind,
        human_size(b.size),
        human_size(b.repo_size),
        started.elapsed().as_secs_f64(),
        b.wal_start,
        b.wal_stop
    );
    Ok(0)
}

pub async fn run_backups(args: &BackupsCmd, state_override: Option<&Path>) -> Result<i32> {
    let (project, s) = open_repo(&args.plan, state_override).await?;
    let stanza = backup::stanza(&project.plan);
    let info = pgbackrest::info(&s, &stanza).await;
    s.close().await;
    let info = info?;
    if args.json {
        let mut doc = serde_json::to_value(&info)?;
        doc["format_version"] = json!("1");
        for b in doc["backups"].as_array_mut().into_iter().flatten() {
            for k in ["start", "stop"] {
                let t = b[k].as_i64().unwrap_or(0);
                b[format!("{k}_time")] = json!(utc(t));
            }
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    print!("{}", render(&info));
    Ok(0)
}

pub fn render(info: &pgbackrest::StanzaInfo) -> String {
    let mut out = format!(
        "stanza {}: {}{}, WAL archive {} … {}\n",
        info.stanza,
        info.status,
        if info.cipher.is_empty() || info.cipher == "none" { ", NOT encrypted".to_string() } else { format!(", encrypted ({})", info.cipher) },
        info.wal_min.as_deref().unwrap_or("-"),
        info.wal_max.as_deref().unwrap_or("-")
    );
    if info.backup_running {
        out.push_str("a backup is running now\n");
    }
    if info.backups.is_empty() {
        out.push_str("no backups yet — `rigger backup` takes one\n");
        return out;
    }
    out.push_str(&format!("{:<36} {:<5} {:<20} {:>8} {:>10} {:>10}  WAL\n", "LABEL", "TYPE", "STOPPED (UTC)", "TOOK", "DB SIZE", "ADDED"));
    let mut backups = info.backups.clone();
    backups.sort_by_key(|b| b.stop);
    for b in &backups {
        out.push_str(&format!(
            "{:<36} {:<5} {:<20} {:>7}s {:>10} {:>10}  {} … {}\n",
            b.label,
            b.kind,
            utc(b.stop),
            b.stop - b.start,
            human_size(b.size),
            human_size(b.repo_size),
            b.wal_start,
            b.wal_stop
        ));
    }
    out
}

pub fn utc(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0).map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()
}

pub fn human_size(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
