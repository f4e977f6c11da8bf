//! Redis: one instance with a password (from the state) and an LRU memory cap,
//! TLS-only with the project CA's host certificate when `security.tls` is on
//! (Debian 12's redis-server 7.0 is built with TLS).
//! Gate: PING answers PONG with the password.

use super::{file, service};
use crate::hosts::ops::{HostDesired, OnChange};
use crate::hosts::run::{wait_for, RoleRun};
use crate::hosts::remote::session::HostSession;
use crate::render::Renderer;
use anyhow::Result;
use serde_json::Value;
use std::time::Duration;
use crate::plan::services::{Setting, PORT, REDIS_SIZE};
use serde_json::json;
use crate::plan::model::Plan;
use crate::flows::{FlowSink, Service};
use super::role::Outputs;
use serde_json::Map;

pub fn desired(r: &Renderer, ctx: &Value) -> Result<HostDesired> {
    Ok(HostDesired {
        packages: vec!["redis-server".into()],
        files: vec![file(NAME, "/etc/redis/redis.conf", r.render("redis.conf.j2", ctx)?, 0o640, "redis", "redis", None, &["redis-server"])],
        services: vec![service(NAME, "redis-server", OnChange::Restart)],
        ..Default::default()
    })
}

/// `PING` with the password (on stdin, never on a command line): what Redis answered.
/// TLS or not is read from the config Redis runs with (right before and after
/// TLS is turned on); TLS is verified against the project CA.
pub async fn ping(s: &HostSession, port: u64, password: &str) -> Result<String> {
    let ask = ping_ask(port, password);
    let out = s.sudo(&ask.script, ask.stdin.as_deref()).await?;
    Ok(format!("{}{}", out.stdout.trim(), out.stderr.trim()))
}

/// `ping`'s command (asked ahead in the facts round trip as the gate's check).
fn ping_ask(port: u64, password: &str) -> crate::hosts::remote::ahead::Ask {
    let tls = format!("if grep -qs '^tls-port' /etc/redis/redis.conf; then t='--tls --cacert {}/ca.crt'; else t=; fi", super::tls::REDIS_DIR);
    crate::hosts::remote::ahead::Ask::sudo(format!("{tls}; read -r REDISCLI_AUTH; export REDISCLI_AUTH; redis-cli $t -p {port} ping"), Some(format!("{password}\n").as_bytes()))
}

fn port(plan: &crate::plan::model::Plan) -> u64 {
    plan.int_setting(NAME, "port")
}

pub async fn converge(run: &RoleRun<'_>) -> Result<()> {
    run.each(|h, s| async move { run.plain_service_changes(h, s).await }).await?;
    let port = port(run.plan);
    let password = run.secrets.get("redis_password").cloned().unwrap_or_default();
    run.each(|h, s| {
        let password = password.clone();
        async move {
            wait_for(&format!("{}: redis answers PING", h.name), Duration::from_secs(30), || async {
                let answer = ping(s, port, &password).await?;
                Ok(if answer == "PONG" { Ok(()) } else { Err(answer) })
            })
            .await
        }
    })
    .await
}

/// The redis role, as the registry lists it.
pub struct Redis;

/// The plan's `roles:` value.
pub const NAME: &str = "redis";

/// The settings under `services: redis:` — each default is written here only.
static SETTINGS: &[Setting] = &[
    Setting::new("port", PORT, |_| json!(6379), "Redis port"),
    Setting::new("maxmemory", REDIS_SIZE, |_| json!("256mb"), "Redis maxmemory"),
];

/// The secrets the role needs (generated once, kept in the state).
const SECRETS: &[&str] = &["redis_password"];

#[async_trait::async_trait]
impl super::role::Role for Redis {
    fn name(&self) -> &'static str {
        NAME
    }

    fn outputs(&self, at: &Outputs<'_>, o: &mut Map<String, Value>) {
        if let Some(r) = at.ips(NAME).first() {
            o.insert("redis".into(), json!(format!("redis://{r}:{}/0", at.setting(NAME, "port"))));
        }
    }

    fn inventory_vars(&self) -> &'static [(&'static str, &'static str)] {
        &[("redis_port", "port")]
    }

    fn flows(&self, net: &mut FlowSink<'_>) {
        net.tcp(super::app::NAME, NAME, "port", Service::Redis);
        net.tcp(super::saleor::NAME, NAME, "port", Service::Redis);
    }

    fn listens(&self, _plan: &Plan) -> Vec<(&'static str, &'static str)> {
        vec![(NAME, "port")]
    }

    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }

    fn secrets(&self) -> &'static [&'static str] {
        SECRETS
    }

    fn services(&self) -> &'static [&'static str] {
        &["redis-server"]
    }
    fn desired(&self, at: &super::role::HostInput<'_>) -> anyhow::Result<crate::hosts::ops::HostDesired> {
        desired(at.renderer, at.ctx)
    }
    fn gate_asks(&self, plan: &crate::plan::model::Plan, _host: &crate::plan::model::Host, secrets: &std::collections::BTreeMap<String, String>) -> Vec<crate::hosts::remote::ahead::Ask> {
        vec![ping_ask(port(plan), secrets.get("redis_password").map(String::as_str).unwrap_or_default())]
    }
    async fn converge(&self, run: &RoleRun<'_>) -> anyhow::Result<()> {
        converge(run).await
    }
}
