//! `rigger drill restore`: proves a point-in-time restore end to end. Writes
//! numbered rows, notes the server's time T, writes more rows and drops a
//! table, restores the whole cluster to T, then checks that exactly the rows
//! written before T are there and the dropped table is back; reports the
//! restore's RTO, the data size and the restore throughput.

use super::restore::{self, Target};
use crate::cli::PlanArg;
use crate::project::Project;
use crate::hosts::roles::backup;
use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use std::time::Duration;
use crate::hosts::remote::session::HostSession;
use crate::hosts::roles::patroni;

/// Rows written before T, rows written after it, rows of the table dropped after it.
const BEFORE: i64 = 1000;
const AFTER: i64 = 500;
const KEPT: i64 = 100;

pub async fn run(args: &PlanArg, state_override: Option<&Path>) -> Result<i32> {
    let project = Project::load(&args.plan, state_override)?;
    let plan = &project.plan;
    backup::require_repo(plan)?;
    let Some(state) = crate::state::read_state(&project.state_path)? else {
        bail!("nothing was applied for project {} yet — run `rigger apply {}` first", plan.project, args.plan.display());
    };
    let status = super::status::gather(&project, &state).await?;
    if !status.healthy() {
        bail!("the stack is not healthy before the drill — see `rigger status`; a restore drill needs a healthy cluster to mean anything");
    }
    let leader = status.patroni.iter().find(|m| m.role == "leader").map(|m| m.name.clone()).ok_or_else(|| anyhow!("no Patroni leader"))?;
    let config = crate::hosts::remote::ssh_config_path(&project);
    let port = plan.int_setting(patroni::NAME, "port");
    let db = HostSession::connect(&config, &leader).await.context("cannot reach the leader")?;
    println!("drill restore: writing on the leader {leader}");
    sql(
        &db,
        port,
        &format!(
            "DROP TABLE IF EXISTS rigger_pitr_rows, rigger_pitr_kept;
             CREATE TABLE rigger_pitr_rows (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());
             CREATE TABLE rigger_pitr_kept (id int PRIMARY KEY);
             INSERT INTO rigger_pitr_kept SELECT generate_series(1, {KEPT});"
        ),
    )
    .await?;
    write_rows(&db, port, 1, BEFORE).await?;
    let t = sql(&db, port, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')").await?;
    let t = restore::parse_time(&t)?;
    println!("drill restore: {BEFORE} rows and a table of {KEPT} written; T = {}", t.format("%Y-%m-%d %H:%M:%S%.6f UTC"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    write_rows(&db, port, BEFORE + 1, BEFORE + AFTER).await?;
    sql(&db, port, "DROP TABLE rigger_pitr_kept").await?;
    println!("drill restore: after T, {AFTER} more rows written and rigger_pitr_kept dropped; restoring to T");
    db.close().await;

    let report = restore::restore(&project, &Target::Time(t), true, false).await?.ok_or_else(|| anyhow!("the restore was not carried out"))?;
    restore::print_report(&report);

    let db = HostSession::connect(&config, &report.leader).await.context("cannot reach the restored leader")?;
    let row = sql(&db, port, "SELECT count(*), coalesce(min(id), 0), coalesce(max(id), 0) FROM rigger_pitr_rows").await?;
    let n: Vec<i64> = row.split('|').filter_map(|x| x.trim().parse().ok()).collect();
    let (count, min, max) = match n[..] {
        [c, lo, hi] => (c, lo, hi),
        _ => bail!("unexpected answer counting the rows: {row:?}"),
    };
    let kept: Option<i64> = sql(&db, port, "SELECT count(*) FROM rigger_pitr_kept").await.ok().and_then(|v| v.trim().parse().ok());
    sql(&db, port, "DROP TABLE IF EXISTS rigger_pitr_rows, rigger_pitr_kept").await.ok();
    db.close().await;

    let rows_ok = count == BEFORE && min == 1 && max == BEFORE;
    let kept_ok = kept == Some(KEPT);
    let replicas_ok = report.replicas.values().all(|from_repo| *from_repo);
    println!();
    println!("rows written before T: {BEFORE}; after the restore: {count} (ids {min}..{max}) — {}", if rows_ok { "exactly those" } else { "WRONG" });
    println!("rows written after T: {AFTER}; after the restore: {} — {}", (count - BEFORE).max(0), if max <= BEFORE { "gone, as they must be" } else { "STILL THERE" });
    match kept {
        Some(n) => println!("table dropped after T: back with {n} of {KEPT} rows — {}", if kept_ok { "ok" } else { "WRONG" }),
        None => println!("table dropped after T: NOT back"),
    }
    println!(
        "RTO: writes again {:.1}s after Patroni was stopped, every gate passed after {:.1}s; data {} restored in {:.1}s ({}/s)",
        report.writable_secs,
        report.total_secs,
        super::backup::human_size(report.data_bytes),
        report.restore_secs,
        super::backup::human_size((report.data_bytes as f64 / report.restore_secs.max(0.001)) as u64)
    );
    if !replicas_ok {
        println!("replicas NOT rebuilt from the repository: {:?}", report.replicas.iter().filter(|(_, v)| !**v).map(|(k, _)| k).collect::<Vec<_>>());
    }
    Ok(if rows_ok && kept_ok && replicas_ok { 0 } else { 1 })
}

/// SQL on a member as postgres over the local socket (peer authentication:
/// no password, whatever pg_hba grants the network), statements on stdin.
async fn sql(s: &HostSession, port: u64, statements: &str) -> Result<String> {
    let out = s.sudo(&format!("cd /tmp && runuser -u postgres -- psql -h /var/run/postgresql -p {port} -XAtq -v ON_ERROR_STOP=1"), Some(statements.as_bytes())).await?;
    if !out.ok() {
        bail!("{}: psql failed: {}", s.name, out.stderr.trim());
    }
    Ok(out.stdout.trim().to_string())
}

/// Rows `from..=to`, 100 per committed transaction.
async fn write_rows(s: &HostSession, port: u64, from: i64, to: i64) -> Result<()> {
    let mut start = from;
    let mut script = String::new();
    while start <= to {
        let end = (start + 99).min(to);
        script.push_str(&format!("INSERT INTO rigger_pitr_rows (id) SELECT generate_series({start}, {end});\n"));
        start = end + 1;
    }
    sql(s, port, &script).await.map(|_| ())
}
