//! storefront: the Saleor Storefront (Next.js) from a local checkout, built on
//! the host and run by systemd on :3000 as its own user, with
//! NEXT_PUBLIC_SALEOR_API_URL through the load balancer. The source is kept
//! root-owned under /opt/storefront/src (checksum-compared like any file); a
//! change copies it to /opt/storefront/build, owned by the service user, and
//! builds there (`build_command`), then restarts.
//!
//! Needs Node.js and a package registry (the Storefront wants Node ≥ 20 and
//! pnpm): on local machines, which have neither, the role puts the files in
//! place and stops before the build, saying so.
//! Gate: GET / on the port answers 200.
//!
//! With `services.storefront.source` the role runs in source mode instead
//! (storefront_source.rs): built on the control host, nothing needed on the hosts.

use super::{file, saleor, service, source_dir, storefront_source};
use crate::config::ops::{HostDesired, OnChange};
use crate::config::run::{indent, wait_for, RoleRun};
use crate::plan::load::resolve_path;
use crate::plan::model::{Plan, ProviderConfig};
use crate::render::Renderer;
use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};
use std::time::Duration;

const ENV: &str = "/etc/storefront/storefront.env";

fn port(plan: &Plan) -> u64 {
    plan.setting("storefront", "port").and_then(Value::as_u64).unwrap_or(3000)
}

fn builds_here(plan: &Plan) -> bool {
    !matches!(plan.provider, ProviderConfig::Local(_))
}

pub fn context(plan: &Plan) -> Result<Value> {
    let public = saleor::public_url(plan).ok_or_else(|| anyhow!("the storefront is reached through HAProxy — give the role `haproxy` to a host"))?;
    Ok(json!({ "api_url": format!("{public}/graphql/"), "public_url": format!("{public}/") }))
}

pub fn desired(r: &Renderer, ctx: &Value, plan: &Plan) -> Result<HostDesired> {
    let mut ctx = ctx.clone();
    ctx["storefront"] = context(plan)?;
    if let Some(b) = storefront_source::build_of(plan)? {
        ctx["build"] = json!({ "dir": b.dir(), "node": b.node(), "build": b.build });
        let files = vec![
            file("storefront", ENV, r.render("storefront.env.j2", &ctx)?, 0o644, "root", "root", None, &["storefront"]),
            file("storefront", "/etc/systemd/system/storefront.service", r.render("storefront-source.service.j2", &ctx)?, 0o644, "root", "root", None, &["storefront"]),
        ];
        return Ok(HostDesired { files, services: vec![service("storefront", "storefront", OnChange::Restart)], ..Default::default() });
    }
    let path = plan.setting("storefront", "path").and_then(Value::as_str).unwrap_or("storefront");
    let mut files = source_dir::files("storefront", &resolve_path(&plan.dir, path), "/opt/storefront/src", &["storefront"])?;
    files.push(file("storefront", ENV, r.render("storefront.env.j2", &ctx)?, 0o644, "root", "root", None, &["storefront"]));
    files.push(file("storefront", "/etc/systemd/system/storefront.service", r.render("storefront.service.j2", &ctx)?, 0o644, "root", "root", None, &["storefront"]));
    let packages = if builds_here(plan) {
        plan.setting("storefront", "packages").and_then(Value::as_array).into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect()
    } else {
        vec![]
    };
    Ok(HostDesired { packages, files, services: vec![service("storefront", "storefront", OnChange::Restart)], ..Default::default() })
}

pub async fn converge(run: &RoleRun<'_>) -> Result<()> {
    let plan = run.plan;
    if let Some(b) = storefront_source::build_of(plan)? {
        return storefront_source::converge(run, &b).await;
    }
    if !builds_here(plan) {
        bail!(
            "storefront: the source, env file and unit are in place on {}, but local machines have no Node.js 20 and no package registry — \
             stopping before the build. Build this plan on cloud VMs to run the Storefront (tests/saleor_render.rs verifies the unit and env).",
            run.hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    let build = plan.setting("storefront", "build_command").and_then(Value::as_str).unwrap_or("corepack pnpm install --frozen-lockfile && corepack pnpm build").to_string();
    for h in &run.hosts {
        let s = run.session(&h.name)?;
        let ch = run.changes_of(&h.name);
        if !ch.files.is_empty() || !ch.start.is_empty() {
            run.events.progress(&format!("storefront {}", h.name), "building (Next.js production build)");
            let script = format!(
                "set -e\nid -u storefront >/dev/null 2>&1 || useradd --system --home-dir /opt/storefront --no-create-home --shell /usr/sbin/nologin storefront\n\
                 install -d -o storefront -g storefront /opt/storefront/build\n\
                 cp -a /opt/storefront/src/. /opt/storefront/build/ && chown -R storefront:storefront /opt/storefront/build\n\
                 cd /opt/storefront/build && runuser -u storefront -- sh -c 'set -a; . {ENV}; set +a; export HOME=/opt/storefront/build; {build}' > /var/log/storefront-build.log 2>&1 || {{ tail -n 30 /var/log/storefront-build.log; exit 1; }}\n"
            );
            let out = s.sudo(&script, None).await?;
            if !out.ok() {
                bail!("{}: the Storefront build failed:\n{}", h.name, indent(&out.stdout));
            }
        }
        run.plain_service_changes(h, s).await?;
        let port = port(plan);
        wait_for(&format!("{}: the Storefront answers on :{port}", h.name), Duration::from_secs(90), || async {
            let out = s.sudo(&format!("curl -s -m 5 -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/"), None).await?;
            Ok(if out.stdout.trim() == "200" { Ok(()) } else { Err(format!("answered {}", out.stdout.trim())) })
        })
        .await?;
    }
    Ok(())
}
