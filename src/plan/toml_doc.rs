//! TOML to the spanned tree, built straight from `toml_parser`'s events.
//!
//! `toml`'s own spanned document (`DeTable`) keeps every token and event of the file in memory
//! before it builds its tables: for a nightly plan of 10,000 tests that was 40 MB and half the
//! time `rallyctl plan` had. Here the file is lexed and parsed a few thousand tokens at a time,
//! the events build the tree as they arrive, and strings without escapes stay borrowed from the
//! file's text. The rules are TOML's: a table is defined once (by a header, a dotted key or
//! inline), inline tables and static arrays are closed, headers may reach through arrays of
//! tables into their last element.

use std::borrow::Cow;
use std::ops::Range;

use toml_parser::decoder::{Encoding, ScalarKind};
use toml_parser::lexer::TokenKind;
use toml_parser::parser::{EventReceiver, RecursionGuard, ValidateWhitespace};
use toml_parser::{ErrorSink, Expected, ParseError, Raw, Source, Span};

use super::source::{Entry, Kind, Node, SyntaxError};

/// How many tokens are parsed at a time, at least.
const CHUNK_TOKENS: usize = 4096;

/// Arrays and inline tables nest at most this deep; the parser recurses per level, so the bound
/// keeps a hostile file from exhausting the stack.
const MAX_DEPTH: u32 = 80;

pub fn parse(text: &str) -> Result<Node<'_>, SyntaxError> {
    build(text, false)
}

/// The document's root table as far as its first table header: what a plan says before its
/// `[defaults]` and suites, read at little cost whatever the rest holds.
pub fn parse_head(text: &str) -> Result<Node<'_>, SyntaxError> {
    build(text, true)
}

fn build(text: &str, head_only: bool) -> Result<Node<'_>, SyntaxError> {
    let source = Source::new(text);
    let mut builder = Builder {
        source,
        root: Table::new(Origin::Root, 0..text.len()),
        current: Vec::new(),
        keys: Vec::new(),
        key_complete: false,
        frames: Vec::new(),
        header: None,
        error: None,
    };
    let mut errors: Option<ParseError> = None;
    {
        let mut whitespace = ValidateWhitespace::new(&mut builder, source);
        let mut guard = RecursionGuard::new(&mut whitespace, MAX_DEPTH);
        // The parser wants its tokens in a slice, and a whole plan's tokens are ten times its
        // size. A newline outside any array or inline table ends a complete expression, so the
        // document is parsed in pieces that end there, through one reused buffer.
        let mut lexer = source.lex();
        let mut tokens = Vec::with_capacity(CHUNK_TOKENS + 256);
        let mut depth = 0usize;
        let mut line_start = true;
        loop {
            let mut token = lexer.next();
            if let Some(t) = token
                && head_only
                && line_start
                && depth == 0
                && t.kind() == TokenKind::LeftSquareBracket
            {
                token = None;
            }
            if let Some(token) = token {
                line_start = match token.kind() {
                    TokenKind::Newline => true,
                    TokenKind::Whitespace => line_start,
                    _ => false,
                };
                match token.kind() {
                    TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => depth += 1,
                    TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                        depth = depth.saturating_sub(1);
                    }
                    _ => {}
                }
                let line_end = token.kind() == TokenKind::Newline;
                tokens.push(token);
                if !(line_end && depth == 0 && tokens.len() >= CHUNK_TOKENS) {
                    continue;
                }
            }
            toml_parser::parser::parse_document(&tokens, &mut guard, &mut errors);
            tokens.clear();
            if token.is_none() {
                break;
            }
        }
    }
    // The first problem in the file, whether the parser or a TOML rule found it.
    let parse_error = errors.map(syntax_error);
    match (parse_error, builder.error) {
        (Some(a), Some(b)) => Err(if b.span.start < a.span.start { b } else { a }),
        (Some(e), None) | (None, Some(e)) => Err(e),
        (None, None) => Ok(builder.root.into_node()),
    }
}

fn syntax_error(error: ParseError) -> SyntaxError {
    let mut message = error.description().to_owned();
    if let Some(expected) = error.expected() {
        message.push_str(", expected ");
        if expected.is_empty() {
            message.push_str("nothing");
        }
        for (i, e) in expected.iter().enumerate() {
            if i > 0 {
                message.push_str(", ");
            }
            match e {
                Expected::Literal("\n") => message.push_str("newline"),
                Expected::Literal(s) => message.push_str(&format!("`{}`", s.escape_debug())),
                Expected::Description(d) => message.push_str(d),
                _ => message.push_str("something else"),
            }
        }
    }
    let span = error
        .unexpected()
        .or(error.context())
        .map_or(0..0, |s| s.start()..s.end());
    SyntaxError { span, message }
}

fn range(span: Span) -> Range<usize> {
    span.start()..span.end()
}

/// How a table came to be, which decides what may still add to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Root,
    /// Named on the way to a header's table (`a` of `[a.b]`): a later `[a]` may still define it.
    Implicit,
    /// Defined by a `[header]` or `[[header]]`.
    Header,
    /// Defined by a dotted key (`a.b = 1` defines `a`).
    Dotted,
    /// `{ ... }`: complete as written.
    Inline,
}

struct Table<'a> {
    origin: Origin,
    span: Range<usize>,
    entries: Vec<TEntry<'a>>,
}

struct TEntry<'a> {
    key: Key<'a>,
    value: Value<'a>,
}

enum Value<'a> {
    Table(Table<'a>),
    /// `of_tables` for `[[header]]` arrays, which later headers may extend.
    Array {
        span: Range<usize>,
        items: Vec<Value<'a>>,
        of_tables: bool,
    },
    Leaf(Node<'a>),
}

#[derive(Clone)]
struct Key<'a> {
    name: Cow<'a, str>,
    span: Range<usize>,
}

impl<'a> Table<'a> {
    fn new(origin: Origin, span: Range<usize>) -> Table<'a> {
        Table {
            origin,
            span,
            entries: Vec::new(),
        }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.key.name == name)
    }

    /// The index of `key`'s entry, made an empty table of `origin` if there was none.
    fn position_or_table(&mut self, key: &Key<'a>, origin: Origin, span: &Range<usize>) -> usize {
        self.position(&key.name).unwrap_or_else(|| {
            self.entries.push(TEntry {
                key: key.clone(),
                value: Value::Table(Table::new(origin, span.clone())),
            });
            self.entries.len() - 1
        })
    }

    fn into_node(self) -> Node<'a> {
        Node {
            span: self.span,
            kind: Kind::Table(
                self.entries
                    .into_iter()
                    .map(|e| Entry {
                        key: e.key.name,
                        key_span: e.key.span,
                        value: e.value.into_node(),
                    })
                    .collect(),
            ),
        }
    }
}

impl<'a> Value<'a> {
    fn into_node(self) -> Node<'a> {
        match self {
            Value::Table(t) => t.into_node(),
            Value::Array { span, items, .. } => Node {
                span,
                kind: Kind::Array(items.into_iter().map(Value::into_node).collect()),
            },
            Value::Leaf(node) => node,
        }
    }

    fn span(&self) -> &Range<usize> {
        match self {
            Value::Table(t) => &t.span,
            Value::Array { span, .. } => span,
            Value::Leaf(node) => &node.span,
        }
    }
}

/// One step from a table to a table below it: an entry, and for arrays of tables the element.
#[derive(Clone, Copy)]
struct Step {
    entry: usize,
    element: Option<usize>,
}

/// An array or inline table still open, with the key it will be stored under.
enum Frame<'a> {
    Array {
        keys: Option<Vec<Key<'a>>>,
        start: usize,
        items: Vec<Value<'a>>,
    },
    Inline {
        keys: Option<Vec<Key<'a>>>,
        table: Table<'a>,
    },
}

struct Builder<'a> {
    source: Source<'a>,
    root: Table<'a>,
    /// Where the last header left key-values to go.
    current: Vec<Step>,
    /// The key being read, part by part; reused from one key-value to the next.
    keys: Vec<Key<'a>>,
    /// `keys` is complete (its `=` was read) and waits for its value.
    key_complete: bool,
    frames: Vec<Frame<'a>>,
    /// `Some(is_array, start)` between `[`/`[[` and the header's close.
    header: Option<(bool, usize)>,
    error: Option<SyntaxError>,
}

fn rule_error(span: &Range<usize>, message: String) -> SyntaxError {
    SyntaxError {
        span: span.clone(),
        message,
    }
}

fn dotted(keys: &[Key<'_>]) -> String {
    keys.iter()
        .map(|k| k.name.as_ref())
        .collect::<Vec<_>>()
        .join(".")
}

/// Walks `steps` down from `table`; the steps were made by [`open_header`] on this very tree.
fn table_at<'t, 'a>(mut table: &'t mut Table<'a>, steps: &[Step]) -> Option<&'t mut Table<'a>> {
    for step in steps {
        let value = &mut table.entries.get_mut(step.entry)?.value;
        table = match (value, step.element) {
            (Value::Table(t), None) => t,
            (Value::Array { items, .. }, Some(i)) => match items.get_mut(i)? {
                Value::Table(t) => t,
                _ => return None,
            },
            _ => return None,
        };
    }
    Some(table)
}

/// Resolves `[a.b.c]` or `[[a.b.c]]` from the root, creating what is missing; returns the steps
/// to the table that key-values now go into.
fn open_header<'a>(
    root: &mut Table<'a>,
    keys: &[Key<'a>],
    array: bool,
    span: Range<usize>,
) -> Result<Vec<Step>, SyntaxError> {
    let Some((last, parents)) = keys.split_last() else {
        return Err(rule_error(&span, "a table header needs a key".into()));
    };
    let mut steps = Vec::with_capacity(keys.len());
    let mut table = root;
    for (i, key) in parents.iter().enumerate() {
        let index = table.position_or_table(key, Origin::Implicit, &span);
        table = match &mut table.entries[index].value {
            Value::Table(t) if t.origin != Origin::Inline => {
                steps.push(Step {
                    entry: index,
                    element: None,
                });
                t
            }
            Value::Array {
                items,
                of_tables: true,
                ..
            } => {
                let element = items.len() - 1;
                steps.push(Step {
                    entry: index,
                    element: Some(element),
                });
                match &mut items[element] {
                    Value::Table(t) => t,
                    _ => unreachable!("arrays of tables hold tables"),
                }
            }
            _ => {
                return Err(rule_error(
                    &key.span,
                    format!(
                        "`{}` is a value that cannot be extended by a table header",
                        dotted(&keys[..=i])
                    ),
                ));
            }
        };
    }
    let index = table.position(&last.name);
    let defined = || {
        rule_error(
            &last.span,
            format!("table `{}` is defined more than once", dotted(keys)),
        )
    };
    let element = match (index, array) {
        (None, false) => {
            table.entries.push(TEntry {
                key: last.clone(),
                value: Value::Table(Table::new(Origin::Header, span)),
            });
            None
        }
        (None, true) => {
            table.entries.push(TEntry {
                key: last.clone(),
                value: Value::Array {
                    span: span.clone(),
                    items: vec![Value::Table(Table::new(Origin::Header, span))],
                    of_tables: true,
                },
            });
            Some(0)
        }
        (Some(i), false) => match &mut table.entries[i].value {
            Value::Table(t) if t.origin == Origin::Implicit => {
                t.origin = Origin::Header;
                t.span = span;
                None
            }
            _ => return Err(defined()),
        },
        (Some(i), true) => match &mut table.entries[i].value {
            Value::Array {
                items,
                of_tables: true,
                ..
            } => {
                items.push(Value::Table(Table::new(Origin::Header, span)));
                Some(items.len() - 1)
            }
            _ => {
                return Err(rule_error(
                    &last.span,
                    format!(
                        "`{}` is not an array of tables, so `[[{0}]]` cannot add to it",
                        dotted(keys)
                    ),
                ));
            }
        },
    };
    steps.push(Step {
        entry: index.unwrap_or(table.entries.len() - 1),
        element,
    });
    Ok(steps)
}

/// Stores `value` under the dotted key `keys` in `table`, defining the tables on the way.
fn insert<'a>(
    mut table: &mut Table<'a>,
    keys: &[Key<'a>],
    value: Value<'a>,
) -> Result<(), SyntaxError> {
    let Some((last, parents)) = keys.split_last() else {
        return Err(rule_error(value.span(), "a value needs a key".into()));
    };
    for (i, key) in parents.iter().enumerate() {
        let index = table.position_or_table(key, Origin::Dotted, &key.span);
        table = match &mut table.entries[index].value {
            Value::Table(t) if t.origin == Origin::Dotted => t,
            _ => {
                return Err(rule_error(
                    &key.span,
                    format!(
                        "`{}` is defined elsewhere and cannot be extended by a dotted key",
                        dotted(&keys[..=i])
                    ),
                ));
            }
        };
    }
    if table.position(&last.name).is_some() {
        return Err(rule_error(
            &last.span,
            format!("duplicate key `{}`", dotted(keys)),
        ));
    }
    table.entries.push(TEntry {
        key: last.clone(),
        value,
    });
    Ok(())
}

/// Places a finished value: into the innermost open array, or under its key into the
/// innermost inline table or the current header's table.
fn place<'a>(
    root: &mut Table<'a>,
    current: &[Step],
    frames: &mut [Frame<'a>],
    keys: Option<&[Key<'a>]>,
    value: Value<'a>,
) -> Result<(), SyntaxError> {
    let table = match frames.last_mut() {
        Some(Frame::Array { items, .. }) => {
            items.push(value);
            return Ok(());
        }
        Some(Frame::Inline { table, .. }) => Some(table),
        None => table_at(root, current),
    };
    match (table, keys) {
        (Some(table), Some(keys)) => insert(table, keys, value),
        (None, _) => Err(rule_error(
            value.span(),
            "no table to hold this value".into(),
        )),
        (_, None) => Err(rule_error(value.span(), "a value needs a key".into())),
    }
}

impl<'a> Builder<'a> {
    fn fail(&mut self, error: SyntaxError) {
        if self.error.is_none() {
            self.error = Some(error);
        }
    }

    fn raw(&self, span: Span, encoding: Option<Encoding>) -> Option<Raw<'a>> {
        let text = self.source.input().get(range(span))?;
        Some(Raw::new_unchecked(text, encoding, span))
    }

    /// The key waiting for the value that starts now, if any.
    fn take_key(&mut self) -> Option<Vec<Key<'a>>> {
        std::mem::take(&mut self.key_complete).then(|| std::mem::take(&mut self.keys))
    }

    /// Places a finished array or inline table under the key taken when it opened, and keeps
    /// that key's buffer for the next key.
    fn place_container(&mut self, keys: Option<Vec<Key<'a>>>, value: Value<'a>) {
        let result = place(
            &mut self.root,
            &self.current,
            &mut self.frames,
            keys.as_deref(),
            value,
        );
        if let Err(e) = result {
            self.fail(e);
        }
        if let Some(mut keys) = keys
            && self.keys.capacity() == 0
        {
            keys.clear();
            self.keys = keys;
        }
    }

    fn close_header(&mut self, span: Span) {
        let Some((array, start)) = self.header.take() else {
            return;
        };
        let opened = open_header(&mut self.root, &self.keys, array, start..span.end());
        self.keys.clear();
        match opened {
            Ok(steps) => self.current = steps,
            Err(e) => self.fail(e),
        }
    }
}

impl<'a> EventReceiver for Builder<'a> {
    fn std_table_open(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        self.keys.clear();
        self.header = Some((false, span.start()));
    }

    fn std_table_close(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        self.close_header(span);
    }

    fn array_table_open(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        self.keys.clear();
        self.header = Some((true, span.start()));
    }

    fn array_table_close(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        self.close_header(span);
    }

    fn inline_table_open(&mut self, span: Span, _error: &mut dyn ErrorSink) -> bool {
        let keys = self.take_key();
        self.frames.push(Frame::Inline {
            keys,
            table: Table::new(Origin::Inline, range(span)),
        });
        true
    }

    fn inline_table_close(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        if let Some(Frame::Inline { keys, mut table }) = self.frames.pop() {
            table.span.end = span.end();
            self.place_container(keys, Value::Table(table));
        }
    }

    fn array_open(&mut self, span: Span, _error: &mut dyn ErrorSink) -> bool {
        let keys = self.take_key();
        self.frames.push(Frame::Array {
            keys,
            start: span.start(),
            items: Vec::new(),
        });
        true
    }

    fn array_close(&mut self, span: Span, _error: &mut dyn ErrorSink) {
        if let Some(Frame::Array { keys, start, items }) = self.frames.pop() {
            let value = Value::Array {
                span: start..span.end(),
                items,
                of_tables: false,
            };
            self.place_container(keys, value);
        }
    }

    fn simple_key(&mut self, span: Span, encoding: Option<Encoding>, error: &mut dyn ErrorSink) {
        let Some(raw) = self.raw(span, encoding) else {
            return;
        };
        let mut name = Cow::Borrowed("");
        raw.decode_key(&mut name, error);
        self.keys.push(Key {
            name,
            span: range(span),
        });
    }

    fn key_val_sep(&mut self, _span: Span, _error: &mut dyn ErrorSink) {
        self.key_complete = true;
    }

    fn scalar(&mut self, span: Span, encoding: Option<Encoding>, error: &mut dyn ErrorSink) {
        let Some(raw) = self.raw(span, encoding) else {
            return;
        };
        let mut text = Cow::Borrowed("");
        let kind = match raw.decode_scalar(&mut text, error) {
            ScalarKind::String => Some(Kind::String(text)),
            ScalarKind::Boolean(b) => Some(Kind::Bool(b)),
            ScalarKind::DateTime => Some(Kind::Other("a datetime")),
            ScalarKind::Float => text.parse().ok().map(Kind::Float),
            ScalarKind::Integer(radix) => i64::from_str_radix(&text, radix.value())
                .ok()
                .map(Kind::Integer),
        };
        let span = range(span);
        let Some(kind) = kind else {
            return self.fail(rule_error(&span, "number out of range".into()));
        };
        let keys = std::mem::take(&mut self.key_complete).then_some(&self.keys[..]);
        let result = place(
            &mut self.root,
            &self.current,
            &mut self.frames,
            keys,
            Value::Leaf(Node { span, kind }),
        );
        if keys.is_some() {
            self.keys.clear();
        }
        if let Err(e) = result {
            self.fail(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(node: &Node<'_>) -> String {
        match &node.kind {
            Kind::Table(entries) => format!(
                "{{{}}}",
                entries
                    .iter()
                    .map(|e| format!("{}={}", e.key, shape(&e.value)))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Kind::Array(items) => format!(
                "[{}]",
                items.iter().map(shape).collect::<Vec<_>>().join(",")
            ),
            Kind::String(s) => format!("{s:?}"),
            Kind::Integer(i) => i.to_string(),
            Kind::Float(f) => format!("{f:?}"),
            Kind::Bool(b) => b.to_string(),
            Kind::Other(what) => what.to_string(),
        }
    }

    fn ok(text: &str) -> String {
        shape(&parse(text).unwrap_or_else(|e| panic!("{text:?}: {e:?}")))
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(node) => panic!("{text:?} parsed as {}", shape(&node)),
            Err(e) => e.message,
        }
    }

    #[test]
    fn headers_dotted_keys_inline_tables_and_arrays_of_tables() {
        assert_eq!(
            ok(
                "a = 1\nb.c = 'x'\n[t]\nd = [1, 2.5, true]\n[[s]]\nn = 1\n[[s.u]]\nm = { k = \"v\\n\" }\n[[s]]\nn = 2\n[s.x]\ny = 0x1f\n"
            ),
            r#"{a=1,b={c="x"},t={d=[1,2.5,true]},s=[{n=1,u=[{m={k="v\n"}}]},{n=2,x={y=31}}]}"#
        );
        // A header may define a table that an earlier header only implied.
        assert_eq!(ok("[a.b]\nx = 1\n[a]\ny = 2\n"), "{a={b={x=1},y=2}}");
        // Headers may reach into tables defined by dotted keys.
        assert_eq!(
            ok("[f]\napple.color = 'red'\n[f.apple.texture]\nsmooth = true\n"),
            r#"{f={apple={color="red",texture={smooth=true}}}}"#
        );
        assert_eq!(
            ok("d = 1979-05-27\nq = \"a\\u00e9\"\n"),
            r#"{d=a datetime,q="aé"}"#
        );
    }

    #[test]
    fn toml_rules_are_enforced() {
        for (text, expect) in [
            ("a = 1\na = 2\n", "duplicate key `a`"),
            ("[a]\n[a]\n", "table `a` is defined more than once"),
            ("a.b = 1\n[a]\n", "table `a` is defined more than once"),
            (
                "a = { b = 1 }\n[a.c]\n",
                "cannot be extended by a table header",
            ),
            (
                "a = { b = 1 }\na.c = 2\n",
                "cannot be extended by a dotted key",
            ),
            ("a = [1]\n[[a]]\n", "is not an array of tables"),
            (
                "[a.b]\n[a]\nb.c = 1\n",
                "cannot be extended by a dotted key",
            ),
            ("a = { b = 1, b = 2 }\n", "duplicate key `b`"),
            ("x = 99999999999999999999\n", "number out of range"),
        ] {
            assert!(err(text).contains(expect), "{text:?}: {}", err(text));
        }
    }

    /// A document far longer than one piece parses as if in one go: tables, arrays spanning
    /// lines across piece boundaries, and a mistake after many pieces.
    #[test]
    fn long_documents_are_parsed_in_pieces_alike() {
        let mut text = String::new();
        for i in 0..2000 {
            text.push_str(&format!(
                "[[t]]\nn = {i}\nl = [\n  {i},\n  \"x\",\n]\n# c\n"
            ));
        }
        let node = parse(&text).unwrap();
        let Kind::Table(entries) = &node.kind else {
            panic!()
        };
        let Kind::Array(items) = &entries[0].value.kind else {
            panic!()
        };
        assert_eq!(items.len(), 2000);
        assert_eq!(shape(&items[1999]), r#"{n=1999,l=[1999,"x"]}"#);
        text.push_str("z = 1\nz = 2\n");
        assert!(err(&text).contains("duplicate key `z`"));
        let at = text.len() - 6;
        assert_eq!(parse(&text).unwrap_err().span.start, at);
    }

    #[test]
    fn the_head_is_what_stands_before_the_first_table() {
        let text = "name = \"n\"\nl = [\n[1],\n]\n  [t]\nx = 1\n[[u]]\n";
        assert_eq!(shape(&parse_head(text).unwrap()), r#"{name="n",l=[[1]]}"#);
        assert_eq!(shape(&parse_head("[t]\nname = 1\n").unwrap()), "{}");
        // Only the head is read: a mistake further down does not show.
        assert!(parse_head("name = 1\n[t]\nx = \n").is_ok());
    }

    #[test]
    fn deep_nesting_is_refused_not_recursed_into() {
        let text = format!("a = {}1{}\n", "[".repeat(100_000), "]".repeat(100_000));
        assert!(err(&text).contains("max recursion depth"));
    }

    #[test]
    fn strings_without_escapes_borrow_from_the_text() {
        let node = parse("a = \"plain\"\nb = \"esc\\t\"\n").unwrap();
        let Kind::Table(entries) = node.kind else {
            panic!()
        };
        assert!(matches!(
            &entries[0].value.kind,
            Kind::String(Cow::Borrowed("plain"))
        ));
        assert!(matches!(&entries[1].value.kind, Kind::String(Cow::Owned(s)) if s == "esc\t"));
    }
}
