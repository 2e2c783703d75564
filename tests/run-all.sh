#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs the real peers the
# tests use when they are missing, then runs every test (unit, integration,
# man page lint, promtool, go tool pprof, OpenSSH, the Debian package with
# lintian and on a booted Debian in systemd-nspawn, which needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
# http_conformance: curl follows a 301; wrk checks announced closes.
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v go >/dev/null 2>&1 || need+=(golang-go)
command -v mandoc >/dev/null 2>&1 || need+=(mandoc)
# libfaketime steps the wall clock of a running tbot (tests/credential_expiry.rs).
ls /usr/lib/*/faketime/libfaketime.so.1 /usr/lib/faketime/libfaketime.so.1 >/dev/null 2>&1 || need+=(faketime)
# setpriv plants a symlink as another user (tests/credential_paths.rs); ssh-keygen checks certificates.
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
# The linker and C runtime that rustc links with (and the cc crate uses).
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
# libacl.so to link against (the exacl crate: readers' POSIX ACLs); getfacl
# and setfacl for the tests that check them (tests/readers.rs).
ls /usr/lib/*/libacl.so >/dev/null 2>&1 || need+=(libacl1-dev)
command -v getfacl >/dev/null 2>&1 || need+=(acl)
# The Debian package tests (tests/package.rs): lintian, nm/readelf, and a
# booted Debian in systemd-nspawn made by debootstrap (cached under target/).
command -v lintian >/dev/null 2>&1 || need+=(lintian)
command -v nm >/dev/null 2>&1 || need+=(binutils)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v systemd-nspawn >/dev/null 2>&1 || need+=(systemd-container)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# The shells whose completions `tbot completions` writes (tests/operator_cli.rs).
command -v zsh >/dev/null 2>&1 || need+=(zsh)
command -v fish >/dev/null 2>&1 || need+=(fish)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

# Rust itself is not taken from apt: Debian 12's rustc (1.63) is older than
# the crate's rust-version. Say what to do rather than fail mid-build.
want=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml)
have=$(rustc --version 2>/dev/null | cut -d' ' -f2 || true)
if [ -z "$have" ] || [ "$(printf '%s\n%s\n' "$want" "$have" | sort -V | head -n1)" != "$want" ]; then
  echo "tbot needs Rust $want or newer (found: ${have:-none})." >&2
  echo "Install it with rustup (https://rustup.rs), then run $0 again." >&2
  exit 1
fi

# cargo-deb builds the .deb (crates.io, a few minutes the first time).
command -v cargo-deb >/dev/null 2>&1 || cargo install --locked cargo-deb

cargo build --all-targets
# The release build too: a test profiles it (symbols kept for pprof).
cargo build --release --bin tbot
cargo test --all-targets -- --test-threads="${TEST_THREADS:-4}"
