//! A scripted host for tests: a `Transport` that keeps an in-memory view of a
//! Debian host (files, services, packages) and answers the scripts rigger
//! really sends — the facts query, uploads, package installs, systemctl —
//! from that view, and everything else (health gates, probes) from rules the
//! test gives. A script nothing answers fails loudly (exit 127, named in
//! stderr), so a phase that sends something unexpected fails its test. Every
//! script is recorded, in order, with what the host made of it.

use super::ahead::Ask;
use super::session::{HostSession, RunOutput};
use super::transport::{As, Transport};
use crate::hosts::ops::sha256_hex;
use anyhow::Result;
use async_trait::async_trait;
use base64::Engine;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub content: String,
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Service {
    pub active: bool,
    pub enabled: bool,
    /// A unit file of it changed since systemd last read them.
    pub stale: bool,
}

/// What the host looks like now.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    pub files: BTreeMap<String, FileEntry>,
    /// Units systemd knows (installed by a package or given by the test).
    pub services: BTreeMap<String, Service>,
    pub packages: BTreeSet<String>,
    /// Package → the units it installs (the test says).
    pub provides: BTreeMap<String, Vec<String>>,
    /// Checker command → the package that brings it (`haproxy` → `haproxy`):
    /// an upload checked by a command whose package is missing fails as sh would.
    pub checkers: BTreeMap<String, String>,
}

impl HostView {
    pub fn running(&self, service: &str) -> bool {
        self.services.get(service).is_some_and(|s| s.active)
    }
}

/// What the host made of one script it was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Facts,
    Upload(String),
    /// The daemon's checker refused the candidate: the live file stayed.
    Rejected(String),
    Install(Vec<String>),
    /// `systemctl <verb> <unit>` (`daemon-reload` has no unit).
    Systemctl(String, String),
    Read(String),
    /// Answered by the test's rule of this name.
    Rule(String),
    /// Never ended by itself (`ScriptedHost::hang`).
    Hung,
    Unanswered,
}

impl Action {
    /// Whether this changes the host (a no-change run sends none of these).
    pub fn writes(&self) -> bool {
        match self {
            Action::Upload(_) | Action::Install(_) => true,
            Action::Systemctl(verb, _) => !matches!(verb.as_str(), "is-active" | "status" | "show"),
            _ => false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sent {
    pub who: As,
    pub script: String,
    pub stdin: Option<Vec<u8>>,
    /// How long the host was told to let it run.
    pub limit: std::time::Duration,
    pub action: Action,
}

type Answer = dyn Fn(&mut HostView, &str) -> RunOutput + Send + Sync;

/// A rule: scripts containing `contains` are answered by `answer`.
#[derive(Clone)]
pub struct Rule {
    pub name: String,
    pub contains: String,
    pub answer: Arc<Answer>,
}

impl Rule {
    pub fn new(name: &str, contains: &str, answer: impl Fn(&mut HostView, &str) -> RunOutput + Send + Sync + 'static) -> Rule {
        Rule { name: name.into(), contains: contains.into(), answer: Arc::new(answer) }
    }
}

pub fn ok(stdout: &str) -> RunOutput {
    RunOutput { code: 0, stdout: stdout.into(), stderr: String::new() }
}

pub fn fail(code: i32, stderr: &str) -> RunOutput {
    RunOutput { code, stdout: String::new(), stderr: stderr.into() }
}

pub struct ScriptedHost {
    pub name: String,
    view: Mutex<HostView>,
    rules: Vec<Rule>,
    /// Paths whose checker refuses the candidate, with what it says.
    rejects: BTreeMap<String, String>,
    /// Scripts that never end by themselves (`hang`).
    hangs: Mutex<Vec<(String, Hang)>>,
    sent: Mutex<Vec<Sent>>,
}

/// How a command that never ends by itself ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hang {
    /// The host's `timeout` ends it at its limit: exit 124, as GNU timeout's.
    UntilTheLimit,
    /// Nothing comes back at all (a connection that hangs).
    Silent,
}

impl ScriptedHost {
    pub fn new(name: &str, view: HostView, rules: Vec<Rule>) -> Arc<ScriptedHost> {
        Arc::new(ScriptedHost { name: name.into(), view: Mutex::new(view), rules, rejects: BTreeMap::new(), hangs: Mutex::default(), sent: Mutex::new(Vec::new()) })
    }

    /// The same host whose daemon checker refuses `path` with `message`.
    pub fn rejecting(name: &str, view: HostView, rules: Vec<Rule>, path: &str, message: &str) -> Arc<ScriptedHost> {
        Arc::new(ScriptedHost { name: name.into(), view: Mutex::new(view), rules, rejects: [(path.to_string(), message.to_string())].into(), hangs: Mutex::default(), sent: Mutex::new(Vec::new()) })
    }

    /// From now on, scripts containing `contains` never end by themselves
    /// (apt waiting on a lock, a unit whose start never ends): they end as
    /// `how` says.
    pub fn hang(&self, contains: &str, how: Hang) {
        self.hangs.lock().expect("hangs").push((contains.into(), how));
    }

    /// A `HostSession` over this host.
    pub fn session(self: &Arc<Self>) -> HostSession {
        HostSession::over(&self.name, Box::new(self.clone()))
    }

    pub fn view(&self) -> HostView {
        self.view.lock().expect("host view").clone()
    }

    pub fn sent(&self) -> Vec<Sent> {
        self.sent.lock().expect("sent scripts").clone()
    }

    pub fn actions(&self) -> Vec<Action> {
        self.sent().into_iter().map(|s| s.action).collect()
    }

    /// Forget what was sent so far (between two runs of one test).
    pub fn clear_sent(&self) {
        self.sent.lock().expect("sent scripts").clear();
    }

    /// Run `script` as the host would: a hanging one as `hang` says, the
    /// others answered at once.
    async fn run_script(&self, who: As, script: &str, stdin: Option<&[u8]>, limit: std::time::Duration) -> RunOutput {
        let hang = self.hangs.lock().expect("hangs").iter().find(|(c, _)| script.contains(c.as_str())).map(|(_, how)| *how);
        let Some(how) = hang else { return self.answer(who, script, stdin, limit) };
        self.sent.lock().expect("sent scripts").push(Sent { who, script: script.into(), stdin: stdin.map(<[u8]>::to_vec), limit, action: Action::Hung });
        match how {
            Hang::UntilTheLimit => {
                tokio::time::sleep(limit).await;
                fail(124, "")
            }
            Hang::Silent => std::future::pending().await,
        }
    }

    fn answer(&self, who: As, script: &str, stdin: Option<&[u8]>, limit: std::time::Duration) -> RunOutput {
        let mut view = self.view.lock().expect("host view");
        // An upload batch writes several files in one script: one record per file.
        let (actions, out) = match upload_batch(script) {
            Some(files) => self.upload_batch(&mut view, &files, stdin.unwrap_or_default()),
            None => {
                let (action, out) = self.dispatch(&mut view, script, stdin);
                (vec![action], out)
            }
        };
        drop(view);
        let mut sent = self.sent.lock().expect("sent scripts");
        for action in actions {
            sent.push(Sent { who, script: script.into(), stdin: stdin.map(<[u8]>::to_vec), limit, action });
        }
        out
    }

    fn dispatch(&self, view: &mut HostView, script: &str, stdin: Option<&[u8]>) -> (Action, RunOutput) {
        // The facts query and uploads carry other scripts inside them: they
        // are recognised first; then the test's rules may answer (or
        // override) anything else.
        if script.contains("echo \"O ${ID:-unknown}") {
            return (Action::Facts, self.facts(view, script, stdin.unwrap_or_default()));
        }
        if let Some(rule) = self.rules.iter().find(|r| script.contains(&r.contains)) {
            return (Action::Rule(rule.name.clone()), (rule.answer)(view, script));
        }
        let line = script.trim().trim_end_matches("2>&1").trim();
        if let Some(rest) = line.split_once("apt-get").and_then(|(_, r)| r.split_once(" install -y ")).map(|(_, r)| r) {
            let pkgs: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
            for p in &pkgs {
                view.packages.insert(p.clone());
                for unit in view.provides.get(p).cloned().unwrap_or_default() {
                    view.services.entry(unit).or_default();
                }
            }
            return (Action::Install(pkgs), ok(""));
        }
        if let Some(rest) = line.strip_prefix("systemctl ") {
            return self.systemctl(view, rest);
        }
        if let Some(path) = line.strip_prefix("cat ").and_then(|r| r.strip_suffix(" 2>/dev/null")) {
            let path = unquote(path);
            let content = view.files.get(&path).map(|f| f.content.clone()).unwrap_or_default();
            return (Action::Read(path), ok(&content));
        }
        if line.starts_with("journalctl ") {
            return (Action::Read("journal".into()), ok(""));
        }
        (Action::Unanswered, fail(127, &format!("scripted host {}: no rule answers `{}`", self.name, script.lines().next().unwrap_or(""))))
    }

    fn systemctl(&self, view: &mut HostView, rest: &str) -> (Action, RunOutput) {
        // `--no-block` only changes when systemctl returns; `--now` makes a disable stop too.
        let words: Vec<&str> = rest.split_whitespace().filter(|w| *w != "--no-block").collect();
        let (verb, unit) = match words.as_slice() {
            ["daemon-reload"] => {
                view.services.values_mut().for_each(|s| s.stale = false);
                return (Action::Systemctl("daemon-reload".into(), String::new()), ok(""));
            }
            ["disable", "--now", unit] => ("disable --now", *unit),
            // `enable` takes several units and, as systemd's does, reloads the
            // manager's configuration after it (no --no-reload here).
            ["enable", units @ ..] if units.len() > 1 => {
                for unit in units {
                    match view.services.get_mut(*unit) {
                        Some(s) => s.enabled = true,
                        None => return (Action::Systemctl("enable".into(), units.join(" ")), fail(5, &format!("Failed to enable unit: Unit file {unit}.service does not exist."))),
                    }
                }
                view.services.values_mut().for_each(|s| s.stale = false);
                return (Action::Systemctl("enable".into(), units.join(" ")), ok(""));
            }
            [verb, unit] if !unit.starts_with('-') => (*verb, *unit),
            _ => return (Action::Unanswered, fail(127, &format!("scripted host {}: systemctl {rest}?", self.name))),
        };
        let action = Action::Systemctl(verb.into(), unit.into());
        let Some(s) = view.services.get_mut(unit) else {
            return (action, fail(5, &format!("Failed to {verb} {unit}.service: Unit {unit}.service not found.")));
        };
        match verb {
            "enable" => {
                s.enabled = true;
                view.services.values_mut().for_each(|s| s.stale = false);
            }
            "disable --now" => (s.enabled, s.active) = (false, false),
            "start" | "restart" => s.active = true,
            "reload" if !s.active => return (action, fail(1, &format!("Job for {unit}.service failed: the unit is not active."))),
            "reload" => {}
            "stop" => s.active = false,
            _ => return (Action::Unanswered, fail(127, &format!("scripted host {}: systemctl {rest}?", self.name))),
        }
        (action, ok(""))
    }

    /// An upload batch (config::ops::upload_all): each file's part reads its
    /// length of stdin; a rejected file stops the batch with exit 42 after
    /// printing `F <index>` for every file it began, as the real script does.
    fn upload_batch(&self, view: &mut HostView, files: &[UploadPart], stdin: &[u8]) -> (Vec<Action>, RunOutput) {
        let mut actions = Vec::new();
        let mut stdout = String::new();
        let mut at = 0;
        for (i, part) in files.iter().enumerate() {
            stdout.push_str(&format!("F {i}\n"));
            let content = stdin.get(at..at + part.len).unwrap_or_default();
            at += part.len;
            let (action, out) = self.upload(view, &part.path, &part.script, content);
            actions.push(action);
            if !out.ok() {
                return (actions, RunOutput { stdout, ..out });
            }
        }
        stdout.push_str("F done\n");
        (actions, ok(&stdout))
    }

    fn upload(&self, view: &mut HostView, path: &str, script: &str, content: &[u8]) -> (Action, RunOutput) {
        if let Some(check) = script.split("if ! out=$(").nth(1) {
            let command = check.split_whitespace().next().unwrap_or_default();
            if view.checkers.get(command).is_some_and(|package| !view.packages.contains(package)) {
                return (Action::Rejected(path.into()), fail(42, &format!("sh: 1: {command}: not found")));
            }
            if let Some(message) = self.rejects.get(path) {
                return (Action::Rejected(path.into()), fail(42, message));
            }
        }
        let word_after = |key: &str| script.lines().find_map(|l| l.strip_prefix(key)).and_then(|r| r.split(' ').next()).map(unquote).unwrap_or_default();
        let owner_group = word_after("chown ");
        let (owner, group) = owner_group.split_once(':').unwrap_or(("root", "root"));
        let mode = u32::from_str_radix(&word_after("chmod "), 8).unwrap_or(0o644);
        view.files.insert(path.into(), FileEntry { content: String::from_utf8_lossy(content).into_owned(), mode, owner: owner.into(), group: group.into() });
        if let Some(unit) = path.strip_prefix("/etc/systemd/system/") {
            let unit = unit.split(['/', '.']).next().unwrap_or_default();
            if let Some(s) = view.services.get_mut(unit) {
                s.stale = true;
            }
        }
        (Action::Upload(path.into()), ok(""))
    }

    /// The facts query's answer, in the lines config::facts parses.
    fn facts(&self, view: &mut HostView, script: &str, stdin: &[u8]) -> RunOutput {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut out = String::from("O debian-12\n");
        let items = |prefix: &str, end: &str| -> Vec<String> {
            script.lines().find_map(|l| l.strip_prefix(prefix)).and_then(|r| r.split_once(" -- ")).map(|(_, r)| r.split(end).next().unwrap_or(r)).map(words).unwrap_or_default()
        };
        for path in items("sha256sum", " 2>/dev/null") {
            if let Some(f) = view.files.get(&path) {
                out.push_str(&format!("H {}  {path}\nM {:o} {} {} {path}\n", sha256_hex(f.content.as_bytes()), f.mode, f.owner, f.group));
            }
        }
        let services = items("echo \"U $(systemctl show", " 2>/dev/null");
        if !services.is_empty() {
            let shown: String = services
                .iter()
                .map(|name| match view.services.get(name) {
                    Some(s) => format!(
                        "Id={name}.service\nActiveState={}\nUnitFileState={}\nNeedDaemonReload={}\n\n",
                        if s.active { "active" } else { "inactive" },
                        if s.enabled { "enabled" } else { "disabled" },
                        if s.stale { "yes" } else { "no" }
                    ),
                    None => format!("Id={name}.service\nActiveState=inactive\nUnitFileState=\n\n"),
                })
                .collect();
            out.push_str(&format!("U {}\n", b64.encode(shown)));
        }
        for p in items("dpkg-query", " 2>/dev/null") {
            let state = if view.packages.contains(&p) { "installed" } else { "not-installed" };
            out.push_str(&format!("I {p} {state}\n"));
        }
        // Background jobs (remote::ahead): the asks, answered as the gate
        // would be answered live, and the probes, by the test's rules.
        let jobs = jobs_in(script, stdin);
        let mut files: Vec<(String, String)> = Vec::new();
        for (i, ask) in &jobs.asks {
            let answer = self.dispatch(view, &ask.script, ask.stdin.as_deref()).1;
            out.push_str(&format!("A {i} {}\n", answer.code));
            files.push((format!("a{i}.out"), answer.stdout));
            files.push((format!("a{i}.err"), answer.stderr));
        }
        for (i, cmd) in &jobs.probes {
            let answer = self.rules.iter().find(|r| cmd.contains(&r.contains)).map(|r| (r.answer)(view, cmd)).filter(RunOutput::ok);
            files.push((format!("p{i}.out"), answer.map(|a| a.stdout).unwrap_or_default()));
        }
        if !files.is_empty() {
            let sizes: Vec<String> = files.iter().map(|(name, content)| format!("{}:/tmp/tmp.scripted/{name}", content.len())).collect();
            let bytes: String = files.iter().map(|(_, content)| content.as_str()).collect();
            out.push_str(&format!("Z {}\nB {}\n", sizes.join(" "), b64.encode(bytes)));
        }
        ok(&out)
    }
}

/// The background jobs of a facts script (remote::ahead::start_script): the
/// asks with their stdin and the probes, each by the index its files carry.
struct Jobs {
    asks: Vec<(usize, Ask)>,
    probes: Vec<(usize, String)>,
}

fn jobs_in(script: &str, stdin: &[u8]) -> Jobs {
    let b64 = base64::engine::general_purpose::STANDARD;
    // The inputs: one line each, in the order of the asks that have one,
    // as themselves or base64 (the script's line for each says which).
    let mut lines = stdin.split_inclusive(|b| *b == b'\n');
    let mut inputs = BTreeMap::new();
    for line in script.lines().filter(|l| l.starts_with("IFS= read -r l;")) {
        let Some(i) = line.rsplit_once("/i").and_then(|(_, r)| r.trim_end_matches('"').parse::<usize>().ok()) else { continue };
        let raw = lines.next().unwrap_or_default();
        let input = if line.contains("base64 -d") { b64.decode(raw.trim_ascii()).unwrap_or_default() } else { raw.to_vec() };
        inputs.insert(i, input);
    }
    let mut jobs = Jobs { asks: Vec::new(), probes: Vec::new() };
    // The jobs run in one `timeout … sh -c '<batch>'`.
    let Some(batch) = script.split_once("\ntimeout ").and_then(|(_, r)| r.split_once(" sh -c ")).map(|(_, r)| unquote(&first_word(r).0)) else { return jobs };
    let mut body: Option<Vec<&str>> = None;
    for line in batch.lines() {
        match body.as_mut() {
            None if line == "{ ( (" => body = Some(Vec::new()),
            None => {}
            Some(b) if !line.starts_with(") <") => b.push(line),
            Some(b) => {
                let text = b.join("\n");
                let file = |prefix: &str| line.rsplit_once(&format!("/{prefix}")).and_then(|(_, r)| r.split('.').next()?.parse::<usize>().ok());
                if let Some(i) = file("p") {
                    jobs.probes.push((i, text));
                } else if let Some(i) = file("a") {
                    let ask = match text.strip_prefix("exec runuser -u \"$SUDO_USER\" -- sh -c ") {
                        Some(quoted) => Ask::sh(unquote(quoted)),
                        None => Ask::sudo(text, None),
                    };
                    jobs.asks.push((i, Ask { stdin: inputs.remove(&i), ..ask }));
                }
                body = None;
            }
        }
    }
    jobs
}

/// One file's part of an upload batch: its path, how many bytes of stdin
/// it reads and its lines of the script.
struct UploadPart {
    path: String,
    len: usize,
    script: String,
}

/// The files an upload batch script (config::ops::upload_all) writes, in
/// order; `None` when the script is not an upload batch.
fn upload_batch(script: &str) -> Option<Vec<UploadPart>> {
    let mut lines = script.lines();
    if lines.next()? != "set -e" {
        return None;
    }
    let mut parts: Vec<Vec<&str>> = Vec::new();
    for line in lines {
        if line == "echo \"F done\"" {
            break;
        }
        if line.starts_with("echo \"F ") {
            parts.push(Vec::new());
        } else {
            parts.last_mut()?.push(line);
        }
    }
    parts
        .into_iter()
        .map(|lines| {
            let quoted = lines.first()?.strip_prefix("mkdir -p \"$(dirname ")?.strip_suffix(")\"")?;
            let len = lines.iter().find_map(|l| l.split(" count=").nth(1))?.split(' ').next()?.parse().ok()?;
            Some(UploadPart { path: unquote(quoted), len, script: lines.join("\n") })
        })
        .collect::<Option<Vec<_>>>()
        .filter(|parts| !parts.is_empty())
}

/// The first sh word of `s` (bare or single-quoted, as sh_quote writes) and the rest.
fn first_word(s: &str) -> (String, &str) {
    let mut word = String::new();
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if !quoted => escaped = true,
            '\'' => quoted = !quoted,
            ' ' if !quoted => return (word, &s[i + 1..]),
            _ => {}
        }
        word.push(c);
    }
    (word, "")
}

fn words(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let (w, r) = first_word(rest);
        out.push(unquote(&w));
        rest = r.trim_start();
    }
    out
}

/// Undo sh_quote: `'it'\''s'` → `it's`.
fn unquote(s: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => quoted = !quoted,
            '\\' if !quoted => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    out
}

#[async_trait]
impl Transport for Arc<ScriptedHost> {
    async fn run(&self, who: As, script: &str, stdin: Option<&[u8]>, limit: std::time::Duration) -> Result<RunOutput> {
        // Let other hosts' work interleave, as it would over the network.
        tokio::task::yield_now().await;
        Ok(self.run_script(who, script, stdin, limit).await)
    }

    async fn run_streamed(&self, script: &str, input: &mut (dyn AsyncRead + Unpin + Send), limit: std::time::Duration) -> Result<RunOutput> {
        let mut data = Vec::new();
        input.read_to_end(&mut data).await?;
        Ok(self.run_script(As::Root, script, Some(&data), limit).await)
    }

    async fn close(self: Box<Self>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosts::facts::FactQuery;
    use crate::hosts::ops::{upload, ManagedFile};

    #[test]
    fn unquote_undoes_sh_quote() {
        for s in ["plain", "it's", "a b", "/etc/x y/z'q"] {
            assert_eq!(unquote(&crate::hosts::remote::session::sh_quote(s)), s);
        }
        assert_eq!(words("a 'b c' d"), vec!["a", "b c", "d"]);
    }

    /// The facts the real query reads back from the host's view, and an
    /// upload by the real upload code changes them.
    #[tokio::test]
    async fn facts_and_uploads_go_through_the_real_code() {
        let mut view = HostView::default();
        view.packages.insert("haproxy".into());
        view.services.insert("haproxy".into(), Service { active: true, enabled: true, stale: false });
        let host = ScriptedHost::new("lb-1", view, vec![Rule::new("probe", "echo hi", |_, _| ok("hi\n"))]);
        let session = host.session();
        let query = FactQuery {
            files: vec!["/etc/it's here.cfg".into()],
            services: vec!["haproxy".into(), "nosuch".into()],
            packages: vec!["haproxy".into(), "redis-server".into()],
            probes: vec![("greeting".into(), "echo hi".into())],
            asks: vec![Ask::sudo("echo hi", Some(b"secret"))],
        };
        let f = crate::hosts::facts::gather(&session, &query).await.unwrap();
        assert!(f.files["/etc/it's here.cfg"].is_none());
        assert!(f.services["haproxy"].running() && !f.services["nosuch"].running());
        assert_eq!(f.missing_packages, vec!["redis-server"]);
        assert_eq!(f.probes["greeting"], "hi\n");
        assert_eq!(f.answers.len(), 1);
        assert_eq!((f.answers[0].0.stdin.as_deref(), f.answers[0].1.stdout.as_str()), (Some(&b"secret"[..]), "hi\n"));

        let file = ManagedFile { role: "haproxy", path: "/etc/it's here.cfg".into(), content: "x\n".into(), mode: 0o640, owner: "root".into(), group: "haproxy".into(), validate: None, notify: vec![] };
        upload(&session, &file).await.unwrap();
        let f = crate::hosts::facts::gather(&session, &query).await.unwrap();
        let fact = f.files["/etc/it's here.cfg"].clone().unwrap();
        assert_eq!((fact.sha256, fact.mode, fact.group.as_str()), (sha256_hex(b"x\n"), 0o640, "haproxy"));
        assert_eq!(host.actions()[1], Action::Upload("/etc/it's here.cfg".into()));
    }

    #[tokio::test]
    async fn streamed_input_reaches_the_host_whole() {
        let host = ScriptedHost::new("app-1", HostView::default(), vec![Rule::new("untar", "tar -xf -", |_, _| ok(""))]);
        let data = vec![7u8; 300_000];
        let out = host.session().sudo_stream("mkdir -p /srv/x && tar -xf - -C /srv/x", std::io::Cursor::new(data.clone())).await.unwrap();
        assert!(out.ok());
        let sent = host.sent();
        assert_eq!((sent[0].who, sent[0].stdin.as_deref()), (As::Root, Some(data.as_slice())));
    }

    #[tokio::test]
    async fn a_script_nothing_answers_fails_and_is_named() {
        let host = ScriptedHost::new("db-1", HostView::default(), vec![]);
        let out = host.session().sudo("rm -rf /srv/data", None).await.unwrap();
        assert_eq!(out.code, 127);
        assert!(out.stderr.contains("db-1") && out.stderr.contains("rm -rf /srv/data"), "{}", out.stderr);
        let out = host.session().sudo("systemctl start redis-server", None).await.unwrap();
        assert!(!out.ok() && out.stderr.contains("not found"), "a unit no package installed cannot start");
    }
}
