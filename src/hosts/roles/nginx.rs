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

/// The live config's path; rigger owns the whole file (see `desired`).
const CONF: &str = "/etc/nginx/nginx.conf";
/// Where `hold_out` keeps the config it replaced, for `take_back`
/// (/run: gone with a reboot, when nginx has long read the file again).
const BEFORE_HOLD: &str = "/run/rigger/nginx.conf.before-hold";
/// How long a reload waits for the workers from before it to finish their
/// requests: nginx's proxy_read_timeout (30 s, in the template) and a margin.
const OLD_WORKERS_WAIT_TENTHS: u32 = 350;

/// An app server held out of nginx's upstream, on the nginx hosts that had it.
#[derive(Debug, Default)]
pub struct HeldOut {
    server: String,
    hosts: Vec<String>,
}

impl HeldOut {
    /// The nginx hosts that hold the server out.
    pub fn hosts(&self) -> &[String] {
        &self.hosts
    }
}

/// The BRE of the start of the upstream line the template writes for `ip:port`.
fn server_start(ip: std::net::Ipv4Addr, port: u64) -> String {
    format!(r"[[:space:]]*server {}:{port} ", ip.to_string().replace('.', r"\."))
}

/// The BRE of the upstream line the template writes for `ip:port`, with the
/// text before the `;` as group 1.
fn server_line(ip: std::net::Ipv4Addr, port: u64) -> String {
    format!(r"^\({}[^;]*\);$", server_start(ip, port))
}

/// Sets `$m` to the running nginx master's pid, or runs `otherwise` (which
/// ends the script) when nginx does not run.
fn master_or(otherwise: &str) -> String {
    format!("m=$(cat /run/nginx.pid 2>/dev/null)\nif [ -z \"$m\" ] || ! kill -0 \"$m\" 2>/dev/null; then {otherwise}; fi\n")
}

/// Reload nginx (master `$m`) and wait until it runs on the new config: new
/// workers have started and the ones from before have finished their
/// requests. Prints DONE, or BUSY and the old workers' pids when some still
/// serve long requests after the wait (the caller says so and goes on).
fn reload_and_wait() -> String {
    format!(
        r#"old=" $(pgrep -P "$m" | tr '\n' ' ')"
systemctl reload nginx >&2 || exit 4
i=0
while :; do
  for p in $(pgrep -P "$m"); do case "$old" in *" $p "*) ;; *) new=$p;; esac; done
  [ -n "$new" ] && break
  i=$((i+1)); if [ $i -ge 100 ]; then echo "no new nginx worker 10 s after the reload: nginx did not take the config (see /var/log/nginx/error.log)" >&2; exit 5; fi
  sleep 0.1
done
i=0
while :; do
  left=; for p in $old; do [ -d /proc/$p ] && left="$left $p"; done
  [ -z "$left" ] && break
  i=$((i+1)); if [ $i -ge {OLD_WORKERS_WAIT_TENTHS} ]; then echo "BUSY$left"; exit 0; fi
  sleep 0.1
done
echo DONE"#
    )
}

/// Reload nginx and wait as `reload_and_wait` does, for a config already in
/// place (the reshape's reload without the leaving apps: their machines go
/// only once no worker from before the reload can still be talking to them).
/// When nginx does not run, a plain `systemctl reload` says why.
pub fn reload_script() -> String {
    format!(
        "{}{}",
        master_or("systemctl reload nginx 2>&1; exit $?"),
        reload_and_wait()
    )
}

/// What a reload that waited says of workers still busy after the wait, if any.
pub fn still_busy(said: &str) -> Option<String> {
    said.trim().strip_prefix("BUSY").map(|pids| format!("workers from before the reload (pids{pids}) still serve requests after {} s; going on", OLD_WORKERS_WAIT_TENTHS / 10))
}

/// The script that marks `ip:port` `down` in the live config and reloads.
/// First line of its output: NOT_RUNNING / NOT_LISTED / ALREADY_DOWN (nothing
/// to hold out: no request goes there from this nginx), or the reload's.
fn hold_out_script(ip: std::net::Ipv4Addr, port: u64) -> String {
    let line = server_line(ip, port);
    let down = format!(r"^{}.* down;$", server_start(ip, port));
    format!(
        r#"c={CONF}
{}if grep -q '{down}' "$c"; then echo ALREADY_DOWN; exit 0; fi
if ! grep -q '{line}' "$c"; then echo NOT_LISTED; exit 0; fi
mkdir -p "$(dirname {BEFORE_HOLD})"
sed 's/{line}/\1 down;/' "$c" > "$c.rigger-hold" && chmod 644 "$c.rigger-hold" || exit 2
if ! nginx -t -q -c "$c.rigger-hold" >&2; then rm -f "$c.rigger-hold"; exit 3; fi
cp -p "$c" {BEFORE_HOLD} && mv "$c.rigger-hold" "$c" || exit 2
{}"#,
        master_or("echo NOT_RUNNING; exit 0"),
        reload_and_wait()
    )
}

/// The script that puts the config from before `hold_out` back and reloads.
fn take_back_script() -> String {
    format!(
        r#"c={CONF}
[ -f {BEFORE_HOLD} ] || {{ echo NOTHING_HELD; exit 0; }}
mv {BEFORE_HOLD} "$c" || exit 2
{}{}"#,
        master_or("echo NOT_RUNNING; exit 0"),
        reload_and_wait()
    )
}

/// Run `script` on `hosts` at once: what each printed, and the errors.
async fn on_hosts(run: &RoleRun<'_>, hosts: &[String], what: &str, script: &str) -> (Vec<(String, String)>, Vec<String>) {
    let results = futures::future::join_all(hosts.iter().map(|name| async move {
        let out = run.session(name)?.sudo(script, None).await?;
        if !out.ok() {
            bail!("{name}: {what} failed (exit {}): {}", out.code, out.stderr.trim());
        }
        Ok((name.clone(), out.stdout.trim().to_string()))
    }))
    .await;
    let (mut said, mut errors) = (Vec::new(), Vec::new());
    for r in results {
        match r {
            Ok(x) => said.push(x),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    for (name, out) in &said {
        if let Some(busy) = still_busy(out) {
            run.events.progress(&format!("nginx {name}"), busy);
        }
    }
    (said, errors)
}

/// Take the app server `ip:port` out of every running nginx's upstream
/// (marked `down`, reloaded) and wait until the workers from before have
/// finished their requests: from then on no request goes there, so it can
/// restart without a client noticing. `take_back` undoes it; so does a
/// failure here, on the hosts that had taken it out.
pub async fn hold_out(run: &RoleRun<'_>, server: &str, ip: std::net::Ipv4Addr, port: u64) -> Result<HeldOut> {
    let nginx: Vec<String> = run.plan.hosts_with_role(NAME).map(|h| h.name.clone()).collect();
    let (said, errors) = on_hosts(run, &nginx, &format!("holding {server} out of nginx's upstream"), &hold_out_script(ip, port)).await;
    let hosts = said.into_iter().filter(|(_, out)| out == "DONE" || out.starts_with("BUSY")).map(|(name, _)| name).collect();
    let held = HeldOut { server: server.to_string(), hosts };
    if errors.is_empty() {
        return Ok(held);
    }
    let undone = take_back(run, held).await.err().map(|e| format!("\n(and putting the others back: {e:#})")).unwrap_or_default();
    bail!("{}{undone}", errors.join("\n"))
}

/// Put back the config `hold_out` replaced, where it replaced one. The new
/// workers start with no failures counted against any server, so the host
/// serves again at once (no waiting out fail_timeout).
pub async fn take_back(run: &RoleRun<'_>, held: HeldOut) -> Result<()> {
    let (_, errors) = on_hosts(run, &held.hosts, &format!("taking {} back into nginx's upstream", held.server), &take_back_script()).await;
    if errors.is_empty() { Ok(()) } else { bail!("{}", errors.join("\n")) }
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

    fn check(&self, at: &super::role::PlanCheck<'_>, d: &mut crate::plan::diag::Diags) {
        at.require(NAME, &[(super::app::NAME, "it balances the app hosts")], d);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// `program args` with `text` on stdin: whether it succeeded, and its stdout.
    fn piped(program: &str, args: &[&str], text: &str) -> (bool, String) {
        let mut child = std::process::Command::new(program).args(args).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.success(), String::from_utf8(out.stdout).unwrap())
    }

    fn sed(expr: &str, text: &str) -> String {
        piped("sed", &[expr], text).1
    }

    fn grep(pattern: &str, text: &str) -> bool {
        piped("grep", &["-q", pattern], text).0
    }

    const UPSTREAM: &str = "    upstream app {\n        least_conn;\n        server 10.9.0.4:9001 max_fails=3 fail_timeout=10s;\n        server 10.9.0.41:9001 max_fails=3 fail_timeout=10s;\n        server 10.9.0.42:9001 max_fails=3 fail_timeout=10s;\n        keepalive 16;\n    }\n";

    #[test]
    fn holding_out_marks_exactly_that_server_down() {
        let ip: Ipv4Addr = "10.9.0.4".parse().unwrap();
        let line = server_line(ip, 9001);
        let held = sed(&format!(r"s/{line}/\1 down;/"), UPSTREAM);
        assert_eq!(held, UPSTREAM.replace("10.9.0.4:9001 max_fails=3 fail_timeout=10s;", "10.9.0.4:9001 max_fails=3 fail_timeout=10s down;"));
        // 10.9.0.4 is not 10.9.0.41, nor another port, nor a dot-wildcard.
        assert!(grep(&line, UPSTREAM) && !grep(&server_line("10.9.0.5".parse().unwrap(), 9001), UPSTREAM));
        assert!(!grep(&server_line(ip, 900), UPSTREAM) && !grep(&server_line("10.9.0.4".parse().unwrap(), 90011), UPSTREAM));
        assert!(!grep(&server_line(ip, 9001), &UPSTREAM.replace("10.9.0.4:", "10x9y0z4:")));
        // The script sees a held server as held, and does not mark it twice.
        let script = hold_out_script(ip, 9001);
        let down = script.lines().find(|l| l.contains("ALREADY_DOWN")).unwrap().split('\'').nth(1).unwrap().to_string();
        assert!(grep(&down, &held) && !grep(&down, UPSTREAM));
        assert!(script.find("ALREADY_DOWN") < script.find("sed "));
    }

    #[test]
    fn the_scripts_parse_and_take_back_restores_before_reloading() {
        for script in [hold_out_script("10.9.0.4".parse().unwrap(), 9001), take_back_script(), reload_script()] {
            let out = std::process::Command::new("sh").args(["-n", "-c", &script]).output().unwrap();
            assert!(out.status.success(), "{}\n{script}", String::from_utf8_lossy(&out.stderr));
        }
        assert_eq!(still_busy("BUSY 41 42\n").as_deref(), Some("workers from before the reload (pids 41 42) still serve requests after 35 s; going on"));
        assert_eq!(still_busy("DONE\n"), None);
        let back = take_back_script();
        assert!(back.find(&format!("mv {BEFORE_HOLD}")) < back.find("systemctl reload"));
        // The config from before is kept only once the candidate passed nginx -t.
        let hold = hold_out_script("10.9.0.4".parse().unwrap(), 9001);
        assert!(hold.find("nginx -t") < hold.find(&format!("cp -p \"$c\" {BEFORE_HOLD}")));
    }
}
