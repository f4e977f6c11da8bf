//! Count changes on a running stack: members join and leave one at a time,
//! and a machine that leaves is drained (VIP moved, leader switched over,
//! load balancers reloaded without it, cluster memberships removed) before
//! the cloud deletes it.

pub mod etcd_members;
pub mod drain;
pub mod run;
pub mod safety;

use drain::Step;

/// One line per step, for progress and for `plan` (ui::drain).
pub fn describe(step: &Step) -> String {
    match step {
        Step::MoveVip { holder, vip, to } => format!("keepalived {holder}: stop, the VIP {vip} moves to {}", to.join(" or ")),
        Step::Switchover { leader } => format!("patroni: switch the leader {leader} over to a remaining streaming replica (Patroni /switchover)"),
        Step::Reload { role, hosts, without } => format!("{role} {}: reload without {}", hosts.join(", "), without.join(", ")),
        Step::Stop { host, services } => format!("{host}: stop {}", services.join(", ")),
        Step::PatroniLeave { member } => format!("patroni {member}: stop, remove its DCS member key, wait until the leader drops its replication slot"),
        Step::EtcdRemove { member } => format!("etcd {member}: member remove, then stop (the others healthy before the next)"),
    }
}
