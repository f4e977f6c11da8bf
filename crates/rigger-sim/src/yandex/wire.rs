//! Wire conventions of the Yandex Cloud REST API as the simulator speaks them:
//! gRPC status codes mapped to HTTP statuses with `{code,message,details}` bodies,
//! int64 values written as strings, request fields read leniently (proto3 JSON
//! accepts int64 as a string or a number).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serializer;
use serde_json::{json, Value};

/// The gRPC codes the API uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    InvalidArgument = 3,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl Code {
    pub fn http_status(self) -> StatusCode {
        match self {
            Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

/// An error as the API reports it, both as an HTTP answer and inside a failed Operation.
#[derive(Clone, Debug)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    /// Extra `google.rpc.*` details (QuotaFailure, BadRequest); RequestInfo is added on the way out.
    pub details: Vec<Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ApiError { code, message: message.into(), details: Vec::new() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
    /// INVALID_ARGUMENT naming the offending field the way `google.rpc.BadRequest` does.
    pub fn field(field: &str, description: impl Into<String>) -> Self {
        let description = description.into();
        let mut e = Self::new(Code::InvalidArgument, format!("Request validation error: {field}: {description}"));
        e.details.push(json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": field, "description": description}],
        }));
        e
    }
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(Code::NotFound, format!("{what} {id} not found"))
    }
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FailedPrecondition, message)
    }
    pub fn quota(metric: &str, limit: u64) -> Self {
        let mut e = Self::new(Code::ResourceExhausted, format!("Quota limit {metric} exceeded"));
        e.details.push(json!({
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"subject": metric, "description": format!("The limit on {metric} has exceeded. Current limit: {limit}")}],
        }));
        e
    }
    pub fn unauthenticated() -> Self {
        Self::new(Code::Unauthenticated, "Token is invalid or has expired.")
    }

    /// The `google.rpc.Status` JSON, with a RequestInfo detail.
    pub fn to_status(&self, request_id: &str) -> Value {
        let mut details = self.details.clone();
        details.push(json!({"@type": "type.googleapis.com/google.rpc.RequestInfo", "requestId": request_id}));
        json!({"code": self.code as i32, "message": self.message, "details": details})
    }

    pub fn into_response_with(self, request_id: &str) -> Response {
        (self.code.http_status(), Json(self.to_status(request_id))).into_response()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = uuid::Uuid::new_v4().to_string();
        self.into_response_with(&request_id)
    }
}

/// Serialize an integer the way proto3 JSON writes int64: as a string.
pub fn int64<S: Serializer, T: ToString>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&v.to_string())
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Read access to a request body, with errors that name the field.
pub struct Body<'a>(pub &'a Value);

impl<'a> Body<'a> {
    pub fn parse(bytes: &[u8]) -> ApiResult<Value> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(json!({}));
        }
        let v: Value = serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("Invalid JSON payload: {e}")))?;
        if !v.is_object() {
            return Err(ApiError::invalid("Invalid JSON payload: expected an object"));
        }
        Ok(v)
    }
    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }
    pub fn child(&self, key: &str) -> Body<'a> {
        static EMPTY: Value = Value::Null;
        Body(self.get(key).unwrap_or(&EMPTY))
    }
    pub fn str(&self, key: &str) -> ApiResult<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(ApiError::field(key, "must be a string")),
        }
    }
    pub fn str_or_empty(&self, key: &str) -> ApiResult<&'a str> {
        Ok(self.str(key)?.unwrap_or(""))
    }
    pub fn required_str(&self, key: &str) -> ApiResult<&'a str> {
        match self.str(key)? {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(ApiError::field(key, "Field is required")),
        }
    }
    /// int64 given as a JSON string or number (proto3 JSON accepts both).
    pub fn int64(&self, key: &str) -> ApiResult<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(|| ApiError::field(key, "must be an integer")),
            Some(Value::String(s)) => s.trim().parse::<i64>().map(Some).map_err(|_| ApiError::field(key, format!("invalid int64 value {s:?}"))),
            Some(_) => Err(ApiError::field(key, "must be an integer")),
        }
    }
    pub fn bool(&self, key: &str) -> ApiResult<bool> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(ApiError::field(key, "must be a boolean")),
        }
    }
    pub fn str_list(&self, key: &str) -> ApiResult<Vec<String>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string).ok_or_else(|| ApiError::field(key, "must be a list of strings")))
                .collect(),
            Some(_) => Err(ApiError::field(key, "must be a list")),
        }
    }
    pub fn str_map(&self, key: &str) -> ApiResult<std::collections::BTreeMap<String, String>> {
        match self.get(key) {
            None => Ok(Default::default()),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())).ok_or_else(|| ApiError::field(&format!("{key}.{k}"), "must be a string")))
                .collect(),
            Some(_) => Err(ApiError::field(key, "must be a map of strings")),
        }
    }
    pub fn list(&self, key: &str) -> ApiResult<Vec<Body<'a>>> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => Ok(items.iter().map(Body).collect()),
            Some(_) => Err(ApiError::field(key, "must be a list")),
        }
    }
    /// `updateMask` as the comma-separated field paths of a FieldMask.
    pub fn update_mask(&self) -> ApiResult<Vec<String>> {
        Ok(self
            .str("updateMask")?
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect())
    }
}
