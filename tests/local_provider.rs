//! The local provider against real machines: a network, a subnet, a firewall
//! group and two systemd-nspawn machines, reached with the system `ssh` client
//! under strict host key checking. Needs root, systemd-container, mmdebstrap
//! (the image is built on first use). Everything the test makes is removed at
//! the end, and by a guard if the test fails halfway.

mod common;

use rigger_events::Events;
use rigger::plan::model::*;
use nspawn_machines::{machine, names};
use rigger::cloud::providers::local::LocalProvider;
use rigger::cloud::providers::{Deps, Provider};
use rigger::cloud::resource::{Address, Kind, LiveResource, ResourceSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const HOSTS: [&str; 2] = ["node-1", "node-2"];
const SSH_USER: &str = "rigger";
const ROOT: &str = "/var/lib/rigger";

struct Fixture {
    project: String,
    network: String,
    cidr: ipnet::Ipv4Net,
    keys: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let project = format!("t-local-{:06x}", rand::random::<u32>() & 0xff_ffff);
        let keys = tempfile::tempdir().expect("tempdir");
        let key = keys.path().join("id_ed25519");
        run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", "rigger-test", "-f", key.to_str().expect("utf-8 path")]);
        Fixture { project, network: "main".into(), cidr: free_subnet(), keys }
    }

    fn private_key(&self) -> PathBuf {
        self.keys.path().join("id_ed25519")
    }

    fn ip(&self, index: u8) -> Ipv4Addr {
        let base = self.cidr.network().octets();
        Ipv4Addr::new(base[0], base[1], base[2], index)
    }

    fn plan(&self) -> Plan {
        let subnet = Subnet { name: "app".into(), cidr: self.cidr, zone: None, gateway: self.ip(1) };
        let hosts = HOSTS
            .iter()
            .enumerate()
            .map(|(i, name)| Host {
                name: name.to_string(),
                group: "node".into(),
                index: i as u32 + 1,
                roles: vec![],
                subnet: "app".into(),
                ip: self.ip(11 + i as u8),
                image: "debian-12".into(),
                cores: 1,
                memory_bytes: 512 << 20,
                disk_bytes: 2 << 30,
                core_fraction: 100,
                firewall: if i == 0 { vec!["db".into()] } else { vec![] },
                public_ip: false,
                vmid: None,
                guest_kind: GuestKind::Lxc,
                zone: None,
            })
            .collect();
        Plan {
            file: self.keys.path().join("rigger.yaml"),
            dir: self.keys.path().to_path_buf(),
            version: 1,
            project: self.project.clone(),
            provider: ProviderConfig::Local(LocalConfig { image: "debian-12".into() }),
            ssh: SshConfig {
                user: SSH_USER.into(),
                private_key_file: self.private_key(),
                public_key_file: self.keys.path().join("id_ed25519.pub"),
                bastion: None,
            },
            network: Network { name: self.network.clone(), subnets: vec![subnet] },
            firewall: vec![FirewallGroup {
                name: "db".into(),
                rules: vec![Rule {
                    direction: Direction::Ingress,
                    protocol: Protocol::Tcp,
                    ports: vec![PortRange { from: 5432, to: 5432 }],
                    peer: Peer::Cidrs(vec![self.cidr]),
                    description: None,
                }],
            }],
            hosts,
            services: BTreeMap::new(),
            security: Default::default(),
            public_addresses: Default::default(),
        }
    }
}

/// A 10.2xx.y.0/24 that nothing on this host uses.
fn free_subnet() -> ipnet::Ipv4Net {
    let routes = output("ip", &["-4", "route", "show", "table", "all"]);
    loop {
        let (b, c) = (200 + rand::random::<u8>() % 50, rand::random::<u8>());
        let prefix = format!("10.{b}.{c}.");
        if !routes.contains(&prefix) {
            return format!("10.{b}.{c}.0/24").parse().expect("cidr");
        }
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}

fn output(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes whatever the test made if it stops halfway (by the exact names it made).
struct Guard<'a> {
    fixture: &'a Fixture,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        let f = self.fixture;
        let project_dir = Path::new(ROOT).join("machines").join(&f.project);
        let running = machine::running_machines().unwrap_or_default();
        for host in HOSTS {
            let name = names::machine(&f.project, host);
            if let Some(pid) = running.get(&name) {
                // The container first (SIGKILL to nspawn alone would orphan it), then nspawn.
                for p in machine::processes_in(&name) {
                    let _ = Command::new("kill").args(["-KILL", &p.to_string()]).status();
                }
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                let deadline = Instant::now() + Duration::from_secs(10);
                while machine::running_machines().unwrap_or_default().contains_key(&name) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let _ = Command::new("ip").args(["link", "del", &names::veth_host(&f.project, host)]).output();
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
            let rootfs = project_dir.join(host).join("rootfs");
            let _ = Command::new("umount").arg(&rootfs).output();
            let _ = nspawn_machines::cgroup::remove(&name);
        }
        let bridge = names::bridge(&f.project, &f.network);
        let _ = Command::new("ip").args(["rule", "del", "iif", &bridge, "to", &f.cidr.to_string(), "lookup", "main", "pref", "10000"]).output();
        let _ = Command::new("ip").args(["rule", "del", "iif", &bridge, "unreachable", "pref", "10001"]).output();
        let _ = Command::new("ip").args(["link", "del", &bridge]).output();
        // Only delete the directory when nothing is mounted inside it any more.
        if !output("cat", &["/proc/self/mounts"]).contains(project_dir.to_str().unwrap_or("/nonexistent")) {
            let _ = std::fs::remove_dir_all(&project_dir);
        }
    }
}

fn by_address(specs: &[ResourceSpec]) -> BTreeMap<Address, ResourceSpec> {
    specs.iter().map(|s| (s.address.clone(), s.clone())).collect()
}

fn write_known_hosts(path: &Path, machines: &[&LiveResource]) {
    let mut lines = String::new();
    for live in machines {
        let ip = live.output_str("ssh_host").expect("ssh_host output");
        let keys = live.outputs["host_keys"].as_array().expect("host_keys is an array");
        assert!(!keys.is_empty());
        for key in keys {
            let key = key.as_str().expect("host key string");
            assert!(key.starts_with("ssh-ed25519 ") || key.starts_with("ecdsa-sha2-"), "unexpected key {key}");
            lines.push_str(&format!("{ip} {key}\n"));
        }
    }
    std::fs::write(path, lines).expect("known_hosts");
}

/// Runs a command on a machine with strict host key checking, retrying while it boots
/// (sshd answers before logins are allowed).
fn ssh(f: &Fixture, known_hosts: &Path, ip: &str, command: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = Command::new("ssh")
            .args(["-i", f.private_key().to_str().expect("path")])
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .arg(format!("{SSH_USER}@{ip}"))
            .arg(command)
            .output()
            .expect("ssh runs");
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("Host key verification failed"), "host key mismatch for {ip}: {stderr}");
        assert!(Instant::now() < deadline, "ssh {ip} {command:?} kept failing: {stderr}");
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_machines_are_created_reached_restarted_and_removed() {
    if !common::machines() {
        return;
    }
    let f = Fixture::new();
    let _guard = Guard { fixture: &f };
    let events = Events::silent();
    let plan = f.plan();
    let provider = LocalProvider::new(&f.project).expect("provider");
    let specs = by_address(&provider.specs(&plan).expect("specs"));
    let network = Address::new(Kind::Network, &f.network);
    let subnet = Address::new(Kind::Subnet, "app");
    let firewall = Address::new(Kind::Firewall, "db");
    let machines: Vec<Address> = HOSTS.iter().map(|h| Address::new(Kind::Machine, *h)).collect();
    assert_eq!(specs.len(), 5);

    // Network, subnet and firewall first, then both machines at once (as the core's parallel walk would).
    let mut deps = Deps::new();
    for address in [&network, &subnet, &firewall] {
        let live = provider.create(&specs[address], &deps, &events).await.expect("create");
        deps.insert(address.clone(), live);
    }
    let started = Instant::now();
    let created = futures::future::join_all(machines.iter().map(|m| provider.create(&specs[m], &deps, &events))).await;
    let created: Vec<LiveResource> = created.into_iter().map(|r| r.expect("machine create")).collect();
    eprintln!("2 machines created and answering sshd in {:?} (includes the image build if it was missing)", started.elapsed());

    // Create again: adopted, same identity.
    let again = provider.create(&specs[&machines[0]], &deps, &events).await.expect("create is idempotent");
    assert_eq!(again.outputs["host_keys"], created[0].outputs["host_keys"]);

    let known_hosts = f.keys.path().join("known_hosts");
    write_known_hosts(&known_hosts, &created.iter().collect::<Vec<_>>());
    for (host, live) in HOSTS.iter().zip(&created) {
        let ip = live.output_str("ssh_host").expect("ssh_host");
        assert_eq!(ssh(&f, &known_hosts, ip, "hostname"), *host);
        assert_eq!(ssh(&f, &known_hosts, ip, "sudo -n id -u"), "0");
    }
    // The image's role services wait for their roles; eth0 keeps the address set from the host.
    let first_ip = created[0].output_str("ssh_host").expect("ip");
    for unit in ["postgresql", "patroni", "etcd", "haproxy", "nginx"] {
        assert_eq!(ssh(&f, &known_hosts, first_ip, &format!("systemctl is-enabled {unit} || true")), "disabled", "{unit}");
    }
    let eth0 = ssh(&f, &known_hosts, first_ip, "sleep 2; ip -4 -o addr show dev eth0");
    assert!(eth0.contains(&format!("{first_ip}/24")), "eth0: {eth0}");
    eprintln!("failed units: {:?}", ssh(&f, &known_hosts, first_ip, "systemctl --failed --no-legend --plain || true"));
    // Each machine's systemd has a cgroup tree of its own (sharing one, two
    // machines starting the same oneshot unit at once collided: status=219/CGROUP).
    let running = machine::running_machines().expect("scan");
    let cgroups: Vec<String> = HOSTS
        .iter()
        .map(|h| {
            let name = names::machine(&f.project, h);
            let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", running[&name])).expect("nspawn's cgroup");
            assert!(cgroup.contains(&format!("/rigger/{name}")), "nspawn of {h} runs in {cgroup}");
            cgroup
        })
        .collect();
    assert_ne!(cgroups[0], cgroups[1]);
    // The machines reach each other over the bridge.
    let other_ip = created[1].output_str("private_ip").expect("private_ip");
    ssh(&f, &known_hosts, created[0].output_str("ssh_host").expect("ip"), &format!("ping -c1 -W2 {other_ip}"));

    // Refresh lists exactly what was made, with the attributes the specs ask for (a re-plan shows no change).
    let live = provider.refresh(&[], &events).await.expect("refresh");
    let found: BTreeSet<Address> = live.iter().map(|l| l.address.clone()).collect();
    assert_eq!(found, specs.keys().cloned().collect());
    for l in &live {
        assert_eq!(l.attrs, specs[&l.address].attrs, "{} differs from its spec", l.address);
    }

    // A machine whose container died is reported stopped, and update starts it again.
    let victim = &machines[1];
    let name = names::machine(&f.project, &victim.name);
    let pid = machine::running_machines().expect("scan")[&name];
    run("kill", &["-KILL", &pid.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let stopped = loop {
        let live = provider.refresh(&[], &events).await.expect("refresh");
        let machine = live.into_iter().find(|l| &l.address == victim).expect("machine still listed");
        if machine.attrs["status"] == "stopped" {
            break machine;
        }
        assert!(Instant::now() < deadline, "killed machine still reported running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let restarted = provider.update(&specs[victim], &stopped, &deps, &events).await.expect("restart");
    assert_eq!(restarted.attrs["status"], "running");
    assert_eq!(ssh(&f, &known_hosts, restarted.output_str("ssh_host").expect("ip"), "hostname"), victim.name);

    // Delete everything, machines first; deleting twice is fine.
    let live = provider.refresh(&[], &events).await.expect("refresh");
    let mut ordered: Vec<&LiveResource> = live.iter().collect();
    ordered.sort_by_key(|l| std::cmp::Reverse(l.address.kind));
    for l in &ordered {
        provider.delete(l, &events).await.expect("delete");
    }
    for l in &ordered {
        provider.delete(l, &events).await.expect("deleting what is gone is Ok");
    }
    assert!(provider.refresh(&[], &events).await.expect("refresh").is_empty());
    assert_nothing_left(&f);
}

fn assert_nothing_left(f: &Fixture) {
    let machine_names: Vec<String> = HOSTS.iter().map(|h| names::machine(&f.project, h)).collect();
    let netns = output("ip", &["netns", "list"]);
    let links = output("ip", &["-br", "link"]);
    let mounts = output("cat", &["/proc/self/mounts"]);
    let running = machine::running_machines().expect("scan");
    for (host, name) in HOSTS.iter().zip(&machine_names) {
        assert!(!netns.split_whitespace().any(|w| w == name), "namespace {name} left");
        let veth = names::veth_host(&f.project, host);
        assert!(!links.contains(&veth), "veth {veth} left");
        assert!(!running.contains_key(name), "nspawn {name} still running");
    }
    let bridge = names::bridge(&f.project, &f.network);
    assert!(!links.contains(&bridge), "bridge {bridge} left");
    assert!(!output("ip", &["rule"]).contains(&bridge), "policy rules for {bridge} left");
    let project_dir = Path::new(ROOT).join("machines").join(&f.project);
    assert!(!mounts.contains(project_dir.to_str().expect("path")), "overlay mount left");
    assert!(!project_dir.exists(), "{} left", project_dir.display());
    for name in &machine_names {
        for hierarchy in ["/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
            let dir = Path::new(hierarchy).join("rigger").join(name);
            assert!(!dir.exists(), "cgroup {} left", dir.display());
        }
    }
}
