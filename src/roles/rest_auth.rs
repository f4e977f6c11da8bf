//! Patroni REST authentication: Patroni asks for HTTP basic auth on its unsafe
//! endpoints (POST/PUT/PATCH/DELETE: restart, switchover, reinitialise, config),
//! with a password generated once into the state. The GET/OPTIONS health checks
//! HAProxy uses stay open; the host firewall limits who reaches the port.
//! rigger's own calls run curl on the member with a curl config file (0600,
//! root) so the password is never on a command line.

use super::file;
use crate::config::ops::ManagedFile;
use crate::plan::model::Plan;
use anyhow::{anyhow, Result};
use std::collections::BTreeMap;

pub const USER: &str = "rigger";
pub const SECRET: &str = "patroni_rest_password";
/// Read by `curl -K` in every REST call rigger makes on a Patroni member.
pub const CURLRC: &str = "/etc/patroni/rest.curlrc";

/// The curl arguments that authenticate a REST call (run as root on a member).
pub fn curl_args() -> String {
    format!("-K {CURLRC}")
}

/// `restapi.authentication` for patroni.yml, or nothing when the plan turns it off.
pub fn patroni_yaml(plan: &Plan, secrets: &BTreeMap<String, String>) -> String {
    match (plan.security.rest_auth, secrets.get(SECRET)) {
        (true, Some(pw)) => format!("  authentication:\n    username: {USER}\n    password: {}\n", serde_json::Value::String(pw.clone())),
        _ => String::new(),
    }
}

/// The curl config file holding rigger's REST credentials.
pub fn curlrc(secrets: &BTreeMap<String, String>) -> Result<ManagedFile> {
    let pw = secrets.get(SECRET).ok_or_else(|| anyhow!("the state has no {SECRET} — run `rigger apply` to generate it"))?;
    let quoted = pw.replace('\\', "\\\\").replace('"', "\\\"");
    Ok(file("patroni", CURLRC, format!("# Managed by rigger: Patroni REST credentials for rigger's own calls.\nuser = \"{USER}:{quoted}\"\n"), 0o600, "root", "root", None, &[]))
}
