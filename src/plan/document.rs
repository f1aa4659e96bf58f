//! Reading a plan file: its bytes, bounded in size, as text; a saved plan told apart; the
//! format by the extension.

use std::path::Path;

use super::diag::{PlanErrors, Sink};
use super::source::Format;

/// A plan larger than this is a mistake (a device, a log), not a fleet: a plan of 10,000
/// tests is about 1.3 MiB.
pub const MAX_PLAN_BYTES: u64 = 64 << 20;

/// A saved plan (`plan -out`) is JSON with a `format_version` near its start.
fn looks_saved(text: &str) -> bool {
    text.trim_start().starts_with('{')
        && text.contains("\"format_version\"")
        && serde_json::from_str::<serde_json::Value>(text)
            .is_ok_and(|v| v.get("format_version").is_some())
}

pub fn read(path: &Path) -> Result<String, PlanErrors> {
    let text = String::from_utf8(read_bytes(path)?).map_err(|e| {
        single(
            path,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    if looks_saved(&text) {
        return Err(single(
            path,
            "a saved plan (written by `rallyctl plan -out`), not a plan file: `rallyctl apply` takes it as it is".into(),
        ));
    }
    Ok(text)
}

/// A plan file's bytes, at most [`MAX_PLAN_BYTES`], without a byte-order mark.
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, PlanErrors> {
    use std::io::Read as _;
    let cannot = |e: std::io::Error| single(path, format!("cannot read: {e}"));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut text = Vec::new();
    // Read at most one byte past the limit, so that `/dev/zero` is refused, not read forever.
    file.take(MAX_PLAN_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(cannot)?;
    if text.len() as u64 > MAX_PLAN_BYTES {
        return Err(single(
            path,
            format!("larger than {} MiB: not a plan file", MAX_PLAN_BYTES >> 20),
        ));
    }
    // A byte-order mark (editors on Windows write one) is no part of the plan.
    if text.starts_with(b"\xEF\xBB\xBF") {
        text.drain(..3);
    }
    Ok(text)
}

fn single(path: &Path, message: String) -> PlanErrors {
    let mut sink = Sink::new(path, "");
    sink.error(&(0..0), "", message);
    PlanErrors {
        file: path.to_owned(),
        diagnostics: sink.diagnostics,
    }
}

/// The format follows the extension: `.json` is JSON, anything else TOML.
pub fn format_of(path: &Path) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("json") => Format::Json,
        _ => Format::Toml,
    }
}
