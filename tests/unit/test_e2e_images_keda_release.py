"""A second KEDA release's images for the canary scenario (issue 22): made from build.sh's
`<binary>-<version>` binaries, tagged so that the tenant chart's keda.version alone picks them,
and kept in the archive cache beside the first release's."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.images.bases import Bases
from tests.e2e.images.build import Builder, BuiltImage, Images
from tests.e2e.images.dockerfile import Image
from tests.e2e.images.oci import ImageConfig


def fake_base(target: Path) -> Image:
    (target / "bin").mkdir(parents=True)
    (target / "bin/tool").write_text("base tool")
    return Image(target, ImageConfig(cmd=["sh"]))


def test_a_second_release_is_made_from_its_own_binaries(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("keda", "keda-adapter", "keda-webhooks"):
        (bin_dir / name).write_text(f"{name} current")
        (bin_dir / f"{name}-v2.20.1").write_text(f"{name} previous")
    bases = Bases(tmp_path, bin_dir, "v2.20.1", keda_suffix="-v2.20.1")
    assert set(bases.upstream()) >= {
        "ghcr.io/kedacore/keda:2.20.1",
        "ghcr.io/kedacore/keda-metrics-apiserver:2.20.1",
        "ghcr.io/kedacore/keda-admission-webhooks:2.20.1",
    }
    for make, path in (
        (bases.keda, "keda"),
        (bases.keda_metrics_apiserver, "keda-adapter"),
        (bases.keda_admission_webhooks, "keda-admission-webhooks"),
    ):
        image = make(tmp_path / path)
        assert (image.rootfs / path).read_text().endswith(" previous")
    current = Bases(tmp_path, bin_dir, "v2.20.2").keda(tmp_path / "current")
    assert (current.rootfs / "keda").read_text() == "keda current"


def test_two_releases_keep_their_archives(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    current = Builder(tmp_path / "bin", "v2.20.2", cache=cache)
    previous = Builder(tmp_path / "bin", "v2.20.1", cache=cache, keda_suffix="-v2.20.1")
    a = current.keda_upstream("ghcr.io/kedacore/keda-metrics-apiserver:2.20.2", fake_base)
    b = previous.keda_upstream("ghcr.io/kedacore/keda-metrics-apiserver:2.20.1", fake_base)
    assert sorted(cache.glob("archives/*")) == sorted([a.archive, b.archive])
    # A rebuild of one release replaces that release's archive only.
    again = current.keda_upstream("ghcr.io/kedacore/keda-metrics-apiserver:2.20.2", fake_base)
    assert again == a


def test_the_tenant_tag_prefix_is_the_tag_without_its_keda_version() -> None:
    for version in ("2.20.1", "2.20.2"):
        image = BuiltImage(f"keda-tenancy-keda:e2e-0123456789ab-keda{version}", Path("x"))
        assert Images.tenant_tag_prefix(image) == "e2e-0123456789ab"
