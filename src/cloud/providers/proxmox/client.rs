//! A small api2/json client: API token or ticket + CSRF authentication, the
//! `{"data":…}` envelope, errors from the body's `message`/`errors` or the
//! status line's reason phrase, a limit on concurrent writes (pvedaemon has 3
//! workers), and retries with backoff on timeouts, lock errors and 5xx — never
//! on 400 parameter errors.

use super::tls::{self, TlsMode};
use rand::Rng;
use reqwest::Method;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore};

#[derive(Clone)]
pub enum Auth {
    /// `USER@REALM!TOKENID` and its secret.
    Token { id: String, secret: String },
    /// `POST /access/ticket` with a password; writes carry the CSRF token.
    Password { username: String, password: String },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Token { id, .. } => write!(f, "Token({id})"),
            Auth::Password { username, .. } => write!(f, "Password({username})"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `https://pve:8006` (with or without `/api2/json`).
    pub endpoint: String,
    pub auth: Auth,
    pub tls: TlsMode,
    /// Concurrent POST/PUT/DELETE requests.
    pub max_parallel_writes: usize,
    /// Attempts for one request before its error is returned.
    pub max_attempts: u32,
    pub request_timeout: Duration,
    /// How long a task may run before waiting for it fails.
    pub task_timeout: Duration,
}

impl ClientOptions {
    pub fn new(endpoint: impl Into<String>, auth: Auth, tls: TlsMode) -> ClientOptions {
        ClientOptions {
            endpoint: endpoint.into(),
            auth,
            tls,
            max_parallel_writes: 3,
            max_attempts: 6,
            request_timeout: Duration::from_secs(60),
            task_timeout: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Proxmox {method} {path}: {status} {message}{}", field_errors(.errors))]
    Status { method: String, path: String, status: u16, message: String, errors: BTreeMap<String, String> },
    #[error("Proxmox {method} {path}: {detail}")]
    Transport { method: String, path: String, detail: String },
    /// The server's certificate was refused (wrong pinned fingerprint, untrusted): never retried.
    #[error("Proxmox {method} {path}: TLS: {detail}")]
    Tls { method: String, path: String, detail: String },
    #[error("Proxmox task {upid} failed: {exitstatus}{}", log_tail(.log))]
    TaskFailed { upid: String, exitstatus: String, log: Vec<String> },
    /// A task still running when the wait for it (`task_timeout`) ended.
    #[error(transparent)]
    TaskTimeout(#[from] crate::cloud::providers::poll::TimedOut),
    #[error("Proxmox {path}: unexpected answer: {detail}")]
    Decode { path: String, detail: String },
    #[error("Proxmox client setup: {0}")]
    Setup(String),
}

fn field_errors(errors: &BTreeMap<String, String>) -> String {
    errors.iter().map(|(k, v)| format!("\n  {k}: {}", v.trim_end())).collect()
}

fn log_tail(log: &[String]) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!("\n  task log (last lines):\n    {}", log.join("\n    "))
    }
}

/// Messages of 5xx answers that will not change on retry.
const PERMANENT: &[&str] = &[
    "already exists",
    "already running",
    "not running",
    "does not exist",
    "is running",
    "shrink",
    "permission check failed",
    "no such cluster node",
    "hostname lookup",
    "not supported",
    "template",
    "unable to modify",
    // A file the guest agent was asked to read (agent/file-read).
    "no such file or directory",
];

impl ApiError {
    /// The server's message (or the task's exit status).
    pub fn message(&self) -> String {
        match self {
            ApiError::Status { message, .. } => message.clone(),
            ApiError::TaskFailed { exitstatus, .. } => exitstatus.clone(),
            other => other.to_string(),
        }
    }

    /// The message or any per-parameter error mentions `needle`. PVE reports a
    /// parameter exception (pve-common `raise_param_exc`) as 400 `Parameter
    /// verification failed.` with the detail only in the `errors` map.
    pub fn mentions(&self, needle: &str) -> bool {
        let needle = needle.to_ascii_lowercase();
        let in_errors = match self {
            ApiError::Status { errors, .. } => errors.values().any(|e| e.to_ascii_lowercase().contains(&needle)),
            _ => false,
        };
        in_errors || self.message().to_ascii_lowercase().contains(&needle)
    }

    /// The task index does not list this UPID (yet). pve-manager's
    /// PVE/API2/Tasks.pm answers a status/log query for a task whose file is
    /// not there with `raise_param_exc({ upid => "no such task" })`: HTTP 400,
    /// reason `Parameter verification failed.`, body
    /// `{"data":null,"errors":{"upid":"no such task"}}`. Older stand-ins (and
    /// this project's simulator before it followed PVE) put the text in the
    /// status line instead; both forms are accepted.
    pub fn is_unknown_task(&self) -> bool {
        match self {
            ApiError::Status { status: 400, message, errors, .. } => {
                errors.get("upid").is_some_and(|e| e.contains("no such task")) || message.contains("no such task")
            }
            _ => false,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// `Configuration file '…' does not exist`.
    pub fn is_missing_guest(&self) -> bool {
        self.mentions("does not exist") && self.mentions("configuration file")
    }

    /// Worth another try after a pause: timeouts, lock contention, 5xx, lost connections.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Transport { .. } => true,
            ApiError::Status { status, .. } => {
                let message = self.message().to_ascii_lowercase();
                if message.contains("got timeout") || message.contains("can't lock file") || message.contains("is locked") {
                    return true;
                }
                *status >= 500 && *status != 501 && !PERMANENT.iter().any(|p| message.contains(p))
            }
            _ => false,
        }
    }
}

struct Ticket {
    ticket: String,
    csrf: String,
    obtained: Instant,
}

/// Renew well before the 2 h lifetime.
const TICKET_RENEW_AFTER: Duration = Duration::from_secs(90 * 60);

pub struct ProxmoxClient {
    http: reqwest::Client,
    base: String,
    auth: Auth,
    ticket: Mutex<Option<Ticket>>,
    writes: Semaphore,
    options: ClientOptions,
}

impl ProxmoxClient {
    pub fn new(options: ClientOptions) -> Result<ProxmoxClient, ApiError> {
        let mut builder = reqwest::Client::builder()
            .http1_only()
            // pveproxy drops idle keep-alive connections after 5 s: drop ours first.
            .pool_idle_timeout(Duration::from_secs(3))
            .connect_timeout(Duration::from_secs(10))
            .timeout(options.request_timeout)
            .user_agent(concat!("rigger/", env!("CARGO_PKG_VERSION")));
        if let Some(config) = tls::client_config(&options.tls).map_err(|e| ApiError::Setup(e.to_string()))? {
            builder = builder.use_preconfigured_tls(config);
        }
        let http = builder.build().map_err(|e| ApiError::Setup(e.to_string()))?;
        let endpoint = options.endpoint.trim_end_matches('/');
        let base = if endpoint.ends_with("/api2/json") { endpoint.to_string() } else { format!("{endpoint}/api2/json") };
        Ok(ProxmoxClient {
            http,
            base,
            auth: options.auth.clone(),
            ticket: Mutex::new(None),
            writes: Semaphore::new(options.max_parallel_writes.max(1)),
            options,
        })
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Who PVE records as the user of the tasks this client starts (a
    /// UPID's user field): the API token `USER@REALM!TOKENID`, or the user.
    pub fn identity(&self) -> &str {
        match &self.options.auth {
            Auth::Token { id, .. } => id,
            Auth::Password { username, .. } => username,
        }
    }

    pub async fn get(&self, path: &str, params: &[(&str, String)]) -> Result<Value, ApiError> {
        self.call(Method::GET, path, params).await
    }
    pub async fn post(&self, path: &str, params: &[(&str, String)]) -> Result<Value, ApiError> {
        self.call(Method::POST, path, params).await
    }
    pub async fn put(&self, path: &str, params: &[(&str, String)]) -> Result<Value, ApiError> {
        self.call(Method::PUT, path, params).await
    }
    pub async fn delete(&self, path: &str, params: &[(&str, String)]) -> Result<Value, ApiError> {
        self.call(Method::DELETE, path, params).await
    }

    /// One API call with retries; returns the envelope's `data`.
    pub async fn call(&self, method: Method, path: &str, params: &[(&str, String)]) -> Result<Value, ApiError> {
        let is_write = method != Method::GET;
        let mut attempt = 1;
        loop {
            let result = {
                let _permit = if is_write { self.writes.acquire().await.ok() } else { None };
                self.call_once(&method, path, params).await
            };
            match result {
                Err(e) if e.is_retryable() && attempt < self.options.max_attempts => {
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
                Err(ApiError::Status { status: 401, .. }) if attempt == 1 && matches!(self.auth, Auth::Password { .. }) => {
                    // The ticket may have expired: log in again once.
                    *self.ticket.lock().await = None;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn call_once(&self, method: &Method, path: &str, params: &[(&str, String)]) -> Result<Value, ApiError> {
        let url = format!("{}{}", self.base, path);
        let mut request = self.http.request(method.clone(), &url);
        request = if *method == Method::GET || *method == Method::DELETE { request.query(params) } else { request.form(params) };
        request = match &self.auth {
            Auth::Token { id, secret } => request.header("Authorization", format!("PVEAPIToken={id}={secret}")),
            Auth::Password { .. } => {
                let (ticket, csrf) = self.ticket().await?;
                let request = request.header("Cookie", format!("PVEAuthCookie={ticket}"));
                if *method == Method::GET {
                    request
                } else {
                    request.header("CSRFPreventionToken", csrf)
                }
            }
        };
        let response = request.send().await.map_err(|e| transport(method, path, e))?;
        decode(method, path, response).await
    }

    async fn ticket(&self) -> Result<(String, String), ApiError> {
        let Auth::Password { username, password } = &self.auth else {
            return Err(ApiError::Setup("no password configured".into()));
        };
        let mut guard = self.ticket.lock().await;
        if let Some(t) = guard.as_ref().filter(|t| t.obtained.elapsed() < TICKET_RENEW_AFTER) {
            return Ok((t.ticket.clone(), t.csrf.clone()));
        }
        let path = "/access/ticket";
        let form = [("username", username.clone()), ("password", password.clone())];
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .form(&form)
            .send()
            .await
            .map_err(|e| transport(&Method::POST, path, e))?;
        let data = decode(&Method::POST, path, response).await?;
        let field = |name: &str| {
            data.get(name).and_then(Value::as_str).map(str::to_string).ok_or_else(|| ApiError::Decode {
                path: path.into(),
                detail: format!("no {name} in the login answer"),
            })
        };
        let ticket = Ticket { ticket: field("ticket")?, csrf: field("CSRFPreventionToken")?, obtained: Instant::now() };
        let pair = (ticket.ticket.clone(), ticket.csrf.clone());
        *guard = Some(ticket);
        Ok(pair)
    }
}

fn transport(method: &Method, path: &str, error: reqwest::Error) -> ApiError {
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        detail.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    let lower = detail.to_ascii_lowercase();
    if lower.contains("certificate") || lower.contains("fingerprint") {
        return ApiError::Tls { method: method.to_string(), path: path.into(), detail };
    }
    ApiError::Transport { method: method.to_string(), path: path.into(), detail }
}

async fn decode(method: &Method, path: &str, response: reqwest::Response) -> Result<Value, ApiError> {
    let status = response.status();
    let reason = response
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
        .or_else(|| status.canonical_reason().map(str::to_string))
        .unwrap_or_default();
    let body = response.bytes().await.map_err(|e| transport(method, path, e))?;
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    if status.is_success() {
        let json = json.ok_or_else(|| ApiError::Decode { path: path.into(), detail: "body is not JSON".into() })?;
        return Ok(json.get("data").cloned().unwrap_or(Value::Null));
    }
    let message = json
        .as_ref()
        .and_then(|j| j.get("message"))
        .and_then(Value::as_str)
        .map(|m| m.trim_end().to_string())
        .filter(|m| !m.is_empty())
        .unwrap_or(reason);
    let errors = json
        .as_ref()
        .and_then(|j| j.get("errors"))
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Err(ApiError::Status { method: method.to_string(), path: path.into(), status: status.as_u16(), message, errors })
}

/// 250 ms, 500 ms, 1 s, … up to 8 s, with jitter so parallel workers spread out.
pub fn backoff(attempt: u32) -> Duration {
    let base = 250u64.saturating_mul(1 << attempt.min(5).saturating_sub(1)).min(8000);
    let jitter = rand::thread_rng().gen_range(0..=base / 2);
    Duration::from_millis(base + jitter)
}

/// Accept integers sent as numbers or strings.
pub fn as_u64(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16, message: &str) -> ApiError {
        ApiError::Status { method: "POST".into(), path: "/x".into(), status: code, message: message.into(), errors: BTreeMap::new() }
    }

    #[test]
    fn retry_classification() {
        assert!(status(500, "got timeout").is_retryable());
        assert!(status(500, "can't lock file '/var/lock/qemu-server/lock-9000.conf' - got timeout").is_retryable());
        assert!(status(500, "CT is locked (create)").is_retryable());
        assert!(status(503, "Service Unavailable").is_retryable());
        assert!(!status(400, "Parameter verification failed.").is_retryable());
        assert!(!status(500, "CT 100 already running").is_retryable());
        assert!(!status(501, "Method 'GET /x' not implemented").is_retryable());
    }

    #[test]
    fn unknown_task_in_both_forms() {
        let pve = ApiError::Status {
            method: "GET".into(),
            path: "/nodes/pve/tasks/UPID:x/status".into(),
            status: 400,
            message: "Parameter verification failed.".into(),
            errors: [("upid".to_string(), "no such task".to_string())].into(),
        };
        assert!(pve.is_unknown_task());
        assert!(pve.mentions("no such task"));
        assert!(!pve.is_retryable());
        assert!(status(400, "no such task").is_unknown_task());
        assert!(!status(400, "Parameter verification failed.").is_unknown_task());
        assert!(!status(500, "no such task").is_unknown_task());
    }
}
