//! Showing a plan: Terraform-style text for people, a stable JSON document for
//! scripts. Both only read `Change`s; neither computes anything.

use super::Paint;
use crate::cloud::diff::{Action, Change, Summary};
use crate::cloud::resource::Attrs;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeSet;

const MASK: &str = "(sensitive)";

fn show(v: Option<&Value>, masked: bool) -> String {
    match v {
        None => "(none)".into(),
        Some(_) if masked => MASK.into(),
        Some(Value::String(s)) => format!("{s:?}"),
        Some(other) => other.to_string(),
    }
}

fn sensitive(c: &Change) -> BTreeSet<String> {
    c.spec.as_ref().map(|s| s.sensitive.clone()).unwrap_or_default()
}

/// The human plan: one block per resource that changes, fields aligned;
/// then, apart, what differs from the plan but rigger will not change, with
/// the reason and what to do.
pub fn render_human(changes: &[Change], paint: &Paint) -> String {
    let mut out = String::new();
    let (blocked, effective): (Vec<&Change>, Vec<&Change>) = changes.iter().filter(|c| c.action != Action::NoOp).partition(|c| c.is_blocked());
    if effective.is_empty() && blocked.is_empty() {
        out.push_str(&format!("{} The infrastructure matches the plan.\n", paint.green("No changes.")));
        return out;
    }
    if !effective.is_empty() {
        out.push_str("rigger will perform these actions:\n\n");
    }
    for c in effective {
        let (sym, head) = match c.action {
            Action::Create => (paint.green("+"), format!("{} will be created", paint.bold(&c.address.to_string()))),
            Action::Update => (paint.yellow("~"), format!("{} will be updated in place", paint.bold(&c.address.to_string()))),
            Action::Replace => (
                paint.red("-/+"),
                format!("{} must be replaced ({} forces replacement)", paint.bold(&c.address.to_string()), c.replace_because.join(", ")),
            ),
            Action::Delete => (paint.red("-"), format!("{} will be destroyed", paint.bold(&c.address.to_string()))),
            Action::NoOp => continue,
        };
        out.push_str(&format!("  {sym} {head}\n"));
        push_fields(&mut out, c, paint);
        out.push('\n');
    }
    if !blocked.is_empty() {
        out.push_str(&format!("{}\n\n", paint.red("rigger will NOT change these, though they differ from the plan:")));
    }
    for c in &blocked {
        out.push_str(&format!("  {} {} is left as it is\n", paint.red("!"), paint.bold(&c.address.to_string())));
        push_fields(&mut out, c, paint);
        out.push_str(&format!("      {}\n\n", c.blocked.as_deref().unwrap_or_default()));
    }
    let s = Summary::of(changes);
    out.push_str(&format!("{} {} to add, {} to change, {} to destroy.\n", paint.bold("Plan:"), s.add, s.change, s.destroy));
    if !blocked.is_empty() {
        let names: Vec<String> = blocked.iter().map(|c| c.address.to_string()).collect();
        out.push_str(&format!(
            "{} {} resource(s) rigger will not change ({}): `apply` cannot bring the infrastructure to the plan until they are dealt with, as said above.\n",
            paint.red("Blocked:"),
            names.len(),
            names.join(", ")
        ));
    }
    out
}

/// A change's fields: all of a creation's, the changed ones otherwise.
fn push_fields(out: &mut String, c: &Change, paint: &Paint) {
    let masked = sensitive(c);
    let empty = Attrs::new();
    let (before, after) = (c.before().unwrap_or(&empty), c.after().unwrap_or(&empty));
    let keys: Vec<&String> = match c.action {
        Action::Create => after.keys().collect(),
        Action::Delete => vec![],
        _ => c.changed.iter().collect(),
    };
    let width = keys.iter().map(|k| k.len()).max().unwrap_or(0);
    for k in keys {
        let m = masked.contains(k);
        let line = match c.action {
            _ if c.is_blocked() => format!("        {k:<width$} = {}  (the plan wants {})", show(before.get(k), m), show(after.get(k), m)),
            Action::Create => format!("      {} {k:<width$} = {}", paint.green("+"), show(after.get(k), m)),
            _ => {
                let note = if c.replace_because.contains(k) { paint.red("  # forces replacement") } else { String::new() };
                format!("      {} {k:<width$} = {} -> {}{note}", paint.yellow("~"), show(before.get(k), m), show(after.get(k), m))
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
}

/// `rigger plan --json`: the stable, documented shape (format_version "1").
///
/// ```json
/// { "format_version": "1", "project": "…", "provider": "local",
///   "state": { "lineage": "…", "serial": 3 },
///   "resource_changes": [ { "address": "machine.pg-1", "kind": "machine", "name": "pg-1",
///       "action": "create|update|replace|delete|no-op",
///       "before": {…}|null, "after": {…}|null,
///       "changed": ["cores"], "replace_because": ["image"],
///       "blocked": null|"why rigger will not make this change, and what to do" } ],
///   "summary": { "add": 1, "change": 0, "destroy": 0, "blocked": 0 } }
/// ```
/// Sensitive values are replaced by "(sensitive)". Fields are only ever added.
/// A blocked change keeps the action the diff found, is not counted in
/// add/change/destroy, and makes `rigger plan` exit 1.
#[derive(Serialize)]
pub struct PlanJson<'a> {
    pub format_version: &'static str,
    pub project: &'a str,
    pub provider: &'a str,
    pub state: StateRef,
    pub resource_changes: Vec<ResourceChangeJson>,
    pub summary: Summary,
}

#[derive(Serialize, Clone)]
pub struct StateRef {
    pub lineage: Option<String>,
    pub serial: u64,
}

#[derive(Serialize)]
pub struct ResourceChangeJson {
    pub address: String,
    pub kind: &'static str,
    pub name: String,
    pub action: Action,
    pub before: Option<Attrs>,
    pub after: Option<Attrs>,
    pub changed: Vec<String>,
    pub replace_because: Vec<String>,
    pub blocked: Option<String>,
}

fn masked(attrs: Option<&Attrs>, sensitive: &BTreeSet<String>) -> Option<Attrs> {
    attrs.map(|a| a.iter().map(|(k, v)| (k.clone(), if sensitive.contains(k) { Value::String(MASK.into()) } else { v.clone() })).collect())
}

pub fn json_document<'a>(project: &'a str, provider: &'a str, state: StateRef, changes: &[Change]) -> PlanJson<'a> {
    PlanJson {
        format_version: "1",
        project,
        provider,
        state,
        resource_changes: changes
            .iter()
            .map(|c| {
                let s = sensitive(c);
                ResourceChangeJson {
                    address: c.address.to_string(),
                    kind: c.address.kind.as_str(),
                    name: c.address.name.clone(),
                    action: c.action,
                    before: masked(c.before(), &s),
                    after: masked(c.after(), &s),
                    changed: c.changed.clone(),
                    replace_because: c.replace_because.clone(),
                    blocked: c.blocked.clone().filter(|_| c.is_blocked()),
                }
            })
            .collect(),
        summary: Summary::of(changes),
    }
}
