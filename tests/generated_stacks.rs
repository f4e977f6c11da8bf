//! Generated plan shapes on real local machines (issue 11, item 4): a couple
//! of seeds per run (printed; `RIGGER_TEST_SEED=<seed>[,<seed>…]` applies
//! exactly those), each applied from nothing — the apply's gates log in
//! through every HAProxy host's write and read port and the VIP — then
//! `status` (the same client paths), then a crash drill (`rigger drill`): with
//! synchronous_mode true, not one acknowledged write may be lost. Random seeds
//! are drawn among shapes of at most 7 machines (the first with a keepalived VIP) to keep a run to minutes;
//! a seed given by the environment is applied whatever its size.
//! Needs root and local machines.

mod common;
use common::{LocalPlan, OutputText};
use rigger::plan::generate::{generate, Space};

const MAX_MACHINES: u32 = 7;

fn seeds() -> Vec<u64> {
    if let Ok(list) = std::env::var("RIGGER_TEST_SEED") {
        return list.split(',').map(|s| s.trim().parse().expect("RIGGER_TEST_SEED: comma-separated u64 seeds")).collect();
    }
    let probe = Space { project: "p".into(), nets: vec!["10.0.1".into(), "10.0.2".into(), "10.0.3".into()], apps: None, defaults: String::new(), ssh: None };
    // Two small shapes: the first with a keepalived VIP, the second with the other synchronous_mode.
    let mut out: Vec<(u64, bool)> = Vec::new();
    while out.len() < 2 {
        let seed: u64 = rand::random::<u64>() >> 16;
        let g = generate(seed, &probe);
        let wanted = match out.first() {
            None => g.keepalived,
            Some((_, sync)) => *sync != g.synchronous_mode,
        };
        if g.machines <= MAX_MACHINES && wanted {
            out.push((seed, g.synchronous_mode));
        }
    }
    out.into_iter().map(|(s, _)| s).collect()
}

fn apply_and_drill(seed: u64) {
    let made = std::cell::RefCell::new(None);
    let plan = LocalPlan::from_text("t-fl-gen", |project, _cidr, net| {
        let mut nets = vec![net.to_string()];
        while nets.len() < 3 {
            let (_, n) = common::free_subnet();
            if !nets.contains(&n) {
                nets.push(n);
            }
        }
        let space = Space {
            project: project.to_string(),
            nets,
            apps: None,
            defaults: "{ cores: 1, memory: 1GiB, disk: 3GiB }".into(),
            ssh: Some("{ user: rigger, private_key_file: ./id_ed25519 }".into()),
        };
        let g = generate(seed, &space);
        let text = g.text.clone();
        *made.borrow_mut() = Some(g);
        text
    });
    let g = made.into_inner().expect("generated");
    let (summary, sync) = (g.summary.clone(), g.synchronous_mode);
    println!("=== {summary}\n    reproduce: RIGGER_TEST_SEED={seed} cargo test --test generated_stacks -- --nocapture");
    println!("{}", std::fs::read_to_string(plan.path()).unwrap());

    let out = common::rigger(&["apply", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "{summary}: apply failed:\n{}", out.text());

    let status = common::rigger(&["status", plan.path()]);
    println!("{}", status.stdout_text());
    assert_eq!(status.code(), 0, "{summary}: status not healthy:\n{}", status.text());
    assert!(status.stdout_text().lines().any(|l| l.starts_with("ok") && l.contains("write port")), "{summary}: status proves the write path:\n{}", status.text());
    if g.keepalived {
        assert!(status.stdout_text().lines().any(|l| l.starts_with("ok") && l.contains("path VIP write port")), "{summary}: status proves the VIP:\n{}", status.text());
    }

    let drill = common::rigger(&["drill", plan.path()]);
    let text = drill.stdout_text();
    println!("{text}");
    let lost: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("acknowledged writes: ").and_then(|r| r.split_once(", lost: ")).map(|(_, n)| n.trim().parse().unwrap()))
        .unwrap_or_else(|| panic!("{summary}: the drill did not finish:\n{}", drill.text()));
    assert!(text.contains("back as a streaming replica"), "{summary}: the old leader must rejoin:\n{}", drill.text());
    if sync {
        assert_eq!(lost, 0, "{summary}: synchronous_mode lost acknowledged writes:\n{}", drill.text());
        assert!(drill.status.success(), "{}", drill.text());
    } else {
        println!("asynchronous replication: {lost} acknowledged write(s) lost in the drill");
    }
}

#[test]
fn generated_shapes_come_up_serve_clients_and_survive_a_crash() {
    if !common::machines() {
        return;
    }
    let seeds = seeds();
    println!("seeds this run: {seeds:?}");
    for seed in seeds {
        apply_and_drill(seed);
    }
}
