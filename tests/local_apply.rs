//! End to end on real local machines: apply a small plan with the rigger
//! binary, reach every machine over SSH with strict host keys, re-plan to zero
//! changes, destroy, and check that nothing is left; and a saved plan
//! (`plan --out`) carrying the host changes to `apply FILE`. A guard destroys
//! and cleans up even when an assertion fails.

mod common;

use common::{rigger, LocalPlan, OutputText};

#[test]
fn apply_ssh_replan_destroy_leaves_nothing() {
    if !common::machines() {
        return;
    }
    let plan = LocalPlan::new("t-apply", 2);

    let out = rigger(&["validate", plan.path()]);
    assert!(out.status.success(), "validate: {}", out.stderr_text());

    // Nothing exists yet: the plan adds network, subnet, firewall group and machines.
    let out = rigger(&["plan", plan.path(), "--infra-only", "--detailed-exitcode"]);
    assert_eq!(out.code(), 2, "a fresh plan has changes: {}", out.text());
    assert!(out.stdout_text().contains("Plan: 5 to add, 0 to change, 0 to destroy."), "{}", out.stdout_text());

    let out = rigger(&["apply", plan.path(), "--infra-only", "--auto-approve"]);
    assert!(out.status.success(), "apply failed:\n{}", out.text());

    // Every machine answers SSH, with host keys checked against what rigger recorded.
    for (name, ip) in plan.hosts() {
        let hostname = plan.ssh(&ip, "hostname");
        assert_eq!(hostname.trim(), name, "machine at {ip} says it is {hostname:?}");
    }

    // A changed host key is refused, not trusted.
    let tampered = plan.dir().join("tampered_known_hosts");
    let (_, first_ip) = plan.hosts()[0].clone();
    std::fs::write(&tampered, format!("{first_ip} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHqGLrfpnTV3nB0DfBgsmK0ZC5sLfqjlP7YZdEeNFYwF\n")).unwrap();
    let refused = plan.ssh_with_known_hosts(&first_ip, &tampered, "true");
    assert!(!refused.status.success(), "ssh must refuse a host whose key does not match");

    // Right after apply: nothing to change, exit 0 with --detailed-exitcode.
    let out = rigger(&["plan", plan.path(), "--infra-only", "--detailed-exitcode"]);
    assert_eq!(out.code(), 0, "re-plan must be empty:\n{}", out.text());
    assert!(out.stdout_text().contains("No changes."), "{}", out.stdout_text());

    // The state is 0600 and lists every resource.
    let state = plan.state_path();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&state).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let out = rigger(&["state", "list", plan.path()]);
    assert_eq!(out.stdout_text().lines().count(), 5, "{}", out.stdout_text());

    // A remote command past its limit, through the real sshd, sudo and ssh
    // master: an error naming host, command and limit, and on the host the
    // command and its children are gone — also when the script's shell
    // ignores TERM (KILL follows). An ordinary command's output and exit code
    // come back as before.
    let (first_name, _) = plan.hosts()[0].clone();
    let config = plan.dir().join(".rigger").join(format!("{}.ssh_config", plan.project));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (answer, hung, took) = runtime.block_on(async {
        use rigger::hosts::remote::session::HostSession;
        let s = HostSession::connect(&config, &first_name).await.expect("ssh master");
        let answer = s.sudo("read -r x; echo \"$x $(id -un)\"; exit 3", Some(b"hello\n")).await.expect("an ordinary command");
        let started = std::time::Instant::now();
        let hung = s.within(std::time::Duration::from_secs(2)).sudo("trap '' TERM; sleep 4711 & sleep 4712; wait", None).await;
        let took = started.elapsed();
        s.close().await;
        (answer, hung, took)
    });
    assert_eq!((answer.code, answer.stdout.as_str()), (3, "hello root\n"));
    let err = format!("{:#}", hung.expect_err("a command past its limit is an error"));
    assert!(err.starts_with(&format!("{first_name}: `trap '' TERM; sleep 4711 & sleep 4712; wait` did not finish within 2 s, so it was ended on the host")), "{err}");
    assert!(took < std::time::Duration::from_secs(30), "ended at 2 s, KILL 10 s later: took {took:?}");
    // An upload the host stops reading (here: never reads) ends at its limit
    // as a deadline, not as a broken pipe.
    let upload = runtime.block_on(async {
        use rigger::hosts::remote::session::HostSession;
        let s = HostSession::connect(&config, &first_name).await.expect("ssh master");
        let out = s.within(std::time::Duration::from_secs(2)).sudo_stream("sleep 4713", tokio::io::repeat(b'x')).await;
        s.close().await;
        out
    });
    let err = format!("{:#}", upload.expect_err("an upload past its limit is an error"));
    assert!(err.contains("`sleep 4713` did not finish within 2 s"), "{err}");
    let (_, first_ip) = plan.hosts()[0].clone();
    let left = plan.ssh(&first_ip, "pgrep -af 'sleep 471[123]' || true");
    assert!(left.trim().is_empty(), "left running on the host: {left}");

    let out = rigger(&["destroy", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "destroy failed:\n{}", out.text());
    plan.assert_nothing_left();

    let out = rigger(&["plan", plan.path(), "--infra-only", "--detailed-exitcode"]);
    assert_eq!(out.code(), 2, "after destroy everything is to be created again:\n{}", out.text());
}

/// One machine `cache` at `ip`, with the Redis role or with none.
fn cache_plan(project: &str, cidr: &str, ip: &str, redis: bool) -> String {
    let (roles, services) = if redis { ("redis", "services:\n  redis: { port: 6379 }\n") } else { ("", "") };
    format!(
        "version: 1\nproject: {project}\nprovider: {{ kind: local }}\n\
         ssh: {{ user: rigger, private_key_file: ./id_ed25519 }}\n\
         network:\n  name: main\n  subnets:\n    - {{ name: app, cidr: {cidr} }}\n\
         firewall:\n  - name: inside\n    rules:\n      - {{ direction: ingress, protocol: tcp, ports: \"22,6379\", from: {cidr} }}\n\
         defaults: {{ cores: 1, memory: 512MiB, disk: 2GiB }}\n\
         hosts:\n  - {{ name: cache, roles: [{roles}], ip: {ip}, firewall: [inside] }}\n{services}"
    )
}

/// `plan --out` saves the host changes the user saw; `apply FILE` applies them
/// when the hosts still need exactly them, and refuses (changing nothing) when
/// a host changed since.
#[test]
fn a_saved_plan_carries_the_host_changes_and_is_refused_when_a_host_changed() {
    if !common::machines() {
        return;
    }
    let plan = LocalPlan::from_text("t-hp", |project, cidr, net| cache_plan(project, cidr, &format!("{net}.31"), true));
    let ip = format!("{}.31", plan.net_prefix);
    let saved = |name: &str| plan.dir().join(name).display().to_string();
    let read_saved = |path: &str| -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap() };
    const CONF: &str = "/etc/redis/redis.conf";

    // No machine yet: the host changes cannot be known before the cloud step, and the saved plan says so.
    let first = saved("first.json");
    let out = rigger(&["plan", plan.path(), "--out", &first]);
    assert!(out.status.success(), "plan --out: {}", out.text());
    assert!(out.stdout_text().contains("It holds the cloud changes only: host changes to be computed after the cloud step (the cloud step creates, replaces or changes the machines cache first)."), "{}", out.stdout_text());
    assert_eq!(read_saved(&first)["hosts"], serde_json::json!({ "status": "after_cloud_step", "note": "host changes to be computed after the cloud step", "machines": ["cache"] }));
    let out = rigger(&["apply", &first]);
    assert!(out.status.success(), "apply FILE (machines to create):\n{}", out.text());
    assert!(out.stdout_text().contains("This plan holds no host changes (the cloud step creates, replaces or changes the machines cache): they are computed after the cloud step."), "{}", out.stdout_text());
    assert_eq!(plan.ssh(&ip, "sudo -n systemctl is-active redis-server").trim(), "active");

    // A hand edit, then a saved plan that puts the file back: applied as saved.
    plan.ssh(&ip, &format!("echo '# edited by hand' | sudo -n tee -a {CONF} >/dev/null"));
    let fix = saved("fix.json");
    let out = rigger(&["plan", plan.path(), "--out", &fix]);
    assert!(out.status.success(), "plan --out: {}", out.text());
    assert!(out.stdout_text().contains("It holds the host changes of 1 host(s)"), "{}", out.stdout_text());
    let hosts = read_saved(&fix)["hosts"].clone();
    assert_eq!(hosts["status"], "planned", "{hosts}");
    let file = &hosts["summary"]["hosts"]["cache"]["files"][0];
    assert_eq!((file["path"].as_str(), file["reasons"][0].as_str(), file["mode"].as_str()), (Some(CONF), Some("content"), Some("0640")), "{hosts}");
    assert_eq!(hosts["summary"]["hosts"]["cache"]["restart"], serde_json::json!(["redis-server"]), "{hosts}");
    // Secrets never enter a saved plan (the file holds the hash of the config, not the config).
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(plan.state_path()).unwrap()).unwrap();
    let secrets = state["secrets"].as_object().expect("secrets in the state");
    assert!(secrets.contains_key("redis_password"), "{:?}", secrets.keys());
    let text = std::fs::read_to_string(&fix).unwrap();
    for (name, value) in secrets {
        let value = value.as_str().unwrap_or_default();
        assert!(value.len() < 6 || !text.contains(value), "the saved plan holds the secret {name}");
    }
    let out = rigger(&["apply", &fix]);
    assert!(out.status.success(), "apply FILE (host changes as saved):\n{}", out.text());
    assert!(out.stdout_text().contains(&format!("~ {CONF} (content) 0640 redis:redis hmac "))
        && out.stdout_text().contains("This plan holds the host changes of 1 host(s): applied only if the hosts need exactly them."), "{}", out.stdout_text());
    assert!(!plan.ssh(&ip, &format!("sudo -n cat {CONF}")).contains("edited by hand"), "apply put the file back");

    // Saved with nothing to do; then the host changes by hand: refused, nothing touched.
    let stale = saved("stale.json");
    let out = rigger(&["plan", plan.path(), "--out", &stale]);
    assert!(out.status.success(), "plan --out: {}", out.text());
    assert_eq!(read_saved(&stale)["hosts"]["summary"]["hosts"]["cache"]["files"], serde_json::json!([]));
    plan.ssh(&ip, &format!("echo '# edited by hand again' | sudo -n tee -a {CONF} >/dev/null"));
    let pid = plan.ssh(&ip, "systemctl show -p MainPID --value redis-server");
    let out = rigger(&["apply", &stale]);
    assert!(!out.status.success(), "a saved plan whose hosts changed must be refused:\n{}", out.text());
    assert!(
        out.stderr_text().contains("the hosts changed since this plan was saved (cache) — run `rigger plan --out` again")
            && out.stderr_text().contains(&format!("cache: {CONF} now needs writing (content), the saved plan left it as it was")),
        "{}",
        out.text()
    );
    assert!(plan.ssh(&ip, &format!("sudo -n cat {CONF}")).contains("edited by hand again"), "a refused apply changes no file");
    assert_eq!(plan.ssh(&ip, "systemctl show -p MainPID --value redis-server"), pid, "a refused apply restarts nothing");

    // A plain apply puts it back.
    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "apply:\n{}", out.text());
    assert!(!plan.ssh(&ip, &format!("sudo -n cat {CONF}")).contains("edited by hand"));
}

/// A role added to a built host needs a secret rigger generates (here Redis's
/// password): `plan --out` keeps what it generated in the state, so the
/// saved plan's file hashes are the files `apply FILE` writes. (Before, each
/// command generated its own password and `apply FILE` refused every such plan
/// as "the hosts changed".) The saved plan holds keyed hashes only.
#[test]
fn a_saved_plan_keeps_the_secrets_it_generated_for_a_new_role() {
    if !common::machines() {
        return;
    }
    let plan = LocalPlan::from_text("t-hg", |project, cidr, net| cache_plan(project, cidr, &format!("{net}.32"), false));
    let ip = format!("{}.32", plan.net_prefix);
    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "apply (no role):\n{}", out.text());

    let text = std::fs::read_to_string(plan.path()).unwrap();
    assert!(text.contains("roles: []"), "{text}");
    std::fs::write(plan.path(), text.replace("roles: []", "roles: [redis]") + "services:\n  redis: { port: 6379 }\n").unwrap();
    let saved = plan.dir().join("grown.json").display().to_string();
    let out = rigger(&["plan", plan.path(), "--out", &saved]);
    assert!(out.status.success(), "plan --out: {}", out.text());
    let saved_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&saved).unwrap()).unwrap();
    assert_eq!(saved_json["hosts"]["status"], "planned", "{saved_json}");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(plan.state_path()).unwrap()).unwrap();
    let password = state["secrets"]["redis_password"].as_str().expect("plan --out keeps the password it generated in the state").to_string();
    let files = saved_json["hosts"]["summary"]["hosts"]["cache"]["files"].as_array().unwrap().clone();
    let conf = files.iter().find(|f| f["path"] == "/etc/redis/redis.conf").unwrap_or_else(|| panic!("redis.conf in {files:?}"));
    // Keyed: the hash of the file as written cannot be recomputed without the state.
    let text_hash = |text: &str| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    };

    let out = rigger(&["apply", &saved]);
    assert!(out.status.success(), "apply FILE (a role added):\n{}", out.text());
    assert_eq!(plan.ssh(&ip, "sudo -n systemctl is-active redis-server").trim(), "active");
    let written = plan.ssh(&ip, "sudo -n cat /etc/redis/redis.conf");
    assert!(written.contains(&password), "the password planned is the one written");
    assert_ne!(conf["content_hmac"].as_str(), Some(text_hash(&written).as_str()));
    assert!(conf.get("sha256").is_none(), "{conf}");
    let out = rigger(&["plan", plan.path(), "--detailed-exitcode"]);
    assert_eq!(out.code(), 0, "nothing left to do:\n{}", out.text());

    // A rotation previewed with `plan --out` is not made the state's by the
    // plan (the hosts do not have it yet): the saved plan names the variable
    // `apply FILE` needs, refuses without it, applies with it. The JSON
    // document names the state's serial the saved plan was made at.
    let rotated = plan.dir().join("rotated.json").display().to_string();
    let with_env = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rigger")).args(args).env("RIGGER_SECRET_REDIS_PASSWORD", "rotated-password-4711").env("NO_COLOR", "1").output().unwrap()
    };
    let out = with_env(&["plan", plan.path(), "--json", "--out", &rotated]);
    assert!(out.status.success(), "plan --out with a rotation: {}", out.text());
    assert!(out.stderr_text().contains("writes the values of RIGGER_SECRET_REDIS_PASSWORD given to this run"), "{}", out.text());
    let doc: serde_json::Value = serde_json::from_str(&out.stdout_text()).expect("one JSON document on stdout");
    let saved_json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&rotated).unwrap()).unwrap();
    assert_eq!(doc["state"]["serial"], saved_json["state_serial"], "{doc}");
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(plan.state_path()).unwrap()).unwrap();
    assert_eq!(state["secrets"]["redis_password"].as_str(), Some(password.as_str()), "a plan does not rotate the state's password");
    let out = rigger(&["apply", &rotated]);
    assert!(!out.status.success() && out.stderr_text().contains("the hosts changed since this plan was saved"), "without the variable: {}", out.text());
    // (A refused apply moves the state on: that saved plan is spent, a new one is made.)
    let out = with_env(&["plan", plan.path(), "--out", &rotated]);
    assert!(out.status.success(), "plan --out with a rotation: {}", out.text());
    let out = with_env(&["apply", &rotated]);
    assert!(out.status.success(), "apply FILE with the variable: {}", out.text());
    assert!(plan.ssh(&ip, "sudo -n cat /etc/redis/redis.conf").contains("rotated-password-4711"));
}

/// `apply --target HOST` changes that host and nothing else: a hand edit on
/// every host is put back on the target only; a new machine, targeted, is
/// created and configured while the others stay as they are; a saved plan is
/// applied whole, so `--target` on one is refused; the whole plan then puts
/// the rest back.
#[test]
fn apply_target_changes_only_the_targeted_hosts() {
    if !common::machines() {
        return;
    }
    const CONF: &str = "/etc/nftables.conf";
    let plan = LocalPlan::new("t-target", 2);
    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "apply failed:\n{}", out.text());
    let ip = |i: u32| format!("{}.{}", plan.net_prefix, 10 + i);
    let edited = |i: u32| plan.ssh(&ip(i), &format!("sudo -n cat {CONF}")).contains("# edited by hand");
    for i in [1, 2] {
        plan.ssh(&ip(i), &format!("echo '# edited by hand' | sudo -n tee -a {CONF} >/dev/null"));
    }

    let out = rigger(&["apply", plan.path(), "--auto-approve", "--target", "m-1"]);
    assert!(out.status.success(), "apply --target m-1 failed:\n{}", out.text());
    assert!(out.stdout_text().contains("m-1") && !out.stdout_text().contains("m-2"), "only m-1's changes are shown:\n{}", out.stdout_text());
    assert!(!edited(1), "the target's file is put back");
    assert!(edited(2), "a host that is not a target is left alone");

    // One machine more, targeted: made and configured; m-2 still untouched.
    let text = std::fs::read_to_string(plan.path()).unwrap();
    std::fs::write(plan.path(), text.replace("count: 2", "count: 3")).unwrap();
    let out = rigger(&["apply", plan.path(), "--auto-approve", "--target", "m-3"]);
    assert!(out.status.success(), "apply --target m-3 failed:\n{}", out.text());
    assert!(out.stdout_text().contains("1 added"), "{}", out.stdout_text());
    assert!(plan.ssh(&ip(3), &format!("sudo -n cat {CONF}")).contains("table inet rigger"), "the new target is configured");
    assert!(edited(2), "a host that is not a target is left alone");

    // A saved plan is applied whole.
    let saved = plan.dir().join("saved.json").display().to_string();
    let out = rigger(&["plan", plan.path(), "--out", &saved]);
    assert!(out.status.success(), "plan --out: {}", out.text());
    let out = rigger(&["apply", &saved, "--target", "m-1"]);
    assert_eq!(out.code(), 1, "{}", out.text());
    assert!(out.stderr_text().contains("is a saved plan: it is applied whole, --target does not narrow it"), "{}", out.text());
    assert!(edited(2), "a refused apply changes nothing");

    let out = rigger(&["apply", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "apply failed:\n{}", out.text());
    assert!(!edited(2), "the whole plan puts m-2 back");
}
