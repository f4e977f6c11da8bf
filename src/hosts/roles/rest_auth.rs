//! Patroni REST authentication and TLS.
//!
//! Patroni asks for HTTP basic auth on its unsafe endpoints (POST/PUT/PATCH/
//! DELETE: restart, switchover, reinitialise, config), with a password
//! generated once into the state. The GET/OPTIONS health checks HAProxy uses
//! stay open; the host firewall limits who reaches the port. rigger's own
//! calls run curl on the member with a curl config file (0600, root) so the
//! password is never on a command line.
//!
//! With `security.tls` the API serves HTTPS with the host certificate of the
//! project CA; curl and HAProxy's checks verify it against that CA.

use super::file;
use crate::hosts::ops::ManagedFile;
use crate::plan::model::Plan;
use anyhow::{anyhow, Result};
use std::collections::BTreeMap;

pub const USER: &str = "rigger";
pub const SECRET: &str = "patroni_rest_password";
/// Read by `curl -K` in every REST call rigger makes on a Patroni member.
pub const CURLRC: &str = "/etc/patroni/rest.curlrc";

/// The config Patroni runs with (its `restapi.certfile` says whether it serves HTTPS).
pub const PATRONI_CONFIG: &str = "/etc/patroni/config.yml";

/// The curl arguments that authenticate a REST call (run as root on a member).
pub fn curl_args() -> String {
    format!("-K {CURLRC}")
}

/// A shell command (as root, on a member) running `curl -s ARGS` against the
/// member's own REST API at PATH. HTTPS or HTTP is read from the config the
/// member runs with, so the command is right before and after TLS is turned on;
/// HTTPS is verified against the project CA (the certificate names 127.0.0.1).
pub fn local_curl(port: u64, args: &str, path: &str) -> String {
    let ca = format!("{}/ca.crt", super::tls::PG_DIR);
    format!("if grep -qs '^  certfile: ' {PATRONI_CONFIG}; then s=https; t='--cacert {ca}'; else s=http; t=; fi; curl -s $t {args} $s://127.0.0.1:{port}{path}")
}

/// `restapi` TLS settings for patroni.yml (serve HTTPS with the host
/// certificate; `cafile` also verifies the members Patroni itself calls).
pub fn patroni_tls_yaml(plan: &Plan) -> String {
    if !plan.security.tls {
        return String::new();
    }
    let dir = super::tls::PG_DIR;
    format!("  certfile: {dir}/server.crt\n  keyfile: {dir}/server.key\n  cafile: {dir}/ca.crt\n")
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
    Ok(file(super::patroni::NAME, CURLRC, format!("# Managed by rigger: Patroni REST credentials for rigger's own calls.\nuser = \"{USER}:{quoted}\"\n"), 0o600, "root", "root", None, &[]))
}
