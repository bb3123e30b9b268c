#!/usr/bin/env bash
# Build actionlint (the GitHub Actions workflow linter) from its Go module at a pinned
# version, once, into the cache outside the repository; a second run is a no-op.
# Prints the binary's path on its last line. RUNNER_PLATFORM_CACHE overrides the root.
set -euo pipefail

ACTIONLINT_VERSION=v1.7.12

CACHE_ROOT="${RUNNER_PLATFORM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/runner-platform}"
DEST="$CACHE_ROOT/actionlint-$ACTIONLINT_VERSION"

if [ -x "$DEST/actionlint" ]; then
  echo "$DEST/actionlint"
  exit 0
fi

command -v go >/dev/null || { echo "build-actionlint: Go is required" >&2; exit 1; }
# The machine's Go builds it; never fetch a toolchain implicitly.
export GOTOOLCHAIN=local CGO_ENABLED=0
partial="$DEST.partial"
rm -rf "$partial" && mkdir -p "$partial"
GOBIN="$partial" go install -trimpath -ldflags "-s -w" \
  "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
"$partial/actionlint" -version >&2
rm -rf "$DEST" && mv "$partial" "$DEST"
echo "$DEST/actionlint"
