//! Generated plan shapes (src/plan/generate.rs), thousands of them, no
//! machines: each validates without an error, plans (the resource graph, and
//! every host's config files rendered), every address sits inside its subnet,
//! no two roles of a host share a port, and the plan's firewall lets every
//! needed flow through. A failing case prints its seed; the generator gives
//! the same plan again for it.

use proptest::prelude::*;
use rigger::plan::generate::{generate, Space};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One key pair for every case (the cloud layer's specs read the public key).
fn key() -> &'static str {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("generated-plans");
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("id_ed25519");
        if !key.exists() {
            let ok = std::process::Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().expect("ssh-keygen");
            assert!(ok.success());
        }
        key.display().to_string()
    })
}

fn space(apps: bool) -> Space {
    Space {
        project: "gen".into(),
        nets: vec!["10.61.1".into(), "10.61.2".into(), "10.61.3".into()],
        apps: apps.then(|| concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo-app").to_string()),
        defaults: "{ cores: 1, memory: 1GiB, disk: 3GiB }".into(),
        ssh: Some(format!("{{ user: rigger, private_key_file: {} }}", key())),
    }
}

fn check(seed: u64, apps: bool) -> Result<(), String> {
    let g = generate(seed, &space(apps));
    let fail = |what: String| format!("{} — {what}\n{}", g.summary, g.text);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("plan.yaml");
    std::fs::write(&path, &g.text).map_err(|e| e.to_string())?;
    let project = rigger::project::Project::load(&path, None).map_err(|e| fail(format!("not valid: {e:#}")))?;
    let plan = &project.plan;

    let mut seen = BTreeSet::new();
    for h in &plan.hosts {
        let s = plan.subnet(&h.subnet).ok_or_else(|| fail(format!("{} has no subnet", h.name)))?;
        if !s.cidr.contains(&h.ip) || h.ip == s.cidr.network() || h.ip == s.cidr.broadcast() || h.ip == s.gateway {
            return Err(fail(format!("{} at {} is not a host address of {} ({})", h.name, h.ip, s.name, s.cidr)));
        }
        if !seen.insert(h.ip) {
            return Err(fail(format!("{} shares its address {}", h.name, h.ip)));
        }
        let clashes = rigger::flows::port_clashes(plan, h);
        if !clashes.is_empty() {
            return Err(fail(format!("{}: port clash {clashes:?}", h.name)));
        }
    }
    let flows = rigger::flows::flows(plan);
    let blocked = rigger::flows::check_firewall(plan, &flows);
    if !blocked.is_empty() {
        return Err(fail(format!("firewall blocks {:?}", blocked.iter().map(rigger::flows::describe).collect::<Vec<_>>())));
    }
    // Plan: the cloud layer's resources and graph, and every host's files.
    let provider = project.provider().map_err(|e| fail(format!("{e:#}")))?;
    rigger::cloud::engine::specs(provider.as_ref(), &project).map_err(|e| fail(format!("specs: {e:#}")))?;
    let renderer = rigger::render::Renderer::new().map_err(|e| fail(format!("{e:#}")))?;
    // The secrets an apply would generate (passwords, the project CA, host certificates).
    let mut state = rigger::state::State::new(&plan.project, "local");
    rigger::commands::ensure_generated(&mut state, plan).map_err(|e| fail(format!("secrets: {e:#}")))?;
    let secrets: BTreeMap<String, String> = state.secrets;
    for h in &plan.hosts {
        rigger::hosts::roles::desired(plan, h, &secrets, &renderer).map_err(|e| fail(format!("{}: {e:#}", h.name)))?;
    }
    // Every Patroni member's pg_hba lets in every HAProxy host and every other member.
    for m in plan.hosts_with_role("patroni") {
        let hba: Vec<String> = rigger::flows::pg_hba(&flows, m).into_iter().filter(|e| e.database == "all").map(|e| e.address).collect();
        for c in plan.hosts_with_role("haproxy").chain(plan.hosts_with_role("patroni")) {
            if !hba.contains(&format!("{}/32", c.ip)) {
                return Err(fail(format!("pg_hba of {} misses {}", m.name, c.name)));
            }
        }
    }
    Ok(())
}

#[test]
fn the_generator_is_reproducible_from_its_seed() {
    for seed in [0, 1, 42, u64::MAX] {
        assert_eq!(generate(seed, &space(true)).text, generate(seed, &space(true)).text);
    }
    let shapes: BTreeSet<String> = (0..200).map(|s| generate(s, &space(false)).summary.split_once(": ").unwrap().1.to_string()).collect();
    assert!(shapes.len() > 50, "the generator makes many shapes, not a few: {}", shapes.len());
}

#[test]
fn a_generated_plan_breaks_the_firewall_check_when_a_rule_goes() {
    // The check is not vacuous: drop the rule letting HAProxy reach Patroni from a per-role firewall.
    let seed = (0..).find(|s| generate(*s, &space(false)).summary.contains("a group per role")).unwrap();
    let g = generate(seed, &space(false));
    let broken: String = g.text.lines().filter(|l| !l.contains("from_group: g-lb }") || l.contains("protocol: any")).map(|l| format!("{l}\n")).collect();
    let err = rigger::plan::load_str(Path::new("gen.yaml"), &broken).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("firewall group `g-db` lets in no PostgreSQL") && err.contains("from_group: g-lb"), "{}\n{err}", g.summary);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn every_generated_plan_validates_and_plans(seed in any::<u64>(), apps in any::<bool>()) {
        if let Err(e) = check(seed, apps) {
            prop_assert!(false, "{}", e);
        }
    }
}
