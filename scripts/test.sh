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

step "services (Mosquitto, NATS with JetStream) for the trigger tests"
# Started here when not already running; they outlive the run, like system services would.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! command -v mosquitto >/dev/null && ! [ -x /usr/sbin/mosquitto ] || ! command -v mosquitto_pub >/dev/null; then
  apt-get update -qq && apt-get install -y -qq mosquitto mosquitto-clients
fi
if ! port_open 1883; then
  mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
  "$mosquitto_bin" -d -p 1883
fi
if ! command -v nats-server >/dev/null && ! [ -x /usr/sbin/nats-server ]; then
  apt-get update -qq && apt-get install -y -qq nats-server
fi
if ! port_open 4222; then
  nats_bin="$(command -v nats-server || echo /usr/sbin/nats-server)"
  mkdir -p "$cache/nats"
  nohup "$nats_bin" -js -a 127.0.0.1 -p 4222 -sd "$cache/nats" >"$cache/nats/server.log" 2>&1 &
fi
for _ in $(seq 1 50); do
  port_open 1883 && port_open 4222 && break
  sleep 0.2
done
port_open 1883 || { echo "Mosquitto is not listening on 127.0.0.1:1883" >&2; exit 1; }
port_open 4222 || { echo "nats-server is not listening on 127.0.0.1:4222" >&2; exit 1; }

step "Prometheus (promtool checks /_nubo/metrics; one test scrapes it with a real server)"
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  apt-get update -qq && apt-get install -y -qq prometheus
  # The package starts a system service on :9090; the tests run their own.
  service prometheus stop >/dev/null 2>&1 || true
fi

step "guest components"
bash tests/guests/build.sh
bash tests/js-guest/build.sh
bash tests/js-kv-guest/build.sh

step "process test functions"
bash tests/process/build.sh

step "Python clients (boto3, aws CLI v1, the CloudEvents SDK, the OTLP protobuf messages)"
# A venv in the cache, refreshed only when one of the requirements files changes.
venv="$cache/venv"
if ! cat tests/s3/requirements.txt tests/otlp/requirements.txt | cmp -s - "$venv/requirements.txt" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/s3/requirements.txt -r tests/otlp/requirements.txt
  cat tests/s3/requirements.txt tests/otlp/requirements.txt >"$venv/requirements.txt"
fi
export NUBO_S3_VENV="$venv"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --target-dir "$target" --workspace --all-targets --locked -- -D warnings

step "cargo test"
cargo test --target-dir "$target" --workspace --locked
