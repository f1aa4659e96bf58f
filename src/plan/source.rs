//! One spanned syntax tree for both plan formats, so validation is written once and every
//! diagnostic can point at a line and column whether the plan came as TOML or JSON. The
//! parsers that build it are `toml_doc` and `json_doc`; this module only defines it.

use std::borrow::Cow;
use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

/// A value of the plan file; strings borrow from the file's text where they can.
#[derive(Debug, Clone)]
pub struct Node<'a> {
    pub span: Range<usize>,
    pub kind: Kind<'a>,
}

#[derive(Debug, Clone)]
pub enum Kind<'a> {
    Table(Vec<Entry<'a>>),
    Array(Vec<Node<'a>>),
    String(Cow<'a, str>),
    Integer(i64),
    Float(f64),
    Bool(bool),
    /// TOML datetimes and JSON nulls: valid syntax that no plan key accepts.
    Other(&'static str),
}

#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub key: Cow<'a, str>,
    pub key_span: Range<usize>,
    pub value: Node<'a>,
}

#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub span: Range<usize>,
    pub message: String,
}

impl Kind<'_> {
    /// What a user would call this kind of value, for "expected X, found Y".
    pub fn describe(&self) -> &'static str {
        match self {
            Kind::Table(_) => "a table",
            Kind::Array(_) => "an array",
            Kind::String(_) => "a string",
            Kind::Integer(_) => "an integer",
            Kind::Float(_) => "a float",
            Kind::Bool(_) => "a boolean",
            Kind::Other(what) => what,
        }
    }
}
