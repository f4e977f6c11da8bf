//! `rigger drill --rounds N`: N crashes of the leader's machine (each round
//! waits for the old leader to stream again, so every round starts healthy),
//! then one planned switchover while writing. Reports the median and worst
//! crash RTO, the switchover's write gap, and acknowledged writes lost per round.

use super::drill::{crash_round, write_target, Writer};
use crate::project::Project;
use crate::cloud::providers::Provider;
use crate::state::{State, StateStore};
use anyhow::Result;
use std::time::{Duration, Instant};
use crate::hosts::roles::patroni;

pub async fn run(
    project: &Project,
    provider: &dyn Provider,
    store: &StateStore,
    state: &mut State,
    shutdown: bool,
    rounds: u32,
) -> Result<i32> {
    let preset = crate::plan::rto::of_plan(&project.plan);
    let sync = project.plan.bool_setting(patroni::NAME, "synchronous_mode");
    println!("drill: {rounds} crash round(s), then a planned switchover (rto preset {}, synchronous_mode {sync})", preset.name);
    let mut rtos = Vec::new();
    let mut lost_total = 0;
    let mut failed = false;
    for round in 1..=rounds {
        let r = crash_round(project, provider, store, state, shutdown).await?;
        lost_total += r.lost.len();
        match (&r.rto, &r.rejoined) {
            (Ok(rto), Ok(back)) => {
                println!("round {round}: RTO {:.1}s, {} acknowledged writes, {} lost, old leader {} streaming {back:.1}s after power-on", rto.as_secs_f64(), r.committed, r.lost.len(), r.leader);
                rtos.push(rto.as_secs_f64());
            }
            (rto, back) => {
                failed = true;
                println!(
                    "round {round}: FAILED — RTO {:?}, rejoin {:?}",
                    rto.as_ref()
                        .map(|d| d.as_secs_f64())
                        .map_err(|e| format!("{e:#}")),
                    back.as_ref().map_err(|e| format!("{e:#}"))
                );
                break;
            }
        }
    }
    let switchover = planned_switchover(project, state).await;
    println!();
    if let Some((median, worst)) = median_and_worst(&rtos) {
        println!("crash RTO over {} round(s): median {median:.1}s, worst {worst:.1}s (preset {}: ttl {}, loop_wait {})", rtos.len(), preset.name, preset.ttl, preset.loop_wait);
    }
    match &switchover {
        Ok(p) => {
            lost_total += p.lost;
            println!("planned switchover: write gap {:.1}s ({} acknowledged writes, {} lost; {:.1}s until healthy again)", p.gap.as_secs_f64(), p.committed, p.lost, p.healthy_after);
            if let Some((before, after, leads)) = p.timeline {
                println!("  timeline from the start of the switchover (health gate, POST /switchover): last write before the gap +{before:.2}s, new leader seen leading +{leads:.2}s, first write after +{after:.2}s");
            }
        }
        Err(e) => println!("planned switchover FAILED: {e:#}"),
    }
    println!(
        "acknowledged writes lost in all rounds: {lost_total}{}",
        if lost_total > 0 && !sync {
            " (asynchronous replication — synchronous_mode: true trades latency for none)"
        } else {
            ""
        }
    );
    Ok(if failed || switchover.is_err() || lost_total > 0 {
        1
    } else {
        0
    })
}

/// A planned switchover measured while writing.
struct Planned {
    /// The longest time between two acknowledged writes.
    gap: Duration,
    committed: usize,
    lost: usize,
    /// Seconds until the stack was healthy again with the new leader.
    healthy_after: f64,
    /// Where the gap sat: (last write before, first write after, new leader
    /// first seen leading), seconds from the start of the switchover.
    timeline: Option<(f64, f64, f64)>,
}

/// Write while `rigger switchover` moves the leader.
async fn planned_switchover(project: &Project, state: &State) -> Result<Planned> {
    let (conninfo, password) = write_target(project, state)?;
    let writer = Writer::start(&conninfo, &password).await?;
    let started = Instant::now();
    let switched = super::switchover::switch(project, state, None).await;
    let healthy_after = started.elapsed().as_secs_f64();
    let since = |t: Instant| t.duration_since(started).as_secs_f64();
    let window = writer.longest_gap_window(started);
    let gap = writer.longest_gap_since(started);
    let (committed, lost) = writer.finish().await?;
    let (_, _, leads) = switched?;
    Ok(Planned {
        gap,
        committed,
        lost: lost.len(),
        healthy_after,
        timeline: window.map(|(a, b)| (since(a), since(b), since(leads))),
    })
}

pub fn median_and_worst(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    let median = if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    };
    Some((median, v[v.len() - 1]))
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_and_worst() {
        assert_eq!(
            super::median_and_worst(&[20.0, 18.0, 25.0]),
            Some((20.0, 25.0))
        );
        assert_eq!(super::median_and_worst(&[18.0, 20.0]), Some((19.0, 20.0)));
        assert_eq!(super::median_and_worst(&[]), None);
    }
}
