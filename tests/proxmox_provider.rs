//! The Proxmox provider against the simulator with faults: create a plan's
//! machines (retrying failed creates as the core does), refresh to a zero
//! diff, delete everything. Several seeds.

use rigger_events::Events;
use rigger::plan::model::*;
use rigger::cloud::providers::proxmox::client::{Auth, ClientOptions, ProxmoxClient};
use rigger::cloud::providers::proxmox::tls::{self, TlsMode};
use rigger::cloud::providers::proxmox::{ProviderTimeouts, ProxmoxProvider};
use rigger::cloud::providers::{Deps, Provider};
use rigger::cloud::resource::{LiveResource, ResourceSpec};
use rigger_sim::proxmox::{self as sim, ProxmoxSimOptions, QEMU_TEMPLATE_NAME};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBbOT2vYcFq7uYdK0r5oQzGJmS0t2C3mA5YbQm1cJx3f test@rigger\n";

fn host(name: &str, ip: Ipv4Addr, vmid: Option<u32>, kind: GuestKind) -> Host {
    Host {
        name: name.into(),
        group: name.split('-').next().unwrap_or(name).into(),
        index: 1,
        roles: vec!["patroni".into()],
        subnet: "app".into(),
        ip,
        image: QEMU_TEMPLATE_NAME.into(),
        cores: 2,
        memory_bytes: 2 << 30,
        disk_bytes: 8 << 30,
        core_fraction: 100,
        firewall: vec![],
        public_ip: false,
        vmid,
        guest_kind: kind,
        zone: None,
    }
}

fn plan(dir: &std::path::Path, endpoint: &str) -> Plan {
    let key_file = dir.join("id_ed25519.pub");
    std::fs::write(&key_file, KEY).unwrap();
    Plan {
        file: dir.join("rigger.yaml"),
        dir: dir.to_path_buf(),
        version: 1,
        project: "PG-HA".into(),
        provider: ProviderConfig::Proxmox(ProxmoxConfig {
            endpoint: Some(endpoint.into()),
            node: "pve".into(),
            token_id: Some("root@pam!rigger".into()),
            tls_fingerprint: None,
            insecure: false,
            storage: "local-lvm".into(),
            bridge: "vmbr0".into(),
            template: sim::DEFAULT_LXC_TEMPLATE.into(),
        }),
        ssh: SshConfig { user: "rigger".into(), private_key_file: PathBuf::from("/nonexistent"), public_key_file: key_file, bastion: None },
        network: Network {
            name: "main".into(),
            subnets: vec![Subnet { name: "app".into(), cidr: "192.168.50.0/24".parse().unwrap(), zone: None, gateway: "192.168.50.1".parse().unwrap() }],
        },
        firewall: vec![],
        hosts: vec![
            host("pg-1", "192.168.50.21".parse().unwrap(), Some(101), GuestKind::Lxc),
            host("pg-2", "192.168.50.22".parse().unwrap(), Some(102), GuestKind::Lxc),
            host("pg-3", "192.168.50.23".parse().unwrap(), Some(103), GuestKind::Lxc),
            host("etcd-1", "192.168.50.51".parse().unwrap(), Some(110), GuestKind::Lxc),
            host("app-1", "192.168.50.61".parse().unwrap(), None, GuestKind::Qemu),
        ],
        services: BTreeMap::new(),
        security: Default::default(),
        public_addresses: Default::default(),
    }
}

/// What the core does: a failed create is tried again.
async fn create_with_retries(provider: &ProxmoxProvider, spec: &ResourceSpec) -> LiveResource {
    let mut last = None;
    for _ in 0..4 {
        match provider.create(spec, &Deps::new(), &Events::silent()).await {
            Ok(live) => return live,
            Err(e) => last = Some(e),
        }
    }
    panic!("{} could not be created: {:#}", spec.address, last.unwrap());
}

async fn delete_with_retries(provider: &ProxmoxProvider, live: &LiveResource) {
    let mut last = None;
    for _ in 0..4 {
        match provider.delete(live, &Events::silent()).await {
            Ok(()) => return,
            Err(e) => last = Some(e),
        }
    }
    panic!("{} could not be deleted: {:#}", live.address, last.unwrap());
}

async fn refresh_with_retries(provider: &ProxmoxProvider) -> Vec<LiveResource> {
    for _ in 0..3 {
        if let Ok(live) = provider.refresh(&[], &Events::silent()).await {
            return live;
        }
    }
    provider.refresh(&[], &Events::silent()).await.expect("refresh")
}

async fn round_trip(seed: u64) {
    let mut opts = ProxmoxSimOptions::new("127.0.0.1:0".parse().unwrap());
    opts.op_time_ms = 40;
    opts.agent_delay_ms = 150;
    opts.auth_fail_delay_ms = 10;
    opts.faults = 0.12;
    opts.seed = seed;
    let handle = sim::start(opts).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), &handle.base_url());
    let ProviderConfig::Proxmox(config) = &plan.provider else { unreachable!() };
    let tls = TlsMode::Pinned(tls::parse_fingerprint(handle.fingerprint.as_deref().unwrap()).unwrap());
    let auth = Auth::Token { id: handle.options.token_id.clone(), secret: handle.options.token_secret.clone() };
    let client = ProxmoxClient::new(ClientOptions::new(handle.base_url(), auth, tls)).unwrap();
    let provider = ProxmoxProvider::new(client, config.clone(), plan.project.clone()).with_timeouts(ProviderTimeouts {
        running: Duration::from_secs(60),
        agent: Duration::from_secs(60),
        attempts: 6,
        lock: Duration::from_secs(60),
    });

    let specs = provider.specs(&plan).unwrap();
    assert_eq!(specs.len(), plan.hosts.len(), "only machines: Proxmox has no VPC objects");
    let created = futures::future::join_all(specs.iter().map(|spec| create_with_retries(&provider, spec))).await;
    for live in &created {
        assert!(live.output_str("ssh_host").is_some_and(|ip| ip.starts_with("192.168.50.")), "{live:?}");
    }

    // Refresh shows every machine exactly as planned.
    let live = refresh_with_retries(&provider).await;
    assert_eq!(live.len(), specs.len(), "seed {seed}: {live:#?}");
    for spec in &specs {
        let found = live.iter().find(|l| l.address == spec.address).unwrap_or_else(|| panic!("seed {seed}: {} missing", spec.address));
        let changed: Vec<_> = spec.attrs.iter().filter(|(k, v)| found.attrs.get(*k) != Some(*v)).map(|(k, v)| (k, v, found.attrs.get(k))).collect();
        assert!(changed.is_empty(), "seed {seed}: {} differs: {changed:?}", spec.address);
    }
    // No duplicates in the store.
    let guests = handle.guests();
    let mut names: Vec<&str> = guests.iter().map(|g| g.name.as_str()).collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "seed {seed}: duplicate guests {guests:?}");
    assert_eq!(guests.len(), specs.len() + 1, "seed {seed}: {guests:?}");

    // An update in place: more memory for pg-1.
    let mut bigger = specs[0].clone();
    bigger.attrs.insert("memory".into(), serde_json::json!(4096));
    let pg1 = live.iter().find(|l| l.address == bigger.address).unwrap();
    let mut updated = None;
    for _ in 0..4 {
        if let Ok(l) = provider.update(&bigger, pg1, &Deps::new(), &Events::silent()).await {
            updated = Some(l);
            break;
        }
    }
    assert_eq!(updated.expect("update").attrs["memory"], serde_json::json!(4096));

    futures::future::join_all(live.iter().map(|l| delete_with_retries(&provider, l))).await;
    let left = handle.guests();
    assert!(left.iter().all(|g| g.template), "seed {seed}: left behind {left:?}");
    assert!(refresh_with_retries(&provider).await.is_empty());
    assert!(handle.faults_injected() > 0, "seed {seed}: the run saw no faults");
    handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_refresh_delete_with_faults_seed_1() {
    round_trip(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_refresh_delete_with_faults_seed_2() {
    round_trip(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_refresh_delete_with_faults_seed_3() {
    round_trip(3).await;
}

/// A quiet simulator (no faults) and the provider on it, for the first two
/// hosts of `plan`; `api` is a second client for what an admin does meanwhile.
struct Quiet {
    handle: sim::ProxmoxSimHandle,
    _dir: tempfile::TempDir,
    plan: Plan,
    provider: ProxmoxProvider,
    api: ProxmoxClient,
    http: reqwest::Client,
}

impl Quiet {
    async fn start(lock: Duration) -> Quiet {
        let mut opts = ProxmoxSimOptions::new("127.0.0.1:0".parse().unwrap());
        opts.op_time_ms = 20;
        opts.auth_fail_delay_ms = 10;
        let handle = sim::start(opts).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut plan = plan(dir.path(), &handle.base_url());
        plan.hosts.truncate(2);
        let ProviderConfig::Proxmox(config) = &plan.provider else { unreachable!() };
        let tls = TlsMode::Pinned(tls::parse_fingerprint(handle.fingerprint.as_deref().unwrap()).unwrap());
        let auth = Auth::Token { id: handle.options.token_id.clone(), secret: handle.options.token_secret.clone() };
        let client = ProxmoxClient::new(ClientOptions::new(handle.base_url(), auth.clone(), tls.clone())).unwrap();
        let timeouts = ProviderTimeouts { running: Duration::from_secs(60), agent: Duration::from_secs(60), attempts: 3, lock };
        let provider = ProxmoxProvider::new(client, config.clone(), plan.project.clone()).with_timeouts(timeouts);
        let api = ProxmoxClient::new(ClientOptions::new(handle.base_url(), auth, tls.clone())).unwrap();
        let http = reqwest::Client::builder().use_preconfigured_tls(tls::client_config(&tls).unwrap().unwrap()).build().unwrap();
        Quiet { handle, _dir: dir, plan, provider, api, http }
    }

    /// One of the simulator's own (not Proxmox) requests, e.g. `/_sim/guests/102/lock`.
    async fn sim_request(&self, method: reqwest::Method, path_and_query: &str) -> bool {
        let o = &self.handle.options;
        let reply = self.http.request(method, format!("{}{path_and_query}", self.handle.base_url())).header("Authorization", format!("PVEAPIToken={}={}", o.token_id, o.token_secret)).send().await.unwrap();
        reply.status().is_success()
    }

    async fn refresh(&self) -> Vec<LiveResource> {
        self.provider.refresh(&[], &Events::silent()).await.expect("refresh")
    }

    async fn stop(self) {
        self.handle.stop().await;
    }
}

/// What the GUI would show, the plan shows: a stopped guest is started in
/// place; a guest an interrupted creation left locked is planned as a
/// replacement with the lock as the reason, and deleting it ends at once with
/// an error naming the guest, the lock and `pct unlock`; after the unlock,
/// re-apply converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_sees_status_and_interrupted_creations() {
    use rigger::cloud::diff::{self, Action};
    // A long lock wait: the interrupted creation must not be waited for at all.
    let q = Quiet::start(Duration::from_secs(600)).await;
    let (provider, api, handle) = (&q.provider, &q.api, &q.handle);
    let specs = provider.specs(&q.plan).unwrap();
    for spec in &specs {
        create_with_retries(provider, spec).await;
    }
    let render = |changes: &[diff::Change]| rigger::ui::plan::render_human(changes, &rigger::ui::Paint { on: false });
    let refresh = || q.refresh();
    assert!(diff::compute(&specs, &refresh().await).iter().all(|c| c.action == Action::NoOp));

    // pg-1 stopped (as from the GUI): an in-place start.
    api.run_task(reqwest::Method::POST, "/nodes/pve/lxc/101/status/stop", &[]).await.unwrap();
    let changes = diff::compute(&specs, &refresh().await);
    let pg1 = changes.iter().find(|c| c.address.name == "pg-1").unwrap();
    assert_eq!((pg1.action, pg1.changed.clone()), (Action::Update, vec!["status".to_string()]));
    let text = render(&changes);
    assert!(text.contains(r#"status = "stopped" -> "running""#), "{text}");
    provider.update(&specs[0], pg1.live.as_ref().unwrap(), &Deps::new(), &Events::silent()).await.expect("start in place");
    assert!(diff::compute(&specs, &refresh().await).iter().all(|c| c.action == Action::NoOp));

    // pg-2 left `lock: create` by a creation that died (no task holds it).
    api.run_task(reqwest::Method::POST, "/nodes/pve/lxc/102/status/stop", &[]).await.unwrap();
    assert!(q.sim_request(reqwest::Method::POST, "/_sim/guests/102/lock?lock=create").await);
    let changes = diff::compute(&specs, &refresh().await);
    let pg2 = changes.iter().find(|c| c.address.name == "pg-2").unwrap().clone();
    assert_eq!(pg2.action, Action::Replace, "{pg2:?}");
    assert_eq!(pg2.replace_because, vec!["lock".to_string()]);
    let text = render(&changes);
    assert!(text.contains("machine.pg-2 must be replaced (lock forces replacement)"), "{text}");
    assert!(text.contains(r#"lock   = "create" -> null  # forces replacement"#), "{text}");
    // The replacement's delete ends (a hang guard, not a timing) with what to do.
    let deleted = tokio::time::timeout(Duration::from_secs(120), provider.delete(pg2.live.as_ref().unwrap(), &Events::silent()))
        .await
        .expect("delete of a guest locked by an interrupted creation must end, not wait for the lock");
    let message = format!("{:#}", deleted.unwrap_err());
    assert!(message.contains("CT 102 ('pg-2') is locked (create)"), "{message}");
    assert!(message.contains("`pct unlock 102`"), "{message}");
    // Destroy-style delete of the same guest gives the same answer; the guest is untouched.
    assert!(handle.guests().iter().any(|g| g.vmid == 102 && g.lock.as_deref() == Some("create")));

    // `pct unlock 102` on the node: the next plan starts it, and re-apply converges.
    assert!(q.sim_request(reqwest::Method::DELETE, "/_sim/guests/102/lock").await);
    let changes = diff::compute(&specs, &refresh().await);
    let pg2 = changes.iter().find(|c| c.address.name == "pg-2").unwrap();
    assert_eq!((pg2.action, pg2.changed.clone()), (Action::Update, vec!["status".to_string()]));
    provider.update(&specs[1], pg2.live.as_ref().unwrap(), &Deps::new(), &Events::silent()).await.expect("start in place");
    assert!(diff::compute(&specs, &refresh().await).iter().all(|c| c.action == Action::NoOp));
    q.stop().await;
}

/// A guest that HA (or an admin) migrated to another node of the cluster is
/// still the plan's machine: refresh reads it on its node (no duplicate is
/// planned), a start and a delete are sent to that node, and a guest listed
/// nowhere is still created on the plan's node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_migrated_to_another_node_is_followed_there() {
    use rigger::cloud::diff::{self, Action};
    let q = Quiet::start(Duration::from_secs(60)).await;
    let (provider, api, handle) = (&q.provider, &q.api, &q.handle);
    let specs = provider.specs(&q.plan).unwrap();
    create_with_retries(provider, &specs[0]).await;

    // pg-1 (CT 101) moves to node pve2; the simulated node pve no longer has its config.
    assert!(q.sim_request(reqwest::Method::POST, "/_sim/guests/101/node?node=pve2").await);
    let e = api.get("/nodes/pve/lxc/101/config", &[]).await.unwrap_err();
    assert!(e.is_missing_guest(), "{e}");

    let refresh = || q.refresh();
    let live = refresh().await;
    let pg1 = live.iter().find(|l| l.address.name == "pg-1").expect("pg-1 is still seen, on its new node");
    assert_eq!(pg1.output_str("node"), Some("pve2"));
    let changes = diff::compute(&specs, &live);
    let by_name = |n: &str| changes.iter().find(|c| c.address.name == n).unwrap().clone();
    assert_eq!(by_name("pg-1").action, Action::NoOp, "{changes:?}");
    // pg-2 is in no listing: it is created on the plan's node.
    assert_eq!(by_name("pg-2").action, Action::Create);
    let pg2 = create_with_retries(provider, &specs[1]).await;
    assert_eq!(pg2.output_str("node"), Some("pve"));

    // Stopped on pve2: the start goes there.
    api.run_task(reqwest::Method::POST, "/nodes/pve2/lxc/101/status/stop", &[]).await.unwrap();
    let changes = diff::compute(&specs, &refresh().await);
    let pg1 = changes.iter().find(|c| c.address.name == "pg-1").unwrap();
    assert_eq!((pg1.action, pg1.changed.clone()), (Action::Update, vec!["status".to_string()]));
    provider.update(&specs[0], pg1.live.as_ref().unwrap(), &Deps::new(), &Events::silent()).await.expect("started on pve2");
    assert!(diff::compute(&specs, &refresh().await).iter().all(|c| c.action == Action::NoOp));

    // And deleted there.
    for live in refresh().await {
        delete_with_retries(provider, &live).await;
    }
    assert!(handle.guests().iter().all(|g| g.vmid != 101 && g.vmid != 102), "{:?}", handle.guests());
    q.stop().await;
}
