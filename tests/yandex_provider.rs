//! The Yandex provider against the simulator with injected faults: create a
//! small stack in dependency order, refresh to zero diff, update in place,
//! delete everything, and check the simulator never made a duplicate.

use rigger_events::Events;
use rigger::plan::model::*;
use rigger::cloud::providers::yandex::auth::{AuthorizedKey, Credentials};
use rigger::cloud::providers::yandex::client::{PollPolicy, RetryPolicy, Service, YandexClient};
use rigger::cloud::providers::yandex::YandexProvider;
use rigger::cloud::providers::{Deps, Provider};
use rigger::cloud::diff::{Action, Change};
use rigger::cloud::resource::{Address, LiveResource, ResourceSpec};
use rigger_sim::yandex::{SimHandle, YandexSimOptions};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;
use tokio::net::TcpListener;

fn plan(dir: &Path, endpoint: &str, key: &Path) -> Plan {
    let public_key_file = dir.join("id_ed25519.pub");
    std::fs::write(&public_key_file, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH0uJ8f0Vw8l2Jm0hYb1o6I3dJp1eU4qzZ0tFZ5g9Qvq test@rigger\n").unwrap();
    let host = |name: &str, group: &str, index: u32, ip: &str, firewall: &[&str], public_ip: bool| Host {
        name: name.into(),
        group: group.into(),
        index,
        roles: vec![],
        subnet: "app".into(),
        ip: ip.parse().unwrap(),
        image: "ubuntu-2204-lts".into(),
        cores: 2,
        memory_bytes: 2 << 30,
        disk_bytes: 20 << 30,
        core_fraction: 100,
        firewall: firewall.iter().map(|s| s.to_string()).collect(),
        public_ip,
        vmid: None,
        guest_kind: GuestKind::Lxc,
        zone: None,
    };
    let rule = |direction, protocol, ports: &[(u16, u16)], peer| Rule {
        direction,
        protocol,
        ports: ports.iter().map(|&(from, to)| PortRange { from, to }).collect(),
        peer,
        description: None,
    };
    Plan {
        file: dir.join("rigger.yaml"),
        dir: dir.to_path_buf(),
        version: 1,
        project: "itest".into(),
        provider: ProviderConfig::Yandex(YandexConfig {
            folder_id: "b1gitest".into(),
            zone: "ru-central1-a".into(),
            service_account_key_file: Some(key.to_path_buf()),
            endpoint: Some(endpoint.into()),
            platform: "standard-v3".into(),
        }),
        ssh: SshConfig {
            user: "rigger".into(),
            private_key_file: dir.join("id_ed25519"),
            public_key_file,
            bastion: None,
        },
        network: Network {
            name: "main".into(),
            subnets: vec![Subnet { name: "app".into(), cidr: "10.20.0.0/24".parse().unwrap(), zone: None, gateway: "10.20.0.1".parse().unwrap() }],
        },
        firewall: vec![
            FirewallGroup {
                name: "lb".into(),
                rules: vec![
                    rule(Direction::Ingress, Protocol::Tcp, &[(22, 22), (80, 80)], Peer::Cidrs(vec!["0.0.0.0/0".parse().unwrap()])),
                    rule(Direction::Egress, Protocol::Any, &[], Peer::Cidrs(vec!["0.0.0.0/0".parse().unwrap()])),
                ],
            },
            FirewallGroup {
                name: "db".into(),
                rules: vec![
                    // Group to group: only the load balancers reach PostgreSQL through HAProxy's ports.
                    rule(Direction::Ingress, Protocol::Tcp, &[(5432, 5432), (8008, 8008)], Peer::Group("db".into())),
                    rule(Direction::Ingress, Protocol::Tcp, &[(5000, 5001)], Peer::Group("lb".into())),
                    rule(Direction::Ingress, Protocol::Tcp, &[(22, 22)], Peer::Cidrs(vec!["10.20.0.0/24".parse().unwrap()])),
                    rule(Direction::Egress, Protocol::Any, &[], Peer::Cidrs(vec!["0.0.0.0/0".parse().unwrap()])),
                ],
            },
        ],
        hosts: vec![
            host("lb-1", "lb", 1, "10.20.0.10", &["lb"], true),
            host("pg-1", "pg", 1, "10.20.0.21", &["db"], false),
            host("pg-2", "pg", 2, "10.20.0.22", &["db"], false),
            // No groups: the cloud attaches the network's default group, which must not show as a change.
            host("tool-1", "tool", 1, "10.20.0.30", &[], false),
        ],
        services: BTreeMap::new(),
        security: Default::default(),
        public_addresses: Default::default(),
    }
}

fn provider(plan: &Plan, client_retries: bool) -> YandexProvider {
    provider_waiting(plan, client_retries, Duration::from_secs(60))
}

/// With `timeout` as the bound of every wait for an operation or a status.
fn provider_waiting(plan: &Plan, client_retries: bool, timeout: Duration) -> YandexProvider {
    let ProviderConfig::Yandex(cfg) = &plan.provider else { unreachable!() };
    let key = AuthorizedKey::load(cfg.service_account_key_file.as_ref().unwrap()).unwrap();
    let mut client = YandexClient::new(Credentials::ServiceAccount(key), cfg.endpoint.clone()).unwrap();
    // Same behaviour as in production, shorter waits.
    let attempts = if client_retries { 12 } else { 1 };
    client.retry = RetryPolicy { attempts, base_delay: Duration::from_millis(10), max_delay: Duration::from_millis(200) };
    client.poll = PollPolicy { first: Duration::from_millis(5), max: Duration::from_millis(50), timeout };
    YandexProvider::with_client(client, cfg, &plan.project)
}

/// Specs in an order where every dependency comes first.
fn dependency_order(specs: &[ResourceSpec]) -> Vec<&ResourceSpec> {
    let mut done: HashSet<&Address> = HashSet::new();
    let mut order = Vec::new();
    while order.len() < specs.len() {
        let before = order.len();
        for s in specs {
            if !done.contains(&s.address) && s.depends_on.iter().all(|d| done.contains(d)) {
                done.insert(&s.address);
                order.push(s);
            }
        }
        assert!(order.len() > before, "dependency cycle among specs");
    }
    order
}

fn deps_of(spec: &ResourceSpec, live: &BTreeMap<Address, LiveResource>) -> Deps {
    spec.depends_on.iter().map(|a| (a.clone(), live[a].clone())).collect()
}

const CORE_ATTEMPTS: usize = 12;

/// What the core does with a failed step: try it again.
async fn create_like_the_core(p: &YandexProvider, spec: &ResourceSpec, deps: &Deps, events: &Events) -> LiveResource {
    let mut last = None;
    for _ in 0..CORE_ATTEMPTS {
        match p.create(spec, deps, events).await {
            Ok(l) => return l,
            Err(e) => last = Some(e),
        }
    }
    panic!("create {} kept failing: {:#}", spec.address, last.unwrap());
}

async fn refresh_like_the_core(p: &YandexProvider, known: &[LiveResource]) -> BTreeMap<Address, LiveResource> {
    for _ in 0..CORE_ATTEMPTS {
        if let Ok(live) = p.refresh(known, &Events::silent()).await {
            return live.into_iter().map(|l| (l.address.clone(), l)).collect();
        }
    }
    panic!("refresh kept failing");
}

fn assert_no_diff(specs: &[ResourceSpec], live: &BTreeMap<Address, LiveResource>) {
    assert_eq!(live.len(), specs.len(), "refresh found {:?}", live.keys().collect::<Vec<_>>());
    for s in specs {
        let l = live.get(&s.address).unwrap_or_else(|| panic!("{} not found by refresh", s.address));
        for (k, want) in &s.attrs {
            assert_eq!(l.attrs.get(k), Some(want), "{}: attribute {k} differs after refresh", s.address);
        }
        assert_eq!(l.attrs.len(), s.attrs.len(), "{}: extra attributes {:?}", s.address, l.attrs.keys().collect::<Vec<_>>());
    }
}

/// `client_retries: false` turns the client's own retries off, so every lost answer
/// reaches the core, whose next `create` must find and adopt what was made.
async fn whole_lifecycle(seed: u64, client_retries: bool) {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let opts = YandexSimOptions { key_out: dir.path().join("sa-key.json"), faults: 0.1, seed, op_time_ms: 5, record_requests: true, ..Default::default() };
    let sim = SimHandle::start(listener, opts).await.unwrap();
    let mut plan = plan(dir.path(), &sim.endpoint(), &sim.key_path);
    let p = provider(&plan, client_retries);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let events = Events::new(tx);
    let specs = p.specs(&plan).unwrap();
    assert_eq!(specs.len(), 1 + 1 + 2 + 4);

    // Create in dependency order.
    let mut live: BTreeMap<Address, LiveResource> = BTreeMap::new();
    for spec in dependency_order(&specs) {
        let deps = deps_of(spec, &live);
        let created = create_like_the_core(&p, spec, &deps, &events).await;
        assert_eq!(created.address, spec.address);
        live.insert(spec.address.clone(), created);
    }
    let lb = &live[&Address::parse("machine.lb-1").unwrap()];
    assert!(lb.output_str("public_ip").unwrap().starts_with("203.0.113."));
    assert_eq!(lb.output_str("ssh_host"), lb.output_str("public_ip"));
    let pg = &live[&Address::parse("machine.pg-1").unwrap()];
    assert_eq!(pg.output_str("ssh_host"), Some("10.20.0.21"));
    assert_eq!(pg.output_str("private_ip"), Some("10.20.0.21"));
    assert_eq!(pg.output_str("zone"), Some("ru-central1-a"));

    // A re-plan right after apply shows nothing to do.
    let known: Vec<LiveResource> = live.values().cloned().collect();
    let refreshed = refresh_like_the_core(&p, &known).await;
    assert_no_diff(&specs, &refreshed);

    // Nothing was ever created twice, faults or not.
    let history = sim.inventory().history;
    let mut seen = HashSet::new();
    for c in &history {
        assert!(seen.insert((c.kind, c.name.clone())), "{} {} was created twice (seed {seed})", c.kind, c.name);
    }
    assert_eq!(history.len(), specs.len());
    let inventory = sim.inventory();
    assert!(inventory.faults_before + inventory.answers_lost > 0, "no fault was injected (seed {seed})");
    if !client_retries {
        let mut adopted = 0;
        while let Ok(e) = rx.try_recv() {
            if matches!(&e, rigger_events::Event::Note { message, .. } if message.contains("adopting")) {
                adopted += 1;
            }
        }
        assert!(inventory.answers_lost == 0 || adopted > 0, "answers were lost but nothing was adopted (seed {seed})");
    }

    // Update in place: more cores for pg-2 (stop, patch, start) and one more rule for lb.
    plan.hosts[2].cores = 4;
    plan.hosts[2].memory_bytes = 4 << 30;
    plan.firewall[0].rules.push(Rule {
        direction: Direction::Ingress,
        protocol: Protocol::Tcp,
        ports: vec![PortRange { from: 443, to: 443 }],
        peer: Peer::Cidrs(vec!["0.0.0.0/0".parse().unwrap()]),
        description: Some("https".into()),
    });
    let specs = p.specs(&plan).unwrap();
    for spec in dependency_order(&specs) {
        let current = &refreshed[&spec.address];
        if spec.attrs == current.attrs {
            continue;
        }
        let deps = deps_of(spec, &live);
        let mut result = None;
        for _ in 0..CORE_ATTEMPTS {
            if let Ok(l) = p.update(spec, current, &deps, &Events::silent()).await {
                result = Some(l);
                break;
            }
        }
        let updated = result.unwrap_or_else(|| panic!("update {} kept failing", spec.address));
        assert_eq!(updated.attrs, spec.attrs, "{} after update", spec.address);
        live.insert(spec.address.clone(), updated);
    }
    let known: Vec<LiveResource> = live.values().cloned().collect();
    assert_no_diff(&specs, &refresh_like_the_core(&p, &known).await);

    // Delete in reverse dependency order; a repeated delete is fine.
    for spec in dependency_order(&specs).into_iter().rev() {
        let l = &live[&spec.address];
        let mut ok = false;
        for _ in 0..CORE_ATTEMPTS {
            if p.delete(l, &Events::silent()).await.is_ok() {
                ok = true;
                break;
            }
        }
        assert!(ok, "delete {} kept failing", spec.address);
    }
    let inventory = sim.inventory();
    assert!(inventory.is_empty(), "left behind: {inventory:?}");
    assert_fits_the_published_protos(&sim, seed);
    sim.stop().await;
}

/// Both sides of the wire against Yandex Cloud's published protos
/// (`../shared/reference/api/yandex-cloudapi`, beside the checkout): every
/// request the client made is bound to an RPC by its `google.api.http` path
/// and method, its body and query use the request message's proto3 JSON
/// names and types (64-bit integers as strings, enums by name) and meet the
/// validation rules; every answer the simulator gave fits the RPC's output
/// message (an Operation's `response`/`metadata` by their `@type`), and every
/// refusal is a google.rpc.Status.
fn assert_fits_the_published_protos(sim: &SimHandle, seed: u64) {
    let (defs, calls, rpcs) = calls_fit_the_protos(sim, &format!("seed {seed}"));
    assert!(calls.len() > 20, "seed {seed}: only {} calls recorded", calls.len());
    // The check can fail: a create with memory as a JSON number and no folder is refused.
    let create = calls.iter().find(|c| c.method == "POST" && c.path == "/compute/v1/instances").expect("an instance create");
    let mut broken = create.body.clone();
    broken["resourcesSpec"]["memory"] = serde_json::json!(2u64 << 30);
    broken.as_object_mut().unwrap().remove("folderId");
    let problems = defs.check("yandex.cloud.compute.v1.CreateInstanceRequest", &broken, rigger_sim::yandex::definitions::Side::Request);
    assert!(problems.iter().any(|p| p.contains("resourcesSpec.memory") && p.contains("strings")), "{problems:#?}");
    assert!(problems.iter().any(|p| p.contains("folderId: required")), "{problems:#?}");
    for expected in ["IamTokenService.Create", "NetworkService.Create", "SubnetService.Create", "SecurityGroupService.Create", "InstanceService.Create", "InstanceService.List", "OperationService.Get", "InstanceService.Delete"] {
        assert!(rpcs.contains(expected), "seed {seed}: the round trip never called {expected}: {rpcs:?}");
    }
}

/// Every recorded call against the protos (see above); the definitions, the
/// calls and the RPCs they reached.
fn calls_fit_the_protos(sim: &SimHandle, label: &str) -> (rigger_sim::yandex::definitions::Definitions, Vec<rigger_sim::yandex::RecordedCall>, std::collections::BTreeSet<String>) {
    use rigger_sim::yandex::definitions::{json_name, Definitions, Side};
    use serde_json::Value;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/api/yandex-cloudapi");
    assert!(root.is_dir(), "{} is missing: the definition checks need shared/ beside the checkout", root.display());
    let defs = Definitions::load(&root).expect("the protos read");
    assert!(sim.verifies_against_definitions(), "the simulator verifies requests against the protos");
    let calls = sim.recorded();
    let mut rpcs = std::collections::BTreeSet::new();
    let mut anys_checked = 0;
    for call in &calls {
        let at = format!("{label}: {} {}{}", call.method, call.path, call.query.as_deref().map(|q| format!("?{q}")).unwrap_or_default());
        let (rpc, vars) = defs.route(&call.method, &call.path).unwrap_or_else(|| panic!("{at}: no RPC is bound to this path and method"));
        rpcs.insert(format!("{}.{}", rpc.service, rpc.name));
        let input = defs.message(&rpc.input).unwrap_or_else(|| panic!("{at}: no message {}", rpc.input));
        // The request: path variables, then the body (`*`) or the query.
        let mut request = serde_json::Map::new();
        for (var, value) in &vars {
            request.insert(json_name(var), Value::String(value.clone()));
        }
        if rpc.body == "*" {
            let body = call.body.as_object().unwrap_or_else(|| panic!("{at}: the body is not a JSON object: {}", call.body));
            request.extend(body.clone());
        } else {
            assert!(call.body.is_null(), "{at}: a body on a call bound without one: {}", call.body);
            for pair in call.query.as_deref().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                let field = input.fields.iter().find(|f| f.json_name == key);
                let field = field.unwrap_or_else(|| panic!("{at}: query parameter {key} is not a field (proto3 JSON name) of {}", rpc.input));
                let decoded = percent_encoding::percent_decode_str(value).decode_utf8_lossy().replace('+', " ");
                let value = match field.ty.as_str() {
                    "int32" | "uint32" | "double" | "float" => serde_json::json!(decoded.parse::<f64>().unwrap_or(f64::NAN)),
                    "bool" => serde_json::json!(decoded == "true"),
                    _ => Value::String(decoded),
                };
                request.insert(key.to_string(), value);
            }
        }
        let problems = defs.check(&rpc.input, &Value::Object(request), Side::Request);
        assert!(problems.is_empty(), "{at}: the request does not fit {}: {problems:#?}", rpc.input);
        // The answer.
        if call.status != 200 {
            let status = call.answer.as_object().unwrap_or_else(|| panic!("{at}: refusal {} is not JSON", call.status));
            assert!(status.keys().all(|k| ["code", "message", "details"].contains(&k.as_str())), "{at}: not a google.rpc.Status: {}", call.answer);
            assert!(status.get("code").is_some_and(Value::is_i64) && status.get("message").is_some_and(Value::is_string), "{at}: {}", call.answer);
            continue;
        }
        let mut problems = defs.check(&rpc.output, &call.answer, Side::Answer);
        // An Operation's `response` and `metadata` are Any: checked by their `@type`
        // (an Instance's own `metadata` is a map, checked above).
        for part in ["response", "metadata"].into_iter().filter(|_| rpc.output == "yandex.cloud.operation.Operation") {
            if let Some(any) = call.answer.get(part) {
                anys_checked += 1;
                let ty = any["@type"].as_str().unwrap_or("").trim_start_matches("type.googleapis.com/");
                let mut inner = any.clone();
                inner.as_object_mut().map(|o| o.remove("@type"));
                problems.extend(defs.check(ty, &inner, Side::Answer).into_iter().map(|p| format!("{part}: {p}")));
            }
        }
        assert!(problems.is_empty(), "{at}: the answer does not fit {}: {problems:#?}\n{}", rpc.output, call.answer);
    }
    let operations = calls.iter().filter(|c| c.status == 200 && c.answer.get("done").is_some()).count();
    assert!(operations == 0 || anys_checked >= operations, "{label}: {anys_checked} Any parts checked in {operations} Operations");
    (defs, calls, rpcs)
}

#[tokio::test]
async fn lifecycle_with_faults_seed_1() {
    whole_lifecycle(1, true).await;
}

#[tokio::test]
async fn lifecycle_with_faults_seed_7() {
    whole_lifecycle(7, true).await;
}

#[tokio::test]
async fn lifecycle_with_faults_seed_42() {
    whole_lifecycle(42, true).await;
}

#[tokio::test]
async fn lost_answers_are_adopted_seed_3() {
    whole_lifecycle(3, false).await;
}

#[tokio::test]
async fn lost_answers_are_adopted_seed_2024() {
    whole_lifecycle(2024, false).await;
}

// ---------------------------------------------------------------- instance status

/// A simulator without faults and the plan's whole stack made on it.
async fn built_stack(dir: &Path) -> (SimHandle, Plan, BTreeMap<Address, LiveResource>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let opts = YandexSimOptions { key_out: dir.join("sa-key.json"), op_time_ms: 5, record_requests: true, ..Default::default() };
    let sim = SimHandle::start(listener, opts).await.unwrap();
    assert!(sim.verifies_against_definitions(), "requests are checked against the protos");
    let plan = plan(dir, &sim.endpoint(), &sim.key_path);
    let p = provider(&plan, true);
    let specs = p.specs(&plan).unwrap();
    let mut live = BTreeMap::new();
    for spec in dependency_order(&specs) {
        let created = p.create(spec, &deps_of(spec, &live), &Events::silent()).await.unwrap();
        live.insert(spec.address.clone(), created);
    }
    (sim, plan, live)
}

/// `POST /_sim/…`: what happens to an instance without an API call.
async fn sim_knob(sim: &SimHandle, path_and_query: &str) -> serde_json::Value {
    let answer = reqwest::Client::new().post(format!("{}{path_and_query}", sim.endpoint())).send().await.unwrap();
    assert!(answer.status().is_success(), "POST {path_and_query}: {}", answer.status());
    answer.json().await.unwrap()
}

/// What `rigger plan` computes after a refresh that remembers `known`.
async fn plan_changes(p: &YandexProvider, specs: &[ResourceSpec], known: &[LiveResource]) -> BTreeMap<Address, Change> {
    let live: Vec<LiveResource> = p.refresh(known, &Events::silent()).await.unwrap();
    rigger::cloud::diff::compute(specs, &live).into_iter().map(|c| (c.address.clone(), c)).collect()
}

fn progress_messages(rx: &mut tokio::sync::mpsc::UnboundedReceiver<rigger_events::Event>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let rigger_events::Event::Progress { message, .. } | rigger_events::Event::Note { message, .. } = e {
            out.push(message);
        }
    }
    out
}

/// An instance left STOPPED — by a start that failed after its cores changed,
/// or stopped behind rigger's back — plans a start, shown as its status, and
/// the update starts it; then nothing is left to do.
#[tokio::test]
async fn a_stopped_instance_plans_a_start_and_the_update_starts_it() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, mut plan, mut live) = built_stack(dir.path()).await;
    let p = provider(&plan, true);
    let pg1 = Address::parse("machine.pg-1").unwrap();
    let id = live[&pg1].id.clone();

    // More cores: stop, PATCH, start — and the start fails, as when the zone lacks capacity.
    sim_knob(&sim, &format!("/_sim/instances/{id}/fail-start?times=1")).await;
    plan.hosts[1].cores = 4;
    plan.hosts[1].memory_bytes = 4 << 30;
    let specs = p.specs(&plan).unwrap();
    let spec = specs.iter().find(|s| s.address == pg1).unwrap();
    let e = p.update(spec, &live[&pg1], &deps_of(spec, &live), &Events::silent()).await.unwrap_err();
    assert!(format!("{e:#}").contains("Start instance") && format!("{e:#}").contains("RESOURCE_EXHAUSTED"), "{e:#}");

    // The next plan sees the cores changed and the instance stopped: a start.
    let known: Vec<LiveResource> = live.values().cloned().collect();
    let changes = plan_changes(&p, &specs, &known).await;
    let c = &changes[&pg1];
    assert_eq!((c.action, c.changed.clone()), (Action::Update, vec!["status".to_string()]), "{c:?}");
    let shown = rigger::ui::plan::render_human(&changes.values().cloned().collect::<Vec<_>>(), &rigger::ui::Paint { on: false });
    assert!(shown.contains(r#"status = "STOPPED" -> "RUNNING""#), "{shown}");
    let started = p.update(spec, c.live.as_ref().unwrap(), &deps_of(spec, &live), &Events::silent()).await.unwrap();
    assert_eq!(started.attrs, spec.attrs);
    assert_eq!(started.output_str("status"), Some("RUNNING"));
    live.insert(pg1.clone(), started);

    // Stopped from inside the guest: the same.
    let tool = Address::parse("machine.tool-1").unwrap();
    sim_knob(&sim, &format!("/_sim/instances/{}/status?status=STOPPED", live[&tool].id)).await;
    let known: Vec<LiveResource> = live.values().cloned().collect();
    let changes = plan_changes(&p, &specs, &known).await;
    let effective: Vec<(&Address, Vec<String>)> = changes.values().filter(|c| c.action != Action::NoOp).map(|c| (&c.address, c.changed.clone())).collect();
    assert_eq!(effective, vec![(&tool, vec!["status".to_string()])]);
    let spec = specs.iter().find(|s| s.address == tool).unwrap();
    let started = p.update(spec, changes[&tool].live.as_ref().unwrap(), &deps_of(spec, &live), &Events::silent()).await.unwrap();
    live.insert(tool.clone(), started);

    let known: Vec<LiveResource> = live.values().cloned().collect();
    assert_no_diff(&specs, &refresh_like_the_core(&p, &known).await);
    // The failed start's Operation (done, with `error`) and the starts fit the protos.
    let (_, calls, rpcs) = calls_fit_the_protos(&sim, "stopped instance");
    assert!(rpcs.contains("InstanceService.Start"), "{rpcs:?}");
    assert!(calls.iter().any(|c| c.path.starts_with("/operations/") && c.answer["done"] == true && c.answer["error"]["code"] == 8), "no failed operation was read");
    sim.stop().await;
}

/// An instance in ERROR is neither started nor replaced (its boot disk would
/// go with it): the update fails before any change, saying what to do.
#[tokio::test]
async fn an_instance_in_error_fails_clearly_and_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, plan, live) = built_stack(dir.path()).await;
    let p = provider(&plan, true);
    let pg2 = Address::parse("machine.pg-2").unwrap();
    let id = live[&pg2].id.clone();
    sim_knob(&sim, &format!("/_sim/instances/{id}/status?status=ERROR")).await;

    let specs = p.specs(&plan).unwrap();
    let known: Vec<LiveResource> = live.values().cloned().collect();
    let changes = plan_changes(&p, &specs, &known).await;
    let c = &changes[&pg2];
    assert_eq!((c.action, c.changed.clone()), (Action::Update, vec!["status".to_string()]), "{c:?}");
    let spec = specs.iter().find(|s| s.address == pg2).unwrap();
    let e = p.update(spec, c.live.as_ref().unwrap(), &deps_of(spec, &live), &Events::silent()).await.unwrap_err();
    let text = format!("{e:#}");
    assert!(text.contains(&format!("instance {id} is ERROR")) && text.contains(&format!("yc compute instance delete {id}")), "{text}");
    // The plan marks that change blocked, in the words the update fails with; nothing else is.
    let marked = rigger::cloud::engine::changes(&p, &specs, &p.refresh(&known, &Events::silent()).await.unwrap());
    for c in &marked {
        match &c.blocked {
            Some(why) => assert!(c.address == pg2 && c.is_blocked() && text.contains(why.as_str()), "{}: {why}\nupdate said: {text}", c.address),
            None => assert!(c.address != pg2, "{pg2} is not marked blocked"),
        }
    }
    let after = plan_changes(&p, &specs, &known).await;
    assert_eq!(after[&pg2].live.as_ref().map(|l| l.id.clone()), Some(id), "the instance is kept");
    assert_eq!(after[&pg2].live.as_ref().and_then(|l| l.output_str("status").map(str::to_string)).as_deref(), Some("ERROR"));
    sim.stop().await;
}

/// A replacement killed while its delete ran leaves a same-named instance
/// DELETING; the re-run's create waits until it is gone and makes a new one
/// instead of adopting the dying id — and gives up, naming it, after the bound.
#[tokio::test]
async fn a_create_waits_out_a_same_named_instance_being_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, plan, live) = built_stack(dir.path()).await;
    let p = provider(&plan, true);
    let specs = p.specs(&plan).unwrap();
    let known: Vec<LiveResource> = live.values().cloned().collect();
    let delete_held = |address: &str, ms: u64| {
        let (p, sim, old) = (&p, &sim, live[&Address::parse(address).unwrap()].id.clone());
        async move {
            sim_knob(sim, &format!("/_sim/instances/{old}/hold-delete?ms={ms}")).await;
            // The delete starts; its operation is never waited for (the run was killed).
            p.client().mutate(reqwest::Method::DELETE, Service::Compute, &format!("/compute/v1/instances/{old}"), None).await.unwrap();
            old
        }
    };

    let old = delete_held("machine.pg-1", 1500).await;
    let pg1 = Address::parse("machine.pg-1").unwrap();
    let changes = plan_changes(&p, &specs, &known).await;
    assert_eq!(changes[&pg1].action, Action::Create, "the refresh skips the dying instance");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let spec = specs.iter().find(|s| s.address == pg1).unwrap();
    let made = p.create(spec, &deps_of(spec, &live), &Events::new(tx)).await.unwrap();
    assert_ne!(made.id, old, "the dying instance was adopted");
    assert_eq!(made.output_str("status"), Some("RUNNING"));
    let said = progress_messages(&mut rx);
    assert!(said.iter().any(|m| m.contains(&format!("itest-pg-1 ({old}) is still being deleted"))), "{said:?}");
    let inventory = sim.inventory();
    assert_eq!(inventory.instances.iter().filter(|n| *n == "itest-pg-1").count(), 1);
    assert_eq!(inventory.history.iter().filter(|c| c.name == "itest-pg-1").count(), 2);

    // Bounded: a delete that outlasts the wait is an error naming the instance.
    let old = delete_held("machine.pg-2", 5000).await;
    let impatient = provider_waiting(&plan, true, Duration::from_millis(500));
    let spec = specs.iter().find(|s| s.address.name == "pg-2").unwrap();
    let e = impatient.create(spec, &deps_of(spec, &live), &Events::silent()).await.unwrap_err();
    assert!(format!("{e:#}").contains(&format!("instance itest-pg-2 ({old}) is still being deleted")), "{e:#}");
    sim.stop().await;
}

/// A create whose answer was lost leaves an instance the state does not know:
/// List answers carry no metadata, and the re-run must not plan a metadata
/// change for it (it reads the instance's real metadata instead).
#[tokio::test]
async fn an_instance_the_state_does_not_know_plans_no_metadata_change() {
    let dir = tempfile::tempdir().unwrap();
    let (sim, plan, live) = built_stack(dir.path()).await;
    let p = provider(&plan, true);
    let specs = p.specs(&plan).unwrap();
    let lost = Address::parse("machine.lb-1").unwrap();
    let known: Vec<LiveResource> = live.values().filter(|l| l.address != lost).cloned().collect();
    let changes = plan_changes(&p, &specs, &known).await;
    assert_eq!(changes[&lost].action, Action::NoOp, "{:?}", changes[&lost].changed);
    let (_, calls, _) = calls_fit_the_protos(&sim, "instance read in full");
    assert!(calls.iter().any(|c| c.query.as_deref() == Some("view=FULL")), "the instance was not read with its metadata");
    sim.stop().await;
}
