//! The state file: what rigger built, its secrets, a serial that moves on every
//! write, and a lock so two runs never write it at once.
//!
//! Written atomically (temp file in the same folder, fsync, rename, fsync the
//! folder) after every resource change, mode 0600 because it holds secrets.

use crate::cloud::resource::{Address, LiveResource};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct State {
    pub version: u32,
    /// Identifies one state's history: a saved plan is only valid for the lineage it was made on.
    pub lineage: String,
    /// Moves by one on every write.
    pub serial: u64,
    pub project: String,
    pub provider: String,
    pub resources: BTreeMap<Address, LiveResource>,
    /// Generated once, kept here, never printed.
    pub secrets: BTreeMap<String, String>,
    /// Per host facts of the config phase (managed files and their checksums, …).
    #[serde(default)]
    pub hosts: BTreeMap<String, Value>,
    /// The project CA and the hosts' certificates (their keys are among the secrets).
    #[serde(default, skip_serializing_if = "crate::pki::Pki::is_empty")]
    pub pki: crate::pki::Pki,
}

impl State {
    pub fn new(project: &str, provider: &str) -> State {
        State {
            version: STATE_VERSION,
            lineage: uuid::Uuid::new_v4().to_string(),
            serial: 0,
            project: project.to_string(),
            provider: provider.to_string(),
            resources: BTreeMap::new(),
            secrets: BTreeMap::new(),
            hosts: BTreeMap::new(),
            pki: Default::default(),
        }
    }

    pub fn machines(&self) -> impl Iterator<Item = &LiveResource> {
        self.resources.values().filter(|r| r.address.kind == crate::cloud::resource::Kind::Machine)
    }

    /// The secret `name`: from env `RIGGER_SECRET_<NAME>` if set, else the one kept
    /// in the state, else a new random one (kept from now on). Returns whether the state changed.
    pub fn ensure_secret(&mut self, name: &str) -> bool {
        let env_name = secret_env_var(name);
        let wanted = match std::env::var(&env_name) {
            Ok(v) if !v.is_empty() => v,
            _ => match self.secrets.get(name) {
                Some(_) => return false,
                None => generate_secret(name),
            },
        };
        if self.secrets.get(name) == Some(&wanted) {
            return false;
        }
        self.secrets.insert(name.to_string(), wanted);
        true
    }
}

/// The environment variable that sets the secret `name`: `RIGGER_SECRET_<NAME>`.
pub fn secret_env_var(name: &str) -> String {
    format!("RIGGER_SECRET_{}", name.to_ascii_uppercase())
}

/// A new value for the secret `name`: an RSA private key (PEM, PKCS#8) for
/// names ending in `_rsa_private_key` (Saleor signs its JWTs with one), else
/// 32 letters and digits.
pub fn generate_secret(name: &str) -> String {
    if name.ends_with("_rsa_private_key") {
        let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).expect("generating an RSA key");
        return key.serialize_pem();
    }
    random_secret(32)
}

/// Letters and digits only: safe inside URLs, YAML, shell and config files unquoted.
pub fn random_secret(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rngs::OsRng;
    (0..len).map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char).collect()
}

/// Where the state of a plan lives: `.rigger/<project>.state.json` beside the plan.
pub fn default_path(plan_dir: &Path, project: &str) -> PathBuf {
    plan_dir.join(".rigger").join(format!("{project}.state.json"))
}

/// An open state file with its lock held until this is dropped.

/// The roles the config phase last applied on a host (none if not recorded):
/// a role the plan no longer gives the host is drained there.
pub fn applied_roles(state: &State, host: &str) -> Vec<String> {
    state.hosts.get(host).and_then(|h| h.get("roles")).and_then(Value::as_array).into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect()
}

/// Record the roles a host now runs; true if that changed the state.
pub fn record_roles(state: &mut State, host: &str, roles: &[String]) -> bool {
    if applied_roles(state, host) == roles && state.hosts.get(host).is_some_and(|h| h.get("roles").is_some()) {
        return false;
    }
    let entry = state.hosts.entry(host.to_string()).or_insert_with(|| serde_json::json!({}));
    entry["roles"] = serde_json::json!(roles);
    true
}

pub struct StateStore {
    path: PathBuf,
    _lock: File,
}

#[derive(Serialize, Deserialize)]
struct LockInfo {
    pid: u32,
    command: String,
    user: String,
    host: String,
    since: String,
}

impl StateStore {
    /// Take the lock (failing at once, naming the holder, if another run has it).
    pub fn open(path: &Path, command: &str) -> Result<StateStore> {
        let dir = path.parent().context("state path has no folder")?;
        private_dir(dir)?;
        let lock_path = lock_path(path);
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("cannot open the lock file {}", lock_path.display()))?;
        if !try_flock(&lock)? {
            let holder = fs::read_to_string(&lock_path).ok().and_then(|s| serde_json::from_str::<LockInfo>(&s).ok());
            match holder {
                Some(h) => bail!(
                    "the state {} is locked by `{}` (pid {}, {}@{}, since {}) — wait for it to finish; a second run would corrupt the state",
                    path.display(),
                    h.command,
                    h.pid,
                    h.user,
                    h.host,
                    h.since
                ),
                None => bail!("the state {} is locked by another rigger run — wait for it to finish", path.display()),
            }
        }
        let info = LockInfo {
            pid: std::process::id(),
            command: command.to_string(),
            user: std::env::var("USER").unwrap_or_else(|_| "root".into()),
            host: nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default(),
            since: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        lock.set_len(0)?;
        use std::io::Seek;
        lock.seek(std::io::SeekFrom::Start(0))?;
        lock.write_all(serde_json::to_string(&info)?.as_bytes())?;
        // The lock lives as long as this open file: the store keeps it.
        Ok(StateStore { path: path.to_path_buf(), _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, or `None` if there is none yet.
    pub fn load(&self) -> Result<Option<State>> {
        read_state(&self.path)
    }

    /// Write atomically, with the serial moved on. Never leaves a half-written file.
    pub fn save(&self, state: &mut State) -> Result<()> {
        state.serial += 1;
        keep_backup(&self.path)?;
        write_atomic(&self.path, &serde_json::to_vec_pretty(state)?)
    }
}

/// Read a state without taking the lock (for read-only commands like `state list`).
pub fn read_state(path: &Path) -> Result<Option<State>> {
    match fs::read(path) {
        Ok(bytes) => {
            let state: State = serde_json::from_slice(&bytes).with_context(|| {
                let backup = backup_path(path);
                let what_to_do = if backup.exists() { format!("restore it from {} (the state before rigger's last write)", backup.display()) } else { "there is no backup of it; mend it by hand".to_string() };
                format!("the state file {} is not valid — {what_to_do}", path.display())
            })?;
            if state.version != STATE_VERSION {
                bail!("the state file {} has version {}, this rigger reads {STATE_VERSION}", path.display(), state.version);
            }
            Ok(Some(state))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Make `dir` (and its missing parents) closed to other users (0700). Only
/// folders made here are: `--state /tmp/x.json` must not take /tmp (or the
/// user's current folder) away from them.
pub fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// The state before rigger's last write, kept beside it (`<state>.backup`,
/// 0600), as Terraform keeps terraform.tfstate.backup: what to go back to
/// when the state is damaged. The run that writes has read the state it
/// replaces, so a state that does not read never gets here.
fn keep_backup(path: &Path) -> Result<()> {
    match fs::read(path) {
        Ok(bytes) => write_atomic(&backup_path(path), &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot read {} to keep a backup of it", path.display())),
    }
}

pub fn backup_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".backup");
    PathBuf::from(s)
}

fn lock_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// temp file in the same folder → fsync → rename over → fsync the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has no folder")?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").permissions(fs::Permissions::from_mode(0o600)).tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error).with_context(|| format!("cannot write {}", path.display()))?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Non-blocking exclusive flock; released by the kernel when the file is
/// closed, so a killed run never leaves a stale lock behind.
fn try_flock(file: &File) -> Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let rc = unsafe { nix::libc::flock(file.as_raw_fd(), nix::libc::LOCK_EX | nix::libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(nix::libc::EWOULDBLOCK) {
        return Ok(false);
    }
    Err(err).context("cannot lock the state")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_folder_made_for_the_state_is_closed_to_others() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        drop(StateStore::open(&shared.join("p.state.json"), "rigger plan").unwrap());
        assert_eq!(fs::metadata(&shared).unwrap().permissions().mode() & 0o7777, 0o1777, "a folder the user named keeps its mode");
        drop(StateStore::open(&dir.path().join("made/deeper/p.state.json"), "rigger plan").unwrap());
        for made in ["made", "made/deeper"] {
            assert_eq!(fs::metadata(dir.path().join(made)).unwrap().permissions().mode() & 0o777, 0o700, "{made}");
        }
    }

    #[test]
    fn each_write_keeps_the_state_before_it_and_a_broken_state_names_that_backup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".rigger/p.state.json");
        let store = StateStore::open(&path, "rigger apply").unwrap();
        let mut state = State::new("p", "local");
        store.save(&mut state).unwrap();
        assert!(!backup_path(&path).exists(), "nothing before the first write");
        let first = fs::read(&path).unwrap();
        store.save(&mut state).unwrap();
        let backup = backup_path(&path);
        assert_eq!(fs::read(&backup).unwrap(), first);
        assert_eq!(fs::metadata(&backup).unwrap().permissions().mode() & 0o777, 0o600);
        drop(store);
        // The state is damaged: loading it fails and names the backup to restore.
        fs::write(&path, b"{ broken").unwrap();
        let store = StateStore::open(&path, "rigger apply").unwrap();
        let err = format!("{:#}", store.load().err().unwrap());
        assert!(err.contains(&format!("restore it from {}", backup.display())), "{err}");
        assert_eq!(fs::read(&backup).unwrap(), first, "the backup is untouched");
    }

    #[test]
    fn second_open_fails_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".rigger/p.state.json");
        let first = StateStore::open(&path, "rigger apply").unwrap();
        let err = StateStore::open(&path, "rigger apply").err().unwrap().to_string();
        assert!(err.contains("locked by `rigger apply`"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        StateStore::open(&path, "rigger plan").unwrap();
    }

    #[test]
    fn save_is_0600_and_moves_the_serial() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".rigger/p.state.json");
        let store = StateStore::open(&path, "t").unwrap();
        let mut s = State::new("p", "local");
        s.ensure_secret("replication_password");
        store.save(&mut s).unwrap();
        store.save(&mut s).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let back = store.load().unwrap().unwrap();
        assert_eq!(back.serial, 2);
        assert_eq!(back.secrets["replication_password"].len(), 32);
    }

    #[test]
    fn rsa_private_keys_are_pem() {
        let pem = generate_secret("saleor_rsa_private_key");
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n") && pem.trim_end().ends_with("-----END PRIVATE KEY-----"), "{pem}");
        assert!(pem.len() > 1500);
    }

    #[test]
    fn secrets_are_generated_once() {
        let mut s = State::new("p", "local");
        assert!(s.ensure_secret("a"));
        let v = s.secrets["a"].clone();
        assert!(!s.ensure_secret("a"));
        assert_eq!(s.secrets["a"], v);
    }
}
