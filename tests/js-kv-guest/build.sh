#!/usr/bin/env bash
# Builds Nubo's JavaScript key-value test guest into dist/kv-js.wasm with componentize-js.
# Reuses tests/js-guest's npm packages (installing them there first when missing) and skips the
# build when the component is newer than its sources. Works from any directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
js_guest="$here/../js-guest"
out="$here/dist/kv-js.wasm"

if [ ! -d "$js_guest/node_modules/@bytecodealliance/componentize-js" ]; then
    (cd "$js_guest" && npm install --no-package-lock --no-audit --no-fund >&2)
fi

if [ -f "$out" ] && [ -z "$(find index.js build.sh wit -newer "$out" -print -quit)" ]; then
    echo "$out"
    exit 0
fi

mkdir -p dist
node "$js_guest/node_modules/@bytecodealliance/componentize-js/src/cli.js" index.js \
    --wit wit --world-name kv --out "$out.tmp" >&2
mv "$out.tmp" "$out"
echo "$out"
