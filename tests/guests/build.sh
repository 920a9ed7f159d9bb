#!/usr/bin/env bash
# Builds Nubo's Rust test guests (wasi:http components) for wasm32-wasip2 in release mode and
# prints the path of each produced .wasm, one per line, on stdout. Progress goes to stderr.
#
# Usage: tests/guests/build.sh [GUEST...]   (default: all of loop membomb trap outbound echo kv kv2 config objects chain)
# Works from any directory. Each guest is a standalone cargo project; its component lands in
# tests/guests/<guest>/target/wasm32-wasip2/release/<guest>_guest.wasm.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
guests=("$@")
if [ "${#guests[@]}" -eq 0 ]; then
    guests=(loop membomb trap outbound echo kv kv2 config objects chain)
fi

# Outputs must land in each project's own target/ folder, whatever the caller's environment says.
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET_DIR CARGO_BUILD_TARGET

if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "build.sh: the wasm32-wasip2 target is missing; run: rustup target add wasm32-wasip2" >&2
    exit 1
fi

for guest in "${guests[@]}"; do
    dir="$here/$guest"
    if [ ! -f "$dir/Cargo.toml" ]; then
        echo "build.sh: unknown guest '$guest' (no $dir/Cargo.toml)" >&2
        exit 1
    fi
    echo "build.sh: building $guest" >&2
    (cd "$dir" && cargo build --quiet --target wasm32-wasip2 --release >&2)
    wasm="$dir/target/wasm32-wasip2/release/${guest}_guest.wasm"
    if [ ! -f "$wasm" ]; then
        echo "build.sh: $guest built but $wasm is missing" >&2
        exit 1
    fi
    echo "$wasm"
done
