//! `POST /iam/v1/tokens`: a signed JWT from the trusted service-account key
//! buys an IAM token valid for 12 hours.

use super::{Reply, Shared};
use crate::yandex::wire::{ApiError, Body};
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::json;

pub async fn create_token(State(sim): Shared, bytes: Bytes) -> Reply {
    let body = Body::parse(&bytes)?;
    let body = Body(&body);
    if body.get("yandexPassportOauthToken").is_some() {
        return Err(ApiError::invalid("the simulator accepts only service-account JWTs; pass {\"jwt\": ...}"));
    }
    let jwt = body.required_str("jwt")?;
    sim.trusted.verify(jwt)?;
    let token = format!("t1.{}", rand::thread_rng().sample_iter(&Alphanumeric).take(64).map(char::from).collect::<String>());
    let expires = chrono::Utc::now() + chrono::Duration::hours(12);
    sim.with_world(|w| w.tokens.insert(token.clone(), expires));
    Ok(Json(json!({
        "iamToken": token,
        "expiresAt": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })))
}
