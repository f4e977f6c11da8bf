//! `rigger sim yandex`: serve a cloud API simulator until Ctrl-C or SIGTERM,
//! then remove the machines it booted.

use crate::cli::{SimCmd, SimMachines, SimYandexCmd};
use rigger_sim::yandex::local_machines::LocalMachines;
use rigger_sim::yandex::{self, MachineBackend, NoMachines, SimHandle, YandexSimOptions};
use crate::ui::printer::Printer;
use anyhow::{ensure, Context, Result};
use std::io::Write;
use std::sync::Arc;

pub async fn run(cmd: &SimCmd, verbose: bool) -> Result<i32> {
    match cmd {
        SimCmd::Yandex(args) => run_yandex(args, verbose).await,
        SimCmd::Proxmox(args) => super::sim_proxmox::run(args, verbose).await,
    }
}

async fn run_yandex(args: &SimYandexCmd, verbose: bool) -> Result<i32> {
    let c = &args.common;
    ensure!((0.0..=1.0).contains(&c.faults), "--faults {} must be between 0 and 1", c.faults);
    let listener = tokio::net::TcpListener::bind(c.listen).await.with_context(|| format!("cannot listen on {}", c.listen))?;
    let (events, printer) = Printer::start(verbose);
    let local = match c.machines {
        Some(SimMachines::Local) => Some(LocalMachines::new(yandex::local::OWNER, events.clone())?),
        None => None,
    };
    let backend: Arc<dyn MachineBackend> = match &local {
        Some(machines) => Arc::new(yandex::local::LocalBackend::new(machines.clone())),
        None => Arc::new(NoMachines),
    };
    let mut quotas = yandex::Quotas::default();
    for assignment in &args.quotas {
        quotas.set(assignment)?;
    }
    let opts = YandexSimOptions {
        quotas,
        listen: c.listen,
        sa_key: args.sa_key.clone(),
        key_out: args.key_out.clone(),
        latency_ms: c.latency,
        op_time_ms: c.op_time,
        faults: c.faults,
        seed: c.seed,
        ..Default::default()
    };
    let sim = SimHandle::start_with_machines(listener, opts, backend).await?;
    print_banner(&sim, local.is_some())?;

    wait_for_stop_signal().await?;
    sim.stop().await;
    let removed = match &local {
        Some(machines) => machines.remove_all().await,
        None => Ok(()),
    };
    drop(local);
    drop(events);
    printer.finish().await;
    removed?;
    Ok(0)
}

/// The first lines are fixed (`endpoint: …`, `key file: …`) so scripts can read them.
fn print_banner(sim: &SimHandle, machines: bool) -> Result<()> {
    let endpoint = sim.endpoint();
    let key = std::fs::canonicalize(&sim.key_path).unwrap_or_else(|_| sim.key_path.clone());
    let key = key.display();
    let behind = if machines {
        "a local systemd-nspawn machine per running instance, at its address; one-to-one NAT addresses reach it too"
    } else {
        "nothing: instances exist only as API objects, never dial their addresses (apply with --infra-only --no-ssh-wait)"
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "endpoint: {endpoint}")?;
    writeln!(out, "key file: {key}")?;
    writeln!(out, "Yandex Cloud simulator (IAM tokens, VPC, Compute, Operations on one base URL)")?;
    writeln!(out, "  machines: {behind}")?;
    writeln!(out, "  inventory: GET {endpoint}/_sim/inventory (not part of the cloud's API)")?;
    writeln!(out, "Point a plan at it:")?;
    writeln!(out, "  provider:")?;
    writeln!(out, "    kind: yandex")?;
    writeln!(out, "    folder_id: b1gsimulated            # any folder id")?;
    writeln!(out, "    endpoint: {endpoint}     # or env RIGGER_YANDEX_ENDPOINT={endpoint}")?;
    writeln!(out, "    service_account_key_file: {key}")?;
    writeln!(out, "Ctrl-C or SIGTERM stops it{}.", if machines { " and removes the machines it booted" } else { "" })?;
    out.flush()?;
    Ok(())
}

async fn wait_for_stop_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("listening for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// Until SIGINT or SIGTERM (every simulator runs in the foreground).
pub async fn until_stopped() -> Result<()> {
    wait_for_stop_signal().await
}
