#!/usr/bin/env bash
# Builds Nubo's JavaScript test guest into dist/hello-js.wasm with componentize-js.
# Works from any directory; installs the pinned npm packages first if node_modules is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if [ ! -d node_modules/@bytecodealliance/componentize-js ]; then
    # No lock file: npm 11 writes one that leaves out other platforms' optional binaries and
    # hoisted shims, so installs from it (`npm ci` or `npm install`) break on a clean clone.
    # package.json pins componentize-js exactly; its own dependencies are pinned by it.
    npm install --no-package-lock --no-audit --no-fund >&2
fi

mkdir -p dist
node node_modules/@bytecodealliance/componentize-js/src/cli.js index.js \
    --wit wit --world-name hello --out dist/hello-js.wasm >&2
echo "$here/dist/hello-js.wasm"
