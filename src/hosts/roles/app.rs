//! app: a Python (ASGI) application from a local folder, as a systemd service
//! on each app host — its own system user, a virtualenv that sees the distro's
//! packages (machines may have no index to download from), an environment
//! file (mode 0600) with DATABASE_URL through the HAProxy write port,
//! DATABASE_READ_URL through the read port and REDIS_URL, secrets from the
//! state. Its database and login role are created on the Patroni leader first.
//! Code and config are checksum-compared files: a host restarts only when one
//! of its own files changed, and hosts restart one at a time, each held out
//! of nginx's upstream while it restarts and answering /health before the
//! next goes, so the load balancer always has the others.
//! Gate: /health answers 200 on every app host.

use super::{database, endpoints, file, service, source_dir};
use crate::hosts::ops::{HostDesired, OnChange};
use crate::hosts::run::{start, wait_for, RoleRun};
use crate::plan::load::resolve_path;
use crate::plan::model::{Host, Plan};
use crate::hosts::remote::session::{HostSession, INSTALL_LIMIT};
use crate::render::Renderer;
use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};
use std::time::Duration;
use crate::plan::services::{Setting, SettingType, PORT};
use crate::flows::{FlowSink, Service};
use super::role::Outputs;
use serde_json::Map;

pub fn name(plan: &Plan) -> String {
    plan.str_setting(NAME, "name")
}

fn port(plan: &Plan) -> u64 {
    plan.int_setting(NAME, "port")
}

fn database_name(plan: &Plan) -> String {
    plan.str_setting(NAME, "database")
}

fn home(plan: &Plan) -> String {
    format!("/opt/{}", name(plan))
}

pub fn desired(r: &Renderer, ctx: &Value, plan: &Plan) -> Result<HostDesired> {
    let name = name(plan);
    // The loader checks it (setting_text); a plan built by hand may not have been loaded.
    if !crate::plan::setting_text::unit_name_ok(&name) {
        return Err(anyhow!("services.app.name {name:?}: lowercase letters, digits and - (it names the user, the folder and the service)"));
    }
    let secrets = &ctx["secret"];
    let db = database_name(plan);
    let password = secrets["app_db_password"].as_str().unwrap_or_default();
    let redis_password = secrets["redis_password"].as_str().unwrap_or_default();
    let missing = |what: &str| anyhow!("the app needs {what} in the plan");
    let mut ctx = ctx.clone();
    ctx["app"] = json!({
        "name": name,
        "dir": home(plan),
        "database_url": endpoints::database_url(plan, &db, password, &db, false).ok_or_else(|| missing("haproxy hosts (the write port)"))?,
        "database_read_url": endpoints::database_url(plan, &db, password, &db, true).ok_or_else(|| missing("haproxy hosts (the read port)"))?,
        "redis_url": endpoints::redis_url(plan, redis_password, 0).ok_or_else(|| missing("a redis host"))?,
    });
    let path = plan.str_setting(NAME, "path");
    let local = resolve_path(&plan.dir, &path);
    let mut files = source_dir::files(NAME, &local, &format!("{}/src", home(plan)), &[&name])?;
    files.push(file(NAME, &format!("/etc/{name}/{name}.env"), r.render("app.env.j2", &ctx)?, 0o600, "root", "root", None, &[&name]));
    files.push(file(NAME, &format!("/etc/systemd/system/{name}.service"), r.render("app.service.j2", &ctx)?, 0o644, "root", "root", None, &[&name]));
    let mut packages = vec!["python3-venv".to_string()];
    packages.extend(plan.setting(NAME, "packages").and_then(Value::as_array).into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)));
    Ok(HostDesired { packages, files, services: vec![service(NAME, &name, OnChange::Restart)], ..Default::default() })
}

pub async fn converge(run: &RoleRun<'_>) -> Result<()> {
    let plan = run.plan;
    let db = database_name(plan);
    let password = run.secrets.get("app_db_password").cloned().unwrap_or_default();
    database::ensure(run, &db, &db, &password).await?;
    // Hosts whose app is not running serve nothing yet: they come up all at once.
    let app_name = name(plan);
    let is_down = |h: &Host| run.changes_of(&h.name).start.contains(&app_name);
    run.each(|h, s| async move { if is_down(h) { roll(run, h, s).await } else { Ok(()) } }).await?;
    // The running ones restart one at a time, each held out of nginx's
    // upstream first (the others keep serving) and taken back once it
    // answers /health. Taking it back reloads nginx, so no failure its
    // passive check counted holds the host out any longer.
    let several = run.hosts.len() > 1;
    for h in run.hosts.iter().filter(|h| !is_down(h)) {
        let restarting = run.changes_of(&h.name).restart.contains(&app_name);
        if !(restarting && several && plan.hosts_with_role(super::nginx::NAME).next().is_some()) {
            roll(run, h, run.session(&h.name)?).await?;
            continue;
        }
        let (subject, started) = (format!("app {}", h.name), std::time::Instant::now());
        run.events.started(&subject, "restarting behind nginx: held out of its upstream first");
        let held = super::nginx::hold_out(run, &h.name, h.ip, port(plan)).await.inspect_err(|e| run.events.failed(&subject, "holding it out of nginx", &format!("{e:#}")))?;
        let on = held.hosts().join(", ");
        let rolled = roll(run, h, run.session(&h.name)?).await;
        let back = super::nginx::take_back(run, held).await;
        let done = match (rolled, back) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
            (Err(e), Err(back)) => Err(e.context(format!("and putting it back into nginx's upstream failed too: {back:#}"))),
        };
        match done {
            Ok(()) if on.is_empty() => run.events.finished(&subject, "restarted (no running nginx had it in its upstream)", started),
            Ok(()) => run.events.finished(&subject, &format!("restarted, and back in nginx's upstream on {on}"), started),
            Err(e) => {
                run.events.failed(&subject, "restart", &format!("{e:#}"));
                return Err(e);
            }
        }
    }
    gate(run).await
}

/// Before the database is up (hosts::dag runs it with the staging): the
/// app's user, its virtualenv and requirements on every host that will
/// (re)start — the slow part of an app's first start.
pub async fn prepare(run: &RoleRun<'_>) -> Result<()> {
    run.each(|h, s| async move { prepare_host(run, h, s).await }).await
}

async fn prepare_host(run: &RoleRun<'_>, h: &Host, s: &HostSession) -> Result<()> {
    let plan = run.plan;
    let (name, dir) = (name(plan), home(plan));
    let ch = run.changes_of(&h.name);
    if !ch.start.contains(&name) && !ch.restart.contains(&name) {
        return Ok(());
    }
    let subject = format!("app {}", h.name);
    let touched = |suffix: &str| ch.files.iter().any(|f| f.file.path.ends_with(suffix));
    // The user and the virtualenv (only created when missing).
    let out = s
        .sudo_ok(
            "preparing the app's user and virtualenv",
            &format!(
                "id -u {name} >/dev/null 2>&1 || useradd --system --home-dir {dir} --no-create-home --shell /usr/sbin/nologin {name}\n\
                 if [ ! -x {dir}/venv/bin/python ]; then python3 -m venv --system-site-packages {dir}/venv && echo NEW_VENV; fi"
            ),
        )
        .await?;
    let new_venv = out.contains("NEW_VENV");
    if (new_venv || touched("/src/requirements.txt")) && s.sudo(&format!("test -f {dir}/src/requirements.txt"), None).await?.ok() {
        // With --system-site-packages the distro's packages count: when they
        // satisfy every requirement, pip has nothing to download (and is not
        // asked to re-resolve the distro's own dependency pins).
        let pip = format!("{dir}/venv/bin/pip install --disable-pip-version-check --no-input -q");
        let satisfied = s.sudo(&format!("{pip} --no-index --no-deps --dry-run -r {dir}/src/requirements.txt"), None).await?.ok();
        if !satisfied {
            run.events.progress(&subject, "installing requirements into the virtualenv");
            let out = s.within(INSTALL_LIMIT).sudo(&format!("{pip} --timeout 20 --retries 2 -r {dir}/src/requirements.txt 2>&1"), None).await?;
            if !out.ok() {
                bail!("{}: pip install -r requirements.txt failed (no package index reachable? add the distro packages to services.app.packages):\n{}", h.name, crate::hosts::run::indent(out.stdout.trim()));
            }
        }
    }
    Ok(())
}

/// Bring one host to its new code/config and wait until it answers /health.
async fn roll(run: &RoleRun<'_>, h: &Host, s: &HostSession) -> Result<()> {
    let plan = run.plan;
    let (name, dir) = (name(plan), home(plan));
    let ch = run.changes_of(&h.name);
    let starting = ch.start.contains(&name);
    let changed = ch.restart.contains(&name);
    if !starting && !changed {
        return Ok(());
    }
    let subject = format!("app {}", h.name);
    let touched = |suffix: &str| ch.files.iter().any(|f| f.file.path.ends_with(suffix));
    if touched(&format!("/src/{}", source_dir::MANIFEST)) {
        s.sudo_ok("removing files deleted from the app's folder", &source_dir::prune_script(&format!("{dir}/src"))).await?;
    }
    if starting {
        run.events.progress(&subject, format!("starting {name}"));
        start(s, &name).await?;
    } else if changed {
        run.events.progress(&subject, format!("restarting {name} (rolling, one host at a time)"));
        s.sudo_ok(&format!("restarting {name}"), &format!("systemctl restart {name}")).await?;
    }
    healthy(s, port(plan)).await.map_err(|e| anyhow!("{e:#} (see `journalctl -u {name}` on {})", h.name))
}

/// The gate's check on one app host: /health answers 200.
fn health_ask(port: u64) -> crate::hosts::remote::ahead::Ask {
    crate::hosts::remote::ahead::Ask::sudo(format!("curl -s -m 5 -o /dev/stderr -w '%{{http_code}}' http://127.0.0.1:{port}/health"), None)
}

async fn healthy(s: &HostSession, port: u64) -> Result<()> {
    let ask = health_ask(port);
    wait_for(&format!("{}: the app answers /health", s.name), Duration::from_secs(60), || async {
        let out = s.sudo(&ask.script, None).await?;
        Ok(if out.stdout.trim() == "200" { Ok(()) } else { Err(format!("/health answered {}: {}", out.stdout.trim(), out.stderr.trim())) })
    })
    .await
}

pub async fn gate(run: &RoleRun<'_>) -> Result<()> {
    let port = port(run.plan);
    run.each(|_, s| async move { healthy(s, port).await }).await
}


/// The app role, as the registry lists it.
pub struct App;

/// The plan's `roles:` value.
pub const NAME: &str = "app";

/// The settings under `services: app:` — each default is written here only.
static SETTINGS: &[Setting] = &[
    Setting::new("path", SettingType::Str, |_| json!("examples/demo-app"), "local directory with the application"),
    Setting::new("port", PORT, |_| json!(9001), "port the app listens on"),
    Setting::new("module", SettingType::Str, |_| json!("app:app"), "ASGI module:attribute"),
    Setting::new("database", SettingType::Identifier, |_| json!("app"), "database name"),
    Setting::new("name", SettingType::UnitName, |_| json!("app"), "names the service, its user and /opt/<name>"),
    Setting::new("packages", SettingType::List, |_| json!([]), "distro packages the app needs (e.g. python3-fastapi)"),
];

/// The secrets the role needs (generated once, kept in the state).
const SECRETS: &[&str] = &["app_db_password"];

#[async_trait::async_trait]
impl super::role::Role for App {
    fn name(&self) -> &'static str {
        NAME
    }

    fn outputs(&self, at: &Outputs<'_>, o: &mut Map<String, Value>) {
        let apps = at.ips(NAME);
        if !apps.is_empty() {
            o.insert("apps".into(), json!(apps.iter().map(|ip| format!("http://{ip}:{}/", at.setting(NAME, "port"))).collect::<Vec<_>>()));
        }
    }

    fn inventory_vars(&self) -> &'static [(&'static str, &'static str)] {
        &[("app_port", "port")]
    }

    fn flows(&self, net: &mut FlowSink<'_>) {
        net.tcp(super::nginx::NAME, NAME, "port", Service::App);
    }

    fn listens(&self, _plan: &Plan) -> Vec<(&'static str, &'static str)> {
        vec![(NAME, "port")]
    }

    fn check(&self, at: &super::role::PlanCheck<'_>, d: &mut crate::plan::diag::Diags) {
        at.require(NAME, &[(super::haproxy::NAME, "its DATABASE_URL goes through HAProxy's write and read ports"), (super::patroni::NAME, "its database is created on the Patroni leader"), (super::redis::NAME, "its REDIS_URL")], d);
    }

    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }

    fn secrets(&self) -> &'static [&'static str] {
        SECRETS
    }
    /// The write port (HAProxy). When apps reach it through keepalived's VIP,
    /// their own health gate waits for the VIP: they start meanwhile.
    fn needs(&self) -> &'static [&'static str] {
        &[super::haproxy::NAME, super::redis::NAME]
    }
    fn services(&self) -> &'static [&'static str] {
        &["app"]
    }
    fn desired(&self, at: &super::role::HostInput<'_>) -> anyhow::Result<crate::hosts::ops::HostDesired> {
        desired(at.renderer, at.ctx, at.plan)
    }
    fn gate_asks(&self, plan: &Plan, _host: &Host, _secrets: &std::collections::BTreeMap<String, String>) -> Vec<crate::hosts::remote::ahead::Ask> {
        vec![health_ask(port(plan))]
    }
    /// The database checks `database::ensure` makes on the Patroni members.
    fn gate_asks_elsewhere(&self, plan: &Plan, host: &Host, secrets: &std::collections::BTreeMap<String, String>) -> Vec<crate::hosts::remote::ahead::Ask> {
        let db = database_name(plan);
        database::gate_asks(plan, host, &db, &db, secrets.get("app_db_password").map(String::as_str).unwrap_or_default())
    }
    async fn prepare(&self, run: &RoleRun<'_>) -> anyhow::Result<()> {
        prepare(run).await
    }
    async fn converge(&self, run: &RoleRun<'_>) -> anyhow::Result<()> {
        converge(run).await
    }
}

#[cfg(test)]
mod tests {
    use crate::render::Renderer;
    use std::collections::BTreeMap;

    fn plan(dir: &std::path::Path) -> crate::plan::model::Plan {
        let text = format!(
            "version: 1\nproject: t\nprovider: {{ kind: local }}\nnetwork:\n  name: main\n  subnets:\n    - {{ name: app, cidr: 10.9.0.0/24 }}\n\
             hosts:\n  - {{ name: pg, count: 3, roles: [etcd, patroni], ip: 10.9.0.21 }}\n  - {{ name: lb, count: 2, roles: [haproxy, keepalived], ip: 10.9.0.11 }}\n\
             \x20 - {{ name: redis, roles: [redis], ip: 10.9.0.31 }}\n  - {{ name: app, count: 3, roles: [app], ip: 10.9.0.41 }}\n  - {{ name: web, roles: [nginx], ip: 10.9.0.5 }}\n\
             services:\n  keepalived: {{ vip: 10.9.0.10 }}\n  app: {{ path: {} }}\n",
            dir.display()
        );
        crate::plan::load_str(&dir.join("plan.yaml"), &text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Each host asks ahead the commands its gates will run there — the app's
    /// database checks on the Patroni members too — with the passwords on
    /// stdin, never in a script.
    #[test]
    fn every_gate_is_asked_ahead_on_the_host_it_runs_on() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("app.py"), "app = None\n").unwrap();
        let p = plan(d.path());
        let secrets: BTreeMap<String, String> = [("app_db_password", "dbpass123"), ("redis_password", "redispass9")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let asks = |host: &str| crate::hosts::roles::gate_asks(&p, p.host(host).unwrap(), &secrets);
        let has = |host: &str, part: &str| asks(host).iter().any(|a| a.script.contains(part));
        // The app's leader and login checks ride along on every Patroni member (the leader is not known before).
        for pg in ["pg-1", "pg-2", "pg-3"] {
            assert!(has(pg, "/primary") && has(pg, "-U app -d app"), "{pg}: {:?}", asks(pg));
        }
        assert!(!has("lb-1", "/primary") && !has("app-1", "-U app"));
        assert!(has("redis", "redis-cli") && has("app-1", ":9001/health") && has("web", "x-upstream"));
        for host in ["pg-1", "redis", "app-1", "web", "lb-1"] {
            for a in asks(host) {
                assert!(!a.script.contains("dbpass123") && !a.script.contains("redispass9"), "{host}: a secret in {}", a.script);
            }
        }
        let login = asks("pg-1").into_iter().find(|a| a.script.contains("-U app")).unwrap();
        assert_eq!(login.stdin.as_deref(), Some(&b"dbpass123\n"[..]));
    }

    #[test]
    fn env_goes_through_the_vip_ports_with_secrets_only_in_the_0600_env_file() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("app.py"), "app = None\n").unwrap();
        let p = plan(d.path());
        let secrets: BTreeMap<String, String> = [("app_db_password", "dbpass123"), ("redis_password", "redispass9"), ("tls_ca_cert", "the CA")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let r = Renderer::new().unwrap();
        let d = crate::hosts::roles::desired(&p, p.host("app-1").unwrap(), &secrets, &r).unwrap();
        let env = d.files.iter().find(|f| f.path == "/etc/app/app.env").unwrap();
        assert_eq!((env.mode, env.owner.as_str()), (0o600, "root"));
        let tls = "?sslmode=verify-full&sslrootcert=/etc/rigger/ca.crt";
        assert!(env.content.contains(&format!("DATABASE_URL=postgresql://app:dbpass123@10.9.0.10:5000/app{tls}\n")), "{}", env.content);
        assert!(env.content.contains(&format!("DATABASE_READ_URL=postgresql://app:dbpass123@10.9.0.10:5001/app{tls}\n")), "{}", env.content);
        assert!(env.content.contains("REDIS_URL=rediss://:redispass9@10.9.0.31:6379/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/rigger/ca.crt\n"), "{}", env.content);
        let unit = d.files.iter().find(|f| f.path == "/etc/systemd/system/app.service").unwrap();
        assert!(!unit.content.contains("dbpass123") && !unit.content.contains("redispass9"));
        assert!(unit.content.contains("User=app") && unit.content.contains("EnvironmentFile=/etc/app/app.env"));
        assert!(d.files.iter().any(|f| f.path == "/opt/app/src/app.py" && f.notify == vec!["app".to_string()]));

        let web = crate::hosts::roles::desired(&p, p.host("web").unwrap(), &secrets, &r).unwrap();
        let conf = web.files.iter().find(|f| f.role == "nginx" && f.validate.is_some()).unwrap();
        assert_eq!(conf.validate.as_ref().unwrap().command, "nginx -t -q -c {}");
        assert!(conf.content.contains("least_conn;"));
        for ip in ["10.9.0.41", "10.9.0.42", "10.9.0.43"] {
            assert!(conf.content.contains(&format!("server {ip}:9001 max_fails=3 fail_timeout=10s;")), "{}", conf.content);
        }
    }
}
