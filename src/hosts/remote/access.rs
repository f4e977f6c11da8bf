//! The files every SSH client of the project reads, derived from the state
//! (the state is the truth): the project's known_hosts (each machine's host
//! keys under its names and addresses) and its ssh_config (strict host-key
//! checking against that file, the bastion as ProxyJump). Rewritten with the
//! state on every commit (engine::Shared::commit).

use crate::project::Project;
use crate::state::{self, State};
use anyhow::Result;

pub fn write(project: &Project, state: &State) -> Result<()> {
    let config = crate::inventory::build(project, state).to_ssh_config();
    state::write_atomic(&crate::hosts::remote::ssh_config_path(project), config.as_bytes())?;
    let mut lines = String::new();
    for m in state.machines() {
        let Some(keys) = m.outputs.get("host_keys").and_then(|v| v.as_array()) else { continue };
        let mut names: Vec<String> = Vec::new();
        for k in ["ssh_host", "private_ip", "public_ip"] {
            if let Some(v) = m.output_str(k) {
                if !names.iter().any(|n| n == v) {
                    names.push(v.to_string());
                }
            }
        }
        if names.is_empty() {
            continue;
        }
        for key in keys.iter().filter_map(|k| k.as_str()) {
            lines.push_str(&format!("{} {}\n", names.join(","), key.trim()));
        }
    }
    state::write_atomic(&project.known_hosts_path(), lines.as_bytes())
}
