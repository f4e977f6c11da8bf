//! The Proxmox VE API schema (`apidata.js`, as published by pve-docs' API
//! viewer) as a lookup table, and parameter verification derived from it the
//! way pve-common's PVE/JSONSchema.pm `validate` reports it: per parameter,
//! with JSONSchema.pm's own messages, for the simulator (which refuses what a
//! real node would refuse) and for the tests that hold rigger's client to the
//! same definitions.
//!
//! The file is not part of the project: it is read from
//! `../shared/reference/api/proxmox/apidata.js` beside the checkout, or from
//! `RIGGER_PROXMOX_APIDATA`.

use super::validation::{self, FieldErrors, Params};
use anyhow::{anyhow, Context, Result};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const ENV_APIDATA: &str = "RIGGER_PROXMOX_APIDATA";

/// Where the definitions are, if anywhere: the env variable, else the shared
/// folder beside this checkout (this crate sits two folders below its root).
pub fn default_path() -> Option<PathBuf> {
    if let Ok(path) = std::env::var(ENV_APIDATA) {
        return Some(PathBuf::from(path));
    }
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/api/proxmox/apidata.js");
    beside.is_file().then_some(beside)
}

/// One method of one path.
#[derive(Debug, Clone)]
pub struct Method {
    /// `properties` of the parameter schema.
    pub parameters: Map<String, Value>,
    pub additional_properties: bool,
    pub returns: Value,
}

#[derive(Debug, Default)]
pub struct ApiSchema {
    /// `/nodes/{node}/lxc/{vmid}/config` → `GET` → …
    pub paths: BTreeMap<String, BTreeMap<String, Method>>,
}

impl ApiSchema {
    pub fn load(path: &Path) -> Result<ApiSchema> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading the Proxmox API schema {}", path.display()))?;
        ApiSchema::parse(&text).with_context(|| format!("parsing the Proxmox API schema {}", path.display()))
    }

    /// `const apiSchema = [ … ];` (and maybe more statements after it).
    pub fn parse(text: &str) -> Result<ApiSchema> {
        let start = text.find('[').ok_or_else(|| anyhow!("no array in the file"))?;
        let mut stream = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
        let tree = stream.next().ok_or_else(|| anyhow!("empty schema"))??;
        let mut schema = ApiSchema::default();
        let mut stack: Vec<&Value> = tree.as_array().map(|a| a.iter().collect()).unwrap_or_default();
        while let Some(node) = stack.pop() {
            if let Some(children) = node.get("children").and_then(Value::as_array) {
                stack.extend(children.iter());
            }
            let Some(path) = node.get("path").and_then(Value::as_str) else { continue };
            let Some(info) = node.get("info").and_then(Value::as_object) else { continue };
            let methods = schema.paths.entry(path.to_string()).or_default();
            for (method, def) in info {
                let params = def.get("parameters");
                methods.insert(
                    method.clone(),
                    Method {
                        parameters: params.and_then(|p| p.get("properties")).and_then(Value::as_object).cloned().unwrap_or_default(),
                        additional_properties: params.and_then(|p| p.get("additionalProperties")).is_some_and(truthy),
                        returns: def.get("returns").cloned().unwrap_or(Value::Null),
                    },
                );
            }
        }
        Ok(schema)
    }

    /// The schema path a concrete path matches, and the values of its `{…}` parts.
    pub fn route(&self, path: &str) -> Option<(&str, BTreeMap<String, String>)> {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut best: Option<(&str, BTreeMap<String, String>, usize)> = None;
        for template in self.paths.keys() {
            let parts: Vec<&str> = template.split('/').filter(|s| !s.is_empty()).collect();
            if parts.len() != segments.len() {
                continue;
            }
            let mut vars = BTreeMap::new();
            let mut literal = 0;
            let fits = parts.iter().zip(&segments).all(|(t, s)| match t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                Some(var) => {
                    vars.insert(var.to_string(), s.to_string());
                    true
                }
                None => {
                    literal += 1;
                    t == s
                }
            });
            // Literal parts win over variables (`/nodes/{node}/lxc` vs `/nodes/{node}/{x}`).
            if fits && best.as_ref().is_none_or(|b| literal > b.2) {
                best = Some((template.as_str(), vars, literal));
            }
        }
        best.map(|(t, v, _)| (t, v))
    }

    pub fn method(&self, template: &str, method: &str) -> Option<&Method> {
        self.paths.get(template)?.get(method)
    }

    /// JSONSchema.pm's verdict on one request: path variables and the
    /// query/form parameters together, as the API handler receives them.
    pub fn verify(&self, method: &str, path: &str, params: &Params) -> Verdict {
        let Some((template, vars)) = self.route(path) else { return Verdict::NoSuchPath };
        let Some(def) = self.method(template, method) else { return Verdict::NoSuchMethod };
        let mut all = params.clone();
        all.extend(vars);
        match check_parameters(def, &all) {
            Ok(()) => Verdict::Ok,
            Err(errors) => Verdict::Refused(errors),
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum Verdict {
    Ok,
    NoSuchPath,
    NoSuchMethod,
    Refused(FieldErrors),
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_i64() != Some(0),
        Value::String(s) => s == "1",
        _ => false,
    }
}

fn optional(schema: &Value) -> bool {
    schema.get("optional").is_some_and(truthy) || schema.get("default").is_some()
}

/// `net[n]` in the schema stands for net0, net1, …
fn schema_for<'a>(props: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(s) = props.get(name) {
        return Some(s);
    }
    let prefix = name.trim_end_matches(|c: char| c.is_ascii_digit());
    (prefix.len() < name.len()).then(|| props.get(&format!("{prefix}[n]"))).flatten()
}

pub fn check_parameters(def: &Method, params: &Params) -> Result<(), FieldErrors> {
    let mut errors = FieldErrors::new();
    for (name, schema) in &def.parameters {
        if !name.ends_with("[n]") && !optional(schema) && !params.contains_key(name) {
            errors.insert(name.clone(), "property is missing and it is not optional".into());
        }
    }
    for (name, value) in params {
        match schema_for(&def.parameters, name) {
            Some(schema) => {
                if let Err(e) = check_value(schema, value) {
                    errors.insert(name.clone(), e);
                }
            }
            None if def.additional_properties => {}
            None => {
                errors.insert(name.clone(), "property is not defined in schema and the schema does not allow additional properties".into());
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// One value against its schema (JSONSchema.pm `check_prop` / `check_type`).
pub fn check_value(schema: &Value, value: &str) -> Result<(), String> {
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("string");
    match ty {
        "integer" => {
            let n: i64 = value.trim().parse().map_err(|_| format!("type check ('integer') failed - got '{value}'"))?;
            check_range(schema, n as f64)?;
        }
        "number" => {
            let n: f64 = value.trim().parse().map_err(|_| format!("type check ('number') failed - got '{value}'"))?;
            check_range(schema, n)?;
        }
        "boolean" => {
            if !matches!(value.to_ascii_lowercase().as_str(), "0" | "1" | "true" | "false" | "yes" | "no" | "on" | "off") {
                return Err(format!("type check ('boolean') failed - got '{value}'"));
            }
        }
        _ => {}
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let names: Vec<&str> = values.iter().filter_map(Value::as_str).collect();
        if !names.contains(&value) {
            return Err(format!("value '{value}' does not have a value in the enumeration '{}'", names.join(", ")));
        }
    }
    if ty == "string" {
        let len = value.chars().count() as u64;
        if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
            if len > max {
                return Err(format!("value may only be {max} characters long"));
            }
        }
        if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
            if len < min {
                return Err(format!("value must be at least {min} characters long"));
            }
        }
        if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
            if let Some(re) = perl_pattern(pattern) {
                if !re.is_match(value) {
                    return Err("value does not match the regex pattern".into());
                }
            }
        }
    }
    match schema.get("format") {
        Some(Value::String(format)) => check_format(format, value).map_err(|e| format!("invalid format - {e}")),
        Some(Value::Object(sub)) => check_property_string(sub, value).map_err(|e| format!("invalid format - {e}")),
        _ => Ok(()),
    }
}

fn check_range(schema: &Value, n: f64) -> Result<(), String> {
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        if n < min {
            return Err(format!("value must have a minimum value of {min}"));
        }
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        if n > max {
            return Err(format!("value must have a maximum value of {max}"));
        }
    }
    Ok(())
}

/// PVE's patterns are Perl regexes, anchored by JSONSchema.pm (`^(?:…)$`);
/// Perl's `(?^:` is `(?:` here. A pattern the regex crate cannot read is not checked.
fn perl_pattern(pattern: &str) -> Option<regex::Regex> {
    let cleaned = pattern.replace("(?^:", "(?:").replace("(?^i:", "(?i:");
    regex::Regex::new(&format!("^(?:{cleaned})$")).ok()
}

/// Named formats: the ones rigger's requests use are checked as PVE does;
/// others are accepted (their checks live in Perl code the schema does not carry).
fn check_format(format: &str, value: &str) -> Result<(), String> {
    match format {
        "pve-node" => validation::pve_node(value),
        "pve-storage-id" => validation::pve_storage_id(value),
        "dns-name" => validation::dns_name(value),
        "pve-tag-list" => validation::tag_list(value),
        "mac-addr" => validation::mac(value),
        "pve-vmid" => Ok(()),
        "ipv4" => value.parse::<std::net::Ipv4Addr>().map(|_| ()).map_err(|_| format!("value does not look like a valid IPv4 address: '{value}'")),
        "CIDRv4" => validation::cidr_v4(value).map(|_| ()),
        "urlencoded" => percent_encoding::percent_decode_str(value).decode_utf8().map(|_| ()).map_err(|_| "invalid urlencoded string".to_string()),
        "pve-qm-ipconfig" => validation::ipconfig(value),
        _ => Ok(()),
    }
}

/// A property string (`k=v,k2=v2`, a bare first value for the `default_key`)
/// against the sub-schema the definitions give as the format.
fn check_property_string(sub: &Map<String, Value>, value: &str) -> Result<(), String> {
    let default_key = sub.iter().find(|(_, s)| s.get("default_key").is_some_and(truthy)).map(|(k, _)| k.as_str());
    let pairs = validation::property_string(value, default_key)?;
    let mut errors = Vec::new();
    for (key, schema) in sub {
        if !optional(schema) && !pairs.iter().any(|(k, _)| k == key) && schema.get("alias").is_none() {
            errors.push(format!("{key}: property is missing and it is not optional"));
        }
    }
    for (key, val) in &pairs {
        match sub.get(key) {
            Some(schema) => {
                if let Err(e) = check_value(schema, val) {
                    errors.push(format!("{key}: {e}"));
                }
            }
            None => errors.push(format!("{key}: property is not defined in schema and the schema does not allow additional properties")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!("format error\n{}", errors.join("\n")))
    }
}

/// A successful answer against the method's `returns` schema: the type, and
/// for objects (or arrays of objects) every key the schema names when it
/// names any. Returns what does not fit.
pub fn check_answer(returns: &Value, data: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    check_answer_at("data", returns, data, &mut problems);
    problems
}

fn check_answer_at(at: &str, schema: &Value, data: &Value, problems: &mut Vec<String>) {
    if data.is_null() {
        return;
    }
    let ty = schema.get("type").and_then(Value::as_str);
    let fits = match ty {
        Some("object") => data.is_object(),
        Some("array") => data.is_array(),
        Some("string") => data.is_string(),
        // Perl scalars carry no type: JSON::XS writes a number that was last
        // used as a string as a string (`/cluster/nextid` answers `"100"` on
        // a real node), so clients must take both, and so does this check.
        Some("integer") => data.is_i64() || data.is_u64() || data.as_str().is_some_and(|s| s.parse::<i64>().is_ok()),
        Some("number") => data.is_number() || data.as_str().is_some_and(|s| s.parse::<f64>().is_ok()),
        Some("boolean") => data.is_boolean() || data.as_u64().is_some_and(|n| n <= 1),
        Some("null") => data.is_null(),
        _ => true,
    };
    if !fits {
        problems.push(format!("{at}: {data} is not of type {}", ty.unwrap_or("?")));
        return;
    }
    if let (Some(items), Some(array)) = (schema.get("items"), data.as_array()) {
        for (i, item) in array.iter().enumerate() {
            check_answer_at(&format!("{at}[{i}]"), items, item, problems);
        }
    }
    if let (Some(props), Some(object)) = (schema.get("properties").and_then(Value::as_object), data.as_object()) {
        let open = schema.get("additionalProperties").is_none_or(truthy);
        for (key, value) in object {
            match schema_for(props, key) {
                Some(sub) => check_answer_at(&format!("{at}.{key}"), sub, value, problems),
                None if open => {}
                None => problems.push(format!("{at}.{key}: not in the returns schema")),
            }
        }
        for (key, sub) in props {
            if !key.ends_with("[n]") && !optional(sub) && !object.contains_key(key) {
                problems.push(format!("{at}.{key}: missing (not optional in the returns schema)"));
            }
        }
    }
}

/// Loaded once per process and path.
pub fn shared(path: &Path) -> Result<Arc<ApiSchema>> {
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<BTreeMap<PathBuf, Arc<ApiSchema>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(schema) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(path) {
        return Ok(Arc::clone(schema));
    }
    let schema = Arc::new(ApiSchema::load(path)?);
    cache.lock().unwrap_or_else(|p| p.into_inner()).insert(path.to_path_buf(), Arc::clone(&schema));
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tiny() -> ApiSchema {
        ApiSchema::parse(
            r#"const apiSchema = [{"path":"/nodes","children":[{"path":"/nodes/{node}","children":[
                {"path":"/nodes/{node}/lxc","info":{"GET":{"parameters":{"additionalProperties":0,"properties":{
                    "node":{"type":"string","format":"pve-node"}}},
                  "returns":{"type":"array","items":{"type":"object","properties":{"vmid":{"type":"integer"},"status":{"type":"string","optional":1,"enum":["running","stopped"]}}}}}}}]}]}];
            let x = 1;"#,
        )
        .unwrap()
    }

    #[test]
    fn routes_paths_and_checks_answers() {
        let schema = tiny();
        let (template, vars) = schema.route("/nodes/pve/lxc").unwrap();
        assert_eq!((template, vars["node"].as_str()), ("/nodes/{node}/lxc", "pve"));
        assert_eq!(schema.verify("GET", "/nodes/pve/lxc", &Params::new()), Verdict::Ok);
        assert_eq!(schema.verify("POST", "/nodes/pve/lxc", &Params::new()), Verdict::NoSuchMethod);
        assert_eq!(schema.verify("GET", "/nodes/pve/qemu", &Params::new()), Verdict::NoSuchPath);
        let Verdict::Refused(errors) = schema.verify("GET", "/nodes/bad_node!/lxc", &[("x".to_string(), "1".to_string())].into()) else {
            panic!()
        };
        assert!(errors["node"].starts_with("invalid format - "), "{errors:?}");
        assert!(errors["x"].contains("not defined in schema"));
        let returns = &schema.method("/nodes/{node}/lxc", "GET").unwrap().returns;
        assert!(check_answer(returns, &json!([{ "vmid": 100, "status": "running" }])).is_empty());
        assert!(check_answer(returns, &json!([{ "vmid": "100" }])).is_empty(), "Perl may send numbers as strings");
        assert_eq!(check_answer(returns, &json!([{ "vmid": "one" }])).len(), 1);
        assert_eq!(check_answer(returns, &json!({ "vmid": 1 })).len(), 1);
    }
}
