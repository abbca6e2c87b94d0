#!/usr/bin/env bash
# Debian packages the kubelet-backed cluster and its image build use; installs the missing ones.
#   containerd runc containernetworking-plugins: the node's runtime and pod network (bridge CNI)
#   iptables conntrack ipset: kube-proxy and kube-router (NetworkPolicy)
#   nftables: `nft`, with which the cluster's teardown drops the nf_tables tables iptables made
#   mmdebstrap: the Debian root filesystem in place of python:3.11-slim
#   busybox-static gcc libc6-dev: the workload image and the pod sandbox (pause) binary
set -euo pipefail
packages=(containerd runc containernetworking-plugins iptables conntrack ipset nftables mmdebstrap
  busybox-static gcc libc6-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "cluster: installing ${missing[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
