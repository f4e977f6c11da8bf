//! End to end on real local machines: apply a small plan with the rigger
//! binary, reach every machine over SSH with strict host keys, re-plan to zero
//! changes, destroy, and check that nothing is left. A guard destroys and
//! cleans up even when an assertion fails.

mod common;

use common::{rigger, LocalPlan, OutputText};

#[test]
fn apply_ssh_replan_destroy_leaves_nothing() {
    let plan = LocalPlan::new("t-apply", 2);

    let out = rigger(&["validate", plan.path()]);
    assert!(out.status.success(), "validate: {}", out.stderr_text());

    // Nothing exists yet: the plan adds network, subnet, firewall group and machines.
    let out = rigger(&["plan", plan.path(), "--infra-only", "--detailed-exitcode"]);
    assert_eq!(out.code(), 2, "a fresh plan has changes: {}", out.text());
    assert!(out.stdout_text().contains("Plan: 5 to add, 0 to change, 0 to destroy."), "{}", out.stdout_text());

    let out = rigger(&["apply", plan.path(), "--infra-only", "--auto-approve"]);
    assert!(out.status.success(), "apply failed:\n{}", out.text());

    // Every machine answers SSH, with host keys checked against what rigger recorded.
    for (name, ip) in plan.hosts() {
        let hostname = plan.ssh(&ip, "hostname");
        assert_eq!(hostname.trim(), name, "machine at {ip} says it is {hostname:?}");
    }

    // A changed host key is refused, not trusted.
    let tampered = plan.dir().join("tampered_known_hosts");
    let (_, first_ip) = plan.hosts()[0].clone();
    std::fs::write(&tampered, format!("{first_ip} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHqGLrfpnTV3nB0DfBgsmK0ZC5sLfqjlP7YZdEeNFYwF\n")).unwrap();
    let refused = plan.ssh_with_known_hosts(&first_ip, &tampered, "true");
    assert!(!refused.status.success(), "ssh must refuse a host whose key does not match");

    // Right after apply: nothing to change, exit 0 with --detailed-exitcode.
    let out = rigger(&["plan", plan.path(), "--infra-only", "--detailed-exitcode"]);
    assert_eq!(out.code(), 0, "re-plan must be empty:\n{}", out.text());
    assert!(out.stdout_text().contains("No changes."), "{}", out.stdout_text());

    // The state is 0600 and lists every resource.
    let state = plan.state_path();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&state).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let out = rigger(&["state", "list", plan.path()]);
    assert_eq!(out.stdout_text().lines().count(), 5, "{}", out.stdout_text());

    let out = rigger(&["destroy", plan.path(), "--auto-approve"]);
    assert!(out.status.success(), "destroy failed:\n{}", out.text());
    plan.assert_nothing_left();

    let out = rigger(&["plan", plan.path(), "--infra-only", "--detailed-exitcode"]);
    assert_eq!(out.code(), 2, "after destroy everything is to be created again:\n{}", out.text());
}
