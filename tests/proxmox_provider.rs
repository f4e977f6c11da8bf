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
    auth: Auth,
    tls: TlsMode,
    timeouts: ProviderTimeouts,
}

impl Quiet {
    async fn start(lock: Duration) -> Quiet {
        Quiet::start_with(lock, 20).await
    }

    /// `op_time_ms`: how long the simulator's tasks run (a creation takes all of it).
    async fn start_with(lock: Duration, op_time_ms: u64) -> Quiet {
        let mut opts = ProxmoxSimOptions::new("127.0.0.1:0".parse().unwrap());
        opts.op_time_ms = op_time_ms;
        opts.auth_fail_delay_ms = 10;
        let handle = sim::start(opts).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut plan = plan(dir.path(), &handle.base_url());
        plan.hosts.truncate(2);
        let tls = TlsMode::Pinned(tls::parse_fingerprint(handle.fingerprint.as_deref().unwrap()).unwrap());
        let auth = Auth::Token { id: handle.options.token_id.clone(), secret: handle.options.token_secret.clone() };
        let timeouts = ProviderTimeouts { running: Duration::from_secs(60), agent: Duration::from_secs(60), attempts: 3, lock };
        let api = ProxmoxClient::new(ClientOptions::new(handle.base_url(), auth.clone(), tls.clone())).unwrap();
        let http = reqwest::Client::builder().use_preconfigured_tls(tls::client_config(&tls).unwrap().unwrap()).build().unwrap();
        let provider = fresh_provider(&plan, &handle, &auth, &tls, &timeouts);
        Quiet { handle, _dir: dir, plan, provider, api, http, auth, tls, timeouts }
    }

    /// Another provider on the same node, as a re-run of rigger (a new
    /// process) has: it knows nothing of what the last one was doing.
    fn fresh_provider(&self) -> ProxmoxProvider {
        fresh_provider(&self.plan, &self.handle, &self.auth, &self.tls, &self.timeouts)
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

fn fresh_provider(plan: &Plan, handle: &sim::ProxmoxSimHandle, auth: &Auth, tls: &TlsMode, timeouts: &ProviderTimeouts) -> ProxmoxProvider {
    let ProviderConfig::Proxmox(config) = &plan.provider else { unreachable!() };
    let client = ProxmoxClient::new(ClientOptions::new(handle.base_url(), auth.clone(), tls.clone())).unwrap();
    ProxmoxProvider::new(client, config.clone(), plan.project.clone()).with_timeouts(timeouts.clone())
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

/// How long a creation task runs in the tests below: longer than the
/// client's re-send and the provider's retry, as a template's extraction on a
/// real node is (tens of seconds there). PVE writes the container's hostname
/// and tags only after it, so until then nothing names the guest.
const SLOW_CREATE_MS: u64 = 3000;

/// Wait until no guest is being created (every creation task has ended).
async fn creations_ended(handle: &sim::ProxmoxSimHandle) -> Vec<sim::GuestSummary> {
    for _ in 0..200 {
        let guests = handle.guests();
        if guests.iter().all(|g| g.lock.is_none()) {
            return guests.into_iter().filter(|g| !g.template).collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("creations still running: {:?}", handle.guests());
}

/// Start a create and interrupt it (Ctrl-C) once the node has accepted it:
/// the guest exists, locked `create`, with no name or tags yet.
async fn interrupted_after_the_post(provider: &ProxmoxProvider, spec: &ResourceSpec, handle: &sim::ProxmoxSimHandle) {
    let (deps, events) = (Deps::new(), Events::silent());
    let create = provider.create(spec, &deps, &events);
    let accepted = async {
        while !handle.guests().iter().any(|g| g.lock.as_deref() == Some("create")) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::select! {
        result = create => panic!("{}: the create ended before it could be interrupted: {:?}", spec.address, result.map(|l| l.id)),
        () = accepted => {}
    }
}

/// An events sink whose progress lines the test reads afterwards.
fn recorded_events() -> (Events, tokio::sync::mpsc::UnboundedReceiver<rigger_events::Event>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (Events::new(tx), rx)
}

fn progress_lines(rx: &mut tokio::sync::mpsc::UnboundedReceiver<rigger_events::Event>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let rigger_events::Event::Progress { message, .. } = event {
            lines.push(message);
        }
    }
    lines
}

/// The node accepts the create of a machine without a planned VMID, and the
/// answer is lost (the connection resets): the client sends the POST again,
/// PVE answers `CT 100 already exists`, and the provider tries once more
/// while the guest still has no name. It adopts the guest it asked for
/// instead of allocating a second VMID for the same machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_answer_is_lost_makes_one_guest() {
    let q = Quiet::start_with(Duration::from_secs(60), SLOW_CREATE_MS).await;
    let mut plan = q.plan.clone();
    plan.hosts[0].vmid = None;
    let specs = q.provider.specs(&plan).unwrap();
    assert!(q.sim_request(reqwest::Method::POST, "/_sim/lose-answer?method=POST&path=/api2/json/nodes/pve/lxc").await);

    let live = create_with_retries(&q.provider, &specs[0]).await;
    assert_eq!(q.handle.faults_injected(), 1, "the create's answer was lost once");
    let guests = creations_ended(&q.handle).await;
    assert_eq!(guests.len(), 1, "exactly one guest for pg-1: {guests:?}");
    assert_eq!((guests[0].name.as_str(), guests[0].vmid.to_string()), ("pg-1", live.id.clone()));
    assert_eq!(q.refresh().await.len(), 1);
    q.stop().await;
}

/// rigger is interrupted (Ctrl-C) right after the node accepted a create, and
/// run again while the creation task still runs. Without a planned VMID the
/// re-run waits for that creation, saying so, and adopts the guest; with a
/// planned VMID it waits too instead of calling the VMID someone else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_while_the_create_task_runs_adopts_the_guest() {
    let q = Quiet::start_with(Duration::from_secs(60), SLOW_CREATE_MS).await;
    let mut plan = q.plan.clone();
    plan.hosts[0].vmid = None; // pg-1: VMID from /cluster/nextid; pg-2: VMID 102
    let specs = q.provider.specs(&plan).unwrap();
    for spec in &specs {
        interrupted_after_the_post(&q.provider, spec, &q.handle).await;
        let rerun = q.fresh_provider();
        let (events, mut rx) = recorded_events();
        let live = rerun.create(spec, &Deps::new(), &events).await.unwrap_or_else(|e| panic!("{}: the re-run failed: {e:#}", spec.address));
        assert_eq!(live.address, spec.address);
        let lines = progress_lines(&mut rx);
        assert!(lines.iter().any(|l| l.contains("waiting for") && l.contains("creation")), "{}: no word of the wait: {lines:?}", spec.address);
    }
    let guests = creations_ended(&q.handle).await;
    let names: Vec<(&str, u32)> = guests.iter().map(|g| (g.name.as_str(), g.vmid)).collect();
    assert_eq!(names, vec![("pg-1", 100), ("pg-2", 102)], "one guest per machine");
    assert_eq!(q.refresh().await.len(), 2);
    q.stop().await;
}

/// A creation outlasting the lock wait (a full clone of a large disk takes
/// minutes) is waited for as long as its task may run, not given up on after
/// `timeouts.lock`, which bounds the other locks (backup, migrate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_creation_longer_than_the_lock_wait_is_waited_out() {
    let q = Quiet::start_with(Duration::from_millis(300), SLOW_CREATE_MS).await;
    let specs = q.provider.specs(&q.plan).unwrap();
    interrupted_after_the_post(&q.provider, &specs[1], &q.handle).await;
    let started = std::time::Instant::now();
    let live = q.fresh_provider().create(&specs[1], &Deps::new(), &Events::silent()).await.unwrap_or_else(|e| panic!("the re-run gave up: {e:#}"));
    assert!(started.elapsed() > Duration::from_millis(300), "the creation was still running when the re-run began");
    assert_eq!((live.address.name.as_str(), live.id.as_str()), ("pg-2", "102"));
    q.stop().await;
}

/// A creation another user started (another team's guest, its task not
/// rigger's API token's) is never this machine: a create without a planned
/// VMID does not wait for it, however long it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_creation_is_not_waited_for() {
    let q = Quiet::start_with(Duration::from_secs(60), SLOW_CREATE_MS).await;
    let mut plan = q.plan.clone();
    plan.hosts[0].vmid = None;
    let specs = q.provider.specs(&plan).unwrap();
    let someone = ProxmoxClient::new(ClientOptions::new(q.handle.base_url(), Auth::Password { username: "root@pam".into(), password: q.handle.options.password.clone() }, q.tls.clone())).unwrap();
    let params: Vec<(&str, String)> = vec![("vmid", "150".into()), ("ostemplate", sim::DEFAULT_LXC_TEMPLATE.into()), ("hostname", "their-ct".into()), ("rootfs", "local-lvm:8".into())];
    someone.post("/nodes/pve/lxc", &params).await.unwrap();
    assert!(q.handle.guests().iter().any(|g| g.vmid == 150 && g.lock.as_deref() == Some("create")));
    let (events, mut rx) = recorded_events();
    let live = q.provider.create(&specs[0], &Deps::new(), &events).await.unwrap();
    assert_eq!(live.address.name, "pg-1");
    let lines = progress_lines(&mut rx);
    assert!(!lines.iter().any(|l| l.contains("CT 150")), "waited for another user's creation: {lines:?}");
    q.stop().await;
}

/// A planned VMID held by a creation no task runs any more (pvedaemon was
/// restarted mid-way): the error names the lock and the way out, not "pick a
/// free vmid".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_vmid_left_locked_by_a_dead_creation_names_the_way_out() {
    let q = Quiet::start(Duration::from_secs(60)).await;
    let specs = q.provider.specs(&q.plan).unwrap();
    let params: Vec<(&str, String)> = vec![
        ("vmid", "102".into()),
        ("ostemplate", sim::DEFAULT_LXC_TEMPLATE.into()),
        ("hostname", "unfinished".into()),
        ("rootfs", "local-lvm:8".into()),
    ];
    q.api.run_task(reqwest::Method::POST, "/nodes/pve/lxc", &params).await.unwrap();
    assert!(q.sim_request(reqwest::Method::POST, "/_sim/guests/102/lock?lock=create").await);
    let err = q.provider.create(&specs[1], &Deps::new(), &Events::silent()).await.unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("CT 102 ('unfinished') is locked (create) and no task on node pve holds the lock"), "{message}");
    assert!(message.contains("`pct unlock 102`") && message.contains("`pct destroy 102 --purge`"), "{message}");
    q.stop().await;
}

/// Two guests of the project with one name (a create duplicated before this
/// was fixed, or by hand): a plan says so, naming both and which to remove,
/// instead of showing one and leaving the other unseen; destroy sees both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_refuses_two_guests_of_one_name_and_destroy_sees_both() {
    let q = Quiet::start(Duration::from_secs(60)).await;
    let specs = q.provider.specs(&q.plan).unwrap();
    let pg1 = create_with_retries(&q.provider, &specs[0]).await;
    assert_eq!(pg1.id, "101");
    let params: Vec<(&str, String)> = vec![
        ("vmid", "105".into()),
        ("ostemplate", sim::DEFAULT_LXC_TEMPLATE.into()),
        ("hostname", "pg-1".into()),
        ("rootfs", "local-lvm:8".into()),
        ("net0", "name=eth0,bridge=vmbr0,ip=192.168.50.21/24,gw=192.168.50.1".into()),
        ("tags", specs[0].attrs["tags"].as_str().unwrap().into()),
    ];
    q.api.run_task(reqwest::Method::POST, "/nodes/pve/lxc", &params).await.unwrap();

    // The state knows pg-1 as CT 101: the other one is the duplicate. A
    // plan is refused; a destroy (a refresh without the check) sees both.
    let known = std::slice::from_ref(&pg1);
    let live = q.provider.refresh(known, &Events::silent()).await.unwrap();
    assert_eq!(live.iter().filter(|g| g.address.name == "pg-1").count(), 2, "destroy removes both");
    let err = q.provider.refuse_to_plan(&live, known).unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("2 guests named 'pg-1'") && message.contains("CT 101") && message.contains("CT 105"), "{message}");
    assert!(message.contains("`pct destroy 105 --purge`") && !message.contains("`pct destroy 101"), "{message}");
    q.stop().await;
}

/// Delete removes only a guest it can prove is the machine: tagged as the
/// project's AND named as the machine. Renamed (its VMID now holds another
/// machine) or untagged, it is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_leaves_a_guest_it_cannot_prove_is_the_machine() {
    let q = Quiet::start(Duration::from_secs(60)).await;
    let specs = q.provider.specs(&q.plan).unwrap();
    let pg1 = create_with_retries(&q.provider, &specs[0]).await;
    let pg2 = create_with_retries(&q.provider, &specs[1]).await;

    q.api.put("/nodes/pve/lxc/101/config", &[("hostname", "app-9".to_string())]).await.unwrap();
    let message = format!("{:#}", q.provider.delete(&pg1, &Events::silent()).await.unwrap_err());
    assert!(message.contains("refusing to delete VMID 101 ('app-9')"), "{message}");

    q.api.put("/nodes/pve/lxc/102/config", &[("delete", "tags".to_string())]).await.unwrap();
    let message = format!("{:#}", q.provider.delete(&pg2, &Events::silent()).await.unwrap_err());
    assert!(message.contains("refusing to delete VMID 102 ('pg-2')"), "{message}");
    assert_eq!(q.handle.guests().iter().filter(|g| !g.template).count(), 2, "both guests are still there");
    q.stop().await;
}

/// Machines without planned VMIDs created at once take different VMIDs from
/// the start: /cluster/nextid would offer each the same one, and the loser
/// would wait out the winner's creation before trying another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_creates_without_vmids_do_not_collide() {
    let q = Quiet::start_with(Duration::from_secs(60), SLOW_CREATE_MS).await;
    let mut plan = q.plan.clone();
    for host in &mut plan.hosts {
        host.vmid = None;
    }
    let specs = q.provider.specs(&plan).unwrap();
    let (events, mut rx) = recorded_events();
    let deps = Deps::new();
    let created = futures::future::join_all(specs.iter().map(|spec| q.provider.create(spec, &deps, &events))).await;
    let mut vmids: Vec<String> = created.into_iter().map(|c| c.expect("created").id).collect();
    vmids.sort();
    assert_eq!(vmids, ["100", "101"]);
    let mut retries = Vec::new();
    while let Ok(event) = rx.try_recv() {
        if let rigger_events::Event::Note { subject, message } = event {
            retries.push(format!("{subject}: {message}"));
        }
    }
    assert!(retries.iter().all(|n| !n.contains("failed, retrying")), "{retries:#?}");
    q.stop().await;
}
