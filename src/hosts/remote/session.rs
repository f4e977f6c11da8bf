//! One session per host: what the config phase and the roles run their
//! scripts through. Beneath it sits a `Transport` (remote::transport): one
//! multiplexed SSH master per host in real runs, a scripted host in tests.

use super::ahead::{Ask, FRESH};
use super::transport::{As, SshTransport, Transport};
use anyhow::{anyhow, bail, Context, Result};
use openssh::{KnownHosts, SessionBuilder};
use std::path::Path;
use std::time::Duration;

/// How long a remote command may run when its caller says nothing else
/// (`HostSession::within` gives longer): a restart waits at most for a
/// unit's stop and start (systemd's default is 90 s each), a check answers in
/// seconds. Past it, a command hangs (apt waiting on a lock, a unit whose
/// start never ends, a stuck psql) and is ended on the host.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(5 * 60);

/// Package installs: apt-get and dpkg over the network (the hosts' mirror,
/// `docker pull`, pip from an index) or from uploaded wheels and .debs.
pub const INSTALL_LIMIT: Duration = Duration::from_secs(30 * 60);

/// Uploads of large artifacts streamed to a host and unpacked there (wheels,
/// Saleor's source, Node, the Storefront and dashboard builds: hundreds of MB
/// through a bastion).
pub const UPLOAD_LIMIT: Duration = Duration::from_secs(30 * 60);

/// Builds run on a host (the Storefront's `build_command`: a pnpm install and
/// a Next.js production build, many minutes on a small machine).
pub const BUILD_LIMIT: Duration = Duration::from_secs(60 * 60);

/// Every limit is at least this many seconds when set (a restore of a large
/// database, a slow mirror): `RIGGER_COMMAND_TIMEOUT=<seconds>`.
pub const LIMIT_ENV: &str = "RIGGER_COMMAND_TIMEOUT";

/// A command past its limit is sent TERM on the host (its whole process
/// group), and KILL this long after if it is still there.
pub const KILL_AFTER: Duration = Duration::from_secs(10);

/// The client waits this long past a command's limit for the host to report
/// it ended; after that the connection (or the host) is taken to hang.
pub const NO_ANSWER_GRACE: Duration = Duration::from_secs(30);

pub struct HostSession {
    pub name: String,
    transport: Box<dyn Transport>,
    /// Answers asked ahead in the facts round trip (see remote::ahead), with
    /// when they were handed over; each is used once.
    ahead: std::sync::Mutex<Option<(std::time::Instant, Vec<(Ask, RunOutput)>)>>,
}

/// What a remote command did.
#[derive(Debug, Clone)]
pub struct RunOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

impl HostSession {
    /// Open the master connection to `name` as the project ssh_config describes it.
    pub async fn connect(config: &Path, name: &str) -> Result<HostSession> {
        let persist = super::persist::idle_seconds();
        let keep_as = persist.map(|_| super::persist::record_path(config, name));
        if let Some(record) = &keep_as {
            if let Some(session) = super::persist::resume(record).await {
                return Ok(HostSession::over(name, Box::new(SshTransport { name: name.to_string(), session, keep_as, handoff_dir: None })));
            }
        }
        // The master `wait_for_ssh` just opened (same config, host key verified).
        if let Some((session, dir)) = super::persist::take_handoff(&super::persist::handoff_record(config, name)).await {
            tracing::debug!(host = name, "ssh master taken over from the SSH wait");
            return Ok(HostSession::over(name, Box::new(SshTransport { name: name.to_string(), session, keep_as, handoff_dir: Some(dir) })));
        }
        let mut b = SessionBuilder::default();
        b.config_file(config)
            .known_hosts_check(KnownHosts::Strict)
            .connect_timeout(Duration::from_secs(10))
            .server_alive_interval(Duration::from_secs(15))
            .control_directory(std::env::temp_dir());
        if let Some(idle) = persist {
            b.control_persist(openssh::ControlPersist::IdleFor(idle));
        }
        let started = std::time::Instant::now();
        let session = b.connect_mux(name).await.map_err(|e| anyhow!("{name}: cannot open SSH: {e}"))?;
        tracing::debug!(host = name, ms = started.elapsed().as_millis() as u64, "ssh master up");
        Ok(HostSession::over(name, Box::new(SshTransport { name: name.to_string(), session, keep_as, handoff_dir: None })))
    }

    /// A session for host `name` over any transport (tests: a scripted host).
    pub fn over(name: &str, transport: Box<dyn Transport>) -> HostSession {
        HostSession { name: name.to_string(), transport, ahead: Default::default() }
    }

    /// Hand over answers asked ahead: the next run of each of those commands
    /// (same script, user and stdin) within `FRESH` reads its answer.
    pub fn answer_ahead(&self, answers: Vec<(Ask, RunOutput)>) {
        if let Ok(mut a) = self.ahead.lock() {
            *a = Some((std::time::Instant::now(), answers));
        }
    }

    /// Whether `ask` has a fresh answer waiting (its next run costs no round trip).
    pub fn has_answer_ahead(&self, ask: &Ask) -> bool {
        let Ok(guard) = self.ahead.lock() else { return false };
        guard.as_ref().is_some_and(|(at, answers)| at.elapsed() <= FRESH && answers.iter().any(|(a, _)| a.root == ask.root && a.script == ask.script && a.stdin == ask.stdin))
    }

    fn answered(&self, root: bool, script: &str, stdin: Option<&[u8]>) -> Option<RunOutput> {
        let mut guard = self.ahead.lock().ok()?;
        let (at, answers) = guard.as_mut()?;
        if at.elapsed() > FRESH {
            *guard = None;
            return None;
        }
        let i = answers.iter().position(|(a, _)| a.root == root && a.script == script && a.stdin.as_deref() == stdin)?;
        tracing::debug!(host = self.name.as_str(), command = trace_label(script), "answered ahead");
        Some(answers.swap_remove(i).1)
    }

    /// Run a shell script as root (sudo -n), optionally feeding `stdin`,
    /// within `COMMAND_LIMIT`.
    pub async fn sudo(&self, script: &str, stdin: Option<&[u8]>) -> Result<RunOutput> {
        self.within(COMMAND_LIMIT).sudo(script, stdin).await
    }

    /// Run a shell script as root with `input` streamed to its stdin (large
    /// uploads: nothing is held in memory), within `COMMAND_LIMIT` (an upload
    /// of a large artifact says `within(UPLOAD_LIMIT)`).
    pub async fn sudo_stream(&self, script: &str, input: impl tokio::io::AsyncRead + Unpin + Send) -> Result<RunOutput> {
        self.within(COMMAND_LIMIT).sudo_stream(script, input).await
    }

    /// Run a shell script as the SSH user, within `COMMAND_LIMIT`.
    pub async fn sh(&self, script: &str) -> Result<RunOutput> {
        self.within(COMMAND_LIMIT).sh(script).await
    }

    /// Like `sudo`, but a non-zero exit is an error carrying the remote stderr.
    pub async fn sudo_ok(&self, what: &str, script: &str) -> Result<String> {
        self.within(COMMAND_LIMIT).sudo_ok(what, script).await
    }

    /// The same commands with a limit of their own, for work that is
    /// legitimately long (package installs, uploads, backups, restores).
    pub fn within(&self, limit: Duration) -> Within<'_> {
        Within { session: self, limit }
    }

    /// Run `run` (the transport running `script` with `limit` on the host)
    /// and wait for it at most a little past `limit`. Past the limit the
    /// host's `timeout` ends the command (exit 124, or 137 after KILL): that
    /// is an error naming the host, the command and the limit, as is a
    /// connection that brings no answer at all.
    async fn bounded(&self, script: &str, limit: Duration, run: impl std::future::Future<Output = Result<RunOutput>>) -> Result<RunOutput> {
        let started = tokio::time::Instant::now();
        let ms = || started.elapsed().as_millis() as u64;
        match tokio::time::timeout(limit + NO_ANSWER_GRACE, run).await {
            Err(_) => {
                tracing::debug!(host = self.name.as_str(), ms = ms(), command = trace_label(script), "no answer");
                bail!(
                    "{}: `{}` gave no answer within {} (its limit, {}, and {} for the host to report it ended) — the connection or the host hangs; \
                     the host ends the command at its limit if it still runs. Check that {} answers over SSH and is not overloaded; \
                     if the command is only slow, {LIMIT_ENV}=<seconds> gives every command at least that long",
                    self.name,
                    trace_label(script),
                    human(limit + NO_ANSWER_GRACE),
                    human(limit),
                    human(NO_ANSWER_GRACE),
                    self.name
                )
            }
            Ok(out) => {
                // RUST_LOG=rigger::hosts::remote=debug: every live round trip with its host
                // and duration (where a run's time goes).
                tracing::debug!(host = self.name.as_str(), ms = ms(), code = out.as_ref().map(|o| o.code).unwrap_or(-1), command = trace_label(script), "round trip");
                // A command that exits 124 by itself (an inner `timeout 8 psql`)
                // does so before the limit: only one that ran that long was ended.
                match out {
                    Ok(o) if matches!(o.code, 124 | 137) && started.elapsed() >= limit => bail!(
                        "{}: `{}` did not finish within {}, so it was ended on the host (TERM, then KILL after {}). \
                         If it is only slow (a large database, a slow package mirror), run again with {LIMIT_ENV}=<seconds> above {}; \
                         if it hangs, see what it waits for on {} (`ps -ef --forest`, `journalctl -n 50`)",
                        self.name,
                        trace_label(script),
                        human(limit),
                        human(KILL_AFTER),
                        limit.as_secs(),
                        self.name
                    ),
                    out => out,
                }
            }
        }
    }

    pub async fn close(self) {
        self.transport.close().await
    }
}

/// A session's commands with a limit of their own (`HostSession::within`).
#[derive(Clone, Copy)]
pub struct Within<'a> {
    session: &'a HostSession,
    limit: Duration,
}

impl Within<'_> {
    /// Run a shell script as root (sudo -n), optionally feeding `stdin`.
    pub async fn sudo(self, script: &str, stdin: Option<&[u8]>) -> Result<RunOutput> {
        if let Some(out) = self.session.answered(true, script, stdin) {
            return Ok(out);
        }
        self.run(As::Root, script, stdin).await
    }

    /// Run a shell script as root with `input` streamed to its stdin.
    pub async fn sudo_stream(self, script: &str, mut input: impl tokio::io::AsyncRead + Unpin + Send) -> Result<RunOutput> {
        let limit = self.limit()?;
        let s = self.session;
        s.bounded(script, limit, s.transport.run_streamed(script, &mut input, limit)).await
    }

    /// Run a shell script as the SSH user.
    pub async fn sh(self, script: &str) -> Result<RunOutput> {
        if let Some(out) = self.session.answered(false, script, None) {
            return Ok(out);
        }
        self.run(As::User, script, None).await
    }

    /// Like `sudo`, but a non-zero exit is an error carrying the remote stderr.
    pub async fn sudo_ok(self, what: &str, script: &str) -> Result<String> {
        let out = self.sudo(script, None).await?;
        if !out.ok() {
            bail!("{}: {what} failed (exit {}): {}", self.session.name, out.code, out.stderr.trim());
        }
        Ok(out.stdout)
    }

    async fn run(self, who: As, script: &str, stdin: Option<&[u8]>) -> Result<RunOutput> {
        let limit = self.limit()?;
        let s = self.session;
        s.bounded(script, limit, s.transport.run(who, script, stdin, limit)).await
    }

    /// The limit, raised to `RIGGER_COMMAND_TIMEOUT` when that is longer.
    fn limit(&self) -> Result<Duration> {
        raised(self.limit)
    }
}

/// Refuse a `RIGGER_COMMAND_TIMEOUT` that is not a number of seconds.
pub fn check_environment() -> Result<()> {
    raised(COMMAND_LIMIT).map(|_| ())
}

/// `limit` as a session applies it (raised by `RIGGER_COMMAND_TIMEOUT`), for
/// work a command hands on to a process of its own that the host's `timeout`
/// does not reach (a transient systemd unit's `RuntimeMaxSec`). A bad
/// variable is reported when the command runs.
pub fn effective(limit: Duration) -> Duration {
    raised(limit).unwrap_or(limit)
}

/// `limit`, raised to `RIGGER_COMMAND_TIMEOUT` when that is longer.
fn raised(limit: Duration) -> Result<Duration> {
    effective_limit(limit, std::env::var(LIMIT_ENV).ok().as_deref())
}

/// `limit`, or the floor `env` (seconds) gives when it is longer.
fn effective_limit(limit: Duration, env: Option<&str>) -> Result<Duration> {
    let Some(v) = env.map(str::trim).filter(|v| !v.is_empty()) else { return Ok(limit) };
    let floor: u64 = v.parse().ok().filter(|s| *s > 0).with_context(|| format!("{LIMIT_ENV}={v:?} is not a number of seconds — set it to how long a remote command may run at least (e.g. 7200), or unset it"))?;
    Ok(limit.max(Duration::from_secs(floor)))
}

/// A limit as people say it: `5 min`, `6 h`, `5 min 30 s`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    let parts = [(s / 3600, "h"), (s / 60 % 60, "min"), (s % 60, "s")];
    let said: Vec<String> = parts.iter().filter(|(n, _)| *n > 0).map(|(n, unit)| format!("{n} {unit}")).collect();
    if said.is_empty() {
        format!("{:.1} s", d.as_secs_f64())
    } else {
        said.join(" ")
    }
}

/// A command as a trace line or a deadline's error names it: its first
/// line that does some work (not a `set -e` preamble), cut short (secrets
/// travel on stdin, never in a script's text).
fn trace_label(script: &str) -> String {
    const MAX: usize = 120;
    let mut lines = script.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.clone().find(|l| !l.starts_with("set -")).or_else(|| lines.next()).unwrap_or("");
    match first.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &first[..cut]),
        None => first.to_string(),
    }
}

/// Quote a string for sh.
pub fn sh_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosts::remote::scripted::{fail, ok, Action, Hang, HostView, Rule, ScriptedHost};
    use tokio::time::Instant;

    /// Far past any limit here: a test whose command is not bounded fails
    /// at this instead of hanging.
    const NEVER: Duration = Duration::from_secs(7 * 24 * 3600);

    /// Whether `elapsed` (tokio's paused clock) is `at`, within its timer tick.
    fn about(elapsed: Duration, at: Duration) -> bool {
        elapsed >= at && elapsed < at + Duration::from_millis(10)
    }

    /// A command that never ends by itself (here apt waiting on a lock) is
    /// ended by the host's `timeout` at its limit, and the error names the
    /// host, the command, the limit and what to do.
    #[tokio::test(start_paused = true)]
    async fn a_command_that_never_ends_is_an_error_at_its_limit() {
        let host = ScriptedHost::new("db-1", HostView::default(), vec![]);
        host.hang("apt-get", Hang::UntilTheLimit);
        let s = host.session();
        let started = Instant::now();
        let ran = tokio::time::timeout(NEVER, s.sudo_ok("installing packages", "DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server 2>&1")).await.expect("bounded by the session");
        let err = format!("{:#}", ran.unwrap_err());
        assert!(about(started.elapsed(), COMMAND_LIMIT), "{:?}", started.elapsed());
        assert!(err.starts_with("db-1: `DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server 2>&1` did not finish within 5 min, so it was ended on the host"), "{err}");
        assert!(err.contains("RIGGER_COMMAND_TIMEOUT=<seconds> above 300") && err.contains("ps -ef --forest"), "{err}");
        // A longer limit of its own is what the host is told, and waited for.
        let started = Instant::now();
        let ran = tokio::time::timeout(NEVER, s.within(INSTALL_LIMIT).sudo("apt-get install -y x", None)).await.expect("bounded by the session");
        assert!(format!("{:#}", ran.unwrap_err()).contains("did not finish within 30 min"));
        assert!(about(started.elapsed(), INSTALL_LIMIT), "{:?}", started.elapsed());
        assert_eq!(host.sent().iter().map(|x| (x.limit, x.action.clone())).collect::<Vec<_>>(), [(COMMAND_LIMIT, Action::Hung), (INSTALL_LIMIT, Action::Hung)]);
    }

    /// A connection that brings nothing back (not even the host's end of
    /// the command) is given up a little after the limit, and said so.
    #[tokio::test(start_paused = true)]
    async fn a_command_that_gives_no_answer_is_an_error_shortly_after_its_limit() {
        let host = ScriptedHost::new("lb-1", HostView::default(), vec![]);
        host.hang("systemctl restart", Hang::Silent);
        let s = host.session();
        let started = Instant::now();
        let ran = tokio::time::timeout(NEVER, s.sh("systemctl restart haproxy")).await.expect("bounded by the session");
        let err = format!("{:#}", ran.unwrap_err());
        assert!(about(started.elapsed(), COMMAND_LIMIT + NO_ANSWER_GRACE), "{:?}", started.elapsed());
        assert!(err.starts_with("lb-1: `systemctl restart haproxy` gave no answer within 5 min 30 s (its limit, 5 min, and 30 s for the host to report it ended)"), "{err}");
        let started = Instant::now();
        let ran = tokio::time::timeout(NEVER, s.within(UPLOAD_LIMIT).sudo_stream("systemctl restart haproxy", std::io::Cursor::new(vec![1u8; 10]))).await.expect("bounded by the session");
        let err = format!("{:#}", ran.unwrap_err());
        assert!(about(started.elapsed(), UPLOAD_LIMIT + NO_ANSWER_GRACE), "{:?}", started.elapsed());
        assert!(err.contains("gave no answer within 30 min 30 s"), "{err}");
    }

    /// An ordinary command is answered as before, told the default limit; one
    /// that exits 124 by itself (an inner `timeout 8 psql` that gave up) is
    /// its output, not a deadline of rigger's.
    #[tokio::test(start_paused = true)]
    async fn a_normal_command_is_unaffected() {
        let rules = vec![Rule::new("login", "timeout 8 psql", |_, _| fail(124, "")), Rule::new("hello", "echo hi", |_, _| ok("hi\n"))];
        let host = ScriptedHost::new("app-1", HostView::default(), rules);
        let s = host.session();
        let started = Instant::now();
        assert_eq!(s.sh("echo hi").await.unwrap().stdout, "hi\n");
        assert_eq!(s.sudo_ok("greeting", "echo hi").await.unwrap(), "hi\n");
        let out = s.sudo("timeout 8 psql -c 'select 1'", None).await.unwrap();
        assert_eq!(out.code, 124);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(host.sent().iter().all(|x| x.limit == COMMAND_LIMIT), "{:?}", host.sent().iter().map(|x| x.limit).collect::<Vec<_>>());
    }

    #[test]
    fn a_command_is_named_by_its_first_working_line() {
        assert_eq!(trace_label("set -e\n  cd /opt && make\nmore"), "cd /opt && make");
        assert_eq!(trace_label("set -eu"), "set -eu");
        assert_eq!(trace_label(&"x".repeat(130)), format!("{}…", "x".repeat(120)));
    }

    #[test]
    fn the_environment_raises_limits_and_never_lowers_them() {
        let (five_min, six_h) = (COMMAND_LIMIT, Duration::from_secs(6 * 3600));
        assert_eq!(effective_limit(five_min, None).unwrap(), five_min);
        assert_eq!(effective_limit(five_min, Some("")).unwrap(), five_min);
        assert_eq!(effective_limit(five_min, Some("7200")).unwrap(), Duration::from_secs(7200));
        assert_eq!(effective_limit(six_h, Some("7200")).unwrap(), six_h);
        let err = format!("{:#}", effective_limit(five_min, Some("2h")).unwrap_err());
        assert!(err.starts_with("RIGGER_COMMAND_TIMEOUT=\"2h\" is not a number of seconds"), "{err}");
        assert!(effective_limit(five_min, Some("0")).is_err());
        assert_eq!([human(COMMAND_LIMIT), human(six_h), human(Duration::from_secs(90)), human(Duration::from_secs(12 * 3600 + 600))], ["5 min", "6 h", "1 min 30 s", "12 h 10 min"]);
    }
}
