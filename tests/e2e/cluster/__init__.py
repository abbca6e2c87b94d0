"""A kubelet-backed single-node cluster on this machine, for installing the Helm charts.

Real etcd, kube-apiserver (aggregation layer on), kube-controller-manager, kube-scheduler,
kubelet on containerd + runc, kube-proxy, CoreDNS and kube-router (NetworkPolicy only), with
pods and Services inside 198.18.0.0/15 and nothing routed or resolved off the machine.
Needs root. Only one can run at a time (fixed bridge names and addresses).
"""
