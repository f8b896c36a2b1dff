#!/usr/bin/env bash
# Installs the official E2B SDKs the sandbox tests drive, pinned, into the
# checkout's target/sdk/ (nothing global):
#
#   target/sdk/venv-e2b-<version>   Python virtualenv with `e2b==<version>`
#   target/sdk/js                   `npm ci` of scripts/sdk/package-lock.json
#                                   (the JavaScript SDK, `e2b@<version>`)
#
# crates/bora/tests/sandboxes.rs and crates/bora-envd/tests/it/sdk.rs look
# there by default. Idempotent, and quick when both are in place. Needs
# python3 with venv (scripts/install-deps.sh) and Node.js >= 20.18.1 with
# npm (the JavaScript SDK's own requirement).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'install-sdks: %s\n' "$*" >&2; }

# The versions the test scripts are written against. The JavaScript pin is
# in scripts/sdk/package.json (and its lock); keep the two in step.
PYTHON_SDK=2.63.0
JS_SDK=$(sed -n 's/^ *"e2b": "\(.*\)"$/\1/p' scripts/sdk/package.json)
NODE_MIN=20.18.1

sdk=target/sdk
mkdir -p "$sdk"

# --- Python ---------------------------------------------------------------
venv=$sdk/venv-e2b-$PYTHON_SDK
has_python_sdk() {
  "$venv/bin/python" - "$PYTHON_SDK" >/dev/null 2>&1 <<'EOF'
import importlib.metadata, sys
import e2b  # noqa: F401 (importable, not only recorded)
sys.exit(importlib.metadata.version("e2b") != sys.argv[1])
EOF
}
if has_python_sdk; then
  say "python: e2b $PYTHON_SDK present in $venv"
else
  say "python: installing e2b==$PYTHON_SDK into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "e2b==$PYTHON_SDK"
  has_python_sdk || { say "python: $venv cannot import e2b $PYTHON_SDK after installing it"; exit 1; }
fi

# --- JavaScript -----------------------------------------------------------
js=$sdk/js
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  say "javascript: node and npm are missing: install Node.js >= $NODE_MIN with npm (e.g. NodeSource's nodejs 20 or 22)"
  exit 1
fi
node_version=$(node -p 'process.versions.node')
if ! node -e '
  const [have, want] = process.argv.slice(1).map(v => v.split(".").map(Number));
  const cmp = have.map((n, i) => n - want[i]).find(d => d !== 0) ?? 0;
  process.exit(cmp >= 0 ? 0 : 1);
' "$node_version" "$NODE_MIN"; then
  say "javascript: e2b@$JS_SDK needs Node.js >= $NODE_MIN, this is $node_version: install a newer Node.js (e.g. NodeSource's nodejs 20 or 22)"
  exit 1
fi
installed_js() {
  node -p "require('./$js/node_modules/e2b/package.json').version" 2>/dev/null || true
}
if [ "$(installed_js)" = "$JS_SDK" ] && cmp -s scripts/sdk/package-lock.json "$js/package-lock.json"; then
  say "javascript: e2b@$JS_SDK present in $js"
else
  say "javascript: installing e2b@$JS_SDK into $js (npm ci)"
  mkdir -p "$js"
  cp scripts/sdk/package.json scripts/sdk/package-lock.json "$js/"
  (cd "$js" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  if [ "$(installed_js)" != "$JS_SDK" ]; then
    say "javascript: $js/node_modules/e2b is not e2b@$JS_SDK after npm ci"
    exit 1
  fi
fi
