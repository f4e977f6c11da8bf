//! `rigger graph`: the plan as a graph — network, subnets, firewall groups,
//! machines, and the roles on them in the order the config phase brings them up.

use crate::cli::{GraphCmd, GraphFormat};
use crate::cloud::graph::Graph;
use crate::plan::model::{Peer, Plan};
use anyhow::Result;

pub fn plan_graph(plan: &Plan) -> Graph<String> {
    let mut g = Graph::new();
    let net = format!("network.{}", plan.network.name);
    g.add(net.clone(), []);
    for s in &plan.network.subnets {
        g.add(format!("subnet.{}", s.name), [net.clone()]);
    }
    for f in &plan.firewall {
        let refs = f.rules.iter().filter_map(|r| match &r.peer {
            Peer::Group(g) if g != &f.name => Some(format!("firewall.{g}")),
            _ => None,
        });
        g.add(format!("firewall.{}", f.name), std::iter::once(net.clone()).chain(refs));
    }
    let roles = plan.roles();
    for h in &plan.hosts {
        let deps = std::iter::once(format!("subnet.{}", h.subnet)).chain(h.firewall.iter().map(|f| format!("firewall.{f}")));
        g.add(format!("machine.{}", h.name), deps);
    }
    // The same needs the config phase walks (roles::needs), so the picture is the run.
    let present: Vec<&str> = crate::hosts::roles::registry::NAMES.iter().copied().filter(|r| roles.contains(r)).collect();
    for role in &present {
        let machines = plan.hosts_with_role(role).map(|h| format!("machine.{}", h.name));
        let before = crate::hosts::roles::registry::needs(role, &present).into_iter().map(|n| format!("role.{n}"));
        g.add(format!("role.{role}"), machines.chain(before).collect::<Vec<_>>());
    }
    g
}

pub fn run(args: &GraphCmd) -> Result<i32> {
    let plan = crate::plan::load(&args.plan)?;
    let g = plan_graph(&plan);
    g.check()?;
    print!("{}", match args.format {
        GraphFormat::Mermaid => mermaid(&g),
        GraphFormat::Dot => dot(&g),
    });
    Ok(0)
}

fn id(n: &str) -> String {
    n.replace(['.', '-'], "_")
}

/// Arrows point from what comes first to what needs it.
pub fn mermaid(g: &Graph<String>) -> String {
    let mut out = String::from("flowchart LR\n");
    for n in g.nodes() {
        let shape = if n.starts_with("role.") { format!("{}([\"{n}\"])", id(n)) } else { format!("{}[\"{n}\"]", id(n)) };
        out.push_str(&format!("  {shape}\n"));
    }
    for (n, deps) in &g.deps {
        for d in deps {
            out.push_str(&format!("  {} --> {}\n", id(d), id(n)));
        }
    }
    out
}

pub fn dot(g: &Graph<String>) -> String {
    let mut out = String::from("digraph rigger {\n  rankdir=LR;\n");
    for n in g.nodes() {
        let shape = if n.starts_with("role.") { "ellipse" } else { "box" };
        out.push_str(&format!("  \"{n}\" [shape={shape}];\n"));
    }
    for (n, deps) in &g.deps {
        for d in deps {
            out.push_str(&format!("  \"{d}\" -> \"{n}\";\n"));
        }
    }
    out.push_str("}\n");
    out
}
