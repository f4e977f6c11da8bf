//! One module per subcommand. Each returns the process exit code.

pub mod apply;
pub mod backup;
pub mod destroy;
pub mod drill;
pub mod drill_restore;
pub mod drill_rounds;
pub mod graph;
pub mod inventory;
pub mod output;
pub mod plan;
pub mod restore;
pub mod sim;
pub mod sim_proxmox;
pub mod state;
pub mod status;
pub mod switchover;
pub mod validate;

use crate::plan::services::secret_names;
use crate::project::Project;
use crate::state::{State, StateStore};
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

/// A project's state as a planning command needs it: locked, loaded (or new),
/// remembering which serial it was read at, with the secrets the roles need
/// filled in memory (templates render with them; only apply saves them).
pub struct LoadedState {
    pub store: StateStore,
    pub state: State,
    pub lineage: Option<String>,
    pub serial: u64,
}

pub fn load_state(project: &Project, provider_kind: &str, command: &str) -> Result<LoadedState> {
    let store = StateStore::open(&project.state_path, command)?;
    let mut state = store.load()?.unwrap_or_else(|| State::new(&project.plan.project, provider_kind));
    let lineage = (state.serial > 0).then(|| state.lineage.clone());
    let serial = state.serial;
    ensure_generated(&mut state, &project.plan)?;
    Ok(LoadedState { store, state, lineage, serial })
}

/// The environment variable that gives this run the secret `name` in place
/// of the state's, when one is set (`RIGGER_SECRET_<NAME>`, the backup's S3 keys).
pub fn secret_from_environment(name: &str) -> Option<String> {
    use crate::hosts::roles::backup::{S3_KEY_ENV, S3_KEY_SECRET_ENV};
    let var = match name {
        "backup_s3_key" => S3_KEY_ENV.to_string(),
        "backup_s3_key_secret" => S3_KEY_SECRET_ENV.to_string(),
        other => crate::state::secret_env_var(other),
    };
    std::env::var(&var).is_ok_and(|v| !v.is_empty()).then_some(var)
}

/// Everything rigger generates into the state for a plan's roles: passwords,
/// the backup role's SSH key pairs, the project CA and the hosts' certificates.
/// Kept ones stay; only what is missing (or due for renewal) is made.
pub fn ensure_generated(state: &mut State, plan: &crate::plan::model::Plan) -> Result<()> {
    for name in secret_names(&plan.roles()) {
        state.ensure_secret(name);
    }
    state.ensure_secret(crate::hosts::summary::PLAN_HASH_KEY);
    crate::hosts::roles::backup::ensure_key_pairs(state, plan)?;
    crate::hosts::roles::backup::ensure_s3_keys(state, plan)?;
    crate::pki::ensure(state, plan)?;
    Ok(())
}
