#!/usr/bin/env bash
# Bora's whole test suite: what README.md tells a new user to run, and what
# CI runs (.ci/run calls this script). Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

echo "test: cargo fmt --check" >&2
cargo fmt --all -- --check

echo "test: cargo clippy --all-targets -- -D warnings" >&2
cargo clippy --workspace --all-targets -- -D warnings

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi
echo "test: fetching the test models (cached after the first run)" >&2
scripts/fetch-models.sh >/dev/null

echo "test: building the sandbox agent (static bora-envd)" >&2
scripts/build-envd.sh >/dev/null

echo "test: installing the pinned E2B SDKs (target/sdk)" >&2
scripts/install-sdks.sh

echo "test: cargo nextest run --workspace" >&2
cargo nextest run --workspace --no-fail-fast
