//! HTTP routes of the simulator and what every request goes through first:
//! latency, authentication, injected faults and idempotency keys.

mod compute;
mod iam;
mod sim;
mod vpc;

use super::wire::{ApiError, ApiResult, Code};
use super::Sim;
use axum::body::{to_bytes, Body};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use rand::Rng;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

pub type Shared = State<Arc<Sim>>;
pub type Reply = Result<Json<Value>, ApiError>;

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/iam/v1/tokens", post(iam::create_token))
        .route("/operations/{id}", get(get_operation))
        .route("/vpc/v1/networks", get(vpc::list_networks).post(vpc::create_network))
        .route("/vpc/v1/networks/{id}", get(vpc::get_network).patch(vpc::update_network).delete(vpc::delete_network))
        .route("/vpc/v1/subnets", get(vpc::list_subnets).post(vpc::create_subnet))
        .route("/vpc/v1/subnets/{id}", get(vpc::get_subnet).patch(vpc::update_subnet).delete(vpc::delete_subnet))
        .route("/vpc/v1/securityGroups", get(vpc::list_security_groups).post(vpc::create_security_group))
        .route(
            "/vpc/v1/securityGroups/{id}",
            get(vpc::get_security_group).patch(vpc::update_security_group).delete(vpc::delete_security_group),
        )
        .route("/vpc/v1/securityGroups/{id}/rules", patch(vpc::update_security_group_rules))
        .route("/compute/v1/images:latestByFamily", get(compute::latest_image_by_family))
        .route("/compute/v1/images/{id}", get(compute::get_image))
        .route("/compute/v1/disks", get(compute::list_disks))
        .route("/compute/v1/disks/{id}", get(compute::get_disk))
        .route("/compute/v1/instances", get(compute::list_instances).post(compute::create_instance))
        .route(
            // `{id}` also carries the custom verbs `…/{id}:stop`, `:start`, `:restart`.
            "/compute/v1/instances/{id}",
            get(compute::get_instance).patch(compute::update_instance).delete(compute::delete_instance).post(compute::instance_action),
        )
        .route("/compute/v1/instances/{id}/updateMetadata", post(compute::update_metadata))
        .route("/compute/v1/instances/{id}/updateNetworkInterface", patch(compute::update_network_interface))
        .route("/_sim/inventory", get(inventory))
        .route("/_sim/instances/{id}/status", post(sim::set_status))
        .route("/_sim/instances/{id}/fail-start", post(sim::fail_start))
        .route("/_sim/instances/{id}/hold-delete", post(sim::hold_delete))
        .fallback(|| async { ApiError::new(Code::NotFound, "Not Found: no such method") })
        .layer(middleware::from_fn_with_state(sim.clone(), gate))
        .with_state(sim)
}

/// Not part of the cloud's API: what the simulator holds and has done, for tests and benchmarks.
async fn inventory(State(sim): Shared) -> Json<super::Inventory> {
    Json(sim.inventory())
}

async fn get_operation(State(sim): Shared, Path(id): Path<String>) -> Reply {
    sim.with_world(|w| w.operation(&id)).map(Json)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    Unavailable,
    TooManyRequests,
    /// Do the work, then answer 503 as if the connection dropped the answer.
    LoseAnswer,
}

impl Sim {
    fn roll_fault(&self, mutating: bool) -> Fault {
        if self.faults <= 0.0 {
            return Fault::None;
        }
        let mut rng = self.fault_rng.lock().unwrap_or_else(|p| p.into_inner());
        if !rng.gen_bool(self.faults) {
            return Fault::None;
        }
        let fault = match rng.gen_range(0..3) {
            0 => Fault::Unavailable,
            1 => Fault::TooManyRequests,
            _ if mutating => Fault::LoseAnswer,
            _ => Fault::Unavailable,
        };
        let counter = if fault == Fault::LoseAnswer { &self.answers_lost } else { &self.faults_before };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        fault
    }
}

const MAX_BODY: usize = 4 << 20;

/// Latency, bearer token check, injected faults, idempotency keys, in that order.
async fn gate(State(sim): Shared, req: Request, next: Next) -> Response {
    // The simulator's own debug routes: no latency, no auth, no faults, not counted.
    if req.uri().path().starts_with("/_sim/") {
        return next.run(req).await;
    }
    sim.requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let request_id = uuid::Uuid::new_v4().to_string();
    if !sim.latency.is_zero() {
        tokio::time::sleep(sim.latency).await;
    }
    if let Some(recorded) = &sim.recorded {
        return record(&sim, recorded, req, next, &request_id).await;
    }
    let mut response = gate_inner(&sim, req, next, &request_id).await.unwrap_or_else(|e| e.into_response_with(&request_id));
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

/// The same, keeping the request and its answer.
async fn record(sim: &Arc<Sim>, recorded: &std::sync::Mutex<Vec<super::RecordedCall>>, req: Request, next: Next, request_id: &str) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = to_bytes(body, MAX_BODY).await.unwrap_or_default();
    let mut call = super::RecordedCall {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        status: 0,
        answer: Value::Null,
    };
    let req = Request::from_parts(parts, Body::from(bytes));
    let response = gate_inner(sim, req, next, request_id).await.unwrap_or_else(|e| e.into_response_with(request_id));
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, MAX_BODY).await.unwrap_or_default();
    call.status = parts.status.as_u16();
    call.answer = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if let Ok(mut list) = recorded.lock() {
        list.push(call);
    }
    let mut response = Response::from_parts(parts, Body::from(bytes));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

async fn gate_inner(sim: &Arc<Sim>, req: Request, next: Next, request_id: &str) -> ApiResult<Response> {
    let is_token_exchange = req.uri().path() == "/iam/v1/tokens";
    if !is_token_exchange {
        check_bearer(sim, &req)?;
    }
    let mutating = req.method() != Method::GET;
    let fault = sim.roll_fault(mutating);
    match fault {
        Fault::Unavailable => return Err(ApiError::new(Code::Unavailable, "Service is temporarily unavailable, try again later")),
        Fault::TooManyRequests => return Err(ApiError::new(Code::ResourceExhausted, "Too many requests, slow down")),
        Fault::None | Fault::LoseAnswer => {}
    }

    let idempotency_key = if mutating {
        req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string)
    } else {
        None
    };
    let (parts, body) = req.into_parts();
    let bytes = to_bytes(body, MAX_BODY).await.map_err(|e| ApiError::invalid(format!("cannot read request body: {e}")))?;
    // The REST gateway checks a request against the RPC's input message (its
    // names, types and the validation options) before the service sees it:
    // INVALID_ARGUMENT naming the field (Yandex Cloud API docs, "Errors").
    if let Some(definitions) = &sim.definitions {
        if let Some(problems) = definitions.verify_rest(parts.method.as_str(), parts.uri.path(), parts.uri.query(), &bytes) {
            if let Some(first) = problems.first() {
                let (field, description) = first.split_once(": ").unwrap_or(("request", first.as_str()));
                return Err(ApiError::field(field, description));
            }
        }
    }
    let fingerprint = {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (parts.method.as_str(), parts.uri.path(), bytes.as_ref()).hash(&mut h);
        format!("{:016x}", h.finish())
    };

    if let Some(key) = &idempotency_key {
        let replay = sim.with_world(|w| match w.idempotency.get(key) {
            Some((fp, _)) if *fp != fingerprint => {
                Err(ApiError::invalid(format!("Idempotency key {key} was already used for a different request")))
            }
            Some((_, op_id)) => w.operation(op_id).map(Some),
            None => Ok(None),
        })?;
        if let Some(op) = replay {
            return Ok(lose_if(fault, Json(op).into_response(), request_id));
        }
    }

    let response = next.run(Request::from_parts(parts, Body::from(bytes))).await;

    let Some(key) = idempotency_key else {
        return Ok(lose_if(fault, response, request_id));
    };
    if response.status() != StatusCode::OK {
        return Ok(lose_if(fault, response, request_id));
    }
    // Remember which Operation this key started, so a retry gets the same one.
    let (parts, body) = response.into_parts();
    let bytes = to_bytes(body, MAX_BODY).await.map_err(|e| ApiError::new(Code::Internal, e.to_string()))?;
    if let Some(op_id) = serde_json::from_slice::<Value>(&bytes).ok().and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string)) {
        sim.with_world(|w| w.idempotency.insert(key, (fingerprint, op_id)));
    }
    Ok(lose_if(fault, Response::from_parts(parts, Body::from(bytes)), request_id))
}

fn lose_if(fault: Fault, response: Response, request_id: &str) -> Response {
    if fault == Fault::LoseAnswer {
        ApiError::new(Code::Unavailable, "upstream connect error or disconnect/reset before headers").into_response_with(request_id)
    } else {
        response
    }
}

fn check_bearer(sim: &Sim, req: &Request) -> ApiResult<()> {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(ApiError::unauthenticated)?
        .trim()
        .to_string();
    let valid = sim.with_world(|w| w.tokens.get(&token).is_some_and(|exp| *exp > chrono::Utc::now()));
    if valid {
        Ok(())
    } else {
        Err(ApiError::unauthenticated())
    }
}

/// `?folderId=&pageSize=&pageToken=&filter=` of every List method.
pub struct ListQuery {
    pub folder_id: String,
    pub page_size: usize,
    pub page_token: Option<String>,
    pub filter: Vec<Condition>,
}

pub struct Condition {
    pub field: String,
    pub negate: bool,
    pub value: String,
}

impl ListQuery {
    pub fn parse(q: &HashMap<String, String>, filterable: &[&str]) -> ApiResult<ListQuery> {
        let folder_id = q.get("folderId").cloned().unwrap_or_default();
        if folder_id.is_empty() {
            return Err(ApiError::field("folder_id", "Field is required"));
        }
        let page_size = match q.get("pageSize").map(|s| s.parse::<i64>()) {
            None => 100,
            Some(Ok(0)) => 100,
            Some(Ok(n)) if (1..=1000).contains(&n) => n as usize,
            Some(_) => return Err(ApiError::field("page_size", "The value must be between 0 and 1000")),
        };
        let filter = match q.get("filter") {
            Some(f) if !f.trim().is_empty() => parse_filter(f, filterable)?,
            _ => Vec::new(),
        };
        Ok(ListQuery { folder_id, page_size, page_token: q.get("pageToken").filter(|t| !t.is_empty()).cloned(), filter })
    }

    /// Filter, then cut one page from items ordered by id (the API's default order).
    /// The page token is the last id of the previous page.
    pub fn page<'a, T: 'a>(
        &self,
        items: impl Iterator<Item = (&'a String, &'a T)>,
        field: impl Fn(&T, &str) -> String,
        to_json: impl Fn(&T) -> Value,
        plural: &str,
    ) -> Value {
        let mut matching = items
            .filter(|(id, _)| self.page_token.as_ref().is_none_or(|t| id.as_str() > t.as_str()))
            .filter(|(_, item)| self.filter.iter().all(|c| (field(item, &c.field) == c.value) != c.negate));
        let page: Vec<(&String, &T)> = matching.by_ref().take(self.page_size).collect();
        let more = matching.next().is_some();
        let mut out = json!({ plural: page.iter().map(|(_, item)| to_json(item)).collect::<Vec<_>>() });
        if more {
            if let Some((last, _)) = page.last() {
                out["nextPageToken"] = json!(last);
            }
        }
        out
    }
}

/// `name="pg-1" AND id!='x'`: conditions joined by AND, `=`/`!=`, quoted values.
fn parse_filter(text: &str, filterable: &[&str]) -> ApiResult<Vec<Condition>> {
    let bad = |why: &str| ApiError::field("filter", format!("invalid filter {text:?}: {why}"));
    let mut out = Vec::new();
    let mut rest = text.trim();
    loop {
        let field_end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.')).unwrap_or(rest.len());
        let field = &rest[..field_end];
        if field.is_empty() {
            return Err(bad("expected a field name"));
        }
        let canonical = match field {
            "zoneId" => "zone_id",
            "networkId" => "network_id",
            other => other,
        };
        if !filterable.contains(&canonical) {
            return Err(bad(&format!("filtering by {field} is not supported; use one of {}", filterable.join(", "))));
        }
        rest = rest[field_end..].trim_start();
        let negate = if let Some(r) = rest.strip_prefix("!=") {
            rest = r;
            true
        } else if let Some(r) = rest.strip_prefix('=') {
            rest = r;
            false
        } else {
            return Err(bad("expected = or !="));
        };
        rest = rest.trim_start();
        let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'').ok_or_else(|| bad("values must be quoted"))?;
        let mut value = String::new();
        let mut chars = rest[1..].char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => value.extend(chars.next().map(|(_, c)| c)),
                c if c == quote => {
                    end = Some(i + 2);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| bad("unterminated string"))?;
        out.push(Condition { field: canonical.to_string(), negate, value });
        rest = rest[end..].trim_start();
        if rest.is_empty() {
            return Ok(out);
        }
        match rest.get(..4) {
            Some(and) if and.eq_ignore_ascii_case("and ") => rest = rest[4..].trim_start(),
            _ => return Err(bad("conditions must be joined by AND")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let f = parse_filter(r#"name="pg-1" AND id != 'a\'b'"#, &["name", "id"]).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].value, "pg-1");
        assert!(f[1].negate);
        assert_eq!(f[1].value, "a'b");
        assert!(parse_filter("labels.x=\"y\"", &["name"]).is_err());
        assert!(parse_filter("name=pg", &["name"]).is_err());
    }
}
