//! `rigger drill`: a failover drill. Writes a numbered row through the HAProxy
//! write port every 100 ms, pulls the plug on the Patroni leader's machine,
//! measures how long until a write succeeds again (the RTO), checks that no
//! acknowledged row was lost, powers the machine back on and waits until it
//! streams again as a replica.

use crate::cli::DrillCmd;
use crate::project::Project;
use crate::cloud::providers::Power;
use crate::state::StateStore;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;
use tokio_postgres_rustls::MakeRustlsConnect;

/// TLS to PostgreSQL, verified against the project CA, when the plan has TLS on
/// (pg_hba then refuses plaintext across the network).
static PG_TLS: std::sync::OnceLock<Option<MakeRustlsConnect>> = std::sync::OnceLock::new();

/// What the architecture documents expect for a PostgreSQL failover.
const EXPECTED_RTO: (f64, f64) = (30.0, 60.0);

#[derive(Default)]
struct WriterLog {
    /// Row ids whose INSERT was acknowledged, with when.
    committed: Vec<(i64, Instant)>,
    /// When writes failed.
    failures: Vec<Instant>,
}

pub async fn run(args: &DrillCmd, state_override: Option<&Path>) -> Result<i32> {
    let project = Project::load(&args.plan, state_override)?;
    let plan = &project.plan;
    let provider = project.provider()?;
    let store = StateStore::open(&project.state_path, "rigger drill")?;
    let mut state = store
        .load()?
        .ok_or_else(|| anyhow!("nothing was applied for project {} yet", plan.project))?;
    if let Some(n) = args.rounds {
        return super::drill_rounds::run(
            &project,
            provider.as_ref(),
            &store,
            &mut state,
            args.shutdown,
            n,
        )
        .await;
    }
    let r = crash_round(
        &project,
        provider.as_ref(),
        &store,
        &mut state,
        args.shutdown,
    )
    .await?;
    let rto = r.rto?;
    println!();
    println!("RTO (write port unavailable): {:.1}s — the architecture documents expect {:.0}–{:.0}s ({})", rto.as_secs_f64(), EXPECTED_RTO.0, EXPECTED_RTO.1, verdict(rto.as_secs_f64()));
    println!(
        "acknowledged writes: {}, lost: {}",
        r.committed,
        r.lost.len()
    );
    match &r.rejoined {
        Ok(secs) => println!(
            "old leader {}: back as a streaming replica {secs:.1}s after power-on",
            r.leader
        ),
        Err(e) => println!("old leader {}: did NOT rejoin: {e:#}", r.leader),
    }
    if !r.lost.is_empty() {
        println!("lost rows {:?}: asynchronous replication lost acknowledged commits — set services.patroni.synchronous_mode: true to trade latency for none", r.lost);
        return Ok(1);
    }
    r.rejoined?;
    Ok(0)
}

/// One crash of the leader's machine, measured.
pub struct CrashRound {
    pub leader: String,
    /// From the kill to the first acknowledged write after writes failed.
    pub rto: Result<Duration>,
    pub committed: usize,
    pub lost: Vec<i64>,
    /// Seconds from power-on until the old leader streams as a replica.
    pub rejoined: Result<f64>,
}

/// Where the drill writes: the VIP (or the first HAProxy) and the write port.
pub fn write_target(project: &Project, state: &crate::state::State) -> Result<(String, String)> {
    let plan = &project.plan;
    let front = plan
        .setting(keepalived::NAME, "vip")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| {
            plan.hosts_with_role(haproxy::NAME)
                .next()
                .map(|h| h.ip.to_string())
        })
        .ok_or_else(|| anyhow!("the plan has no HAProxy host to write through"))?;
    let port = plan.int_setting(haproxy::NAME, "write_port");
    let password = state
        .secrets
        .get("postgres_superuser_password")
        .cloned()
        .ok_or_else(|| anyhow!("no superuser password in the state"))?;
    let tls = match state.secrets.get(crate::pki::CA_CERT).filter(|_| plan.security.tls) {
        Some(ca) => Some(MakeRustlsConnect::new(crate::pki::client_config(ca)?)),
        None => None,
    };
    let sslmode = if tls.is_some() { "require" } else { "disable" };
    let _ = PG_TLS.set(tls);
    Ok((
        format!("host={front} port={port} user=postgres dbname=postgres connect_timeout=2 sslmode={sslmode}"),
        password,
    ))
}

/// A numbered row through the write port every 100 ms, until finished.
pub struct Writer {
    conninfo: String,
    password: String,
    log: Arc<Mutex<WriterLog>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub async fn start(conninfo: &str, password: &str) -> Result<Writer> {
        let setup = connect(conninfo, password)
            .await
            .context("cannot connect through the write port")?;
        setup.batch_execute("CREATE TABLE IF NOT EXISTS rigger_drill (id bigint PRIMARY KEY, at timestamptz DEFAULT now()); TRUNCATE rigger_drill;").await?;
        drop(setup);
        let log = Arc::new(Mutex::new(WriterLog::default()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = tokio::spawn(write_loop(
            conninfo.to_string(),
            password.to_string(),
            log.clone(),
            stop.clone(),
        ));
        let w = Writer {
            conninfo: conninfo.to_string(),
            password: password.to_string(),
            log,
            stop,
            task,
        };
        wait_until(Duration::from_secs(30), || w.committed() >= 10)
            .await
            .context("writes do not succeed before the drill")?;
        Ok(w)
    }

    pub fn committed(&self) -> usize {
        self.log.lock().map(|l| l.committed.len()).unwrap_or(0)
    }

    /// A few more writes, then stop; returns (acknowledged, lost row ids).
    pub async fn finish(self) -> Result<(usize, Vec<i64>)> {
        let target = self.committed() + 5;
        let _ = wait_until(Duration::from_secs(30), || self.committed() >= target).await;
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.task.await;
        let check = connect(&self.conninfo, &self.password)
            .await
            .context("cannot connect to count the rows")?;
        let rows = check.query("SELECT id FROM rigger_drill", &[]).await?;
        let present: std::collections::BTreeSet<i64> =
            rows.iter().map(|r| r.get::<_, i64>(0)).collect();
        check
            .batch_execute("DROP TABLE IF EXISTS rigger_drill")
            .await
            .ok();
        let l = self
            .log
            .lock()
            .map_err(|_| anyhow!("writer log poisoned"))?;
        Ok((
            l.committed.len(),
            l.committed
                .iter()
                .map(|(id, _)| *id)
                .filter(|id| !present.contains(id))
                .collect(),
        ))
    }

    /// The longest time between two acknowledged writes after `since`.
    pub fn longest_gap_since(&self, since: Instant) -> Duration {
        self.longest_gap_window(since)
            .map(|(a, b)| b.duration_since(a))
            .unwrap_or_default()
    }

    /// The two acknowledged writes (or `since` and the first one) around the
    /// longest gap after `since`: where a switchover's gap sits on its timeline.
    pub fn longest_gap_window(&self, since: Instant) -> Option<(Instant, Instant)> {
        let l = self.log.lock().ok()?;
        let times: Vec<Instant> = l.committed.iter().map(|(_, t)| *t).collect();
        times
            .windows(2)
            .filter(|w| w[1] > since)
            .map(|w| (w[0].max(since), w[1]))
            .max_by_key(|(a, b)| b.duration_since(*a))
    }

    pub async fn recovery_after(&self, kill_at: Instant, limit: Duration) -> Result<Duration> {
        wait_for_recovery(&self.log, kill_at, limit).await
    }
}

/// Kill (or shut down) the leader's machine while writing; measure; power it on again.
pub async fn crash_round(
    project: &Project,
    provider: &dyn crate::cloud::providers::Provider,
    store: &StateStore,
    state: &mut crate::state::State,
    shutdown: bool,
) -> Result<CrashRound> {
    let status = super::status::gather(project, state).await?;
    if !status.healthy() {
        bail!("the stack is not healthy before the drill — see `rigger status`; a drill needs a healthy cluster to mean anything");
    }
    let leader = status
        .patroni
        .iter()
        .find(|m| m.role == "leader")
        .map(|m| m.name.clone())
        .ok_or_else(|| anyhow!("no Patroni leader"))?;
    let (conninfo, password) = write_target(project, state)?;
    println!("drill: writing through the write port; the leader is {leader}");
    let writer = Writer::start(&conninfo, &password).await?;

    // Pull the plug on the leader.
    let live = state
        .resources
        .values()
        .find(|r| r.address.kind == crate::cloud::resource::Kind::Machine && r.address.name == leader)
        .cloned()
        .ok_or_else(|| anyhow!("{leader} is not in the state"))?;
    let events = rigger_events::Events::silent();
    let kill_at = Instant::now();
    let killed = provider
        .power(
            &live,
            if shutdown {
                Power::Shutdown
            } else {
                Power::Kill
            },
            &events,
        )
        .await?;
    println!(
        "drill: {} {leader} ({:.1}s)",
        if shutdown { "shut down" } else { "killed" },
        kill_at.elapsed().as_secs_f64()
    );
    state.resources.insert(killed.address.clone(), killed);
    store.save(state)?;

    let rto = writer
        .recovery_after(kill_at, Duration::from_secs(180))
        .await;
    let (committed, lost) = writer.finish().await?;

    // Power the old leader back on; it must come back as a streaming replica.
    let rejoin_at = Instant::now();
    let back = provider
        .power(&state.resources[&live.address], Power::Start, &events)
        .await?;
    state.resources.insert(back.address.clone(), back);
    store.save(state)?;
    let rejoined = wait_rejoined(project, state, &leader, Duration::from_secs(240))
        .await
        .map(|_| rejoin_at.elapsed().as_secs_f64());
    Ok(CrashRound {
        leader,
        rto,
        committed,
        lost,
        rejoined,
    })
}

use std::path::Path;
use crate::hosts::roles::{haproxy, keepalived};

fn verdict(secs: f64) -> &'static str {
    if secs < EXPECTED_RTO.0 {
        "better than expected"
    } else if secs <= EXPECTED_RTO.1 {
        "as expected"
    } else {
        "slower than expected"
    }
}

async fn connect(conninfo: &str, password: &str) -> Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = conninfo.parse()?;
    config.password(password);
    if let Some(Some(tls)) = PG_TLS.get() {
        // sslmode=require with a connector that verifies the CA and the host name: verify-full.
        let (client, connection) = config.connect(tls.clone()).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        return Ok(client);
    }
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn write_loop(conninfo: String, password: String, log: Arc<Mutex<WriterLog>>, stop: Arc<std::sync::atomic::AtomicBool>) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut next_id: i64 = 1;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = tokio::time::timeout(Duration::from_secs(3), connect(&conninfo, &password)).await.ok().and_then(Result::ok);
        }
        let ok = match &client {
            Some(c) => matches!(tokio::time::timeout(Duration::from_secs(2), c.execute("INSERT INTO rigger_drill (id) VALUES ($1)", &[&next_id])).await, Ok(Ok(1))),
            None => false,
        };
        if let Ok(mut l) = log.lock() {
            if ok {
                l.committed.push((next_id, Instant::now()));
            } else {
                l.failures.push(Instant::now());
                client = None;
            }
        }
        next_id += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_until(limit: Duration, cond: impl Fn() -> bool) -> Result<()> {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > limit {
            bail!("not reached within {}s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn wait_for_recovery(log: &Arc<Mutex<WriterLog>>, kill_at: Instant, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if let Ok(l) = log.lock() {
            let first_failure = l.failures.iter().copied().find(|t| *t >= kill_at);
            if let Some(ff) = first_failure {
                if let Some((_, t)) = l.committed.iter().find(|(_, t)| *t > ff) {
                    return Ok(t.duration_since(kill_at));
                }
            } else if l.committed.iter().filter(|(_, t)| *t > kill_at).count() > 20 {
                // Never failed: the kill did not interrupt writes at all.
                return Ok(Duration::ZERO);
            }
        }
        if start.elapsed() > limit {
            bail!("writes did not come back within {}s of the kill", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_rejoined(project: &Project, state: &crate::state::State, name: &str, limit: Duration) -> Result<()> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        match super::status::gather(project, state).await {
            Ok(s) => {
                let me = s.patroni.iter().find(|m| m.name == name);
                match me {
                    Some(m) if m.role != "leader" && m.streaming => return Ok(()),
                    Some(m) => last = format!("{} {}, streaming: {}", m.role, m.state, m.streaming),
                    None => last = "not in the cluster yet".into(),
                }
            }
            Err(e) => last = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    bail!("{name} did not rejoin as a streaming replica within {}s — last seen: {last}", limit.as_secs())
}
