//! Not Yandex Cloud: the simulator's own routes for tests, beside
//! `/_sim/inventory` (no latency, no auth, no faults, not counted). Each makes
//! happen to one instance what the real cloud does without an API call:
//!
//! - `POST /_sim/instances/{id}/status?status=STOPPED` — the guest powered
//!   off from inside (STOPPED), broke (ERROR) or crashed (CRASHED; the real
//!   platform restarts it by itself, here the test sets RUNNING when it wants);
//!   RUNNING brings it back. Only an instance no operation is changing.
//! - `POST /_sim/instances/{id}/fail-start?times=1` — its next `times`
//!   `:start` operations fail (the Operation ends with `error`, the instance
//!   stays STOPPED), as a start does when the zone lacks capacity.
//! - `POST /_sim/instances/{id}/hold-delete?ms=5000` — its delete operation
//!   runs that long, so it shows DELETING meanwhile, as a real delete does.
//!
//! Each answers the instance as `GET /compute/v1/instances/{id}` would.

use super::{Reply, Shared};
use crate::yandex::wire::{ApiError, ApiResult};
use axum::extract::{Path, Query, State};
use axum::Json;
use std::collections::HashMap;
use std::time::Duration;

/// The Instance.Status values a test may set: the ones no operation is heading for.
const SETTABLE: &[&str] = &["RUNNING", "STOPPED", "ERROR", "CRASHED"];

pub async fn set_status(State(sim): Shared, Path(id): Path<String>, Query(q): Query<HashMap<String, String>>) -> Reply {
    let status = q.get("status").map(String::as_str).unwrap_or_default();
    if !SETTABLE.contains(&status) {
        return Err(ApiError::field("status", format!("{status:?}: one of {}", SETTABLE.join(", "))));
    }
    sim.with_world(|w| {
        let current = w.instances.get(&id).ok_or_else(|| ApiError::not_found("Instance", &id))?.status.clone();
        if !SETTABLE.contains(&current.as_str()) {
            return Err(ApiError::precondition(format!("Instance {id} is {current}: an operation is changing it")));
        }
        w.set_instance_status(&id, status);
        instance(w, &id)
    })
    .map(Json)
}

pub async fn fail_start(State(sim): Shared, Path(id): Path<String>, Query(q): Query<HashMap<String, String>>) -> Reply {
    let times = number(&q, "times", 1)? as u32;
    sim.with_world(|w| {
        instance(w, &id)?;
        w.knobs.fail_starts(&id, times);
        instance(w, &id)
    })
    .map(Json)
}

pub async fn hold_delete(State(sim): Shared, Path(id): Path<String>, Query(q): Query<HashMap<String, String>>) -> Reply {
    let ms = number(&q, "ms", 5000)?;
    sim.with_world(|w| {
        instance(w, &id)?;
        w.knobs.hold_delete(&id, Duration::from_millis(ms));
        instance(w, &id)
    })
    .map(Json)
}

fn instance(w: &crate::yandex::state::World, id: &str) -> ApiResult<serde_json::Value> {
    w.instances.get(id).map(|i| i.to_json(false)).ok_or_else(|| ApiError::not_found("Instance", id))
}

fn number(q: &HashMap<String, String>, key: &str, default: u64) -> ApiResult<u64> {
    match q.get(key) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| ApiError::field(key, format!("{v:?} is not a whole number"))),
    }
}
