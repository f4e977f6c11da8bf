//! A seeded generator of valid plans of many shapes: 1–3 subnets with hosts
//! spread across them, etcd 3 or 5, Patroni 2–5, HAProxy 1–3 (keepalived only
//! with ≥ 2), roles sharing hosts, non-default names, ports and scopes,
//! synchronous mode on and off, with or without firewall groups that state
//! exactly the flows the roles need. The same seed gives the same plan (for
//! one build of rigger), so a failing shape is reproduced from its seed alone.
//! Property tests validate and plan thousands; an integration test applies a few.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::fmt::Write;
use crate::hosts::roles::{app, etcd, haproxy, keepalived, nginx, patroni, redis};

/// Where generated plans may put things.
#[derive(Debug, Clone)]
pub struct Space {
    pub project: String,
    /// Free /24 networks as their first three octets (`10.201.7`); the plan uses 1 to 3 of them.
    pub nets: Vec<String>,
    /// Application hosts (app + nginx) too, with the app's folder (`services.app.path`); they take longer to apply.
    pub apps: Option<String>,
    /// Machine size lines (`defaults:`), e.g. `{ cores: 1, memory: 1GiB, disk: 3GiB }`.
    pub defaults: String,
    /// `ssh:` block contents, e.g. `{ user: rigger, private_key_file: ./id_ed25519 }`.
    pub ssh: Option<String>,
}

/// A generated plan and what it was asked to be.
#[derive(Debug, Clone)]
pub struct Generated {
    pub seed: u64,
    pub text: String,
    /// One line: the shape, for test logs.
    pub summary: String,
    pub synchronous_mode: bool,
    pub keepalived: bool,
    /// How many machines the plan builds.
    pub machines: u32,
}

struct Entry {
    name: String,
    count: u32,
    roles: Vec<&'static str>,
    subnet: usize,
    ip: Option<u32>,
    groups: Vec<&'static str>,
}

fn pick<T: Copy>(rng: &mut StdRng, from: &[T]) -> T {
    *from.choose(rng).expect("non-empty")
}

/// Split `total` hosts of one role into 1..=`parts` entries (each at least 1 host).
fn split(rng: &mut StdRng, total: u32, parts: usize) -> Vec<u32> {
    let parts = rng.gen_range(1..=parts.min(total as usize).max(1));
    let mut sizes = vec![1u32; parts];
    for _ in 0..(total - parts as u32) {
        let i = rng.gen_range(0..parts);
        sizes[i] += 1;
    }
    sizes
}

pub fn generate(seed: u64, space: &Space) -> Generated {
    let mut rng = StdRng::seed_from_u64(seed);
    let r = &mut rng;
    let n_subnets = r.gen_range(1..=space.nets.len().clamp(1, 3));
    let mut subnet_names = vec!["front", "data", "core", "edge", "back", "mgmt"];
    subnet_names.shuffle(r);
    let subnet_names = &subnet_names[..n_subnets];

    // Ports: distinct pools per setting, so roles sharing a host never clash.
    let pg_port = pick(r, &[5432u16, 5433, 6543]);
    let rest_port = pick(r, &[8008u16, 8009, 8018]);
    let (write_port, read_port) = pick(r, &[(5000u16, 5001u16), (6000, 6001), (7432, 7433)]);
    let stats_port = pick(r, &[8404u16, 8405, 9404]);
    let (client_port, peer_port) = pick(r, &[(2379u16, 2380u16), (12379, 12380)]);
    let redis_port = pick(r, &[6379u16, 6380]);
    let app_port = pick(r, &[9001u16, 9101]);
    let nginx_port = pick(r, &[80u16, 8080]);
    let scope = format!("{}-{}", pick(r, &["orders", "ledger", "main", "pgha", "shop"]), r.gen_range(1..100));
    let synchronous_mode = r.gen_bool(0.5);

    let etcd = pick(r, &[3u32, 5]);
    let etcd_on_patroni = r.gen_bool(0.4);
    let patroni = if etcd_on_patroni { etcd } else { r.gen_range(2..=5) };
    let haproxy = r.gen_range(1..=3u32);
    let keepalived = haproxy >= 2 && r.gen_bool(0.75);
    // Redis: none, beside HAProxy, or its own host.
    let redis_mode = if space.apps.is_some() { r.gen_range(1..=2) } else { r.gen_range(0..=2) };

    let name = |r: &mut StdRng, pool: &[&str]| pick(r, pool).to_string();
    let pg_name = name(r, &["pg", "db", "sql"]);
    let etcd_name = name(r, &["etcd", "dcs", "coord"]);
    let lb_name = name(r, &["lb", "proxy", "gate"]);
    let mut entries: Vec<Entry> = Vec::new();
    let letters = ["a", "b", "c"];
    let mut pg_roles = vec![patroni::NAME];
    if etcd_on_patroni {
        pg_roles.push(etcd::NAME);
    }
    for (i, size) in split(r, patroni, n_subnets).into_iter().enumerate() {
        let subnet = r.gen_range(0..n_subnets);
        entries.push(Entry { name: format!("{pg_name}{}", letters[i]), count: size, roles: pg_roles.clone(), subnet, ip: None, groups: vec![] });
    }
    if !etcd_on_patroni {
        for (i, size) in split(r, etcd, n_subnets).into_iter().enumerate() {
            let subnet = r.gen_range(0..n_subnets);
            entries.push(Entry { name: format!("{etcd_name}{}", letters[i]), count: size, roles: vec![etcd::NAME], subnet, ip: None, groups: vec![] });
        }
    }
    // HAProxy hosts stay in one entry (one subnet): keepalived's VIP lives there.
    let lb_subnet = r.gen_range(0..n_subnets);
    let mut lb_roles = vec![haproxy::NAME];
    if keepalived {
        lb_roles.push(keepalived::NAME);
    }
    if redis_mode == 1 {
        lb_roles.push(redis::NAME);
    }
    entries.push(Entry { name: lb_name.clone(), count: haproxy, roles: lb_roles, subnet: lb_subnet, ip: None, groups: vec![] });
    if redis_mode == 2 {
        let subnet = r.gen_range(0..n_subnets);
        entries.push(Entry { name: name(r, &["cache", "kv"]), count: 1, roles: vec![redis::NAME], subnet, ip: None, groups: vec![] });
    }
    if space.apps.is_some() {
        let subnet = r.gen_range(0..n_subnets);
        entries.push(Entry { name: name(r, &["app", "api"]), count: r.gen_range(1..=3), roles: vec![app::NAME], subnet, ip: None, groups: vec![] });
        let subnet = r.gen_range(0..n_subnets);
        entries.push(Entry { name: name(r, &["web", "edge"]), count: 1, roles: vec![nginx::NAME], subnet, ip: None, groups: vec![] });
    }

    // Addresses: some entries explicit (from .20 up, in plan order), the rest
    // allocated by rigger (from .10 up); the VIP at .5 stays clear of both.
    let mut next = vec![20u32; n_subnets];
    for e in &mut entries {
        if r.gen_bool(0.6) {
            e.ip = Some(next[e.subnet]);
            next[e.subnet] += e.count + r.gen_range(0..3);
        }
    }
    // Explicit ranges above allocated ones keep allocation (.10 up) from running into them.
    for e in &mut entries {
        if let Some(ip) = e.ip.as_mut() {
            *ip += 20;
        }
    }

    let firewall = r.gen_range(0..3); // 0: none, 1: one "inside" group, 2: a group per role
    let cidrs: Vec<String> = space.nets[..n_subnets].iter().map(|n| format!("{n}.0/24")).collect();
    let mut fw = String::new();
    match firewall {
        1 => {
            fw.push_str("firewall:\n  - name: inside\n    rules:\n");
            for c in &cidrs {
                let _ = writeln!(fw, "      - {{ direction: ingress, protocol: any, from: {c} }}");
            }
            for e in &mut entries {
                e.groups = vec!["inside"];
            }
        }
        2 => {
            // Exactly the flows (src/flows.rs), group to group; SSH from anywhere.
            let groups: &[(&str, &str, Vec<String>)] = &[
                (patroni::NAME, "g-db", vec![format!("tcp {pg_port},{rest_port} g-lb"), format!("tcp {pg_port},{rest_port} g-db")]),
                (etcd::NAME, "g-etcd", vec![format!("tcp {client_port} g-db"), format!("tcp {peer_port} g-etcd")]),
                // Clients inside the network too: operators (rigger drill, from the control host) write through the ports.
                (haproxy::NAME, "g-lb", [vec![format!("tcp {write_port},{read_port} g-app"), "any - g-lb".into()], cidrs.iter().map(|c| format!("tcp {write_port},{read_port} {c}")).collect()].concat()),
                (redis::NAME, "g-cache", vec![format!("tcp {redis_port} g-app")]),
                (app::NAME, "g-app", vec![format!("tcp {app_port} g-web")]),
                (nginx::NAME, "g-web", vec![format!("tcp {nginx_port} 0.0.0.0/0")]),
            ];
            let used: Vec<&str> = entries.iter().flat_map(|e| e.roles.iter().copied()).collect();
            fw.push_str("firewall:\n");
            for (role, group, rules) in groups {
                if !used.contains(role) {
                    continue;
                }
                let _ = writeln!(fw, "  - name: {group}\n    rules:\n      - {{ direction: ingress, protocol: tcp, ports: 22, from: 0.0.0.0/0 }}");
                for rule in rules {
                    let parts: Vec<&str> = rule.split(' ').collect();
                    let peer = if parts[2].contains('/') { format!("from: {}", parts[2]) } else { format!("from_group: {}", parts[2]) };
                    // A rule naming a group no host uses would still be valid; keep the plan tidy.
                    let peer_role = groups.iter().find(|(_, g, _)| *g == parts[2]).map(|(r, ..)| *r);
                    if peer_role.is_some_and(|pr| !used.contains(&pr)) {
                        continue;
                    }
                    if parts[0] == "any" {
                        let _ = writeln!(fw, "      - {{ direction: ingress, protocol: any, {peer} }}");
                    } else {
                        let _ = writeln!(fw, "      - {{ direction: ingress, protocol: tcp, ports: \"{}\", {peer} }}", parts[1]);
                    }
                }
            }
            for e in &mut entries {
                e.groups = e.roles.iter().filter_map(|role| groups.iter().find(|(r, ..)| r == role).map(|(_, g, _)| *g)).collect();
            }
        }
        _ => {}
    }

    let mut t = String::new();
    let _ = writeln!(t, "# generated by rigger::plan::generate, seed {seed}");
    let _ = writeln!(t, "version: 1\nproject: {}\nprovider: {{ kind: local }}", space.project);
    if let Some(ssh) = &space.ssh {
        let _ = writeln!(t, "ssh: {ssh}");
    }
    let _ = writeln!(t, "network:\n  name: {}\n  subnets:", pick(r, &["main", "net", "stack"]));
    for (i, n) in subnet_names.iter().enumerate() {
        let _ = writeln!(t, "    - {{ name: {n}, cidr: {} }}", cidrs[i]);
    }
    t.push_str(&fw);
    let _ = writeln!(t, "defaults: {}", space.defaults);
    t.push_str("hosts:\n");
    for e in &entries {
        let _ = write!(t, "  - {{ name: {}", e.name);
        if e.count > 1 || r.gen_bool(0.3) {
            let _ = write!(t, ", count: {}", e.count);
        }
        let _ = write!(t, ", roles: [{}]", e.roles.join(", "));
        if n_subnets > 1 || r.gen_bool(0.5) {
            let _ = write!(t, ", subnet: {}", subnet_names[e.subnet]);
        }
        if let Some(ip) = e.ip {
            let _ = write!(t, ", ip: {}.{ip}", space.nets[e.subnet]);
        }
        if !e.groups.is_empty() {
            let _ = write!(t, ", firewall: [{}]", e.groups.join(", "));
        }
        t.push_str(" }\n");
    }
    t.push_str("services:\n");
    let _ = writeln!(t, "  etcd: {{ client_port: {client_port}, peer_port: {peer_port}, cluster_token: {scope}-dcs }}");
    let _ = writeln!(t, "  patroni: {{ scope: {scope}, port: {pg_port}, rest_port: {rest_port}, synchronous_mode: {synchronous_mode} }}");
    let _ = writeln!(t, "  haproxy: {{ write_port: {write_port}, read_port: {read_port}, stats_port: {stats_port} }}");
    if keepalived {
        let _ = writeln!(t, "  keepalived: {{ vip: {}.5 }}", space.nets[lb_subnet]);
    }
    if redis_mode > 0 {
        let _ = writeln!(t, "  redis: {{ port: {redis_port} }}");
    }
    if let Some(path) = &space.apps {
        let _ = writeln!(t, "  app: {{ port: {app_port}, path: {path}, packages: [python3-fastapi, uvicorn, python3-psycopg2, python3-redis] }}\n  nginx: {{ port: {nginx_port} }}");
    }
    let summary = format!(
        "seed {seed}: {} machines, {n_subnets} subnet(s), etcd {etcd}{}, patroni {patroni}, haproxy {haproxy}{}, redis {}, synchronous_mode {synchronous_mode}, firewall {}",
        entries.iter().map(|e| e.count).sum::<u32>(),
        if etcd_on_patroni { " (on the Patroni hosts)" } else { "" },
        if keepalived { " + keepalived" } else { "" },
        ["none", "beside HAProxy", "own host"][redis_mode],
        ["none", "one group", "a group per role"][firewall],
    );
    let machines = entries.iter().map(|e| e.count).sum();
    Generated { seed, text: t, summary, synchronous_mode, keepalived, machines }
}
