//! The resource graph: who depends on whom, a cycle check, and a parallel walk
//! that starts a node as soon as everything it depends on is done.

use anyhow::{bail, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::future::Future;
use futures::stream::{FuturesUnordered, StreamExt};

#[derive(Debug, Clone)]
pub struct Graph<N: Ord + Clone> {
    /// node → the nodes it depends on.
    pub deps: BTreeMap<N, BTreeSet<N>>,
}

impl<N: Ord + Clone + Display> Graph<N> {
    pub fn new() -> Self {
        Graph { deps: BTreeMap::new() }
    }

    pub fn add(&mut self, node: N, depends_on: impl IntoIterator<Item = N>) {
        self.deps.entry(node).or_default().extend(depends_on);
    }

    pub fn nodes(&self) -> impl Iterator<Item = &N> {
        self.deps.keys()
    }

    /// Fails on a dependency that is not a node, and on a cycle (naming it).
    pub fn check(&self) -> Result<()> {
        for (n, ds) in &self.deps {
            for d in ds {
                if !self.deps.contains_key(d) {
                    bail!("{n} depends on {d}, which is not part of the plan");
                }
            }
        }
        self.order().map(|_| ())
    }

    /// Nodes in an order where every node comes after what it depends on.
    pub fn order(&self) -> Result<Vec<N>> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            Visiting,
            Done,
        }
        fn visit<N: Ord + Clone + Display>(
            g: &Graph<N>,
            n: &N,
            marks: &mut BTreeMap<N, Mark>,
            path: &mut Vec<N>,
            out: &mut Vec<N>,
        ) -> Result<()> {
            match marks.get(n) {
                Some(Mark::Done) => return Ok(()),
                Some(Mark::Visiting) => {
                    let start = path.iter().position(|p| p == n).unwrap_or(0);
                    let cycle: Vec<String> = path[start..].iter().chain(std::iter::once(n)).map(|p| p.to_string()).collect();
                    bail!("dependency cycle: {} — break it (e.g. a firewall rule naming a group that names this one back)", cycle.join(" → "));
                }
                None => {}
            }
            marks.insert(n.clone(), Mark::Visiting);
            path.push(n.clone());
            for d in g.deps.get(n).into_iter().flatten() {
                if g.deps.contains_key(d) {
                    visit(g, d, marks, path, out)?;
                }
            }
            path.pop();
            marks.insert(n.clone(), Mark::Done);
            out.push(n.clone());
            Ok(())
        }
        let mut marks = BTreeMap::new();
        let mut out = Vec::new();
        for n in self.deps.keys() {
            visit(self, n, &mut marks, &mut Vec::new(), &mut out)?;
        }
        Ok(out)
    }

    /// The same graph with every edge turned around (for deleting: dependents first).
    pub fn reversed(&self) -> Graph<N> {
        let mut g = Graph::new();
        for n in self.deps.keys() {
            g.add(n.clone(), []);
        }
        for (n, ds) in &self.deps {
            for d in ds {
                if self.deps.contains_key(d) {
                    g.add(d.clone(), [n.clone()]);
                }
            }
        }
        g
    }
}

impl<N: Ord + Clone + Display> Default for Graph<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// How one node of a walk ended.
#[derive(Debug)]
pub enum Outcome<E> {
    Done,
    Failed(E),
    /// Not attempted because something it depends on failed.
    Skipped,
}

/// Run `work` for every node, at most `parallelism` at once, each as soon as
/// all of its dependencies are `Done`. A failure skips the nodes that depend on
/// it (transitively) and lets everything else go on. Each node runs as its own
/// tokio task.
pub async fn walk<N, E, F, Fut>(graph: &Graph<N>, parallelism: usize, work: F) -> BTreeMap<N, Outcome<E>>
where
    N: Ord + Clone + Display + Send + 'static,
    E: Send + 'static,
    F: Fn(N) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
{
    walk_borrowed(graph, parallelism, |n| {
        let task = tokio::spawn(work(n));
        async move { task.await.unwrap_or_else(|join_error| std::panic::resume_unwind(join_error.into_panic())) }
    })
    .await
}

/// The same walk, polled in place: the work may borrow from the caller (the
/// config phase's roles borrow its sessions and plan), at the price of running
/// on the caller's task — fine for work that mostly waits on the network.
pub async fn walk_borrowed<N, E, F, Fut>(graph: &Graph<N>, parallelism: usize, work: F) -> BTreeMap<N, Outcome<E>>
where
    N: Ord + Clone + Display,
    F: Fn(N) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let parallelism = parallelism.max(1);
    let mut outcomes: BTreeMap<N, Outcome<E>> = BTreeMap::new();
    let mut running = FuturesUnordered::new();
    let mut started: BTreeSet<N> = BTreeSet::new();
    loop {
        // Skip what can never run; start what is ready, up to the limit.
        let mut progress = true;
        while progress {
            progress = false;
            for (n, ds) in &graph.deps {
                if started.contains(n) || outcomes.contains_key(n) {
                    continue;
                }
                let blocked = ds.iter().any(|d| matches!(outcomes.get(d), Some(Outcome::Failed(_)) | Some(Outcome::Skipped)));
                if blocked {
                    outcomes.insert(n.clone(), Outcome::Skipped);
                    progress = true;
                }
            }
        }
        for (n, ds) in &graph.deps {
            if running.len() >= parallelism {
                break;
            }
            if started.contains(n) || outcomes.contains_key(n) {
                continue;
            }
            if ds.iter().all(|d| matches!(outcomes.get(d), Some(Outcome::Done)) || !graph.deps.contains_key(d)) {
                started.insert(n.clone());
                let fut = work(n.clone());
                let node = n.clone();
                running.push(async move { (node, fut.await) });
            }
        }
        match running.next().await {
            Some((n, result)) => {
                outcomes.insert(n, result.map_or_else(Outcome::Failed, |_| Outcome::Done));
            }
            None => break,
        }
    }
    outcomes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn g(edges: &[(&'static str, &[&'static str])]) -> Graph<String> {
        let mut g = Graph::new();
        for (n, ds) in edges {
            g.add(n.to_string(), ds.iter().map(|d| d.to_string()));
        }
        g
    }

    #[test]
    fn order_puts_dependencies_first() {
        let g = g(&[("machine", &["subnet", "fw"]), ("subnet", &["net"]), ("fw", &["net"]), ("net", &[])]);
        let order = g.order().unwrap();
        let pos = |s: &str| order.iter().position(|o| o == s).unwrap();
        assert!(pos("net") < pos("subnet") && pos("subnet") < pos("machine") && pos("fw") < pos("machine"));
    }

    #[test]
    fn cycles_are_named() {
        let err = g(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])]).check().unwrap_err().to_string();
        assert!(err.contains("a → b → c → a"), "{err}");
    }

    #[tokio::test]
    async fn walk_respects_dependencies_and_skips_after_failure() {
        let g = g(&[("net", &[]), ("sub", &["net"]), ("bad", &["net"]), ("m1", &["sub"]), ("m2", &["bad"])]);
        let log = Arc::new(Mutex::new(Vec::new()));
        let out = walk(&g, 2, |n: String| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push(n.clone());
                if n == "bad" {
                    Err("boom")
                } else {
                    Ok(())
                }
            }
        })
        .await;
        let log = log.lock().unwrap();
        assert_eq!(log[0], "net");
        assert!(log.iter().position(|x| x == "sub") < log.iter().position(|x| x == "m1"));
        assert!(matches!(out["m2"], Outcome::Skipped));
        assert!(matches!(out["bad"], Outcome::Failed("boom")));
        assert!(matches!(out["m1"], Outcome::Done));
    }
}
