#!/usr/bin/env bash
# Build the local control plane from Go modules at pinned versions, once, into a cache
# outside the repository keyed by every version; a second run is a no-op.
#
#   kube-apiserver, kube-scheduler, kube-controller-manager  (k8s.io/kubernetes)
#   etcd                                                    (go.etcd.io/etcd/server/v3)
#   kwok                                                    (sigs.k8s.io/kwok)
#   karpenter-kwok                                          (sigs.k8s.io/karpenter/kwok)
#   CRDs: NodePool, NodeClaim, KWOKNodeClass (karpenter), EC2NodeClass (karpenter-provider-aws)
#   KWOK stages: node-initialize, node-heartbeat, pod-ready, pod-complete, pod-delete
#
# Prints the cache directory on its last line. RUNNER_PLATFORM_CACHE overrides the root.
set -euo pipefail

K8S_VERSION=v1.34.4
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
KARPENTER_VERSION=v1.14.1
AWS_PROVIDER_VERSION=v1.15.2

CACHE_ROOT="${RUNNER_PLATFORM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/runner-platform}"
LAYOUT=2  # bump when what the cache holds changes for the same versions
KEY="layout-${LAYOUT}_k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_karpenter-${KARPENTER_VERSION}_aws-${AWS_PROVIDER_VERSION}"
DEST="$CACHE_ROOT/$KEY"

if [ -f "$DEST/.complete" ]; then
  echo "$DEST"
  exit 0
fi

command -v go >/dev/null || { echo "build-k8s: Go is required (https://go.dev/doc/install)" >&2; exit 1; }
# The machine's Go builds all of these; never fetch a toolchain implicitly.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
started=$(date +%s)
partial="$DEST.partial"
rm -rf "$partial"
mkdir -p "$partial/bin" "$partial/crds" "$partial/kwok-stages"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

log() { echo "build-k8s: $* ($(( $(date +%s) - started ))s)" >&2; }
# Progress on stderr (stdout carries only the cache path): which step of how many, and
# every 30 s while a long download or build is still going.
STEPS=8
step=0
current=""
step() { step=$((step + 1)); current="$*"; log "[$step/$STEPS] $current"; }
busy() {  # busy CMD...: run CMD in the background, saying now and then that it still runs
  "$@" &
  local pid=$! waited=0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    waited=$((waited + 1))
    if (( waited % 30 == 0 )) && kill -0 "$pid" 2>/dev/null; then
      log "[$step/$STEPS] $current: still going"
    fi
  done
  wait "$pid"
}
quiet() { "$@" >/dev/null 2>&1; }  # quiet CMD...: CMD's own output away, not busy's notes
module_field() {  # module_field MODULE@VERSION FIELD: a field of `go mod download -json`
  go mod download -json "$1" | python3 -c '
import json, sys
info = json.load(sys.stdin)
if "Error" in info or sys.argv[1] not in info:
    sys.exit("build-k8s: go mod download %s: %s" % (info.get("Path"), info.get("Error")))
print(info[sys.argv[1]])' "$2"
}
module_dir() { module_field "$1" Dir; }
module_gomod() { module_field "$1" GoMod; }

wrapper() {  # a throwaway module to build another module's commands from
  rm -rf "${work:?}/$1" && mkdir -p "$work/$1" && cd "$work/$1"
  go mod init "localenv.invalid/$1" >/dev/null 2>&1
}

echo "build-k8s: building the local control plane once into $DEST (10-20 min cold on 2 cores)" >&2
step "etcd $ETCD_VERSION: download and build"
wrapper etcd
busy quiet go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
busy go build -trimpath -ldflags "-s -w" -o "$partial/bin/etcd" go.etcd.io/etcd/server/v3

step "kwok $KWOK_VERSION: download and build"
GOBIN="$work/kwok-bin" busy go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
mv "$work/kwok-bin/kwok" "$partial/bin/kwok"
kwok_dir=$(module_dir "sigs.k8s.io/kwok@$KWOK_VERSION")
# KWOK's "fast" stage set (no artificial delays); the "general" pod stages need a
# pod-create stage first and must not be mixed with these.
for stage in node/fast/node-initialize node/heartbeat/node-heartbeat pod/fast/pod-ready \
             pod/fast/pod-complete pod/fast/pod-delete; do
  cp "$kwok_dir/kustomize/stage/$stage.yaml" "$partial/kwok-stages/$(basename "$stage").yaml"
done

step "karpenter-kwok (Karpenter's KWOK provider) $KARPENTER_VERSION: download and build"
GOBIN="$work/karpenter-bin" busy go install -trimpath -ldflags "-s -w" "sigs.k8s.io/karpenter/kwok@$KARPENTER_VERSION"
mv "$work/karpenter-bin/kwok" "$partial/bin/karpenter-kwok"
karpenter_dir=$(module_dir "sigs.k8s.io/karpenter@$KARPENTER_VERSION")
cp "$karpenter_dir"/pkg/apis/crds/*.yaml "$partial/crds/"
cp "$karpenter_dir"/kwok/apis/crds/*.yaml "$partial/crds/"
# Only this module's CRD file is used (nothing of it is compiled), but its go.mod asks for
# a newer Go than the machine's, so the proxy's approved go1.27.3 toolchain downloads it.
step "EC2NodeClass CRD (karpenter-provider-aws $AWS_PROVIDER_VERSION): download"
aws_dir=$(GOTOOLCHAIN=go1.27.3 module_dir "github.com/aws/karpenter-provider-aws@$AWS_PROVIDER_VERSION")
cp "$aws_dir/pkg/apis/crds/karpenter.k8s.aws_ec2nodeclasses.yaml" "$partial/crds/"

step "kubernetes $K8S_VERSION: download the modules"
wrapper kubernetes
# k8s.io/kubernetes requires its staging modules at v0.0.0 with local replaces; point
# each at its published v0.X.Y (REFERENCE.md, "Building the real control plane").
staging="v0.${K8S_VERSION#v1.}"
gomod=$(module_gomod "k8s.io/kubernetes@$K8S_VERSION")
for mod in $(awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$gomod" | sort -u); do
  go mod edit -replace="$mod=$mod@$staging"
done
go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
commands=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-scheduler
          k8s.io/kubernetes/cmd/kube-controller-manager)
busy quiet go get "${commands[@]/%/@$K8S_VERSION}"
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
# One command at a time, so the progress names each; the build cache shares the rest.
note=" (the longest step: it compiles what all three share)"
for command in "${commands[@]}"; do
  step "$(basename "$command") $K8S_VERSION: build$note"
  note=""
  busy go build -trimpath -ldflags "$ldflags" -o "$partial/bin/$(basename "$command")" "$command"
done

"$partial/bin/kube-apiserver" --version >&2
"$partial/bin/etcd" --version | head -n 1 >&2
rm -rf "$DEST" && mv "$partial" "$DEST"
echo "$K8S_VERSION $ETCD_VERSION $KWOK_VERSION $KARPENTER_VERSION $AWS_PROVIDER_VERSION" > "$DEST/.complete"
log "done: $DEST"
echo "$DEST"
