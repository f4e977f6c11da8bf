use crate::cli::ApplyCmd;
use crate::hosts::phase::{self, ConfigPlan};
use crate::cloud::engine::{self, Applier, Shared};
use crate::project::Project;
use crate::saved_plan::{SavedHosts, SavedPlan};
use crate::ui::{self, printer::Printer, Paint};
use anyhow::Result;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How long a machine may take from "running" to answering SSH.
const SSH_WAIT: Duration = Duration::from_secs(180);

pub async fn run(args: &ApplyCmd, state_override: Option<&Path>, verbose: bool) -> Result<i32> {
    let started = Instant::now();
    let saved = SavedPlan::read_if_saved(&args.plan)?;
    if let Some(s) = &saved {
        if !args.targets.is_empty() {
            anyhow::bail!("{} is a saved plan: it is applied whole, --target does not narrow it — apply the plan file with --target instead", args.plan.display());
        }
        if let Some(other) = state_override.filter(|p| *p != s.state_path) {
            anyhow::bail!("{} was saved against the state {}, not {} — drop --state, or make a new plan with it", args.plan.display(), s.state_path.display(), other.display());
        }
    }
    let project = match &saved {
        Some(s) => Project::load(&s.plan_file, Some(&s.state_path))?,
        None => Project::load(&args.plan, state_override)?,
    };
    let infra_only = args.infra_only || saved.as_ref().is_some_and(|s| s.infra_only);
    project.ensure_ssh_key()?;
    {
        let (events, printer) = Printer::start(verbose);
        let r = project.ensure_host_tools(&events);
        drop(events);
        printer.finish().await;
        r?;
    }
    let provider = project.provider()?;
    let super::LoadedState { store, mut state, lineage, serial } = super::load_state(&project, provider.kind(), "rigger apply")?;
    let specs = engine::specs(provider.as_ref(), &project)?;
    let paint = Paint { on: ui::color_enabled() };

    // What to do: the cloud changes, and (for machines that exist) the host changes.
    let mut config_plan: Option<ConfigPlan> = None;
    // Host-side steps that make a machine's deletion safe; they run before the cloud step.
    let mut drain: Option<crate::reshape::drain::DrainPlan> = None;
    // The host changes a saved plan holds: the hosts' plan must still be them.
    let mut saved_hosts: Option<SavedHosts> = None;
    let changes = match saved {
        Some(s) => {
            s.check_current(lineage.as_deref(), serial)?;
            print!("{}", ui::plan::render_human(&s.changes, &paint));
            if drains(infra_only, args.no_ssh_wait, &s.changes, &paint) {
                let d = crate::reshape::drain::compute(&project, &state, &s.changes, infra_only, &rigger_events::Events::silent()).await?;
                print!("{}", ui::drain::render_human(&d, &paint));
                drain = Some(d);
            }
            match (&s.hosts, infra_only) {
                (SavedHosts::AfterCloudStep { machines, .. }, false) => {
                    println!("\nThis plan holds no host changes (the cloud step creates, replaces or changes the machines {}): they are computed after the cloud step.", machines.join(", "));
                }
                (SavedHosts::Planned { summary }, false) => {
                    print!("\n{}", ui::hosts::render_saved(summary, &paint));
                    println!("\nThis plan holds the host changes of {} host(s): applied only if the hosts need exactly them.", summary.hosts.len());
                }
                _ => {}
            }
            saved_hosts = Some(s.hosts);
            s.changes
        }
        None => {
            let (events, printer) = Printer::start(verbose);
            let live = engine::refresh_to_plan(provider.as_ref(), &state, true, &events).await;
            let mut prepared = None;
            if let Ok(live) = &live {
                state.resources = live.iter().map(|l| (l.address.clone(), l.clone())).collect();
                crate::hosts::remote::access::write(&project, &state)?;
                if !infra_only && state.machines().next().is_some() {
                    prepared = Some(prepare_targets(&project.with_cloud_addresses(&state), &state, args, phase::Gather::APPLY_PREVIEW, &events).await);
                }
            }
            drop(events);
            printer.finish().await;
            let live = live?;
            // The preview of host changes is best effort: machines may not be
            // reachable as the plan's user yet (e.g. Proxmox containers before
            // their login is prepared). The real facts are gathered after the cloud step.
            let config_plan_ok = match prepared.transpose() {
                Ok(cp) => cp,
                Err(e) => {
                    println!("Host changes cannot be previewed yet ({e:#}); they are computed after the machines are ready.\n");
                    None
                }
            };
            let changes = engine::restrict_to_targets(engine::changes(provider.as_ref(), &specs, &live), &specs, &args.targets)?;
            print!("{}", ui::plan::render_human(&changes, &paint));
            // A change the provider will not make (an instance in ERROR) fails
            // the plan; applying the rest around it would leave a stack half
            // changed for a reason known now. Nothing is changed.
            let blocked = engine::blocked(&changes);
            if !blocked.is_empty() {
                if let Some(cp) = config_plan_ok {
                    cp.close().await;
                }
                anyhow::bail!("nothing was changed: rigger will not change {} (the plan above says why and what to do)", blocked.join(", "));
            }
            if drains(infra_only, args.no_ssh_wait, &changes, &paint) {
                let d = match crate::reshape::drain::compute(&project, &state, &changes, infra_only, &rigger_events::Events::silent()).await {
                    Ok(d) => d,
                    Err(e) => {
                        if let Some(cp) = config_plan_ok {
                            cp.close().await;
                        }
                        return Err(e);
                    }
                };
                let text = ui::drain::render_human(&d, &paint);
                if !text.is_empty() {
                    print!("\n{text}");
                }
                drain = Some(d);
            }
            if let Some(cp) = &config_plan_ok {
                let text = ui::hosts::render_human(cp, &state.secrets, &paint);
                if !text.is_empty() {
                    print!("\n{text}");
                }
            }
            crate::ui::print_security_warnings(&project.plan, &paint);
            let effective = engine::effective(&changes);
            let drain_work = drain.as_ref().is_some_and(|d| !d.is_empty());
            let host_work = drain_work || config_plan_ok.as_ref().map_or(!infra_only, |cp| !cp.is_empty());
            if (!effective.is_empty() || host_work) && !super::confirm("\nDo you want to perform these actions?", args.auto_approve)? {
                println!("Apply cancelled; nothing was changed.");
                if let Some(cp) = config_plan_ok {
                    cp.close().await;
                }
                return Ok(1);
            }
            config_plan = config_plan_ok;
            effective
        }
    };

    let project = Arc::new(project);
    let mut shared = Shared::new(store, state, project.clone());
    shared.commit()?;
    let shared = Arc::new(Mutex::new(shared));
    let (events, printer) = Printer::start(verbose);
    let applier = Applier { provider, project: project.clone(), shared: shared.clone(), events: events.clone(), parallelism: args.parallelism };
    // Drain before destroy: the host-side steps run before the cloud deletes anything.
    let mut result = match drain.as_ref().filter(|d| !d.is_empty()) {
        Some(d) => {
            let state = shared.lock().await.state.clone();
            crate::reshape::run::execute(&project, &state, d, &events).await
        }
        None => Ok(()),
    };
    // A departing Redis keeps serving until the config phase has pointed the
    // apps elsewhere: then the deletions wait until after it.
    let (now, deferred): (Vec<_>, Vec<_>) = match drain.as_ref().filter(|d| d.defers_deletions()) {
        Some(_) => changes.iter().cloned().partition(|c| c.action != crate::cloud::diff::Action::Delete),
        None => (changes.clone(), vec![]),
    };
    if result.is_ok() {
        result = applier.apply(&now).await;
    }
    // Every apply that may dial the machines: Proxmox LXC guests get the plan's
    // user and verified host keys here (cheap once done).
    if result.is_ok() && !(infra_only && args.no_ssh_wait) {
        result = engine::prepare_logins(applier.provider.as_ref(), &project, &shared, &events, args.parallelism).await;
    }
    if result.is_ok() && !changes.is_empty() && !(infra_only && args.no_ssh_wait) {
        result = wait_for_all_ssh(applier.provider.as_ref(), &project, &shared, &events).await;
    }
    if result.is_ok() && !infra_only {
        // The host-side steps see what the cloud step made (public addresses).
        let project = project.with_cloud_addresses(&shared.lock().await.state);
        // After cloud changes the hosts are new or different: look at them again.
        if !changes.is_empty() || config_plan.is_none() {
            if let Some(old) = config_plan.take() {
                old.close().await;
            }
            let state = shared.lock().await.state.clone();
            config_plan = match prepare_targets(&project, &state, args, phase::Gather::APPLY, &events).await {
                Ok(cp) => Some(cp),
                Err(e) => {
                    result = Err(e);
                    None
                }
            };
        }
        if let (Some(saved), Some(cp)) = (&saved_hosts, &config_plan) {
            let secrets = shared.lock().await.state.secrets.clone();
            result = saved.check(&crate::hosts::summary::summarize(cp, &secrets));
        }
        if let (Some(cp), true) = (&config_plan, result.is_ok()) {
            result = phase::apply(&project, cp, &shared, &events).await;
        }
        if let Some(d) = drain.as_ref().filter(|d| !d.after_config.is_empty() && result.is_ok()) {
            let state = shared.lock().await.state.clone();
            result = crate::reshape::run::execute_after_config(&project, &state, d, &events).await;
        }
        if let (Some(cp), true) = (&config_plan, result.is_ok()) {
            result = phase::record_applied_roles(&project.plan, cp, &shared).await;
        }
    }
    if result.is_ok() && !deferred.is_empty() {
        result = applier.apply(&deferred).await;
    }
    if let Some(cp) = config_plan {
        cp.close().await;
    }
    crate::hosts::remote::persist::drop_handoffs(&crate::hosts::remote::ssh_config_path(&project)).await;
    drop(applier);
    drop(events);
    printer.finish().await;
    result?;

    let summary = crate::cloud::diff::Summary::of(&changes);
    println!(
        "\nApply complete! Resources: {} added, {} changed, {} destroyed ({:.1}s).",
        summary.add,
        summary.change,
        summary.destroy,
        started.elapsed().as_secs_f64()
    );
    Ok(0)
}

/// Whether this apply drains what leaves. `--no-ssh-wait` promises not to dial
/// the machines, so machines it deletes go undrained (said here).
/// The hosts' facts and changes, limited to `--target` (the other hosts keep
/// their facts and sessions but change nothing).
async fn prepare_targets(project: &Project, state: &crate::state::State, args: &ApplyCmd, gather: phase::Gather, events: &rigger_events::Events) -> Result<phase::ConfigPlan> {
    let mut cp = phase::prepare(project, state, args.parallelism, gather, events).await?;
    cp.limit_to(&project.plan, &args.targets);
    Ok(cp)
}

fn drains(infra_only: bool, no_ssh_wait: bool, changes: &[crate::cloud::diff::Change], paint: &Paint) -> bool {
    if infra_only && no_ssh_wait {
        let leaving = crate::reshape::drain::leaving(changes);
        if !leaving.is_empty() {
            println!("{}", paint.yellow(&format!("note: --no-ssh-wait: the machines {} are deleted without draining them first (nothing on them is stopped or handed over)", leaving.join(", "))));
        }
        return false;
    }
    true
}

async fn wait_for_all_ssh(provider: &dyn crate::cloud::providers::Provider, project: &Project, shared: &Arc<Mutex<Shared>>, events: &rigger_events::Events) -> Result<()> {
    let (targets, machines) = {
        let sh = shared.lock().await;
        (crate::hosts::remote::targets(project, &sh.state), sh.state.machines().cloned().collect::<Vec<_>>())
    };
    let config = crate::hosts::remote::ssh_config_path(project);
    let mut set = tokio::task::JoinSet::new();
    for t in targets {
        let (events, config) = (events.clone(), config.clone());
        set.spawn(async move { crate::hosts::remote::wait_for_ssh(&config, &t.name, SSH_WAIT, &events).await });
    }
    let mut errors = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Err(e) = r? {
            errors.push(format!("{e:#}"));
        }
    }
    // A machine that never answers: what did it print while booting?
    let silent: Vec<_> = machines.iter().filter(|m| errors.iter().any(|e| e.starts_with(&format!("{}:", m.address.name)))).collect();
    for m in silent {
        if let Some(tail) = provider.console_tail(m, 15).await {
            errors.push(format!("{} console, last lines:\n    {}", m.address.name, tail.replace('\n', "\n    ")));
        }
    }
    if !errors.is_empty() {
        anyhow::bail!("{} machine(s) do not answer SSH:\n  {}", errors.len(), errors.join("\n  "));
    }
    Ok(())
}
