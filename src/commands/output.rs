//! `rigger output`: where the built stack answers, and how to log in.
//! Passwords are masked unless --show-secrets.

use crate::cli::OutputCmd;
use crate::project::Project;
use crate::hosts::roles::registry;
use crate::hosts::roles::role::Outputs;
use anyhow::{bail, Result};
use serde_json::{json, Map, Value};
use std::path::Path;

pub const MASK: &str = "(sensitive — rigger output --show-secrets)";

pub fn run(args: &OutputCmd, state_override: Option<&Path>) -> Result<i32> {
    // `rigger output ca` means the default plan, unless a plan file is called `ca`.
    let (plan_path, what) = match (&args.what, args.plan.to_str()) {
        (None, Some("ca")) if !args.plan.exists() => (Path::new("rigger.yaml"), Some("ca")),
        (w, _) => (args.plan.as_path(), w.as_deref()),
    };
    let project = Project::load(plan_path, state_override)?;
    let Some(state) = crate::state::read_state(&project.state_path)? else {
        bail!("nothing was applied for project {} yet — run `rigger apply {}` first", project.plan.project, plan_path.display());
    };
    match what {
        None => {}
        Some("ca") => {
            let Some(ca) = state.secrets.get(crate::pki::CA_CERT) else {
                bail!("project {} has no CA — TLS is off in the plan (security.tls: false) or nothing was applied with it yet", project.plan.project);
            };
            let path = crate::pki::ca_file(&project);
            crate::pki::write_public(&path, ca)?;
            println!("{}", path.display());
            return Ok(0);
        }
        Some(other) => bail!("`rigger output {other}`: unknown output — the one named output is `ca` (the project CA certificate)"),
    }
    let outputs = collect(&project, &state, args.show_secrets);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&Value::Object(outputs))?);
    } else {
        let width = outputs.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in &outputs {
            let shown = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("{k:<width$} = {shown}");
        }
    }
    Ok(0)
}

pub fn collect(project: &Project, state: &crate::state::State, show_secrets: bool) -> Map<String, Value> {
    let plan = &project.plan;
    let at = Outputs { plan, state, show_secrets };
    let mut o = Map::new();
    o.insert("project".into(), json!(plan.project));
    o.insert("machines".into(), json!(state.machines().count()));
    // Each role says where it answers.
    for role in registry::ROLES {
        role.outputs(&at, &mut o);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::resource::{Address, Kind, LiveResource};

    /// Every host of the plan built, every secret present.
    fn built(plan: &crate::plan::model::Plan) -> crate::state::State {
        let mut state = crate::state::State::new(&plan.project, "local");
        for h in &plan.hosts {
            let address = Address::new(Kind::Machine, h.name.clone());
            state.resources.insert(address.clone(), LiveResource { address, id: h.name.clone(), attrs: Default::default(), outputs: Default::default() });
        }
        for name in crate::plan::services::secret_names(&plan.roles()) {
            state.secrets.insert(name.to_string(), format!("s-{name}"));
        }
        state
    }

    fn outputs(plan: &str, show_secrets: bool) -> String {
        let project = Project::load(std::path::Path::new(plan), None).unwrap();
        serde_json::to_string(&collect(&project, &built(&project.plan), show_secrets)).unwrap()
    }

    // Each role describes its own outputs (Role::outputs); these are the
    // figures the single match on role names gave before, checked equal on
    // every file in plans/ when the roles took them over.
    #[test]
    fn every_role_says_where_it_answers_secrets_masked() {
        assert_eq!(outputs("plans/local-ha.yaml", false), r#"{"apps":["http://10.20.0.41:9001/","http://10.20.0.42:9001/","http://10.20.0.43:9001/"],"etcd_endpoints":"https://10.20.0.51:2379,https://10.20.0.52:2379,https://10.20.0.53:2379","haproxy_stats":["http://10.20.0.11:8404/stats","http://10.20.0.12:8404/stats"],"haproxy_stats_password":"(sensitive — rigger output --show-secrets)","haproxy_stats_user":"admin","machines":13,"patroni_rest":["https://10.20.0.21:8008/","https://10.20.0.22:8008/","https://10.20.0.23:8008/"],"postgres_read":"postgres://postgres@10.20.0.10:5001/postgres","postgres_superuser":"postgres","postgres_superuser_password":"(sensitive — rigger output --show-secrets)","postgres_write":"postgres://postgres@10.20.0.10:5000/postgres","project":"local-ha","redis":"redis://10.20.0.31:6379/0","vip":"10.20.0.10","web":"http://10.20.0.5:80/"}"#);
    }

    #[test]
    fn the_shop_behind_the_load_balancer_without_a_vip_secrets_shown() {
        assert_eq!(outputs("plans/yandex-saleor-ha.yaml", true), r#"{"etcd_endpoints":"https://10.20.0.21:2379,https://10.20.0.22:2379,https://10.20.0.23:2379","haproxy_stats":["http://10.20.0.10:8404/stats"],"haproxy_stats_password":"s-haproxy_stats_password","haproxy_stats_user":"admin","machines":6,"patroni_rest":["https://10.20.0.21:8008/","https://10.20.0.22:8008/","https://10.20.0.23:8008/"],"postgres_read":"postgres://postgres@10.20.0.10:5001/postgres","postgres_superuser":"postgres","postgres_superuser_password":"s-postgres_superuser_password","postgres_write":"postgres://postgres@10.20.0.10:5000/postgres","project":"saleor-ha","redis":"redis://10.20.0.30:6379/0","saleor_api":"http://10.20.0.10/graphql/","saleor_dashboard":"http://10.20.0.10:9000/","storefront":"http://10.20.0.40:3000/"}"#);
    }
}
