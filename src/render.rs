//! Config files from templates (minijinja). The templates are built into the
//! binary; `RIGGER_TEMPLATES_DIR` points at a folder whose files take
//! precedence (for local tweaks and tests). Undefined variables are errors.

use anyhow::{anyhow, Result};
use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;

/// Every template rigger ships, by file name.
pub const BUILTIN: &[(&str, &str)] = &[
    ("etcd.env.j2", include_str!("../templates/etcd.env.j2")),
    ("etcd-bootstrap.env.j2", include_str!("../templates/etcd-bootstrap.env.j2")),
    ("patroni.yml.j2", include_str!("../templates/patroni.yml.j2")),
    ("haproxy.cfg.j2", include_str!("../templates/haproxy.cfg.j2")),
    ("haproxy-save-state.py.j2", include_str!("../templates/haproxy-save-state.py.j2")),
    ("haproxy-state.conf.j2", include_str!("../templates/haproxy-state.conf.j2")),
    ("storefront-hairpin.nft.j2", include_str!("../templates/storefront-hairpin.nft.j2")),
    ("storefront-hairpin.service.j2", include_str!("../templates/storefront-hairpin.service.j2")),
    ("keepalived.conf.j2", include_str!("../templates/keepalived.conf.j2")),
    ("redis.conf.j2", include_str!("../templates/redis.conf.j2")),
    ("app.env.j2", include_str!("../templates/app.env.j2")),
    ("app.service.j2", include_str!("../templates/app.service.j2")),
    ("nginx.conf.j2", include_str!("../templates/nginx.conf.j2")),
    ("saleor.env.j2", include_str!("../templates/saleor.env.j2")),
    ("saleor-dashboard.env.j2", include_str!("../templates/saleor-dashboard.env.j2")),
    ("saleor.service.j2", include_str!("../templates/saleor.service.j2")),
    ("saleor-source.service.j2", include_str!("../templates/saleor-source.service.j2")),
    ("saleor-rsa.env.j2", include_str!("../templates/saleor-rsa.env.j2")),
    ("saleor-dashboard-nginx.conf.j2", include_str!("../templates/saleor-dashboard-nginx.conf.j2")),
    ("saleor-dashboard.service.j2", include_str!("../templates/saleor-dashboard.service.j2")),
    ("storefront.env.j2", include_str!("../templates/storefront.env.j2")),
    ("storefront.service.j2", include_str!("../templates/storefront.service.j2")),
    ("storefront-source.service.j2", include_str!("../templates/storefront-source.service.j2")),
    ("pgbackrest-repo.conf.j2", include_str!("../templates/pgbackrest-repo.conf.j2")),
    ("pgbackrest-member.conf.j2", include_str!("../templates/pgbackrest-member.conf.j2")),
    ("pgbackrest-backup@.service.j2", include_str!("../templates/pgbackrest-backup@.service.j2")),
    ("pgbackrest-backup.timer.j2", include_str!("../templates/pgbackrest-backup.timer.j2")),
];

pub struct Renderer {
    env: Environment<'static>,
}

impl Renderer {
    pub fn new() -> Result<Renderer> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_keep_trailing_newline(true);
        // Config files are not HTML or JSON documents: no auto-escaping by
        // extension (minijinja would JSON-quote every value in a .yml).
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        let dir = std::env::var_os("RIGGER_TEMPLATES_DIR").map(std::path::PathBuf::from);
        for (name, builtin) in BUILTIN {
            let text = match dir.as_ref().map(|d| d.join(name)).filter(|p| p.exists()) {
                Some(p) => std::fs::read_to_string(&p).map_err(|e| anyhow!("cannot read {}: {e}", p.display()))?,
                None => builtin.to_string(),
            };
            env.add_template_owned(name.to_string(), text).map_err(|e| template_error(name, &e))?;
        }
        Ok(Renderer { env })
    }

    /// Render `template` for one host; errors name the template and line.
    pub fn render(&self, template: &str, ctx: &Value) -> Result<String> {
        let t = self.env.get_template(template).map_err(|e| template_error(template, &e))?;
        t.render(ctx).map_err(|e| template_error(template, &e))
    }
}

fn template_error(name: &str, e: &minijinja::Error) -> anyhow::Error {
    let line = e.line().map(|l| format!(" line {l}")).unwrap_or_default();
    let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
    anyhow!("templates/{name}{line}: {}{detail} — fix the template or the plan setting it reads", e.kind())
}
