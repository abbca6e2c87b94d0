"""Build (or reuse) every image the cluster suite imports, as OCI archives in the cache.

    python -m tests.e2e.images BIN_DIR      # prints `reference archive` lines

Archives are keyed by what goes into them (Dockerfile, the build context after
.dockerignore, base images, binaries), so a warm run only hashes the sources.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.e2e.images.bases import Bases, digest_of, remove_unmounted
from tests.e2e.images.dockerfile import Build, Image, context_files
from tests.e2e.images.oci import write_archive

ROOT = Path(__file__).resolve().parents[3]
# Bumped when the way images are made changes (the cache key cannot see this code).
RECIPE = "3"


def cache_dir() -> Path:
    import os  # noqa: PLC0415

    base = os.environ.get("KEDA_TENANCY_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "keda-tenancy"
    )
    return Path(base) / "images"


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class BuiltImage:
    reference: str  # as the charts and manifests name it
    archive: Path


@dataclass(frozen=True)
class Images:
    router: BuiltImage
    tenant: BuiltImage
    metrics_apiserver: BuiltImage
    webhooks: BuiltImage
    pause: BuiltImage
    busybox: BuiltImage
    python: BuiltImage
    coredns: BuiltImage

    def all(self) -> list[BuiltImage]:
        return [getattr(self, name) for name in self.__dataclass_fields__]

    @staticmethod
    def tag(image: BuiltImage) -> str:
        return image.reference.rsplit(":", 1)[1]

    @staticmethod
    def tenant_tag_prefix(image: BuiltImage) -> str:
        """The tenant chart's images.tenant.tagPrefix for the tenant image: its tag is
        <tagPrefix>-keda<KEDA version>, as the chart derives it from keda.version."""
        return Images.tag(image).rsplit("-keda", 1)[0]


@dataclass(frozen=True)
class KedaImages:
    """One KEDA release's images for a tenant: keda-tenancy-keda built with that KEDA_VERSION,
    and KEDA's upstream metrics-server and webhook images."""

    version: str  # as the tenant chart's keda.version: 2.20.1
    tenant: BuiltImage
    metrics_apiserver: BuiltImage
    webhooks: BuiltImage

    def all(self) -> list[BuiltImage]:
        return [self.tenant, self.metrics_apiserver, self.webhooks]


def context_digest(dockerfile: Path, context: Path) -> str:
    build = Build(dockerfile, context, Path("/nonexistent"), {})
    parts: list[str | bytes] = [dockerfile.read_bytes()]
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if ignore.exists():
        parts.append(ignore.read_bytes())
    for rel in context_files(context, build.rules):
        parts += [rel, (context / rel).read_bytes()]
    return digest_of(*parts)


def safe_name(reference: str) -> str:
    return reference.replace("/", "_").replace(":", "_")


class Builder:
    """`keda_suffix`: build another KEDA's images from build.sh's `keda<suffix>`,
    `keda-adapter<suffix>`, ... binaries (the canary's `-v2.20.1`); see keda_release()."""

    def __init__(
        self, bin_dir: Path, keda_version: str, cache: Path | None = None, keda_suffix: str = ""
    ) -> None:
        self.cache = cache or cache_dir()
        self.work = self.cache / "work"
        self.archives = self.cache / "archives"
        self.bases = Bases(self.cache, bin_dir, keda_version, log, keda_suffix)
        self.bin = bin_dir
        self.keda_tag = keda_version.lstrip("v")
        self.keda_suffix = keda_suffix

    def _archive(
        self,
        reference: str,
        key: str,
        make: Callable[[Path], Image],
        family: str | None = None,
    ) -> BuiltImage:
        """`family`: the glob of the archives this one replaces (default: every archive of the
        same repository)."""
        safe = safe_name(reference)
        archive = self.archives / f"{safe}-{key}.oci.tar"
        if not archive.exists():
            started = time.monotonic()
            work = self.work / safe
            if work.exists():
                remove_unmounted(work)
            work.mkdir(parents=True)
            try:
                image = make(work)
                write_archive(image.rootfs, image.config, [reference], archive)
            finally:
                remove_unmounted(work)
            log(
                f"{reference}: built in {time.monotonic() - started:.1f}s ({archive.stat().st_size >> 20} MB)"
            )
        else:
            log(f"{reference}: cached")
        # Earlier builds of the same image are of no further use: keep the cache bounded.
        if family is None:
            family = safe_name(reference.rsplit(":", 1)[0]) + "_*"
        for stale in self.archives.glob(f"{family}.oci.tar"):
            if stale != archive:
                stale.unlink()
        return BuiltImage(reference, archive)

    def static(
        self,
        reference: str,
        builder: Callable[[Path], Image],
        *inputs: str,
        family: str | None = None,
    ) -> BuiltImage:
        key = digest_of(RECIPE, reference, str(self.bin), *inputs)
        return self._archive(reference, key, lambda work: builder(work / "rootfs"), family)

    def dockerfile(self, repository: str, dockerfile: Path, keda_tag: bool = False) -> BuiltImage:
        """`keda_tag`: tag it <key>-keda<version> (the tenant chart's tag for keda.version),
        one archive per KEDA version."""
        key = digest_of(
            RECIPE, context_digest(dockerfile, ROOT), str(self.bin), self.bases.debian_key()
        )
        reference = f"{repository}:e2e-{key[:12]}"
        family = None
        if keda_tag:
            # The same tag prefix for every KEDA version (the chart's images.tenant.tagPrefix),
            # so keda.version alone picks among them; each version its own archive.
            reference += f"-keda{self.keda_tag}"
            family = f"{safe_name(repository)}_e2e-*-keda{self.keda_tag}-*"
            key = digest_of(key, self.keda_tag, self.keda_suffix)

        def make(work: Path) -> Image:
            return Build(
                dockerfile,
                ROOT,
                work,
                self.bases.upstream(),
                build_args={"KEDA_VERSION": self.keda_tag},
                log=lambda line: log(f"{repository}: {line}"),
            ).run()

        return self._archive(reference, key, make, family)

    def keda_upstream(self, reference: str, builder: Callable[[Path], Image]) -> BuiltImage:
        """One of KEDA's own images: its tag is the KEDA version, each version its archive."""
        return self.static(reference, builder, family=f"{safe_name(reference)}-*")

    def keda_release(self) -> KedaImages:
        """This builder's KEDA version's images (each KEDA version its own archives)."""
        b, tag, upstream = self.bases, self.keda_tag, self.keda_upstream
        return KedaImages(
            version=tag,
            tenant=self.dockerfile(
                "keda-tenancy-keda", ROOT / "deploy/images/keda-tenant.Dockerfile", keda_tag=True
            ),
            metrics_apiserver=upstream(
                f"ghcr.io/kedacore/keda-metrics-apiserver:{tag}", b.keda_metrics_apiserver
            ),
            webhooks=upstream(
                f"ghcr.io/kedacore/keda-admission-webhooks:{tag}", b.keda_admission_webhooks
            ),
        )

    def all(self) -> Images:
        b, keda = self.bases, self.keda_release()
        return Images(
            router=self.dockerfile("keda-tenancy-router", ROOT / "deploy/images/router.Dockerfile"),
            tenant=keda.tenant,
            metrics_apiserver=keda.metrics_apiserver,
            webhooks=keda.webhooks,
            pause=self.static("keda-tenancy.local/pause:3.10", b.pause),
            busybox=self.static("keda-tenancy.local/busybox:e2e", b.busybox),
            python=self.static("keda-tenancy.local/python:3.11", b.python_slim, b.debian_key()),
            coredns=self.static("keda-tenancy.local/coredns:e2e", b.coredns),
        )


def main(argv: list[str]) -> None:
    from tests.deploy.charts import versions  # noqa: PLC0415

    images = Builder(Path(argv[0]), versions()["KEDA_VERSION"]).all()
    for image in images.all():
        print(image.reference, image.archive)


if __name__ == "__main__":
    main(sys.argv[1:])
