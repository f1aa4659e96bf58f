//! Text in markup: the escaping JUnit XML and the HTML report share.

/// `text` as XML (or HTML) character data or an attribute value. Line breaks and tabs are
/// written as references so that an attribute keeps them (a parser turns raw ones into spaces
/// there); the other control characters have no place in XML 1.0, not even as references, and
/// become U+FFFD.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            '\t' => out.push_str("&#9;"),
            c if c.is_control() && c < '\u{80}' || matches!(c, '\u{FFFE}' | '\u{FFFF}') => {
                out.push('\u{FFFD}')
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn markup_quotes_and_control_characters_are_escaped() {
        assert_eq!(
            escape("a<b>&\"c\"'d'"),
            "a&lt;b&gt;&amp;&quot;c&quot;&apos;d&apos;"
        );
        assert_eq!(escape("x\ny\tz\r"), "x&#10;y&#9;z&#13;");
        // Not allowed in XML 1.0 even as references.
        assert_eq!(
            escape("\u{0}\u{1}\u{1b}[31m\u{7f}\u{FFFF}"),
            "\u{FFFD}\u{FFFD}\u{FFFD}[31m\u{FFFD}\u{FFFD}"
        );
        assert_eq!(escape("µs ±5 %"), "µs ±5 %");
    }
}
