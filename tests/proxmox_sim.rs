//! The Proxmox simulator over real HTTPS on loopback, driven by rigger's client.

use reqwest::Method;
use rigger::cloud::providers::proxmox::client::{ApiError, Auth, ClientOptions, ProxmoxClient};
use rigger::cloud::providers::proxmox::tasks::Upid;
use rigger::cloud::providers::proxmox::tls::{self, TlsMode};
use rigger_sim::proxmox::{self as sim, ProxmoxSimHandle, ProxmoxSimOptions};
use serde_json::Value;

const TEMPLATE: &str = "local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst";
const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBbOT2vYcFq7uYdK0r5oQzGJmS0t2C3mA5YbQm1cJx3f test@rigger";

async fn start_sim() -> ProxmoxSimHandle {
    let mut opts = ProxmoxSimOptions::new("127.0.0.1:0".parse().unwrap());
    opts.op_time_ms = 50;
    opts.auth_fail_delay_ms = 10;
    opts.agent_delay_ms = 100;
    opts.seed = 7;
    sim::start(opts).await.expect("simulator starts")
}

fn pinned(handle: &ProxmoxSimHandle) -> TlsMode {
    TlsMode::Pinned(tls::parse_fingerprint(handle.fingerprint.as_deref().unwrap()).unwrap())
}

fn token_client(handle: &ProxmoxSimHandle, tls: TlsMode) -> ProxmoxClient {
    let auth = Auth::Token { id: handle.options.token_id.clone(), secret: handle.options.token_secret.clone() };
    ProxmoxClient::new(ClientOptions::new(handle.base_url(), auth, tls)).unwrap()
}

fn p(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

fn create_params(vmid: &str, hostname: &str, ip: &str) -> Vec<(&'static str, String)> {
    p(&[
        ("vmid", vmid),
        ("ostemplate", TEMPLATE),
        ("hostname", hostname),
        ("memory", "1024"),
        ("cores", "2"),
        ("rootfs", "local-lvm:8"),
        ("net0", &format!("name=eth0,bridge=vmbr0,ip={ip}/24,gw=192.168.50.1")),
        ("ssh-public-keys", KEY),
        ("tags", "Beta;alpha;beta"),
        ("unprivileged", "1"),
        ("features", "nesting=1"),
    ])
}

#[tokio::test]
async fn the_pinned_fingerprint_connects_and_a_wrong_one_is_refused() {
    let handle = start_sim().await;
    let version = token_client(&handle, pinned(&handle)).get("/version", &[]).await.unwrap();
    assert_eq!(version["release"], "9.1");

    // The node reports the same fingerprint.
    let nodes = token_client(&handle, pinned(&handle)).get("/nodes", &[]).await.unwrap();
    assert_eq!(nodes[0]["ssl_fingerprint"].as_str(), handle.fingerprint.as_deref());

    let wrong = TlsMode::Pinned([0xAB; 32]);
    let err = token_client(&handle, wrong).get("/version", &[]).await.unwrap_err();
    assert!(matches!(err, ApiError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("fingerprint"), "{err}");

    // Without pinning, the web PKI does not trust a self-signed node.
    let err = token_client(&handle, TlsMode::WebPki).get("/version", &[]).await.unwrap_err();
    assert!(matches!(err, ApiError::Tls { .. }), "{err}");
    handle.stop().await;
}

#[tokio::test]
async fn bad_token_is_401_and_tickets_need_csrf_on_writes() {
    let handle = start_sim().await;
    let bad = ProxmoxClient::new(ClientOptions::new(
        handle.base_url(),
        Auth::Token { id: handle.options.token_id.clone(), secret: "wrong".into() },
        pinned(&handle),
    ))
    .unwrap();
    assert_eq!(bad.get("/version", &[]).await.unwrap_err().status(), Some(401));

    let bad_login = ProxmoxClient::new(ClientOptions::new(
        handle.base_url(),
        Auth::Password { username: "root@pam".into(), password: "nope".into() },
        pinned(&handle),
    ))
    .unwrap();
    let err = bad_login.get("/version", &[]).await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    assert!(err.mentions("authentication failure"), "{err}");

    // rigger's client with a password: ticket cookie, CSRF header on writes.
    let ticket_client = ProxmoxClient::new(ClientOptions::new(
        handle.base_url(),
        Auth::Password { username: "root@pam".into(), password: handle.options.password.clone() },
        pinned(&handle),
    ))
    .unwrap();
    ticket_client.run_task(Method::POST, "/nodes/pve/lxc", &create_params("120", "csrf-ok", "192.168.50.20")).await.unwrap();

    // The same ticket without the CSRF token may read but not write.
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls::client_config(&pinned(&handle)).unwrap().unwrap())
        .build()
        .unwrap();
    let base = format!("{}/api2/json", handle.base_url());
    let login: Value = http
        .post(format!("{base}/access/ticket"))
        .form(&[("username", "root@pam"), ("password", handle.options.password.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ticket = login["data"]["ticket"].as_str().unwrap();
    let csrf = login["data"]["CSRFPreventionToken"].as_str().unwrap();
    let cookie = format!("PVEAuthCookie={ticket}");
    let read = http.get(format!("{base}/nodes/pve/lxc/120/config")).header("Cookie", &cookie).send().await.unwrap();
    assert_eq!(read.status(), 200);
    let write = http.put(format!("{base}/nodes/pve/lxc/120/config")).header("Cookie", &cookie).form(&[("cores", "4")]).send().await.unwrap();
    assert_eq!(write.status(), 401);
    assert_eq!(write.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
    let write = http
        .put(format!("{base}/nodes/pve/lxc/120/config"))
        .header("Cookie", &cookie)
        .header("CSRFPreventionToken", csrf)
        .form(&[("cores", "4")])
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 200);
    handle.stop().await;
}

#[tokio::test]
async fn parameter_errors_are_reported_per_field() {
    let handle = start_sim().await;
    let client = token_client(&handle, pinned(&handle));
    let params = p(&[
        ("vmid", "5"),
        ("hostname", "not_a_host!"),
        ("memory", "8"),
        ("cores", "two"),
        ("net0", "bridge=vmbr0,ip=192.168.50.300/24"),
        ("tags", "ok;Bad!"),
        ("colour", "red"),
    ]);
    let err = client.post("/nodes/pve/lxc", &params).await.unwrap_err();
    let ApiError::Status { status, message, errors, .. } = &err else { panic!("{err}") };
    assert_eq!(*status, 400);
    assert_eq!(message, "Parameter verification failed.");
    for field in ["vmid", "hostname", "memory", "cores", "net0", "tags", "colour", "ostemplate"] {
        assert!(errors.contains_key(field), "no error for {field}: {errors:?}");
    }
    assert!(errors["vmid"].contains("minimum value of 100"));
    assert!(errors["ostemplate"].contains("missing"));
    assert!(!err.is_retryable());

    // Unknown paths: 501 with the method and path in the status line.
    let err = client.get("/nodes/pve/bogus", &[]).await.unwrap_err();
    assert_eq!(err.status(), Some(501));
    assert!(err.mentions("not implemented"), "{err}");
    // A missing guest.
    let err = client.get("/nodes/pve/lxc/777/config", &[]).await.unwrap_err();
    assert!(err.is_missing_guest(), "{err}");
    handle.stop().await;
}

#[tokio::test]
async fn errors_travel_in_the_status_line() {
    let handle = start_sim().await;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tls::client_config(&pinned(&handle)).unwrap().unwrap())
        .build()
        .unwrap();
    let response = http
        .get(format!("{}/api2/json/nodes/pve/lxc/777/status/current", handle.base_url()))
        .header("Authorization", format!("PVEAPIToken={}={}", handle.options.token_id, handle.options.token_secret))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    let reason = response.extensions().get::<hyper::ext::ReasonPhrase>().map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned());
    assert_eq!(reason.as_deref(), Some("Configuration file 'nodes/pve/lxc/777.conf' does not exist"));
    // PVE's json formatter puts no message in the body: `{"data":null}` only.
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({ "data": null }));

    // A task the index does not list: PVE's parameter exception, exactly.
    let upid = "UPID:pve:0000FFFF:0000FFFF:00000000:vzcreate:999:root@pam:";
    let response = http
        .get(format!("{}/api2/json/nodes/pve/tasks/{upid}/status", handle.base_url()))
        .header("Authorization", format!("PVEAPIToken={}={}", handle.options.token_id, handle.options.token_secret))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let reason = response.extensions().get::<hyper::ext::ReasonPhrase>().map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned());
    assert_eq!(reason.as_deref(), Some("Parameter verification failed."));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({ "data": null, "errors": { "upid": "no such task" } }));
    // rigger's client reads it as a task not listed yet.
    let err = token_client(&handle, pinned(&handle)).get(&format!("/nodes/pve/tasks/{upid}/status"), &[]).await.unwrap_err();
    assert!(err.is_unknown_task(), "{err}");
    handle.stop().await;
}

#[tokio::test]
async fn tasks_locks_and_normalised_config() {
    let handle = start_sim().await;
    let client = token_client(&handle, pinned(&handle));
    let upid = client.post("/nodes/pve/lxc", &create_params("100", "web-1", "192.168.50.21")).await.unwrap();
    let upid = upid.as_str().unwrap().to_string();
    let parsed = Upid::parse(&upid).expect("a UPID");
    assert_eq!((parsed.node.as_str(), parsed.worker_type.as_str(), parsed.id.as_str()), ("pve", "vzcreate", "100"));
    assert_eq!(parsed.user, "root@pam!rigger");
    assert!(upid.ends_with(':'));

    // A second create of the same VMID is refused at once (pve-cluster's
    // check_vmid_unused runs before the worker forks).
    let err = client.post("/nodes/pve/lxc", &create_params("100", "web-dup", "192.168.50.22")).await.unwrap_err();
    assert_eq!(err.status(), Some(500), "{err}");
    assert!(err.mentions("CT 100 already exists on node 'pve'"), "{err}");
    client.wait_task(&upid).await.unwrap();
    let log = client.task_log_tail("pve", &upid, 5).await;
    assert_eq!(log.last().map(String::as_str), Some("TASK OK"));

    let config = client.get("/nodes/pve/lxc/100/config", &[]).await.unwrap();
    let net0 = config["net0"].as_str().unwrap();
    assert!(net0.starts_with("name=eth0,bridge=vmbr0,gw=192.168.50.1,hwaddr=BC:24:11:"), "{net0}");
    assert!(net0.ends_with(",ip=192.168.50.21/24,type=veth"), "{net0}");
    assert_eq!(config["rootfs"], "local-lvm:vm-100-disk-0,size=8G");
    assert_eq!(config["tags"], "alpha;beta");
    assert_eq!(config["memory"], 1024);
    assert_eq!(config["hostname"], "web-1");
    assert!(config["digest"].is_string());

    client.run_task(Method::POST, "/nodes/pve/lxc/100/status/start", &[]).await.unwrap();
    let err = client.post("/nodes/pve/lxc/100/status/start", &[]).await.unwrap_err();
    assert!(err.mentions("CT 100 already running"), "{err}");
    let interfaces = client.get("/nodes/pve/lxc/100/interfaces", &[]).await.unwrap();
    assert!(interfaces.as_array().unwrap().iter().any(|i| i["inet"] == "192.168.50.21/24"));
    let err = client.delete("/nodes/pve/lxc/100", &[]).await.unwrap_err();
    assert!(err.mentions("container is running"), "{err}");

    // A clone of the QEMU template, cloud-init, agent.
    client
        .run_task(Method::POST, "/nodes/pve/qemu/9000/clone", &p(&[("newid", "200"), ("name", "vm-1"), ("full", "1")]))
        .await
        .unwrap();
    client
        .put("/nodes/pve/qemu/200/config", &p(&[("ipconfig0", "ip=192.168.50.40/24,gw=192.168.50.1"), ("sshkeys", &KEY.replace(' ', "%20"))]))
        .await
        .unwrap();
    client.run_task(Method::PUT, "/nodes/pve/qemu/200/resize", &p(&[("disk", "scsi0"), ("size", "10G")])).await.unwrap();
    let err = client.put("/nodes/pve/qemu/200/resize", &p(&[("disk", "scsi0"), ("size", "1G")])).await.unwrap_err();
    assert!(err.mentions("shrinking"), "{err}");
    let vm = client.get("/nodes/pve/qemu/200/config", &[]).await.unwrap();
    assert_eq!(vm["scsi0"], "local-lvm:vm-200-disk-0,size=10G");
    assert!(vm.get("template").is_none());
    client.run_task(Method::POST, "/nodes/pve/qemu/200/status/start", &[]).await.unwrap();
    let mut reported = false;
    for _ in 0..100 {
        match client.get("/nodes/pve/qemu/200/agent/network-get-interfaces", &[]).await {
            Ok(data) => {
                reported = data["result"].to_string().contains("192.168.50.40");
                break;
            }
            Err(e) => assert!(e.mentions("QEMU guest agent is not running"), "{e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(reported);

    let resources = client.get("/cluster/resources", &[("type", "vm".into())]).await.unwrap();
    let ids: Vec<&str> = resources.as_array().unwrap().iter().filter_map(|r| r["id"].as_str()).collect();
    assert!(ids.contains(&"lxc/100") && ids.contains(&"qemu/200") && ids.contains(&"qemu/9000"), "{ids:?}");
    assert_eq!(client.get("/cluster/nextid", &[]).await.unwrap(), "101");
    handle.stop().await;
}

/// `--quota`: the node's size. A guest asking more cores than the node has,
/// or more memory than is free beside the running guests, does not start (in
/// its task, as PVE reports a failed start); a guest past `guests` is not
/// created; the node reports its size.
#[tokio::test]
async fn the_nodes_limits_hold() {
    let mut opts = ProxmoxSimOptions::new("127.0.0.1:0".parse().unwrap());
    opts.op_time_ms = 20;
    opts.auth_fail_delay_ms = 10;
    for q in ["node.cores=4", "node.memory=2048", "guests=2"] {
        opts.limits.set(q).unwrap();
    }
    assert!(opts.limits.clone().set("node.disks=3").unwrap_err().to_string().contains("use one of node.cores, node.memory, guests"));
    let handle = sim::start(opts).await.expect("simulator starts");
    let client = token_client(&handle, pinned(&handle));
    let node = client.get("/nodes/pve/status", &[]).await.unwrap();
    assert_eq!((node["maxcpu"].as_u64(), node["maxmem"].as_u64()), (Some(4), Some(2048 << 20)));

    let create = |vmid: &str, ip: &str, memory: &str, cores: &str| {
        let mut params = create_params(vmid, &format!("ct-{vmid}"), ip);
        for (k, v) in params.iter_mut() {
            match *k {
                "memory" => *v = memory.to_string(),
                "cores" => *v = cores.to_string(),
                _ => {}
            }
        }
        params
    };
    client.run_task(Method::POST, "/nodes/pve/lxc", &create("101", "192.168.50.21", "1536", "8")).await.unwrap();
    client.run_task(Method::POST, "/nodes/pve/lxc", &create("102", "192.168.50.22", "1024", "2")).await.unwrap();
    // Two guests: a third is refused.
    let err = client.post("/nodes/pve/lxc", &create("103", "192.168.50.23", "512", "1")).await.unwrap_err();
    assert!(err.mentions("simulator quota guests=2"), "{err}");

    // 8 cores on a 4-core node.
    let err = client.run_task(Method::POST, "/nodes/pve/lxc/101/status/start", &[]).await.unwrap_err();
    assert!(err.mentions("MAX 4 vcpus allowed per VM on this node"), "{err}");
    client.put("/nodes/pve/lxc/101/config", &p(&[("cores", "4")])).await.unwrap();
    client.run_task(Method::POST, "/nodes/pve/lxc/101/status/start", &[]).await.unwrap();
    // 1536 MiB run; 1024 more do not fit in 2048.
    let err = client.run_task(Method::POST, "/nodes/pve/lxc/102/status/start", &[]).await.unwrap_err();
    assert!(err.mentions("Cannot allocate memory"), "{err}");
    client.run_task(Method::POST, "/nodes/pve/lxc/101/status/stop", &[]).await.unwrap();
    client.run_task(Method::POST, "/nodes/pve/lxc/102/status/start", &[]).await.unwrap();
    handle.stop().await;
}

/// As on PVE, a container being created holds only `lock: create` (its
/// hostname, tags and description come once the template is extracted) and
/// is listed with no name or tags of its own. `/_sim/lose-answer` carries the
/// next such request out and closes its connection unanswered.
#[tokio::test]
async fn a_container_being_created_shows_only_its_lock() {
    let mut opts = ProxmoxSimOptions::new("127.0.0.1:0".parse().unwrap());
    opts.op_time_ms = 1500;
    opts.auth_fail_delay_ms = 10;
    let handle = sim::start(opts).await.expect("simulator starts");
    let client = token_client(&handle, pinned(&handle));
    let http = reqwest::Client::builder().use_preconfigured_tls(tls::client_config(&pinned(&handle)).unwrap().unwrap()).build().unwrap();
    let token = format!("PVEAPIToken={}={}", handle.options.token_id, handle.options.token_secret);
    let knob = http
        .post(format!("{}/_sim/lose-answer?method=POST&path=/api2/json/nodes/pve/lxc", handle.base_url()))
        .header("Authorization", &token)
        .send()
        .await
        .unwrap();
    assert!(knob.status().is_success());
    let lost = http
        .post(format!("{}/api2/json/nodes/pve/lxc", handle.base_url()))
        .header("Authorization", &token)
        .form(&create_params("100", "web-1", "192.168.50.21"))
        .send()
        .await;
    let err = lost.expect_err("the answer is lost: the connection closes unanswered");
    assert!(!err.is_status() && !err.is_timeout(), "{err}");
    assert_eq!(handle.faults_injected(), 1);

    // The work was done: the container exists, locked, with nothing else yet.
    let config = client.get("/nodes/pve/lxc/100/config", &[]).await.unwrap();
    let keys: Vec<&str> = config.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["digest", "lock"], "{config}");
    assert_eq!(config["lock"], "create");
    let resources = client.get("/cluster/resources", &[("type", "vm".into())]).await.unwrap();
    let entry = resources.as_array().unwrap().iter().find(|r| r["vmid"] == 100).expect("listed").clone();
    assert!(entry.get("tags").is_none() && entry["name"] != "web-1" && entry["lock"] == "create", "{entry}");
    let active = client.get("/nodes/pve/tasks", &[("source", "active".into())]).await.unwrap();
    assert!(active.as_array().unwrap().iter().any(|t| t["type"] == "vzcreate" && t["id"] == "100"), "{active}");

    // The same POST again (as a client re-sends it): refused, the work already begun.
    let err = client.post("/nodes/pve/lxc", &create_params("100", "web-1", "192.168.50.21")).await.unwrap_err();
    assert!(err.mentions("CT 100 already exists on node 'pve'"), "{err}");

    // Once the task ends, the config is whole and unlocked.
    let mut config = Value::Null;
    for _ in 0..100 {
        config = client.get("/nodes/pve/lxc/100/config", &[]).await.unwrap();
        if config.get("lock").is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!((config["hostname"].as_str(), config["tags"].as_str()), (Some("web-1"), Some("alpha;beta")), "{config}");
    assert!(config.get("lock").is_none(), "{config}");
    handle.stop().await;
}
