//! Every write forks a worker and answers its UPID; the work is done only when
//! `/nodes/{node}/tasks/{upid}/status` says `stopped`, and it succeeded only if
//! `exitstatus` is `OK` or `WARNINGS: N`.

use super::client::{ApiError, ProxmoxClient};
use serde_json::Value;
use crate::cloud::providers::poll::{Backoff, Check, Waiting};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A stopped task's `exitstatus` (or the task list's `status`) that means it
/// succeeded: `OK`, or `WARNINGS: N` (done, with warnings in its log).
pub fn succeeded(exitstatus: &str) -> bool {
    exitstatus == "OK" || exitstatus.starts_with("WARNINGS")
}

/// `UPID:{node}:{pid}:{pstart}:{starttime}:{type}:{id}:{user}:`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upid {
    pub raw: String,
    pub node: String,
    pub worker_type: String,
    pub id: String,
    pub user: String,
}

impl Upid {
    pub fn parse(raw: &str) -> Option<Upid> {
        let parts: Vec<&str> = raw.split(':').collect();
        if parts.len() < 9 || parts[0] != "UPID" {
            return None;
        }
        Some(Upid {
            raw: raw.to_string(),
            node: parts[1].to_string(),
            worker_type: parts[5].to_string(),
            id: parts[6].to_string(),
            user: parts[7].to_string(),
        })
    }
}

/// How many `no such task` answers a just-started task may give.
const UNKNOWN_TASK_TOLERANCE: u32 = 20;

impl ProxmoxClient {
    /// Wait for a task to stop; its failure carries the log's last lines.
    pub async fn wait_task(&self, upid: &str) -> Result<(), ApiError> {
        let node = Upid::parse(upid)
            .map(|u| u.node)
            .ok_or_else(|| ApiError::Decode { path: "task".into(), detail: format!("not a UPID: {upid}") })?;
        let path = format!("/nodes/{node}/tasks/{upid}/status");
        let unknown = AtomicU32::new(0);
        let backoff = Backoff { first: Duration::from_millis(100), max: Duration::from_secs(2), limit: self.options().task_timeout };
        backoff
            .until(Waiting { for_what: "it to stop", advice: None }, || async {
                match self.get(&path, &[]).await {
                    Ok(status) => {
                        let state = status.get("status").and_then(Value::as_str).unwrap_or("unknown");
                        if state != "stopped" {
                            return Ok(Check::NotYet(format!("Proxmox task {upid} is still {state}")));
                        }
                        let exit = status.get("exitstatus").and_then(Value::as_str).unwrap_or("unknown").to_string();
                        if succeeded(&exit) {
                            return Ok(Check::Done(()));
                        }
                        let log = self.task_log_tail(&node, upid, 10).await;
                        Err(ApiError::TaskFailed { upid: upid.to_string(), exitstatus: exit, log })
                    }
                    // The task index may not list a task forked a moment ago
                    // (PVE answers 400 with `errors.upid = "no such task"`).
                    Err(e) if e.is_unknown_task() && unknown.fetch_add(1, Ordering::Relaxed) < UNKNOWN_TASK_TOLERANCE => {
                        Ok(Check::NotYet(format!("node {node} does not list Proxmox task {upid} yet")))
                    }
                    Err(e) => Err(e),
                }
            })
            .await
    }

    /// The last `lines` of a task's log (best effort: empty if unreadable).
    pub async fn task_log_tail(&self, node: &str, upid: &str, lines: usize) -> Vec<String> {
        let path = format!("/nodes/{node}/tasks/{upid}/log");
        let Ok(Value::Array(entries)) = self.get(&path, &[("start", "0".into()), ("limit", "10000".into())]).await else {
            return Vec::new();
        };
        let text: Vec<String> = entries.iter().filter_map(|e| e.get("t").and_then(Value::as_str)).map(str::to_string).collect();
        text[text.len().saturating_sub(lines)..].to_vec()
    }

    /// A write that answers a UPID (or, on older servers, nothing), waited for.
    pub async fn run_task(&self, method: reqwest::Method, path: &str, params: &[(&str, String)]) -> Result<(), ApiError> {
        match self.call(method, path, params).await? {
            Value::String(upid) if upid.starts_with("UPID:") => self.wait_task(&upid).await,
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upids() {
        let upid = Upid::parse("UPID:pve:00001234:00005678:AABBCCDD:vzcreate:100:root@pam!rigger:").unwrap();
        assert_eq!(upid.node, "pve");
        assert_eq!(upid.worker_type, "vzcreate");
        assert_eq!(upid.id, "100");
        assert_eq!(upid.user, "root@pam!rigger");
        assert!(Upid::parse("not-a-upid").is_none());
    }
}
