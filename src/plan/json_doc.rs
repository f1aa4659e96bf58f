//! JSON plans (the older Python executor's `data_file.json` shape) parsed strictly into the
//! spanned tree of [`super::source`].

use std::borrow::Cow;

use jsonc_parser::ast;

use super::source::{Entry, Kind, Node, SyntaxError};

pub fn parse(text: &str) -> Result<Node<'_>, SyntaxError> {
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

fn json_value<'a>(value: ast::Value<'a>) -> Result<Node<'a>, SyntaxError> {
    let (span, kind) = match value {
        ast::Value::StringLit(s) => (s.range, Kind::String(s.value)),
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
                    let (key, key_span) = match prop.name {
                        ast::ObjectPropName::String(s) => (s.value, s.range),
                        ast::ObjectPropName::Word(w) => (Cow::Borrowed(w.value), w.range),
                    };
                    Ok(Entry {
                        key,
                        key_span: key_span.start..key_span.end,
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
    use crate::plan::source::Format;

    fn parse(text: &str, format: Format) -> Result<Node<'_>, SyntaxError> {
        match format {
            Format::Toml => crate::plan::toml_doc::parse(text),
            Format::Json => super::parse(text),
        }
    }

    fn kinds(node: &Node<'_>) -> Vec<(String, &'static str)> {
        match &node.kind {
            Kind::Table(entries) => entries
                .iter()
                .map(|e| (e.key.to_string(), e.value.kind.describe()))
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
    fn syntax_errors_carry_a_span() {
        let err = parse("a = \n", Format::Toml).unwrap_err();
        assert!(err.span.start <= 4, "{err:?}");
        let err = parse("{\"a\": 1,}", Format::Json).unwrap_err();
        assert_eq!(err.span.start, 7, "{err:?}");
    }
}
