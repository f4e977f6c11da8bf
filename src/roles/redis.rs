//! Redis: one instance with a password (from the state) and an LRU memory cap.
//! Gate: PING answers PONG with the password.

use super::{file, service};
use crate::config::ops::{HostDesired, OnChange};
use crate::config::run::{wait_for, RoleRun};
use crate::render::Renderer;
use anyhow::Result;
use serde_json::Value;
use std::time::Duration;

pub fn desired(r: &Renderer, ctx: &Value) -> Result<HostDesired> {
    Ok(HostDesired {
        packages: vec!["redis-server".into()],
        files: vec![file("redis", "/etc/redis/redis.conf", r.render("redis.conf.j2", ctx)?, 0o640, "redis", "redis", None, &["redis-server"])],
        services: vec![service("redis", "redis-server", OnChange::Restart)],
        ..Default::default()
    })
}

pub async fn converge(run: &RoleRun<'_>) -> Result<()> {
    run.each(|h, s| async move { run.plain_service_changes(h, s).await }).await?;
    let port = run.plan.setting("redis", "port").and_then(Value::as_u64).unwrap_or(6379);
    let password = run.secrets.get("redis_password").cloned().unwrap_or_default();
    run.each(|h, s| {
        let password = password.clone();
        async move {
            wait_for(&format!("{}: redis answers PING", h.name), Duration::from_secs(30), || async {
                // The password travels on stdin, never on a command line.
                let out = s.sudo(&format!("read -r REDISCLI_AUTH; export REDISCLI_AUTH; redis-cli -p {port} ping"), Some(format!("{password}\n").as_bytes())).await?;
                if out.stdout.trim() == "PONG" {
                    Ok(Ok(()))
                } else {
                    Ok(Err(format!("{}{}", out.stdout.trim(), out.stderr.trim())))
                }
            })
            .await
        }
    })
    .await
}
