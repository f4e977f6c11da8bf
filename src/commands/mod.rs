//! One module per subcommand. Each returns the process exit code.

pub mod apply;
pub mod destroy;
pub mod drill;
pub mod graph;
pub mod inventory;
pub mod output;
pub mod plan;
pub mod sim;
pub mod sim_proxmox;
pub mod state;
pub mod status;
pub mod validate;

use anyhow::{bail, Result};
use std::io::{BufRead, IsTerminal, Write};

/// Ask before changing anything, unless told not to. Off a terminal there is
/// nobody to ask: require --auto-approve rather than guess.
pub fn confirm(question: &str, auto_approve: bool) -> Result<bool> {
    if auto_approve {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to confirm on — review the plan and run again with --auto-approve");
    }
    print!("{question}\n  Only 'yes' will be accepted: ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim() == "yes")
}
