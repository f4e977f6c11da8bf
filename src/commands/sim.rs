//! `rigger sim <kind>`: run a cloud API simulator in the foreground.

use crate::cli::{SimCmd, SimKind};
use anyhow::Result;

pub async fn run(cmd: &SimCmd, verbose: bool) -> Result<i32> {
    match &cmd.kind {
        SimKind::Proxmox(args) => super::sim_proxmox::run(args, verbose).await,
    }
}

/// Until SIGINT or SIGTERM.
pub async fn until_stopped() -> Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
