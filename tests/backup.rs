//! The backup role end to end with real pgBackRest on local machines: the
//! smallest valid shape (two Patroni members that are also etcd members, and
//! a repository host that is the third etcd member). One build, then in
//! order: the first backup at the gate and the status lines, an interrupted
//! backup followed by a good one, archive_command failing while the
//! repository is unreachable and catching up with no WAL gap, the PITR drill
//! (a replica rebuilt from the repository that streams), and a restore target
//! the repository cannot reach refused with nothing changed.

mod common;

use common::{rigger, LocalPlan, OutputText};
use std::process::Command;
use std::time::{Duration, Instant};

fn plan() -> LocalPlan {
    LocalPlan::from_text("t-bk", |project, cidr, net| {
        format!(
            "version: 1\nproject: {project}\nprovider: {{ kind: local }}\n\
             ssh: {{ user: rigger, private_key_file: ./id_ed25519 }}\n\
             network:\n  name: main\n  subnets: [ {{ name: app, cidr: {cidr} }} ]\n\
             defaults: {{ cores: 1, memory: 1GiB, disk: 4GiB }}\n\
             hosts:\n  - {{ name: pg, count: 2, roles: [etcd, patroni], ip: {net}.21 }}\n  - {{ name: bk, roles: [etcd, backup], ip: {net}.30 }}\n\
             services:\n  patroni: {{ scope: {project} }}\n"
        )
    })
}

/// Run on a machine through the project's ssh_config (strict host keys).
fn on(p: &LocalPlan, host: &str, cmd: &str) -> String {
    let config = p.dir().join(".rigger").join(format!("{}.ssh_config", p.project));
    let out = Command::new("ssh").arg("-F").arg(&config).args(["-o", "BatchMode=yes", host, cmd]).output().unwrap();
    assert!(out.status.success(), "ssh {host} {cmd}: {}", out.stderr_text());
    out.stdout_text()
}

fn psql(p: &LocalPlan, host: &str, sql: &str) -> String {
    on(p, host, &format!("cd /tmp && sudo -u postgres psql -XAtqc \"{sql}\"")).trim().to_string()
}

/// Poll `check` every second until it returns true or `limit` passes.
fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> (bool, String)) {
    let start = Instant::now();
    loop {
        let (ok, seen) = check();
        if ok {
            return;
        }
        assert!(start.elapsed() < limit, "{what}: not within {}s — last seen:\n{seen}", limit.as_secs());
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn leader(p: &LocalPlan) -> String {
    let out = rigger(&["status", p.path(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout_text()).unwrap_or_else(|e| panic!("status --json: {e}\n{}", out.text()));
    v["patroni"].as_array().unwrap().iter().find(|m| m["role"] == "leader").and_then(|m| m["name"].as_str()).unwrap_or_else(|| panic!("no leader:\n{}", out.text())).to_string()
}

/// Archived WAL segment numbers (log * 256 + seg) of one timeline, from the repository's file names.
fn archived_segments(p: &LocalPlan, timeline: &str) -> Vec<u64> {
    let listing = on(p, "bk", &format!("sudo find /var/lib/pgbackrest/archive/{}/ -name '{timeline}*' -printf '%f\\n'", p.project));
    let mut segs: Vec<u64> = listing.lines().filter(|l| l.len() > 24 && !l.contains(".backup") && !l.contains(".partial")).filter_map(|l| segment_number(&l[..24])).collect();
    segs.sort();
    segs
}

fn segment_number(wal: &str) -> Option<u64> {
    let log = u64::from_str_radix(&wal[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&wal[16..24], 16).ok()?;
    Some(log * 256 + seg)
}

#[test]
fn backups_archiving_and_point_in_time_restore_on_real_machines() {
    if !common::machines() {
        return;
    }
    let p = plan();
    let apply = rigger(&["apply", p.path(), "--auto-approve"]);
    assert_eq!(apply.code(), 0, "apply:\n{}", apply.text());

    // The gate created the stanza, checked archiving and took the first full backup.
    let status = rigger(&["status", p.path()]);
    assert_eq!(status.code(), 0, "status:\n{}", status.text());
    let text = status.stdout_text();
    assert!(text.contains(&format!("ok   backup bk: newest ")) && text.contains("(full)"), "{text}");
    assert!(text.contains("ok   wal archive on "), "{text}");
    let conf = on(&p, "bk", "sudo cat /etc/pgbackrest/pgbackrest.conf");
    assert!(conf.contains("repo1-cipher-type=aes-256-cbc"), "{conf}");
    assert!(!apply.text().contains(&conf.lines().find(|l| l.starts_with("repo1-cipher-pass=")).unwrap()[18..]), "the passphrase must never be printed");
    let backups = rigger(&["backups", p.path(), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&backups.stdout_text()).unwrap_or_else(|e| panic!("{e}: {}", backups.text()));
    assert_eq!(v["cipher"], "aes-256-cbc");
    assert_eq!(v["backups"].as_array().unwrap().len(), 1, "{v}");
    s3_repository_rendered_and_checked_offline(&p);

    // Some data, so a backup runs long enough to be interrupted.
    let l = leader(&p);
    on(&p, &l, "cd /tmp && sudo -u postgres /usr/lib/postgresql/15/bin/pgbench -i -s 15 -q postgres 2>&1 | tail -1");

    // An interrupted backup, then a good one.
    // The killer waits on bk itself (0.1 s polling) for the backup to run (a oneshot
    // unit is "activating" while it runs), then kills it 2 s in.
    let config = p.dir().join(".rigger").join(format!("{}.ssh_config", p.project));
    let killer = Command::new("ssh")
        .arg("-F")
        .arg(&config)
        .args(["-o", "BatchMode=yes", "bk", "sudo timeout 120 sh -c 'until [ \"$(systemctl show -p ActiveState --value pgbackrest-backup@full.service)\" = activating ]; do sleep 0.1; done; sleep 2; systemctl kill -s KILL pgbackrest-backup@full.service && echo KILLED'"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let running = Command::new(common::RIGGER).args(["backup", p.path(), "--type", "full"]).env("NO_COLOR", "1").stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let killed = killer.wait_with_output().unwrap();
    assert!(killed.stdout_text().contains("KILLED"), "the backup was not caught running: {}", killed.text());
    let interrupted = running.wait_with_output().unwrap();
    assert_ne!(interrupted.code(), 0, "the killed backup must be reported as failed:\n{}", interrupted.text());
    assert!(interrupted.stderr_text().contains("the full backup failed"), "{}", interrupted.text());
    let good = rigger(&["backup", p.path(), "--type", "full"]);
    assert_eq!(good.code(), 0, "the backup after an interrupted one:\n{}", good.text());
    let label = good.stdout_text().split("Backup ").nth(1).and_then(|r| r.split_whitespace().next()).unwrap_or_else(|| panic!("no label:\n{}", good.text())).to_string();
    let v: serde_json::Value = serde_json::from_str(&rigger(&["backups", p.path(), "--json"]).stdout_text()).unwrap();
    let labels: Vec<&str> = v["backups"].as_array().unwrap().iter().filter_map(|b| b["label"].as_str()).collect();
    assert_eq!(labels.len(), 2, "the first backup and the good one, not the interrupted one: {labels:?}");
    assert!(labels.contains(&label.as_str()), "{labels:?} lacks {label}");
    let verify = on(&p, "bk", &format!("cd /tmp && sudo -u postgres pgbackrest --stanza={} verify 2>&1; echo rc=$?", p.project));
    assert!(verify.trim_end().ends_with("rc=0"), "pgbackrest verify after the interrupted backup:\n{verify}");

    // The repository unreachable: archive_command fails, status says FAIL; back: it catches up, no gap.
    let pg_ips = format!("{}.21, {}.22", p.net_prefix, p.net_prefix);
    on(&p, "bk", &format!("sudo nft add table inet t_bk && sudo nft add chain inet t_bk input '{{ type filter hook input priority 0; }}' && sudo nft add rule inet t_bk input ip saddr '{{ {pg_ips} }}' tcp dport 22 drop"));
    let first_missing = psql(&p, &l, "select pg_walfile_name(pg_current_wal_lsn())");
    for _ in 0..3 {
        psql(&p, &l, "insert into pgbench_history (tid, bid, aid, delta, mtime) select 1, 1, 1, 1, now() from generate_series(1, 1000); select pg_switch_wal()");
    }
    eventually("status shows the failing archive_command", Duration::from_secs(120), || {
        let s = rigger(&["status", p.path()]);
        (s.code() == 1 && s.stdout_text().contains("archive_command FAILING"), s.text())
    });
    on(&p, "bk", "sudo nft delete table inet t_bk");
    psql(&p, &l, "select pg_switch_wal()");
    let last = psql(&p, &l, "select pg_walfile_name(pg_current_wal_lsn())");
    eventually("archiving catches up", Duration::from_secs(180), || {
        let s = rigger(&["status", p.path()]);
        (s.code() == 0 && s.stdout_text().contains(" 0 segment(s) waiting"), s.text())
    });
    let segs = archived_segments(&p, &first_missing[..8]);
    let (from, to) = (segment_number(&first_missing).unwrap(), segment_number(&last).unwrap() - 1);
    let missing: Vec<u64> = (from..=to).filter(|n| !segs.contains(n)).collect();
    assert!(missing.is_empty(), "WAL gap after the outage: segments {missing:?} of {from}..={to} are not in the repository ({segs:?})");

    // The point-in-time restore drill: exactly the rows before T, the dropped table back,
    // the replica rebuilt from the repository and streaming.
    let drill = rigger(&["drill", "restore", p.path()]);
    assert_eq!(drill.code(), 0, "drill restore:\n{}", drill.text());
    let out = drill.stdout_text();
    assert!(out.contains("after the restore: 1000 (ids 1..1000) — exactly those"), "{out}");
    assert!(out.contains("back with 100 of 100 rows — ok"), "{out}");
    assert!(out.contains("rebuilt from the repository (pgBackRest), streaming"), "{out}");
    eprintln!("{out}");
    let status = rigger(&["status", p.path()]);
    assert_eq!(status.code(), 0, "status after the restore:\n{}", status.text());
    assert!(status.stdout_text().contains(" streaming"), "{}", status.text());

    // A target before the oldest backup: a clear error, nothing changed.
    let before = leader(&p);
    let too_old = rigger(&["restore", p.path(), "--to", "2001-01-01 00:00:00", "--auto-approve"]);
    assert_eq!(too_old.code(), 1, "{}", too_old.text());
    assert!(too_old.stderr_text().contains("is before the oldest backup") && too_old.stderr_text().contains("nothing was changed"), "{}", too_old.text());
    let status = rigger(&["status", p.path()]);
    assert_eq!(status.code(), 0, "status after the refused restore:\n{}", status.text());
    assert_eq!(leader(&p), before, "a refused restore must not touch the cluster");
    let unknown = rigger(&["restore", p.path(), "--backup", "20000101-000000F", "--auto-approve"]);
    assert!(unknown.code() == 1 && unknown.stderr_text().contains("has no backup 20000101-000000F"), "{}", unknown.text());

    let destroy = rigger(&["destroy", p.path(), "--auto-approve"]);
    assert_eq!(destroy.code(), 0, "destroy:\n{}", destroy.text());
    p.assert_nothing_left();
}

/// An S3 repository (e.g. Yandex Object Storage) instead of bk's disk. No S3
/// answers here, so it is not applied: it is rendered, masked in `plan`, and
/// checked by pgBackRest itself on bk, offline (the storage dialled at a
/// closed port of bk itself). The plan is put back afterwards.
fn s3_repository_rendered_and_checked_offline(p: &LocalPlan) {
    let plain = std::fs::read_to_string(p.path()).unwrap();
    let with_s3 = plain.replace("services:\n", "services:\n  backup: { s3: { bucket: rigger-test, endpoint: storage.yandexcloud.net, region: ru-central1 } }\n");
    assert_ne!(with_s3, plain);
    std::fs::write(p.path(), &with_s3).unwrap();
    let no_keys = rigger(&["plan", p.path()]);
    assert_eq!(no_keys.code(), 1, "{}", no_keys.text());
    assert!(no_keys.stderr_text().contains("RIGGER_S3_KEY") && no_keys.stderr_text().contains("RIGGER_S3_KEY_SECRET"), "{}", no_keys.text());
    let keys = [("RIGGER_S3_KEY", "YCAJEtestkey0123456"), ("RIGGER_S3_KEY_SECRET", "YCtest-secret-0123456789abcdef")];
    let planned = common::rigger_env(&["plan", p.path(), "--detailed-exitcode"], &keys);
    assert_eq!(planned.code(), 2, "{}", planned.text());
    let text = planned.stdout_text();
    for line in ["repo1-type=s3", "repo1-path=/pgbackrest/", "repo1-s3-bucket=rigger-test", "repo1-s3-endpoint=storage.yandexcloud.net", "repo1-s3-region=ru-central1", "repo1-s3-key-secret=(sensitive)"] {
        assert!(text.contains(line), "the plan does not show {line}:\n{text}");
    }
    assert!(!planned.text().contains(keys[0].1) && !planned.text().contains(keys[1].1), "the S3 keys were printed");

    // The config exactly as apply would write it, with the check apply runs before it replaces the live one.
    let plan = rigger::plan::load_str(std::path::Path::new(p.path()), &with_s3).unwrap_or_else(|e| panic!("{e}"));
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(p.state_path()).unwrap()).unwrap();
    let mut secrets: std::collections::BTreeMap<String, String> = serde_json::from_value(state["secrets"].clone()).unwrap();
    secrets.insert("backup_s3_key".into(), keys[0].1.into());
    secrets.insert("backup_s3_key_secret".into(), keys[1].1.into());
    let renderer = rigger::render::Renderer::new().unwrap();
    let desired = rigger::hosts::roles::desired(&plan, plan.host("bk").unwrap(), &secrets, &renderer).unwrap();
    let conf = desired.files.iter().find(|f| f.path == "/etc/pgbackrest/pgbackrest.conf").expect("the repository config");
    let check = conf.validate.as_ref().expect("an S3 config is checked before it is installed").command.clone();
    let run_check = |content: &str| {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(content);
        let script = format!("echo {b64} | base64 -d > /tmp/s3-check.conf && {}", check.replace("{}", "/tmp/s3-check.conf"));
        let config = p.dir().join(".rigger").join(format!("{}.ssh_config", p.project));
        let out = Command::new("ssh").arg("-F").arg(&config).args(["-o", "BatchMode=yes", "bk", &format!("sudo sh -c {}", rigger::hosts::remote::session::sh_quote(&script))]).output().unwrap();
        (out.status.success(), out.text())
    };
    let (ok, said) = run_check(&conf.content);
    assert!(ok, "pgBackRest refused the rendered S3 config:\n{said}");
    let (ok, said) = run_check(&conf.content.lines().filter(|l| !l.starts_with("repo1-s3-bucket=")).collect::<Vec<_>>().join("\n"));
    assert!(!ok && said.contains("requires option: repo1-s3-bucket"), "a config without the bucket passed:\n{said}");
    let (ok, said) = run_check(&conf.content.replace("repo1-s3-region=", "repo1-s3-regoin="));
    assert!(!ok && said.contains("invalid option 'repo1-s3-regoin'"), "a config with a misspelt option passed:\n{said}");
    on(p, "bk", "sudo rm -f /tmp/s3-check.conf");
    std::fs::write(p.path(), &plain).unwrap();
}

/// No machines: a restore, backup or backups on a plan without a backup host is refused up front.
#[test]
fn restore_without_a_backup_role_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.yaml");
    std::fs::write(
        &path,
        "version: 1\nproject: t-bk-none\nprovider: { kind: local }\nssh: { user: rigger, private_key_file: ./id_ed25519 }\n\
         network:\n  name: main\n  subnets: [ { name: app, cidr: 10.251.3.0/24 } ]\n\
         hosts:\n  - { name: pg, count: 3, roles: [etcd, patroni], ip: 10.251.3.21 }\n",
    )
    .unwrap();
    let path = path.display().to_string();
    for args in [vec!["restore", &path, "--latest", "--auto-approve"], vec!["backup", &path], vec!["backups", &path], vec!["drill", "restore", &path]] {
        let out = rigger(&args);
        assert_eq!(out.code(), 1, "{args:?}:\n{}", out.text());
        assert!(out.stderr_text().contains("no host has the role `backup`") && out.stderr_text().contains("nothing was changed"), "{args:?}:\n{}", out.text());
    }
    assert!(!dir.path().join(".rigger").exists(), "nothing may be written for a refused command");
}
