//! Yandex Cloud's published API definitions (the cloudapi protos) read into
//! tables: every RPC's REST binding from `option (google.api.http)`, every
//! message's fields with their proto3 JSON names and types, and the
//! validation rules — as `(required)`/`(length)`/`(pattern)`/`(value)`/`(size)`
//! options, or, where the published files carry them only as the generated
//! sentences ("This field is required.", "The length must be less than or
//! equal to 50.", "The value must match the regular expression: `…`."), from
//! those. With them, a request and an answer can be checked as JSON the way
//! the cloud's REST gateway reads it (lowerCamelCase names, 64-bit integers as
//! strings, enums by name, FieldMask as a comma-separated string).
//!
//! A small reader of the subset the files use (messages, enums, oneofs, maps,
//! services, field and RPC options): the files import google/api and
//! google/protobuf protos that are not published beside them, which full
//! protobuf parsers insist on resolving.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const ENV_PROTOS: &str = "RIGGER_YANDEX_PROTOS";

/// The protos beside the checkout (`../shared/reference/api/yandex-cloudapi` from the
/// repository root; this crate sits two folders down) or `RIGGER_YANDEX_PROTOS`.
pub fn default_root() -> Option<PathBuf> {
    if let Ok(path) = std::env::var(ENV_PROTOS) {
        return Some(PathBuf::from(path));
    }
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/reference/api/yandex-cloudapi");
    beside.is_dir().then_some(beside)
}

#[derive(Clone, Debug, Default)]
pub struct Rules {
    pub required: bool,
    pub max_len: Option<usize>,
    pub min_len: Option<usize>,
    pub pattern: Option<String>,
    pub min_value: Option<f64>,
    pub max_value: Option<f64>,
    /// A list of the values allowed (`2,4,…,36,40,44,…,80` for cores).
    pub allowed_values: Option<Vec<f64>>,
    pub max_items: Option<usize>,
    pub min_items: Option<usize>,
    pub map_key_pattern: Option<String>,
    pub map_value_pattern: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Field {
    pub name: String,
    pub json_name: String,
    /// Scalar name or the resolved full name of a message/enum.
    pub ty: String,
    pub repeated: bool,
    /// `map<string, V>`: the value type.
    pub map_value: Option<String>,
    pub oneof: Option<String>,
    pub rules: Rules,
}

#[derive(Clone, Debug, Default)]
pub struct Message {
    pub fields: Vec<Field>,
}

#[derive(Clone, Debug)]
pub struct Rpc {
    pub service: String,
    pub name: String,
    pub input: String,
    pub output: String,
    /// `GET`, `POST`, `PATCH`, `DELETE`
    pub http_method: String,
    /// `/compute/v1/instances/{instance_id}`
    pub path: String,
    /// `*`, or empty (the fields go in the query).
    pub body: String,
}

#[derive(Debug, Default)]
pub struct Definitions {
    pub messages: BTreeMap<String, Message>,
    pub enums: BTreeMap<String, Vec<String>>,
    pub rpcs: Vec<Rpc>,
}

/// `folder_id` → `folderId` (protoc's JSON name).
pub fn json_name(name: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

// ---- reading --------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Punct(char),
    /// The text of a `//` comment line.
    Comment(String),
}

fn tokenize(text: &str) -> Vec<Tok> {
    let mut toks = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && chars.get(i + 1) == Some(&'/') {
            let start = i + 2;
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            toks.push(Tok::Comment(chars[start..i].iter().collect::<String>().trim().to_string()));
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == '"' || c == '\'' {
            let mut s = String::new();
            i += 1;
            while i < chars.len() && chars[i] != c {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                    s.push(match chars[i] {
                        'n' => '\n',
                        other => other,
                    });
                } else {
                    s.push(chars[i]);
                }
                i += 1;
            }
            i += 1;
            // Adjacent string literals concatenate.
            if let Some(Tok::Str(prev)) = toks.last_mut() {
                prev.push_str(&s);
            } else {
                toks.push(Tok::Str(s));
            }
        } else if c.is_alphanumeric() || c == '_' || c == '.' || c == '-' || c == '+' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || matches!(chars[i], '_' | '.' | '-' | '+')) {
                i += 1;
            }
            toks.push(Tok::Word(chars[start..i].iter().collect()));
        } else {
            toks.push(Tok::Punct(c));
            i += 1;
        }
    }
    toks
}

struct Reader {
    toks: Vec<Tok>,
    at: usize,
    /// Comment lines since the last declaration.
    doc: Vec<String>,
}

impl Reader {
    fn skip_comments(&mut self) {
        while let Some(Tok::Comment(c)) = self.toks.get(self.at) {
            self.doc.push(c.clone());
            self.at += 1;
        }
    }
    fn peek(&mut self) -> Option<Tok> {
        self.skip_comments();
        self.toks.get(self.at).cloned()
    }
    fn next(&mut self) -> Result<Tok> {
        let tok = self.peek().ok_or_else(|| anyhow!("unexpected end of file"))?;
        self.at += 1;
        Ok(tok)
    }
    fn word(&mut self) -> Result<String> {
        match self.next()? {
            Tok::Word(w) => Ok(w),
            other => bail!("expected a name, found {other:?}"),
        }
    }
    fn punct(&mut self, c: char) -> Result<()> {
        match self.next()? {
            Tok::Punct(p) if p == c => Ok(()),
            other => bail!("expected '{c}', found {other:?}"),
        }
    }
    fn is_punct(&mut self, c: char) -> bool {
        self.peek() == Some(Tok::Punct(c))
    }
    /// Skip to the end of a statement (`;`) or a balanced `{…}` block.
    fn skip_statement(&mut self) -> Result<()> {
        let mut depth = 0;
        loop {
            match self.next()? {
                Tok::Punct('{') => depth += 1,
                Tok::Punct('}') => {
                    depth -= 1;
                    if depth == 0 {
                        if self.is_punct(';') {
                            self.at += 1;
                        }
                        return Ok(());
                    }
                }
                Tok::Punct(';') if depth == 0 => return Ok(()),
                _ => {}
            }
        }
    }
    fn take_doc(&mut self) -> Vec<String> {
        std::mem::take(&mut self.doc)
    }
}

/// What the file declares, with names still relative to their scopes.
struct RawField {
    scope: String,
    field: Field,
}

#[derive(Default)]
struct Raw {
    fields: BTreeMap<String, Vec<RawField>>,
    enums: BTreeMap<String, Vec<String>>,
    rpcs: Vec<(String, Rpc)>,
}

impl Definitions {
    /// Every `.proto` under `root`.
    pub fn load(root: &Path) -> Result<Definitions> {
        let mut files = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
                let path = entry?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "proto") {
                    files.push(path);
                }
            }
        }
        files.sort();
        let mut raw = Raw::default();
        for file in &files {
            let text = std::fs::read_to_string(file)?;
            read_file(&text, &mut raw).with_context(|| format!("reading {}", file.display()))?;
        }
        Ok(resolve(raw))
    }

    pub fn message(&self, name: &str) -> Option<&Message> {
        self.messages.get(name)
    }

    /// The RPC a REST request is bound to, and the path's variables.
    /// Like the REST gateway, the most specific template wins
    /// (`…/{instance_id}:serialPortOutput` before `…/{instance_id}`).
    pub fn route(&self, method: &str, path: &str) -> Option<(&Rpc, BTreeMap<String, String>)> {
        let literal = |t: &str| t.split('{').map(|p| p.split_once('}').map_or(p, |(_, rest)| rest).len()).sum::<usize>();
        self.rpcs
            .iter()
            .filter(|rpc| rpc.http_method.eq_ignore_ascii_case(method))
            .filter_map(|rpc| Some((rpc, match_template(&rpc.path, path)?)))
            .max_by_key(|(rpc, _)| literal(&rpc.path))
    }
}

/// `/compute/v1/instances/{instance_id}:serialPortOutput` against a path.
fn match_template(template: &str, path: &str) -> Option<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    let (mut t, mut p) = (template, path);
    loop {
        match t.find('{') {
            None => return (t == p).then_some(vars),
            Some(open) => {
                let (lit, rest) = t.split_at(open);
                p = p.strip_prefix(lit)?;
                let close = rest.find('}')?;
                let var = &rest[1..close];
                t = &rest[close + 1..];
                // The variable runs to the next literal character of the template (or the end).
                let end = match t.chars().next() {
                    Some(c) => p.find(c).unwrap_or(p.len()),
                    None => p.len(),
                };
                if end == 0 || p[..end].contains('/') {
                    return None;
                }
                vars.insert(var.split('=').next().unwrap_or(var).to_string(), p[..end].to_string());
                p = &p[end..];
            }
        }
    }
}

fn read_file(text: &str, raw: &mut Raw) -> Result<()> {
    let mut r = Reader { toks: tokenize(text), at: 0, doc: Vec::new() };
    let mut package = String::new();
    while let Some(tok) = r.peek() {
        match tok {
            Tok::Word(w) if w == "package" => {
                r.at += 1;
                package = r.word()?;
                r.punct(';')?;
            }
            Tok::Word(w) if w == "message" => read_message(&mut r, &package, raw)?,
            Tok::Word(w) if w == "enum" => read_enum(&mut r, &package, raw)?,
            Tok::Word(w) if w == "service" => read_service(&mut r, &package, raw)?,
            _ => r.skip_statement()?,
        }
        r.take_doc();
    }
    Ok(())
}

fn read_enum(r: &mut Reader, scope: &str, raw: &mut Raw) -> Result<()> {
    r.word()?;
    let name = format!("{scope}.{}", r.word()?);
    r.punct('{')?;
    let mut values = Vec::new();
    while !r.is_punct('}') {
        match r.peek() {
            Some(Tok::Word(w)) if w == "option" || w == "reserved" => r.skip_statement()?,
            _ => {
                values.push(r.word()?);
                r.skip_statement()?;
            }
        }
        r.take_doc();
    }
    r.punct('}')?;
    raw.enums.insert(name, values);
    Ok(())
}

fn read_message(r: &mut Reader, scope: &str, raw: &mut Raw) -> Result<()> {
    r.word()?;
    let name = format!("{scope}.{}", r.word()?);
    r.punct('{')?;
    raw.fields.entry(name.clone()).or_default();
    read_body(r, &name, None, raw)?;
    r.punct('}')?;
    Ok(())
}

fn read_body(r: &mut Reader, message: &str, oneof: Option<&str>, raw: &mut Raw) -> Result<()> {
    while !r.is_punct('}') {
        match r.peek() {
            Some(Tok::Word(w)) if w == "message" => read_message(r, message, raw)?,
            Some(Tok::Word(w)) if w == "enum" => read_enum(r, message, raw)?,
            Some(Tok::Word(w)) if w == "oneof" => {
                r.at += 1;
                let group = r.word()?;
                r.punct('{')?;
                read_body(r, message, Some(&group), raw)?;
                r.punct('}')?;
            }
            Some(Tok::Word(w)) if matches!(w.as_str(), "option" | "reserved" | "extensions") => r.skip_statement()?,
            Some(Tok::Punct(';')) => r.at += 1,
            _ => {
                let field = read_field(r, oneof)?;
                raw.fields.entry(message.to_string()).or_default().push(RawField { scope: message.to_string(), field });
            }
        }
        r.take_doc();
    }
    Ok(())
}

fn read_field(r: &mut Reader, oneof: Option<&str>) -> Result<Field> {
    let doc = r.take_doc();
    let mut word = r.word()?;
    let mut repeated = false;
    if word == "repeated" || word == "optional" {
        repeated = word == "repeated";
        word = r.word()?;
    }
    let (ty, map_value) = if word == "map" {
        r.punct('<')?;
        let _key = r.word()?;
        r.punct(',')?;
        let value = r.word()?;
        r.punct('>')?;
        ("map".to_string(), Some(value))
    } else {
        (word, None)
    };
    let name = r.word()?;
    r.punct('=')?;
    r.word()?;
    let mut rules = rules_from_doc(&doc);
    if r.is_punct('[') {
        r.at += 1;
        read_field_options(r, &mut rules)?;
    }
    r.punct(';')?;
    Ok(Field { json_name: json_name(&name), name, ty, repeated, map_value, oneof: oneof.map(str::to_string), rules })
}

/// `[(required) = true, (length) = "<=50", (pattern) = "…", (value) = "0-100", (size) = "<=32", …]`
fn read_field_options(r: &mut Reader, rules: &mut Rules) -> Result<()> {
    loop {
        let mut key = String::new();
        loop {
            match r.next()? {
                Tok::Punct('=') => break,
                Tok::Word(w) => key.push_str(&w),
                Tok::Punct(c) => key.push(c),
                other => bail!("field option: unexpected {other:?}"),
            }
        }
        let value = match r.next()? {
            Tok::Word(w) | Tok::Str(w) => w,
            Tok::Punct('{') => {
                r.at -= 1;
                r.skip_statement()?;
                r.at -= 1;
                String::new()
            }
            other => bail!("field option value: unexpected {other:?}"),
        };
        let key = key.trim_start_matches('(').trim_end_matches(')').rsplit('.').next().unwrap_or("").trim_end_matches(')').to_string();
        match key.as_str() {
            "required" => rules.required = value == "true",
            "length" => (rules.min_len, rules.max_len) = range(&value).map(|(a, b)| (a.map(|v| v as usize), b.map(|v| v as usize))).unwrap_or((None, None)),
            "pattern" => rules.pattern = Some(value),
            "value" => match value_list(&value) {
                Some(list) => rules.allowed_values = Some(list),
                None => (rules.min_value, rules.max_value) = range(&value).unwrap_or((None, None)),
            },
            "size" => (rules.min_items, rules.max_items) = range(&value).map(|(a, b)| (a.map(|v| v as usize), b.map(|v| v as usize))).unwrap_or((None, None)),
            _ => {}
        }
        match r.next()? {
            Tok::Punct(',') => continue,
            Tok::Punct(']') => return Ok(()),
            other => bail!("field options: unexpected {other:?}"),
        }
    }
}

/// validation.proto's range forms: `<=63`, `>=1`, `1-63`, `0,1`.
fn range(text: &str) -> Option<(Option<f64>, Option<f64>)> {
    let t = text.trim();
    let num = |s: &str| s.trim().trim_end_matches('s').parse::<f64>().ok();
    if let Some(v) = t.strip_prefix("<=") {
        return Some((None, num(v)));
    }
    if let Some(v) = t.strip_prefix(">=") {
        return Some((num(v), None));
    }
    if let Some((a, b)) = t.split_once('-') {
        return Some((num(a), num(b)));
    }
    None
}

/// validation.proto's list form, `0,5,20,50,100`: the only values allowed.
fn value_list(text: &str) -> Option<Vec<f64>> {
    let t = text.trim().trim_end_matches('.');
    if !t.contains(',') {
        return None;
    }
    t.split(',').map(|v| v.trim().parse::<f64>().ok()).collect()
}

/// The generated sentences the published files carry instead of options.
fn rules_from_doc(doc: &[String]) -> Rules {
    let mut rules = Rules::default();
    let text = doc.join(" ");
    let number_after = |marker: &str| -> Option<f64> {
        let rest = &text[text.find(marker)? + marker.len()..];
        rest.trim_start().split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?.trim_end_matches('.').parse().ok()
    };
    let between = |marker: &str| -> Option<(f64, f64)> {
        let rest = &text[text.find(marker)? + marker.len()..];
        let mut words = rest.split_whitespace();
        let a = words.next()?.parse().ok()?;
        words.next().filter(|w| *w == "and")?;
        let b = words.next()?.trim_end_matches('.').parse().ok()?;
        Some((a, b))
    };
    let quoted_after = |marker: &str| -> Option<String> {
        let rest = &text[text.find(marker)? + marker.len()..];
        let start = rest.find('`')? + 1;
        let end = rest[start..].find('`')? + start;
        Some(rest[start..end].replace("\\\\", "\\"))
    };
    rules.required = text.contains("This field is required.");
    rules.max_len = number_after("The length must be less than or equal to").map(|v| v as usize);
    if let Some((a, b)) = between("The length must be between") {
        rules.min_len = Some(a as usize);
        rules.max_len = Some(b as usize);
    }
    rules.max_value = number_after("The value must be less than or equal to");
    rules.min_value = number_after("The value must be greater than or equal to");
    if let Some((a, b)) = between("The value must be between") {
        rules.min_value = Some(a);
        rules.max_value = Some(b);
    }
    let marker = "The value must satisfy:";
    rules.allowed_values = text.find(marker).and_then(|i| value_list(text[i + marker.len()..].split_whitespace().next()?));
    rules.pattern = quoted_after("The value must match the regular expression");
    rules.max_items = number_after("The number of elements must be less than or equal to").map(|v| v as usize);
    rules.min_items = number_after("The number of elements must be greater than or equal to").map(|v| v as usize);
    rules.map_key_pattern = quoted_after("Each map key must match the regular expression");
    rules.map_value_pattern = quoted_after("Each map value must match the regular expression");
    rules
}

fn read_service(r: &mut Reader, package: &str, raw: &mut Raw) -> Result<()> {
    r.word()?;
    let service = r.word()?;
    r.punct('{')?;
    while !r.is_punct('}') {
        match r.peek() {
            Some(Tok::Word(w)) if w == "rpc" => {
                r.at += 1;
                let name = r.word()?;
                r.punct('(')?;
                let mut input = r.word()?;
                if input == "stream" {
                    input = r.word()?;
                }
                r.punct(')')?;
                r.word()?; // returns
                r.punct('(')?;
                let mut output = r.word()?;
                if output == "stream" {
                    output = r.word()?;
                }
                r.punct(')')?;
                let mut rpc = Rpc { service: service.clone(), name, input, output, http_method: String::new(), path: String::new(), body: String::new() };
                if r.is_punct('{') {
                    r.at += 1;
                    while !r.is_punct('}') {
                        read_rpc_option(r, &mut rpc)?;
                    }
                    r.punct('}')?;
                }
                if r.is_punct(';') {
                    r.at += 1;
                }
                if !rpc.path.is_empty() {
                    raw.rpcs.push((package.to_string(), rpc));
                }
            }
            _ => r.skip_statement()?,
        }
        r.take_doc();
    }
    r.punct('}')?;
    Ok(())
}

/// `option (google.api.http) = { post: "/…" body: "*" };` (others skipped).
fn read_rpc_option(r: &mut Reader, rpc: &mut Rpc) -> Result<()> {
    let start = r.at;
    r.word()?; // option
    let mut key = String::new();
    while !r.is_punct('=') {
        match r.next()? {
            Tok::Word(w) => key.push_str(&w),
            Tok::Punct(c) => key.push(c),
            _ => {}
        }
    }
    if key != "(google.api.http)" {
        r.at = start;
        return r.skip_statement();
    }
    r.punct('=')?;
    r.punct('{')?;
    let mut depth = 1;
    let mut pending: Option<String> = None;
    while depth > 0 {
        match r.next()? {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => depth -= 1,
            Tok::Word(w) if depth == 1 => pending = Some(w),
            Tok::Str(s) if depth == 1 => {
                match pending.take().as_deref() {
                    Some(m @ ("get" | "post" | "patch" | "put" | "delete")) => {
                        rpc.http_method = m.to_ascii_uppercase();
                        rpc.path = s;
                    }
                    Some("body") => rpc.body = s,
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if r.is_punct(';') {
        r.at += 1;
    }
    Ok(())
}

const SCALARS: &[&str] = &[
    "string", "bytes", "bool", "double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32", "fixed64", "sfixed32",
    "sfixed64",
];

fn resolve(raw: Raw) -> Definitions {
    let mut known: Vec<String> = raw.fields.keys().cloned().collect();
    known.extend(raw.enums.keys().cloned());
    let known: std::collections::BTreeSet<String> = known.into_iter().collect();
    let lookup = |scope: &str, ty: &str| -> String {
        if SCALARS.contains(&ty) || ty == "map" {
            return ty.to_string();
        }
        let mut prefix = scope.to_string();
        loop {
            let candidate = if prefix.is_empty() { ty.to_string() } else { format!("{prefix}.{ty}") };
            if known.contains(&candidate) {
                return candidate;
            }
            match prefix.rfind('.') {
                Some(i) => prefix.truncate(i),
                None if !prefix.is_empty() => prefix.clear(),
                None => return ty.to_string(),
            }
        }
    };
    let mut defs = Definitions { enums: raw.enums.clone(), ..Default::default() };
    for (name, fields) in &raw.fields {
        let fields = fields
            .iter()
            .map(|rf| {
                let mut f = rf.field.clone();
                f.ty = lookup(&rf.scope, &f.ty);
                f.map_value = f.map_value.as_deref().map(|v| lookup(&rf.scope, v));
                f
            })
            .collect();
        defs.messages.insert(name.clone(), Message { fields });
    }
    for (package, mut rpc) in raw.rpcs {
        rpc.input = lookup(&package, &rpc.input);
        rpc.output = lookup(&package, &rpc.output);
        defs.rpcs.push(rpc);
    }
    defs
}

/// Loaded once per process and folder.
pub fn shared(root: &Path) -> Result<std::sync::Arc<Definitions>> {
    use std::sync::{Arc, Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<BTreeMap<PathBuf, Arc<Definitions>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(d) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(root) {
        return Ok(Arc::clone(d));
    }
    let defs = Arc::new(Definitions::load(root)?);
    cache.lock().unwrap_or_else(|p| p.into_inner()).insert(root.to_path_buf(), Arc::clone(&defs));
    Ok(defs)
}

impl Definitions {
    /// A REST request as the RPC's input message sees it: the path variables,
    /// then the body (bound with `*`) or the query parameters. `None` when no
    /// RPC is bound to the path and method.
    pub fn verify_rest(&self, method: &str, path: &str, query: Option<&str>, body: &[u8]) -> Option<Vec<String>> {
        let (rpc, vars) = self.route(method, path)?;
        let input = self.message(&rpc.input)?;
        let mut request = serde_json::Map::new();
        for (var, value) in vars {
            request.insert(json_name(&var), Value::String(value));
        }
        if rpc.body == "*" {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(fields)) => request.extend(fields),
                _ if body.is_empty() => {}
                _ => return Some(vec!["the body is not a JSON object".into()]),
            }
        } else {
            for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
                let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
                let value = percent_encoding::percent_decode_str(&raw.replace('+', " ")).decode_utf8_lossy().into_owned();
                let ty = input.fields.iter().find(|f| f.json_name == key || f.name == key).map(|f| f.ty.as_str());
                let value = match ty {
                    Some("int32" | "uint32" | "double" | "float") => value.parse::<f64>().map(|n| serde_json::json!(n)).unwrap_or(Value::String(value)),
                    Some("bool") => Value::Bool(value == "true"),
                    _ => Value::String(value),
                };
                request.insert(key.to_string(), value);
            }
        }
        Some(self.check(&rpc.input, &Value::Object(request), Side::Gateway))
    }
}

// ---- checking JSON ----------------------------------------------------------------

/// Requests are held to the validation rules; answers only to names and types.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// What a client sends: canonical proto3 JSON (lowerCamelCase names,
    /// 64-bit integers as strings) meeting the validation rules.
    Request,
    /// What the REST gateway accepts: the rules, but also the proto field
    /// names and 64-bit integers as JSON numbers (protojson takes both).
    Gateway,
    Answer,
}

impl Definitions {
    /// Problems of a JSON object as message `message` (empty: it fits).
    pub fn check(&self, message: &str, value: &Value, side: Side) -> Vec<String> {
        let mut problems = Vec::new();
        self.check_message("", message, value, side, &mut problems);
        problems
    }

    fn check_message(&self, at: &str, message: &str, value: &Value, side: Side, problems: &mut Vec<String>) {
        if let Some(p) = well_known(message, value) {
            if !p.is_empty() {
                problems.push(format!("{at}: {p}"));
            }
            return;
        }
        let Some(def) = self.messages.get(message) else {
            problems.push(format!("{at}: unknown message {message}"));
            return;
        };
        let Some(object) = value.as_object() else {
            problems.push(format!("{at}: {value} is not a JSON object ({message})"));
            return;
        };
        for (key, v) in object {
            let here = if at.is_empty() { key.clone() } else { format!("{at}.{key}") };
            match def.fields.iter().find(|f| f.json_name == *key) {
                Some(field) => self.check_field(&here, field, v, side, problems),
                None if def.fields.iter().any(|f| f.name == *key) => match side {
                    Side::Gateway => {
                        let field = def.fields.iter().find(|f| f.name == *key).cloned();
                        if let Some(field) = field {
                            self.check_field(&here, &field, v, side, problems);
                        }
                    }
                    _ => problems.push(format!("{here}: not the proto3 JSON name (lowerCamelCase) of {message}'s field")),
                },
                None => problems.push(format!("{here}: {message} has no such field")),
            }
        }
        if side != Side::Answer {
            for field in def.fields.iter().filter(|f| f.rules.required) {
                if object.get(&field.json_name).or_else(|| object.get(&field.name)).is_none_or(is_default) {
                    let here = if at.is_empty() { field.json_name.clone() } else { format!("{at}.{}", field.json_name) };
                    problems.push(format!("{here}: required by {message}"));
                }
            }
        }
    }

    fn check_field(&self, at: &str, field: &Field, value: &Value, side: Side, problems: &mut Vec<String>) {
        let rules = &field.rules;
        if let Some(map_value) = &field.map_value {
            let Some(object) = value.as_object() else {
                problems.push(format!("{at}: a map must be a JSON object"));
                return;
            };
            if side != Side::Answer {
                check_count(at, object.len(), rules, problems);
                for (k, v) in object {
                    if let Some(p) = rules.map_key_pattern.as_deref().filter(|p| !full_match(p, k)) {
                        problems.push(format!("{at}: key {k:?} does not match `{p}`"));
                    }
                    if let (Some(p), Some(s)) = (rules.map_value_pattern.as_deref(), v.as_str()) {
                        if !full_match(p, s) {
                            problems.push(format!("{at}.{k}: {s:?} does not match `{p}`"));
                        }
                    }
                }
            }
            for (k, v) in object {
                self.check_single(&format!("{at}.{k}"), map_value, v, &Rules::default(), side, problems);
            }
            return;
        }
        if field.repeated {
            let Some(items) = value.as_array() else {
                problems.push(format!("{at}: a repeated field must be a JSON array"));
                return;
            };
            if side != Side::Answer {
                check_count(at, items.len(), rules, problems);
            }
            for (i, item) in items.iter().enumerate() {
                self.check_single(&format!("{at}[{i}]"), &field.ty, item, rules, side, problems);
            }
            return;
        }
        self.check_single(at, &field.ty, value, rules, side, problems);
    }

    fn check_single(&self, at: &str, ty: &str, value: &Value, rules: &Rules, side: Side, problems: &mut Vec<String>) {
        if value.is_null() {
            return;
        }
        let request = side != Side::Answer;
        match ty {
            "string" | "bytes" => match value.as_str() {
                None => problems.push(format!("{at}: {value} is not a string")),
                Some(s) if request => {
                    let len = s.chars().count();
                    if rules.max_len.is_some_and(|m| len > m) || rules.min_len.is_some_and(|m| len < m) {
                        problems.push(format!("{at}: length {len} outside {:?}..{:?}", rules.min_len, rules.max_len));
                    }
                    if let Some(p) = rules.pattern.as_deref().filter(|p| !full_match(p, s)) {
                        problems.push(format!("{at}: {s:?} does not match `{p}`"));
                    }
                }
                Some(_) => {}
            },
            "int64" | "uint64" | "sint64" | "fixed64" | "sfixed64" => match (value.as_str().map(|s| s.parse::<f64>()), value.as_f64()) {
                (Some(Ok(n)), _) => check_value_range(at, n, rules, request, problems),
                (None, Some(n)) if side == Side::Gateway => check_value_range(at, n, rules, request, problems),
                _ => problems.push(format!("{at}: {value} — 64-bit integers travel as JSON strings in proto3 JSON")),
            },
            "int32" | "uint32" | "sint32" | "fixed32" | "sfixed32" | "double" | "float" => match value.as_f64() {
                Some(n) => check_value_range(at, n, rules, request, problems),
                None => problems.push(format!("{at}: {value} is not a number")),
            },
            "bool" => {
                if !value.is_boolean() {
                    problems.push(format!("{at}: {value} is not a boolean"));
                }
            }
            _ if self.enums.contains_key(ty) => match value.as_str() {
                Some(name) if self.enums[ty].iter().any(|v| v == name) => {}
                _ => problems.push(format!("{at}: {value} is not a value name of enum {ty}")),
            },
            message => self.check_message(at, message, value, side, problems),
        }
    }
}

fn check_count(at: &str, n: usize, rules: &Rules, problems: &mut Vec<String>) {
    if rules.max_items.is_some_and(|m| n > m) || rules.min_items.is_some_and(|m| n < m) {
        problems.push(format!("{at}: {n} elements outside {:?}..{:?}", rules.min_items, rules.max_items));
    }
}

fn check_value_range(at: &str, n: f64, rules: &Rules, request: bool, problems: &mut Vec<String>) {
    if request && (rules.max_value.is_some_and(|m| n > m) || rules.min_value.is_some_and(|m| n < m)) {
        problems.push(format!("{at}: {n} outside {:?}..{:?}", rules.min_value, rules.max_value));
    }
    if let Some(list) = rules.allowed_values.as_ref().filter(|l| request && !l.contains(&n)) {
        let list: Vec<String> = list.iter().map(f64::to_string).collect();
        problems.push(format!("{at}: {n} is not one of {}", list.join(",")));
    }
}

fn is_default(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::Array(a) => a.is_empty(),
        Value::Object(_) => false,
    }
}

fn full_match(pattern: &str, text: &str) -> bool {
    match regex::Regex::new(&format!("^(?:{pattern})$")) {
        Ok(re) => re.is_match(text),
        // A pattern the regex crate cannot read is not held against anyone.
        Err(_) => true,
    }
}

/// google.protobuf types the published files use without defining them:
/// `Some("")` fits, `Some(problem)`, `None` = not a well-known type.
fn well_known(message: &str, value: &Value) -> Option<String> {
    let fits = match message {
        "google.protobuf.Timestamp" | "google.protobuf.Duration" | "google.protobuf.FieldMask" | "google.protobuf.StringValue" => value.is_string(),
        "google.protobuf.Int64Value" | "google.protobuf.UInt64Value" => value.as_str().is_some_and(|s| s.parse::<f64>().is_ok()),
        "google.protobuf.Int32Value" | "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => value.is_number(),
        "google.protobuf.BoolValue" => value.is_boolean(),
        "google.protobuf.Struct" | "google.protobuf.Value" | "google.protobuf.ListValue" | "google.protobuf.Empty" => true,
        // Any: checked by the caller through its `@type`.
        "google.protobuf.Any" => value.get("@type").is_some_and(Value::is_string),
        "google.rpc.Status" => value.get("code").is_none_or(Value::is_number) && value.get("message").is_none_or(Value::is_string),
        _ => return None,
    };
    Some(if fits { String::new() } else { format!("{value} does not fit {message}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_messages_rules_and_bindings() {
        let mut raw = Raw::default();
        read_file(
            r#"syntax = "proto3";
            package yandex.cloud.demo.v1;
            service ThingService {
              // Creates a thing.
              rpc Create(CreateThingRequest) returns (operation.Operation) {
                option (api.operation) = { metadata: "M" response: "Thing" };
                option (google.api.http) = { post: "/demo/v1/things" body: "*" };
              };
              rpc Get(GetThingRequest) returns (Thing) { option (google.api.http) = { get: "/demo/v1/things/{thing_id}:details" }; }
            }
            message CreateThingRequest {
              // ID of the folder.
              // The length must be less than or equal to 50.
              // This field is required.
              string folder_id = 1;
              // The value must match the regular expression: `|[a-z]([-a-z0-9]{0,61}[a-z0-9])?`.
              string name = 2;
              int64 size = 3 [(value) = "1-10"];
              map<string, string> labels = 4 [(size) = "<=2"];
              Kind kind = 5;
              enum Kind { KIND_UNSPECIFIED = 0; BIG = 1; }
              oneof spec { Inner inner = 6; }
              message Inner { repeated string tags = 1; }
            }
            message GetThingRequest { string thing_id = 1 [(required) = true]; }
            message Thing { string id = 1; }"#,
            &mut raw,
        )
        .unwrap();
        let defs = resolve(raw);
        let (rpc, vars) = defs.route("GET", "/demo/v1/things/t1:details").unwrap();
        assert_eq!((rpc.name.as_str(), vars["thing_id"].as_str()), ("Get", "t1"));
        assert!(defs.route("GET", "/demo/v1/things/t1").is_none());
        let (rpc, _) = defs.route("POST", "/demo/v1/things").unwrap();
        assert_eq!((rpc.input.as_str(), rpc.body.as_str()), ("yandex.cloud.demo.v1.CreateThingRequest", "*"));
        let request = "yandex.cloud.demo.v1.CreateThingRequest";
        let good = serde_json::json!({ "folderId": "b1g", "name": "web-1", "size": "3", "labels": { "a": "1" }, "kind": "BIG", "inner": { "tags": ["x"] } });
        assert_eq!(defs.check(request, &good, Side::Request), Vec::<String>::new());
        let bad = serde_json::json!({ "folder_id": "", "name": "Web", "size": 3, "labels": { "a": "1", "b": "2", "c": "3" }, "kind": "HUGE", "colour": "red" });
        let problems = defs.check(request, &bad, Side::Request);
        for expected in ["folder_id: not the proto3 JSON name", "name: \"Web\" does not match", "size: 3 — 64-bit integers", "labels: 3 elements", "kind: \"HUGE\"", "colour: ", "folderId: required"] {
            assert!(problems.iter().any(|p| p.contains(expected)), "no {expected:?} in {problems:#?}");
        }
    }

    /// "The value must satisfy: 2,4,…" and `(value) = "0,1"`: only those values.
    #[test]
    fn a_list_of_values_allows_only_those() {
        let mut raw = Raw::default();
        read_file(
            r#"syntax = "proto3";
            package yandex.cloud.demo.v1;
            message Spec {
              // The value must satisfy: 2,4,36,40,80.
              int64 cores = 1;
              int64 fraction = 2 [(value) = "0,5,100"];
              // The value must satisfy: 1m-10m.
              string period = 3;
            }"#,
            &mut raw,
        )
        .unwrap();
        let defs = resolve(raw);
        let spec = "yandex.cloud.demo.v1.Spec";
        assert_eq!(defs.check(spec, &serde_json::json!({ "cores": "40", "fraction": "5", "period": "5m" }), Side::Request), Vec::<String>::new());
        let problems = defs.check(spec, &serde_json::json!({ "cores": "38", "fraction": "50" }), Side::Request);
        assert!(problems.iter().any(|p| p.contains("cores: 38 is not one of 2,4,36,40,80")), "{problems:#?}");
        assert!(problems.iter().any(|p| p.contains("fraction: 50 is not one of 0,5,100")), "{problems:#?}");
    }
}
