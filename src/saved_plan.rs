//! `rigger plan --out FILE`: a plan saved for a later `apply FILE`, which
//! refuses it if the plan file, the state or the hosts changed since.

use crate::hosts::phase::ConfigPlan;
use crate::hosts::summary::{self, HostPlanSummary};
use crate::cloud::diff::{Action, Change};
use crate::cloud::resource::Kind;
use crate::state::write_atomic;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// 2: the host changes are saved too (`hosts`). 3: their files by a keyed hash
/// (`content_hmac`), no longer a plain sha256.
pub const FORMAT: &str = "rigger-saved-plan/3";
const FORMAT_FAMILY: &str = "rigger-saved-plan/";

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedPlan {
    pub format: String,
    pub plan_file: PathBuf,
    pub plan_sha256: String,
    pub state_path: PathBuf,
    pub state_lineage: Option<String>,
    pub state_serial: u64,
    pub infra_only: bool,
    pub changes: Vec<Change>,
    pub hosts: SavedHosts,
}

/// The host side of a saved plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum SavedHosts {
    /// The host changes the user saw; `apply FILE` refuses if they differ by then.
    Planned { summary: HostPlanSummary },
    /// Machines are to be created, replaced or changed first: the host changes
    /// cannot be known before, `apply FILE` computes them after the cloud step.
    AfterCloudStep { note: String, machines: Vec<String> },
    /// `--infra-only`: no host is configured.
    NotConfigured,
}

pub const AFTER_CLOUD_NOTE: &str = "host changes to be computed after the cloud step";

impl SavedHosts {
    /// What `plan --out` saves of the hosts: their changes when every host's
    /// machine exists and stays, else that they are computed after the cloud step.
    pub fn of(config_plan: Option<&ConfigPlan>, changes: &[Change], secrets: &BTreeMap<String, String>) -> SavedHosts {
        let Some(cp) = config_plan else { return SavedHosts::NotConfigured };
        let mut machines: Vec<String> = cp.not_built.clone();
        // A machine the cloud step creates or replaces starts from an empty
        // disk; one it changes may get another public address (which config
        // files name): what the hosts need then is not what they need now.
        machines.extend(
            changes
                .iter()
                .filter(|c| c.address.kind == Kind::Machine && matches!(c.action, Action::Create | Action::Replace | Action::Update))
                .map(|c| c.address.name.clone()),
        );
        machines.sort();
        machines.dedup();
        if machines.is_empty() {
            SavedHosts::Planned { summary: summary::summarize(cp, secrets) }
        } else {
            SavedHosts::AfterCloudStep { note: AFTER_CLOUD_NOTE.into(), machines }
        }
    }

    /// Refuse when the host plan of now is not the one saved.
    pub fn check(&self, now: &HostPlanSummary) -> Result<()> {
        if let SavedHosts::Planned { summary: saved } = self {
            let differences = summary::differences(saved, now);
            if !differences.is_empty() {
                bail!("{}", summary::refusal(&differences));
            }
        }
        Ok(())
    }
}

pub fn file_sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

impl SavedPlan {
    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let path = if path.parent().map_or(true, |d| d.as_os_str().is_empty()) { Path::new(".").join(path) } else { path.to_path_buf() };
        write_atomic(&path, &serde_json::to_vec_pretty(self)?)
    }

    /// `Some` if the file is a saved plan, `None` if it is something else (a plan file).
    pub fn read_if_saved(path: &Path) -> Result<Option<SavedPlan>> {
        let Ok(bytes) = std::fs::read(path) else { return Ok(None) };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return Ok(None) };
        match value.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            Some(other) if other.starts_with(FORMAT_FAMILY) => {
                bail!("{} is a saved plan of another format ({other}; this rigger reads {FORMAT}) — make a new one with `rigger plan --out`", path.display())
            }
            _ => return Ok(None),
        }
        Ok(Some(serde_json::from_value(value).with_context(|| format!("{} is a damaged saved plan — make a new one with `rigger plan --out`", path.display()))?))
    }

    /// Refuse a plan made against another plan file or another state.
    pub fn check_current(&self, lineage: Option<&str>, serial: u64) -> Result<()> {
        let now = file_sha256(&self.plan_file)?;
        if now != self.plan_sha256 {
            bail!("the plan file {} changed since this plan was saved — run `rigger plan --out` again", self.plan_file.display());
        }
        if lineage != self.state_lineage.as_deref() || serial != self.state_serial {
            bail!(
                "the state moved since this plan was saved (serial {} then, {} now) — run `rigger plan --out` again and review it",
                self.state_serial,
                serial
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::resource::Address;

    fn cp(not_built: Vec<String>) -> ConfigPlan {
        ConfigPlan::of_hosts(BTreeMap::new(), not_built)
    }

    fn change(kind: Kind, name: &str, action: Action) -> Change {
        Change { address: Address::new(kind, name), action, spec: None, live: None, changed: vec![], replace_because: vec![], blocked: None }
    }

    #[test]
    fn host_changes_are_saved_only_when_every_machine_exists_and_stays() {
        let none = BTreeMap::new();
        assert_eq!(SavedHosts::of(None, &[], &none), SavedHosts::NotConfigured);
        // Deleted machines and network changes leave the remaining hosts as they are.
        let others = [change(Kind::Subnet, "app", Action::Update), change(Kind::Firewall, "ssh", Action::Replace), change(Kind::Machine, "m-3", Action::Delete)];
        assert!(matches!(SavedHosts::of(Some(&cp(vec![])), &others, &none), SavedHosts::Planned { .. }));
        let after = |c: &ConfigPlan, changes: &[Change]| match SavedHosts::of(Some(c), changes, &none) {
            SavedHosts::AfterCloudStep { note, machines } => {
                assert_eq!(note, AFTER_CLOUD_NOTE);
                machines
            }
            other => panic!("{other:?}"),
        };
        assert_eq!(after(&cp(vec!["m-2".into()]), &[]), vec!["m-2"]);
        assert_eq!(after(&cp(vec![]), &[change(Kind::Machine, "m-1", Action::Replace)]), vec!["m-1"]);
        assert_eq!(after(&cp(vec![]), &[change(Kind::Machine, "m-1", Action::Update)]), vec!["m-1"]);
        assert_eq!(after(&cp(vec!["m-2".into()]), &[change(Kind::Machine, "m-2", Action::Create), change(Kind::Machine, "m-1", Action::Replace)]), vec!["m-1", "m-2"]);
    }

    #[test]
    fn the_saved_hosts_are_written_explicitly() {
        let json = serde_json::to_value(SavedHosts::AfterCloudStep { note: AFTER_CLOUD_NOTE.into(), machines: vec!["m-1".into()] }).unwrap();
        assert_eq!(json, serde_json::json!({ "status": "after_cloud_step", "note": "host changes to be computed after the cloud step", "machines": ["m-1"] }));
    }

    #[test]
    fn a_saved_plan_of_an_older_format_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("saved.json");
        std::fs::write(&path, r#"{ "format": "rigger-saved-plan/1", "changes": [] }"#).unwrap();
        let err = format!("{:#}", SavedPlan::read_if_saved(&path).unwrap_err());
        assert!(err.contains("another format (rigger-saved-plan/1; this rigger reads rigger-saved-plan/3)") && err.contains("rigger plan --out"), "{err}");
        // A plan file is not a saved plan.
        std::fs::write(&path, "version: 1\n").unwrap();
        assert!(SavedPlan::read_if_saved(&path).unwrap().is_none());
    }
}
