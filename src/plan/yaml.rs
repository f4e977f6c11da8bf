//! A YAML document as a tree whose every node knows where it came from, so
//! every error can say file:line:col. Built from yaml-rust2's event parser.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Default for Pos {
    /// The start of the file: never 0:0, which no editor can jump to.
    fn default() -> Self {
        Pos { line: 1, col: 1 }
    }
}

impl Pos {
    fn from_marker(m: Marker) -> Pos {
        // yaml-rust2: lines are 1-based, columns 0-based.
        Pos { line: m.line().max(1), col: m.col() + 1 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// The text and whether it was quoted (a quoted `"2"` is a string, not a number).
    Scalar(String, bool),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub pos: Pos,
}

impl Node {
    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            Value::Null => "nothing",
            Value::Scalar(..) => "a single value",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
    pub fn as_map(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }
    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s, _) => Some(s),
            _ => None,
        }
    }
    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }
    /// Look a key up in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.as_map()?.iter().find(|(k, _)| k.as_scalar() == Some(key)).map(|(_, v)| v)
    }
}

#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

enum Frame {
    Seq(Pos, usize, Vec<Node>),
    Map(Pos, usize, Vec<(Node, Node)>, Option<Node>),
}

/// The most nodes a plan may have once its aliases are expanded. A real plan
/// has a few thousand; nested aliases ("billion laughs") would otherwise copy
/// a node exponentially often and exhaust memory before any check runs.
pub const MAX_NODES: usize = 100_000;

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Node>,
    /// Anchor id, its node, and how many nodes it holds.
    anchors: Vec<(usize, Node, usize)>,
    /// Nodes so far, aliases counted at their full size.
    nodes: usize,
    error: Option<SyntaxError>,
}

/// How many nodes `node` holds, itself included.
fn size(node: &Node) -> usize {
    1 + match &node.value {
        Value::Seq(items) => items.iter().map(size).sum(),
        Value::Map(entries) => entries.iter().map(|(k, v)| size(k) + size(v)).sum(),
        _ => 0,
    }
}

impl Builder {
    fn push_value(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.push((anchor, node.clone(), size(&node)));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq(_, _, items)) => items.push(node),
            Some(Frame::Map(_, _, entries, pending)) => match pending.take() {
                None => *pending = Some(node),
                Some(key) => {
                    let dup = key.as_scalar().and_then(|k| entries.iter().find(|(e, _)| e.as_scalar() == Some(k)));
                    if let (Some((first, _)), None) = (dup, &self.error) {
                        self.error = Some(SyntaxError {
                            pos: key.pos,
                            message: format!(
                                "duplicate key {:?} (first at line {}) — keep one of them",
                                key.as_scalar().unwrap_or_default(),
                                first.pos.line
                            ),
                        });
                    }
                    entries.push((key, node));
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = Pos::from_marker(mark);
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                self.nodes += 1;
                let quoted = !matches!(style, TScalarStyle::Plain);
                // A key with nothing after it (`cores:`) has an empty value whose
                // marker is the next token, often on the next line: the value
                // is where its key is.
                let pos = match self.stack.last() {
                    Some(Frame::Map(_, _, _, Some(key))) if !quoted && text.is_empty() => key.pos,
                    _ => pos,
                };
                let value = if !quoted && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL") {
                    Value::Null
                } else {
                    Value::Scalar(text, quoted)
                };
                self.push_value(Node { value, pos }, anchor);
            }
            Event::SequenceStart(anchor, _) => {
                self.nodes += 1;
                self.stack.push(Frame::Seq(pos, anchor, Vec::new()))
            }
            Event::MappingStart(anchor, _) => {
                self.nodes += 1;
                self.stack.push(Frame::Map(pos, anchor, Vec::new(), None))
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq(p, anchor, items)) = self.stack.pop() {
                    self.push_value(Node { value: Value::Seq(items), pos: p }, anchor);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(p, anchor, entries, _)) = self.stack.pop() {
                    // A block mapping's start marker lands after its first key: point at the key.
                    let pos = entries.first().map_or(p, |(k, _)| k.pos.min(p));
                    self.push_value(Node { value: Value::Map(entries), pos }, anchor);
                }
            }
            Event::Alias(id) => {
                let anchored = self.anchors.iter().rev().find(|(a, ..)| *a == id);
                let size = anchored.map_or(1, |(_, _, n)| *n);
                let node = if self.nodes + size > MAX_NODES {
                    // Copy nothing more: the first error is the one reported.
                    if self.error.is_none() {
                        self.error = Some(SyntaxError {
                            pos,
                            message: format!("this alias takes the plan past {MAX_NODES} values once aliases are expanded (aliases nested in aliases) — write the values out, or use fewer levels of aliases"),
                        });
                    }
                    None
                } else {
                    anchored.map(|(_, n, _)| Node { pos, ..n.clone() })
                };
                self.nodes += size;
                self.push_value(node.unwrap_or(Node { value: Value::Null, pos }), 0);
            }
            _ => {}
        }
    }
}

/// Parse one YAML document. An empty file is a `Null` root.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    // A byte-order mark some editors write is not part of the first key.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    let syntax = |e: yaml_rust2::ScanError| SyntaxError {
        pos: Pos::from_marker(*e.marker()),
        message: format!("YAML syntax error: {} — fix the YAML at this point", e.info()),
    };
    parser.load(&mut builder, false).map_err(syntax)?;
    if let Some(err) = builder.error {
        return Err(err);
    }
    // A plan is one document: what follows a second `---` would be ignored.
    if let (Event::DocumentStart, mark) = parser.next_token().map_err(syntax)? {
        return Err(SyntaxError {
            pos: Pos::from_marker(mark),
            message: "a second YAML document starts here, and a plan file holds one — remove this `---` and what follows, or merge it into the plan above".into(),
        });
    }
    Ok(builder.root.unwrap_or(Node { value: Value::Null, pos: Pos { line: 1, col: 1 } }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let n = parse("a: 1\nb:\n  c: x\n").unwrap();
        let c = n.get("b").unwrap().get("c").unwrap();
        assert_eq!(c.pos, Pos { line: 3, col: 6 });
        assert_eq!(c.as_scalar(), Some("x"));
    }

    #[test]
    fn an_empty_value_is_where_its_key_is() {
        let n = parse("a:\nb: 1\nc:\n  d:\ne: { f: }\ng:").unwrap();
        assert_eq!(n.get("a").unwrap().pos, Pos { line: 1, col: 1 });
        assert_eq!(n.get("c").unwrap().get("d").unwrap().pos, Pos { line: 4, col: 3 });
        assert_eq!(n.get("e").unwrap().get("f").unwrap().pos, Pos { line: 5, col: 6 });
        assert_eq!(n.get("g").unwrap().pos, Pos { line: 6, col: 1 }, "at the end of the file too");
        // A written `~` is a value of its own, at its place.
        assert_eq!(parse("a: ~\n").unwrap().get("a").unwrap().pos, Pos { line: 1, col: 4 });
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert_eq!(e.pos.line, 2);
        assert!(e.message.contains("duplicate key"));
    }

    #[test]
    fn a_second_document_is_an_error_at_its_start() {
        let e = parse("a: 1\n---\nb: 2\n").unwrap_err();
        assert_eq!((e.pos.line, e.pos.col), (2, 1), "{}", e.message);
        assert!(e.message.contains("second YAML document"));
        assert!(parse("---\na: 1\n...\n").is_ok(), "one explicit document is fine");
    }

    #[test]
    fn nested_aliases_stop_at_the_budget_not_at_memory() {
        let mut text = String::from("x0: &a0 [l,l,l,l,l,l,l,l,l]\n");
        for i in 1..12 {
            text.push_str(&format!("x{i}: &a{i} [{}]\n", vec![format!("*a{}", i - 1); 9].join(",")));
        }
        let e = parse(&text).unwrap_err();
        assert!(e.message.contains("aliases nested in aliases"), "{}", e.message);
        assert!(e.pos.line > 1);
        // A plain alias or two stays far below the budget.
        assert!(parse("x: &d {a: [1, 2, 3]}\ny: *d\nz: *d\n").is_ok());
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_key() {
        let n = parse("\u{feff}version: 1\n").unwrap();
        assert_eq!(n.get("version").unwrap().pos, Pos { line: 1, col: 10 });
    }

    #[test]
    fn aliases_resolve() {
        let n = parse("x: &d {a: 1}\ny: *d\n").unwrap();
        assert_eq!(n.get("y").unwrap().get("a").unwrap().as_scalar(), Some("1"));
    }
}
