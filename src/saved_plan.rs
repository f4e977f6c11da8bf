//! `rigger plan --out FILE`: a plan saved for a later `apply FILE`, which
//! refuses it if the plan file or the state changed since.

use crate::diff::Change;
use crate::state::write_atomic;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "rigger-saved-plan/1";

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
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Ok(None);
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
