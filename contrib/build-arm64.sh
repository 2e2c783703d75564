#!/bin/sh
# Builds tbot's Debian package for arm64 (aarch64) with Debian bookworm's own
# Rust toolchain and cross compiler, then lintian-checks it:
#
#     contrib/build-arm64.sh      # as root, on Debian bookworm (amd64)
#
# writes target/debian/tbot_<version>-1_arm64.deb. It changes the machine:
# adds the arm64 architecture to dpkg and installs rustc-web, cargo-web,
# gcc-aarch64-linux-gnu, libc6-dev:arm64, libacl1-dev:arm64 (libacl.so to
# link the readers' POSIX ACLs against), libstd-rust-web-dev:arm64 and
# lintian. rustc-web and cargo-web put rustc and cargo in /usr/bin: on a
# machine that builds with rustup, run this in a throwaway container
# instead, for example (from the source tree):
#
#     systemd-nspawn -D BOOKWORM_TREE --ephemeral --bind="$PWD":/src \
#         --bind-ro=/etc/apt/sources.list.d -- /src/contrib/build-arm64.sh
#
# The package cannot be run here: qemu-user hangs on threaded programs.
set -eu
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
export DEBIAN_FRONTEND=noninteractive

dpkg --add-architecture arm64
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
	rustc-web cargo-web gcc-aarch64-linux-gnu libc6-dev:arm64 \
	libacl1-dev:arm64 libstd-rust-web-dev:arm64 lintian ca-certificates

# Debian's toolchain, by path: never a rustup one earlier in PATH.
export CARGO=/usr/bin/cargo RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# Its own target directory: artefacts of another rustc are not mixed in.
export CARGO_TARGET_DIR="$PWD/target/debian-arm64"
echo "toolchain: $($RUSTC --version), $($CARGO --version)"

if ! command -v cargo-deb >/dev/null 2>&1; then
	$CARGO install --locked --root "$CARGO_TARGET_DIR/tools" cargo-deb
	PATH="$CARGO_TARGET_DIR/tools/bin:$PATH"
fi

mkdir -p target/debian
$CARGO deb --target "$TARGET" --output target/debian/
deb=$(ls -t target/debian/tbot_*_arm64.deb | head -n 1)
dpkg-deb --info "$deb" | sed -n '/Package:/,/Description:/p'
file_type=$(dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/tbot | head -c 20 | od -An -tx1 | tr -d ' \n')
# ELF header: 64-bit (02), little-endian (01); e_machine 0xb7 is AArch64.
case "$file_type" in
7f454c46020101*b700*) echo "usr/bin/tbot: ELF 64-bit aarch64" ;;
*) echo "usr/bin/tbot is not an aarch64 ELF: $file_type" >&2; exit 1 ;;
esac
lintian --pedantic --fail-on error,warning "$deb"
echo "lintian: no error, no warning for $deb"
