//! One spanned syntax tree for both plan formats, so validation is written once and every
//! diagnostic can point at a line and column whether the plan came as TOML or JSON.

use std::ops::Range;

use jsonc_parser::ast;
use toml::de::{DeTable, DeValue};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Json,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub span: Range<usize>,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Table(Vec<Entry>),
    Array(Vec<Node>),
    String(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
    /// TOML datetimes and JSON nulls: valid syntax that no plan key accepts.
    Other(&'static str),
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub key_span: Range<usize>,
    pub value: Node,
}

#[derive(Debug, Clone)]
pub struct SyntaxError {
    pub span: Range<usize>,
    pub message: String,
}

impl Kind {
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

pub fn parse(text: &str, format: Format) -> Result<Node, SyntaxError> {
    match format {
        Format::Toml => parse_toml(text),
        Format::Json => parse_json(text),
    }
}

fn parse_toml(text: &str) -> Result<Node, SyntaxError> {
    let table = DeTable::parse(text).map_err(|e| SyntaxError {
        span: e.span().unwrap_or(0..0),
        message: e.message().trim().to_owned(),
    })?;
    let span = table.span();
    toml_table(table.into_inner(), span)
}

fn toml_table(table: DeTable<'_>, span: Range<usize>) -> Result<Node, SyntaxError> {
    let entries = table
        .into_iter()
        .map(|(key, value)| {
            let key_span = key.span();
            let value_span = value.span();
            Ok(Entry {
                key: key.into_inner().into_owned(),
                key_span,
                value: toml_value(value.into_inner(), value_span)?,
            })
        })
        .collect::<Result<_, SyntaxError>>()?;
    Ok(Node {
        span,
        kind: Kind::Table(entries),
    })
}

fn toml_value(value: DeValue<'_>, span: Range<usize>) -> Result<Node, SyntaxError> {
    let kind =
        match value {
            DeValue::String(s) => Kind::String(s.into_owned()),
            DeValue::Integer(i) => Kind::Integer(toml_integer(i.as_str(), i.radix()).ok_or_else(
                || SyntaxError {
                    span: span.clone(),
                    message: "integer out of range".into(),
                },
            )?),
            DeValue::Float(f) => Kind::Float(f.as_str().replace('_', "").parse().map_err(
                |_| SyntaxError {
                    span: span.clone(),
                    message: "malformed float".into(),
                },
            )?),
            DeValue::Boolean(b) => Kind::Bool(b),
            DeValue::Datetime(_) => Kind::Other("a datetime"),
            DeValue::Array(items) => Kind::Array(
                items
                    .into_iter()
                    .map(|item| {
                        let item_span = item.span();
                        toml_value(item.into_inner(), item_span)
                    })
                    .collect::<Result<_, _>>()?,
            ),
            DeValue::Table(table) => return toml_table(table, span),
        };
    Ok(Node { span, kind })
}

fn toml_integer(digits: &str, radix: u32) -> Option<i64> {
    let cleaned = digits.replace('_', "");
    let (negative, body) = match cleaned.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, cleaned.trim_start_matches('+')),
    };
    let body = if radix == 10 { body } else { body.get(2..)? };
    let magnitude = i64::from_str_radix(body, radix).ok()?;
    Some(if negative { -magnitude } else { magnitude })
}

fn parse_json(text: &str) -> Result<Node, SyntaxError> {
    let strict = jsonc_parser::ParseOptions {
        allow_comments: false,
        allow_loose_object_property_names: false,
        allow_trailing_commas: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        ..Default::default()
    };
    let parsed = jsonc_parser::parse_to_ast(text, &Default::default(), &strict).map_err(|e| {
        let range = e.range();
        SyntaxError {
            span: range.start..range.end,
            message: e.kind().to_string(),
        }
    })?;
    match parsed.value {
        Some(value) => json_value(value),
        None => Err(SyntaxError {
            span: 0..0,
            message: "the file holds no JSON value".into(),
        }),
    }
}

fn json_value(value: ast::Value<'_>) -> Result<Node, SyntaxError> {
    let (span, kind) = match value {
        ast::Value::StringLit(s) => (s.range, Kind::String(s.value.into_owned())),
        ast::Value::NumberLit(n) => {
            let kind = match n.value.parse::<i64>() {
                Ok(i) => Kind::Integer(i),
                Err(_) => Kind::Float(n.value.parse().map_err(|_| SyntaxError {
                    span: n.range.start..n.range.end,
                    message: "number out of range".into(),
                })?),
            };
            (n.range, kind)
        }
        ast::Value::BooleanLit(b) => (b.range, Kind::Bool(b.value)),
        ast::Value::NullKeyword(n) => (n.range, Kind::Other("null")),
        ast::Value::Array(a) => (
            a.range,
            Kind::Array(
                a.elements
                    .into_iter()
                    .map(json_value)
                    .collect::<Result<_, _>>()?,
            ),
        ),
        ast::Value::Object(o) => {
            let entries = o
                .properties
                .into_iter()
                .map(|prop| {
                    let key_span = match &prop.name {
                        ast::ObjectPropName::String(s) => s.range.start..s.range.end,
                        ast::ObjectPropName::Word(w) => w.range.start..w.range.end,
                    };
                    Ok(Entry {
                        key: prop.name.into_string(),
                        key_span,
                        value: json_value(prop.value)?,
                    })
                })
                .collect::<Result<_, SyntaxError>>()?;
            (o.range, Kind::Table(entries))
        }
    };
    Ok(Node {
        span: span.start..span.end,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(node: &Node) -> Vec<(String, &'static str)> {
        match &node.kind {
            Kind::Table(entries) => entries
                .iter()
                .map(|e| (e.key.clone(), e.value.kind.describe()))
                .collect(),
            _ => panic!("not a table"),
        }
    }

    #[test]
    fn toml_and_json_give_the_same_tree_in_source_order() {
        let toml = parse(
            "b = 1\na = \"x\"\nc = [1.5]\nd = { e = true }\n",
            Format::Toml,
        )
        .unwrap();
        let json = parse(
            r#"{"b": 1, "a": "x", "c": [1.5], "d": {"e": true}}"#,
            Format::Json,
        )
        .unwrap();
        assert_eq!(kinds(&toml), kinds(&json));
        assert_eq!(kinds(&toml)[0], ("b".into(), "an integer"));
    }

    #[test]
    fn toml_integers_in_every_radix() {
        assert_eq!(toml_integer("1_000", 10), Some(1000));
        assert_eq!(toml_integer("-42", 10), Some(-42));
        assert_eq!(toml_integer("0xff", 16), Some(255));
        assert_eq!(toml_integer("0b101", 2), Some(5));
    }

    #[test]
    fn syntax_errors_carry_a_span() {
        let err = parse("a = \n", Format::Toml).unwrap_err();
        assert!(err.span.start <= 4, "{err:?}");
        let err = parse("{\"a\": 1,}", Format::Json).unwrap_err();
        assert_eq!(err.span.start, 7, "{err:?}");
    }
}
