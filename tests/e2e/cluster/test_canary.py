"""Upgrade one tenant's KEDA, a canary (issue 22, item 3; deploy/README.md "Upgrading one
tenant's KEDA (canary)"): alpha (process mode) moves from KEDA_VERSION to KEDA_PREVIOUS_VERSION
with one value, `helm upgrade --reuse-values --set keda.version=...`, and is rolled back with
`helm rollback`, the real upgrade direction (previous to current). Both tenants' metrics are
read at 10 Hz through kube-apiserver throughout, and beta's HPA scales meanwhile.

Runs on the installed cluster of the session (tests/e2e/cluster/conftest.py)."""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.deploy.charts import BUILD_SCRIPT, TENANT_CHART, versions
from tests.e2e.cluster.install import APPS, VALUES, Installed, tenant_namespace
from tests.e2e.cluster.reads import MetricReader
from tests.e2e.images.build import Builder, Images, KedaImages
from tests.e2e.stack import wait_for

pytestmark = pytest.mark.e2e

CANARY, OTHER = "alpha", "beta"
COMPONENTS = ("operator", "metrics-apiserver", "admission-webhooks")
# The other tenant's second scaled app, whose value changes while the canary moves.
PROBE = "canary-probe"


@pytest.fixture(scope="module")
def previous_keda(installed: Installed) -> KedaImages:
    """KEDA_PREVIOUS_VERSION's operator, adapter and webhooks, built from its module (reusing
    KEDA_VERSION's Go build cache: same go.mod), in images imported into the node."""
    version = versions()["KEDA_PREVIOUS_VERSION"]
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "keda-previous", "keda-adapter-previous", "keda-webhooks-previous"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        timeout=1800,
    )  # fmt: skip
    bin_dir = Path(done.stdout.strip().splitlines()[-1])
    built = time.monotonic()
    images = Builder(bin_dir, version, keda_suffix=f"-{version}").keda_release()
    for image in images.all():
        installed.cluster.ctr("images", "import", str(image.archive))
    print(
        f"\n[canary] KEDA {version}: binaries {built - started:.1f}s, images and import "
        f"{time.monotonic() - built:.1f}s"
    )
    # One value moves the tenant: the tenant image's tag differs in its KEDA version only.
    assert Images.tenant_tag_prefix(images.tenant) == Images.tenant_tag_prefix(
        installed.images.tenant
    )
    return images


def pod_images(installed: Installed, tenant: str) -> dict[str, set[str]]:
    """component -> the images of its pods' containers (terminating pods included)."""
    done = installed.cluster.kubectl("-n", tenant_namespace(tenant), "get", "pods", "-o", "json")
    found: dict[str, set[str]] = {component: set() for component in COMPONENTS}
    for pod in json.loads(done.stdout)["items"]:
        component = pod["metadata"].get("labels", {}).get("app.kubernetes.io/component")
        if component in found:
            found[component] |= {c["image"] for c in pod["spec"]["containers"]}
    return found


def running(installed: Installed, tenant: str, keda: KedaImages) -> bool:
    """Whether every KEDA pod of the tenant (and only those) runs `keda`'s images."""
    want = {
        "operator": {keda.tenant.reference},
        "metrics-apiserver": {keda.metrics_apiserver.reference},
        "admission-webhooks": {keda.webhooks.reference},
    }
    return pod_images(installed, tenant) == want


def logged_keda_versions(installed: Installed, tenant: str) -> dict[str, str]:
    """What KEDA's operator and adapter say they are at start ("KEDA Version: ..."), per pod
    of the current ReplicaSets."""
    namespace = tenant_namespace(tenant)
    done = installed.cluster.kubectl("-n", namespace, "get", "pods", "-o", "json")
    said = {}
    for pod in json.loads(done.stdout)["items"]:
        meta = pod["metadata"]
        container = {
            "operator": "keda-operator",
            "metrics-apiserver": "keda-operator-metrics-apiserver",
        }.get(meta.get("labels", {}).get("app.kubernetes.io/component", ""))
        if container is None or meta.get("deletionTimestamp"):
            continue
        logs = installed.cluster.kubectl(
            "-n", namespace, "logs", meta["name"], "-c", container, check=False
        ).stdout
        for line in logs.splitlines():
            if "KEDA Version: " in line:
                text = json.loads(line)["msg"] if line.startswith("{") else line
                said[meta["name"]] = text.split("KEDA Version: ", 1)[1].split()[0].strip('"')
                break
    return said


def helm_upgrade(installed: Installed, *args: str) -> None:
    installed.cluster.helm(
        "upgrade", "keda", str(TENANT_CHART), "-n", tenant_namespace(CANARY), "--reuse-values",
        *args, "--wait", "--timeout=5m",
    )  # fmt: skip


def helm_rollback(installed: Installed) -> None:
    """Back to the release's revision before the last upgrade."""
    installed.cluster.helm(
        "rollback", "keda", "-n", tenant_namespace(CANARY), "--wait", "--timeout=5m"
    )


def test_canary_one_tenant_moves_to_another_keda_and_back(
    installed: Installed, previous_keda: KedaImages
) -> None:
    current = versions()["KEDA_VERSION"].lstrip("v")
    previous = previous_keda.version
    current_images = KedaImages(
        current,
        installed.images.tenant,
        installed.images.metrics_apiserver,
        installed.images.webhooks,
    )
    for tenant, namespace in APPS.items():
        wait_for(
            lambda n=namespace, t=tenant: installed.metric_value(n) == str(VALUES[t]),
            f"{namespace} served",
            180,
            1,
        )
    assert running(installed, CANARY, current_images), pod_images(installed, CANARY)
    other = APPS[OTHER]
    installed.scaled_app(other, 4, name=PROBE)  # 4 / target 2: two replicas
    try:
        wait_for(lambda: installed.replicas(other, PROBE) == (2, 2), f"{OTHER}: 2", 240, 1)
        # Explicit tags naming two KEDA versions are refused before anything changes.
        with pytest.raises(RuntimeError, match="different KEDA versions"):
            helm_upgrade(installed, "--set", f"images.metricsApiServer.tag={previous}")

        with (
            MetricReader(installed.cluster, APPS[CANARY], str(VALUES[CANARY])) as canary,
            MetricReader(installed.cluster, other, str(VALUES[OTHER])) as steady,
        ):
            time.sleep(2)
            assert canary.good_streak(0, 10), "the canary's reads fail before any step"
            assert steady.good_streak(0, 10), "the other tenant's reads fail before any step"
            report = []
            for step, version, keda in (
                ("upgrade", previous, previous_keda),
                ("rollback", current, current_images),
            ):
                since = time.monotonic()
                with ThreadPoolExecutor(1, thread_name_prefix=step) as pool:
                    if step == "upgrade":
                        moved = pool.submit(
                            helm_upgrade, installed, "--set", f"keda.version={version}"
                        )
                    else:
                        moved = pool.submit(helm_rollback, installed)
                    # The other tenant's HPA scales while the canary moves: 4 -> 12 -> 4.
                    value, want = (12, 6) if step == "upgrade" else (4, 2)
                    installed.set_value(other, value, name=PROBE)
                    wait_for(
                        lambda w=want: installed.replicas(other, PROBE) == (w, w),
                        f"{OTHER}'s HPA at {want} during the {step}",
                        240,
                        1,
                    )
                    moved.result()
                wait_for(
                    lambda k=keda: running(installed, CANARY, k),
                    f"{CANARY} on KEDA {version} only",
                    180,
                    1,
                )
                said = wait_for(
                    lambda: (v := logged_keda_versions(installed, CANARY)) and len(v) >= 2 and v,
                    f"{CANARY}'s KEDA saying its version",
                    120,
                    1,
                )
                # The suite's KEDA_VERSION binaries are unstamped ("main", KEDA's default);
                # KEDA_PREVIOUS_VERSION's are stamped like KEDA's release build.
                expected = {previous} if step == "upgrade" else {current, "main"}
                assert set(said.values()) <= expected, said
                wait_for(
                    lambda s=since: canary.good_streak(s, 20), f"{CANARY} reads after {step}", 60
                )
                report.append(
                    f"{step} to KEDA {version}: {time.monotonic() - since:.1f}s; "
                    f"{CANARY} failed {len(canary.failures(since))}, longest read "
                    f"{canary.longest_s(since):.3f}s; {OTHER} failed "
                    f"{len(steady.failures(since))}, longest read {steady.longest_s(since):.3f}s; "
                    f"KEDA says {sorted(set(said.values()))}"
                )
                print(f"\n[canary] {report[-1]}")
            reads = {CANARY: canary.snapshot(), OTHER: steady.snapshot()}
            failures = {CANARY: canary.failures(), OTHER: steady.failures()}
        print(f"[canary] reads: { {t: len(r) for t, r in reads.items()} }")
        for tenant, failed_reads in failures.items():
            for read in failed_reads[:5]:
                print(f"[canary]   {tenant} failed: {read.what}")
        assert all(len(r) > 200 for r in reads.values()), {t: len(r) for t, r in reads.items()}
        assert failures[OTHER] == []
        # The canary's own reads too, through two rollouts of its metrics server (the upgrade
        # and the rollback): the router dials again while the Service still refuses.
        # Open (issue 22): see test_upgrade; two rollouts, each within 3 s of reads.
        assert len(failures[CANARY]) <= 60, failures[CANARY]
    finally:
        installed.cluster.kubectl(
            "-n", other, "delete", f"scaledobject/{PROBE}", f"deploy/{PROBE}",
            f"deploy/{PROBE}-metric", f"service/{PROBE}-metric", "--ignore-not-found", "--wait=false",
        )  # fmt: skip
