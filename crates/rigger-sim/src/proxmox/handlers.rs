//! Request handling: path routing under `/api2/json`, parameters from the query
//! and the form/JSON body, authentication (API token, or ticket + CSRF on
//! writes), injected faults, and the node/cluster/storage/task endpoints.
//! Guest endpoints live in `guests.rs`.

use super::guests;
use super::reply::{HandlerResult, Reply};
use super::state::{GuestKind, State, Ticket};
use super::definitions::Verdict;
use super::validation::{check, opt, Params, Ty, VERIFIED_BY_DEFINITIONS, VMID};

const TEXT_FILTER: Ty = Ty::Str { max_len: 256 };
use super::{Sim, DEFAULT_LXC_TEMPLATE};
use axum::body::Body;
use axum::http::{header, HeaderMap, Request, Response, Uri};
use hyper::body::Incoming;
use percent_encoding::percent_decode_str;
use rand::Rng;
use serde_json::{json, Value};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const STORAGES: &[(&str, &str, &str)] = &[
    // (id, type, content)
    ("local", "dir", "backup,iso,vztmpl"),
    ("local-lvm", "lvmthin", "images,rootdir"),
];

pub const LXC_TEMPLATES: &[&str] = &[DEFAULT_LXC_TEMPLATE, "local:vztmpl/ubuntu-24.04-standard_24.04-2_amd64.tar.zst"];

const TICKET_LIFETIME: Duration = Duration::from_secs(2 * 3600);

pub fn lock_state(sim: &Sim) -> MutexGuard<'_, State> {
    match sim.state.lock() {
        Ok(state) => state,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The node as a fresh install with one cloud-init template VM.
pub fn seed_node(sim: &Sim) {
    let mut state = lock_state(sim);
    guests::insert_qemu_template(&mut state);
}

/// Who made the request.
pub struct Caller {
    pub user: String,
}

/// The work was done but the client gets no answer: the connection ends.
#[derive(Debug)]
pub struct AnswerLost;

impl std::fmt::Display for AnswerLost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("answer lost (simulated)")
    }
}

impl std::error::Error for AnswerLost {}

pub async fn handle(sim: Arc<Sim>, request: Request<Incoming>) -> Result<Response<Body>, AnswerLost> {
    if sim.opts.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(sim.opts.latency_ms)).await;
    }
    let (parts, body) = request.into_parts();
    if parts.uri.path().starts_with("/api2/json") {
        sim.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let lose = take_lost_answer(&sim, parts.method.as_str(), parts.uri.path());
    let reply = match axum::body::to_bytes(Body::new(body), 1 << 20).await {
        Ok(body) => match route(&sim, parts.method.as_str(), &parts.uri, &parts.headers, &body).await {
            Ok(data) => Reply::data(data),
            Err(reply) => reply,
        },
        Err(_) => Reply::error(400, "unable to read request body"),
    };
    if lose {
        return Err(AnswerLost);
    }
    Ok(reply.into_response())
}

/// Not Proxmox: `POST /_sim/lose-answer?method=POST&path=/api2/json/nodes/pve/lxc`
/// — the next such request is carried out, then its connection is closed
/// with no answer, as a reset connection or a timed-out proxy leaves a
/// client after the node did the work.
pub const SIM_LOSE_ANSWER_PATH: &str = "/_sim/lose-answer";

fn sim_lose_answer(sim: &Sim, query: Option<&str>) -> HandlerResult {
    let decoded = |key: &str| query_value(query, key).map(|v| percent_decode_str(v).decode_utf8_lossy().into_owned());
    let (Some(method), Some(path)) = (decoded("method"), decoded("path")) else {
        return Err(Reply::error(400, "say which request: ?method=POST&path=/api2/json/..."));
    };
    if let Ok(mut lose) = sim.lose_answers.lock() {
        lose.push((method.to_ascii_uppercase(), path));
    }
    Ok(Value::Null)
}

/// Whether this request's answer is to be lost (once per `/_sim/lose-answer`).
fn take_lost_answer(sim: &Sim, method: &str, path: &str) -> bool {
    let Ok(mut lose) = sim.lose_answers.lock() else { return false };
    match lose.iter().position(|(m, p)| m == method && p == path) {
        Some(i) => {
            lose.remove(i);
            sim.faults_injected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            true
        }
        None => false,
    }
}

/// Not Proxmox: the simulator's own view of its store, for tests and people
/// (same authentication as the API).
pub const SIM_GUESTS_PATH: &str = "/_sim/guests";
/// Not Proxmox either: how many faults were injected so far.
pub const SIM_STATS_PATH: &str = "/_sim/stats";

/// `key`'s value in a query string (`a=1&b=2`).
fn query_value<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

/// Not Proxmox: `POST /_sim/guests/{vmid}/lock?lock=create` leaves a stopped
/// guest locked as a worker killed mid-creation does (no task holds the lock);
/// `DELETE` lifts it as `pct unlock` / `qm unlock` on the node would.
fn sim_guest_lock(sim: &Sim, method: &str, path: &str, query: Option<&str>) -> Option<HandlerResult> {
    let vmid: u32 = path.strip_prefix("/_sim/guests/")?.strip_suffix("/lock")?.parse().ok()?;
    let mut state = lock_state(sim);
    let Some(guest) = state.guests.get_mut(&vmid) else {
        return Some(Err(Reply::fail(format!("no guest {vmid}"))));
    };
    Some(match method {
        "POST" => {
            let lock = query_value(query, "lock").unwrap_or("create").to_string();
            if guest.running {
                Err(Reply::fail(format!("guest {vmid} is running: stop it first (an interrupted creation leaves it stopped)")))
            } else {
                guest.config.insert("lock".into(), lock);
                Ok(Value::Null)
            }
        }
        "DELETE" => {
            guest.config.remove("lock");
            Ok(Value::Null)
        }
        _ => Err(not_implemented(method, path)),
    })
}

/// Not Proxmox: `POST /_sim/guests/{vmid}/node?node=pve2` moves the guest's
/// config to another cluster node, as an HA migration or `pct migrate` would.
fn sim_guest_node(sim: &Sim, method: &str, path: &str, query: Option<&str>) -> Option<HandlerResult> {
    let vmid: u32 = path.strip_prefix("/_sim/guests/")?.strip_suffix("/node")?.parse().ok()?;
    if method != "POST" {
        return Some(Err(not_implemented(method, path)));
    }
    let node = query_value(query, "node")?.to_string();
    let mut state = lock_state(sim);
    let Some(guest) = state.guests.get_mut(&vmid) else {
        return Some(Err(Reply::fail(format!("no guest {vmid}"))));
    };
    guest.elsewhere = (node != sim.opts.node).then_some(node);
    Some(Ok(Value::Null))
}

fn sim_guests(sim: &Sim) -> Value {
    let guests: Vec<Value> = super::summaries(sim)
        .into_iter()
        .map(|g| {
            json!({ "vmid": g.vmid, "type": g.kind.as_str(), "name": g.name, "running": g.running,
                    "template": g.template, "lock": g.lock, "machine": g.machine })
        })
        .collect();
    Value::Array(guests)
}

fn not_implemented(method: &str, path: &str) -> Reply {
    Reply::error(501, format!("Method '{method} {path}' not implemented"))
}

async fn route(sim: &Arc<Sim>, method: &str, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> HandlerResult {
    if method == "GET" && uri.path() == SIM_GUESTS_PATH {
        authenticate(sim, method, headers).await?;
        return Ok(sim_guests(sim));
    }
    if method == "GET" && uri.path() == SIM_STATS_PATH {
        authenticate(sim, method, headers).await?;
        return Ok(json!({
            "faults_injected": sim.faults_injected.load(std::sync::atomic::Ordering::Relaxed),
            "requests": sim.requests.load(std::sync::atomic::Ordering::Relaxed),
        }));
    }
    if method == "POST" && uri.path() == SIM_LOSE_ANSWER_PATH {
        authenticate(sim, method, headers).await?;
        return sim_lose_answer(sim, uri.query());
    }
    if uri.path().starts_with("/_sim/guests/") {
        authenticate(sim, method, headers).await?;
        if let Some(result) = sim_guest_lock(sim, method, uri.path(), uri.query()) {
            return result;
        }
        if let Some(result) = sim_guest_node(sim, method, uri.path(), uri.query()) {
            return result;
        }
    }
    let Some(path) = uri.path().strip_prefix("/api2/json") else {
        return Err(not_implemented(method, uri.path()));
    };
    let segments: Vec<String> =
        path.split('/').filter(|s| !s.is_empty()).map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned()).collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let params = parse_params(method, uri.query(), headers, body)?;

    if method == "POST" && segs == ["access", "ticket"] {
        return login(sim, &params).await;
    }
    let caller = authenticate(sim, method, headers).await?;

    let result = verified_route(sim, method, path, &segs, &params, &caller).await;
    if sim.opts.record_requests {
        let (status, answer) = match &result {
            Ok(data) => (200, data.clone()),
            Err(reply) => (reply.status.as_u16(), reply.body.get("errors").cloned().unwrap_or(Value::Null)),
        };
        if let Ok(mut recorded) = sim.recorded.lock() {
            recorded.push(super::RecordedRequest { method: method.into(), path: path.into(), params: params.clone(), status, answer });
        }
    }
    result
}

/// pve-common's PVE/RESTHandler.pm `handle` verifies the parameters against
/// the method's schema before its code runs; with the published definitions
/// loaded, they decide (a path they lack is 501 as pve-http-server answers it).
async fn verified_route(sim: &Arc<Sim>, method: &str, path: &str, segs: &[&str], params: &Params, caller: &Caller) -> HandlerResult {
    let Some(definitions) = &sim.definitions else {
        return faulty_dispatch(sim, method, path, segs, params, caller).await;
    };
    match definitions.verify(method, path, params) {
        Verdict::Ok => {}
        Verdict::Refused(errors) => return Err(Reply::params(errors)),
        Verdict::NoSuchPath | Verdict::NoSuchMethod => return Err(not_implemented(method, path)),
    }
    VERIFIED_BY_DEFINITIONS.scope(true, faulty_dispatch(sim, method, path, segs, params, caller)).await
}

async fn faulty_dispatch(sim: &Arc<Sim>, method: &str, path: &str, segs: &[&str], params: &Params, caller: &Caller) -> HandlerResult {
    match roll_fault(sim, method, segs) {
        Fault::None => dispatch(sim, method, path, segs, params, caller).await,
        Fault::Before(reply) => Err(reply),
        Fault::AnswerLost(reply) => {
            let _ = dispatch(sim, method, path, segs, params, caller).await;
            Err(reply)
        }
    }
}

async fn dispatch(sim: &Arc<Sim>, method: &str, path: &str, segs: &[&str], params: &Params, caller: &Caller) -> HandlerResult {
    match (method, segs) {
        ("GET", ["version"]) => {
            check(&[], params).map_err(Reply::params)?;
            Ok(json!({ "version": "9.1.1", "release": "9.1", "repoid": "0a1b2c3d" }))
        }
        ("GET", ["nodes"]) => Ok(json!([node_entry(sim, true)])),
        ("GET", ["cluster", "nextid"]) => next_id(sim, params),
        ("GET", ["cluster", "resources"]) => cluster_resources(sim, params),
        ("GET", ["access", "ticket"]) => Ok(Value::Null),
        (_, ["nodes", node, rest @ ..]) => {
            if *node != sim.opts.node {
                return elsewhere_route(sim, method, path, node, rest, params, caller).await;
            }
            if let Some(reply) = guest_elsewhere(sim, node, rest) {
                return Err(reply);
            }
            node_route(sim, method, path, rest, params, caller).await
        }
        _ => Err(not_implemented(method, path)),
    }
}

/// A guest-path request (`lxc/{vmid}/…`) for a guest whose config lives on
/// another node than `node`: PVE answers it like a missing guest (the call is
/// proxied to `node`, which has no such config file).
fn guest_elsewhere(sim: &Sim, node: &str, rest: &[&str]) -> Option<Reply> {
    let kind = match rest.first()? {
        &"lxc" => GuestKind::Lxc,
        &"qemu" => GuestKind::Qemu,
        _ => return None,
    };
    let vmid: u32 = rest.get(1)?.parse().ok()?;
    let state = lock_state(sim);
    let guest = state.guests.get(&vmid)?;
    (guest.node(&sim.opts.node) != node).then(|| guests::missing_on(node, kind, vmid))
}

/// Another node of the cluster: it answers for the guests moved there (and
/// the simulated node's tasks, which every node can read); an unknown name
/// is not resolved, as on a real cluster.
async fn elsewhere_route(sim: &Arc<Sim>, method: &str, path: &str, node: &str, rest: &[&str], params: &Params, caller: &Caller) -> HandlerResult {
    let known = lock_state(sim).guests.values().any(|g| g.elsewhere.as_deref() == Some(node));
    if !known {
        return Err(Reply::fail(format!("hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known")));
    }
    match rest {
        ["lxc" | "qemu", _, ..] => match guest_elsewhere(sim, node, rest) {
            Some(reply) => Err(reply),
            None => node_route(sim, method, path, rest, params, caller).await,
        },
        ["tasks", ..] => node_route(sim, method, path, rest, params, caller).await,
        _ => Err(not_implemented(method, path)),
    }
}

async fn node_route(sim: &Arc<Sim>, method: &str, path: &str, rest: &[&str], params: &Params, caller: &Caller) -> HandlerResult {
    let kind = |s: &str| match s {
        "lxc" => Some(GuestKind::Lxc),
        "qemu" => Some(GuestKind::Qemu),
        _ => None,
    };
    match (method, rest) {
        ("GET", ["status"]) => Ok(node_entry(sim, false)),
        ("GET", ["storage"]) => Ok(storage_list(sim)),
        ("GET", ["storage", storage, "content"]) => storage_content(sim, storage, params),
        ("GET", ["tasks"]) => task_list(sim, params),
        ("GET", ["tasks", upid, "status"]) => task_status(sim, upid),
        ("GET", ["tasks", upid, "log"]) => task_log(sim, upid, params),
        ("GET", [k]) if kind(k).is_some() => Ok(guests::list(sim, kind(k).unwrap_or(GuestKind::Lxc))),
        ("POST", ["lxc"]) => guests::lxc_create(sim, params, caller),
        ("POST", ["qemu", vmid, "clone"]) => guests::qemu_clone(sim, vmid_of(vmid)?, params, caller),
        (_, [k, vmid, tail @ ..]) if kind(k).is_some() => {
            let kind = kind(k).unwrap_or(GuestKind::Lxc);
            let vmid = vmid_of(vmid)?;
            match (method, tail) {
                ("DELETE", []) => guests::destroy(sim, kind, vmid, params, caller),
                ("GET", ["config"]) => guests::get_config(sim, kind, vmid, params),
                ("PUT", ["config"]) => guests::update_config(sim, kind, vmid, params, caller, false),
                ("POST", ["config"]) if kind == GuestKind::Qemu => guests::update_config(sim, kind, vmid, params, caller, true),
                ("PUT", ["resize"]) => guests::resize(sim, kind, vmid, params, caller),
                ("GET", ["status", "current"]) => guests::status_current(sim, kind, vmid),
                ("POST", ["status", action]) => guests::status_action(sim, kind, vmid, action, params, caller),
                ("GET", ["interfaces"]) if kind == GuestKind::Lxc => guests::lxc_interfaces(sim, vmid),
                ("GET", ["agent", "network-get-interfaces"]) if kind == GuestKind::Qemu => guests::agent_interfaces(sim, vmid),
                ("GET", ["agent", "file-read"]) if kind == GuestKind::Qemu => guests::agent_file_read(sim, vmid, params),
                _ => Err(not_implemented(method, path)),
            }
        }
        _ => Err(not_implemented(method, path)),
    }
}

fn vmid_of(segment: &str) -> Result<u32, Reply> {
    let params: Params = [("vmid".to_string(), segment.to_string())].into();
    check(&[opt("vmid", VMID)], &params).map_err(Reply::params)?;
    segment.parse().map_err(|_| Reply::param("vmid", format!("type check ('integer') failed - got '{segment}'")))
}

/// Query parameters, plus the form or JSON body of POST/PUT.
fn parse_params(method: &str, query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Result<Params, Reply> {
    let mut params = Params::new();
    if let Some(query) = query {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query).map_err(|e| Reply::error(400, format!("unable to parse query string: {e}")))?;
        params.extend(pairs);
    }
    if !(method == "POST" || method == "PUT") || body.is_empty() {
        return Ok(params);
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.starts_with("application/json") {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| Reply::error(400, format!("unable to parse JSON body: {e}")))?;
        let Value::Object(map) = value else {
            return Err(Reply::error(400, "JSON body is not an object"));
        };
        for (key, value) in map {
            let text = match value {
                Value::Null => continue,
                Value::Bool(b) => if b { "1" } else { "0" }.to_string(),
                Value::String(s) => s,
                other => other.to_string(),
            };
            params.insert(key, text);
        }
    } else {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_bytes(body).map_err(|e| Reply::error(400, format!("unable to parse form body: {e}")))?;
        params.extend(pairs);
    }
    Ok(params)
}

// ---- authentication --------------------------------------------------------

async fn login(sim: &Sim, params: &Params) -> HandlerResult {
    let schema = [
        opt("username", Ty::Str { max_len: 64 }),
        opt("password", Ty::Str { max_len: 4096 }),
        opt("realm", Ty::Str { max_len: 32 }),
        opt("otp", Ty::Str { max_len: 64 }),
        opt("new-format", Ty::Bool),
    ];
    check(&schema, params).map_err(Reply::params)?;
    let mut user = params.get("username").cloned().unwrap_or_default();
    if !user.contains('@') {
        if let Some(realm) = params.get("realm") {
            user = format!("{user}@{realm}");
        }
    }
    let password_ok = params.get("password").is_some_and(|p| *p == sim.opts.password);
    if user != "root@pam" || !password_ok {
        tokio::time::sleep(Duration::from_millis(sim.opts.auth_fail_delay_ms)).await;
        return Err(Reply::error(401, "authentication failure"));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let mut state = lock_state(sim);
    let ticket = format!("PVE:{user}:{now:08X}::{}", state.random_hex(48));
    let csrf = format!("{now:08X}:{}", state.random_hex(20));
    state.tickets.insert(
        ticket.clone(),
        Ticket { user: user.clone(), csrf: csrf.clone(), expires: Instant::now() + TICKET_LIFETIME },
    );
    Ok(json!({
        "ticket": ticket,
        "CSRFPreventionToken": csrf,
        "username": user,
        "cap": { "vms": { "VM.Allocate": 1 }, "nodes": { "Sys.Audit": 1 } },
    }))
}

fn cookie_ticket(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| pair.trim().strip_prefix("PVEAuthCookie="))
        .map(|t| percent_decode_str(t.trim_matches('"')).decode_utf8_lossy().into_owned())
}

async fn authenticate(sim: &Sim, method: &str, headers: &HeaderMap) -> Result<Caller, Reply> {
    if let Some(auth) = headers.get(header::AUTHORIZATION) {
        let auth = auth.to_str().unwrap_or("");
        let Some(token) = auth.strip_prefix("PVEAPIToken=") else {
            return Err(Reply::error(401, "invalid authorization header"));
        };
        // USER@REALM!TOKENID=SECRET: the secret follows the last '='.
        let valid = token
            .rsplit_once('=')
            .is_some_and(|(id, secret)| id == sim.opts.token_id && secret == sim.opts.token_secret);
        if !valid {
            tokio::time::sleep(Duration::from_millis(sim.opts.auth_fail_delay_ms)).await;
            return Err(Reply::error(401, "invalid token value!"));
        }
        // Tokens are exempt from CSRF checks.
        return Ok(Caller { user: sim.opts.token_id.clone() });
    }
    let Some(ticket) = cookie_ticket(headers) else {
        return Err(Reply::error(401, "No ticket"));
    };
    let (user, csrf) = {
        let state = lock_state(sim);
        match state.tickets.get(&ticket) {
            Some(t) if t.expires > Instant::now() => (t.user.clone(), t.csrf.clone()),
            _ => return Err(Reply::error(401, "invalid ticket - ticket expired or not valid")),
        }
    };
    if method != "GET" {
        let sent = headers.get("CSRFPreventionToken").and_then(|v| v.to_str().ok());
        if sent != Some(csrf.as_str()) {
            return Err(Reply::error(401, "Permission denied - invalid csrf token"));
        }
    }
    Ok(Caller { user })
}

// ---- faults ---------------------------------------------------------------

enum Fault {
    None,
    /// Fail without doing anything.
    Before(Reply),
    /// Do the work, then fail as if the proxy lost the daemon's answer.
    AnswerLost(Reply),
}

fn roll_fault(sim: &Sim, method: &str, segs: &[&str]) -> Fault {
    let mut state = lock_state(sim);
    if !state.chance(sim.opts.faults) {
        return Fault::None;
    }
    sim.faults_injected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let guest = segs.windows(2).find_map(|w| match w[0] {
        "lxc" => w[1].parse::<u32>().ok().map(|id| (GuestKind::Lxc, id)),
        "qemu" => w[1].parse::<u32>().ok().map(|id| (GuestKind::Qemu, id)),
        _ => None,
    });
    // The transient answers of a busy PVE node: pve-common's PVE/Tools.pm
    // `lock_file_full` dies "can't lock file '…' - got timeout" (10 s flock,
    // or 1 s for the source of a clone), PVE/AbstractConfig.pm `check_lock`
    // dies "CT is locked (backup)" while another task (here: a vzdump) holds
    // the guest, pveproxy answers 596 when pvedaemon does not; each is a plain
    // `die`, so 500 with the text in the status line.
    match state.rng.gen_range(0..4) {
        0 => Fault::Before(Reply::fail("got timeout")),
        3 if method != "GET" => match guest {
            Some((kind, _)) => Fault::Before(Reply::fail(format!("{} is locked (backup)", kind.noun()))),
            None => Fault::Before(Reply::fail("got timeout")),
        },
        1 => match guest {
            Some((kind, vmid)) => {
                Fault::Before(Reply::fail(format!("can't lock file '{}' - got timeout", kind.lock_file(vmid))))
            }
            None => Fault::Before(Reply::error(503, "Service Unavailable")),
        },
        _ if method != "GET" => Fault::AnswerLost(Reply::fail("got timeout")),
        _ => Fault::Before(Reply::error(596, "Connection timed out")),
    }
}

// ---- node, cluster, storage -------------------------------------------------

fn node_entry(sim: &Sim, with_fingerprint: bool) -> Value {
    let mut entry = json!({
        "node": sim.opts.node, "id": format!("node/{}", sim.opts.node), "type": "node",
        "status": "online", "level": "", "maxcpu": sim.opts.limits.cores, "cpu": 0.03,
        "maxmem": sim.opts.limits.memory_mib << 20, "mem": 4294967296u64, "maxdisk": 100861726720u64, "disk": 4294967296u64, "uptime": 86400,
    });
    if with_fingerprint {
        entry["ssl_fingerprint"] = json!(sim.fingerprint);
    }
    entry
}

fn next_id(sim: &Sim, params: &Params) -> HandlerResult {
    check(&[opt("vmid", VMID)], params).map_err(Reply::params)?;
    let state = lock_state(sim);
    match params.get("vmid").and_then(|v| v.parse::<u32>().ok()) {
        Some(vmid) if state.guests.contains_key(&vmid) => Err(Reply::param("vmid", format!("VM {vmid} already exists"))),
        Some(vmid) => Ok(json!(vmid.to_string())),
        None => Ok(json!(state.next_free_vmid().to_string())),
    }
}

fn cluster_resources(sim: &Sim, params: &Params) -> HandlerResult {
    check(&[opt("type", Ty::Enum(&["vm", "storage", "node", "sdn"]))], params).map_err(Reply::params)?;
    let wanted = params.get("type").map(String::as_str);
    let mut out = Vec::new();
    if wanted.is_none() || wanted == Some("node") {
        out.push(node_entry(sim, false));
    }
    if wanted.is_none() || wanted == Some("storage") {
        for (id, plugin, content) in STORAGES {
            out.push(json!({
                "id": format!("storage/{}/{id}", sim.opts.node), "type": "storage", "storage": id,
                "node": sim.opts.node, "status": "available", "plugintype": plugin, "content": content,
                "shared": 0, "maxdisk": 100861726720u64, "disk": 1073741824u64,
            }));
        }
    }
    if wanted.is_none() || wanted == Some("vm") {
        let state = lock_state(sim);
        for guest in state.guests.values() {
            out.push(guests::resource_entry(&sim.opts.node, guest));
        }
    }
    Ok(Value::Array(out))
}

fn storage_list(sim: &Sim) -> Value {
    let list: Vec<Value> = STORAGES
        .iter()
        .map(|(id, plugin, content)| {
            json!({ "storage": id, "type": plugin, "content": content, "active": 1, "enabled": 1, "shared": 0,
                    "total": 100861726720u64, "used": 1073741824u64, "avail": 99787984896u64 })
        })
        .collect();
    let _ = sim;
    Value::Array(list)
}

fn storage_content(sim: &Sim, storage: &str, params: &Params) -> HandlerResult {
    let schema = [
        opt("content", Ty::Enum(&["images", "rootdir", "vztmpl", "iso", "backup", "snippets", "import"])),
        opt("vmid", VMID),
    ];
    check(&schema, params).map_err(Reply::params)?;
    if !STORAGES.iter().any(|(id, _, _)| *id == storage) {
        return Err(Reply::fail(format!("storage '{storage}' does not exist")));
    }
    let content = params.get("content").map(String::as_str);
    let mut out = Vec::new();
    if storage == "local" && content.is_none_or(|c| c == "vztmpl") {
        for volid in LXC_TEMPLATES {
            out.push(json!({ "volid": volid, "content": "vztmpl", "format": "tzst", "size": 126_322_105u64, "ctime": 1_718_000_000u64 }));
        }
    }
    if storage == "local-lvm" {
        let state = lock_state(sim);
        for guest in state.guests.values() {
            for (key, volume) in &guest.config {
                let Some(volid) = volume.split(',').next().filter(|v| v.starts_with("local-lvm:")) else { continue };
                let is_disk = key == "rootfs" || key.starts_with("scsi") || key.starts_with("mp");
                if !is_disk {
                    continue;
                }
                let kind = if guest.kind == GuestKind::Lxc { "rootdir" } else { "images" };
                if content.is_some_and(|c| c != kind) || params.get("vmid").is_some_and(|v| *v != guest.vmid.to_string()) {
                    continue;
                }
                let size = guests::volume_size(volume).unwrap_or(0);
                out.push(json!({ "volid": volid, "content": kind, "format": "raw", "size": size, "vmid": guest.vmid }));
            }
        }
    }
    Ok(Value::Array(out))
}

// ---- tasks -------------------------------------------------------------------

/// `GET /nodes/{node}/tasks`: finished tasks by default (`source=archive`),
/// newest first, filtered by guest, worker type, user and errors.
fn task_list(sim: &Sim, params: &Params) -> HandlerResult {
    let schema = [
        opt("vmid", VMID),
        opt("typefilter", Ty::Str { max_len: 64 }),
        opt("userfilter", Ty::Str { max_len: 128 }),
        opt("source", Ty::Enum(&["archive", "active", "all"])),
        opt("errors", Ty::Bool),
        opt("start", Ty::Int { min: 0, max: i64::MAX }),
        opt("limit", Ty::Int { min: 0, max: i64::MAX }),
        opt("statusfilter", TEXT_FILTER),
        opt("since", Ty::Int { min: 0, max: i64::MAX }),
        opt("until", Ty::Int { min: 0, max: i64::MAX }),
    ];
    check(&schema, params).map_err(Reply::params)?;
    let source = params.get("source").map(String::as_str).unwrap_or("archive");
    let errors_only = params.get("errors").is_some_and(|e| e == "1");
    let start: usize = params.get("start").and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit: usize = params.get("limit").and_then(|v| v.parse().ok()).unwrap_or(50);
    let state = lock_state(sim);
    let mut tasks: Vec<Value> = state
        .tasks
        .values()
        .filter(|t| match source {
            "active" => t.exitstatus.is_none(),
            "all" => true,
            _ => t.exitstatus.is_some(),
        })
        .filter(|t| params.get("vmid").is_none_or(|v| *v == t.id))
        .filter(|t| params.get("typefilter").is_none_or(|f| *f == t.worker_type))
        .filter(|t| params.get("userfilter").is_none_or(|u| t.user.contains(u.as_str())))
        .filter(|t| !errors_only || t.exitstatus.as_deref().is_some_and(|e| e != "OK" && !e.starts_with("WARNINGS")))
        .map(|t| {
            let mut v = json!({ "upid": t.upid, "node": sim.opts.node, "pid": t.pid, "pstart": t.pstart,
                                "starttime": t.starttime, "type": t.worker_type, "id": t.id, "user": t.user });
            if let Some(status) = &t.exitstatus {
                v["status"] = json!(status);
                v["endtime"] = json!(t.starttime);
            }
            v
        })
        .collect();
    tasks.sort_by_key(|t| std::cmp::Reverse((t["starttime"].as_u64(), t["pid"].as_u64())));
    Ok(Value::Array(tasks.into_iter().skip(start).take(limit).collect()))
}

/// pve-manager PVE/API2/Tasks.pm (read_task_status, read_task_log): a UPID
/// whose task file is not (yet) there is a parameter exception,
/// `raise_param_exc({ upid => "no such task" })`.
fn no_such_task() -> Reply {
    Reply::param("upid", "no such task")
}

fn task_status(sim: &Sim, upid: &str) -> HandlerResult {
    let mut state = lock_state(sim);
    let Some(task) = state.tasks.get_mut(upid) else {
        return Err(no_such_task());
    };
    if task.invisible_polls > 0 {
        task.invisible_polls -= 1;
        return Err(no_such_task());
    }
    let mut status = json!({
        "upid": task.upid, "node": sim.opts.node, "pid": task.pid, "pstart": task.pstart,
        "starttime": task.starttime, "type": task.worker_type, "id": task.id, "user": task.user,
        "status": if task.exitstatus.is_some() { "stopped" } else { "running" },
    });
    if let Some(exit) = &task.exitstatus {
        status["exitstatus"] = json!(exit);
    }
    Ok(status)
}

fn task_log(sim: &Sim, upid: &str, params: &Params) -> HandlerResult {
    let schema = [
        opt("start", Ty::Int { min: 0, max: i64::MAX }),
        opt("limit", Ty::Int { min: 0, max: i64::MAX }),
        opt("download", Ty::Bool),
    ];
    check(&schema, params).map_err(Reply::params)?;
    let start: usize = params.get("start").and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit: usize = params.get("limit").and_then(|v| v.parse().ok()).unwrap_or(50);
    let state = lock_state(sim);
    let Some(task) = state.tasks.get(upid) else {
        return Err(no_such_task());
    };
    let lines: Vec<Value> =
        task.log.iter().enumerate().skip(start).take(limit).map(|(i, t)| json!({ "n": i + 1, "t": t })).collect();
    Ok(Value::Array(lines))
}
