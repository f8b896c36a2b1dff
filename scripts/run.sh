#!/usr/bin/env bash
# Builds Bora and starts `bora server` on this machine with its embedded
# defaults: SQLite in /var/lib/bora, the API on 127.0.0.1:7070, the router on
# 127.0.0.1:8080. Extra arguments go to `bora server`.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
echo "run: building bora (release)" >&2
cargo build --release -p bora
install -m 0755 target/release/bora /usr/local/bin/bora
echo "run: building the sandbox agent (static bora-envd)" >&2
install -D -m 0755 "$(scripts/build-envd.sh)" /usr/lib/bora/bora-envd
echo "run: installed /usr/local/bin/bora; starting the server (ctrl-c stops it; instances keep running)" >&2
exec /usr/local/bin/bora server "$@"
