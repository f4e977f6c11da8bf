//! nginx: `least_conn` over the app hosts with passive health checks
//! (`max_fails`/`fail_timeout`, the next server retried on errors). rigger
//! owns the main nginx.conf, so `nginx -t -c` on the candidate checks the
//! whole config before it replaces the live one; a rejected config leaves the
//! running nginx untouched. Changes reload (no dropped connections).
//! Gate: /health through nginx answers 200.

use super::{file, service};
use crate::hosts::ops::{HostDesired, OnChange};
use crate::hosts::run::{wait_for, RoleRun};
use crate::render::Renderer;
use anyhow::{bail, Result};
use serde_json::Value;
use std::time::Duration;
use crate::plan::services::{Setting, SettingType, PORT};
use serde_json::json;
use crate::plan::model::Plan;
use super::role::Outputs;
use serde_json::Map;

pub fn desired(r: &Renderer, ctx: &Value) -> Result<HostDesired> {
    if ctx["members"]["app"].as_array().is_none_or(Vec::is_empty) {
        bail!("nginx balances the app hosts — give the role `app` to some hosts");
    }
    Ok(HostDesired {
        packages: vec!["nginx".into()],
        files: vec![file(NAME, "/etc/nginx/nginx.conf", r.render("nginx.conf.j2", ctx)?, 0o644, "root", "root", Some(("nginx -t", "nginx -t -q -c {}")), &["nginx"])],
        services: vec![service(NAME, "nginx", OnChange::Reload)],
        ..Default::default()
    })
}

pub async fn converge(run: &RoleRun<'_>) -> Result<()> {
    run.each(|h, s| async move { run.plain_service_changes(h, s).await }).await?;
    gate(run).await
}

pub async fn gate(run: &RoleRun<'_>) -> Result<()> {
    let port = run.plan.int_setting(NAME, "port");
    run.each(|h, s| async move {
        wait_for(&format!("{}: /health through nginx", h.name), Duration::from_secs(60), || async {
            let out = s.sudo(&crate::client_path::nginx_health_ask(port).script, None).await?;
            Ok(if out.stdout.trim() == "200" { Ok(()) } else { Err(format!("/health answered {}", out.stdout.trim())) })
        })
        .await?;
        // Least-conn may keep answering from one server: prove each app is reached.
        crate::client_path::nginx_gate(run.plan, s, Duration::from_secs(60)).await
    })
    .await
}

/// The nginx role, as the registry lists it.
pub struct Nginx;

/// The plan's `roles:` value.
pub const NAME: &str = "nginx";

/// The settings under `services: nginx:` — each default is written here only.
static SETTINGS: &[Setting] = &[
    Setting::new("port", PORT, |_| json!(80), "HTTP port"),
    Setting::new("max_fails", SettingType::Int { min: 0, max: 100 }, |_| json!(3), "passive health check"),
    Setting::new("fail_timeout", SettingType::Int { min: 1, max: 3600 }, |_| json!(10), "s"),
];

#[async_trait::async_trait]
impl super::role::Role for Nginx {
    fn name(&self) -> &'static str {
        NAME
    }

    fn outputs(&self, at: &Outputs<'_>, o: &mut Map<String, Value>) {
        if let Some(n) = at.ips(NAME).first() {
            o.insert("web".into(), json!(format!("http://{n}:{}/", at.setting(NAME, "port"))));
        }
    }

    fn inventory_vars(&self) -> &'static [(&'static str, &'static str)] {
        &[("nginx_port", "port")]
    }

    fn listens(&self, _plan: &Plan) -> Vec<(&'static str, &'static str)> {
        vec![(NAME, "port")]
    }

    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }

    fn needs(&self) -> &'static [&'static str] {
        &[super::app::NAME, super::saleor::NAME]
    }
    fn services(&self) -> &'static [&'static str] {
        &["nginx"]
    }
    fn desired(&self, at: &super::role::HostInput<'_>) -> anyhow::Result<crate::hosts::ops::HostDesired> {
        desired(at.renderer, at.ctx)
    }
    fn gate_asks(&self, plan: &crate::plan::model::Plan, _host: &crate::plan::model::Host, _secrets: &std::collections::BTreeMap<String, String>) -> Vec<crate::hosts::remote::ahead::Ask> {
        crate::client_path::nginx_gate_asks(plan)
    }
    async fn converge(&self, run: &RoleRun<'_>) -> anyhow::Result<()> {
        converge(run).await
    }
}
