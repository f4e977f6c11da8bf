//! Small files that remember the project's networks, subnets and firewall groups
//! (`<project dir>/.records/<kind>.<name>.json`), so `refresh` can list them
//! without the state: a bridge's name is a hash and cannot be read back.
//! The dot keeps them apart from machine directories (host names never start with one).

use nspawn_machines::image::write_atomically;
use crate::cloud::resource::{Address, Attrs, Kind};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub address: Address,
    pub id: String,
    pub attrs: Attrs,
}

fn records_dir(project_dir: &Path) -> PathBuf {
    project_dir.join(".records")
}

fn record_path(project_dir: &Path, address: &Address) -> PathBuf {
    records_dir(project_dir).join(format!("{}.{}.json", address.kind.as_str(), address.name))
}

pub fn write(project_dir: &Path, record: &Record) -> Result<()> {
    let dir = records_dir(project_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomically(&record_path(project_dir, &record.address), &serde_json::to_vec_pretty(record)?)
}

pub fn read(project_dir: &Path, address: &Address) -> Result<Option<Record>> {
    let path = record_path(project_dir, address);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

pub fn remove(project_dir: &Path, address: &Address) -> Result<()> {
    match std::fs::remove_file(record_path(project_dir, address)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).context("removing a resource record"),
        _ => Ok(()),
    }
}

/// All records of the project, of every kind.
pub fn list(project_dir: &Path) -> Result<Vec<Record>> {
    let dir = records_dir(project_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut records = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let record: Record = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            if record.address.kind != Kind::Machine {
                records.push(record);
            }
        }
    }
    records.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(records)
}

/// Removes the records folder and the project folder once nothing is left in them.
pub fn tidy(project_dir: &Path) {
    let _ = std::fs::remove_dir(records_dir(project_dir));
    let _ = std::fs::remove_dir(project_dir);
}
