//! What this binary is: the crate's version and what the build script
//! (src/build.rs) found out about the build. Shown by `tbot --version`, in
//! the `tbot_info` metric's labels and the "tbot started" log line.

/// The crate's version (Cargo.toml).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit built (40 hex digits), or `unknown` outside a git checkout.
pub const REVISION: &str = env!("TBOT_GIT_REVISION");
/// `clean`, `dirty` (tracked files differed from `REVISION`) or `unknown`.
pub const TREE: &str = env!("TBOT_GIT_TREE");
/// The compiler, as `rustc -V` printed it.
pub const RUSTC: &str = env!("TBOT_RUSTC");
/// The target triple (`x86_64-unknown-linux-gnu`).
pub const TARGET: &str = env!("TBOT_TARGET");

/// The `--version` text: `tbot VERSION` on the first line (what scripts
/// parse), then one `key: value` line each for the revision, the tree, the
/// compiler and the target.
pub fn long_version() -> String {
    format!(
        "tbot {VERSION}\nrevision: {REVISION}\ntree: {TREE}\nrustc: {RUSTC}\ntarget: {TARGET}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_script_answered_every_question() {
        assert!(
            REVISION == "unknown"
                || (REVISION.len() == 40 && REVISION.chars().all(|c| c.is_ascii_hexdigit())),
            "{REVISION}"
        );
        assert!(["clean", "dirty", "unknown"].contains(&TREE), "{TREE}");
        assert!(RUSTC.starts_with("rustc ") || RUSTC == "unknown", "{RUSTC}");
        assert!(TARGET.contains('-'), "{TARGET}");
        assert!(long_version().starts_with(&format!("tbot {VERSION}\n")));
    }
}
