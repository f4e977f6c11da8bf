use crate::cli::DestroyCmd;
use crate::cloud::diff::{Action, Change};
use crate::cloud::engine::{self, Applier, Shared};
use crate::project::Project;
use crate::state::{State, StateStore};
use crate::ui::{self, printer::Printer, Paint};
use anyhow::Result;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::Mutex;

pub async fn run(args: &DestroyCmd, state_override: Option<&Path>, verbose: bool) -> Result<i32> {
    let project = Project::load(&args.plan, state_override)?;
    let provider = project.provider()?;
    let store = StateStore::open(&project.state_path, "rigger destroy")?;
    let mut state = store.load()?.unwrap_or_else(|| State::new(&project.plan.project, provider.kind()));
    let (events, printer) = Printer::start(verbose);
    let live = engine::refresh(provider.as_ref(), &state, true, &events).await;
    drop(events);
    printer.finish().await;
    let live = live?;
    let changes: Vec<Change> = live
        .iter()
        .map(|l| Change { address: l.address.clone(), action: Action::Delete, spec: None, live: Some(l.clone()), changed: vec![], replace_because: vec![], blocked: None })
        .collect();
    print!("{}", ui::plan::render_human(&changes, &Paint { on: ui::color_enabled() }));
    if changes.is_empty() {
        return Ok(0);
    }
    if !super::confirm("\nDo you really want to destroy all these resources?", args.auto_approve)? {
        println!("Destroy cancelled; nothing was changed.");
        return Ok(1);
    }
    state.resources = live.iter().map(|l| (l.address.clone(), l.clone())).collect();
    let project = Arc::new(project);
    let (events, printer) = Printer::start(verbose);
    let applier = Applier { provider, project: project.clone(), shared: Arc::new(Mutex::new(Shared::new(store, state, project.clone()))), events: events.clone(), parallelism: args.parallelism };
    let result = applier.apply(&changes).await;
    drop(applier);
    drop(events);
    printer.finish().await;
    result?;
    println!("\nDestroy complete! Resources: {} destroyed.", changes.len());
    Ok(0)
}
