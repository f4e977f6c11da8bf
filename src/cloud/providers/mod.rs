//! The provider contract. A provider turns the plan into resource specs in its
//! own terms, lists what exists for a project, and creates/updates/deletes one
//! resource at a time. The core does the diffing, ordering, parallelism and state.

pub mod endpoint;
pub mod poll;
pub mod local;
pub mod yandex;
pub mod proxmox;
pub mod rules;
#[cfg(test)]
pub mod mock;

use rigger_events::Events;
use crate::plan::model::Plan;
use crate::cloud::diff::Change;
use crate::cloud::resource::{Address, LiveResource, ResourceSpec};
use anyhow::Result;
use async_trait::async_trait;
use std::collections::BTreeMap;

/// Live resources this one depends on, by address (a machine gets its subnet's id).
pub type Deps = BTreeMap<Address, LiveResource>;

#[async_trait]
pub trait Provider: Send + Sync {
    fn kind(&self) -> &'static str;

    /// The resources the plan asks for, normalised as the provider's API stores
    /// them. Pure: no network.
    fn specs(&self, plan: &Plan) -> Result<Vec<ResourceSpec>>;

    /// Everything that exists for this project (found by label/name listing,
    /// one list call per type and page, never one GET per resource).
    /// `known` are the resources the state remembers, so a provider that cannot
    /// list by label can still look them up.
    async fn refresh(&self, known: &[LiveResource], events: &Events) -> Result<Vec<LiveResource>>;

    /// Why a refresh's answer cannot be planned against (e.g. one machine
    /// found twice: a plan would pick one of them). `plan` and `apply` ask;
    /// `destroy` does not, since it removes every copy.
    fn refuse_to_plan(&self, live: &[LiveResource], known: &[LiveResource]) -> Result<()> {
        let _ = (live, known);
        Ok(())
    }

    /// Why the provider will not carry out this change (one the diff found),
    /// and what the user can do about it: e.g. an instance in ERROR, which no
    /// update can start and a replacement would take its disk with. The plan
    /// shows the reason; `None` (the default) when the change can be made.
    fn blocks(&self, change: &Change) -> Option<String> {
        let _ = change;
        None
    }

    /// Create one resource. Must be safe to call again after a lost answer:
    /// find the resource by name/label first and adopt it.
    async fn create(&self, spec: &ResourceSpec, deps: &Deps, events: &Events) -> Result<LiveResource>;

    /// Change a resource in place (only fields outside `replace_on` differ).
    async fn update(&self, spec: &ResourceSpec, live: &LiveResource, deps: &Deps, events: &Events) -> Result<LiveResource>;

    /// Delete a resource and wait until it is gone. Deleting what is already gone is Ok.
    async fn delete(&self, live: &LiveResource, events: &Events) -> Result<()>;

    /// The last lines a machine printed on its console (boot messages), to
    /// explain a machine that never answers SSH. `None` where there is no console.
    async fn console_tail(&self, machine: &LiveResource, lines: usize) -> Option<String> {
        let _ = (machine, lines);
        None
    }

    /// Power a machine on or off (failure drills). Providers that cannot say so.
    async fn power(&self, live: &LiveResource, action: Power, events: &Events) -> Result<LiveResource> {
        let _ = (live, events);
        anyhow::bail!("the {} provider cannot {action:?} a machine yet", self.kind())
    }

    /// Before rigger first logs in to a machine as the plan's `ssh.user`: do
    /// what the platform could not do at creation (Proxmox LXC installs keys
    /// for root only) and learn what the API alone cannot tell (host keys).
    /// Runs only when rigger can reach the machines (never with
    /// `--no-ssh-wait`); must be cheap when there is nothing left to do.
    /// Returns the machine with its new outputs, or `None` if nothing changed.
    async fn prepare_login(&self, _machine: &LiveResource, _plan: &Plan, _events: &Events) -> Result<Option<LiveResource>> {
        Ok(None)
    }
}

/// What `Provider::power` does to a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Start,
    /// An orderly shutdown.
    Shutdown,
    /// Pull the plug: nothing on the machine gets to clean up.
    Kill,
}

/// The provider a plan asks for.
pub fn for_plan(plan: &Plan, _rigger_dir: &std::path::Path) -> Result<std::sync::Arc<dyn Provider>> {
    use crate::plan::model::ProviderConfig;
    use std::sync::Arc;
    Ok(match &plan.provider {
        ProviderConfig::Local(_) => Arc::new(local::LocalProvider::new(&plan.project)?),
        ProviderConfig::Yandex(cfg) => Arc::new(yandex::YandexProvider::new(cfg, &plan.project)?),
        ProviderConfig::Proxmox(_) => Arc::new(proxmox::ProxmoxProvider::from_plan(plan)?),
    })
}
