#!/usr/bin/env bash
# Builds bora-envd, the agent Bora starts as PID 1 of every sandbox, as a
# static binary (glibc, +crt-static) so it runs in any image — Debian,
# Alpine, distroless — and copies it to target/envd/bora-envd. Prints that
# path. Safe to run again: cargo rebuilds only what changed.
#
# Honours CARGO_TARGET_DIR for the build itself (e.g. a separate target dir
# so it does not wait on another build's lock).
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

case "$(uname -m)" in
  x86_64) target=x86_64-unknown-linux-gnu ;;
  aarch64 | arm64) target=aarch64-unknown-linux-gnu ;;
  *) echo "build-envd: unsupported machine $(uname -m)" >&2; exit 1 ;;
esac

# With an explicit --target, RUSTFLAGS apply to the binary but not to build
# scripts and proc macros, which must stay dynamic.
echo "build-envd: cargo build --release -p bora-envd --target $target (static)" >&2
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release -p bora-envd --target "$target" >&2

built="${CARGO_TARGET_DIR:-$root/target}/$target/release/bora-envd"
if [ ! -x "$built" ]; then
  echo "build-envd: $built was not produced" >&2
  exit 1
fi

# A dynamic binary would fail in images without (this) glibc: refuse it.
if ldd "$built" >/dev/null 2>&1 && ! ldd "$built" 2>&1 | grep -q "statically linked"; then
  echo "build-envd: $built is dynamically linked:" >&2
  ldd "$built" >&2
  exit 1
fi
if command -v file >/dev/null && ! file "$built" | grep -Eq "static(ally|-pie) linked"; then
  echo "build-envd: file(1) does not call $built static: $(file "$built")" >&2
  exit 1
fi

out="$root/target/envd/bora-envd"
mkdir -p "$(dirname "$out")"
install -m 0755 "$built" "$out.tmp"
mv -f "$out.tmp" "$out"
echo "$out"
