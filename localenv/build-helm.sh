#!/usr/bin/env bash
# Build helm (v3) from its Go module, and take the three charts the platform installs from
# their Go modules at exactly the pinned versions, once, into the cache outside the
# repository keyed by version; a second run is a no-op.
#
#   build-helm.sh CILIUM_VERSION KARPENTER_VERSION NVIDIA_DEVICE_PLUGIN_VERSION
#
#   helm                  helm.sh/helm/v3/cmd/helm                  -> helm-<v>/helm
#   cilium                github.com/cilium/cilium                  install/kubernetes/cilium
#     + its CRDs          (the operator registers them at run time)  pkg/k8s/apis/cilium.io/client/crds
#   karpenter             github.com/aws/karpenter-provider-aws     charts/karpenter
#   nvidia-device-plugin  github.com/NVIDIA/k8s-device-plugin       deployments/helm/nvidia-device-plugin
#
# localenv/helm.py passes the versions the components pin (docs/helm.md). Each chart's
# Chart.yaml must say the version asked for; the one known exception is Karpenter, whose
# release pipeline stamps the version into Chart.yaml after the tag (docs/helm.md).
# Prints key=value lines, the last being `root=<cache root>`. RUNNER_PLATFORM_CACHE
# overrides the root.
set -euo pipefail

HELM_VERSION=v3.22.0
CHART_LAYOUT=1  # bump when what a chart's cache folder holds changes for the same version
# A karpenter-provider-aws tag whose charts/karpenter/Chart.yaml still says the previous
# release, as "tag:what Chart.yaml says" (docs/helm.md). Anything else is refused.
KARPENTER_UNSTAMPED=("1.15.2:1.14.1")

[ $# -eq 3 ] || { echo "usage: $0 CILIUM_VERSION KARPENTER_VERSION NVIDIA_VERSION" >&2; exit 2; }
CILIUM_VERSION=$1 KARPENTER_VERSION=$2 NVIDIA_VERSION=$3

CACHE_ROOT="${RUNNER_PLATFORM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/runner-platform}"
HELM_DIR="$CACHE_ROOT/helm-$HELM_VERSION"
CHARTS="$CACHE_ROOT/charts-layout-$CHART_LAYOUT"
started=$(date +%s)
log() { echo "build-helm: $* ($(( $(date +%s) - started ))s)" >&2; }

done_already() {
  [ -x "$HELM_DIR/helm" ] && [ -f "$CHARTS/cilium-$CILIUM_VERSION/.complete" ] &&
    [ -f "$CHARTS/karpenter-$KARPENTER_VERSION/.complete" ] &&
    [ -f "$CHARTS/nvidia-device-plugin-$NVIDIA_VERSION/.complete" ]
}
report() {
  echo "helm=$HELM_DIR/helm"
  echo "cilium=$CHARTS/cilium-$CILIUM_VERSION"
  echo "karpenter=$CHARTS/karpenter-$KARPENTER_VERSION"
  echo "nvidia-device-plugin=$CHARTS/nvidia-device-plugin-$NVIDIA_VERSION"
  echo "root=$CACHE_ROOT"
}
if done_already; then report; exit 0; fi

command -v go >/dev/null || { echo "build-helm: Go is required (https://go.dev/doc/install)" >&2; exit 1; }
# The machine's Go builds helm; never fetch a toolchain implicitly.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

module_dir() {  # module_dir MODULE@VERSION: where `go mod download` unpacked it
  local json
  json=$(go mod download -json "$1" || true)
  if grep -q '"Error": ".*requires go ' <<<"$json"; then
    # Only files are read from it (nothing is compiled), but its go.mod asks for a newer
    # Go than the machine's: the proxy's approved go1.27.3 toolchain downloads it, as
    # localenv/build-k8s.sh does for the same module.
    json=$(GOTOOLCHAIN=go1.27.3 go mod download -json "$1" || true)
  fi
  python3 -c '
import json, sys
info = json.loads(sys.stdin.read() or "{}")
if "Error" in info or "Dir" not in info:
    sys.exit("build-helm: go mod download %s: %s" % (sys.argv[1], info.get("Error")))
print(info["Dir"])' "$1" <<<"$json"
}
chart_version() { awk '$1 == "version:" {gsub(/"/, "", $2); print $2; exit}' "$1/Chart.yaml"; }

if [ ! -x "$HELM_DIR/helm" ]; then
  log "helm $HELM_VERSION"
  helm_src=$(module_dir "helm.sh/helm/v3@$HELM_VERSION")
  # The Kubernetes version helm assumes without --kube-version, as helm's Makefile sets it.
  k8s_modules=$(awk '$1 == "k8s.io/client-go" {print $2; exit}' "$helm_src/go.mod")
  k8s_minor=${k8s_modules#v0.}; k8s_minor=${k8s_minor%%.*}
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
  done
  partial="$HELM_DIR.partial"
  rm -rf "$partial" && mkdir -p "$partial"
  GOBIN="$partial" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  "$partial/helm" version --short >&2
  rm -rf "$HELM_DIR" && mv "$partial" "$HELM_DIR"
fi

take_chart() {  # take_chart NAME VERSION MODULE SUBDIR: copy one chart out of its module
  local name=$1 version=$2 module=$3 subdir=$4 dest partial src says
  dest="$CHARTS/$name-$version"
  [ -f "$dest/.complete" ] && return 0
  log "$name $version ($module@v$version)"
  src="$(module_dir "$module@v$version")"
  partial="$dest.partial"
  rm -rf "$partial" && mkdir -p "$partial"
  cp -R "$src/$subdir" "$partial/chart"
  chmod -R u+w "$partial"  # the module cache is read-only
  says=$(chart_version "$partial/chart")
  if [ "$says" != "$version" ]; then
    local allowed=""
    if [ "$name" = karpenter ]; then
      for pair in "${KARPENTER_UNSTAMPED[@]}"; do
        [ "$pair" = "$version:$says" ] && allowed=yes
      done
      # The published chart is this tree with version and appVersion stamped by the
      # release script (hack/release/common.sh, publishHelmChart); stamp them the same way.
      grep -qF 'yq e -i ".version = \"${version}\"" "charts/${helm_chart}/Chart.yaml"' \
        "$src/hack/release/common.sh" || allowed=""
    fi
    if [ -z "$allowed" ]; then
      echo "build-helm: $module@v$version: $subdir/Chart.yaml says version $says, not $version" \
        "(docs/helm.md, \"The Karpenter chart version\")" >&2
      exit 1
    fi
    sed -i -E "s/^version: .*/version: $version/; s/^appVersion: .*/appVersion: $version/" \
      "$partial/chart/Chart.yaml"
    echo "$says" > "$partial/chart-yaml-said"
  fi
  if [ "$name" = cilium ]; then
    mkdir -p "$partial/crds"
    cp "$src"/pkg/k8s/apis/cilium.io/client/crds/v2/*.yaml \
       "$src"/pkg/k8s/apis/cilium.io/client/crds/v2alpha1/*.yaml "$partial/crds/"
  fi
  echo "$module@v$version $subdir" > "$partial/.complete"
  rm -rf "$dest" && mv "$partial" "$dest"
}

mkdir -p "$CHARTS"
take_chart cilium "$CILIUM_VERSION" github.com/cilium/cilium install/kubernetes/cilium
take_chart karpenter "$KARPENTER_VERSION" github.com/aws/karpenter-provider-aws charts/karpenter
take_chart nvidia-device-plugin "$NVIDIA_VERSION" github.com/NVIDIA/k8s-device-plugin \
  deployments/helm/nvidia-device-plugin
log "done: $CACHE_ROOT"
report
