"""The charts of the previous release of this repository, installed the way the suite installs
the current ones (same values, same images), so a scenario can `helm upgrade` from them."""

from __future__ import annotations

import io
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from tests.deploy.charts import ROUTER_NAMESPACE, ROUTER_RELEASE
from tests.e2e.cluster.install import APPS, HNC_ROOT, Installed, tenant_namespace
from tests.e2e.images.build import Images
from tests.e2e.stack import wait_for

# The commit whose charts are "the previous release" (main before issue 22's work).
PREVIOUS_RELEASE = "107a55f"
REPOSITORY = Path(__file__).resolve().parents[3]


def previous_charts(into: Path, commit: str = PREVIOUS_RELEASE) -> tuple[Path, Path]:
    """`git archive <commit> deploy/charts` unpacked under `into`: (router chart, tenant chart).
    Needs the commit in the checkout's history (a shallow clone must fetch it)."""

    def archive() -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["git", "-C", str(REPOSITORY), "archive", commit, "deploy/charts"],
            capture_output=True,
            check=False,
        )

    done = archive()
    if done.returncode != 0:
        # A shallow clone: the commit from where it was cloned from, when that can be reached.
        subprocess.run(
            ["git", "-C", str(REPOSITORY), "fetch", "--quiet", "origin", commit],
            capture_output=True,
            check=False,
            timeout=120,
        )
        done = archive()
    if done.returncode != 0:
        raise RuntimeError(
            f"the previous release's charts ({commit}) are not in this checkout's history: "
            f"{done.stderr.decode().strip()} (git fetch --unshallow)"
        )
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(into, filter="data")
    charts = into / "deploy" / "charts"
    return charts / "keda-tenancy-router", charts / "keda-tenancy-tenant"


@dataclass
class PreviousRelease(Installed):
    """`Installed.everything()` with the previous release's charts. Namespaces are applied, not
    created: the scenario may run after others that left some of them (and waits out any still
    terminating)."""

    router_chart: Path = Path()
    tenant_chart: Path = Path()

    def tenant_args(self, tenant: str) -> list[str]:
        # The previous charts know images.tenant.tag only (tagPrefix and keda.version came
        # with the canary): the same image, named by its full tag.
        image = self.images.tenant
        prefix = f"images.tenant.tagPrefix={Images.tenant_tag_prefix(image)}"
        return [
            f"images.tenant.tag={Images.tag(image)}" if a == prefix else a
            for a in super().tenant_args(tenant)
        ]

    def wait_no_namespace_terminating(self) -> None:
        names = [ROUTER_NAMESPACE, HNC_ROOT, *APPS.values(), *map(tenant_namespace, APPS)]

        def settled() -> bool:
            done = self.cluster.kubectl(
                "get", "namespaces", *names, "--ignore-not-found",
                "-o", "jsonpath={.items[*].status.phase}",
            )  # fmt: skip
            return "Terminating" not in done.stdout

        wait_for(settled, "namespaces left by earlier scenarios deleted", 180, 1)

    def namespace(self, name: str) -> None:
        self.cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def router(self) -> None:
        self.namespace(ROUTER_NAMESPACE)
        self.cluster.helm(
            "install", ROUTER_RELEASE, str(self.router_chart), "-n", ROUTER_NAMESPACE,
            *self.router_args(), "--wait", "--timeout=5m",
        )  # fmt: skip

    def tenant(self, tenant: str) -> None:
        namespace = tenant_namespace(tenant)
        self.namespace(namespace)
        self.cluster.helm(
            "install", "keda", str(self.tenant_chart), "-n", namespace, *self.tenant_args(tenant),
            "--wait", "--timeout=5m",
        )  # fmt: skip
