//! Errors of the Yandex Cloud API, turned into messages a user can act on:
//! which call, which gRPC code, which field or quota, and the request id
//! support will ask for.

use serde_json::Value;
use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum YandexError {
    /// The API answered with an error status (`google.rpc.Status`).
    #[error("{0}")]
    Api(ApiError),
    /// An operation finished (or is rolling back) with an error.
    #[error("{what}: operation {operation_id} failed: {status}")]
    Operation { what: String, operation_id: String, status: ApiError },
    /// No answer at all (connection refused, reset, timed out).
    #[error("{what}: no answer from {url}: {message}")]
    Transport { what: String, url: String, message: String },
    /// A bounded wait (for an operation) that reached its limit.
    #[error(transparent)]
    TimedOut(#[from] crate::cloud::providers::poll::TimedOut),
    #[error("{0}")]
    Other(String),
}

impl YandexError {
    /// The gRPC code, when the API gave one.
    pub fn code(&self) -> Option<i32> {
        match self {
            YandexError::Api(e) | YandexError::Operation { status: e, .. } => Some(e.code),
            _ => None,
        }
    }
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(codes::NOT_FOUND)
    }
    pub fn is_already_exists(&self) -> bool {
        self.code() == Some(codes::ALREADY_EXISTS)
    }
}

pub mod codes {
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const NOT_FOUND: i32 = 5;
    pub const ALREADY_EXISTS: i32 = 6;
    pub const RESOURCE_EXHAUSTED: i32 = 8;
    pub const FAILED_PRECONDITION: i32 = 9;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// A `google.rpc.Status` with the details that matter pulled out.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// `POST /vpc/v1/networks`, or the operation's description.
    pub call: String,
    pub http_status: Option<u16>,
    pub code: i32,
    pub message: String,
    pub request_id: Option<String>,
    /// `(metric, description)` from QuotaFailure.
    pub quota_violations: Vec<(String, String)>,
    /// `(field, description)` from BadRequest.
    pub field_violations: Vec<(String, String)>,
}

impl ApiError {
    pub fn from_status(call: &str, http_status: Option<u16>, status: &Value, header_request_id: Option<String>) -> ApiError {
        let code = status.get("code").and_then(Value::as_i64).unwrap_or(2) as i32;
        let message = status.get("message").and_then(Value::as_str).unwrap_or("").to_string();
        let mut e = ApiError {
            call: call.to_string(),
            http_status,
            code,
            message,
            request_id: header_request_id,
            quota_violations: Vec::new(),
            field_violations: Vec::new(),
        };
        for d in status.get("details").and_then(Value::as_array).into_iter().flatten() {
            let ty = d.get("@type").and_then(Value::as_str).unwrap_or("");
            let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            if ty.ends_with("google.rpc.RequestInfo") {
                e.request_id = Some(s(d, "requestId"));
            } else if ty.ends_with("google.rpc.QuotaFailure") {
                for v in d.get("violations").and_then(Value::as_array).into_iter().flatten() {
                    e.quota_violations.push((s(v, "subject"), s(v, "description")));
                }
            } else if ty.ends_with("google.rpc.BadRequest") {
                for v in d.get("fieldViolations").and_then(Value::as_array).into_iter().flatten() {
                    e.field_violations.push((s(v, "field"), s(v, "description")));
                }
            }
        }
        e
    }

    /// A quota is exhausted: waiting will not help, unlike a rate limit.
    pub fn is_quota(&self) -> bool {
        !self.quota_violations.is_empty() || self.message.starts_with("Quota limit")
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.call, code_name(self.code))?;
        if let Some(h) = self.http_status {
            write!(f, " (HTTP {h})")?;
        }
        write!(f, ": {}", self.message)?;
        for (field, d) in &self.field_violations {
            if !self.message.contains(d.as_str()) {
                write!(f, "; field {field}: {d}")?;
            }
        }
        if self.is_quota() {
            let metrics: Vec<&str> = self.quota_violations.iter().map(|(m, _)| m.as_str()).collect();
            let which = if metrics.is_empty() { String::new() } else { format!(" ({})", metrics.join(", ")) };
            write!(f, "; the cloud's quota{which} is used up: delete unused resources or request a quota increase in the console")?;
        } else if self.code == codes::RESOURCE_EXHAUSTED && self.message.contains("active operations") {
            write!(f, "; too many operations are running in the folder: lower --parallelism or wait")?;
        } else if self.code == codes::UNAUTHENTICATED {
            write!(f, "; check the service account key file or YC_TOKEN (IAM tokens expire after 12 hours)")?;
        } else if self.code == 7 {
            write!(f, "; the service account needs a role on the folder (e.g. editor, or vpc.admin and compute.admin)")?;
        }
        if let Some(id) = &self.request_id {
            write!(f, " [request id {id}]")?;
        }
        Ok(())
    }
}
