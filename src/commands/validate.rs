use crate::cli::PlanArg;
use anyhow::Result;

pub fn run(args: &PlanArg) -> Result<i32> {
    let plan = crate::plan::load(&args.plan)?;
    let groups = plan.firewall.len();
    println!(
        "{}: valid — project {}, provider {}, {} hosts, {} subnet(s), {} firewall group(s)",
        args.plan.display(),
        plan.project,
        plan.provider.kind(),
        plan.hosts.len(),
        plan.network.subnets.len(),
        groups
    );
    Ok(0)
}
