use crate::cli::PlanCmd;
use crate::diff::Summary;
use crate::engine;
use crate::project::Project;
use crate::saved_plan::{self, SavedPlan};
use crate::state::{State, StateStore};
use crate::ui::{self, plan::StateRef, Paint};
use anyhow::Result;
use std::path::Path;

pub async fn run(args: &PlanCmd, state_override: Option<&Path>, verbose: bool) -> Result<i32> {
    let project = Project::load(&args.plan, state_override)?;
    project.ensure_ssh_key()?;
    let provider = project.provider()?;
    let store = StateStore::open(&project.state_path, "rigger plan")?;
    let state = store.load()?.unwrap_or_else(|| State::new(&project.plan.project, provider.kind()));
    let specs = engine::specs(provider.as_ref(), &project)?;
    let (events, printer) = ui::printer::Printer::start(verbose);
    let live = engine::refresh(provider.as_ref(), &state, args.refresh, &events).await;
    drop(events);
    printer.finish().await;
    let changes = crate::diff::compute(&specs, &live?);
    let lineage = (state.serial > 0).then(|| state.lineage.clone());

    if args.json {
        let doc = ui::plan::json_document(&project.plan.project, provider.kind(), StateRef { lineage: lineage.clone(), serial: state.serial }, &changes);
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", ui::plan::render_human(&changes, &Paint { on: ui::color_enabled() }));
    }
    if let Some(out) = &args.out {
        let saved = SavedPlan {
            format: saved_plan::FORMAT.into(),
            plan_file: std::fs::canonicalize(&args.plan)?,
            plan_sha256: saved_plan::file_sha256(&args.plan)?,
            state_path: std::path::absolute(&project.state_path)?,
            state_lineage: lineage,
            state_serial: state.serial,
            infra_only: args.infra_only,
            changes: engine::effective(&changes),
        };
        saved.write(out)?;
        if !args.json {
            println!("\nSaved the plan to {} — apply it exactly with `rigger apply {}`.", out.display(), out.display());
        }
    }
    let summary = Summary::of(&changes);
    Ok(if args.detailed_exitcode && !summary.is_empty() { 2 } else { 0 })
}
