//! `services.patroni.rto`: failover presets. Each sets Patroni's DCS timing
//! (ttl, loop_wait, retry_timeout) and HAProxy's health checks of the write
//! and read ports together, so the two agree on how fast a dead primary is
//! noticed. A crashed leader's key expires `ttl - (time since its last
//! update)` after the crash, i.e. between ttl - loop_wait and ttl; HAProxy then
//! needs `rise` good checks `downinter` apart to send writes to the new
//! leader — which is also the write gap of a planned switchover, so every
//! preset checks a server that is down often (`downinter`).
//! Explicit ttl/loop_wait/retry_timeout in the plan win over the preset.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use crate::hosts::roles::patroni;

pub struct Preset {
    pub name: &'static str,
    pub ttl: i64,
    pub loop_wait: i64,
    pub retry_timeout: i64,
    /// HAProxy `default-server` checks for the write port.
    pub primary_checks: &'static str,
    /// … and for the read port.
    pub replica_checks: &'static str,
    pub help: &'static str,
}

pub const DEFAULT: &str = "normal";

/// The write port also watches its own traffic: the first refused connection
/// takes a server out at once (a demoting or crashed leader refuses before a
/// health check can notice), and the template's `option redispatch` sends that
/// connection on to the new leader instead of retrying the old one.
pub const PRIMARY_PASSIVE: &str = "observe layer4 error-limit 1 on-error mark-down";

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "fast",
        ttl: 20,
        loop_wait: 5,
        retry_timeout: 5,
        primary_checks: "inter 1s fastinter 250ms downinter 250ms fall 2 rise 1",
        replica_checks: "inter 1s fastinter 500ms downinter 500ms fall 2 rise 2",
        help: "Patroni's lowest ttl: for good networks (a slow DCS can demote a healthy leader)",
    },
    Preset {
        name: "normal",
        ttl: 30,
        loop_wait: 10,
        retry_timeout: 10,
        primary_checks: "inter 1s fastinter 250ms downinter 500ms fall 2 rise 1",
        replica_checks: "inter 3s fastinter 1s downinter 1s fall 3 rise 2",
        help: "Patroni's defaults",
    },
    Preset {
        name: "safe",
        ttl: 60,
        loop_wait: 10,
        retry_timeout: 20,
        primary_checks: "inter 2s fastinter 500ms downinter 500ms fall 3 rise 1",
        replica_checks: "inter 5s fastinter 2s downinter 2s fall 3 rise 2",
        help: "rides out DCS or network hiccups of up to 20 s without a failover",
    },
];

pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// The plan's preset (the default when the plan has no patroni section).
pub fn of_plan(plan: &crate::plan::model::Plan) -> &'static Preset {
    plan.setting(patroni::NAME, "rto")
        .and_then(Value::as_str)
        .and_then(preset)
        .or_else(|| preset(DEFAULT))
        .expect("the default preset exists")
}

/// What the HAProxy template reads (`failover.primary`, `failover.replicas`).
pub fn template_values(plan: &crate::plan::model::Plan) -> Value {
    let p = of_plan(plan);
    json!({
        "primary": format!("{} on-marked-down shutdown-sessions {PRIMARY_PASSIVE}", p.primary_checks),
        "replicas": format!("{} on-marked-down shutdown-sessions", p.replica_checks),
    })
}

/// The DCS keys the preset governs, with the plan's values (explicit or preset).
pub fn dcs_values(plan: &crate::plan::model::Plan) -> Vec<(&'static str, i64)> {
    ["ttl", "loop_wait", "retry_timeout"]
        .into_iter()
        .filter_map(|k| {
            plan.setting(patroni::NAME, k)
                .and_then(Value::as_i64)
                .map(|v| (k, v))
        })
        .collect()
}

/// DCS timing that differs from the plan's: (key, now, wanted). Patroni only
/// reads bootstrap.dcs once, so a running cluster is changed through /config.
pub fn dcs_changes(
    plan: &crate::plan::model::Plan,
    live_config: &str,
) -> Vec<(String, Option<String>, String)> {
    let Ok(live) = serde_json::from_str::<Value>(live_config) else {
        return vec![];
    };
    dcs_values(plan)
        .into_iter()
        .filter_map(|(k, want)| {
            let now = live.get(k).and_then(Value::as_i64);
            (now != Some(want))
                .then(|| (k.to_string(), now.map(|n| n.to_string()), want.to_string()))
        })
        .collect()
}

/// At plan load: check `rto` (a clear error at its position) and fill in the
/// timing the plan does not give explicitly.
pub(super) fn apply_preset(
    d: &mut super::diag::Diags,
    section: Option<&super::yaml::Node>,
    values: &mut BTreeMap<String, Value>,
) {
    let name = values
        .get("rto")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT)
        .to_string();
    let Some(p) = preset(&name) else {
        if let Some(node) = section.and_then(|s| s.get("rto")) {
            d.at(
                node,
                format!(
                    "services.patroni.rto `{name}` is not a preset — {}",
                    super::diag::suggestion(&name, &names())
                ),
            );
        }
        return;
    };
    for (key, v) in [
        ("ttl", p.ttl),
        ("loop_wait", p.loop_wait),
        ("retry_timeout", p.retry_timeout),
    ] {
        let explicit = section
            .and_then(|s| s.get(key))
            .is_some_and(|n| !n.is_null());
        if !explicit {
            values.insert(key.to_string(), json!(v));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_keeps_patronis_rule() {
        for p in PRESETS {
            assert!(p.loop_wait + 2 * p.retry_timeout <= p.ttl, "{}", p.name);
            assert!(p.ttl >= 20, "{}: Patroni refuses a ttl below 20", p.name);
        }
        assert!(preset(DEFAULT).is_some());
    }

    fn load(services: &str) -> Result<crate::plan::model::Plan, String> {
        let text = format!(
            "version: 1\nproject: t\nprovider: {{ kind: local }}\nnetwork:\n  name: main\n  subnets:\n    - {{ name: a, cidr: 10.9.0.0/24 }}\n\
             hosts:\n  - {{ name: pg, count: 3, roles: [etcd, patroni, haproxy], ip: 10.9.0.21 }}\nservices:\n  patroni: {services}\n"
        );
        crate::plan::load_str(std::path::Path::new("plan.yaml"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn a_preset_sets_patroni_and_haproxy_together_and_explicit_values_win() {
        let fast = load("{ rto: fast }").unwrap();
        assert_eq!(
            dcs_values(&fast),
            vec![("ttl", 20), ("loop_wait", 5), ("retry_timeout", 5)]
        );
        assert!(template_values(&fast)["primary"]
            .as_str()
            .unwrap()
            .starts_with("inter 1s fastinter 250ms"));
        let mixed = load("{ rto: safe, ttl: 90 }").unwrap();
        assert_eq!(
            dcs_values(&mixed),
            vec![("ttl", 90), ("loop_wait", 10), ("retry_timeout", 20)]
        );
        let default = load("{ scope: x }").unwrap();
        assert_eq!(
            dcs_values(&default),
            vec![("ttl", 30), ("loop_wait", 10), ("retry_timeout", 10)]
        );
    }

    #[test]
    fn the_write_port_leaves_a_stopped_leader_at_once_in_every_preset() {
        for p in PRESETS {
            let plan = load(&format!("{{ rto: {} }}", p.name)).unwrap();
            let r = crate::render::Renderer::new().unwrap();
            let secrets = BTreeMap::from([("haproxy_stats_password".to_string(), "x".to_string())]);
            let ctx = crate::hosts::roles::template_context(&plan, plan.host("pg-1").unwrap(), &secrets);
            let d = crate::hosts::roles::haproxy::desired(&r, &ctx).unwrap();
            let cfg = &d.files.iter().find(|f| f.path == "/etc/haproxy/haproxy.cfg").unwrap().content;
            let primary = cfg.split("listen primary").nth(1).unwrap().split("listen replicas").next().unwrap();
            // A demoting leader still answers 200 with its PostgreSQL stopped.
            assert!(primary.contains("http-check send meth GET uri /primary\n    http-check expect status 200\n    http-check expect rstring \"\\\"state\\\": \\\"running\\\"\""), "{primary}");
            assert!(primary.contains("option redispatch"), "{primary}");
            assert!(primary.contains(&format!("default-server {} on-marked-down shutdown-sessions {PRIMARY_PASSIVE}\n", p.primary_checks)), "{primary}");
            let replicas = cfg.split("listen replicas").nth(1).unwrap();
            assert!(!replicas.split("\n\n").next().unwrap().contains("on-error"), "{replicas}");
        }
    }

    #[test]
    fn an_unknown_preset_is_a_positioned_error() {
        let err = load("{ rto: fsat }").unwrap_err();
        assert!(
            err.contains("plan.yaml:") && err.contains("did you mean `fast`"),
            "{err}"
        );
    }

    #[test]
    fn live_dcs_timing_is_compared_with_the_plans() {
        let fast = load("{ rto: fast }").unwrap();
        let changes = dcs_changes(&fast, r#"{"ttl": 30, "loop_wait": 5, "retry_timeout": 10}"#);
        assert_eq!(
            changes,
            vec![
                ("ttl".to_string(), Some("30".to_string()), "20".to_string()),
                (
                    "retry_timeout".to_string(),
                    Some("10".to_string()),
                    "5".to_string()
                )
            ]
        );
    }
}
