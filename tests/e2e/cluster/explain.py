"""`keda-tenancy-router explain` run in the router pods, as an operator would run it."""

from __future__ import annotations

from tests.deploy.charts import ROUTER_NAMESPACE
from tests.e2e.cluster.install import Installed


def explain(installed: Installed, namespace: str) -> dict[str, str]:
    """`keda-tenancy-router explain NAMESPACE` run in each router pod: pod -> its verdict."""
    cluster = installed.cluster
    pods = cluster.kubectl(
        "-n", ROUTER_NAMESPACE, "get", "pods", "-l", "app.kubernetes.io/component=router",
        "--field-selector=status.phase=Running", "-o", "name",
    ).stdout.split()  # fmt: skip
    verdicts = {}
    for pod in pods:
        done = cluster.kubectl(
            "-n", ROUTER_NAMESPACE, "exec", pod, "--", "keda-tenancy-router", "explain", namespace,
            check=False,
        )  # fmt: skip
        verdicts[pod] = (
            done.stdout.splitlines()[0] if done.stdout else f"error: {done.stderr.strip()}"
        )
    print(f"\n[cluster] explain {namespace}: {verdicts}")
    return verdicts
