//! Worker tasks: every write that Proxmox forks into a worker gets a UPID at
//! once and runs in the background; its status answers `running` until the
//! work ends with `OK` or the error text, and its log ends in `TASK OK` /
//! `TASK ERROR: …`.

use super::Sim;
use futures::future::BoxFuture;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;

/// What a worker body sees.
pub struct TaskCtx {
    pub sim: Arc<Sim>,
    pub upid: String,
    /// An injected failure: the worker undoes its work and fails with it.
    pub fault: Option<String>,
}

impl TaskCtx {
    /// The time the operation takes (`--op-time`), scaled.
    pub async fn work(&self, share: f64) {
        let ms = (self.sim.opts.op_time_ms as f64 * share) as u64;
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }

    pub fn log(&self, line: impl Into<String>) {
        if let Ok(mut state) = self.sim.state.lock() {
            if let Some(task) = state.tasks.get_mut(&self.upid) {
                task.log.push(line.into());
            }
        }
    }

    /// Fail here if a fault was injected, after running `undo`.
    pub fn injected_failure(&self, undo: impl FnOnce()) -> Result<(), String> {
        match &self.fault {
            Some(fault) => {
                undo();
                Err(fault.clone())
            }
            None => Ok(()),
        }
    }
}

const TASK_FAULTS: &[&str] = &[
    "got timeout",
    "error with cfs lock 'storage-local-lvm': got lock request timeout",
    "command 'lxc-usernsexec' failed: exit code 1",
];

/// Start a worker; returns its UPID.
pub fn spawn<F>(sim: &Arc<Sim>, worker_type: &str, id: &str, user: &str, body: F) -> String
where
    F: FnOnce(TaskCtx) -> BoxFuture<'static, Result<(), String>> + Send + 'static,
{
    let rate = sim.opts.faults;
    let (upid, fault) = {
        let mut state = match sim.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        // A task just forked may not be in the index yet.
        let invisible = if state.chance(rate) { state.rng.gen_range(1..=2) } else { 0 };
        let task = state.new_task(&sim.opts.node, worker_type, id, user, invisible);
        let fault = state.chance(rate / 2.0).then(|| {
            let i = state.rng.gen_range(0..TASK_FAULTS.len());
            TASK_FAULTS[i].to_string()
        });
        if fault.is_some() || invisible > 0 {
            sim.faults_injected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let upid = task.upid.clone();
        state.tasks.insert(upid.clone(), task);
        (upid, fault)
    };
    let ctx = TaskCtx { sim: Arc::clone(sim), upid: upid.clone(), fault };
    let sim = Arc::clone(sim);
    let task_upid = upid.clone();
    tokio::spawn(async move {
        let result = body(ctx).await;
        let mut state = match sim.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(task) = state.tasks.get_mut(&task_upid) {
            match result {
                Ok(()) => {
                    task.log.push("TASK OK".into());
                    task.exitstatus = Some("OK".into());
                }
                Err(error) => {
                    let error = error.trim_end().to_string();
                    task.log.push(format!("TASK ERROR: {error}"));
                    task.exitstatus = Some(error);
                }
            }
        }
    });
    upid
}
