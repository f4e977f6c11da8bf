//! Optional SSH masters that outlive a run (off by default). With
//! `RIGGER_SSH_PERSIST=<seconds>`, each host's ControlMaster stays up that long
//! after its last use (ssh's ControlPersist) and the next run reuses it: no
//! new handshake, so a no-change apply costs about one round trip per host.
//! The masters were opened with the project's verified host keys; their
//! sockets sit in private (0700) temp folders, noted in
//! `.rigger/<project>.ssh_config.masters/<host>` (0600). A master that is gone
//! or broken is simply replaced by a new connection.

use openssh::Session;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

pub const ENV: &str = "RIGGER_SSH_PERSIST";

/// How long an idle master stays up, when persisting is asked for.
pub fn idle_seconds() -> Option<NonZeroUsize> {
    std::env::var(ENV).ok().and_then(|v| v.trim().parse::<usize>().ok()).and_then(NonZeroUsize::new)
}

/// Where the control socket of `host`'s master is noted.
pub fn record_path(ssh_config: &Path, host: &str) -> PathBuf {
    note_path(ssh_config, ".masters", host)
}

/// `host`'s note in the folder beside the ssh_config named by `suffix`.
fn note_path(ssh_config: &Path, suffix: &str, host: &str) -> PathBuf {
    let mut dir = ssh_config.as_os_str().to_owned();
    dir.push(suffix);
    PathBuf::from(dir).join(host)
}

/// Write a master's control socket path to `record` (0600); a note that
/// cannot be written is removed rather than left half-written.
fn write_note(record: &Path, ctl: &Path) {
    if let Some(dir) = record.parent() {
        let _ = crate::state::private_dir(dir);
    }
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let written = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(record).and_then(|mut f| f.write_all(ctl.to_string_lossy().as_bytes()));
    if written.is_err() {
        let _ = std::fs::remove_file(record);
    }
}

/// The master noted for this host, if it still answers.
pub async fn resume(record: &Path) -> Option<Session> {
    let ctl = std::fs::read_to_string(record).ok()?;
    let ctl = Path::new(ctl.trim());
    if !ctl.exists() {
        return None;
    }
    let session = Session::resume_mux(ctl.into(), None);
    match session.check().await {
        Ok(()) => Some(session),
        Err(_) => {
            let _ = std::fs::remove_file(record);
            None
        }
    }
}

/// Leave the master running and note where its socket is.
pub fn keep(session: Session, record: &Path) {
    let (ctl, _log) = session.detach();
    write_note(record, &ctl);
}

/// Where `wait_for_ssh` notes the master its last, successful probe left
/// running for the config phase (the first apply's hosts then need one
/// handshake, not two).
pub fn handoff_record(ssh_config: &Path, host: &str) -> PathBuf {
    note_path(ssh_config, ".handoff", host)
}

/// Close the probes' masters no config phase took over (an apply that
/// stopped before it): they were started to outlive their probe
/// (ControlPersist=yes — an idle limit could end one while a long role
/// elsewhere keeps its host waiting).
pub async fn drop_handoffs(ssh_config: &Path) {
    let dir = handoff_record(ssh_config, "x").parent().map(Path::to_path_buf);
    let Some(Ok(entries)) = dir.map(std::fs::read_dir) else { return };
    for record in entries.flatten().map(|e| e.path()) {
        if let Some((session, dir)) = take_handoff(&record).await {
            let _ = session.close().await;
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Note the probe's master (its socket `ctl`) for the config phase.
pub fn note_handoff(record: &Path, ctl: &Path) {
    write_note(record, ctl);
}

/// The master noted for the config phase, if it still answers; the note is
/// used once. Also returns the private folder of its socket (removed on close).
pub async fn take_handoff(record: &Path) -> Option<(Session, PathBuf)> {
    let ctl = std::fs::read_to_string(record).ok()?;
    let _ = std::fs::remove_file(record);
    let ctl = PathBuf::from(ctl.trim());
    let dir = ctl.parent()?.to_path_buf();
    let session = Session::resume_mux(ctl.clone().into_boxed_path(), None);
    match session.check().await {
        Ok(()) => Some((session, dir)),
        Err(_) => {
            let _ = std::fs::remove_dir_all(&dir);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    /// A hand-off whose master is gone (an apply that stopped, a master
    /// that ended) is used once: its note and its socket folder go.
    #[tokio::test]
    async fn a_stale_handoff_is_dropped_note_and_folder() {
        let project = tempfile::tempdir().unwrap();
        let config = project.path().join("x.ssh_config");
        assert_eq!(super::handoff_record(&config, "pg-1"), project.path().join("x.ssh_config.handoff/pg-1"));
        let sockets = tempfile::tempdir().unwrap().keep();
        super::note_handoff(&super::handoff_record(&config, "pg-1"), &sockets.join("m"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(super::handoff_record(&config, "pg-1")).unwrap().permissions().mode() & 0o777, 0o600);
        super::drop_handoffs(&config).await;
        assert!(!super::handoff_record(&config, "pg-1").exists());
        assert!(!sockets.exists());
        // Nothing noted: nothing to do.
        super::drop_handoffs(&project.path().join("none.ssh_config")).await;
    }

    #[test]
    fn the_record_sits_beside_the_ssh_config() {
        let p = super::record_path(std::path::Path::new("/p/.rigger/x.ssh_config"), "pg-1");
        assert_eq!(p, std::path::PathBuf::from("/p/.rigger/x.ssh_config.masters/pg-1"));
    }
}
