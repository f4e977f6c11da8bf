//! The Yandex Cloud simulator over real HTTP on loopback: IAM exchange,
//! validation, idempotency, paging.

use reqwest::Method;
use rigger::cloud::providers::yandex::auth::{AuthorizedKey, Credentials};
use rigger::cloud::providers::yandex::client::{Service, YandexClient};
use rigger::cloud::providers::yandex::error::YandexError;
use rigger_sim::yandex::{keys, SimHandle, YandexSimOptions};
use serde_json::{json, Value};
use tokio::net::TcpListener;

const FOLDER: &str = "b1gtestfolder";

async fn start(dir: &tempfile::TempDir) -> SimHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let opts = YandexSimOptions { key_out: dir.path().join("sa-key.json"), ..Default::default() };
    SimHandle::start(listener, opts).await.unwrap()
}

fn client(sim: &SimHandle) -> YandexClient {
    let key = AuthorizedKey::load(&sim.key_path).unwrap();
    YandexClient::new(Credentials::ServiceAccount(key), Some(sim.endpoint())).unwrap()
}

/// A token obtained the way any client would: sign a JWT, POST it.
async fn token(sim: &SimHandle) -> String {
    let key = AuthorizedKey::load(&sim.key_path).unwrap();
    let jwt = key.jwt(chrono::Utc::now().timestamp()).unwrap();
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/iam/v1/tokens", sim.endpoint()))
        .json(&json!({ "jwt": jwt }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    answer["iamToken"].as_str().expect("an iamToken").to_string()
}

fn api_code(e: &YandexError) -> i32 {
    e.code().unwrap_or_else(|| panic!("expected an API error, got {e}"))
}

#[tokio::test]
async fn jwt_exchange_accepts_the_trusted_key_and_refuses_others() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(&dir).await;
    let http = reqwest::Client::new();

    // The key file is in the real format, marker line included.
    let raw: Value = serde_json::from_str(&std::fs::read_to_string(&sim.key_path).unwrap()).unwrap();
    assert!(raw["private_key"].as_str().unwrap().starts_with("PLEASE DO NOT REMOVE THIS LINE! Yandex.Cloud SA Key ID"));
    assert_eq!(raw["key_algorithm"], "RSA_2048");

    let good = token(&sim).await;
    assert!(good.starts_with("t1."));
    let listed = http
        .get(format!("{}/vpc/v1/networks?folderId={FOLDER}", sim.endpoint()))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);

    // Same key id and service account, another private key: the signature must not verify.
    let mut forged = keys::generate_key_file().unwrap();
    forged.id = sim.key.id.clone();
    forged.service_account_id = sim.key.service_account_id.clone();
    let forged_path = dir.path().join("forged.json");
    keys::write_key_file(&forged_path, &forged).unwrap();
    let jwt = AuthorizedKey::load(&forged_path).unwrap().jwt(chrono::Utc::now().timestamp()).unwrap();
    let refused = http.post(format!("{}/iam/v1/tokens", sim.endpoint())).json(&json!({ "jwt": jwt })).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], 16);
    assert_eq!(body["details"][0]["@type"], "type.googleapis.com/google.rpc.RequestInfo");

    // No token, or a made-up one: 401 with code 16.
    for auth in [None, Some("t1.made-up")] {
        let mut req = http.get(format!("{}/vpc/v1/networks?folderId={FOLDER}", sim.endpoint()));
        if let Some(t) = auth {
            req = req.bearer_auth(t);
        }
        let answer = req.send().await.unwrap();
        assert_eq!(answer.status(), 401);
        assert_eq!(answer.json::<Value>().await.unwrap()["code"], 16);
    }
    sim.stop().await;
}

#[tokio::test]
async fn validation_errors_like_the_real_api() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(&dir).await;
    let c = client(&sim);

    let op = c.run(Method::POST, Service::Vpc, "/vpc/v1/networks", Some(&json!({"folderId": FOLDER, "name": "net"}))).await.unwrap();
    let network = op.resource_id("networkId").unwrap();
    assert_eq!(op.response.as_ref().unwrap()["@type"], "type.googleapis.com/yandex.cloud.vpc.v1.Network");

    let subnet = |name: &str, cidr: &str| json!({"folderId": FOLDER, "name": name, "networkId": network, "zoneId": "ru-central1-a", "v4CidrBlocks": [cidr]});
    c.run(Method::POST, Service::Vpc, "/vpc/v1/subnets", Some(&subnet("a", "10.1.0.0/16"))).await.unwrap();

    // Overlapping CIDR in the same network.
    let e = c.run(Method::POST, Service::Vpc, "/vpc/v1/subnets", Some(&subnet("b", "10.1.2.0/24"))).await.unwrap_err();
    assert_eq!(api_code(&e), 3, "{e}");
    assert!(e.to_string().contains("overlaps"), "{e}");
    // Too small a range.
    let e = c.run(Method::POST, Service::Vpc, "/vpc/v1/subnets", Some(&subnet("c", "10.2.0.0/29"))).await.unwrap_err();
    assert_eq!(api_code(&e), 3, "{e}");

    // The published protos' rules, which the simulator's own checks do not
    // repeat: a network description longer than 256 characters.
    let long = json!({ "folderId": FOLDER, "name": "described", "description": "x".repeat(257) });
    let e = c.run(Method::POST, Service::Vpc, "/vpc/v1/networks", Some(&long)).await.unwrap_err();
    assert_eq!(api_code(&e), 3, "{e}");
    assert!(e.to_string().contains("description"), "{e}");

    // A core fraction standard-v3 does not offer; int64 given as a number is accepted.
    let instance = json!({
        "folderId": FOLDER, "name": "vm", "zoneId": "ru-central1-a", "platformId": "standard-v3",
        "resourcesSpec": {"memory": 2147483648u64, "cores": 2, "coreFraction": 5},
        "bootDiskSpec": {"diskSpec": {"size": "21474836480", "imageId": "fd8nothing"}},
        "networkInterfaceSpecs": [{"subnetId": "e9bnothing"}],
    });
    let e = c.run(Method::POST, Service::Compute, "/compute/v1/instances", Some(&instance)).await.unwrap_err();
    assert_eq!(api_code(&e), 3);
    assert!(
        e.to_string().contains(r#"core fraction is not available on platform "standard-v3"; allowed core fractions: 20, 50, 100"#),
        "{e}"
    );

    // Above 36 cores the protos allow only multiples of 4 (ResourcesSpec.cores).
    let mut instance = instance;
    instance["resourcesSpec"] = json!({"memory": (38u64 << 30).to_string(), "cores": "38", "coreFraction": "100"});
    let e = c.run(Method::POST, Service::Compute, "/compute/v1/instances", Some(&instance)).await.unwrap_err();
    assert_eq!(api_code(&e), 3, "{e}");
    assert!(e.to_string().contains("cores"), "{e}");

    // A network that still has a subnet cannot go.
    let e = c.run(Method::DELETE, Service::Vpc, &format!("/vpc/v1/networks/{network}"), None).await.unwrap_err();
    assert_eq!(api_code(&e), 9, "{e}");
    assert!(e.to_string().contains("request id"), "errors carry the request id: {e}");

    // Names are unique per folder.
    let e = c.run(Method::POST, Service::Vpc, "/vpc/v1/networks", Some(&json!({"folderId": FOLDER, "name": "net"}))).await.unwrap_err();
    assert!(e.is_already_exists(), "{e}");
    // The quota (2 networks) is reported as such.
    c.run(Method::POST, Service::Vpc, "/vpc/v1/networks", Some(&json!({"folderId": FOLDER, "name": "net2"}))).await.unwrap();
    let e = c.run(Method::POST, Service::Vpc, "/vpc/v1/networks", Some(&json!({"folderId": FOLDER, "name": "net3"}))).await.unwrap_err();
    assert_eq!(api_code(&e), 8);
    assert!(e.to_string().contains("vpc.networks.count"), "{e}");
    sim.stop().await;
}

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_operation() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(&dir).await;
    let token = token(&sim).await;
    let http = reqwest::Client::new();
    let key = uuid::Uuid::new_v4().to_string();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let op: Value = http
            .post(format!("{}/vpc/v1/networks", sim.endpoint()))
            .bearer_auth(&token)
            .header("Idempotency-Key", &key)
            .json(&json!({"folderId": FOLDER, "name": "once"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(op["id"].as_str().unwrap().to_string());
    }
    assert!(ids.iter().all(|i| i == &ids[0]), "{ids:?}");
    assert_eq!(sim.inventory().networks, vec!["once".to_string()]);

    // The operation is readable and done, with int64 metadata ids as strings.
    let op: Value = http.get(format!("{}/operations/{}", sim.endpoint(), ids[0])).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(op["done"], true);
    assert_eq!(op["metadata"]["@type"], "type.googleapis.com/yandex.cloud.vpc.v1.CreateNetworkMetadata");
    sim.stop().await;
}

#[tokio::test]
async fn lists_page_with_next_page_token() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(&dir).await;
    let c = client(&sim);
    let op = c.run(Method::POST, Service::Vpc, "/vpc/v1/networks", Some(&json!({"folderId": FOLDER, "name": "net"}))).await.unwrap();
    let network = op.resource_id("networkId").unwrap();
    for i in 0..5 {
        let body = json!({"folderId": FOLDER, "name": format!("s{i}"), "networkId": network, "zoneId": "ru-central1-a", "v4CidrBlocks": [format!("10.0.{i}.0/24")]});
        c.run(Method::POST, Service::Vpc, "/vpc/v1/subnets", Some(&body)).await.unwrap();
    }

    let mut names = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let mut query = vec![("folderId", FOLDER.to_string()), ("pageSize", "2".to_string())];
        if !page_token.is_empty() {
            query.push(("pageToken", page_token.clone()));
        }
        let page = c.get(Service::Vpc, "/vpc/v1/subnets", &query).await.unwrap();
        pages += 1;
        let items = page["subnets"].as_array().unwrap();
        assert!(items.len() <= 2);
        names.extend(items.iter().map(|s| s["name"].as_str().unwrap().to_string()));
        match page.get("nextPageToken").and_then(Value::as_str) {
            Some(t) if !t.is_empty() => page_token = t.to_string(),
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    names.sort();
    assert_eq!(names, ["s0", "s1", "s2", "s3", "s4"]);

    // The client follows the tokens by itself; a name filter narrows the list.
    assert_eq!(c.list(Service::Vpc, "/vpc/v1/subnets", "subnets", FOLDER, None).await.unwrap().len(), 5);
    let one = c.list(Service::Vpc, "/vpc/v1/subnets", "subnets", FOLDER, Some("name=\"s3\"")).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["v4CidrBlocks"][0], "10.0.3.0/24");
    sim.stop().await;
}

/// The simulator's own knobs (`/_sim/instances/…`, not the cloud's API): what
/// happens to an instance without an API call, answered in the protos' forms.
#[tokio::test]
async fn instance_knobs_set_a_status_fail_a_start_and_hold_a_delete() {
    let dir = tempfile::tempdir().unwrap();
    let sim = start(&dir).await;
    let c = client(&sim);
    let op = c.run(Method::POST, Service::Vpc, "/vpc/v1/networks", Some(&json!({"folderId": FOLDER, "name": "net"}))).await.unwrap();
    let network = op.resource_id("networkId").unwrap();
    let body = json!({"folderId": FOLDER, "name": "app", "networkId": network, "zoneId": "ru-central1-a", "v4CidrBlocks": ["10.1.0.0/24"]});
    let subnet = c.run(Method::POST, Service::Vpc, "/vpc/v1/subnets", Some(&body)).await.unwrap().resource_id("subnetId").unwrap();
    let image = c.get(Service::Compute, "/compute/v1/images:latestByFamily", &[("folderId", "standard-images".into()), ("family", "debian-12".into())]).await.unwrap();
    let instance = json!({
        "folderId": FOLDER, "name": "vm", "zoneId": "ru-central1-a", "platformId": "standard-v3",
        "resourcesSpec": {"memory": "2147483648", "cores": "2", "coreFraction": "100"},
        "bootDiskSpec": {"autoDelete": true, "diskSpec": {"size": "21474836480", "imageId": image["id"]}},
        "networkInterfaceSpecs": [{"subnetId": subnet}],
    });
    let id = c.run(Method::POST, Service::Compute, "/compute/v1/instances", Some(&instance)).await.unwrap().resource_id("instanceId").unwrap();
    let path = format!("/compute/v1/instances/{id}");
    let status = |v: Value| v["status"].as_str().unwrap_or_default().to_string();
    let http = reqwest::Client::new();
    let knob = |route: &str| http.post(format!("{}/_sim/instances/{id}/{route}", sim.endpoint())).send();

    // A status: only the ones no operation heads for, by their Instance.Status names.
    let refused = knob("status?status=SLEEPING").await.unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(refused.json::<Value>().await.unwrap()["code"], 3);
    let stopped = knob("status?status=STOPPED").await.unwrap();
    assert_eq!(status(stopped.json().await.unwrap()), "STOPPED");

    // A failing start: the Operation is done with a google.rpc.Status error; the instance stays STOPPED.
    assert!(knob("fail-start?times=1").await.unwrap().status().is_success());
    let start = c.mutate(Method::POST, Service::Compute, &format!("{path}:start"), Some(&json!({}))).await.unwrap();
    let e = c.wait(start.clone()).await.unwrap_err();
    assert!(e.to_string().contains("RESOURCE_EXHAUSTED"), "{e}");
    let op = c.get(Service::Operation, &format!("/operations/{}", start.id), &[]).await.unwrap();
    assert_eq!((op["done"].clone(), op["error"]["code"].clone(), op.get("response")), (json!(true), json!(8), None), "{op}");
    assert_eq!(status(c.get(Service::Compute, &path, &[]).await.unwrap()), "STOPPED");
    c.run(Method::POST, Service::Compute, &format!("{path}:start"), Some(&json!({}))).await.unwrap();
    assert_eq!(status(c.get(Service::Compute, &path, &[]).await.unwrap()), "RUNNING");

    // A held delete: DELETING until its time is up, then gone.
    assert!(knob("hold-delete?ms=400").await.unwrap().status().is_success());
    let started = std::time::Instant::now();
    let delete = c.mutate(Method::DELETE, Service::Compute, &path, None).await.unwrap();
    assert!(!delete.done);
    assert_eq!(status(c.get(Service::Compute, &path, &[]).await.unwrap()), "DELETING");
    c.wait(delete).await.unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(400));
    assert!(c.get(Service::Compute, &path, &[]).await.unwrap_err().is_not_found());
    sim.stop().await;
}
