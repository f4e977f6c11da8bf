//! Plan errors: every one names file:line:col, what is wrong and what to do.
//! They are collected, not thrown, so a user sees all of them at once.

use super::yaml::{Node, Pos};
use std::fmt;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Diagnostic {
    pub pos: Pos,
    /// What is wrong — what to do.
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct PlanErrors {
    pub file: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for PlanErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: {}", self.file.display(), d.pos.line, d.pos.col, d.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for PlanErrors {}

#[derive(Default)]
pub struct Diags {
    pub list: Vec<Diagnostic>,
}

impl Diags {
    pub fn error(&mut self, pos: Pos, message: impl Into<String>) {
        self.list.push(Diagnostic { pos, message: message.into() });
    }
    pub fn at(&mut self, node: &Node, message: impl Into<String>) {
        self.error(node.pos, message)
    }
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
    pub fn into_errors(mut self, file: PathBuf) -> PlanErrors {
        self.list.sort();
        self.list.dedup();
        PlanErrors { file, diagnostics: self.list }
    }
}

/// The closest allowed word, if one is close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, allowed: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    allowed
        .into_iter()
        .map(|a| (strsim::damerau_levenshtein(word, a), a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

/// ` — did you mean `x`?` or a list of what is allowed.
pub fn suggestion<'a>(word: &str, allowed: &[&'a str]) -> String {
    match did_you_mean(word, allowed.iter().copied()) {
        Some(s) => format!("did you mean `{s}`?"),
        None => format!("allowed: {}", allowed.join(", ")),
    }
}
