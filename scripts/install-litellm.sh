#!/usr/bin/env bash
# Installs LiteLLM's proxy, the peer of the gateway benchmark
# (`cargo bench -p bora --bench gateway`, docs/benchmarks.md §6), into a
# virtualenv outside the repository and prints the path of its `litellm`
# command. Bench-only: nothing else in Bora needs it.
#
#   ~/.cache/bora/litellm/<version>/bin/litellm
#
# Pinned to one version ('litellm[proxy]' as the issue asks; newer releases'
# proxy extra needs a litellm-proxy package that PyPI does not have); pip resolves
# its dependencies from PyPI. Idempotent: once installed, it only prints the
# path. Needs python3 with venv (python3-venv, installed with apt-get when
# missing and run as root).
#
#   scripts/install-litellm.sh
#   BORA_LITELLM_CACHE=/some/dir scripts/install-litellm.sh
set -euo pipefail

version=1.80.17
venv=${BORA_LITELLM_CACHE:-$HOME/.cache/bora/litellm}/$version
litellm="$venv/bin/litellm"
say() { printf 'install-litellm: %s\n' "$*" >&2; }

if [ -x "$litellm" ] && "$venv/bin/python" -c 'import litellm.proxy.proxy_server' >/dev/null 2>&1; then
  echo "$litellm"
  exit 0
fi

if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing python3-venv"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
  else
    say "python3 cannot make virtualenvs: install python3-venv"
    exit 1
  fi
fi

say "installing litellm[proxy]==$version into $venv (a few minutes the first time)"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "litellm[proxy]==$version" >&2
"$venv/bin/python" -c 'import litellm.proxy.proxy_server' >&2
echo "$litellm"
