//! The Debian package under test: built once per test binary with cargo-deb
//! (`cargo deb`, installed by tests/run-all.sh), into a directory of its own
//! so that parallel test binaries do not overwrite each other's .deb.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The crate root (where Cargo.toml is).
pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The package as `cargo deb` makes it (revision 1), and the same build
/// packaged as revision 2 (an upgrade for the end-to-end test).
pub struct Debs {
    pub dir: PathBuf,
    pub v1: PathBuf,
    pub v2: PathBuf,
}

/// Builds the packages on first call (a release build when it is out of
/// date, then packaging only); panics with cargo-deb's output on failure.
pub fn debs() -> &'static Debs {
    static DEBS: OnceLock<Debs> = OnceLock::new();
    DEBS.get_or_init(build)
}

fn build() -> Debs {
    let dir = Path::new(ROOT)
        .join("target")
        .join("debian-test")
        .join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Old runs' directories: a PID that is gone is not coming back.
    if let Ok(rd) = std::fs::read_dir(dir.parent().unwrap()) {
        for e in rd.flatten() {
            let gone = e
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
            if gone {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    cargo_deb(&["--output", dir.to_str().unwrap()]);
    let v1 = only_deb(&dir);
    let up = dir.join("upgrade");
    std::fs::create_dir_all(&up).unwrap();
    cargo_deb(&[
        "--no-build",
        "--deb-revision",
        "2",
        "--output",
        up.to_str().unwrap(),
    ]);
    let v2 = only_deb(&up);
    Debs { dir, v1, v2 }
}

fn cargo_deb(args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .arg("deb")
        .args(args)
        .current_dir(ROOT)
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "cargo deb {args:?} failed (cargo-deb is installed by tests/run-all.sh: \
         cargo install --locked cargo-deb):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn only_deb(dir: &Path) -> PathBuf {
    let debs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "one .deb in {}: {debs:?}", dir.display());
    debs[0].clone()
}

/// Runs `cmd` and returns (success, stdout + stderr).
pub fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (tests/run-all.sh installs it)"));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Whether this process runs as root (the container test needs it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
