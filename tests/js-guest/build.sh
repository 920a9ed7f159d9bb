#!/usr/bin/env bash
# Builds Nubo's JavaScript test guest into dist/hello-js.wasm with componentize-js.
# Works from any directory; installs the pinned npm packages first if node_modules is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if [ ! -d node_modules/@bytecodealliance/componentize-js ]; then
    # `npm install` (not `npm ci`): npm 11 leaves other platforms' optional binaries out of
    # the lock file, which `npm ci` then refuses; install still honours the pinned versions.
    npm install --no-audit --no-fund >&2
fi

mkdir -p dist
node node_modules/@bytecodealliance/componentize-js/src/cli.js index.js \
    --wit wit --world-name hello --out dist/hello-js.wasm >&2
echo "$here/dist/hello-js.wasm"
