//! The REST client: endpoints per service (or one base URL), IAM token cache,
//! idempotency keys, retries with jittered backoff, paging.

use super::auth::Credentials;
use super::error::{codes, ApiError, YandexError};
use super::operations::Operation;
use crate::cloud::providers::poll::{Backoff, Check, Waiting};
use rand::Rng;
use reqwest::Method;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

pub type Result<T, E = YandexError> = std::result::Result<T, E>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Iam,
    Vpc,
    Compute,
    Operation,
}

impl Service {
    fn host(self) -> &'static str {
        match self {
            Service::Iam => "https://iam.api.cloud.yandex.net",
            Service::Vpc => "https://vpc.api.cloud.yandex.net",
            Service::Compute => "https://compute.api.cloud.yandex.net",
            Service::Operation => "https://operation.api.cloud.yandex.net",
        }
    }
}

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per call, the first included.
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 10, base_delay: Duration::from_millis(200), max_delay: Duration::from_secs(10) }
    }
}

impl RetryPolicy {
    /// Full jitter: a random wait up to base·2^attempt, capped.
    fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.base_delay.saturating_mul(1u32 << attempt.min(16)).min(self.max_delay);
        let ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms))
    }
}

/// How often and how long to poll an operation.
#[derive(Clone, Debug)]
pub struct PollPolicy {
    pub first: Duration,
    pub max: Duration,
    pub timeout: Duration,
}

impl Default for PollPolicy {
    fn default() -> Self {
        PollPolicy { first: Duration::from_millis(100), max: Duration::from_secs(3), timeout: Duration::from_secs(30 * 60) }
    }
}

impl PollPolicy {
    /// A bounded wait: from `first`, backing off up to `max`, for at most `limit`.
    pub fn backoff(&self, first: Duration, limit: Duration) -> Backoff {
        Backoff { first, max: self.max, limit }
    }
}

struct CachedToken {
    token: String,
    refresh_at: Instant,
}

pub struct YandexClient {
    http: reqwest::Client,
    endpoint: Option<String>,
    credentials: Credentials,
    token: tokio::sync::Mutex<Option<CachedToken>>,
    pub retry: RetryPolicy,
    pub poll: PollPolicy,
}

/// One request, kept whole so a retry sends exactly the same thing (same idempotency key).
struct Call<'a> {
    method: Method,
    service: Service,
    path: &'a str,
    query: &'a [(&'a str, String)],
    body: Option<&'a Value>,
    idempotency_key: Option<String>,
    authenticated: bool,
}

impl Call<'_> {
    fn describe(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

enum Attempt {
    Done(Value),
    Retry(YandexError),
    Fail(YandexError),
}

impl YandexClient {
    /// `endpoint`: one base URL for every service (the simulator); None = the real hosts.
    pub fn new(credentials: Credentials, endpoint: Option<String>) -> anyhow::Result<YandexClient> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("rigger/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(YandexClient {
            http,
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_string()),
            credentials,
            token: tokio::sync::Mutex::new(None),
            retry: RetryPolicy::default(),
            poll: PollPolicy::default(),
        })
    }

    fn url(&self, service: Service, path: &str) -> String {
        format!("{}{}", self.endpoint.as_deref().unwrap_or(service.host()), path)
    }

    /// A valid IAM token, exchanged from a fresh JWT when the cached one is due.
    async fn iam_token(&self) -> Result<String> {
        let key = match &self.credentials {
            Credentials::IamToken(t) => return Ok(t.clone()),
            Credentials::ServiceAccount(key) => key,
        };
        let mut cached = self.token.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| Instant::now() < c.refresh_at) {
            return Ok(c.token.clone());
        }
        let jwt = key.jwt(chrono::Utc::now().timestamp()).map_err(|e| YandexError::Other(format!("{e:#}")))?;
        let body = json!({ "jwt": jwt });
        // Boxed: the exchange goes through `execute`, which asks for tokens itself.
        let answer = Box::pin(self.execute(Call {
                method: Method::POST,
                service: Service::Iam,
                path: "/iam/v1/tokens",
                query: &[],
                body: Some(&body),
                idempotency_key: None,
                authenticated: false,
            }))
            .await?;
        let token = answer
            .get("iamToken")
            .and_then(Value::as_str)
            .ok_or_else(|| YandexError::Other("POST /iam/v1/tokens: the answer has no iamToken".into()))?
            .to_string();
        // Tokens live up to 12 hours; refresh hourly as the SDKs do, or earlier if told so.
        let mut lifetime = Duration::from_secs(3600);
        if let Some(expires) = answer.get("expiresAt").and_then(Value::as_str).and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok()) {
            let left = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).to_std().unwrap_or_default();
            lifetime = lifetime.min(left.saturating_sub(Duration::from_secs(300)).max(Duration::from_secs(30)));
        }
        *cached = Some(CachedToken { token: token.clone(), refresh_at: Instant::now() + lifetime });
        Ok(token)
    }

    async fn forget_token(&self) {
        *self.token.lock().await = None;
    }

    /// One call with retries. Reads are also retried on INTERNAL (they are safe to repeat);
    /// writes repeat with the same idempotency key, so the server does the work once.
    async fn execute(&self, call: Call<'_>) -> Result<Value> {
        let mut attempt = 0;
        let mut renewed_token = false;
        loop {
            let outcome = self.attempt(&call).await;
            let error = match outcome {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fail(e) => {
                    // An expired token: get a new one once, then repeat.
                    if e.code() == Some(codes::UNAUTHENTICATED) && call.authenticated && !renewed_token && matches!(self.credentials, Credentials::ServiceAccount(_)) {
                        renewed_token = true;
                        self.forget_token().await;
                        continue;
                    }
                    return Err(e);
                }
                Attempt::Retry(e) => e,
            };
            attempt += 1;
            if attempt >= self.retry.attempts {
                return Err(error);
            }
            tracing::debug!(call = %call.describe(), attempt, error = %error, "retrying");
            tokio::time::sleep(self.retry.delay(attempt)).await;
        }
    }

    async fn attempt(&self, call: &Call<'_>) -> Attempt {
        let url = self.url(call.service, call.path);
        let mut req = self.http.request(call.method.clone(), &url).query(call.query);
        if call.authenticated {
            match self.iam_token().await {
                Ok(token) => req = req.bearer_auth(token),
                Err(e) => return Attempt::Fail(e),
            }
        }
        if let Some(key) = &call.idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        if let Some(body) = call.body {
            req = req.json(body);
        }
        let response = match req.send().await {
            Ok(r) => r,
            Err(e) => return Attempt::Retry(YandexError::Transport { what: call.describe(), url, message: e.to_string() }),
        };
        let status = response.status();
        let header_request_id = ["x-request-id", "x-server-trace-id"]
            .iter()
            .find_map(|h| response.headers().get(*h).and_then(|v| v.to_str().ok()).map(str::to_string));
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) => return Attempt::Retry(YandexError::Transport { what: call.describe(), url, message: e.to_string() }),
        };
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        if status.is_success() {
            return match parsed {
                Some(v) => Attempt::Done(v),
                None if text.trim().is_empty() => Attempt::Done(json!({})),
                None => Attempt::Fail(YandexError::Other(format!("{}: the answer is not JSON: {}", call.describe(), snippet(&text)))),
            };
        }
        let status_body = parsed.filter(|v| v.get("code").is_some()).unwrap_or_else(|| {
            // A proxy's answer without a gRPC status: derive the code from HTTP.
            let code = match status.as_u16() {
                400 => codes::INVALID_ARGUMENT,
                401 => codes::UNAUTHENTICATED,
                403 => 7,
                404 => codes::NOT_FOUND,
                409 => codes::ALREADY_EXISTS,
                429 => codes::RESOURCE_EXHAUSTED,
                502..=504 => codes::UNAVAILABLE,
                _ => codes::INTERNAL,
            };
            json!({"code": code, "message": snippet(&text)})
        });
        let error = ApiError::from_status(&call.describe(), Some(status.as_u16()), &status_body, header_request_id);
        let retryable = match error.code {
            codes::UNAVAILABLE => true,
            // A rate limit or the active-operations limit clears by itself; a quota does not.
            codes::RESOURCE_EXHAUSTED => !error.is_quota(),
            codes::INTERNAL => call.method == Method::GET,
            _ => false,
        };
        if retryable {
            Attempt::Retry(YandexError::Api(error))
        } else {
            Attempt::Fail(YandexError::Api(error))
        }
    }

    pub async fn get(&self, service: Service, path: &str, query: &[(&str, String)]) -> Result<Value> {
        self.execute(Call { method: Method::GET, service, path, query, body: None, idempotency_key: None, authenticated: true }).await
    }

    /// Every item of a List call, following `nextPageToken` until it is empty.
    pub async fn list(&self, service: Service, path: &str, plural: &str, folder_id: &str, filter: Option<&str>) -> Result<Vec<Value>> {
        let mut items = Vec::new();
        let mut page_token = String::new();
        loop {
            let mut query = vec![("folderId", folder_id.to_string()), ("pageSize", "1000".to_string())];
            if let Some(f) = filter {
                query.push(("filter", f.to_string()));
            }
            if !page_token.is_empty() {
                query.push(("pageToken", page_token.clone()));
            }
            let page = self.get(service, path, &query).await?;
            items.extend(page.get(plural).and_then(Value::as_array).into_iter().flatten().cloned());
            match page.get("nextPageToken").and_then(Value::as_str) {
                Some(t) if !t.is_empty() && t != page_token => page_token = t.to_string(),
                _ => return Ok(items),
            }
        }
    }

    /// Start a change; the answer is an Operation. The idempotency key is made
    /// once here and reused by every retry of this call.
    pub async fn mutate(&self, method: Method, service: Service, path: &str, body: Option<&Value>) -> Result<Operation> {
        let key = uuid::Uuid::new_v4().to_string();
        let describe = format!("{method} {path}");
        let answer = self
            .execute(Call { method, service, path, query: &[], body, idempotency_key: Some(key), authenticated: true })
            .await?;
        Operation::from_json(&answer).ok_or_else(|| YandexError::Other(format!("{describe}: the answer is not an Operation: {}", snippet(&answer.to_string()))))
    }

    /// Start a change and wait until its operation is done.
    pub async fn run(&self, method: Method, service: Service, path: &str, body: Option<&Value>) -> Result<Operation> {
        let op = self.mutate(method, service, path, body).await?;
        self.wait(op).await
    }

    /// Poll `GET /operations/{id}` until `done` (fast at first, then backing off).
    /// An `error` fails the wait even while the operation still runs (a rollback).
    pub async fn wait(&self, op: Operation) -> Result<Operation> {
        let waited_for = format!("{} to finish", op.description);
        let path = format!("/operations/{}", op.id);
        // The first look is at the operation in hand; later ones read it anew.
        let in_hand = std::sync::Mutex::new(Some(op));
        let waiting = Waiting { for_what: &waited_for, advice: Some("it may still finish: re-run to pick up its result") };
        self.poll.backoff(self.poll.first, self.poll.timeout).until(waiting, || async {
            let held = in_hand.lock().map(|mut h| h.take()).unwrap_or_default();
            let op = match held {
                Some(op) => op,
                None => {
                    let answer = self.get(Service::Operation, &path, &[]).await?;
                    Operation::from_json(&answer).ok_or_else(|| YandexError::Other(format!("GET {path}: the answer is not an Operation")))?
                }
            };
            if let Some(status) = &op.error {
                return Err(YandexError::Operation {
                    what: op.description.clone(),
                    operation_id: op.id.clone(),
                    status: ApiError::from_status(&op.description, None, status, None),
                });
            }
            if op.done {
                return Ok(Check::Done(op));
            }
            Ok(Check::NotYet(format!("operation {} is still running", op.id)))
        })
        .await
    }
}

fn snippet(text: &str) -> String {
    let t = text.trim();
    if t.len() > 300 {
        format!("{}…", &t[..t.char_indices().nth(300).map(|(i, _)| i).unwrap_or(t.len())])
    } else {
        t.to_string()
    }
}
