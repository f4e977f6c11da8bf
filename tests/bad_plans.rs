//! Every file in tests/bad-plans/ is an invalid plan; the `.err` file beside it
//! holds the exact errors rigger must print (file:line:col: what — what to do).
//! `BLESS=1 cargo test --test bad_plans` rewrites the .err files (review the diff!).

use proptest::prelude::*;
use std::path::{Path, PathBuf};

fn corpus() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir("tests/bad-plans")
        .expect("tests/bad-plans exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_bad_plan_gives_its_exact_error() {
    let files = corpus();
    assert!(files.len() >= 30, "the corpus must hold at least 30 bad plans, it has {}", files.len());
    let bless = std::env::var_os("BLESS").is_some();
    let mut failures = Vec::new();
    for file in &files {
        let got = match rigger::plan::load(file) {
            Ok(_) => format!("(accepted — but this plan is invalid)"),
            Err(e) => e.to_string(),
        };
        let expected_path = file.with_extension("err");
        if bless {
            std::fs::write(&expected_path, format!("{got}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected.trim_end() != got {
            failures.push(format!("{}:\n  expected: {}\n  got:      {}", file.display(), expected.trim_end(), got));
        }
        for line in got.lines() {
            let prefix = format!("{}:", file.display());
            assert!(line.starts_with(&prefix), "every error names the file: {line}");
            assert!(line.contains(" — "), "every error says what to do: {line}");
        }
    }
    assert!(failures.is_empty(), "{} bad plan(s) gave other errors:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn the_reference_plans_are_valid() {
    for p in ["plans/local-ha.yaml"] {
        if let Err(e) = rigger::plan::load(Path::new(p)) {
            panic!("{p} must be valid:\n{e}");
        }
    }
}

/// Pieces of plans, put together at random: the parser must never panic,
/// and every error it reports has a position inside the text.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("version: 1\n".to_string()),
        Just("project: demo\n".to_string()),
        Just("provider: { kind: local }\n".to_string()),
        Just("provider: { kind: proxmox }\n".to_string()),
        Just("provider: { kind: yandex, folder_id: x, zone: z }\n".to_string()),
        Just("network: { name: main, subnets: [ { name: app, cidr: 10.20.0.0/24 } ] }\n".to_string()),
        Just("network: { name: main, subnets: [ { name: a, cidr: 10.0.0.0/8 }, { name: b, cidr: 10.1.0.0/30 } ] }\n".to_string()),
        Just("hosts: [ { name: etcd, count: 3, roles: [etcd] } ]\n".to_string()),
        Just("hosts: [ { name: pg, count: 3, roles: [patroni, keepalived], ip: 10.20.0.250 } ]\n".to_string()),
        Just("hosts:\n  - name: x\n    count: 100\n    ip: 10.20.0.0\n".to_string()),
        Just("firewall: [ { name: db, rules: [ { direction: ingress, from_group: db } ] } ]\n".to_string()),
        Just("services: { keepalived: { vip: 10.20.0.10 }, patroni: { ttl: 1 } }\n".to_string()),
        Just("defaults: { memory: 1.5G, disk: -1G }\n".to_string()),
        Just("ssh: { bastion: pg-1 }\n".to_string()),
        "[a-z_]{1,8}: [\\[\\]{}:,'\"&*!|> a-z0-9.-]{0,20}\n",
        "[ \\t]{0,4}- [a-z0-9: {}\\[\\],]{0,16}\n",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn the_parser_never_panics(parts in prop::collection::vec(fragment(), 0..10)) {
        let text: String = parts.concat();
        let lines = text.lines().count().max(1);
        if let Err(e) = rigger::plan::load_str(Path::new("random.yaml"), &text) {
            prop_assert!(!e.diagnostics.is_empty());
            for d in &e.diagnostics {
                prop_assert!(d.pos.line >= 1 && d.pos.line <= lines + 1, "line {} outside 1..={}: {}", d.pos.line, lines + 1, d.message);
                prop_assert!(d.pos.col >= 1);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(text in "\\PC{0,300}") {
        let _ = rigger::plan::load_str(Path::new("random.yaml"), &text);
    }
}

/// A mistyped command line exits 1 (an error), never 2: scripts read 2 from
/// `plan --detailed-exitcode` as "the plan has changes". Help exits 0.
#[test]
fn a_mistyped_command_line_exits_1_not_2() {
    let run = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_rigger")).args(args).output().expect("run rigger");
    for args in [&["plan", "--detailed-exitcode", "--bogus"][..], &["inventory", "--format", "xml"], &["no-such-command"], &["apply", "--parallelism", "many"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("error:"), "{args:?} says what is wrong");
    }
    let help = run(&["plan", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("--detailed-exitcode"));
}
