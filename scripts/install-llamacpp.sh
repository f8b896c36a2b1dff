#!/usr/bin/env bash
# Builds llama.cpp's `llama-server`, the peer of the engine benchmark
# (`cargo bench -p bora --bench engine`, docs/benchmarks.md §5), and prints
# the path of the binary. Bench-only: nothing else in Bora needs it.
#
# GitHub is not reachable from here, so the sources come from PyPI: the
# sdist of llama-cpp-python (pinned by version and sha256) vendors
# llama.cpp's tree in vendor/llama.cpp. That tree is built with cmake
# (Release, -DGGML_NATIVE=ON: tuned for this CPU, like Bora's release
# build), only the llama-server target, with llama.cpp's own libraries
# linked in and without the web UI, and the binary is kept in a cache
# outside the repository:
#
#   ~/.cache/bora/llamacpp/<llama-cpp-python version>/bin/llama-server
#
# On CPUs with AMX (the Xeon VMs behind this workspace), ggml's AMX kernels
# crash on the first matrix product of the test model (SIGSEGV in
# ggml_backend_amx_mul_mat): run llama-server with --no-repack there, as the
# engine bench does, which keeps weights out of the AMX buffers.
#
# Idempotent: once built (for this CPU), it only prints the path. The first
# build takes ~10-20 minutes on 2 cores (20 min while other builds shared
# them). Needs cmake and g++ (installed with apt-get when missing and run as
# root).
#
#   scripts/install-llamacpp.sh                  # build (if needed), print the path
#   BORA_LLAMACPP_CACHE=/some/dir scripts/install-llamacpp.sh
set -euo pipefail

# llama-cpp-python 0.3.36 vendors ggml-org/llama.cpp@0c1e57098 (its
# CHANGELOG.md: "update llama.cpp to ggml-org/llama.cpp@0c1e57098").
version=0.3.36
sdist_sha=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
llamacpp_commit=0c1e57098

cache=${BORA_LLAMACPP_CACHE:-$HOME/.cache/bora/llamacpp}/$version
server="$cache/bin/llama-server"
say() { printf 'install-llamacpp: %s\n' "$*" >&2; }

# -DGGML_NATIVE=ON builds for this CPU's instruction set: a binary built on
# another CPU (the VM may change under the cache) could die with SIGILL, so
# the build is kept together with the CPU it was built for.
cpu=$({
  grep -m1 '^model name' /proc/cpuinfo || true
  grep -m1 '^flags' /proc/cpuinfo || true
} | sha256sum | cut -c1-16)

if [ -x "$server" ] && [ "$(cat "$cache/cpu" 2>/dev/null)" = "$cpu" ] \
  && "$server" --version >/dev/null 2>&1; then
  echo "$server"
  exit 0
fi
if [ -x "$server" ]; then
  say "$server was built for another CPU: building again"
fi

# The build tools.
missing=()
command -v cmake >/dev/null || missing+=(cmake)
{ command -v g++ >/dev/null && command -v make >/dev/null; } || missing+=(build-essential)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    say "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or run this as root"
    exit 1
  fi
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

work=$(mktemp -d)
# shellcheck disable=SC2064
trap "rm -rf '$work'" EXIT

# The sdist, hash-checked. pip prepares its metadata, which installs its
# build backend (scikit-build-core) into a throwaway environment; the sources
# themselves are not built by pip.
say "downloading llama-cpp-python==$version (sdist) from PyPI"
printf 'llama-cpp-python==%s --hash=sha256:%s\n' "$version" "$sdist_sha" >"$work/requirements.txt"
python3 -m pip download --quiet --disable-pip-version-check --no-deps \
  --no-binary llama-cpp-python --require-hashes -r "$work/requirements.txt" \
  -d "$work/sdist" >&2
tarball="$work/sdist/llama_cpp_python-$version.tar.gz"
if [ "$(sha256sum "$tarball" | cut -d' ' -f1)" != "$sdist_sha" ]; then
  say "$tarball: sha256 mismatch (want $sdist_sha)"
  exit 1
fi
tar -xzf "$tarball" -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
if [ ! -f "$src/tools/server/server.cpp" ]; then
  say "$src has no tools/server: this sdist cannot build llama-server"
  exit 1
fi

jobs=$(nproc)
say "building llama-server from llama.cpp@$llamacpp_commit with $jobs jobs (~10-20 min on 2 cores)"
cmake -S "$src" -B "$work/build" \
  -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=ON \
  -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_UI=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_COMMIT="$llamacpp_commit" \
  -DLLAMA_BUILD_NUMBER=0 >"$work/cmake.log" 2>&1 || {
  cat "$work/cmake.log" >&2
  say "cmake configure failed"
  exit 1
}
cmake --build "$work/build" --target llama-server -j "$jobs" >"$work/build.log" 2>&1 || {
  tail -n 60 "$work/build.log" >&2
  say "the llama-server build failed"
  exit 1
}
built="$work/build/bin/llama-server"
if [ ! -x "$built" ]; then
  say "$built was not produced"
  exit 1
fi

# Into the cache, atomically.
mkdir -p "$cache"
rm -rf "$cache/bin.tmp"
mkdir -p "$cache/bin.tmp"
cp "$built" "$cache/bin.tmp/llama-server"
rm -rf "$cache/bin"
mv "$cache/bin.tmp" "$cache/bin"
echo "$cpu" >"$cache/cpu"
printf 'llama-cpp-python %s\nllama.cpp %s\ncmake -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON\nbuilt on %s (%s)\n' \
  "$version" "$llamacpp_commit" "$(hostname)" \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')" >"$cache/VERSION"
say "llama-server ready: $("$server" --version 2>&1 | head -n 2 | tr '\n' ' ')"
echo "$server"
