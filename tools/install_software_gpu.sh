#!/usr/bin/env bash
# A software GPU for the tests of LiteRT's GPU accelerator: Mesa's lavapipe Vulkan driver.
#
# LiteRT's GPU accelerator (ai_edge_litert CompiledModel, HardwareAccelerator.GPU) runs LiteRT's GPU
# backend over WebGPU (Dawn) -> Vulkan. On a machine without a GPU, Mesa's CPU Vulkan driver (lavapipe)
# provides the adapter. Debian bookworm's mesa-vulkan-drivers 22.3 is rejected by Dawn; the one from
# bookworm-backports (25.x) works. So: add the backports suite, install mesa-vulkan-drivers from it.
#
# Debian / Ubuntu-style systems, as root (CI runs as root). Idempotent. Exits 0 with a message when it
# cannot install (not root, no apt, no network): the GPU-accelerator tests then skip with the reason.
#   tools/install_software_gpu.sh            # install (or report that it is already there)
#   tools/install_software_gpu.sh --check    # only report whether lavapipe >= 23 is installed
set -uo pipefail

BACKPORTS_LIST=/etc/apt/sources.list.d/tripled-bookworm-backports.list
MIN_MESA_MAJOR=23  # Dawn rejects lavapipe 22.3 (bookworm's own)

say() { echo "install_software_gpu: $*"; }

installed_mesa_major() {
    # Major version of the installed mesa-vulkan-drivers, empty when not installed.
    dpkg-query -W -f='${Status} ${Version}\n' mesa-vulkan-drivers 2>/dev/null \
        | awk '$3 == "installed" {version = $4; sub(/^[0-9]+:/, "", version); split(version, v, "."); print v[1]}'
}

have_lavapipe() {
    local major
    major=$(installed_mesa_major)
    [[ -n "$major" && "$major" -ge "$MIN_MESA_MAJOR" ]] && ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1
}

if have_lavapipe; then
    say "lavapipe (mesa-vulkan-drivers $(installed_mesa_major).x) is installed"
    exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
    say "lavapipe >= ${MIN_MESA_MAJOR} is not installed"
    exit 1
fi
if [[ "$(id -u)" != 0 ]]; then
    say "not root: skipping (the GPU-accelerator tests will skip)"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    say "no apt-get: skipping (the GPU-accelerator tests will skip)"
    exit 0
fi

codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
target=()
if [[ "$codename" == "bookworm" ]]; then
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        echo "deb http://deb.debian.org/debian bookworm-backports main" > "$BACKPORTS_LIST"
    fi
    target=(-t bookworm-backports)
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get update -qq; then
    say "apt-get update failed: skipping (the GPU-accelerator tests will skip)"
    exit 0
fi
if ! apt-get install -y -qq --no-install-recommends "${target[@]}" mesa-vulkan-drivers libvulkan1 >/dev/null; then
    say "apt-get install mesa-vulkan-drivers failed: skipping (the GPU-accelerator tests will skip)"
    exit 0
fi
if have_lavapipe; then
    say "installed lavapipe (mesa-vulkan-drivers $(installed_mesa_major).x)"
else
    say "mesa-vulkan-drivers installed but older than ${MIN_MESA_MAJOR}: Dawn will reject it"
fi
exit 0
