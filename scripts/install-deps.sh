#!/usr/bin/env bash
# Installs what Bora needs on Debian/Ubuntu, idempotently: only what is
# missing, saying what it does. Run as root (Bora runs containers).
set -euo pipefail

say() { printf 'install-deps: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  say "Bora runs containers and needs root: run this as root (sudo $0)"
  exit 1
fi

# Debian package -> a file it installs, to tell whether it is there.
packages=(
  "runc:/usr/sbin/runc"                          # OCI runtime for isolation: container
  "runsc:/usr/bin/runsc"                         # gVisor, for isolation: gvisor
  "containernetworking-plugins:/usr/lib/cni/bridge"  # instance networking
  "iproute2:/usr/sbin/ip"                        # network namespaces
  "iptables:/usr/sbin/iptables"                  # keeps instances unreachable from outside
  "util-linux:/usr/bin/nsenter"                  # starts gVisor inside an instance's namespace
  "ca-certificates:/etc/ssl/certs/ca-certificates.crt"  # HTTPS registries
  "mmdebstrap:/usr/bin/mmdebstrap"               # builds the sandbox template: bora templates build-base
  # For the tests: a real registry, and tools that build and push test images.
  "docker-registry:/usr/bin/docker-registry"
  "umoci:/usr/bin/umoci"
  "skopeo:/usr/bin/skopeo"
  "busybox-static:/bin/busybox"
  # For the benchmarks (crates/bora/benches): the peer proxy and the load.
  "nginx-light:/usr/sbin/nginx"
  "wrk:/usr/bin/wrk"
)

missing=()
for entry in "${packages[@]}"; do
  pkg=${entry%%:*}
  file=${entry#*:}
  if [ ! -e "$file" ]; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  say "all system packages present"
else
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  say "installed ${missing[*]}"
fi

# gVisor older than 2023 refuses statx(AT_NO_AUTOMOUNT), so `ls` and `stat`
# fail inside sandboxes ("Invalid argument"); Debian 12's runsc is from
# 2022-12. Take it from bookworm-backports (Debian's own newer build).
runsc_date=$(runsc --version 2>/dev/null | sed -n 's/^runsc version [0-9.]*~\([0-9]\{8\}\).*/\1/p')
if [ -n "$runsc_date" ] && [ "$runsc_date" -lt 20240101 ]; then
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  if [ "$codename" = bookworm ]; then
    say "runsc $runsc_date is too old for sandboxes (ls fails in it): installing gVisor from bookworm-backports"
    cat > /etc/apt/sources.list.d/bora-bookworm-backports.sources <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends -t bookworm-backports runsc >/dev/null
    say "installed $(runsc --version | head -1)"
  else
    say "warning: runsc $runsc_date predates 2024: ls and stat fail inside gVisor sandboxes; install a newer gVisor"
  fi
fi

# The engine's tests fetch their models with pip and drive the engine with
# the OpenAI Python SDK in a virtualenv.
if ! python3 -c 'import venv, ensurepip, pip' >/dev/null 2>&1; then
  say "installing python3 with pip and venv"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3 python3-pip python3-venv >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  say "cargo (Rust) is missing: install Rust with rustup (https://rustup.rs) and run this again"
  exit 1
fi
