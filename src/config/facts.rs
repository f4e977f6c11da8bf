//! Facts about a host, gathered in ONE round trip: OS, checksums and modes of
//! the managed files, service states, missing packages, and a few role probes
//! (e.g. Patroni's /cluster). Operations are then computed locally from these.

use crate::remote::session::{sh_quote, HostSession};
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
}

/// What to ask a host about.
#[derive(Debug, Clone, Default)]
pub struct FactQuery {
    pub files: Vec<String>,
    pub services: Vec<String>,
    pub packages: Vec<String>,
    /// name → shell command whose output is kept.
    pub probes: Vec<(String, String)>,
}

impl FactQuery {
    pub fn script(&self) -> String {
        let mut s = String::from(". /etc/os-release 2>/dev/null; echo \"O ${ID:-unknown}-${VERSION_ID:-unknown}\"\n");
        for f in &self.files {
            let q = sh_quote(f);
            s.push_str(&format!(
                "if [ -f {q} ]; then set -- $(sha256sum {q}); echo \"F $1 $(stat -c '%a %U %G' {q}) \"{q}; else echo \"F - - - - \"{q}; fi\n"
            ));
        }
        for svc in &self.services {
            let q = sh_quote(svc);
            s.push_str(&format!(
                "echo \"S {q} $(systemctl is-active {q} 2>/dev/null || true) $(systemctl is-enabled {q} 2>/dev/null || echo unknown)\"\n"
            ));
        }
        for p in &self.packages {
            let q = sh_quote(p);
            s.push_str(&format!("dpkg-query -W -f='${{db:Status-Status}}' {q} 2>/dev/null | grep -qx installed || echo \"P {q}\"\n"));
        }
        for (name, cmd) in &self.probes {
            s.push_str(&format!("echo \"X {} $( ( {cmd} ) 2>/dev/null | base64 -w0)\"\n", sh_quote(name)));
        }
        s
    }
}

pub fn parse(output: &str) -> Result<HostFacts> {
    let mut facts = HostFacts::default();
    for line in output.lines() {
        let mut parts = line.splitn(2, ' ');
        let (tag, rest) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        match tag {
            "O" => facts.os = rest.trim().to_string(),
            "F" => {
                let f: Vec<&str> = rest.splitn(5, ' ').collect();
                if f.len() != 5 {
                    bail!("unexpected facts line: {line}");
                }
                let fact = (f[0] != "-").then(|| FileFact {
                    sha256: f[0].to_string(),
                    mode: u32::from_str_radix(f[1], 8).unwrap_or(0),
                    owner: f[2].to_string(),
                    group: f[3].to_string(),
                });
                facts.files.insert(f[4].to_string(), fact);
            }
            "S" => {
                let f: Vec<&str> = rest.split_whitespace().collect();
                if let Some(name) = f.first() {
                    facts.services.insert(
                        name.to_string(),
                        ServiceFact {
                            active: f.get(1).unwrap_or(&"unknown").to_string(),
                            enabled: f.get(2).unwrap_or(&"unknown").to_string(),
                        },
                    );
                }
            }
            "P" => facts.missing_packages.push(rest.trim().to_string()),
            "X" => {
                let (name, b64) = rest.split_once(' ').unwrap_or((rest, ""));
                let bytes = base64::engine::general_purpose::STANDARD.decode(b64.trim()).unwrap_or_default();
                facts.probes.insert(name.to_string(), String::from_utf8_lossy(&bytes).into_owned());
            }
            _ => {}
        }
    }
    Ok(facts)
}

/// Ask the host everything at once.
pub async fn gather(session: &HostSession, query: &FactQuery) -> Result<HostFacts> {
    let out = session.sudo(&query.script(), None).await?;
    if !out.ok() {
        bail!("{}: gathering facts failed (exit {}): {}", session.name, out.code, out.stderr.trim());
    }
    parse(&out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_of_line() {
        let out = "O debian-12\nF abc 640 root haproxy /etc/haproxy/haproxy.cfg\nF - - - - /etc/patroni/config.yml\nS etcd active enabled\nS patroni inactive disabled\nP keepalived\nX cluster eyJhIjoxfQ==\n";
        let f = parse(out).unwrap();
        assert_eq!(f.os, "debian-12");
        assert_eq!(f.files["/etc/haproxy/haproxy.cfg"].as_ref().unwrap().mode, 0o640);
        assert!(f.files["/etc/patroni/config.yml"].is_none());
        assert!(f.services["etcd"].running());
        assert!(!f.services["patroni"].running());
        assert_eq!(f.missing_packages, vec!["keepalived"]);
        assert_eq!(f.probes["cluster"], "{\"a\":1}");
    }
}
