//! Proxmox's wire envelope: `{"data": …}` on success; on failure the message
//! travels only in the HTTP status line's reason phrase and the body is
//! `{"data":null}`, plus an `errors` map (parameter → message) for parameter
//! exceptions; the server closes the connection after the response.
//!
//! Source: pve-http-server, PVE/APIServer/Formatter/Standard.pm
//! `prepare_response_data` builds `{ data => …, errors => … }` and adds
//! `message`/`success` only for the `extjs`/`htmljs` formats, never for
//! `json`; PVE/APIServer/AnyEvent.pm makes the response with
//! `HTTP::Response->new($res->{status}, $res->{message})`. pve-common's
//! PVE/Exception.pm `raise_param_exc` raises code 400 with the message
//! `Parameter verification failed.` and the per-parameter `errors`; any other
//! `die` in a handler becomes 500 with its text as the message.

use super::validation::FieldErrors;
use axum::body::Body;
use axum::http::{header, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub message: Option<String>,
    pub body: Value,
}

pub type HandlerResult = Result<Value, Reply>;

impl Reply {
    pub fn data(data: Value) -> Reply {
        Reply { status: StatusCode::OK, message: None, body: json!({ "data": data }) }
    }

    /// An error whose message is the reason phrase; the body carries no text.
    pub fn error(status: u16, message: impl Into<String>) -> Reply {
        let message = message.into();
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Reply { status, message: Some(message), body: json!({ "data": null }) }
    }

    /// 500, the status Proxmox uses for most failures.
    pub fn fail(message: impl Into<String>) -> Reply {
        Reply::error(500, message)
    }

    pub fn params(errors: FieldErrors) -> Reply {
        let mut reply = Reply::error(400, "Parameter verification failed.");
        reply.body["errors"] = json!(errors);
        reply
    }

    pub fn param(field: &str, message: impl Into<String>) -> Reply {
        Reply::params([(field.to_string(), message.into())].into())
    }

    pub fn into_response(self) -> Response<Body> {
        let bytes = serde_json::to_vec(&self.body).unwrap_or_default();
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json;charset=UTF-8"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=0"));
        headers.insert(header::SERVER, HeaderValue::from_static("pve-api-daemon/3.0"));
        if self.status.as_u16() >= 400 {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(message) = &self.message {
            if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(status_line_text(message).into_bytes()) {
                response.extensions_mut().insert(reason);
            }
        }
        response
    }
}

/// A status line carries one line of visible text.
fn status_line_text(message: &str) -> String {
    let one_line: String = message
        .trim()
        .chars()
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { ' ' })
        .collect();
    if one_line.is_empty() {
        "error".into()
    } else {
        one_line
    }
}
