//! The generic machinery of the settings each role takes under `services:`:
//! their types and how a role declares one. The settings themselves, with
//! their defaults, live in the role's own module (`Role::settings`) — the only
//! place a default is written; the plan loader fills them in, and code that
//! reads a role the plan may lack asks `Plan::int_setting` / `str_setting`,
//! which fall back to that same default.

use super::model::Plan;
use crate::hosts::roles::registry;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingType {
    Int { min: i64, max: i64 },
    Bool,
    /// Free text on one line (no control characters: it lands in config files).
    Str,
    /// A cluster name or token: letters, digits, `-`, `_`, `.`.
    Name,
    /// A PostgreSQL database and login role name, not one PostgreSQL or Patroni keeps.
    Identifier,
    /// A systemd unit, system user and folder name, not one the stack or the distro has.
    UnitName,
    /// A Linux network interface name.
    Interface,
    /// A whole number with one of the daemon's units ("" for plain bytes).
    Size { units: &'static [&'static str], ignore_case: bool },
    /// One of a fixed set of words.
    OneOf(&'static [&'static str]),
    /// An IPv4 address.
    Ip,
    /// A mapping of free-form settings (e.g. PostgreSQL parameters).
    Map,
    /// A list of strings.
    List,
}

pub struct Setting {
    pub key: &'static str,
    pub ty: SettingType,
    /// `None`: no default (optional, or required when the role is used — see `required`).
    pub default: Option<fn(project: &str) -> Value>,
    pub required: bool,
    pub help: &'static str,
}

impl Setting {
    /// A setting with a default (computed from the project's name).
    pub const fn new(key: &'static str, ty: SettingType, default: fn(&str) -> Value, help: &'static str) -> Setting {
        Setting { key, ty, default: Some(default), required: false, help }
    }
    /// A setting that may be left out and has no default.
    pub const fn optional(key: &'static str, ty: SettingType, help: &'static str) -> Setting {
        Setting { key, ty, default: None, required: false, help }
    }
    /// A setting a plan that uses the role must give.
    pub const fn required(key: &'static str, ty: SettingType, help: &'static str) -> Setting {
        Setting { key, ty, default: None, required: true, help }
    }
}

/// Patroni's byte units (its REST API's `?lag=`).
pub const PATRONI_SIZE: SettingType = SettingType::Size { units: &["", "B", "kB", "MB", "GB", "TB"], ignore_case: false };

/// Redis's memory units (redis.conf, any case).
pub const REDIS_SIZE: SettingType = SettingType::Size { units: &["", "b", "k", "kb", "m", "mb", "g", "gb"], ignore_case: true };

/// A TCP port.
pub const PORT: SettingType = SettingType::Int { min: 1, max: 65535 };

/// The settings `role` takes (none for a name the registry lacks).
pub fn settings(role: &str) -> &'static [Setting] {
    registry::get(role).map_or(&[], |r| r.settings())
}

/// The role's default for `key`, for this project.
pub fn default_of(role: &str, key: &str, project: &str) -> Option<Value> {
    settings(role).iter().find(|s| s.key == key).and_then(|s| s.default).map(|f| f(project))
}

impl Plan {
    /// A setting's value: the plan's (the loader applied the default when
    /// the plan's role lacks it), else — the role absent from the plan, or a
    /// plan built by hand — the role's declared default.
    pub fn setting_or_default(&self, role: &str, key: &str) -> Option<Value> {
        self.setting(role, key).cloned().or_else(|| default_of(role, key, &self.project))
    }

    /// An integer setting with a default (`Role::settings` declares both).
    pub fn int_setting(&self, role: &str, key: &str) -> u64 {
        self.setting(role, key)
            .and_then(Value::as_u64)
            .or_else(|| default_of(role, key, &self.project).and_then(|v| v.as_u64()))
            .unwrap_or_else(|| panic!("services.{role}.{key} is no integer setting with a default — declare it in the role's settings()"))
    }

    /// A boolean setting with a default (`Role::settings` declares both).
    pub fn bool_setting(&self, role: &str, key: &str) -> bool {
        self.setting(role, key)
            .and_then(Value::as_bool)
            .or_else(|| default_of(role, key, &self.project).and_then(|v| v.as_bool()))
            .unwrap_or_else(|| panic!("services.{role}.{key} is no boolean setting with a default — declare it in the role's settings()"))
    }

    /// A string setting with a default (`Role::settings` declares both).
    pub fn str_setting(&self, role: &str, key: &str) -> String {
        self.setting(role, key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| default_of(role, key, &self.project).and_then(|v| v.as_str().map(str::to_string)))
            .unwrap_or_else(|| panic!("services.{role}.{key} is no string setting with a default — declare it in the role's settings()"))
    }
}

/// The secrets a plan's roles need (`Role::secrets`), in the registry's
/// order; generated once and kept in the state.
pub fn secret_names(roles: &std::collections::BTreeSet<&str>) -> Vec<&'static str> {
    registry::ROLES.iter().filter(|r| roles.contains(r.name())).flat_map(|r| r.secrets().iter().copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_has_its_declared_type() {
        for r in registry::ROLES {
            for s in r.settings() {
                let Some(d) = s.default.map(|f| f("proj")) else { continue };
                let fits = match s.ty {
                    SettingType::Int { min, max } => d.as_i64().is_some_and(|v| (min..=max).contains(&v)),
                    SettingType::Bool => d.is_boolean(),
                    SettingType::Ip => d.is_string(),
                    SettingType::Map => d.is_object(),
                    SettingType::List => d.is_array(),
                    text => d.as_str().is_some_and(|t| crate::plan::setting_text::check(text, s.key, t).is_ok()),
                };
                assert!(fits, "services.{}.{}: the default {d} is not a {:?}", r.name(), s.key, s.ty);
                assert!(!s.required, "services.{}.{} is required and has a default", r.name(), s.key);
            }
        }
    }

    #[test]
    fn a_role_the_plan_lacks_reads_its_declared_default() {
        let text = "version: 1\nproject: shop\nprovider: { kind: local }\nnetwork: { name: main, subnets: [{ name: a, cidr: 10.20.0.0/24 }] }\nhosts: [{ name: r, roles: [redis] }]\n";
        let plan = crate::plan::load_str(std::path::Path::new("p.yaml"), text).unwrap();
        assert!(plan.setting("patroni", "scope").is_none(), "the plan has no patroni");
        assert_eq!(plan.str_setting("patroni", "scope"), "shop", "the default is computed from the project");
        assert_eq!(plan.int_setting("etcd", "client_port"), 2379);
        assert_eq!(plan.int_setting("redis", "port"), 6379, "the loader filled in the plan's own role");
    }
}
