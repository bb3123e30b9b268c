#!/usr/bin/env bash
# A Debian 12 root filesystem to build and run the controller image on when no image
# registry is reachable: `debootstrap --variant=minbase` with python3 and python3-venv from
# the mirror apt uses (REFERENCE.md, "Containers and Helm on these machines"). Made once
# into the cache outside the repository; a second run is a no-op. localenv/image.py
# imports it into podman's storage: as it is for the build stage, without any shell for
# the runtime stage (as distroless has none).
#
# Prints the rootfs directory on its last line. RUNNER_PLATFORM_CACHE overrides the root.
set -euo pipefail

SUITE=bookworm
INCLUDE=python3,python3-venv,ca-certificates
LAYOUT=1  # bump when what the cache holds changes for the same suite and packages

CACHE_ROOT="${RUNNER_PLATFORM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/runner-platform}"
DEST="$CACHE_ROOT/image-base-layout-${LAYOUT}_${SUITE}_${INCLUDE//,/+}"

if [ -f "$DEST/.complete" ]; then
  echo "$DEST/rootfs"
  exit 0
fi

command -v debootstrap >/dev/null || {
  echo "build-image-base: debootstrap is missing: run \`make image-deps\`" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "build-image-base: debootstrap needs root" >&2; exit 1; }

# The mirror apt uses (deb822 sources first, then the one-line format).
mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)\/\{0,1\}$/\1/p' \
           /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
if [ -z "$mirror" ]; then
  mirror=$(sed -n 's/^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*\/debian\)\/\{0,1\}[[:space:]].*/\2/p' \
             /etc/apt/sources.list 2>/dev/null | head -n 1)
fi
mirror="${mirror:-http://deb.debian.org/debian}"

started=$(date +%s)
partial="$DEST.partial"
rm -rf "$partial" && mkdir -p "$partial"
echo "build-image-base: debootstrap $SUITE from $mirror (about a minute)" >&2
debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$partial/rootfs" "$mirror" \
  > "$partial/debootstrap.log" 2>&1 || {
    tail -n 20 "$partial/debootstrap.log" >&2; exit 1; }
# What no image needs: downloaded packages, package lists, documentation, translations.
rm -rf "$partial"/rootfs/var/cache/apt/archives/*.deb "$partial"/rootfs/var/lib/apt/lists/* \
       "$partial"/rootfs/usr/share/doc/* "$partial"/rootfs/usr/share/man/* \
       "$partial"/rootfs/usr/share/locale/*
chroot "$partial/rootfs" python3 --version >&2
rm -rf "$DEST" && mv "$partial" "$DEST"
echo "$SUITE $INCLUDE $mirror" > "$DEST/.complete"
echo "build-image-base: done in $(( $(date +%s) - started ))s: $DEST" >&2
echo "$DEST/rootfs"
