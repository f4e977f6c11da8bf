//! Saleor for real, offline, on local machines: the source mode of the saleor
//! role from nothing to healthy — wheelhouse built on the control host (or
//! found in its cache), pushed to machines that have no network, the venv
//! installed with `pip install --no-index`, the real `manage.py migrate` (all
//! of Saleor's migrations: this is the test of the migration, no dump), the
//! API under uvicorn and the Celery worker behind HAProxy, the dashboard built
//! on the control host with rigger's own Node toolchain and served through
//! HAProxy :9000, and the Storefront built there too (after the API answers)
//! and run on the Saleor hosts with the Node binary rigger ships — then:
//!
//! - a staff user (createsuperuser) gets a token through the load balancer and
//!   creates a product, which is read back through the load balancer and
//!   shows on the Storefront's product listing through the load balancer;
//! - the Patroni leader's machine is killed (`rigger drill`): the API answers
//!   again without its process being restarted;
//! - a no-change apply builds, uploads, migrates and restarts nothing (the
//!   Storefront and the dashboard included);
//! - a release whose migration fails stops the rollout with Django's message
//!   while the running release keeps serving; going back rolls the hosts one
//!   at a time and ends healthy.
//!
//! Needs root (machines), the sources in ../shared/apps/ (Saleor, its
//! dashboard, the Storefront), the package index (the wheelhouse, cached in
//! /var/lib/rigger/artifacts) and the npm registry (Node toolchain, npm/pnpm
//! packages) from the control host. About 25–40 minutes: the migration, and
//! the dashboard and Storefront builds (their API URL differs every run).

mod common;

use common::{rigger, LocalPlan, OutputText};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

fn apps() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/apps")
}

/// POST a GraphQL document to `url`, optionally with a staff token; (HTTP status, JSON body).
fn graphql(url: &str, query: &str, variables: Value, token: Option<&str>) -> (u16, Value) {
    let body = json!({ "query": query, "variables": variables }).to_string();
    let mut c = Command::new("curl");
    c.args(["-s", "-m", "20", "-X", "POST", "-H", "Content-Type: application/json", "--data-binary", "@-", "-w", "\n%{http_code}", url]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    use std::io::Write;
    let mut child = c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().expect("curl");
    child.stdin.take().expect("stdin").write_all(body.as_bytes()).expect("write");
    let out = child.wait_with_output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), serde_json::from_str(body).unwrap_or(Value::Null))
}

fn shop_name(url: &str) -> Result<String, String> {
    match graphql(url, "{ shop { name } }", json!({}), None) {
        (200, v) if v["data"]["shop"]["name"].is_string() => Ok(v["data"]["shop"]["name"].as_str().unwrap_or_default().to_string()),
        other => Err(format!("{other:?}")),
    }
}

/// Run `f` while a client asks the shop through `url` every `every_ms`:
/// what `f` returned, how many queries were answered, and the failures.
fn while_asking_the_shop<T>(url: &str, every_ms: u64, f: impl FnOnce() -> T) -> (T, u32, Vec<String>) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let poller = scope.spawn(|| {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match shop_name(url) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(std::time::Duration::from_millis(every_ms));
            }
            (ok, failed)
        });
        // The poller stops even when `f` panics (the scope would wait for it forever).
        struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let result = {
            let _stop = StopOnDrop(&stop);
            f()
        };
        let (ok, failed) = poller.join().expect("poller");
        (result, ok, failed)
    })
}

/// Poll (nothing timed is asserted: only whether it happens within a generous bound).
fn eventually<T>(what: &str, tries: usize, mut f: impl FnMut() -> Result<T, String>) -> T {
    let mut last = String::new();
    for _ in 0..tries {
        match f() {
            Ok(v) => return v,
            Err(e) => last = e,
        }
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    panic!("{what}: never happened; last: {last}");
}

/// The saleor-api process on a host: (MainPID, NRestarts).
fn api_process(plan: &LocalPlan, ip: &str) -> (String, String) {
    let out = plan.ssh(ip, "systemctl show -p MainPID --value saleor-api; systemctl show -p NRestarts --value saleor-api");
    let mut l = out.lines().map(str::to_string);
    (l.next().unwrap_or_default(), l.next().unwrap_or_default())
}

#[test]
fn saleor_from_source_offline_behind_haproxy() {
    if !common::machines() {
        return;
    }
    let tarball = apps().join("saleor-3.21.69.tar.gz");
    assert!(tarball.is_file() && apps().join("saleor-3.21.69-requirements.txt").is_file(), "Saleor's source is expected in {} (shared/ beside the checkout)", apps().display());
    let source = tarball.display().to_string();
    let dashboard = apps().join("saleor-dashboard-3.21.21.tar.gz");
    assert!(dashboard.is_file(), "the dashboard's source is expected in {}", apps().display());
    let dashboard = dashboard.display().to_string();
    let storefront = apps().join("saleor-storefront-3481bbb0.tar.gz");
    assert!(storefront.is_file(), "the Storefront's source is expected in {}", apps().display());
    let storefront = storefront.display().to_string();
    let plan = LocalPlan::from_text("t-sal", |project, cidr, net| {
        format!(
            "version: 1\nproject: {project}\nprovider: {{ kind: local }}\nssh: {{ user: rigger, private_key_file: ./id_ed25519 }}\n\
             network:\n  name: main\n  subnets:\n    - {{ name: app, cidr: {cidr} }}\n\
             defaults: {{ cores: 1, memory: 1GiB, disk: 4GiB }}\n\
             hosts:\n  - {{ name: pg, count: 2, roles: [etcd, patroni], ip: {net}.21 }}\n\
             \x20 - {{ name: lb, roles: [haproxy, etcd, redis], ip: {net}.11 }}\n\
             \x20 - {{ name: saleor, count: 2, roles: [saleor, storefront], ip: {net}.31, memory: 2GiB }}\n\
             services:\n  patroni: {{ scope: {project}, synchronous_mode: false }}\n  saleor: {{ source: {source}, dashboard_source: {dashboard}, workers: 1 }}\n\
             \x20 storefront: {{ source: {storefront} }}\n"
        )
    });
    let net = plan.net_prefix.clone();
    let (lb, api1, api2) = (format!("{net}.11"), format!("{net}.31"), format!("{net}.32"));
    let through_lb = format!("http://{lb}/graphql/");

    // 1. From nothing to healthy: machines, database layer, Saleor from source.
    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "apply failed:\n{}", out.text());
    let text = out.text();
    assert!(text.contains("role saleor: healthy") && text.contains("role storefront: healthy"), "{text}");
    assert!(text.contains("manage.py migrate for release") && text.contains("migrated"), "the real migration ran:\n{text}");
    for ip in [&api1, &api2] {
        // No network on the hosts: the release came from rigger, the venv from its wheelhouse.
        let venv = plan.ssh(ip, "ls -d /opt/saleor/releases/*/venv && test -f /var/lib/rigger/wheels/$(ls /var/lib/rigger/wheels | grep -im1 '^django-') && echo wheels-here");
        assert!(venv.contains("wheels-here"), "{ip}: {venv}");
        assert_eq!(plan.ssh(ip, "sudo stat -c '%a %U' /etc/saleor/saleor.env /etc/saleor/rsa.env").trim(), "600 root\n600 root");
        // Each API host answers the shop query itself.
        eventually(&format!("{ip} answers {{ shop {{ name }} }}"), 60, || shop_name(&format!("http://{ip}:8000/graphql/")));
    }
    // The state holds the generated keys; no unit and no output shows them.
    let state: Value = serde_json::from_str(&std::fs::read_to_string(plan.state_path()).expect("state")).expect("state JSON");
    let rsa = state["secrets"]["saleor_rsa_private_key"].as_str().expect("an RSA key in the state").to_string();
    let secret_key = state["secrets"]["saleor_secret_key"].as_str().expect("a SECRET_KEY in the state").to_string();
    assert!(rsa.starts_with("-----BEGIN PRIVATE KEY-----"));
    let rsa_body_line = rsa.lines().nth(1).expect("a PEM body line").to_string();
    assert!(!text.contains(&rsa_body_line) && !text.contains(&secret_key), "a secret in apply's output");
    let unit = plan.ssh(&api1, "cat /etc/systemd/system/saleor-api.service /etc/systemd/system/saleor-worker.service");
    assert!(!unit.contains(&rsa_body_line) && !unit.contains(&secret_key) && unit.contains("uvicorn saleor.asgi:application"), "{unit}");
    // GET answers 405 with the playground off; POST through HAProxy answers.
    let get = Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "10", &through_lb]).output().expect("curl");
    assert_eq!(String::from_utf8_lossy(&get.stdout), "405");
    eventually("the shop through HAProxy", 60, || shop_name(&through_lb));
    // The dashboard, built on this host by rigger's own Node toolchain (never
    // the host's node) and served by each Saleor host: its index through
    // HAProxy :9000 names the API URL it was built with.
    let index = Command::new("curl").args(["-s", "-m", "10", &format!("http://{lb}:9000/")]).output().expect("curl");
    let index = String::from_utf8_lossy(&index.stdout).into_owned();
    assert!(index.contains(&through_lb) && index.contains("<script"), "the dashboard's index through :9000 does not name {through_lb}:\n{index}");
    for ip in [&api1, &api2] {
        let served = plan.ssh(ip, "systemctl is-active saleor-dashboard; ls /opt/saleor/dashboard");
        assert!(served.starts_with("active\n"), "{ip}: {served}");
    }

    // 2. A staff user, a token through the load balancer, a product created and read back.
    let password = rigger::state::random_secret(20);
    let created = plan.ssh_with_known_hosts(
        &api1,
        &plan.known_hosts(),
        &format!(
            "cd / && rel=$(dirname $(systemctl show -p WorkingDirectory --value saleor-api)) && sudo systemd-run --quiet --wait --collect --pipe -p User=saleor \
             -p EnvironmentFile=/etc/saleor/saleor.env -p EnvironmentFile=/etc/saleor/rsa.env -p WorkingDirectory=$rel/src \
             -p Environment=DJANGO_SUPERUSER_PASSWORD={password} $rel/venv/bin/python manage.py createsuperuser --noinput --email staff@example.com 2>&1"
        ),
    );
    assert!(created.status.success(), "createsuperuser: {}", created.text());
    let (code, v) = graphql(
        &through_lb,
        "mutation($e: String!, $p: String!) { tokenCreate(email: $e, password: $p) { token errors { message } } }",
        json!({ "e": "staff@example.com", "p": password }),
        None,
    );
    let token = v["data"]["tokenCreate"]["token"].as_str().unwrap_or_else(|| panic!("tokenCreate: {code} {v}")).to_string();
    // Access tokens live 5 minutes: later reads log in again.
    let fresh_token = || -> Result<String, String> {
        let (code, v) = graphql(&through_lb, "mutation($e: String!, $p: String!) { tokenCreate(email: $e, password: $p) { token } }", json!({ "e": "staff@example.com", "p": password }), None);
        v["data"]["tokenCreate"]["token"].as_str().map(str::to_string).ok_or_else(|| format!("tokenCreate: {code} {v}"))
    };
    let (_, v) = graphql(
        &through_lb,
        "mutation { productTypeCreate(input: { name: \"Mugs\", hasVariants: false }) { productType { id } errors { field message } } }",
        json!({}),
        Some(&token),
    );
    let product_type = v["data"]["productTypeCreate"]["productType"]["id"].as_str().unwrap_or_else(|| panic!("productTypeCreate: {v}")).to_string();
    let (_, v) = graphql(&through_lb, "mutation { categoryCreate(input: { name: \"Kitchen\" }) { category { id } errors { field message } } }", json!({}), Some(&token));
    let category = v["data"]["categoryCreate"]["category"]["id"].as_str().unwrap_or_else(|| panic!("categoryCreate: {v}")).to_string();
    let (_, v) = graphql(
        &through_lb,
        "mutation($t: ID!, $c: ID!) { productCreate(input: { productType: $t, category: $c, name: \"Rigger mug\" }) { product { id } errors { field message } } }",
        json!({ "t": product_type, "c": category }),
        Some(&token),
    );
    let product = v["data"]["productCreate"]["product"]["id"].as_str().unwrap_or_else(|| panic!("productCreate: {v}")).to_string();
    // The Storefront lists what is published in its channel (rigger made `default-channel`).
    let (_, v) = graphql(&through_lb, "{ channel(slug: \"default-channel\") { id isActive } }", json!({}), Some(&token));
    let channel = v["data"]["channel"]["id"].as_str().unwrap_or_else(|| panic!("the Storefront's channel: {v}")).to_string();
    let (_, v) = graphql(
        &through_lb,
        "mutation($p: ID!, $c: ID!) { productChannelListingUpdate(id: $p, input: { updateChannels: [{ channelId: $c, isPublished: true, visibleInListings: true, isAvailableForPurchase: true }] }) { errors { field message } } }",
        json!({ "p": product, "c": channel }),
        Some(&token),
    );
    assert_eq!(v["data"]["productChannelListingUpdate"]["errors"], json!([]), "productChannelListingUpdate: {v}");
    // Saleor lists a product to shoppers only with a variant priced in the channel.
    let (_, v) = graphql(
        &through_lb,
        "mutation($p: ID!) { productVariantCreate(input: { product: $p, sku: \"rigger-mug\", attributes: [] }) { productVariant { id } errors { field message } } }",
        json!({ "p": product }),
        Some(&token),
    );
    let variant = v["data"]["productVariantCreate"]["productVariant"]["id"].as_str().unwrap_or_else(|| panic!("productVariantCreate: {v}")).to_string();
    let (_, v) = graphql(
        &through_lb,
        "mutation($v: ID!, $c: ID!) { productVariantChannelListingUpdate(id: $v, input: [{ channelId: $c, price: 9.5 }]) { errors { field message } } }",
        json!({ "v": variant, "c": channel }),
        Some(&token),
    );
    assert_eq!(v["data"]["productVariantChannelListingUpdate"]["errors"], json!([]), "productVariantChannelListingUpdate: {v}");
    let read_product = |url: &str| -> Result<String, String> {
        match graphql(url, "query($id: ID!) { product(id: $id) { name } }", json!({ "id": product }), Some(&fresh_token()?)) {
            (200, v) if v["data"]["product"]["name"].is_string() => Ok(v["data"]["product"]["name"].as_str().unwrap_or_default().to_string()),
            other => Err(format!("{other:?}")),
        }
    };
    assert_eq!(eventually("the product through HAProxy", 30, || read_product(&through_lb)), "Rigger mug");
    assert_eq!(eventually("the product on the other API host", 30, || read_product(&format!("http://{api2}:8000/graphql/"))), "Rigger mug");
    // The Storefront's product listing through the load balancer shows it. Its
    // page caches the API's answer for 60 s (fetch `revalidate: 60`, then
    // stale-while-revalidate): the first renders may predate the product.
    let listing = format!("http://{lb}/default-channel/products");
    eventually("the new product on the Storefront's listing through HAProxy", 300, || {
        let out = Command::new("curl").args(["-s", "-m", "20", "-w", "\n%{http_code}", &listing]).output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        if code == "200" && body.contains("Product list") && body.contains("Rigger mug") { Ok(()) } else { Err(format!("HTTP {code}, product {}shown", if body.contains("Rigger mug") { "" } else { "not " })) }
    });
    for ip in [&api1, &api2] {
        // Run from rigger's build with the Node binary it shipped, as its own user; no npm on the host.
        let seen = plan.ssh(ip, "systemctl show -p User --value storefront; systemctl show -p ExecStart --value storefront; (command -v node || command -v npm || command -v pnpm) || echo no-node-on-path");
        assert!(seen.starts_with("storefront\n") && seen.contains("/opt/storefront/node/") && seen.contains("server.js") && seen.contains("no-node-on-path"), "{ip}: {seen}");
    }

    // 3. Kill the Patroni leader's machine: the API recovers without being restarted.
    let before = [api_process(&plan, &api1), api_process(&plan, &api2)];
    let drill = rigger(&["drill", plan.path()]);
    assert!(drill.status.success(), "drill failed:\n{}", drill.text());
    assert_eq!(eventually("the product through HAProxy after the failover", 120, || read_product(&through_lb)), "Rigger mug");
    let after = [api_process(&plan, &api1), api_process(&plan, &api2)];
    assert_eq!(before, after, "the API processes were restarted (MainPID, NRestarts) by the failover");

    // 4. A no-change apply: nothing built, uploaded, migrated or restarted.
    let storefronts = |plan: &LocalPlan| [&api1, &api2].map(|ip| plan.ssh(ip, "systemctl show -p MainPID --value storefront"));
    let storefront_before = storefronts(&plan);
    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "no-change apply failed:\n{}", out.text());
    let text = out.text();
    assert!(text.contains("No host changes."), "{text}");
    for busy in ["wheelhouse", "installing release", "manage.py migrate", "uploading dashboard", "npm ci", "storefront build", "uploading build"] {
        assert!(!text.contains(busy), "a no-change apply did `{busy}`:\n{text}");
    }
    assert_eq!([api_process(&plan, &api1), api_process(&plan, &api2)], after, "a no-change apply restarted the API");
    assert_eq!(storefronts(&plan), storefront_before, "a no-change apply restarted the Storefront");

    // 5. A release whose migration fails: the rollout stops with Django's
    //    message, the running release keeps serving.
    let broken = plan.dir().join("saleor-broken");
    std::fs::create_dir_all(&broken).expect("mkdir");
    let untar = Command::new("tar").args(["-xzf", &source, "-C"]).arg(&broken).args(["--strip-components=1"]).output().expect("tar");
    assert!(untar.status.success(), "{}", untar.stderr_text());
    let migrations = broken.join("saleor/core/migrations");
    let latest = std::fs::read_dir(&migrations)
        .expect("core migrations")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".py") && n.as_bytes()[0].is_ascii_digit())
        .max()
        .expect("a migration");
    std::fs::write(
        migrations.join("9999_rigger_broken.py"),
        format!(
            "from django.db import migrations\n\n\nclass Migration(migrations.Migration):\n    dependencies = [(\"core\", \"{}\")]\n    operations = [migrations.RunSQL(\"SELECT rigger_no_such_function()\")]\n",
            latest.trim_end_matches(".py")
        ),
    )
    .expect("write the broken migration");
    std::fs::copy(apps().join("saleor-3.21.69-requirements.txt"), plan.dir().join("saleor-broken-requirements.txt")).expect("requirements");
    let text = std::fs::read_to_string(plan.path()).expect("plan");
    std::fs::write(plan.path(), text.replace(&format!("source: {source}"), &format!("source: {}", broken.display()))).expect("plan");
    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    assert_eq!(out.code(), 1, "a failing migration must fail the apply:\n{}", out.text());
    let text = out.text();
    assert!(text.contains("manage.py migrate of release") && text.contains("rigger_no_such_function"), "Django's message is missing:\n{text}");
    assert_eq!([api_process(&plan, &api1), api_process(&plan, &api2)], after, "the old release was stopped by a failed migration");
    assert_eq!(eventually("the product through HAProxy during the failed rollout", 30, || read_product(&through_lb)), "Rigger mug");

    // Back to the good release: it is installed and migrated already; the
    // hosts restart one at a time and end healthy.
    let text = std::fs::read_to_string(plan.path()).expect("plan");
    std::fs::write(plan.path(), text.replace(&format!("source: {}", broken.display()), &format!("source: {source}"))).expect("plan");
    // Meanwhile a client asks the shop through HAProxy all the time: each host
    // leaves the rotation (drain) before it restarts, so no request fails.
    let (out, ok, failed) = while_asking_the_shop(&through_lb, 200, || rigger(&["apply", plan.path(), "--auto-approve"]));
    assert!(out.status.success(), "going back to the good release failed:\n{}", out.text());
    assert!(!out.text().contains("manage.py migrate"), "{}", out.text());
    let restarted: Vec<(String, String)> = [api_process(&plan, &api1), api_process(&plan, &api2)].into();
    assert!(restarted[0].0 != after[0].0 && restarted[1].0 != after[1].0, "both API hosts run the good release again (restarted): {restarted:?}");
    assert!(ok > 0 && failed.is_empty(), "requests through HAProxy failed during the rolling restart ({ok} answered): {failed:?}");
    assert_eq!(eventually("the product through HAProxy after the rollback", 60, || read_product(&through_lb)), "Rigger mug");

    // 6. Saleor 2 → 1 under the same client: saleor-2 leaves HAProxy's
    //    backends (reload) and stops before its machine is deleted.
    let text = std::fs::read_to_string(plan.path()).expect("plan");
    std::fs::write(plan.path(), text.replace("name: saleor, count: 2,", "name: saleor, count: 1,")).expect("plan");
    let out = rigger(&["plan", plan.path()]);
    assert!(out.status.success(), "{}", out.text());
    let shown = out.stdout_text();
    let at = |needle: &str| shown.find(needle).unwrap_or_else(|| panic!("the plan does not show {needle:?}:\n{shown}"));
    assert!(at("haproxy lb: reload without saleor-2") < at("saleor-2: stop saleor-api"), "{shown}");
    assert!(at("saleor-2: stop saleor-api") < at("the cloud deletes saleor-2"), "{shown}");
    let (out, ok, failed) = while_asking_the_shop(&through_lb, 100, || {
        let out = rigger(&["apply", plan.path(), "--auto-approve"]);
        std::thread::sleep(std::time::Duration::from_secs(2));
        out
    });
    assert!(out.status.success(), "Saleor 2 → 1 failed:\n{}", out.text());
    println!("Saleor 2 → 1: {ok} shop queries through HAProxy answered, {} failed", failed.len());
    assert!(ok > 0 && failed.is_empty(), "requests through HAProxy failed while saleor-2 left ({ok} answered): {failed:?}");
    let haproxy_cfg = plan.ssh(&lb, "sudo cat /etc/haproxy/haproxy.cfg");
    assert!(!haproxy_cfg.contains(&api2), "HAProxy still lists saleor-2:\n{haproxy_cfg}");
    assert_eq!(eventually("the product through HAProxy with one API host", 30, || read_product(&through_lb)), "Rigger mug");

    let out = rigger(&["destroy", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "destroy failed:\n{}", out.text());
    plan.assert_nothing_left();
}
