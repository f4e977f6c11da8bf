use crate::cli::{InventoryCmd, InventoryFormat};
use crate::inventory::{self, Inventory};
use crate::project::Project;
use anyhow::{bail, Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub fn load(plan: &Path, state_override: Option<&Path>) -> Result<(Project, Inventory)> {
    let project = Project::load(plan, state_override)?;
    let state = crate::state::read_state(&project.state_path)?.unwrap_or_else(|| crate::state::State::new(&project.plan.project, project.plan.provider.kind()));
    let inv = inventory::build(&project, &state);
    Ok((project, inv))
}

pub fn run(args: &InventoryCmd, state_override: Option<&Path>) -> Result<i32> {
    // The Ansible script protocol: only JSON on stdout.
    if args.list || args.host.is_some() {
        let (_, inv) = load(&args.plan, state_override)?;
        let doc = match &args.host {
            Some(h) => inv.host_json(h),
            None => inv.to_list_json(),
        };
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    let (project, inv) = load(&args.plan, state_override)?;
    if inv.hosts.is_empty() {
        bail!("no machine of project {} exists yet — run `rigger apply {}` first", inv.project, args.plan.display());
    }
    let dir = PathBuf::from("inventories").join(&inv.project);
    let formats: Vec<InventoryFormat> = match args.format {
        Some(f) => vec![f],
        None if args.output.is_some() => bail!("--output needs --format (one file per format)"),
        None => vec![InventoryFormat::Ini, InventoryFormat::Yaml, InventoryFormat::Json, InventoryFormat::SshConfig],
    };
    for f in formats {
        let default_name = match f {
            InventoryFormat::Ini => "hosts.ini",
            InventoryFormat::Yaml => "hosts.yaml",
            InventoryFormat::Json => "inventory.json",
            InventoryFormat::SshConfig => "ssh_config",
        };
        let path = args.output.clone().unwrap_or_else(|| dir.join(default_name));
        let text = match f {
            InventoryFormat::Ini => inv.to_ini(),
            InventoryFormat::Yaml => inv.to_yaml()?,
            InventoryFormat::Json => serde_json::to_string_pretty(&inv.to_list_json())? + "\n",
            InventoryFormat::SshConfig => inv.to_ssh_config(),
        };
        write(&path, &text, 0o644)?;
        println!("wrote {}", path.display());
        if f == InventoryFormat::Json {
            let script = path.with_file_name(format!("{}-inventory.sh", inv.project));
            write(&script, &wrapper(&project, state_override)?, 0o755)?;
            println!("wrote {} (Ansible dynamic inventory: ansible -i {} all -m ping)", script.display(), script.display());
        }
    }
    Ok(0)
}

/// A tiny executable Ansible can run: asks rigger for the current state each time.
fn wrapper(project: &Project, state_override: Option<&Path>) -> Result<String> {
    let exe = std::env::current_exe().context("cannot find the rigger binary")?;
    let plan = std::path::absolute(&project.plan.file)?;
    let state = std::path::absolute(state_override.unwrap_or(&project.state_path))?;
    Ok(format!(
        "#!/bin/sh\n# Ansible dynamic inventory for rigger project {} (answers --list and --host NAME).\nexec '{}' inventory '{}' --state '{}' \"$@\"\n",
        project.plan.project,
        exe.display(),
        plan.display(),
        state.display()
    ))
}

fn write(path: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}
