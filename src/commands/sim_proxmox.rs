//! `rigger sim proxmox`: a simulated Proxmox VE node on this host, optionally
//! with real local machines behind its guests, until SIGINT/SIGTERM; then the
//! machines it booted are stopped and removed with it.

use crate::cli::{ProxmoxSimArgs, SimMachines};
use rigger_sim::proxmox::{self as sim, local_machines::LocalMachines, MachineBackend, NoMachines, ProxmoxSimOptions};
use crate::ui::printer::Printer;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::sync::Arc;
use tokio::net::TcpListener;

pub async fn run(args: &ProxmoxSimArgs, verbose: bool) -> Result<i32> {
    if !(0.0..=1.0).contains(&args.faults) {
        bail!("--faults {} is not a probability: give a rate between 0 and 1, e.g. 0.1", args.faults);
    }
    let mut limits = sim::NodeLimits::default();
    for assignment in &args.quotas {
        limits.set(assignment)?;
    }
    // Bind first: with port 0 the machines are named after the chosen port.
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("the listener's address")?;
    let mut opts = ProxmoxSimOptions::new(addr);
    opts.latency_ms = args.latency;
    opts.op_time_ms = args.op_time;
    opts.faults = args.faults;
    opts.http = args.http;
    opts.limits = limits;
    if let Some(path) = &args.api_definitions {
        opts.api_definitions = Some(path.clone());
    }
    if let Some(seed) = args.seed {
        opts.seed = seed;
    }
    if let (Some(id), Some(secret)) = (&args.token_id, &args.token_secret) {
        if !id.contains('@') || !id.contains('!') {
            bail!("--token-id {id:?} is not a Proxmox token id: write it as USER@REALM!TOKENID, e.g. root@pam!rigger");
        }
        opts.token_id = id.clone();
        opts.token_secret = secret.clone();
    }
    let machines: Arc<dyn MachineBackend> = match args.machines {
        Some(SimMachines::Local) => {
            let (events, printer) = Printer::start(verbose);
            let machines = LocalMachines::new(addr.port(), &events).await;
            drop(events);
            printer.finish().await;
            Arc::new(machines?)
        }
        None => Arc::new(NoMachines),
    };
    let handle = sim::start_on_listener(listener, opts, machines).await?;
    print!("{}", handle.banner());
    std::io::stdout().flush().context("writing to stdout")?;
    super::sim::until_stopped().await?;
    eprintln!("stopping: removing the simulator's machines");
    handle.stop().await;
    Ok(0)
}
