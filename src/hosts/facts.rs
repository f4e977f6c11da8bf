//! Facts about a host, gathered in ONE round trip: OS, checksums and modes of
//! the managed files, service states, missing packages, and a few role probes
//! (e.g. Patroni's /cluster). Operations are then computed locally from these.

use crate::hosts::remote::ahead::{self, Ask};
use crate::hosts::remote::session::{sh_quote, HostSession, RunOutput};
use anyhow::{bail, Result};
use base64::Engine;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFact {
    pub sha256: String,
    pub mode: u32,
    pub owner: String,
    pub group: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceFact {
    /// `active`, `inactive`, `failed`, `activating`, …
    pub active: String,
    /// `enabled`, `disabled`, `masked`, `static`, or `unknown`.
    pub enabled: String,
    /// systemd says the unit's files changed on disk since it loaded them.
    pub stale: bool,
}

impl ServiceFact {
    pub fn running(&self) -> bool {
        self.active == "active" || self.active == "activating" || self.active == "reloading"
    }
}

#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    pub os: String,
    /// Absent = the file does not exist.
    pub files: BTreeMap<String, Option<FileFact>>,
    pub services: BTreeMap<String, ServiceFact>,
    pub missing_packages: Vec<String>,
    /// Probe name → its stdout (empty when the probe failed).
    pub probes: BTreeMap<String, String>,
    /// Answers to the gates' commands asked ahead (remote::ahead).
    pub answers: Vec<(Ask, RunOutput)>,
}

/// What to ask a host about.
#[derive(Debug, Clone, Default)]
pub struct FactQuery {
    pub files: Vec<String>,
    pub services: Vec<String>,
    pub packages: Vec<String>,
    /// name → shell command whose output is kept.
    pub probes: Vec<(String, String)>,
    /// Commands the health gates will run, asked ahead.
    pub asks: Vec<Ask>,
}

impl FactQuery {
    /// One shell script, one fork per kind of fact rather than per item: a
    /// systemctl call costs tens of milliseconds on a loaded host, and there
    /// are two per service otherwise. The probes run in the background while
    /// the rest is gathered.
    pub fn script(&self) -> String {
        let quoted = |items: &[String]| items.iter().map(|i| sh_quote(i)).collect::<Vec<_>>().join(" ");
        let jobs = self.jobs();
        let mut s = ahead::start_script(&self.asks, &jobs);
        s.push_str(". /etc/os-release 2>/dev/null; echo \"O ${ID:-unknown}-${VERSION_ID:-unknown}\"\n");
        if !self.files.is_empty() {
            let files = quoted(&self.files);
            s.push_str(&format!("sha256sum -- {files} 2>/dev/null | sed 's/^/H /'\n"));
            s.push_str(&format!("stat -c 'M %a %U %G %n' -- {files} 2>/dev/null\n"));
        }
        if !self.services.is_empty() {
            s.push_str(&format!(
                "echo \"U $(systemctl show -p Id,ActiveState,UnitFileState,NeedDaemonReload -- {} 2>/dev/null | base64 -w0)\"\n",
                quoted(&self.services)
            ));
        }
        if !self.packages.is_empty() {
            s.push_str(&format!(
                "dpkg-query -W -f='I ${{Package}} ${{db:Status-Status}}\\n' -- {} 2>/dev/null\n",
                quoted(&self.packages)
            ));
        }
        s.push_str(&ahead::report_script(&jobs));
        s
    }

    /// What runs in the background while the rest is gathered: each ask
    /// once, and each probe that no ask already runs.
    fn jobs(&self) -> Vec<ahead::Job<'_>> {
        let asks = self.asks.iter().enumerate().filter(|(i, _)| self.same_ask_before(*i).is_none()).map(|(i, a)| ahead::Job::Ask(i, a));
        let probes = self.probes.iter().enumerate().filter(|(_, (_, cmd))| self.ask_running(cmd).is_none()).map(|(i, (_, cmd))| ahead::Job::Probe(i, cmd.as_str()));
        asks.chain(probes).collect()
    }

    /// An earlier ask that is the same command (two gates may ask the same,
    /// e.g. Patroni's /primary for the app's database and Saleor's): it
    /// runs once and each copy gets its answer.
    fn same_ask_before(&self, i: usize) -> Option<usize> {
        self.asks[..i].iter().position(|a| *a == self.asks[i])
    }

    /// The ask that already runs a probe's command (as root, no input): the
    /// probe reads its stdout instead of running it a second time (Patroni's
    /// REST calls cost tens of milliseconds of CPU each).
    fn ask_running(&self, cmd: &str) -> Option<usize> {
        self.asks.iter().position(|a| a.root && a.stdin.is_none() && a.script == cmd)
    }

    pub fn parse(&self, output: &str) -> Result<HostFacts> {
        parse(self, output)
    }
}

fn decode(b64: &str) -> String {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).unwrap_or_default();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `systemctl show` blocks, one per unit in the order asked; an alias shows
/// under its target's Id, so the order (not the Id) names the unit.
fn service_facts(query: &FactQuery, shown: &str) -> BTreeMap<String, ServiceFact> {
    let blocks: Vec<BTreeMap<&str, &str>> = shown
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| b.lines().filter_map(|l| l.split_once('=')).collect())
        .collect();
    let by_id = |name: &str| blocks.iter().find(|b| b.get("Id").is_some_and(|id| *id == name || *id == format!("{name}.service")));
    query
        .services
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let block = if blocks.len() == query.services.len() { blocks.get(i) } else { by_id(name) };
            let get = |k: &str| block.and_then(|b| b.get(k)).map(|v| v.trim()).filter(|v| !v.is_empty());
            let fact = ServiceFact {
                active: get("ActiveState").unwrap_or("unknown").to_string(),
                enabled: get("UnitFileState").unwrap_or("unknown").to_string(),
                stale: get("NeedDaemonReload") == Some("yes"),
            };
            (name.clone(), fact)
        })
        .collect()
}

pub fn parse(query: &FactQuery, output: &str) -> Result<HostFacts> {
    let mut facts = HostFacts::default();
    let mut sums: BTreeMap<String, String> = BTreeMap::new();
    let mut stats: BTreeMap<String, (u32, String, String)> = BTreeMap::new();
    let mut installed = std::collections::BTreeSet::new();
    let mut shown = None;
    let mut report = ahead::Report::default();
    for line in output.lines() {
        let (tag, rest) = line.split_once(' ').unwrap_or((line, ""));
        if report.take(tag, rest) {
            continue;
        }
        match tag {
            "O" => facts.os = rest.trim().to_string(),
            // sha256sum: "<hash>  <path>".
            "H" => {
                let Some((hash, path)) = rest.split_once("  ") else { bail!("unexpected facts line: {line}") };
                sums.insert(path.to_string(), hash.to_string());
            }
            "M" => {
                let f: Vec<&str> = rest.splitn(4, ' ').collect();
                if f.len() != 4 {
                    bail!("unexpected facts line: {line}");
                }
                stats.insert(f[3].to_string(), (u32::from_str_radix(f[0], 8).unwrap_or(0), f[1].to_string(), f[2].to_string()));
            }
            "U" => shown = Some(decode(rest)),
            "I" => {
                if let Some((name, status)) = rest.split_once(' ') {
                    if status.trim() == "installed" {
                        installed.insert(name.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    for path in &query.files {
        let fact = match (sums.get(path), stats.get(path)) {
            (Some(sha), Some((mode, owner, group))) => Some(FileFact { sha256: sha.clone(), mode: *mode, owner: owner.clone(), group: group.clone() }),
            _ => None,
        };
        facts.files.insert(path.clone(), fact);
    }
    if !query.services.is_empty() {
        facts.services = service_facts(query, shown.as_deref().unwrap_or(""));
    }
    for (i, (name, cmd)) in query.probes.iter().enumerate() {
        let stdout = match query.ask_running(cmd) {
            Some(j) => report.ask_stdout(j),
            None => report.probe(i),
        };
        facts.probes.insert(name.clone(), stdout);
    }
    facts.answers = report.answers(&query.asks);
    // Each copy of an ask that ran once is answered too (answers are used once each).
    let copies: Vec<(Ask, RunOutput)> = (0..query.asks.len())
        .filter(|&i| query.same_ask_before(i).is_some())
        .filter_map(|i| facts.answers.iter().find(|(a, _)| *a == query.asks[i]).cloned())
        .collect();
    facts.answers.extend(copies);
    facts.missing_packages = query.packages.iter().filter(|p| !installed.contains(p.split(':').next().unwrap_or(p))).cloned().collect();
    Ok(facts)
}

/// Ask the host everything at once.
pub async fn gather(session: &HostSession, query: &FactQuery) -> Result<HostFacts> {
    let input = ahead::stdin(&query.asks);
    let out = session.sudo(&query.script(), (!input.is_empty()).then_some(input.as_slice())).await?;
    if !out.ok() {
        bail!("{}: gathering facts failed (exit {}): {}", session.name, out.code, out.stderr.trim());
    }
    query.parse(&out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query() -> FactQuery {
        FactQuery {
            files: vec!["/etc/haproxy/haproxy.cfg".into(), "/etc/patroni/config.yml".into()],
            services: vec!["etcd".into(), "patroni".into(), "sshd".into()],
            packages: vec!["keepalived".into(), "haproxy".into()],
            probes: vec![("cluster".into(), "curl -s http://x/cluster".into())],
            asks: vec![],
        }
    }

    #[test]
    fn parses_every_kind_of_line() {
        let shown = "Id=etcd.service\nActiveState=active\nUnitFileState=enabled\n\nId=patroni.service\nActiveState=inactive\nUnitFileState=disabled\nNeedDaemonReload=yes\n\nId=ssh.service\nActiveState=active\nUnitFileState=enabled\n";
        let b64 = base64::engine::general_purpose::STANDARD.encode(shown);
        let out = format!("O debian-12\nH abc  /etc/haproxy/haproxy.cfg\nM 640 root haproxy /etc/haproxy/haproxy.cfg\nU {b64}\nI haproxy installed\nI keepalived not-installed\nZ 7:/tmp/tmp.x/p0.out \nB eyJhIjoxfQ==\n");
        let f = query().parse(&out).unwrap();
        assert_eq!(f.os, "debian-12");
        let cfg = f.files["/etc/haproxy/haproxy.cfg"].as_ref().unwrap();
        assert_eq!((cfg.sha256.as_str(), cfg.mode, cfg.group.as_str()), ("abc", 0o640, "haproxy"));
        assert!(f.files["/etc/patroni/config.yml"].is_none());
        assert!(f.services["etcd"].running());
        assert!(!f.services["patroni"].running());
        assert_eq!(f.services["patroni"].enabled, "disabled");
        assert!(f.services["patroni"].stale && !f.services["etcd"].stale);
        // An alias (sshd → ssh.service) is named by its place in the answer.
        assert!(f.services["sshd"].running());
        assert_eq!(f.missing_packages, vec!["keepalived"]);
        assert_eq!(f.probes["cluster"], "{\"a\":1}");
    }

    #[test]
    fn a_unit_systemd_does_not_know_is_inactive_and_unknown() {
        let q = FactQuery { services: vec!["nosuch".into()], ..Default::default() };
        let b64 = base64::engine::general_purpose::STANDARD.encode("Id=nosuch.service\nActiveState=inactive\nUnitFileState=\n");
        let f = q.parse(&format!("U {b64}\n")).unwrap();
        assert_eq!(f.services["nosuch"], ServiceFact { active: "inactive".into(), enabled: "unknown".into(), stale: false });
    }

    /// The script as the host's sh runs it, against this machine's own files,
    /// services and packages.
    #[test]
    fn the_script_runs_in_sh_and_parses() {
        let q = FactQuery {
            files: vec!["/etc/hostname".into(), "/no/such/file".into()],
            services: vec![],
            packages: vec!["no-such-package-rigger".into()],
            // `curl -o /dev/stdout -w …` writes like the third probe: the
            // file behind a plain redirect would lose its first lines.
            probes: vec![("echo".into(), "echo hello".into()), ("fails".into(), "false".into()), ("reopens".into(), "echo body >/dev/stdout; echo status".into())],
            asks: vec![],
        };
        let out = std::process::Command::new("sh").args(["-c", &q.script()]).output().unwrap();
        let f = q.parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert_eq!(f.files["/etc/hostname"].as_ref().map(|x| x.sha256.len()), Some(64));
        assert!(f.files["/no/such/file"].is_none());
        assert_eq!(f.missing_packages, vec!["no-such-package-rigger"]);
        assert_eq!((f.probes["echo"].as_str(), f.probes["fails"].as_str()), ("hello\n", ""));
        assert_eq!(f.probes["reopens"], "body\nstatus\n");
    }

    /// A probe that a gate also asks runs once; both read the one answer.
    #[test]
    fn a_probe_the_gate_also_asks_runs_once() {
        let q = FactQuery {
            files: vec![],
            services: vec![],
            packages: vec![],
            probes: vec![("shared".into(), "printf 'body\\n200'".into()), ("own".into(), "echo own".into())],
            asks: vec![Ask::sudo("printf 'body\\n200'", None), Ask::sudo("echo gate-only", None)],
        };
        let script = q.script();
        assert_eq!(script.matches("body").count(), 1, "{script}");
        let out = std::process::Command::new("sh").args(["-c", &script]).env("SUDO_USER", "root").output().unwrap();
        let f = q.parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert_eq!((f.probes["shared"].as_str(), f.probes["own"].as_str()), ("body\n200", "own\n"));
        let answers = f.answers;
        assert_eq!(answers.iter().map(|(_, o)| o.stdout.as_str()).collect::<Vec<_>>(), ["body\n200", "gate-only\n"]);
    }

    /// Two gates asking the same command: it runs once, each gets an answer.
    #[test]
    fn the_same_ask_twice_runs_once_and_answers_both() {
        let same = Ask::sudo("echo \"run $$\"", None);
        let q = FactQuery { asks: vec![same.clone(), Ask::sudo("echo other", None), same.clone()], ..Default::default() };
        let script = q.script();
        assert_eq!(script.matches("run $$").count(), 1, "{script}");
        let out = std::process::Command::new("sh").args(["-c", &script]).env("SUDO_USER", "root").output().unwrap();
        let f = q.parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
        let of_same: Vec<&RunOutput> = f.answers.iter().filter(|(a, _)| *a == same).map(|(_, o)| o).collect();
        assert_eq!(of_same.len(), 2, "{:?}", f.answers);
        assert!(of_same[0].stdout.starts_with("run ") && of_same[0].stdout == of_same[1].stdout);
        assert_eq!(f.answers.len(), 3);
    }
}
