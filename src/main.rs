use clap::Parser;
use rigger::cli::{Cli, Command};
use rigger::commands;
use rigger::plan::diag::PlanErrors;
use std::process::ExitCode;

fn main() -> ExitCode {
    // clap exits 2 on a usage error; 2 is the contract's "the plan has
    // changes" (`--detailed-exitcode`), so a mistyped flag exits 1 instead.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let state = cli.state.as_deref();
    let result = runtime.block_on(async {
        // A bad RIGGER_COMMAND_TIMEOUT is refused before anything is done, not at the first remote command.
        rigger::hosts::remote::session::check_environment()?;
        match &cli.command {
            Command::Validate(a) => commands::validate::run(a),
            Command::Plan(a) => commands::plan::run(a, state, cli.verbose).await,
            Command::Apply(a) => commands::apply::run(a, state, cli.verbose).await,
            Command::Destroy(a) => commands::destroy::run(a, state, cli.verbose).await,
            Command::Graph(a) => commands::graph::run(a),
            Command::State(c) => commands::state::run(c, state),
            Command::Inventory(a) => commands::inventory::run(a, state),
            Command::Output(a) => commands::output::run(a, state),
            Command::Status(a) => commands::status::run(a, state).await,
            Command::Drill(a) => match &a.kind {
                Some(rigger::cli::DrillKind::Restore(p)) => commands::drill_restore::run(p, state).await,
                None => commands::drill::run(a, state).await,
            },
            Command::Backup(a) => commands::backup::run_backup(a, state, cli.verbose).await,
            Command::Backups(a) => commands::backup::run_backups(a, state).await,
            Command::Restore(a) => commands::restore::run(a, state, cli.verbose).await,
            Command::Sim(c) => commands::sim::run(c, cli.verbose).await,
            Command::Switchover(a) => commands::switchover::run(a, state).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            match e.downcast_ref::<PlanErrors>() {
                Some(pe) => {
                    eprintln!("{pe}");
                    let n = pe.diagnostics.len();
                    eprintln!("{n} error{} in {} — nothing was changed", if n == 1 { "" } else { "s" }, pe.file.display());
                }
                None => eprintln!("error: {e:#}"),
            }
            ExitCode::from(1)
        }
    }
}
