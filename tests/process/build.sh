#!/usr/bin/env bash
# Installs and builds the process-runtime test functions (the real Lambda runtime clients the
# end-to-end tests deploy): awslambdaric into each Python function folder, the Rust bootstraps,
# aws-lambda-ric for Node. Idempotent: a second run checks what is there and returns quickly.
#
# Inside the sandbox only Debian's system paths and the function folder exist, so everything a
# function needs beyond /usr/bin/python3, /usr/bin/node and /usr/bin/curl goes into its folder.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

say() { printf '  process functions: %s\n' "$*"; }

# --- Python: awslambdaric 4.2.2 for Debian's python3 (3.11) ----------------------------------
awslambdaric_version="4.2.2"
install_awslambdaric() {
  local dir="$1"
  # The native module must be the one for the interpreter the sandbox runs: /usr/bin/python3.
  if [ -d "$dir/awslambdaric-$awslambdaric_version.dist-info" ] \
    && ls "$dir"/runtime_client.cpython-311-*.so >/dev/null 2>&1; then
    return
  fi
  say "installing awslambdaric $awslambdaric_version into ${dir#"$here"/}"
  if /usr/bin/python3 -m pip --version >/dev/null 2>&1; then
    /usr/bin/python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
      --upgrade --target "$dir" "awslambdaric==$awslambdaric_version"
  else
    # No pip for Debian's python3: fetch the cp311 manylinux wheels with any other pip.
    python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location --root-user-action=ignore \
      --upgrade --target "$dir" --python-version 3.11 --only-binary=:all: \
      --platform manylinux2014_x86_64 "awslambdaric==$awslambdaric_version"
  fi
  ls "$dir"/runtime_client.cpython-311-*.so >/dev/null
}
install_awslambdaric "$here/python/app"
install_awslambdaric "$here/python/init_error"
install_awslambdaric "$here/python/kv"
install_awslambdaric "$here/python/objects"
install_awslambdaric "$here/python/events"

# Build outputs that outlive a clone (CI runs on fresh clones) live in the cache directory.
cache="${NUBO_CACHE_DIR:-$HOME/.cache/nubo}"
mkdir -p "$cache"

# --- Rust: lambda_runtime and lambda_http bootstraps ------------------------------------------
# Its own target directory: this project is not part of the Nubo workspace.
(
  cd "$here/rust"
  cargo build --quiet --release --locked --target-dir "$cache/process-rust-target"
)
for bin in echo http stream; do
  mkdir -p "$here/rust/dist/$bin"
  if ! cmp -s "$cache/process-rust-target/release/$bin" "$here/rust/dist/$bin/bootstrap"; then
    install -m 0755 "$cache/process-rust-target/release/$bin" "$here/rust/dist/$bin/bootstrap"
  fi
done

# --- Node: aws-lambda-ric 3.3.0 (4.x needs Node 22) -------------------------------------------
# Only four of its files run; they are built once per lockfile and Node version and kept in
# the cache, since building its native addon takes minutes.
node_dir="$here/node"
runtime_files=(package.json bin/index.mjs dist/index.mjs dist/rapid-client.node)
key="$( (cat "$node_dir/package-lock.json"; node --version) | sha256sum | cut -c1-16)"
built="$cache/aws-lambda-ric-$key"
if [ ! -f "$built/dist/rapid-client.node" ]; then
  # Its install scripts build native code (aws-lambda-cpp and curl) with these tools.
  missing=()
  for pkg in cmake autoconf automake libtool; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]} (needed to build aws-lambda-ric)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  say "installing aws-lambda-ric (builds native code: a few minutes)"
  addon="node_modules/aws-lambda-ric/dist/rapid-client.node"
  (
    cd "$node_dir"
    npm ci --no-audit --no-fund --loglevel=error
    if [ ! -f "$addon" ]; then
      # npm 11 skips install scripts that package.json's allowScripts does not cover.
      npm install-scripts approve aws-lambda-ric >/dev/null
      npm rebuild aws-lambda-ric --loglevel=error
    fi
    test -f "$addon"
  )
  staging="$built.tmp.$$"
  rm -rf "$staging"
  for file in "${runtime_files[@]}"; do
    mkdir -p "$staging/$(dirname "$file")"
    cp -p "$node_dir/node_modules/aws-lambda-ric/$file" "$staging/$file"
  done
  rm -rf "$built"
  mv "$staging" "$built"
fi
# The deployed folder holds only what runs: the handlers and the client's runtime files; the
# build tree under node_modules is 150 MiB of sources.
dist="$node_dir/dist"
ric="$dist/node_modules/aws-lambda-ric"
mkdir -p "$ric/bin" "$ric/dist" "$dist/init_error"
for file in index.js package.json init_error/index.js; do
  cmp -s "$node_dir/$file" "$dist/$file" || cp "$node_dir/$file" "$dist/$file"
done
for file in "${runtime_files[@]}"; do
  cmp -s "$built/$file" "$ric/$file" || cp -p "$built/$file" "$ric/$file"
done

say "ready"
