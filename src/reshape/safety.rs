//! Count changes that would cost the quorum or the data in one apply are
//! refused before anything changes, at the plan's host entry, with why and
//! what to do instead. (Even etcd counts and fewer than 3 members are already
//! refused by plan validation.)

use super::drain::MAX_ETCD_REMOVALS;
use crate::plan::model::Plan;
use anyhow::{bail, Result};

/// `file:line:col` of the host entry that `host` (e.g. `pg-4`) came from:
/// its `name:` in the plan, else the `hosts:` key (the entry was removed).
pub fn entry_position(plan: &Plan, host: &str) -> String {
    let group = host.rsplit_once('-').filter(|(_, n)| n.chars().all(|c| c.is_ascii_digit())).map(|(g, _)| g).unwrap_or(host);
    let text = std::fs::read_to_string(&plan.file).unwrap_or_default();
    let find = |needle: &dyn Fn(&str) -> Option<usize>| text.lines().enumerate().find_map(|(i, l)| needle(l).map(|c| (i + 1, c + 1)));
    let by_name = find(&|l: &str| {
        let at = l.find("name:")?;
        let rest = l[at + 5..].trim_start();
        let value = rest.trim_start_matches(['"', '\'']);
        (value.starts_with(group) && !value[group.len()..].starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_')).then_some(at)
    });
    let (line, col) = by_name.or_else(|| find(&|l: &str| l.starts_with("hosts:").then_some(0))).unwrap_or((1, 1));
    format!("{}:{line}:{col}", plan.file.display())
}

/// Removing more than half of the Patroni members at once: the members that
/// stay may not hold every acknowledged write (asynchronous replication) and
/// a failure during the change leaves no majority to elect from.
pub fn patroni_removal(plan: &Plan, current: usize, leaving: &[String]) -> Result<()> {
    let remaining = current.saturating_sub(leaving.len());
    if remaining == 0 || leaving.len() * 2 > current {
        let most = (current / 2).max(if current > 1 { 1 } else { 0 });
        bail!(
            "{}: this apply would remove {} of the {current} Patroni members ({}) at once — a majority; the members that stay may lack the newest writes and a failure meanwhile leaves no majority — remove at most {most} per apply (lower `count` step by step, applying in between)",
            entry_position(plan, &leaving[0]),
            leaving.len(),
            leaving.join(", ")
        );
    }
    Ok(())
}

/// etcd shrinks one member at a time inside an apply; more than
/// MAX_ETCD_REMOVALS in one apply keeps the cluster at reduced fault
/// tolerance for too long, and an interrupted run leaves an even count.
pub fn etcd_removal(plan: &Plan, current: usize, leaving: &[String]) -> Result<()> {
    let remaining = current.saturating_sub(leaving.len());
    if remaining < 3 {
        bail!(
            "{}: this apply would leave etcd with {remaining} member(s) — it needs at least 3 for a quorum that survives a failure — keep 3 or 5 etcd hosts",
            entry_position(plan, &leaving[0])
        );
    }
    if leaving.len() > MAX_ETCD_REMOVALS {
        bail!(
            "{}: this apply would remove {} etcd members ({}) — at most {MAX_ETCD_REMOVALS} per apply (each leaves alone, the quorum checked in between; e.g. 7 → 5, apply, then 5 → 3)",
            entry_position(plan, &leaving[0]),
            leaving.len(),
            leaving.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_with(text: &str) -> (tempfile::TempDir, Plan) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.yaml");
        std::fs::write(&path, text).unwrap();
        let mut plan = dummy_plan();
        plan.file = path;
        (dir, plan)
    }

    fn dummy_plan() -> Plan {
        Plan {
            file: Default::default(),
            dir: Default::default(),
            version: 1,
            project: "p".into(),
            provider: crate::plan::model::ProviderConfig::Local(crate::plan::model::LocalConfig { image: "debian-12".into() }),
            ssh: crate::plan::model::SshConfig { user: "rigger".into(), private_key_file: Default::default(), public_key_file: Default::default(), bastion: None },
            network: crate::plan::model::Network { name: "main".into(), subnets: vec![] },
            firewall: vec![],
            hosts: vec![],
            services: Default::default(),
            security: Default::default(),
            public_addresses: Default::default(),
        }
    }

    const TEXT: &str = "version: 1\nhosts:\n  - { name: etcd, count: 3, roles: [etcd] }\n  - { name: pg, count: 1, roles: [patroni] }\n";

    #[test]
    fn removing_a_patroni_majority_is_refused_at_the_entry() {
        let (_d, plan) = plan_with(TEXT);
        let e = patroni_removal(&plan, 3, &["pg-2".into(), "pg-3".into()]).unwrap_err().to_string();
        assert!(e.contains("plan.yaml:4:7: this apply would remove 2 of the 3 Patroni members (pg-2, pg-3)"), "{e}");
        assert!(e.contains("remove at most 1 per apply"), "{e}");
        assert!(patroni_removal(&plan, 4, &["pg-4".into()]).is_ok());
        assert!(patroni_removal(&plan, 4, &["pg-3".into(), "pg-4".into()]).is_ok(), "half is not a majority");
    }

    #[test]
    fn etcd_shrinks_by_two_at_most_and_keeps_three() {
        let (_d, plan) = plan_with(TEXT);
        assert!(etcd_removal(&plan, 5, &["etcd-4".into(), "etcd-5".into()]).is_ok());
        let e = etcd_removal(&plan, 7, &["etcd-4".into(), "etcd-5".into(), "etcd-6".into(), "etcd-7".into()]).unwrap_err().to_string();
        assert!(e.contains("plan.yaml:3:7: this apply would remove 4 etcd members") && e.contains("at most 2 per apply"), "{e}");
        let e = etcd_removal(&plan, 3, &["etcd-3".into()]).unwrap_err().to_string();
        assert!(e.contains("leave etcd with 2 member(s)"), "{e}");
    }

    #[test]
    fn a_removed_entry_points_at_hosts() {
        let (_d, plan) = plan_with(TEXT);
        assert!(entry_position(&plan, "ex-1").ends_with("plan.yaml:2:1"));
    }
}
