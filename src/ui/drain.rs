//! Showing the drain: the host-side steps that run before the cloud deletes
//! machines, numbered in the order they run, then the deletion itself.

use super::Paint;
use crate::reshape::{describe, drain::DrainPlan};

pub fn render_human(d: &DrainPlan, paint: &Paint) -> String {
    if d.steps.is_empty() && d.notes.is_empty() {
        // Nothing runs on the leaving machines (no role that needs draining).
        return String::new();
    }
    let mut out = format!("{}\n", paint.bold(&format!("Before the machines {} are deleted (in this order):", d.leaving.join(", "))));
    for (i, step) in d.steps.iter().enumerate() {
        out.push_str(&format!("  {}. {}\n", i + 1, describe(step)));
    }
    out.push_str(&format!("  {}. {}\n", d.steps.len() + 1, paint.red(&format!("the cloud deletes {}", d.leaving.join(", ")))));
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
            notes: vec![],
        };
        let text = render_human(&d, &Paint { on: false });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Before the machines pg-4 are deleted (in this order):");
        assert!(lines[1].starts_with("  1. patroni: switch the leader pg-4 over"), "{text}");
        assert_eq!(lines[2], "  2. haproxy lb-1, lb-2: reload without pg-4");
        assert!(lines[3].starts_with("  3. patroni pg-4: stop"), "{text}");
        assert_eq!(lines[4], "  4. the cloud deletes pg-4");
    }
}
