#!/usr/bin/env bash
# Runs every check Nubo has: formatting, lints, the unit and end-to-end tests. Installs what the
# tests need first (the wasm32-wasip2 target, Node.js for the JavaScript test component).
# Compiled dependencies are cached outside the clone in $NUBO_CACHE_DIR (default ~/.cache/nubo).
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${NUBO_CACHE_DIR:-$HOME/.cache/nubo}"
mkdir -p "$cache"
# One target directory for fmt, clippy and tests, so wasmtime is compiled once per run.
target="$cache/target"

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
rustup component list --installed | grep -q '^clippy' || rustup component add clippy
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  step "installing Node.js (for the JavaScript test component)"
  apt-get update -qq && apt-get install -y -qq nodejs npm
fi

step "guest components"
bash tests/guests/build.sh
bash tests/js-guest/build.sh

step "process test functions"
bash tests/process/build.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --target-dir "$target" --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --target-dir "$target" --workspace --locked
