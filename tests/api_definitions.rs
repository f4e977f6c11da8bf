//! Both sides of the wire held against the vendors' published definitions
//! (`../shared/reference/api/`, beside the checkout; never copied here):
//! every request rigger's Proxmox client makes in a provider round trip
//! exists in PVE's API schema with valid parameters, every answer the
//! simulator gives fits the schema's `returns`, and the simulator refuses and
//! accepts exactly what the schema does, in PVE's error form.

use rigger_events::Events;
use rigger::plan::model::*;
use rigger::cloud::providers::proxmox::client::{ApiError, Auth, ClientOptions, ProxmoxClient};
use rigger::cloud::providers::proxmox::tls::{self, TlsMode};
use rigger::cloud::providers::proxmox::{ProviderTimeouts, ProxmoxProvider};
use rigger::cloud::providers::{Deps, Provider};
use rigger::cloud::resource::{LiveResource, ResourceSpec};
use rigger_sim::proxmox::definitions::{check_answer, ApiSchema, Verdict};
use rigger_sim::proxmox::{self as sim, ProxmoxSimHandle, ProxmoxSimOptions, QEMU_TEMPLATE_NAME};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBbOT2vYcFq7uYdK0r5oQzGJmS0t2C3mA5YbQm1cJx3f test@rigger\n";

fn apidata_path() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/api/proxmox/apidata.js");
    assert!(path.is_file(), "{} is missing: the definition checks need shared/ beside the checkout", path.display());
    path
}

fn schema() -> ApiSchema {
    ApiSchema::load(&apidata_path()).expect("apidata.js parses")
}

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

fn plan(dir: &Path, endpoint: &str) -> Plan {
    let key_file = dir.join("id_ed25519.pub");
    std::fs::write(&key_file, KEY).unwrap();
    Plan {
        file: dir.join("rigger.yaml"),
        dir: dir.to_path_buf(),
        version: 1,
        project: "defs".into(),
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
            host("etcd-1", "192.168.50.51".parse().unwrap(), None, GuestKind::Lxc),
            host("app-1", "192.168.50.61".parse().unwrap(), None, GuestKind::Qemu),
        ],
        services: BTreeMap::new(),
        security: Default::default(),
        public_addresses: Default::default(),
    }
}

async fn start_sim(seed: u64, faults: f64) -> ProxmoxSimHandle {
    let mut opts = ProxmoxSimOptions::new("127.0.0.1:0".parse().unwrap());
    opts.op_time_ms = 20;
    opts.agent_delay_ms = 100;
    opts.auth_fail_delay_ms = 10;
    opts.seed = seed;
    opts.faults = faults;
    opts.api_definitions = Some(apidata_path());
    opts.record_requests = true;
    sim::start(opts).await.expect("simulator starts")
}

fn client(handle: &ProxmoxSimHandle) -> ProxmoxClient {
    let tls = TlsMode::Pinned(tls::parse_fingerprint(handle.fingerprint.as_deref().unwrap()).unwrap());
    let auth = Auth::Token { id: handle.options.token_id.clone(), secret: handle.options.token_secret.clone() };
    ProxmoxClient::new(ClientOptions::new(handle.base_url(), auth, tls)).unwrap()
}

async fn until_ok<T, F, Fut>(what: &str, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut last = None;
    for _ in 0..5 {
        match op().await {
            Ok(v) => return v,
            Err(e) => last = Some(e),
        }
    }
    panic!("{what}: {:#}", last.unwrap());
}

/// Every request of a provider round trip (LXC with and without a VMID, a
/// QEMU clone with cloud-init, refresh, an update, a stop → start, delete),
/// with and without faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_proxmox_client_request_and_simulator_answer_fits_the_published_schema() {
    let schema = schema();
    let mut covered = BTreeSet::new();
    for (seed, faults) in [(1, 0.0), (2, 0.08)] {
        let handle = start_sim(seed, faults).await;
        assert!(handle.definitions().is_some(), "the simulator verifies against the definitions");
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(dir.path(), &handle.base_url());
        let ProviderConfig::Proxmox(config) = &plan.provider else { unreachable!() };
        let provider = ProxmoxProvider::new(client(&handle), config.clone(), plan.project.clone()).with_timeouts(ProviderTimeouts {
            running: Duration::from_secs(60),
            agent: Duration::from_secs(60),
            attempts: 6,
            lock: Duration::from_secs(60),
        });
        let (deps, events) = (Deps::new(), Events::silent());
        let (deps, events) = (&deps, &events);
        let specs: Vec<ResourceSpec> = provider.specs(&plan).unwrap();
        for spec in &specs {
            until_ok("create", || provider.create(spec, deps, events)).await;
        }
        let live: Vec<LiveResource> = until_ok("refresh", || provider.refresh(&[], events)).await;
        let mut bigger = specs[0].clone();
        bigger.attrs.insert("memory".into(), serde_json::json!(3072));
        let pg1 = live.iter().find(|l| l.address == bigger.address).unwrap().clone();
        until_ok("update", || provider.update(&bigger, &pg1, deps, events)).await;
        let api = client(&handle);
        until_ok("stop", || async { Ok(api.run_task(reqwest::Method::POST, "/nodes/pve/lxc/101/status/stop", &[]).await?) }).await;
        let live: Vec<LiveResource> = until_ok("refresh", || provider.refresh(&[], events)).await;
        let pg1 = live.iter().find(|l| l.address == bigger.address).unwrap().clone();
        until_ok("start", || provider.update(&bigger, &pg1, deps, events)).await;
        for l in &live {
            until_ok("delete", || provider.delete(l, events)).await;
        }

        let recorded = handle.recorded();
        assert!(recorded.len() > 30, "seed {seed}: only {} requests", recorded.len());
        for request in &recorded {
            let at = format!("seed {seed}: {} {} {:?}", request.method, request.path, request.params);
            // The client side: the path and method exist, every parameter is
            // known and valid, every required one is there.
            assert_eq!(schema.verify(&request.method, &request.path, &request.params), Verdict::Ok, "{at}");
            let (template, _) = schema.route(&request.path).unwrap();
            covered.insert(format!("{} {template}", request.method));
            // The simulator side: nothing rigger sends is refused as malformed,
            // and every answer fits the method's `returns`.
            // (Except PVE's own answer for a task forked a moment ago, which
            // the faults inject: 400 with `errors.upid = "no such task"`.)
            let just_forked = request.status == 400 && request.answer == serde_json::json!({ "upid": "no such task" });
            assert!(just_forked || !matches!(request.status, 400 | 501), "{at}: answered {} {}", request.status, request.answer);
            if request.status == 200 {
                let returns = &schema.method(template, &request.method).unwrap().returns;
                let problems = check_answer(returns, &request.answer);
                assert!(problems.is_empty(), "{at}: the answer does not fit the schema: {problems:?}\n{}", request.answer);
            }
        }
        handle.stop().await;
    }
    for expected in [
        "GET /cluster/resources",
        "GET /cluster/nextid",
        "POST /nodes/{node}/lxc",
        "POST /nodes/{node}/qemu/{vmid}/clone",
        "PUT /nodes/{node}/qemu/{vmid}/config",
        "PUT /nodes/{node}/lxc/{vmid}/config",
        "GET /nodes/{node}/lxc/{vmid}/config",
        "GET /nodes/{node}/lxc/{vmid}/status/current",
        "POST /nodes/{node}/lxc/{vmid}/status/start",
        "POST /nodes/{node}/lxc/{vmid}/status/stop",
        "GET /nodes/{node}/tasks/{upid}/status",
        "GET /nodes/{node}/qemu/{vmid}/agent/network-get-interfaces",
        "DELETE /nodes/{node}/lxc/{vmid}",
        "DELETE /nodes/{node}/qemu/{vmid}",
    ] {
        assert!(covered.contains(expected), "the round trip never sent {expected}; it sent {covered:#?}");
    }
}

/// The simulator's verification is the schema's: what the schema refuses is
/// refused per parameter with JSONSchema.pm's messages, what it allows (and
/// the simulator's own old tables did not know) is accepted.
#[tokio::test]
async fn the_simulator_refuses_and_accepts_what_the_schema_does() {
    let handle = start_sim(3, 0.0).await;
    let api = client(&handle);
    let create = [
        ("vmid", "120"),
        ("ostemplate", sim::DEFAULT_LXC_TEMPLATE),
        ("hostname", "defs-1"),
        ("rootfs", "local-lvm:4"),
        ("net0", "name=eth0,bridge=vmbr0,ip=192.168.50.30/24,gw=192.168.50.1"),
        // Not in the simulator's built-in table; PVE 9 has it.
        ("bwlimit", "0"),
    ];
    let params: Vec<(&str, String)> = create.iter().map(|(k, v)| (*k, v.to_string())).collect();
    api.run_task(reqwest::Method::POST, "/nodes/pve/lxc", &params).await.expect("a request the schema allows is accepted");

    let bad = [
        ("cores", "two"),
        ("colour", "red"),
        ("features", "nesting=1,colour=red"),
        ("net0", "bridge=vmbr0,ip=192.168.50.30/24"),
        ("cmode", "serial"),
        ("memory", "8"),
    ];
    let params: Vec<(&str, String)> = bad.iter().map(|(k, v)| (*k, v.to_string())).collect();
    let err = api.put("/nodes/pve/lxc/120/config", &params).await.unwrap_err();
    let ApiError::Status { status, message, errors, .. } = &err else { panic!("{err}") };
    assert_eq!((*status, message.as_str()), (400, "Parameter verification failed."));
    assert_eq!(errors["cores"], "type check ('integer') failed - got 'two'");
    assert_eq!(errors["colour"], "property is not defined in schema and the schema does not allow additional properties");
    assert!(errors["features"].starts_with("invalid format - format error"), "{errors:?}");
    assert!(errors["net0"].contains("name: property is missing and it is not optional"), "{errors:?}");
    assert!(errors["cmode"].starts_with("value 'serial' does not have a value in the enumeration 'shell, console, tty'"), "{errors:?}");
    assert_eq!(errors["memory"], "value must have a minimum value of 16");
    // The same request, checked by the schema alone, gets the same verdict.
    let sent: BTreeMap<String, String> = bad.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let Verdict::Refused(expected) = schema().verify("PUT", "/nodes/pve/lxc/120/config", &sent) else { panic!("the schema accepts it") };
    assert_eq!(&expected, errors);
    // A path the schema does not have.
    assert_eq!(api.get("/nodes/pve/lxc/120/bogus", &[]).await.unwrap_err().status(), Some(501));
    handle.stop().await;
}
