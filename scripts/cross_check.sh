#!/usr/bin/env bash
# Proves the tree still builds for the other platforms:
#   - the macOS controller: `cargo check --target aarch64-apple-darwin`
#     (checked, not linked: there is no Apple linker here);
#   - the Windows worker: a real `rayvault-worker.exe` linked with mingw-w64.
#
# Both only work while every dependency is pure Rust; a crate that compiles C
# fails here first, which is the point of running this.
#
# The cross builds use their own target dir (target/cross by default,
# override with CARGO_TARGET_DIR) so that a long first Windows build never
# holds the lock on the shared target/ that everyone's Linux builds use.
#
# Usage: scripts/cross_check.sh            # both
#        scripts/cross_check.sh mac|windows
set -euo pipefail

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target/cross}"

die() {
    echo "cross_check: $*" >&2
    exit 1
}

require_target() {
    local triple="$1"
    if ! rustup target list --installed 2>/dev/null | grep -qx "$triple"; then
        die "rust target $triple is not installed; run: rustup target add $triple"
    fi
}

# Fails naming the crates that would compile C for `triple`: anything that
# build-depends on cc, cmake, pkg-config or bindgen. This catches a C
# dependency before the compiler does, and says which crate brought it in.
refuse_c_builds() {
    local triple="$1" tool users found=""
    for tool in cc cmake pkg-config bindgen; do
        if users=$(cargo tree -q --target "$triple" -e normal,build -i "$tool" --depth 1 --prefix none 2>/dev/null); then
            users=$(echo "$users" | tail -n +2 | sort -u | tr '\n' ' ')
            found="$found\n  $tool, needed by: $users"
        fi
    done
    if [ -n "$found" ]; then
        die "$(printf "dependencies for %s compile C (every dependency must be pure Rust):%b" "$triple" "$found")"
    fi
}

check_mac() {
    require_target aarch64-apple-darwin
    refuse_c_builds aarch64-apple-darwin
    echo "== cargo check --target aarch64-apple-darwin --lib --bins"
    local start=$SECONDS
    cargo check --target aarch64-apple-darwin --lib --bins ||
        die "macOS check failed; see the compiler errors above"
    echo "== macOS check passed in $((SECONDS - start)) s"
}

check_windows() {
    require_target x86_64-pc-windows-gnu
    refuse_c_builds x86_64-pc-windows-gnu
    command -v x86_64-w64-mingw32-gcc >/dev/null ||
        die "x86_64-w64-mingw32-gcc not found; install Debian's gcc-mingw-w64-x86-64 (the linker named in .cargo/config.toml)"
    echo "== cargo build --target x86_64-pc-windows-gnu --bin rayvault-worker"
    local start=$SECONDS
    cargo build --target x86_64-pc-windows-gnu --bin rayvault-worker ||
        die "Windows build failed"
    local exe="$CARGO_TARGET_DIR/x86_64-pc-windows-gnu/debug/rayvault-worker.exe"
    [ -f "$exe" ] || die "build reported success but $exe is missing"
    echo "== Windows build passed in $((SECONDS - start)) s: $exe"
}

case "${1:-all}" in
    mac) check_mac ;;
    windows) check_windows ;;
    all) check_mac; check_windows ;;
    *) die "unknown argument ${1}; use mac, windows or nothing for both" ;;
esac
