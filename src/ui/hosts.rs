//! Showing the host side of a plan: per host, which files would change (a
//! unified diff, secrets masked) and which services would start, restart or
//! reload — like `ansible --check --diff`, beside the cloud changes.

use super::Paint;
use crate::hosts::phase::ConfigPlan;
use serde::Serialize;
use similar::TextDiff;
use std::collections::BTreeMap;

const MASK: &str = "(sensitive)";
/// A file rigger takes over from the distro can differ in hundreds of lines:
/// show the start of the diff, not all of it.
const MAX_DIFF_LINES: usize = 60;

/// Replace every secret value in `text` by a mask, as written and in the
/// forms templates write it: JSON-escaped (patroni.yml), percent-encoded
/// (database and Redis URLs), backslash-escaped (curl's config).
pub fn mask(text: &str, secrets: &BTreeMap<String, String>) -> String {
    let mut out = text.to_string();
    for v in secrets.values().filter(|v| v.len() >= 6) {
        for form in written_forms(v) {
            out = out.replace(form.as_str(), MASK);
        }
    }
    out
}

fn written_forms(secret: &str) -> Vec<String> {
    let json = serde_json::to_string(secret).unwrap_or_default();
    let percent: String = secret
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    let mut forms = vec![secret.to_string(), json[1..json.len() - 1].to_string(), percent, secret.replace('\\', "\\\\").replace('"', "\\\"")];
    // Longest first: a form that contains another is masked whole.
    forms.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    forms.dedup();
    forms
}

/// A file's change as unified-diff lines, secrets masked. Of a file others
/// may not read (ManagedFile::content_is_private) the lines of the live copy
/// are never shown, only counted: they may hold secrets the state no longer
/// knows (a TLS key being replaced, a rotated password, a state made anew).
/// The new lines and the context come from what rigger renders, whose
/// secrets it knows and masks.
fn diff_lines(old: &str, new: &str, private: bool, secrets: &BTreeMap<String, String>) -> Vec<String> {
    // Masked whole, before the lines part: a secret of several lines (a PEM
    // key) matches no single line.
    let (old, new) = (mask(old, secrets), mask(new, secrets));
    let diff = TextDiff::from_lines(&old, &new);
    let mut lines = Vec::new();
    for hunk in diff.unified_diff().context_radius(2).iter_hunks() {
        lines.push(hunk.header().to_string());
        let mut withheld = 0;
        for change in hunk.iter_changes() {
            let text = change.value().trim_end_matches('\n');
            if change.tag() == similar::ChangeTag::Delete && private {
                withheld += 1;
                continue;
            }
            if withheld > 0 {
                lines.push(format!("-(… {withheld} line(s) of the live file, not shown: it may hold secrets)"));
                withheld = 0;
            }
            lines.push(format!("{}{text}", change.tag()));
        }
        if withheld > 0 {
            lines.push(format!("-(… {withheld} line(s) of the live file, not shown: it may hold secrets)"));
        }
    }
    lines
}

#[derive(Serialize, Default)]
pub struct HostSummary {
    pub files: usize,
    pub start: usize,
    pub restart: usize,
    pub reload: usize,
    pub install: usize,
    pub parameters: usize,
    pub pending_restarts: usize,
    pub enable: usize,
    pub stop: usize,
}

impl HostSummary {
    pub fn of(cp: &ConfigPlan) -> HostSummary {
        let mut s = HostSummary { parameters: cp.parameter_changes.len(), pending_restarts: cp.pending_restarts.len(), ..Default::default() };
        for hp in cp.hosts.values() {
            let c = &hp.changes;
            s.files += c.files.len();
            s.start += c.start.len();
            s.restart += c.restart.len();
            s.reload += c.reload.len() + c.custom.len();
            s.install += c.install.len();
            s.enable += c.enable.len();
            s.stop += c.stop_disable.len();
        }
        s
    }
}

pub fn render_human(cp: &ConfigPlan, secrets: &BTreeMap<String, String>, paint: &Paint) -> String {
    let mut out = String::new();
    if !cp.not_built.is_empty() {
        out.push_str(&format!("Hosts configured once their machines exist: {}\n\n", cp.not_built.join(", ")));
    }
    let changed: Vec<_> = cp.hosts.iter().filter(|(_, hp)| !hp.changes.is_empty()).collect();
    if changed.is_empty() && cp.parameter_changes.is_empty() && cp.pending_restarts.is_empty() {
        out.push_str(&unread(cp, paint));
        if !cp.hosts.is_empty() && cp.unread.is_empty() {
            out.push_str(&format!("{} Every host matches its roles.\n", paint.green("No host changes.")));
        }
        return out;
    }
    out.push_str("Host changes:\n\n");
    for (name, hp) in changed {
        let c = &hp.changes;
        out.push_str(&format!("  {} host {}\n", paint.yellow("~"), paint.bold(name)));
        if !c.install.is_empty() {
            out.push_str(&format!("      {} install {}\n", paint.green("+"), c.install.join(" ")));
        }
        for s in &c.stop_disable {
            out.push_str(&format!("      {} stop and disable {s}\n", paint.red("-")));
        }
        for fc in &c.files {
            out.push_str(&format!("      {} {} ({})\n", paint.yellow("~"), fc.file.path, fc.reasons.join(", ")));
            if fc.content_changed {
                let old = hp.old_content.get(&fc.file.path).map(String::as_str).unwrap_or("");
                let lines = diff_lines(old, &fc.file.content, fc.file.content_is_private(), secrets);
                let total = lines.len();
                for (i, line) in lines.iter().enumerate() {
                    if i == MAX_DIFF_LINES && total > MAX_DIFF_LINES + 10 {
                        out.push_str(&format!("          {}\n", paint.dim(&format!("… {} more diff lines", total - i))));
                        break;
                    }
                    let shown = if line.starts_with('+') {
                        paint.green(line)
                    } else if line.starts_with('-') {
                        paint.red(line)
                    } else {
                        paint.dim(line)
                    };
                    out.push_str(&format!("          {shown}\n"));
                }
            }
        }
        // Custom-handled services (Patroni) re-read their file; restarts they need roll (below).
        for (what, list) in [("start", &c.start), ("restart", &c.restart), ("reload", &c.reload), ("reload", &c.custom), ("enable at boot", &c.enable)] {
            for s in list {
                out.push_str(&format!("      {} {what} {s}\n", paint.yellow("↻")));
            }
        }
        out.push('\n');
    }
    if !cp.parameter_changes.is_empty() {
        out.push_str("  PostgreSQL parameters (in the DCS; a restart, when one is needed, rolls: replicas, switchover, old leader):\n");
        for (k, now, want) in &cp.parameter_changes {
            out.push_str(&format!("      {} {k} = {} -> {want:?}\n", paint.yellow("~"), now.as_deref().map(|n| format!("{n:?}")).unwrap_or("(unset)".into())));
        }
        out.push('\n');
    }
    if !cp.pending_restarts.is_empty() {
        out.push_str(&format!(
            "  PostgreSQL restarts still pending (rolled on apply: replicas, then the leader after a switchover): {}\n\n",
            cp.pending_restarts.join(", ")
        ));
    }
    out.push_str(&unread(cp, paint));
    let s = HostSummary::of(cp);
    let mut rarer = String::new();
    for (n, what) in [(s.enable, "to enable at boot"), (s.stop, "to stop and disable")] {
        if n > 0 {
            rarer.push_str(&format!(", {n} {what}"));
        }
    }
    out.push_str(&format!(
        "{} {} files to change, {} services to start, {} to restart, {} to reload{rarer}, {} parameters.\n",
        paint.bold("Hosts:"),
        s.files,
        s.start,
        s.restart,
        s.reload,
        s.parameters
    ));
    out
}

/// What the plan could not read although the daemons run: it may owe changes there.
fn unread(cp: &ConfigPlan, paint: &Paint) -> String {
    if cp.unread.is_empty() {
        return String::new();
    }
    let mut out = format!("  {} (apply reads them again, live, before it acts):\n", paint.yellow("Not read, so this plan cannot say whether they change"));
    for what in &cp.unread {
        out.push_str(&format!("      {} {what}\n", paint.yellow("?")));
    }
    out.push('\n');
    out
}

/// The host changes a saved plan holds, as `apply FILE` shows them before it
/// checks them against the hosts (no diffs: the file holds hashes, not content).
pub fn render_saved(s: &crate::hosts::summary::HostPlanSummary, paint: &Paint) -> String {
    let changed: Vec<_> = s.hosts.iter().filter(|(_, h)| **h != Default::default()).collect();
    if changed.is_empty() && s.parameter_changes.is_empty() && s.pending_restarts.is_empty() {
        return format!("{} Every host matched its roles when the plan was saved.\n", paint.green("No host changes."));
    }
    let mut out = String::from("Host changes (as saved):\n\n");
    for (name, h) in changed {
        out.push_str(&format!("  {} host {}\n", paint.yellow("~"), paint.bold(name)));
        if !h.install.is_empty() {
            out.push_str(&format!("      {} install {}\n", paint.green("+"), h.install.join(" ")));
        }
        for svc in &h.stop_disable {
            out.push_str(&format!("      {} stop and disable {svc}\n", paint.red("-")));
        }
        for f in &h.files {
            out.push_str(&format!("      {} {} ({}) {} {}:{} {}\n", paint.yellow("~"), f.path, f.reasons.join(", "), f.mode, f.owner, f.group, paint.dim(&format!("hmac {}", &f.content_hmac[..f.content_hmac.len().min(12)]))));
        }
        for (what, list) in [("start", &h.start), ("restart", &h.restart), ("reload", &h.reload), ("reload", &h.custom), ("enable at boot", &h.enable)] {
            for svc in list {
                out.push_str(&format!("      {} {what} {svc}\n", paint.yellow("↻")));
            }
        }
        out.push('\n');
    }
    for p in &s.parameter_changes {
        out.push_str(&format!("  {} PostgreSQL {} = {} -> {:?}\n", paint.yellow("~"), p.name, p.now.as_deref().map(|n| format!("{n:?}")).unwrap_or("(unset)".into()), p.wanted));
    }
    if !s.pending_restarts.is_empty() {
        out.push_str(&format!("  PostgreSQL restarts still pending: {}\n", s.pending_restarts.join(", ")));
    }
    out
}

/// The host part of `plan --json`.
#[derive(Serialize)]
pub struct HostChangeJson {
    pub host: String,
    pub install: Vec<String>,
    pub files: Vec<FileChangeJson>,
    pub start: Vec<String>,
    pub restart: Vec<String>,
    pub reload: Vec<String>,
    pub enable: Vec<String>,
    pub stop_disable: Vec<String>,
}

#[derive(Serialize)]
pub struct FileChangeJson {
    pub path: String,
    pub reasons: Vec<&'static str>,
}

pub fn json(cp: &ConfigPlan) -> Vec<HostChangeJson> {
    cp.hosts
        .iter()
        .filter(|(_, hp)| !hp.changes.is_empty())
        .map(|(name, hp)| {
            let c = &hp.changes;
            HostChangeJson {
                host: name.clone(),
                install: c.install.clone(),
                files: c.files.iter().map(|f| FileChangeJson { path: f.file.path.clone(), reasons: f.reasons.clone() }).collect(),
                start: c.start.clone(),
                restart: c.restart.clone(),
                reload: c.reload.iter().chain(c.custom.iter()).cloned().collect(),
                enable: c.enable.clone(),
                stop_disable: c.stop_disable.clone(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosts::phase::HostPlan;

    #[test]
    fn a_secret_is_masked_in_every_form_the_templates_write_it() {
        let secrets: BTreeMap<String, String> = [("app_db_password".to_string(), r#"p@ss/w0rd"!\x"#.to_string())].into();
        let text = "DATABASE_URL=postgresql://app:p%40ss%2Fw0rd%22%21%5Cx@10.0.0.5:5000/app\npassword: \"p@ss/w0rd\\\"!\\\\x\"\nuser = \"rigger:p@ss/w0rd\\\"!\\\\x\"\nraw p@ss/w0rd\"!\\x\n";
        let masked = mask(text, &secrets);
        assert!(!masked.contains("w0rd"), "{masked}");
        assert_eq!(masked.matches(MASK).count(), 4, "{masked}");
    }

    #[test]
    fn a_secret_of_several_lines_is_masked_whole() {
        let key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\nKeyMaterialLine2KeyMaterialLine2KeyMaterialLine2\n-----END PRIVATE KEY-----\n";
        let secrets: BTreeMap<String, String> = [("tls_key_pg-1".to_string(), key.to_string())].into();
        let lines = diff_lines("", key, true, &secrets).join("\n");
        assert!(!lines.contains("MIGHAgEA") && !lines.contains("KeyMaterial") && lines.contains("+(sensitive)"), "{lines}");
    }

    #[test]
    fn a_public_files_old_lines_show_and_a_private_files_are_counted() {
        let secrets = BTreeMap::new();
        let old = "a\nb\nold-1\nold-2\nc\n";
        let new = "a\nb\nnew\nc\n";
        let public = diff_lines(old, new, false, &secrets);
        assert_eq!(public, ["@@ -1,5 +1,4 @@", " a", " b", "-old-1", "-old-2", "+new", " c"]);
        let private = diff_lines(old, new, true, &secrets);
        assert_eq!(private, ["@@ -1,5 +1,4 @@", " a", " b", "-(… 2 line(s) of the live file, not shown: it may hold secrets)", "+new", " c"]);
    }

    #[test]
    fn a_service_that_only_needs_enabling_is_a_change_shown_and_counted() {
        let changes = crate::hosts::ops::HostChanges { host: "web".into(), enable: vec!["nginx".into()], ..Default::default() };
        let hp = HostPlan { desired: Default::default(), facts: Default::default(), changes, old_content: BTreeMap::new() };
        let cp = ConfigPlan::of_hosts([("web".to_string(), hp)].into(), vec![]);
        // One `is_empty` decides `plan --detailed-exitcode` and apply's confirmation.
        assert!(!cp.is_empty());
        let text = render_human(&cp, &BTreeMap::new(), &Paint { on: false });
        assert!(text.contains("↻ enable at boot nginx"), "{text}");
        assert!(text.contains("0 to reload, 1 to enable at boot, 0 parameters."), "{text}");
    }

    #[test]
    fn saved_host_changes_are_shown_by_hash_and_an_unchanged_host_is_not_listed() {
        use crate::hosts::summary::{FileSummary, HostChangeSummary, HostPlanSummary};
        let file = FileSummary { path: "/etc/redis/redis.conf".into(), reasons: vec!["content".into()], mode: "0640".into(), owner: "redis".into(), group: "redis".into(), content_hmac: "d155".into() };
        let mut s = HostPlanSummary::default();
        s.hosts.insert("cache".into(), HostChangeSummary { files: vec![file], restart: vec!["redis-server".into()], ..Default::default() });
        s.hosts.insert("idle".into(), HostChangeSummary::default());
        let text = render_saved(&s, &Paint { on: false });
        assert!(text.contains("~ /etc/redis/redis.conf (content) 0640 redis:redis hmac d155\n      ↻ restart redis-server"), "{text}");
        assert!(!text.contains("idle"), "{text}");
        s.hosts.remove("cache");
        assert!(render_saved(&s, &Paint { on: false }).starts_with("No host changes."));
    }
}
