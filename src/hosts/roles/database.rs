//! An application's database and login role, created on the Patroni leader
//! (via psql as postgres over its local socket) before the application
//! starts. Idempotent: when the role can already log in to its database with
//! the state's password, nothing is written.

use crate::hosts::run::{wait_for, RoleRun};
use crate::plan::model::{Host, Plan};
use crate::hosts::remote::ahead::Ask;
use crate::hosts::remote::session::HostSession;
use anyhow::{anyhow, bail, Result};
use std::time::Duration;
use super::patroni;

use crate::plan::setting_text::identifier_ok;

fn rest_port(plan: &Plan) -> u64 {
    plan.int_setting(patroni::NAME, "rest_port")
}

fn pg_port(plan: &Plan) -> u64 {
    plan.int_setting(patroni::NAME, "port")
}

/// Does this member hold the leader lock (`/primary` answers 200)?
fn primary_ask(plan: &Plan) -> Ask {
    Ask::sudo(super::rest_auth::local_curl(rest_port(plan), "-o /dev/null -m 3 -w '%{http_code}'", "/primary"), None)
}

/// Can `user` log in to `database` with `password` (on stdin, not in argv)?
fn login_ask(plan: &Plan, database: &str, user: &str, password: &str) -> Ask {
    let pg_port = pg_port(plan);
    Ask::sudo(
        format!("read -r PGPASSWORD; export PGPASSWORD; {} -h 127.0.0.1 -p {pg_port} -U {user} -d {database} -Atc 'select 1' 2>&1", patroni::psql_bin(plan)),
        Some(format!("{password}\n").as_bytes()),
    )
}

/// `ensure`'s checks on a Patroni member, asked ahead in the facts round
/// trip (the leader is not known before: every member is asked). The very
/// commands `ensure` runs, so an answer stands in for the live one.
pub fn gate_asks(plan: &Plan, host: &Host, database: &str, user: &str, password: &str) -> Vec<Ask> {
    if !host.has_role(patroni::NAME) || password.is_empty() {
        return vec![];
    }
    // Only a member that may lead is asked /primary ahead (`leader` asks
    // those with an answer first), and the login is the leader's.
    vec![primary_ask(plan).skip_unless(patroni::leader_guess(plan)), login_ask(plan, database, user, password).skip_unless(patroni::leader_guess(plan))]
}

/// The Patroni member that holds the leader lock now.
pub async fn leader<'a>(run: &RoleRun<'a>) -> Result<&'a HostSession> {
    let ask = primary_ask(run.plan);
    let mut members: Vec<String> = run.plan.hosts_with_role(patroni::NAME).map(|h| h.name.clone()).collect();
    if members.is_empty() {
        bail!("the plan has no patroni hosts — role {} needs a database", run.role);
    }
    // Members answered ahead first: the leader is among them, and a replica
    // asked before it would cost a live round trip.
    let ready = |m: &String| run.session(m).is_ok_and(|s| s.has_answer_ahead(&ask));
    members.sort_by_key(|m| !ready(m));
    let name = wait_for("a Patroni leader to create the database on", Duration::from_secs(60), || async {
        for m in &members {
            let s = run.session(m)?;
            let out = s.sudo(&ask.script, None).await?;
            if out.stdout.trim() == "200" {
                return Ok(Ok(m.clone()));
            }
        }
        Ok(Err("no member answers 200 on /primary".to_string()))
    })
    .await?;
    run.session(&name)
}

/// Make sure `user` (password `password`) owns database `database`.
pub async fn ensure(run: &RoleRun<'_>, database: &str, user: &str, password: &str) -> Result<()> {
    for (what, v) in [("database", database), ("user", user)] {
        if !identifier_ok(v) {
            bail!("{what} name {v:?} of role {}: use lowercase letters, digits and _ (PostgreSQL identifier without quoting)", run.role);
        }
    }
    if password.is_empty() {
        bail!("no password for database user {user} in the state");
    }
    let s = leader(run).await?;
    let pg_port = pg_port(run.plan);
    // Can it log in already?
    let login = login_ask(run.plan, database, user, password);
    let probe = s.sudo(&login.script, login.stdin.as_deref()).await?;
    if probe.ok() && probe.stdout.trim() == "1" {
        return Ok(());
    }
    run.events.progress(&format!("{} {}", run.role, s.name), format!("creating database {database} owned by {user} on the leader"));
    let literal = password.replace('\'', "''");
    // The password is in the statement: should it fail, PostgreSQL would log
    // the statement (log_min_error_statement) where the journal's readers see it.
    let sql = format!(
        "SET log_statement = 'none';\nSET log_min_error_statement = 'panic';\nSET log_min_duration_statement = -1;\n\
         SELECT 'CREATE ROLE {user} LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}')\\gexec\n\
         ALTER ROLE {user} WITH LOGIN PASSWORD '{literal}';\n\
         SELECT 'CREATE DATABASE {database} OWNER {user}' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{database}')\\gexec\n"
    );
    let out = s.sudo(&format!("cd / && runuser -u postgres -- psql -h /var/run/postgresql -p {pg_port} -d postgres -q -v ON_ERROR_STOP=1 2>&1"), Some(sql.as_bytes())).await?;
    if !out.ok() {
        // psql echoes failing statements: keep the password out of the error.
        return Err(anyhow!("{}: creating database {database} / user {user} failed: {}", s.name, out.stdout.replace(&literal, "(sensitive)").trim()));
    }
    Ok(())
}
