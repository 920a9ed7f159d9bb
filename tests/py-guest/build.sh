#!/usr/bin/env bash
# Builds Nubo's Python test guest into dist/hello-py.wasm with componentize-py.
# Works from any directory; creates .venv with the pinned componentize-py first if it is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if [ ! -x .venv/bin/componentize-py ]; then
    python3 -m venv .venv >&2
    .venv/bin/pip install --quiet -r requirements.txt >&2
fi

mkdir -p dist
.venv/bin/componentize-py -d wit -w hello componentize app -o dist/hello-py.wasm >&2
echo "$here/dist/hello-py.wasm"
