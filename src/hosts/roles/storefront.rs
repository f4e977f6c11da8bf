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
use crate::hosts::ops::{HostDesired, OnChange};
use crate::hosts::run::{indent, wait_for, RoleRun};
use crate::plan::load::resolve_path;
use crate::plan::model::Plan;
use crate::render::Renderer;
use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};
use std::time::Duration;
use crate::plan::services::{Setting, SettingType, PORT};
use crate::flows::{FlowSink, Service};
use super::role::Outputs;
use serde_json::Map;

const ENV: &str = "/etc/storefront/storefront.env";

fn port(plan: &Plan) -> u64 {
    plan.int_setting(NAME, "port")
}

fn builds_here(plan: &Plan) -> bool {
    crate::cloud::providers::rules::rules_of(&plan.provider).machines_reach_registries()
}

pub fn context(plan: &Plan) -> Result<Value> {
    let public = saleor::public_url(plan).ok_or_else(|| anyhow!("the storefront is reached through HAProxy — give the role `haproxy` to a host"))?;
    Ok(json!({ "api_url": format!("{public}/graphql/"), "public_url": format!("{public}/") }))
}

/// When the shop's public URL names an IP address that is not the load
/// balancer's private one (the address the cloud gave it), the Storefront's
/// server side — which calls that URL — is sent to the private one instead:
/// a host without a public address of its own cannot reach a public one.
fn hairpin(plan: &Plan) -> Option<Value> {
    let public = saleor::public_url(plan)?;
    let (host, port) = match saleor::host_and_port(&public) {
        (h, Some(p)) => (h, p.parse::<u16>().ok()?),
        (h, None) => (h, if public.starts_with("https://") { 443 } else { 80 }),
    };
    let address: std::net::Ipv4Addr = host.parse().ok()?;
    let private = super::endpoints::lb_address(plan)?;
    if private == address.to_string() {
        return None;
    }
    let lb_port = plan.int_setting(super::haproxy::NAME, "http_port");
    Some(json!({ "public": address.to_string(), "port": port, "private": private, "lb_port": if port == 80 { lb_port } else { port as u64 } }))
}

const HAIRPIN_UNIT: &str = "rigger-storefront-hairpin";

/// The hairpin's rules, unit and package on a Storefront host (nothing when none is needed).
fn hairpin_desired(r: &Renderer, ctx: &Value, plan: &Plan) -> Result<HostDesired> {
    let Some(h) = hairpin(plan) else { return Ok(HostDesired::default()) };
    let mut ctx = ctx.clone();
    ctx["hairpin"] = h;
    let files = vec![
        file(NAME, "/etc/rigger/storefront-hairpin.nft", r.render("storefront-hairpin.nft.j2", &ctx)?, 0o644, "root", "root", Some(("nft -c", "nft -c -f {}")), &[HAIRPIN_UNIT]),
        file(NAME, &format!("/etc/systemd/system/{HAIRPIN_UNIT}.service"), r.render("storefront-hairpin.service.j2", &ctx)?, 0o644, "root", "root", None, &[HAIRPIN_UNIT]),
    ];
    Ok(HostDesired { packages: vec!["nftables".into()], files, services: vec![service(NAME, HAIRPIN_UNIT, OnChange::Restart)], ..Default::default() })
}

pub fn desired(r: &Renderer, ctx: &Value, plan: &Plan) -> Result<HostDesired> {
    let mut ctx = ctx.clone();
    ctx["storefront"] = context(plan)?;
    let mut d = HostDesired { services: vec![service(NAME, "storefront", OnChange::Restart)], ..Default::default() };
    if let Some(b) = storefront_source::build_of(plan)? {
        ctx["build"] = json!({ "dir": b.dir(), "node": b.node(), "build": b.build });
        d.files.push(file(NAME, ENV, r.render("storefront.env.j2", &ctx)?, 0o644, "root", "root", None, &["storefront"]));
        d.files.push(file(NAME, "/etc/systemd/system/storefront.service", r.render("storefront-source.service.j2", &ctx)?, 0o644, "root", "root", None, &["storefront"]));
    } else {
        let path = plan.str_setting(NAME, "path");
        d.files = source_dir::files(NAME, &resolve_path(&plan.dir, &path), "/opt/storefront/src", &["storefront"])?;
        d.files.push(file(NAME, ENV, r.render("storefront.env.j2", &ctx)?, 0o644, "root", "root", None, &["storefront"]));
        d.files.push(file(NAME, "/etc/systemd/system/storefront.service", r.render("storefront.service.j2", &ctx)?, 0o644, "root", "root", None, &["storefront"]));
        if builds_here(plan) {
            d.packages = plan.setting(NAME, "packages").and_then(Value::as_array).into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect();
        }
    }
    // The hairpin, in either mode: its unit starts before the Storefront's.
    let hairpin = hairpin_desired(r, &ctx, plan)?;
    d.packages.extend(hairpin.packages);
    d.files.extend(hairpin.files);
    d.services.splice(0..0, hairpin.services);
    Ok(d)
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
    let build = plan.str_setting(NAME, "build_command");
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
            let out = s.within(crate::hosts::remote::session::BUILD_LIMIT).sudo(&script, None).await?;
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


/// The storefront role, as the registry lists it.
pub struct Storefront;

/// The plan's `roles:` value.
pub const NAME: &str = "storefront";

/// The settings under `services: storefront:` — each default is written here only.
static SETTINGS: &[Setting] = &[
    Setting::new("path", SettingType::Str, |_| json!("storefront"), "local directory with the Next.js storefront"),
    Setting::new("port", PORT, |_| json!(3000), "port"),
    Setting::new("packages", SettingType::List, |_| json!(["nodejs", "npm"]), "distro packages for Node.js (the Storefront wants Node >= 20)"),
    Setting::new("build_command", SettingType::Str, |_| json!("corepack pnpm install --frozen-lockfile && corepack pnpm build"), "run in the build folder as the storefront user, with the env file loaded"),
    Setting::optional("source", SettingType::Str, "source mode: the Storefront's source (a .tar.gz or a folder), built on the control host (pnpm install + next build, standalone) after the Saleor API answers, and run on the hosts with a Node runtime rigger ships (instead of `path`)"),
    Setting::new("node_version", SettingType::Str, |_| json!(super::node_toolchain::DEFAULT_NODE_VERSION), "source mode: the Node release rigger downloads (npm registry) to build the Storefront and ships to its hosts"),
];

#[async_trait::async_trait]
impl super::role::Role for Storefront {
    fn name(&self) -> &'static str {
        NAME
    }

    fn outputs(&self, at: &Outputs<'_>, o: &mut Map<String, Value>) {
        if let Some(s) = at.ips(NAME).first() {
            o.insert("storefront".into(), json!(format!("http://{s}:{}/", at.setting(NAME, "port"))));
        }
    }

    fn inventory_vars(&self) -> &'static [(&'static str, &'static str)] {
        &[("storefront_port", "port")]
    }

    fn flows(&self, net: &mut FlowSink<'_>) {
        net.tcp(super::haproxy::NAME, NAME, "port", Service::Storefront);
    }

    fn listens(&self, _plan: &Plan) -> Vec<(&'static str, &'static str)> {
        vec![(NAME, "port")]
    }

    fn settings(&self) -> &'static [Setting] {
        SETTINGS
    }

    fn check(&self, at: &super::role::PlanCheck<'_>, d: &mut crate::plan::diag::Diags) {
        at.require(NAME, &[(super::saleor::NAME, "it is built against and calls Saleor's API")], d);
    }

    fn needs(&self) -> &'static [&'static str] {
        &[super::saleor::NAME]
    }
    fn services(&self) -> &'static [&'static str] {
        &["storefront"]
    }
    fn desired(&self, at: &super::role::HostInput<'_>) -> anyhow::Result<crate::hosts::ops::HostDesired> {
        desired(at.renderer, at.ctx, at.plan)
    }
    async fn converge(&self, run: &RoleRun<'_>) -> anyhow::Result<()> {
        converge(run).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dir: &std::path::Path) -> Plan {
        std::fs::write(dir.join("storefront.tar.gz"), b"not really a tarball").unwrap();
        let text = "version: 1\nproject: t\nprovider: { kind: local }\nnetwork:\n  name: main\n  subnets:\n    - { name: app, cidr: 10.9.0.0/24 }\n\
                    hosts:\n  - { name: lb, roles: [haproxy], ip: 10.9.0.10 }\n  - { name: pg, count: 3, roles: [etcd, patroni], ip: 10.9.0.21 }\n  - { name: api, roles: [saleor, redis], ip: 10.9.0.31 }\n  - { name: shop, roles: [storefront], ip: 10.9.0.40 }\n\
                    services:\n  storefront: { source: storefront.tar.gz }\n";
        crate::plan::load_str(&dir.join("plan.yaml"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn desired_of(p: &Plan) -> HostDesired {
        let mut state = crate::state::State::new("t", "local");
        crate::commands::ensure_generated(&mut state, p).unwrap();
        super::super::desired(p, p.host("shop").unwrap(), &state.secrets, &Renderer::new().unwrap()).unwrap()
    }

    #[test]
    fn the_public_address_is_reached_through_the_private_one() {
        let d = tempfile::tempdir().unwrap();
        let mut p = plan(d.path());
        // Before the cloud gave the lb a public address, the URLs name its private one: nothing to redirect.
        assert!(desired_of(&p).files.iter().all(|f| !f.path.contains("hairpin")));

        p.public_addresses.insert("lb".into(), "203.0.113.10".into());
        let desired = desired_of(&p);
        let rules = &desired.files.iter().find(|f| f.path == "/etc/rigger/storefront-hairpin.nft").expect("the hairpin rules").content;
        assert!(rules.contains("ip daddr 203.0.113.10 tcp dport 80 dnat to 10.9.0.10:80"), "{rules}");
        let names: Vec<&str> = desired.services.iter().filter(|s| s.role == "storefront").map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["rigger-storefront-hairpin", "storefront"], "the redirect is up before the Storefront starts");

        // A domain name is the user's DNS to arrange: no rule.
        p.services.entry("saleor".into()).or_default().insert("public_url".into(), serde_json::json!("http://shop.example.com"));
        assert!(desired_of(&p).files.iter().all(|f| !f.path.contains("hairpin")));
    }
}
