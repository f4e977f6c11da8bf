//! An application's code, from a local directory, as managed files: each file
//! is checksum-compared like any config file (unchanged code uploads nothing
//! and restarts nothing), and a manifest listing every file lets the role
//! remove files that were deleted locally.

use super::file;
use crate::hosts::ops::ManagedFile;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Folders that are build output, caches or VCS data, never deployed.
const SKIP: &[&str] = &[".git", "__pycache__", ".venv", "venv", "node_modules", ".next", ".pytest_cache", ".mypy_cache"];
/// A guard against pointing `path` at a home folder by mistake.
const MAX_FILES: usize = 2000;
pub const MANIFEST: &str = ".rigger-manifest";

/// Every file under `local` as a file under `remote`, root-owned and
/// read-only to the service (the app's user cannot change its own code).
pub fn files(role: &'static str, local: &Path, remote: &str, notify: &[&str]) -> Result<Vec<ManagedFile>> {
    if !local.is_dir() {
        bail!("{} is not a directory — set services.{role}.path to the application's folder (relative to the plan file)", local.display());
    }
    let mut found = Vec::new();
    walk(local, local, &mut found)?;
    found.sort();
    let mut out = Vec::new();
    let mut manifest = String::new();
    for rel in &found {
        let bytes = std::fs::read(local.join(rel)).with_context(|| format!("reading {}", local.join(rel).display()))?;
        let Ok(text) = String::from_utf8(bytes) else {
            bail!("{} is not UTF-8 text — the {role} role copies source files; build binary assets on the host", local.join(rel).display());
        };
        manifest.push_str(&format!("{}  {rel}\n", crate::hosts::ops::sha256_hex(text.as_bytes())));
        out.push(file(role, &format!("{remote}/{rel}"), text, 0o644, "root", "root", None, notify));
    }
    out.push(file(role, &format!("{remote}/{MANIFEST}"), manifest, 0o644, "root", "root", None, notify));
    Ok(out)
}

fn walk(root: &Path, dir: &Path, found: &mut Vec<String>) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let kind = e.file_type()?;
        if kind.is_dir() {
            if !SKIP.contains(&name.as_str()) {
                walk(root, &e.path(), found)?;
            }
        } else if kind.is_file() && !name.ends_with(".pyc") && name != MANIFEST {
            let rel = e.path().strip_prefix(root).map(|p| p.to_string_lossy().into_owned()).unwrap_or(name);
            if rel.contains(['\n', '\'', ' ']) {
                bail!("{}: file names with spaces, quotes or newlines are not deployed — rename it", e.path().display());
            }
            found.push(rel);
            if found.len() > MAX_FILES {
                bail!("{} holds more than {MAX_FILES} files — is services.*.path the application's folder?", root.display());
            }
        }
    }
    Ok(())
}

/// A shell snippet removing files under `remote` that the manifest no longer lists.
pub fn prune_script(remote: &str) -> String {
    format!(
        "cd '{remote}' && find . -type f ! -name '{MANIFEST}' ! -path './__pycache__/*' ! -path '*/__pycache__/*' ! -path './node_modules/*' ! -path './.next/*' | sed 's#^\\./##' | sort > /tmp/.rigger-have.$$ && \
         sed 's/^[0-9a-f]*  //' {MANIFEST} | sort > /tmp/.rigger-want.$$ && comm -23 /tmp/.rigger-have.$$ /tmp/.rigger-want.$$ | while IFS= read -r f; do rm -f -- \"$f\"; echo \"removed $f\"; done; rm -f /tmp/.rigger-have.$$ /tmp/.rigger-want.$$"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_files_and_a_manifest_caches_skipped() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("app.py"), "print(1)\n").unwrap();
        std::fs::create_dir(d.path().join("__pycache__")).unwrap();
        std::fs::write(d.path().join("__pycache__/app.cpython-311.pyc"), [0u8, 159]).unwrap();
        std::fs::create_dir(d.path().join("pkg")).unwrap();
        std::fs::write(d.path().join("pkg/util.py"), "x = 1\n").unwrap();
        let f = files("app", d.path(), "/opt/app/src", &["app"]).unwrap();
        let paths: Vec<&str> = f.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, vec!["/opt/app/src/app.py", "/opt/app/src/pkg/util.py", "/opt/app/src/.rigger-manifest"]);
        assert!(f[2].content.ends_with("  pkg/util.py\n"));
        assert!(f.iter().all(|f| f.notify == vec!["app".to_string()] && f.owner == "root"));
    }

    #[test]
    fn a_missing_folder_says_which_setting() {
        let e = files("app", Path::new("/nonexistent/x"), "/opt/app/src", &[]).unwrap_err();
        assert!(format!("{e}").contains("services.app.path"));
    }
}
