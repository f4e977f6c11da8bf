//! The config phase's role graph. Each role is two steps: `stage` (packages,
//! retired services, uploads — needs nothing) and `up` (start, then the health
//! gate — needs its own staging and the `up` of every role it needs, from
//! roles::needs). graph::walk_borrowed runs every step as soon as it may:
//! independent roles together, installation while the database comes up.
//! At the end, the critical path of role bring-ups against the wall time.

use rigger_events::Events;
use crate::cloud::graph::{self, Graph, Outcome};
use crate::hosts::roles;
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    Stage(&'static str),
    Up(&'static str),
}

impl Step {
    pub fn role(&self) -> &'static str {
        match self {
            Step::Stage(r) | Step::Up(r) => r,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Stage(r) => write!(f, "staging {r}"),
            Step::Up(r) => write!(f, "bring-up {r}"),
        }
    }
}

/// The steps of `roles` and what each waits for.
pub fn steps(roles: &[&'static str]) -> Graph<Step> {
    let mut g = Graph::new();
    for role in roles {
        g.add(Step::Stage(role), []);
        let needed = roles::registry::needs(role, roles).into_iter().map(Step::Up);
        g.add(Step::Up(role), needed.chain([Step::Stage(role)]));
    }
    g
}

/// When a step ran, relative to the start of the walk.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub begin: Duration,
    pub end: Duration,
}

/// The chain of steps that decided the wall time: from the step that ended
/// last, back through whichever of its dependencies ended last.
pub fn critical_path(g: &Graph<Step>, spans: &BTreeMap<Step, Span>) -> Vec<(Step, Span)> {
    let mut path = Vec::new();
    let mut at = spans.iter().max_by_key(|(_, s)| s.end).map(|(st, _)| *st);
    while let Some(step) = at {
        let span = spans[&step];
        path.push((step, span));
        at = g.deps.get(&step).into_iter().flatten().filter(|d| spans.contains_key(d)).max_by_key(|d| spans[d].end).copied();
    }
    path.reverse();
    path
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Walk the roles' steps; `stage` yields what `up` starts from. Every role
/// whose needs failed is skipped (and named); the others go on.
pub async fn apply_roles<T, S, SF, U, UF>(roles: &[&'static str], events: &Events, stage: S, up: U) -> Result<()>
where
    S: Fn(&'static str) -> SF,
    SF: Future<Output = Result<T>>,
    U: Fn(T) -> UF,
    UF: Future<Output = Result<()>>,
{
    let g = steps(roles);
    g.check()?;
    let started = Instant::now();
    let staged: Mutex<BTreeMap<&'static str, T>> = Mutex::new(BTreeMap::new());
    let spans: Mutex<BTreeMap<Step, Span>> = Mutex::new(BTreeMap::new());
    let (stage, up, staged_ref, spans_ref) = (&stage, &up, &staged, &spans);
    let outcomes = graph::walk_borrowed(&g, g.deps.len(), |step| async move {
        let begin = started.elapsed();
        let result = match step {
            Step::Stage(role) => stage(role).await.map(|t| {
                staged_ref.lock().expect("staged roles").insert(role, t);
            }),
            Step::Up(role) => {
                let t = staged_ref.lock().expect("staged roles").remove(role).expect("a role is staged before its bring-up");
                up(t).await
            }
        };
        spans_ref.lock().expect("step spans").insert(step, Span { begin, end: started.elapsed() });
        result
    })
    .await;

    let mut errors = Vec::new();
    // (A role whose own staging failed has said why already.)
    let staging_failed: Vec<&'static str> = outcomes.iter().filter_map(|(st, o)| matches!((st, o), (Step::Stage(_), Outcome::Failed(_))).then_some(st.role())).collect();
    for (step, outcome) in outcomes {
        match outcome {
            Outcome::Done => {}
            Outcome::Failed(e) => errors.push(format!("{e:#}")),
            Outcome::Skipped => {
                if let Step::Up(role) = step {
                    if staging_failed.contains(&role) {
                        continue;
                    }
                    let needed = roles::registry::needs(role, roles).join(", ");
                    events.failed(&format!("role {role}"), "skipped", &format!("not started: a role it needs ({needed}) failed"));
                    errors.push(format!("role {role}: not started — a role it needs ({needed}) failed"));
                }
            }
        }
    }
    if errors.is_empty() {
        let spans = spans.into_inner().expect("step spans");
        let path = critical_path(&g, &spans);
        let ups: Vec<String> = path.iter().filter_map(|(st, sp)| matches!(st, Step::Up(_)).then(|| format!("{st} {}", secs(sp.end - sp.begin)))).collect();
        let gates: Duration = path.iter().filter(|(st, _)| matches!(st, Step::Up(_))).map(|(_, sp)| sp.end - sp.begin).sum();
        events.finished("roles", &format!("critical path {} = {} of role bring-ups, wall", ups.join(" → "), secs(gates)), started);
    } else {
        bail!("{}", errors.join("\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_waits_for_nothing_and_a_bring_up_for_its_needs() {
        let g = steps(&["etcd", "patroni", "haproxy", "redis", "app"]);
        assert!(g.deps[&Step::Stage("app")].is_empty());
        let app: Vec<Step> = g.deps[&Step::Up("app")].iter().copied().collect();
        assert_eq!(app, vec![Step::Stage("app"), Step::Up("haproxy"), Step::Up("redis")]);
        assert_eq!(g.deps[&Step::Up("redis")].iter().copied().collect::<Vec<_>>(), vec![Step::Stage("redis")]);
    }

    #[test]
    fn the_critical_path_follows_the_dependency_that_ended_last() {
        let g = steps(&["etcd", "patroni", "redis"]);
        let s = |b: u64, e: u64| Span { begin: Duration::from_secs(b), end: Duration::from_secs(e) };
        let spans: BTreeMap<Step, Span> = [
            (Step::Stage("etcd"), s(0, 1)),
            (Step::Stage("patroni"), s(0, 2)),
            (Step::Stage("redis"), s(0, 1)),
            (Step::Up("etcd"), s(1, 5)),
            (Step::Up("redis"), s(1, 3)),
            (Step::Up("patroni"), s(5, 20)),
        ]
        .into_iter()
        .collect();
        let path: Vec<Step> = critical_path(&g, &spans).into_iter().map(|(st, _)| st).collect();
        assert_eq!(path, vec![Step::Stage("etcd"), Step::Up("etcd"), Step::Up("patroni")]);
    }

    #[tokio::test]
    async fn independent_roles_run_together_and_a_failure_skips_only_its_dependents() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let running = AtomicUsize::new(0);
        let most = AtomicUsize::new(0);
        let log = Mutex::new(Vec::new());
        let result = apply_roles(
            &["etcd", "patroni", "haproxy", "redis"],
            &Events::silent(),
            |role| async move { Ok(role) },
            |role| {
                let (running, most, log) = (&running, &most, &log);
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    log.lock().unwrap().push(role);
                    if role == "patroni" {
                        bail!("patroni: no leader")
                    }
                    Ok(())
                }
            },
        )
        .await;
        let err = result.unwrap_err().to_string();
        assert!(err.contains("patroni: no leader") && err.contains("role haproxy: not started"), "{err}");
        let log = log.into_inner().unwrap();
        assert!(log.contains(&"redis") && log.contains(&"etcd") && !log.contains(&"haproxy"), "{log:?}");
        assert!(most.load(Ordering::SeqCst) >= 2, "etcd and redis should have run together");
    }
}
