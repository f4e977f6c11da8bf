//! `rigger output`: where the built stack answers, and how to log in.
//! Passwords are masked unless --show-secrets.

use crate::cli::OutputCmd;
use crate::project::Project;
use anyhow::{bail, Result};
use serde_json::{json, Map, Value};
use std::path::Path;

const MASK: &str = "(sensitive — rigger output --show-secrets)";

pub fn run(args: &OutputCmd, state_override: Option<&Path>) -> Result<i32> {
    // `rigger output ca` means the default plan, unless a plan file is called `ca`.
    let (plan_path, what) = match (&args.what, args.plan.to_str()) {
        (None, Some("ca")) if !args.plan.exists() => (Path::new("rigger.yaml"), Some("ca")),
        (w, _) => (args.plan.as_path(), w.as_deref()),
    };
    let project = Project::load(plan_path, state_override)?;
    let Some(state) = crate::state::read_state(&project.state_path)? else {
        bail!("nothing was applied for project {} yet — run `rigger apply {}` first", project.plan.project, plan_path.display());
    };
    match what {
        None => {}
        Some("ca") => {
            let Some(ca) = state.secrets.get(crate::pki::CA_CERT) else {
                bail!("project {} has no CA — TLS is off in the plan (security.tls: false) or nothing was applied with it yet", project.plan.project);
            };
            let path = crate::pki::ca_file(&project);
            crate::pki::write_public(&path, ca)?;
            println!("{}", path.display());
            return Ok(0);
        }
        Some(other) => bail!("`rigger output {other}`: unknown output — the one named output is `ca` (the project CA certificate)"),
    }
    let outputs = collect(&project, &state, args.show_secrets);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&Value::Object(outputs))?);
    } else {
        let width = outputs.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in &outputs {
            let shown = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("{k:<width$} = {shown}");
        }
    }
    Ok(0)
}

pub fn collect(project: &Project, state: &crate::state::State, show_secrets: bool) -> Map<String, Value> {
    let plan = &project.plan;
    let exists = |name: &str| state.machines().any(|m| m.address.name == name);
    let ips = |role: &str| -> Vec<String> { plan.hosts_with_role(role).filter(|h| exists(&h.name)).map(|h| h.ip.to_string()).collect() };
    let setting = |role: &str, key: &str| plan.setting(role, key).cloned().unwrap_or(Value::Null);
    let secret = |name: &str| -> Value {
        match state.secrets.get(name) {
            Some(v) if show_secrets => json!(v),
            Some(_) => json!(MASK),
            None => Value::Null,
        }
    };
    let mut o = Map::new();
    o.insert("project".into(), json!(plan.project));
    o.insert("machines".into(), json!(state.machines().count()));
    let lb_ips = ips("haproxy");
    let front = plan.setting("keepalived", "vip").and_then(Value::as_str).map(str::to_string).or_else(|| lb_ips.first().cloned());
    if let Some(front) = &front {
        o.insert("postgres_write".into(), json!(format!("postgres://postgres@{front}:{}/postgres", setting("haproxy", "write_port"))));
        o.insert("postgres_read".into(), json!(format!("postgres://postgres@{front}:{}/postgres", setting("haproxy", "read_port"))));
        if plan.setting("keepalived", "vip").is_some() {
            o.insert("vip".into(), json!(front));
        }
    }
    if !lb_ips.is_empty() {
        o.insert("haproxy_stats".into(), json!(lb_ips.iter().map(|ip| format!("http://{ip}:{}/stats", setting("haproxy", "stats_port"))).collect::<Vec<_>>()));
        o.insert("haproxy_stats_user".into(), json!("admin"));
        o.insert("haproxy_stats_password".into(), secret("haproxy_stats_password"));
    }
    let pg = ips("patroni");
    if !pg.is_empty() {
        o.insert("patroni_rest".into(), json!(pg.iter().map(|ip| format!("{}://{ip}:{}/", crate::hosts::roles::tls::scheme(plan), setting("patroni", "rest_port"))).collect::<Vec<_>>()));
        o.insert("postgres_superuser".into(), json!("postgres"));
        o.insert("postgres_superuser_password".into(), secret("postgres_superuser_password"));
    }
    let etcd = ips("etcd");
    if !etcd.is_empty() {
        o.insert("etcd_endpoints".into(), json!(etcd.iter().map(|ip| format!("{}://{ip}:{}", crate::hosts::roles::tls::scheme(plan), setting("etcd", "client_port"))).collect::<Vec<_>>().join(",")));
    }
    if let Some(r) = ips("redis").first() {
        o.insert("redis".into(), json!(format!("redis://{r}:{}/0", setting("redis", "port"))));
    }
    if let Some(n) = ips("nginx").first() {
        o.insert("web".into(), json!(format!("http://{n}:{}/", setting("nginx", "port"))));
    }
    let apps = ips("app");
    if !apps.is_empty() {
        o.insert("apps".into(), json!(apps.iter().map(|ip| format!("http://{ip}:{}/", setting("app", "port"))).collect::<Vec<_>>()));
    }
    if let (Some(front), false) = (&front, ips("saleor").is_empty()) {
        o.insert("saleor_api".into(), json!(format!("http://{front}/graphql/")));
        o.insert("saleor_dashboard".into(), json!(format!("http://{front}:{}/", setting("saleor", "dashboard_port"))));
    }
    if let Some(s) = ips("storefront").first() {
        o.insert("storefront".into(), json!(format!("http://{s}:{}/", setting("storefront", "port"))));
    }
    o
}
