//! keepalived: the VIP over the HAProxy hosts (unicast VRRP, follows a live
//! HAProxy). Config checked with `keepalived -t`. Gate: exactly one host holds the VIP.

use super::{file, service};
use crate::config::ops::{HostDesired, OnChange};
use crate::config::run::{wait_for, RoleRun};
use crate::render::Renderer;
use anyhow::Result;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub fn desired(r: &Renderer, ctx: &Value) -> Result<HostDesired> {
    Ok(HostDesired {
        packages: vec!["keepalived".into()],
        files: vec![file(
            "keepalived",
            "/etc/keepalived/keepalived.conf",
            r.render("keepalived.conf.j2", ctx)?,
            0o640,
            "root",
            "root",
            Some(("keepalived -t", "keepalived -t -f {}")),
            &["keepalived"],
        )],
        services: vec![service("keepalived", "keepalived", OnChange::Restart)],
        ..Default::default()
    })
}

pub async fn converge(run: &RoleRun<'_>) -> Result<()> {
    run.each(|h, s| async move { run.plain_service_changes(h, s).await }).await?;
    gate(run).await
}

/// Who holds the VIP now.
pub async fn holders(run: &RoleRun<'_>, vip: &str) -> Result<Vec<String>> {
    let count = AtomicUsize::new(0);
    let names = std::sync::Mutex::new(Vec::new());
    run.each(|h, s| {
        let (count, names) = (&count, &names);
        async move {
            let out = s.sh("ip -4 -o addr show").await?;
            if out.stdout.contains(&format!(" {vip}/")) {
                count.fetch_add(1, Ordering::SeqCst);
                names.lock().expect("not poisoned").push(h.name.clone());
            }
            Ok(())
        }
    })
    .await?;
    Ok(names.into_inner().unwrap_or_default())
}

pub async fn gate(run: &RoleRun<'_>) -> Result<()> {
    let vip = run.plan.setting("keepalived", "vip").and_then(Value::as_str).unwrap_or_default().to_string();
    wait_for(&format!("the VIP {vip} on exactly one HAProxy host"), Duration::from_secs(60), || async {
        let h = holders(run, &vip).await?;
        if h.len() == 1 {
            Ok(Ok(()))
        } else {
            Ok(Err(format!("held by {h:?}")))
        }
    })
    .await
}
