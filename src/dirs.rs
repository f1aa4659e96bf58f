//! The user's directories rallyctl keeps caches in.

use std::path::PathBuf;

/// `$XDG_CACHE_HOME`, else `$HOME/.cache`; none when neither is set.
pub fn user_cache() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|d| !d.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
}
