//! Showing the drain: the host-side steps that run before the cloud deletes
//! machines, numbered in the order they run, then the deletion itself.

use super::Paint;
use crate::reshape::{describe, drain::DrainPlan};

pub fn render_human(d: &DrainPlan, paint: &Paint) -> String {
    if d.steps.is_empty() && d.after_config.is_empty() && d.notes.is_empty() {
        // Nothing runs on the departing hosts (no role that needs draining).
        return String::new();
    }
    let retiring: Vec<String> = d.retiring.iter().map(|(h, roles)| format!("{h} loses {}", roles.join(", "))).collect();
    let mut whom = Vec::new();
    if !d.leaving.is_empty() {
        whom.push(format!("the machines {} are deleted", d.leaving.join(", ")));
    }
    if !retiring.is_empty() {
        whom.push(format!("the hosts are configured ({})", retiring.join("; ")));
    }
    let mut out = format!("{}
", paint.bold(&format!("Before {} (in this order):", whom.join(" and "))));
    let mut n = 0;
    for step in &d.steps {
        n += 1;
        out.push_str(&format!("  {n}. {}\n", describe(step)));
    }
    if !d.after_config.is_empty() {
        n += 1;
        out.push_str(&format!("  {n}. the config phase points the clients at the plan's hosts\n"));
        for step in &d.after_config {
            n += 1;
            out.push_str(&format!("  {n}. {}\n", describe(step)));
        }
    }
    if !d.leaving.is_empty() {
        out.push_str(&format!("  {}. {}\n", n + 1, paint.red(&format!("the cloud deletes {}", d.leaving.join(", ")))));
    }
    for n in &d.notes {
        out.push_str(&format!("  {}\n", paint.yellow(&format!("note: {n}"))));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reshape::drain::Step;

    #[test]
    fn steps_are_numbered_and_the_deletion_comes_last() {
        let d = DrainPlan {
            leaving: vec!["pg-4".into()],
            steps: vec![
                Step::Switchover { leader: "pg-4".into() },
                Step::Reload { role: "haproxy".into(), hosts: vec!["lb-1".into(), "lb-2".into()], without: vec!["pg-4".into()] },
                Step::PatroniLeave { member: "pg-4".into() },
            ],
            ..Default::default()
        };
        let text = render_human(&d, &Paint { on: false });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Before the machines pg-4 are deleted (in this order):");
        assert!(lines[1].starts_with("  1. patroni: switch the leader pg-4 over"), "{text}");
        assert_eq!(lines[2], "  2. haproxy lb-1, lb-2: reload without pg-4");
        assert!(lines[3].starts_with("  3. patroni pg-4: stop"), "{text}");
        assert_eq!(lines[4], "  4. the cloud deletes pg-4");
    }

    #[test]
    fn a_leaving_redis_stops_after_the_config_phase_and_before_the_deletion() {
        let d = DrainPlan {
            leaving: vec!["cache-1".into()],
            retiring: [("web-2".to_string(), vec!["app".to_string()])].into(),
            steps: vec![
                Step::Reload { role: "nginx".into(), hosts: vec!["lb-1".into()], without: vec!["web-2".into()] },
                Step::Stop { host: "web-2".into(), services: vec!["app".into()] },
            ],
            after_config: vec![Step::Stop { host: "cache-1".into(), services: vec!["redis-server".into()] }],
            notes: vec![],
        };
        let text = render_human(&d, &Paint { on: false });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Before the machines cache-1 are deleted and the hosts are configured (web-2 loses app) (in this order):");
        assert_eq!(lines[1], "  1. nginx lb-1: reload without web-2");
        assert_eq!(lines[2], "  2. web-2: stop app");
        assert_eq!(lines[3], "  3. the config phase points the clients at the plan's hosts");
        assert_eq!(lines[4], "  4. cache-1: stop redis-server");
        assert_eq!(lines[5], "  5. the cloud deletes cache-1");
    }
}
