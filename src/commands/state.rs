use crate::cli::StateCmd;
use crate::project::Project;
use crate::cloud::resource::Address;
use anyhow::{bail, Result};
use std::path::Path;

pub fn run(cmd: &StateCmd, state_override: Option<&Path>) -> Result<i32> {
    let plan_path = match cmd {
        StateCmd::List(a) => &a.plan,
        StateCmd::Show { plan, .. } => plan,
    };
    let project = Project::load(plan_path, state_override)?;
    let Some(state) = crate::state::read_state(&project.state_path)? else {
        bail!("no state at {} — nothing was applied for project {} yet", project.state_path.display(), project.plan.project);
    };
    match cmd {
        StateCmd::List(_) => {
            for (addr, r) in &state.resources {
                println!("{addr}\t{}", r.id);
            }
        }
        StateCmd::Show { address, .. } => {
            let Some(addr) = Address::parse(address) else {
                bail!("`{address}` is not a resource address — write it like machine.pg-1, subnet.app, network.main, firewall.db");
            };
            let Some(r) = state.resources.get(&addr) else {
                let known: Vec<String> = state.resources.keys().map(|a| a.to_string()).collect();
                let known_ref: Vec<&str> = known.iter().map(String::as_str).collect();
                bail!("{address} is not in the state — {}", crate::plan::diag::suggestion(address, &known_ref));
            };
            println!("{}", serde_json::to_string_pretty(r)?);
        }
    }
    Ok(0)
}
