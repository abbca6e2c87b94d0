"""keda-tenancy-operator-pod against the real kube-apiserver, as the operator's ServiceAccount
with only what docs/operator-pod.md asks (resourceNames-bound get/list/watch on the namespace
ConfigMap, get/update on the Lease): its own client over TLS with a TokenRequest token, the
fieldSelector list+watch RBAC allows, the controller's merge patches restarting KEDA with the
new WATCH_NAMESPACE, the Lease released after KEDA's exits, SIGTERM ending it with 0."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.stack import Stack, wait_for
from tests.reloader_harness import ChildLog

NS = "keda-opod"
SA = "keda-operator"
CONFIGMAP = "keda-operator-namespaces"
LEASE = "operator.keda.sh"
ENTRYPOINT = Path(sys.executable).parent / "keda-tenancy-operator-pod"


def rbac() -> list[dict[str, object]]:
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SA, "namespace": NS}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "keda-operator-pod", "namespace": NS},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [CONFIGMAP],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": ["coordination.k8s.io"],
                    "resources": ["leases"],
                    "resourceNames": [LEASE],
                    "verbs": ["get", "update"],
                },
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "keda-operator-pod", "namespace": NS},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "keda-operator-pod",
            },
            "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": NS}],
        },
    ]


def publish(stack: Stack, value: str) -> None:
    """What the platform controller writes: a merge patch of data.namespaces."""
    patch = {"data": {"namespaces": value}}
    stack.kubectl(
        "patch", "configmap", CONFIGMAP, "-n", NS, "--type=merge", "-p", json.dumps(patch)
    )


def hold_lease(stack: Stack, holder: str) -> None:
    stamp = "2026-01-01T00:00:00.000000Z"
    stack.apply(
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": LEASE, "namespace": NS},
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": 15,
                "acquireTime": stamp,
                "renewTime": stamp,
            },
        }
    )


def holder(stack: Stack) -> str:
    lease = json.loads(stack.kubectl("get", "lease", LEASE, "-n", NS, "-o", "json").stdout)
    return str(lease["spec"].get("holderIdentity") or "")


def test_follows_the_published_set_as_the_operators_service_account(
    stack: Stack, tmp_path: Path
) -> None:
    stack.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    stack.apply(*rbac())
    stack.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": CONFIGMAP,
                "namespace": NS,
                "labels": {"keda-tenancy.io/platform-controller": "namespaces"},
            },
        }
    )
    hold_lease(stack, f"{socket.gethostname()}_earlier-run")
    kubeconfig = stack.service_account_kubeconfig(NS, SA, tmp_path / "sa.kubeconfig")
    log = ChildLog(tmp_path / "child.log")
    stderr = (tmp_path / "operator-pod.log").open("w")
    process = subprocess.Popen(
        [
            str(ENTRYPOINT),
            "--mode=process",
            f"--kubeconfig={kubeconfig}",
            f"--namespaces-configmap={NS}/{CONFIGMAP}",
            f"--lease={NS}/{LEASE}",
            "--health-port=0",
            "--health-bind-address=127.0.0.1",
            "--",
            sys.executable,
            "-m",
            "tests.fakes.operator_child",
            f"--log={log.path}",
        ],
        stderr=stderr,
    )
    try:
        time.sleep(1)
        assert log.starts() == []  # no data: undecided, no KEDA
        publish(stack, "alpha-apps,beta-apps")
        wait_for(lambda: log.starts() == ["alpha-apps,beta-apps"], "KEDA started", 20)
        assert holder(stack) == ""  # the earlier run's KEDA no longer holds it
        hold_lease(stack, f"{socket.gethostname()}_now")  # our KEDA leads
        publish(stack, "alpha-apps")
        wait_for(lambda: log.starts()[-1:] == ["alpha-apps"], "KEDA restarted", 20)
        assert holder(stack) == ""  # released after the old KEDA exited
        publish(stack, "")
        wait_for(lambda: len(log.events("signal")) == 2, "KEDA stopped", 20)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stderr.close()
        stack.kubectl("delete", "namespace", NS, "--wait=false", check=False)
    lines = (tmp_path / "operator-pod.log").read_text().splitlines()
    assert not [line for line in lines if '"level":"warning"' in line or '"level":"error"' in line]
