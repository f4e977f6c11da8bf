//! What a text setting under `services:` may hold, by its type. Every text
//! ends up in a config file, a unit, a path or an SQL statement on the hosts,
//! so it is checked when the plan is read (with its position), not when apply
//! writes it: a newline would add lines to a config file, a reserved name
//! would take over a unit or a database role the stack itself uses.

use super::services::SettingType;

/// `Err("what is wrong — what to do")` when `text` does not fit `ty`;
/// `what` names the setting (services.app.name).
pub fn check(ty: SettingType, what: &str, text: &str) -> Result<(), String> {
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(format!("{what} holds a control character ({c:?}) — write it on one line, without tabs or escapes"));
    }
    match ty {
        SettingType::Name => name(what, text),
        SettingType::Identifier => identifier(what, text),
        SettingType::UnitName => unit_name(what, text),
        SettingType::Interface => interface(what, text),
        SettingType::Size { units, ignore_case } => size(what, text, units, ignore_case),
        SettingType::OneOf(allowed) if !allowed.contains(&text) => {
            Err(format!("{what} `{text}` is not one of the choices — use one of: {}", allowed.join(", ")))
        }
        _ => Ok(()),
    }
}

/// A cluster name or token: it lands in DCS paths and config values unquoted.
fn name(what: &str, text: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&text.len())
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!("{what} `{text}` is not a plain name — use letters, digits, `-`, `_` and `.` (at most 63, starting with a letter or digit), e.g. saleor-cluster"))
    }
}

/// Names PostgreSQL or Patroni keep for themselves, or that `CREATE ROLE x`
/// and `CREATE DATABASE x` cannot take unquoted (the SQL reserved words).
const RESERVED_SQL: &[&str] = &[
    // Patroni's own roles (templates/patroni.yml.j2) and PostgreSQL's own objects.
    "postgres", "replicator", "rewinder", "template0", "template1", "public", "none",
    // PostgreSQL's reserved key words (documentation, appendix C).
    "all", "analyse", "analyze", "and", "any", "array", "as", "asc", "asymmetric", "both", "case", "cast", "check",
    "collate", "column", "constraint", "create", "current_catalog", "current_date", "current_role", "current_time",
    "current_timestamp", "current_user", "default", "deferrable", "desc", "distinct", "do", "else", "end", "except",
    "false", "fetch", "for", "foreign", "from", "grant", "group", "having", "in", "initially", "intersect", "into",
    "lateral", "leading", "limit", "localtime", "localtimestamp", "not", "null", "offset", "on", "only", "or", "order",
    "placing", "primary", "references", "returning", "select", "session_user", "some", "symmetric", "system_user",
    "table", "then", "to", "trailing", "true", "union", "unique", "user", "using", "variadic", "when", "where", "window", "with",
];

/// The rule `database::ensure` applies: an unquoted PostgreSQL identifier.
pub fn identifier_ok(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') && s.len() <= 63 && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// A database that is also its owner's login role.
fn identifier(what: &str, text: &str) -> Result<(), String> {
    if !identifier_ok(text) {
        let fixed = text.to_ascii_lowercase().replace(['-', ' ', '.'], "_");
        let fixed = fixed.trim_start_matches(|c: char| !c.is_ascii_lowercase());
        let example = if identifier_ok(fixed) { fixed } else { "shop_db" };
        return Err(format!("{what} `{text}` is not a plain PostgreSQL name — use lower-case letters, digits and `_`, starting with a letter (at most 63), e.g. {example}"));
    }
    if text.starts_with("pg_") || RESERVED_SQL.contains(&text) {
        return Err(format!("{what} `{text}` is a name PostgreSQL or Patroni keeps for itself (the app's login role would take it over) — pick another, e.g. the app's own name"));
    }
    Ok(())
}

/// Units and users the stack's roles install, and the distro's own, that a
/// unit of the plan's (its user, /opt/<name>, /etc/<name>) must not replace.
const RESERVED_UNITS: &[&str] = &[
    // rigger's roles
    "etcd", "patroni", "postgres", "postgresql", "haproxy", "keepalived", "redis", "redis-server", "nginx", "saleor",
    "storefront", "pgbackrest", "nftables", "rigger", "www-data", "node", "python3",
    // the distro's
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy", "backup", "list",
    "irc", "gnats", "nobody", "nogroup", "ssh", "sshd", "openssh", "systemd", "dbus", "messagebus", "cron", "rsyslog",
    "syslog", "networking", "network", "getty", "polkit", "udev", "kmod", "apt", "ntp", "chrony", "sudo", "login",
    "users", "init", "ssl", "default", "emergency", "rescue", "multi-user", "graphical", "basic", "local-fs", "remote-fs",
    // systemd's per-user units (user@.service, user-runtime-dir@.service)
    "user", "user-runtime-dir",
];

/// Prefixes of whole families of units (`systemd-networkd`, `saleor-api`, …).
const RESERVED_UNIT_PREFIXES: &[&str] = &["systemd-", "saleor-", "dbus-", "getty", "serial-getty", "etcd-", "patroni-", "pgbackrest-", "storefront-", "redis-", "nginx-", "haproxy-"];

/// The rule of a name that is a systemd unit, a system user and a folder.
pub fn unit_name_ok(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn unit_name(what: &str, text: &str) -> Result<(), String> {
    if !unit_name_ok(text) {
        return Err(format!("{what} `{text}` cannot name a service — use lower-case letters, digits and `-`, starting with a letter (at most 32); it names the systemd unit, its user and /opt/<name>"));
    }
    if RESERVED_UNITS.contains(&text) || RESERVED_UNIT_PREFIXES.iter().any(|p| text.starts_with(p)) {
        return Err(format!("{what} `{text}` is a service or user the stack or the distro already has (its unit would be replaced) — pick another, e.g. shop-app"));
    }
    Ok(())
}

/// A Linux interface name (IFNAMSIZ: at most 15 bytes, no `/`, `:` or blanks).
fn interface(what: &str, text: &str) -> Result<(), String> {
    let ok = (1..=15).contains(&text.len())
        && text != "."
        && text != ".."
        && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!("{what} `{text}` is not a network interface name — use the name `ip link` shows, e.g. eth0 (at most 15 letters, digits, `-`, `_`, `.`)"))
    }
}

/// A whole number with one of the daemon's units (`100MB` for Patroni's lag,
/// `256mb` for Redis).
fn size(what: &str, text: &str, units: &[&str], ignore_case: bool) -> Result<(), String> {
    let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let unit = &text[digits..];
    let known = units.iter().any(|u| if ignore_case { u.eq_ignore_ascii_case(unit) } else { *u == unit });
    if digits > 0 && digits <= 18 && known {
        Ok(())
    } else {
        let shown: Vec<&str> = units.iter().copied().filter(|u| !u.is_empty()).collect();
        let mb = shown.iter().find(|u| u.eq_ignore_ascii_case("mb")).copied().unwrap_or_default();
        Err(format!("{what} `{text}` is not a size — write a whole number with one of the units {} (no space), e.g. 256{mb}", shown.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The login roles rigger's own templates use (Patroni's superuser,
    /// replication and rewind users; pgBackRest's) are names an app's
    /// database — also its login role — may not take.
    #[test]
    fn every_login_role_of_the_stack_is_kept_from_the_apps() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/templates");
        let mut users = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for line in text.lines().map(str::trim) {
                let user = line.strip_prefix("username:").or_else(|| line.split_once("-user=").map(|(_, u)| u));
                if let Some(u) = user.map(str::trim).filter(|u| identifier_ok(u)) {
                    users.push(u.to_string());
                }
            }
        }
        for u in ["postgres", "replicator", "rewinder"] {
            assert!(users.iter().any(|x| x == u), "templates/ no longer name {u}: update this test");
        }
        for u in &users {
            assert!(check(SettingType::Identifier, "services.app.database", u).is_err(), "{u} is a login role of the stack's, yet an app may take it");
        }
    }

    #[test]
    fn each_kind_takes_its_own_and_refuses_the_rest() {
        assert!(check(SettingType::Str, "x", "anything: at all").is_ok());
        assert!(check(SettingType::Str, "x", "two\nlines").unwrap_err().contains("control character"));
        assert!(check(SettingType::Name, "x", "saleor-cluster").is_ok());
        assert!(check(SettingType::Name, "x", "my cluster: x").is_err());
        assert!(check(SettingType::Identifier, "x", "shop_db").is_ok());
        for bad in ["postgres", "replicator", "rewinder", "pg_monitor", "my-db", "user", "Shop"] {
            assert!(check(SettingType::Identifier, "x", bad).is_err(), "{bad}");
        }
        assert!(check(SettingType::UnitName, "x", "shop-app").is_ok());
        for bad in ["nginx", "ssh", "sshd", "systemd-networkd", "My_App", "saleor-api", "1app", "app-"] {
            assert!(check(SettingType::UnitName, "x", bad).is_err(), "{bad}");
        }
        assert!(check(SettingType::Interface, "x", "eth0").is_ok());
        assert!(check(SettingType::Interface, "x", "eth0 x").is_err());
        let lag = SettingType::Size { units: &["", "B", "kB", "MB", "GB", "TB"], ignore_case: false };
        assert!(check(lag, "x", "100MB").is_ok() && check(lag, "x", "1048576").is_ok());
        assert!(check(lag, "x", "a lot").is_err() && check(lag, "x", "100 MB").is_err() && check(lag, "x", "MB").is_err());
        assert!(check(SettingType::OneOf(&["lz4", "none"]), "x", "zip").is_err());
    }
}
