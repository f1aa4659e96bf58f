//! Test addresses: `suite.test`, the key that ties a plan's test to its state record, its
//! instance tags and its results directory.
//!
//! Names may hold almost anything (users name tests after what they measure, quotes and all), so
//! an address renders a name bare only when it is a plain word and quoted, JSON-style, otherwise:
//! `ingest.geonames-4g`, `ingest."a b"`. Parsing accepts the same form, so any address rallyctl
//! prints can be pasted back into `--target`.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// The longest name accepted; EC2 tag values allow 256 characters and `Name` holds two names.
pub const MAX_NAME_LEN: usize = 100;

/// The names are shared, not owned: an address is copied into every map and report about its
/// test (artifacts, changes, the estimate), and a suite's tests share its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    suite: Arc<str>,
    test: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a name cannot be empty")]
    Empty,
    #[error("a name cannot contain '.', which separates suite and test in an address")]
    Dot,
    #[error("a test's name cannot start with '.'")]
    LeadingDot,
    #[error("a name is at most {MAX_NAME_LEN} characters")]
    TooLong,
    /// Control characters and bidirectional overrides make a name read differently from what
    /// it is, in a terminal, a log or the EC2 console.
    #[error("a name cannot contain the control character {0:?}")]
    Control(char),
}

/// Characters that reorder the text around them (bidirectional embeddings, overrides, isolates).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}')
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not an address (expected SUITE.TEST, quoting a name with \"...\" when it is not a plain word): {reason}"
)]
pub struct AddressParseError {
    input: String,
    reason: String,
}

/// Checks that a suite or test name can form an address.
pub fn check_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        Err(NameError::Empty)
    } else if name.contains('.') {
        Err(NameError::Dot)
    } else if name.chars().count() > MAX_NAME_LEN {
        Err(NameError::TooLong)
    } else if let Some(c) = name.chars().find(|&c| c.is_control() || is_bidi_control(c)) {
        Err(NameError::Control(c))
    } else {
        Ok(())
    }
}

/// Checks the test part of an address: a name, or the name of a matrix's test, which holds its
/// values (`index-m5.large-8.14.0`). The suite comes first in an address and holds no '.', so
/// the first '.' ends it and a test's own dots are unambiguous; a leading one would make
/// `.` or `..` of its results directory.
pub fn check_test_name(name: &str) -> Result<(), NameError> {
    match name.strip_prefix('.') {
        Some(_) => Err(NameError::LeadingDot),
        // Dots aside, the rules are a name's: checked with the dots taken out.
        // Most names hold none: copying each of a large plan's names was a cost of loading it.
        None if !name.contains('.') => check_name(name),
        None => check_name(&name.replace('.', "-")),
    }
}

fn is_plain(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Plain for the test part of an address: a plain word, dots allowed. No name written before
/// matrices holds a dot, so every existing address and results directory reads as it did.
fn is_plain_test(name: &str) -> bool {
    name.chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// A file-system-safe form of a name: itself when plain, else its plain characters and a short
/// hash of the whole name, so two names that differ only in special characters stay apart.
pub fn slug(name: &str) -> String {
    if is_plain(name) {
        return name.to_owned();
    }
    let kept: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let digest = Sha256::digest(name.as_bytes());
    format!("{kept}-{}", &hex::encode(digest)[..8])
}

fn fmt_name(name: &str, plain: bool, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    if plain {
        f.write_str(name)
    } else {
        // serde_json's string escaping is exactly the quoting that `FromStr` undoes.
        f.write_str(&serde_json::to_string(name).map_err(|_| fmt::Error)?)
    }
}

impl Address {
    pub fn new(suite: impl Into<Arc<str>>, test: impl Into<Arc<str>>) -> Result<Self, NameError> {
        let (suite, test) = (suite.into(), test.into());
        check_name(&suite)?;
        check_test_name(&test)?;
        Ok(Address { suite, test })
    }

    pub fn suite(&self) -> &str {
        &self.suite
    }

    pub fn test(&self) -> &str {
        &self.test
    }

    /// Relative path `suite/test` with both parts slugged, for results and remote directories.
    pub fn path(&self) -> std::path::PathBuf {
        let test = if is_plain_test(&self.test) {
            self.test.to_string()
        } else {
            slug(&self.test)
        };
        [slug(&self.suite), test].iter().collect()
    }

    /// Whether this address, read as `--target` or `--replace` names it, selects the test at
    /// `other` whose plan test groups it under `groups` (the test a variant belongs to, the
    /// test whose matrix made it): the name of a test selects all of its variants and
    /// combinations.
    pub fn selects<'g>(&self, other: &Address, groups: impl IntoIterator<Item = &'g str>) -> bool {
        self == other || (self.suite == other.suite && groups.into_iter().any(|g| g == &*self.test))
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_name(&self.suite, is_plain(&self.suite), f)?;
        f.write_str(".")?;
        fmt_name(&self.test, is_plain_test(&self.test), f)
    }
}

/// Reads one name from the front of `s`: a plain word, or a JSON string. Returns it and the rest.
fn take_name(s: &str, dots: bool) -> Result<(String, &str), String> {
    if s.starts_with('"') {
        let mut stream = serde_json::Deserializer::from_str(s).into_iter::<String>();
        match stream.next() {
            Some(Ok(name)) => Ok((name, &s[stream.byte_offset()..])),
            _ => Err("unterminated or malformed quoted name".into()),
        }
    } else {
        let end = s
            .find(|c: char| {
                !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || dots && c == '.')
            })
            .unwrap_or(s.len());
        Ok((s[..end].to_owned(), &s[end..]))
    }
}

impl FromStr for Address {
    type Err = AddressParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| AddressParseError {
            input: input.to_owned(),
            reason,
        };
        let (suite, rest) = take_name(input, false).map_err(err)?;
        let rest = rest
            .strip_prefix('.')
            .ok_or_else(|| err("missing '.' between suite and test".into()))?;
        let (test, rest) = take_name(rest, true).map_err(err)?;
        if !rest.is_empty() {
            return Err(err(format!("unexpected `{rest}` after the test name")));
        }
        Address::new(suite, test).map_err(|e| err(e.to_string()))
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn plain_names_render_bare() {
        let a = Address::new("ingest", "geonames-4g").unwrap();
        assert_eq!(a.to_string(), "ingest.geonames-4g");
        assert_eq!(a.path(), std::path::Path::new("ingest/geonames-4g"));
    }

    #[test]
    fn odd_names_render_quoted_and_parse_back() {
        let a = Address::new("s", "a \"b\" $(rm -rf /); `x` é").unwrap();
        let shown = a.to_string();
        assert_eq!(shown, r#"s."a \"b\" $(rm -rf /); `x` é""#);
        assert_eq!(shown.parse::<Address>().unwrap(), a);
        assert!(
            !a.path()
                .to_string_lossy()
                .contains(['"', '$', '`', ';', ' '])
        );
    }

    /// A matrix's combination holds its values' dots in the test part: printed bare, read
    /// back as printed, its results directory named as it is; a suite still has none.
    #[test]
    fn a_combinations_dots_need_no_quoting() {
        let a = Address::new("ingest", "index-m5.large-8.14.0").unwrap();
        assert_eq!(a.to_string(), "ingest.index-m5.large-8.14.0");
        assert_eq!(
            "ingest.index-m5.large-8.14.0".parse::<Address>().unwrap(),
            a
        );
        assert_eq!(
            a.path(),
            std::path::Path::new("ingest/index-m5.large-8.14.0")
        );
        assert_eq!(Address::new("s", ".."), Err(NameError::LeadingDot));
        assert_eq!(Address::new("a.b", "t"), Err(NameError::Dot));
        let odd = Address::new("s", "x.y z").unwrap();
        assert_eq!(odd.to_string().parse::<Address>().unwrap(), odd);
        assert!(!odd.path().to_string_lossy().contains(' '));
        let test: Address = "ingest.index".parse().unwrap();
        assert!(test.selects(&a, ["index"]));
        assert!(!test.selects(&a, ["other"]));
        assert!(
            !"search.index"
                .parse::<Address>()
                .unwrap()
                .selects(&a, ["index"])
        );
    }

    #[test]
    fn control_characters_and_bidi_overrides_are_no_part_of_a_name() {
        for name in ["a\nb", "nul\0", "esc\u{1b}[31m", "rtl\u{202e}gnp", "tab\t"] {
            assert!(
                matches!(check_name(name), Err(NameError::Control(_))),
                "{name:?}"
            );
        }
        check_name("é ü 漢字 -_").unwrap();
    }

    #[test]
    fn bad_addresses_are_refused_with_a_reason() {
        for (input, reason) in [
            ("nodot", "missing '.'"),
            ("a.b c", "unexpected ` c`"),
            ("a..b", "cannot start with '.'"),
            (".b", "cannot be empty"),
            ("a.\"open", "unterminated"),
        ] {
            let err = input.parse::<Address>().unwrap_err().to_string();
            assert!(err.contains(reason), "{input}: {err}");
        }
    }

    #[test]
    fn slugs_of_names_differing_in_special_characters_differ() {
        assert_ne!(slug("a b"), slug("a;b"));
        assert_eq!(slug("plain_name-1"), "plain_name-1");
    }

    /// Any name `check_name` accepts: no '.', no control or bidi-control character.
    const NAME: &str = "[^.\\p{Cc}\u{200e}\u{200f}\u{202a}-\u{202e}\u{2066}-\u{2069}]{1,20}";

    proptest! {
        #[test]
        fn display_and_parse_round_trip(suite in NAME, test in NAME) {
            let a = Address::new(suite, test).unwrap();
            prop_assert_eq!(a.to_string().parse::<Address>().unwrap(), a);
        }
    }
}
