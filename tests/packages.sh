#!/usr/bin/env bash
# The Debian packages a group of targets runs, installed when missing:
#   tests/packages.sh cluster   the kubelet-backed cluster and its image build (make test, demo)
#   tests/packages.sh deploy    the chart tests (make e2e-fast, part of make test)
#   tests/packages.sh bench     the benchmarks (not part of make test)
# Each entry is "package:commands run from it" (by the suites, or by the node's components).
# tests/unit/test_install_steps.py reads these lists: a command the suites, benchmarks or make
# targets start whose package is neither here nor essential fails that test, not a fresh machine.
set -euo pipefail
case ${1:-} in
  cluster) entries=(
    "containerd:containerd ctr"                 # the node's runtime
    "runc:runc"
    "containernetworking-plugins:"              # the pod network (bridge CNI, /usr/lib/cni)
    "iptables:iptables ip6tables iptables-save ip6tables-save iptables-restore ip6tables-restore"
    "conntrack:conntrack"                       # kube-proxy
    "ipset:ipset"                               # kube-router (NetworkPolicy), and the teardown
    "nftables:nft"                              # the teardown drops the tables iptables made
    "iproute2:ip"                               # the node's bridges and routes, pod netns
    "mmdebstrap:mmdebstrap"                     # the Debian root filesystem of the images
    "busybox-static:busybox"                    # the workload image
    "gcc:gcc"                                   # the pod sandbox (pause) binary
    "libc6-dev:"
    "prometheus:prometheus"                     # the monitoring scenario's Prometheus image
  ) ;;
  deploy) entries=(
    "prometheus:promtool"                       # the charts' alert rules and dashboard queries
  ) ;;
  bench) entries=(
    "nginx:nginx"                               # the reference proxy and the fast backend
    "valgrind:valgrind callgrind_control"       # make bench-instructions
    "git:git"                                   # bench-instructions --baseline (a worktree)
  ) ;;
  *) echo "usage: $0 cluster, deploy or bench" >&2; exit 2 ;;
esac
missing=()
for entry in "${entries[@]}"; do
  p=${entry%%:*}
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "$1: installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
