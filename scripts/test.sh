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
bash tests/js-kv-guest/build.sh

step "process test functions"
bash tests/process/build.sh

step "S3 clients (boto3, aws CLI v1)"
# A venv in the cache, refreshed only when tests/s3/requirements.txt changes.
venv="$cache/venv"
if ! cmp -s tests/s3/requirements.txt "$venv/requirements.txt" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/s3/requirements.txt
  cp tests/s3/requirements.txt "$venv/requirements.txt"
fi
export NUBO_S3_VENV="$venv"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --target-dir "$target" --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --target-dir "$target" --workspace --locked
