#!/usr/bin/env bash
# Windows worker smoke test under Wine: builds rayvault-worker.exe with
# mingw-w64, stages it with the test-only ProcessPrng shim when this Wine
# needs it, prepares a private WINEPREFIX under target/, then runs
# `cargo test --features wine-smoke --test wine_smoke`, which starts the .exe
# under Wine and drives it over loopback HTTP with the signed client.
#
# Every missing prerequisite is a hard failure with what to install: this
# script exists to prove the Windows build works, so it never skips.
#
# Environment:
#   CARGO_TARGET_DIR  cross build dir (default target/cross, as cross_check.sh)
#   WINE              wine loader to use (default: /usr/lib/wine/wine64, else wine)
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
cross_dir="${CARGO_TARGET_DIR:-$root/target/cross}"
stage="$root/target/wine-smoke"
export WINEPREFIX="$stage/prefix"
export WINEDEBUG=-all

die() {
    echo "wine_smoke: $*" >&2
    exit 1
}

if [ -z "${WINE:-}" ]; then
    if [ -x /usr/lib/wine/wine64 ]; then WINE=/usr/lib/wine/wine64; else WINE=$(command -v wine || true); fi
fi
[ -n "$WINE" ] && [ -x "$WINE" ] || die "wine not found; install Debian's wine (apt-get install wine wine64)"
command -v x86_64-w64-mingw32-gcc >/dev/null ||
    die "x86_64-w64-mingw32-gcc not found; install gcc-mingw-w64-x86-64"
rustup target list --installed 2>/dev/null | grep -qx x86_64-pc-windows-gnu ||
    die "rust target x86_64-pc-windows-gnu missing; run: rustup target add x86_64-pc-windows-gnu"
export WINE

start=$SECONDS
echo "== building rayvault-worker.exe"
CARGO_TARGET_DIR="$cross_dir" cargo build --target x86_64-pc-windows-gnu --bin rayvault-worker
built="$cross_dir/x86_64-pc-windows-gnu/debug/rayvault-worker.exe"
[ -f "$built" ] || die "$built was not produced"

# The .exe is copied into its own folder so that the shim DLL never sits
# beside the cargo output, which is what would be shipped to a real Windows.
mkdir -p "$stage/bin"
cp "$built" "$stage/bin/rayvault-worker.exe"
rm -f "$stage/bin/bcryptprimitives.dll"
if find /usr/lib /usr/lib64 /opt -path '*wine*' -iname bcryptprimitives.dll 2>/dev/null | grep -q .; then
    echo "== this Wine ships bcryptprimitives.dll; no ProcessPrng shim needed"
else
    echo "== this Wine has no bcryptprimitives.dll (Rust std needs ProcessPrng): building the test-only shim"
    x86_64-w64-mingw32-gcc -O2 -shared -static-libgcc \
        -o "$stage/bin/bcryptprimitives.dll" \
        scripts/wine/processprng_shim.c scripts/wine/processprng_shim.def -lbcrypt ||
        die "building the ProcessPrng shim failed"
fi
echo "== build and staging took $((SECONDS - start)) s"

cleanup() {
    wineserver -k >/dev/null 2>&1 || true
}
trap cleanup EXIT

if [ ! -f "$WINEPREFIX/system.reg" ]; then
    echo "== creating the private WINEPREFIX $WINEPREFIX"
    t=$SECONDS
    timeout 300 "$WINE" wineboot --init >/dev/null 2>&1 || die "wineboot --init failed for $WINEPREFIX"
    wineserver -w
    echo "== prefix ready in $((SECONDS - t)) s"
fi

echo "== running the smoke test"
t=$SECONDS
RAYVAULT_WINE_EXE="$stage/bin/rayvault-worker.exe" \
    cargo test --features wine-smoke --test wine_smoke -- --nocapture
echo "== wine smoke test passed in $((SECONDS - t)) s (total $((SECONDS - start)) s)"
