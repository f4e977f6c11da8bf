//! `--machines local` for the Yandex simulator: a running instance is a real
//! local machine at its primary address (see `crate::yandex::local_machines`), with the
//! user from its `ssh-keys` metadata, as cloud-init creates it on a real VM.
//! Security groups are not enforced on these machines.

use super::{ConsoleKeys, Instance, MachineBackend, MachineEvent};
use crate::yandex::local_machines::{LocalMachines, MachineRequest};
use std::sync::Arc;

/// Folder under `/var/lib/rigger/machines/` and prefix of every machine name.
pub const OWNER: &str = "ycsim";

/// The host-wide name of an instance's machine (nspawn machine, netns, folder).
pub fn machine_name(instance_id: &str) -> String {
    format!("{OWNER}-{instance_id}")
}

pub struct LocalBackend {
    machines: Arc<LocalMachines>,
}

impl LocalBackend {
    pub fn new(machines: Arc<LocalMachines>) -> Self {
        LocalBackend { machines }
    }
}

/// `ssh-keys` is `user:key` per line (cloud-init takes every well-formed line;
/// one user is all rigger needs).
fn ssh_user_and_key(instance: &Instance) -> Option<(String, String)> {
    let text = instance.metadata.get("ssh-keys")?;
    text.lines().find_map(|line| {
        let (user, key) = line.trim().split_once(':')?;
        (!user.is_empty() && key.split_whitespace().count() >= 2).then(|| (user.to_string(), key.trim().to_string()))
    })
}

impl MachineBackend for LocalBackend {
    fn public_address_taken(&self) -> Option<fn(&str) -> bool> {
        Some(crate::yandex::local_machines::routed_on_host)
    }

    fn handle(&self, event: MachineEvent) {
        match event {
            MachineEvent::Running { instance, network_id, subnet_cidr } => {
                let name = machine_name(&instance.id);
                let Some(nic) = instance.network_interfaces.first() else { return };
                let Ok(ip) = nic.primary_v4_address.address.parse() else { return };
                let Some((ssh_user, ssh_public_key)) = ssh_user_and_key(&instance) else {
                    // cloud-init would create no user either: nobody could log in.
                    tracing::warn!(instance = %instance.id, "no usable ssh-keys metadata (user:key); not booting a machine");
                    return;
                };
                let public_ip = nic.primary_v4_address.one_to_one_nat.as_ref().and_then(|n| n.address.parse().ok());
                let hostname = instance.fqdn.split('.').next().unwrap_or(&instance.id).to_string();
                self.machines.boot(MachineRequest {
                    name,
                    hostname,
                    network: network_id,
                    subnet: subnet_cidr,
                    ip,
                    public_ip,
                    ssh_user,
                    ssh_public_key,
                });
            }
            MachineEvent::Stopped(id) => self.machines.stop(&machine_name(&id)),
            MachineEvent::Deleted(id) => self.machines.remove(&machine_name(&id)),
        }
    }

    fn console_keys(&self, instance_id: &str) -> ConsoleKeys {
        match self.machines.host_keys(&machine_name(instance_id)) {
            Some(keys) => ConsoleKeys::Booted(keys),
            None => ConsoleKeys::NotYet,
        }
    }
}
