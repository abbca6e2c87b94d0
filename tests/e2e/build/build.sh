#!/usr/bin/env bash
# Build the real components for the end-to-end suite from their Go modules, into a cache
# outside the checkout keyed by version, so reruns take seconds.
#
#   tests/e2e/build/build.sh [component ...]   (default: all)
#
# Components: etcd kube-apiserver kube-controller-manager kubectl keda keda-adapter helm
# custom-metrics-test-adapter, and for the kubelet-backed cluster kubelet kube-scheduler kube-proxy coredns kube-router keda-webhooks
# keda-previous keda-adapter-previous keda-webhooks-previous (KEDA_PREVIOUS_VERSION: only when named,
# by the canary scenario, so other runs never pay for them).
# Progress goes to stderr; the last line of stdout is the bin directory.
#
# `go install pkg@version` refuses modules with replace directives (kubernetes and KEDA
# have them), so each is built inside a small wrapper module generated here: it requires
# the target and carries the replace lines derived from the target's own go.mod.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

cache=${KEDA_TENANCY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/keda-tenancy}
key="v3_k8s-${KUBERNETES_VERSION}_keda-${KEDA_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}_coredns-${COREDNS_VERSION}_kube-router-${KUBE_ROUTER_VERSION}"
bin="$cache/bin/$key"
src="$cache/src"
mkdir -p "$bin" "$src"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
flags=(-trimpath -ldflags=-s\ -w)

log() { printf '[build %5ss] %s\n' "$SECONDS" "$*" >&2; }

module_gomod() {  # path of a module's go.mod in the module cache (downloads it)
  go mod download -json "$1@$2" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p'
}
module_dir() {
  go mod download -json "$1@$2" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p'
}

wrapper() {  # wrapper NAME GO_VERSION REQUIRE... ; stdin: extra go.mod lines
  local dir="$src/$1"
  mkdir -p "$dir"
  {
    echo "module keda-tenancy.e2e/$1"
    echo
    echo "go $2"
    shift 2
    for req in "$@"; do echo "require $req"; done
    cat
  } > "$dir/go.mod.new"
  if ! cmp -s "$dir/go.mod.new" "$dir/go.mod.src" 2>/dev/null; then
    mv "$dir/go.mod.new" "$dir/go.mod"
    cp "$dir/go.mod" "$dir/go.mod.src"
    rm -f "$dir/go.sum"
  else
    rm "$dir/go.mod.new"
  fi
  echo "$dir"
}

kubernetes_wrapper() {
  local gomod staging
  gomod=$(module_gomod k8s.io/kubernetes "$KUBERNETES_VERSION")
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
  # ./staging paths; published, they carry v0.<minor>.<patch> for v1.<minor>.<patch>.
  staging="v0.${KUBERNETES_VERSION#v1.}"
  sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/src/.*#\1#p' "$gomod" |
    awk -v v="$staging" 'BEGIN { print "replace (" } { print "\t" $1 " => " $1 " " v } END { print ")" }' |
    wrapper kubernetes 1.25.0 "k8s.io/kubernetes $KUBERNETES_VERSION"
}

keda_wrapper() {  # keda_wrapper [VERSION WRAPPER_NAME]: default KEDA_VERSION in "keda"
  local version=${1:-$KEDA_VERSION} name=${2:-keda} gomod
  gomod=$(module_gomod github.com/kedacore/keda/v2 "$version")
  # KEDA pins k8s.io/* and controller-runtime in its replace blocks: copy them verbatim.
  awk '/^replace \(/{on=1; print; next} on{print} on && /^\)/{on=0}
       /^replace [^(]/{print}' "$gomod" |
    wrapper "$name" 1.26.0 "github.com/kedacore/keda/v2 $version"
}

etcd_wrapper() {
  local dir
  dir=$(wrapper etcd 1.25.0 "go.etcd.io/etcd/server/v3 $ETCD_VERSION" </dev/null)
  cat > "$dir/main.go" <<'GO'
// The etcd server: the same entry point as etcd's own binary, built from its server module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  echo "$dir"
}

test_adapter_wrapper() {
  local dir
  dir=$(wrapper test-adapter 1.25.0 \
    "sigs.k8s.io/custom-metrics-apiserver $CUSTOM_METRICS_APISERVER_VERSION" </dev/null)
  # The module's own test-adapter main serves its write endpoint on :8080 of every address;
  # this one is the same adapter (the module's fake provider, custom and external metrics)
  # with that endpoint on an address the suite chooses, on loopback.
  cat > "$dir/main.go" <<'GO'
// The sample test adapter of custom-metrics-apiserver, its write endpoint on --write-metrics-address.
package main

import (
	"context"
	"net/http"
	"os"
	"time"

	"github.com/emicklei/go-restful/v3"
	"k8s.io/component-base/logs"
	"k8s.io/component-base/metrics/legacyregistry"
	"k8s.io/klog/v2"

	"sigs.k8s.io/custom-metrics-apiserver/pkg/apiserver/metrics"
	basecmd "sigs.k8s.io/custom-metrics-apiserver/pkg/cmd"
	fakeprov "sigs.k8s.io/custom-metrics-apiserver/test-adapter/provider"
)

func main() {
	logs.InitLogs()
	defer logs.FlushLogs()

	cmd := &basecmd.AdapterBase{Name: "test-adapter"}
	writeAddress := "127.0.0.1:8080"
	cmd.Flags().StringVar(&writeAddress, "write-metrics-address", writeAddress,
		"address of the plain HTTP endpoint that sets custom metric values")
	logs.AddFlags(cmd.Flags())
	if err := cmd.Flags().Parse(os.Args); err != nil {
		klog.Fatalf("unable to parse flags: %v", err)
	}
	client, err := cmd.DynamicClient()
	if err != nil {
		klog.Fatalf("unable to construct dynamic client: %v", err)
	}
	mapper, err := cmd.RESTMapper()
	if err != nil {
		klog.Fatalf("unable to construct discovery REST mapper: %v", err)
	}
	provider, webService := fakeprov.NewFakeProvider(client, mapper)
	cmd.WithCustomMetrics(provider)
	cmd.WithExternalMetrics(provider)
	if err := metrics.RegisterMetrics(legacyregistry.Register); err != nil {
		klog.Fatalf("unable to register metrics: %v", err)
	}
	restful.DefaultContainer.Add(webService)
	go func() {
		server := &http.Server{Addr: writeAddress, ReadHeaderTimeout: 3 * time.Second}
		klog.Fatal(server.ListenAndServe())
	}()
	if err := cmd.Run(context.Background()); err != nil {
		klog.Fatalf("unable to run custom metrics adapter: %v", err)
	}
}
GO
  echo "$dir"
}

build() {  # build NAME DIR PACKAGE [extra go build flags]
  local name=$1 dir=$2 pkg=$3
  shift 3
  if [ -x "$bin/$name" ]; then
    log "$name: cached"
    return
  fi
  local started=$SECONDS
  log "$name: building $pkg"
  (cd "$dir" && go build "${flags[@]}" "$@" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
  log "$name: built in $((SECONDS - started))s"
}

go_install() {  # go_install NAME MODULE_PATH/CMD VERSION: modules without replace directives
  local name=$1 pkg=$2 version=$3
  if [ -x "$bin/$name" ]; then
    log "$name: cached"
    return
  fi
  local started=$SECONDS tmp="$bin/.gobin-$name"
  log "$name: installing $pkg@$version"
  mkdir -p "$tmp"
  GOBIN="$tmp" go install "${flags[@]}" "$pkg@$version"
  mv "$tmp/$(basename "$pkg")" "$bin/$name"
  rmdir "$tmp"
  log "$name: built in $((SECONDS - started))s"
}

components=("$@")
[ ${#components[@]} -gt 0 ] || components=(etcd kube-apiserver kube-controller-manager kubectl keda keda-adapter helm
  custom-metrics-test-adapter kubelet kube-scheduler kube-proxy coredns kube-router keda-webhooks)
for component in "${components[@]}"; do
  case $component in
    etcd) build etcd "$(etcd_wrapper)" . ;;
    kube-apiserver | kube-controller-manager | kubectl | kubelet | kube-scheduler | kube-proxy)
      # Stamp the version, as Kubernetes' own build does, so clients see v1.35.x, not v0.0.0.
      minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
      build "$component" "$(kubernetes_wrapper)" "k8s.io/kubernetes/cmd/$component" \
        "-ldflags=-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor" ;;
    keda) build keda "$(keda_wrapper)" github.com/kedacore/keda/v2/cmd/operator ;;
    keda-adapter) build keda-adapter "$(keda_wrapper)" github.com/kedacore/keda/v2/cmd/adapter ;;
    keda-webhooks) build keda-webhooks "$(keda_wrapper)" github.com/kedacore/keda/v2/cmd/webhooks ;;
    keda-previous | keda-adapter-previous | keda-webhooks-previous)
      # The canary scenario's second KEDA (issue 22): its version in the binary's name, not
      # in the cache key (that would rebuild everything); its own wrapper module, whose
      # dependencies (KEDA_PREVIOUS_VERSION has the same go.mod) come from the Go build cache
      # of KEDA_VERSION. Stamped like KEDA's release build, so it logs its version.
      cmd=${component#keda-}; cmd=${cmd%-previous}; [ "$component" != keda-previous ] || cmd=operator
      build "${component%-previous}-$KEDA_PREVIOUS_VERSION" \
        "$(keda_wrapper "$KEDA_PREVIOUS_VERSION" "keda-$KEDA_PREVIOUS_VERSION")" \
        "github.com/kedacore/keda/v2/cmd/$cmd" \
        "-ldflags=-s -w -X github.com/kedacore/keda/v2/version.Version=${KEDA_PREVIOUS_VERSION#v}" ;;
    custom-metrics-test-adapter)
      # Its version is not in the cache key (that would rebuild everything): in its name.
      build "custom-metrics-test-adapter-$CUSTOM_METRICS_APISERVER_VERSION" "$(test_adapter_wrapper)" . ;;
    helm) go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" ;;
    coredns) go_install coredns github.com/coredns/coredns "$COREDNS_VERSION" ;;
    kube-router) go_install kube-router github.com/cloudnativelabs/kube-router/v2/cmd/kube-router "$KUBE_ROUTER_VERSION" ;;
    *) echo "unknown component: $component" >&2; exit 2 ;;
  esac
done
# KEDA's CRDs ship in its module; the harness applies them from there.
module_dir github.com/kedacore/keda/v2 "$KEDA_VERSION" | sed 's#$#/config/crd/bases#' > "$bin/keda-crd-dir.txt"
log "all built"
echo "$bin"
