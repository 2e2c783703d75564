//! Build script: what `tbot --version` and the `tbot_info` metric say about
//! the build, as environment variables for `env!` (read by src/build_info.rs):
//!
//! - `TBOT_GIT_REVISION`: `git rev-parse HEAD`, or `unknown` when the source
//!   is not a git checkout (a tarball, CI without `.git`) or git is missing;
//! - `TBOT_GIT_TREE`: `clean`, `dirty` (tracked files differ from HEAD, as
//!   `git status --porcelain --untracked-files=no` says) or `unknown`;
//! - `TBOT_RUSTC`: the compiler's `rustc -V` line (`rustc 1.85.0 (...)`);
//! - `TBOT_TARGET`: the target triple cargo builds for.
//!
//! Nothing here can fail the build: a question git or rustc cannot answer
//! is answered `unknown`.

use std::path::Path;
use std::process::Command;

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn git(dir: &str, args: &[&str]) -> Option<String> {
    output(Command::new("git").arg("-C").arg(dir).args(args))
}

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let revision = git(&dir, &["rev-parse", "HEAD"]).filter(|r| !r.is_empty());
    let tree = match &revision {
        None => "unknown",
        Some(_) => match git(&dir, &["status", "--porcelain", "--untracked-files=no"]) {
            Some(s) if s.is_empty() => "clean",
            Some(_) => "dirty",
            None => "unknown",
        },
    };
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc = output(Command::new(rustc).arg("-V")).unwrap_or_else(|| "unknown".into());
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!(
        "cargo:rustc-env=TBOT_GIT_REVISION={}",
        revision.as_deref().unwrap_or("unknown")
    );
    println!("cargo:rustc-env=TBOT_GIT_TREE={tree}");
    println!("cargo:rustc-env=TBOT_RUSTC={rustc}");
    println!("cargo:rustc-env=TBOT_TARGET={target}");

    // Run again when HEAD moves or a tracked source changes (which may make
    // the tree dirty or clean again).
    for p in ["src", "Cargo.toml", "Cargo.lock", "man", "contrib"] {
        println!("cargo:rerun-if-changed={p}");
    }
    if let Some(git_dir) = git(&dir, &["rev-parse", "--absolute-git-dir"]) {
        let common = git(&dir, &["rev-parse", "--git-common-dir"]).unwrap_or(git_dir.clone());
        let common = Path::new(&dir).join(common);
        for p in [
            Path::new(&git_dir).join("HEAD"),
            Path::new(&git_dir).join("index"),
            common.join("refs"),
            common.join("packed-refs"),
        ] {
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
}
