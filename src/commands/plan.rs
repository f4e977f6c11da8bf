use crate::cli::PlanCmd;
use crate::cloud::diff::Summary;
use crate::cloud::engine;
use crate::project::Project;
use crate::saved_plan::{self, SavedHosts, SavedPlan};
use crate::ui::{self, plan::StateRef, Paint};
use anyhow::{bail, Result};
use std::path::Path;

/// Hosts asked for facts at once (plan has no --parallelism; the same default as apply).
const PLAN_PARALLELISM: usize = 15;

pub async fn run(args: &PlanCmd, state_override: Option<&Path>, verbose: bool) -> Result<i32> {
    let project = Project::load(&args.plan, state_override)?;
    project.ensure_ssh_key()?;
    let provider = project.provider()?;
    // A plan writes the state only to keep what a saved plan needs (below);
    // the lock is held while it reads.
    let super::LoadedState { store, mut state, mut lineage, mut serial } = super::load_state(&project, provider.kind(), "rigger plan")?;
    let specs = engine::specs(provider.as_ref(), &project)?;
    let (events, printer) = ui::printer::Printer::start(verbose);
    let live = engine::refresh_to_plan(provider.as_ref(), &state, args.refresh, &events).await;
    let config_plan = match (&live, args.infra_only) {
        (Ok(live), false) => {
            state.resources = live.iter().map(|l| (l.address.clone(), l.clone())).collect();
            crate::hosts::remote::access::write(&project, &state)?;
            Some(crate::hosts::phase::prepare(&project.with_cloud_addresses(&state), &state, PLAN_PARALLELISM, crate::hosts::phase::Gather::PLAN, &events).await)
        }
        _ => None,
    };
    drop(events);
    printer.finish().await;
    let changes = engine::changes(provider.as_ref(), &specs, &live?);
    // What differs but rigger will not change: shown in the plan, and the plan cannot be applied as it is.
    let blocked = engine::blocked(&changes);
    let config_plan = config_plan.transpose()?;
    // Host-side steps before machines are deleted (drain before destroy); refused here when unsafe.
    // `--infra-only` plans dial no host: the drain `apply` runs is not looked at.
    let drain = if args.infra_only { None } else { Some(crate::reshape::drain::compute(&project, &state, &changes, false, &rigger_events::Events::silent()).await?) };

    // A saved plan is there to be applied exactly; one that cannot be is not
    // saved. What it needs kept in the state is kept before anything is shown
    // (the JSON document names the state's serial).
    let saving = args.out.as_ref().filter(|_| blocked.is_empty()).map(|out| (out, SavedHosts::of(config_plan.as_ref(), &changes, &state.secrets)));
    let mut kept = Kept::default();
    if let Some((_, hosts)) = &saving {
        // (Only host changes hash files made with generated secrets.)
        if matches!(hosts, SavedHosts::Planned { .. }) {
            kept = keep_generated(&store, &state)?;
            if let Some(at) = &kept.saved_at {
                (lineage, serial) = (Some(at.0.clone()), at.1);
            }
        }
    }

    let paint = Paint { on: ui::color_enabled() };
    if args.json {
        let mut doc = serde_json::to_value(ui::plan::json_document(&project.plan.project, provider.kind(), StateRef { lineage: lineage.clone(), serial }, &changes))?;
        if let Some(cp) = &config_plan {
            doc["host_changes"] = serde_json::to_value(ui::hosts::json(cp))?;
            doc["parameter_changes"] = serde_json::to_value(&cp.parameter_changes)?;
            doc["unread"] = serde_json::to_value(&cp.unread)?;
        }
        if let Some(d) = drain.as_ref().filter(|d| !d.leaving.is_empty() || !d.retiring.is_empty()) {
            doc["drain"] = serde_json::to_value(d)?;
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", ui::plan::render_human(&changes, &paint));
        let leaving = crate::reshape::drain::leaving(&changes);
        if args.infra_only && !leaving.is_empty() {
            println!("\n{}", paint.yellow(&format!("note: `apply` drains {} before deleting them (--infra-only plans dial no host, so the steps are not shown)", leaving.join(", "))));
        }
        if let Some(d) = &drain {
            let text = ui::drain::render_human(d, &paint);
            if !text.is_empty() {
                print!("\n{text}");
            }
        }
        if let Some(cp) = &config_plan {
            let text = ui::hosts::render_human(cp, &state.secrets, &paint);
            if !text.is_empty() {
                print!("\n{text}");
            }
        }
    }
    ui::print_security_warnings(&project.plan, &paint);
    if let Some((out, hosts)) = saving {
        if !args.json && kept.saved_at.is_some() {
            println!("\nKept the passwords, keys and certificates this plan generated in the state: `apply` of the saved plan writes the files it shows.");
        }
        if !kept.from_environment.is_empty() {
            // Not kept: a rotation is the apply's to save. Said on stderr, so `--json` stays one document.
            eprintln!(
                "note: this plan writes the values of {} given to this run, which the state does not hold: run `rigger apply {}` with the same variables set, or it refuses the plan",
                kept.from_environment.join(", "),
                out.display()
            );
        }
        let saved = SavedPlan {
            format: saved_plan::FORMAT.into(),
            plan_file: std::fs::canonicalize(&args.plan)?,
            plan_sha256: saved_plan::file_sha256(&args.plan)?,
            state_path: std::path::absolute(&project.state_path)?,
            state_lineage: lineage,
            state_serial: serial,
            infra_only: args.infra_only,
            changes: engine::effective(&changes),
            hosts,
        };
        saved.write(out)?;
        if !args.json {
            println!("\nSaved the plan to {} — apply it exactly with `rigger apply {}`.", out.display(), out.display());
            println!("{}", saved_hosts_line(&saved.hosts));
        }
    }
    let host_changes = config_plan.as_ref().is_some_and(|cp| !cp.is_empty()) || drain.as_ref().is_some_and(|d| !d.is_empty());
    if let Some(cp) = config_plan {
        cp.close().await;
    }
    if !blocked.is_empty() {
        let unsaved = args.out.as_ref().map(|out| format!("; nothing was saved to {}", out.display())).unwrap_or_default();
        bail!(
            "the plan cannot be applied as it is: rigger will not change {} (the plan above says why and what to do){unsaved}",
            blocked.join(", ")
        );
    }
    let summary = Summary::of(&changes);
    Ok(if args.detailed_exitcode && (!summary.is_empty() || host_changes) { 2 } else { 0 })
}

/// What `keep_generated` did.
#[derive(Default)]
struct Kept {
    /// The state's lineage and serial after the save (None: nothing to save).
    saved_at: Option<(String, u64)>,
    /// Secrets whose value this run takes from the environment in place of
    /// the state's (a rotation): not kept, the variables name them.
    from_environment: Vec<String>,
}

/// Save what this plan generated (secrets, key pairs, certificates) into the
/// state as it was read — not the refreshed resources: a plan changes nothing
/// else. A saved plan's file hashes were made with them; `apply FILE` would
/// otherwise generate other values, write other files and refuse the plan.
/// A value the environment puts in place of one the state holds is not
/// kept: previewing a rotation must not make it the state's (only `apply`
/// does that, once the hosts have it).
fn keep_generated(store: &crate::state::StateStore, planned: &crate::state::State) -> Result<Kept> {
    let stored = store.load()?;
    let mut kept = stored.clone().unwrap_or_else(|| {
        let mut fresh = crate::state::State::new(&planned.project, &planned.provider);
        fresh.lineage = planned.lineage.clone();
        fresh
    });
    let mut from_environment = Vec::new();
    for (name, value) in &planned.secrets {
        let rotated = kept.secrets.get(name).is_some_and(|old| old != value);
        match rotated.then(|| super::secret_from_environment(name)).flatten() {
            Some(var) => from_environment.push(var),
            None => {
                kept.secrets.insert(name.clone(), value.clone());
            }
        }
    }
    kept.pki = planned.pki.clone();
    let saved_at = if stored.as_ref() == Some(&kept) {
        None
    } else {
        store.save(&mut kept)?;
        Some((kept.lineage.clone(), kept.serial))
    };
    Ok(Kept { saved_at, from_environment })
}

/// What the saved plan holds of the hosts, in one line.
fn saved_hosts_line(hosts: &SavedHosts) -> String {
    match hosts {
        SavedHosts::Planned { summary } => format!(
            "It holds the host changes of {} host(s) (files by a keyed hash, packages, services): `apply` refuses it if the hosts need anything else by then.",
            summary.hosts.len()
        ),
        SavedHosts::AfterCloudStep { machines, .. } => {
            format!("It holds the cloud changes only: {} (the cloud step creates, replaces or changes the machines {} first).", saved_plan::AFTER_CLOUD_NOTE, machines.join(", "))
        }
        SavedHosts::NotConfigured => "It configures no host (--infra-only).".into(),
    }
}
