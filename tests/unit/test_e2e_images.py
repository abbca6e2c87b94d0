"""The local image build follows deploy/images/*.Dockerfile: every instruction they use is one
it runs, every base image they start FROM is one it makes, the build context is what their
.dockerignore lets through, and the archive is one `ctr images import` names as the charts do."""

from __future__ import annotations

import json
import tarfile
import tomllib
from pathlib import Path

import pytest

from tests.deploy.charts import versions
from tests.e2e.cluster.network import _ours
from tests.e2e.images.bases import Bases, debian_sources
from tests.e2e.images.build import ROOT, Builder
from tests.e2e.images.dockerfile import (
    Build,
    Image,
    UnsupportedDockerfile,
    context_files,
    ignore_rules,
    parse,
)
from tests.e2e.images.oci import ImageConfig, normalized, write_archive

DOCKERFILES = sorted((ROOT / "deploy/images").glob("*.Dockerfile"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_repositorys_dockerfiles_are_fully_buildable_here(
    dockerfile: Path, tmp_path: Path
) -> None:
    parse(dockerfile.read_text())  # raises on an instruction the local build would skip
    bases = Bases(tmp_path, tmp_path, versions()["KEDA_VERSION"]).upstream()
    build = Build(
        dockerfile,
        ROOT,
        tmp_path,
        bases,
        build_args={"KEDA_VERSION": versions()["KEDA_VERSION"].lstrip("v")},
    )
    assert build.base_names(), "a Dockerfile without FROM"
    for name in build.base_names():
        assert name in bases, (
            f"{dockerfile.name} starts FROM {name}, which the local build cannot make"
        )


def test_the_keda_version_of_the_dockerfile_is_the_one_built() -> None:
    text = (ROOT / "deploy/images/keda-tenant.Dockerfile").read_text()
    assert f"ARG KEDA_VERSION={versions()['KEDA_VERSION'].lstrip('v')}" in text


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_context_is_what_dockerignore_lets_through(dockerfile: Path) -> None:
    rules = ignore_rules(dockerfile.with_name(dockerfile.name + ".dockerignore"))
    files = context_files(ROOT, rules)
    assert "pyproject.toml" in files
    assert "README.md" in files
    assert "router/__main__.py" in files
    assert "tenancy_common/__init__.py" in files
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    assert not [f for f in files if f.startswith(("tests/", "deploy/", ".git/", ".venv/"))]


def test_dockerignore_semantics(tmp_path: Path) -> None:
    for name in ("a/x.py", "a/sub/y.py", "a/__pycache__/x.pyc", "b/z.py", "top.txt", "keep.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    ignore = tmp_path / ".dockerignore"
    ignore.write_text("# comment\n*\n!a/\n!keep.txt\n**/__pycache__\n")
    assert context_files(tmp_path, ignore_rules(ignore)) == ["a/sub/y.py", "a/x.py", "keep.txt"]


def fake_base(target: Path) -> Image:
    (target / "bin").mkdir(parents=True)
    (target / "bin/tool").write_text("base tool")
    config = ImageConfig(cmd=["sh"])
    config.set_env("LANG", "C.UTF-8")
    return Image(target, config)


def test_a_multi_stage_build_without_run(tmp_path: Path) -> None:
    context = tmp_path / "ctx"
    (context / "pkg/sub").mkdir(parents=True)
    (context / "pkg/sub/mod.py").write_text("mod")
    (context / "pyproject.toml").write_text("proj")
    (context / "secret.txt").write_text("no")
    (context / "Dockerfile.dockerignore").write_text("secret.txt\n")
    dockerfile = context / "Dockerfile"
    dockerfile.write_text(
        "ARG BASE=base:1\n"
        "FROM ${BASE} AS build\n"
        "WORKDIR /src\n"
        "COPY pyproject.toml ./\n"
        "COPY pkg/ pkg/\n"
        "FROM $BASE\n"
        "COPY --from=build /src /opt/app\n"
        "ENV PATH=/opt/app/bin:$PATH \\\n"
        "    MODE=fast\n"
        "USER 65532:65532\n"
        "EXPOSE 8080 9090/udp\n"
        'ENTRYPOINT ["app", "--flag"]\n'
    )
    work = tmp_path / "work"
    work.mkdir()
    image = Build(dockerfile, context, work, {"base:1": fake_base}).run()
    root = image.rootfs
    assert (root / "opt/app/pyproject.toml").read_text() == "proj"
    assert (root / "opt/app/pkg/sub/mod.py").read_text() == "mod"
    assert (root / "bin/tool").exists()
    assert not (root / "opt/app/secret.txt").exists()
    assert not (root / "src").exists()  # the build stage's workdir stays in the build stage
    env = image.config.env_dict()
    assert env["PATH"].startswith("/opt/app/bin:/usr/local/sbin")
    assert env["MODE"] == "fast"
    assert env["LANG"] == "C.UTF-8"
    assert image.config.user == "65532:65532"
    assert image.config.entrypoint == ["app", "--flag"]
    assert image.config.cmd is None  # a new ENTRYPOINT drops the base's CMD, as in Docker
    assert image.config.exposed_ports == ["8080", "9090/udp"]


@pytest.mark.parametrize(
    "text",
    [
        "FROM base:1\nHEALTHCHECK CMD true\n",
        "FROM base:1\nADD x /x\n",
        "FROM base:1\nENTRYPOINT app --flag\n",
        "FROM base:1\nCOPY --chown=1:1 x /x\n",
        "FROM other:2\n",
    ],
)
def test_what_it_cannot_follow_fails(text: str, tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(text)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(UnsupportedDockerfile):
        Build(dockerfile, tmp_path, work, {"base:1": fake_base}).run()


def test_the_archive_names_the_image_as_the_kubelet_asks_for_it(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin/app").write_text("#!/bin/sh\n")
    (rootfs / "proc").mkdir()
    (rootfs / "proc/junk").write_text("not in a layer")
    out = tmp_path / "image.oci.tar"
    write_archive(
        rootfs,
        ImageConfig(entrypoint=["/bin/app"], user="65532"),
        ["keda-tenancy-router:e2e-1"],
        out,
    )
    with tarfile.open(out) as tar:
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        entry = index["manifests"][0]
        assert (
            entry["annotations"]["io.containerd.image.name"]
            == "docker.io/library/keda-tenancy-router:e2e-1"
        )
        manifest = json.load(tar.extractfile(f"blobs/sha256/{entry['digest'].split(':')[1]}"))  # type: ignore[arg-type]
        config = json.load(
            tar.extractfile(f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}")
        )  # type: ignore[arg-type]
        assert config["config"]["Entrypoint"] == ["/bin/app"]
        assert config["config"]["User"] == "65532"
        layer = tar.extractfile(f"blobs/sha256/{manifest['layers'][0]['digest'].split(':')[1]}")
        assert layer is not None
        with tarfile.open(fileobj=layer) as files:
            names = files.getnames()
    assert "bin/app" in names
    assert "proc" in names
    assert "proc/junk" not in names


@pytest.mark.parametrize(
    ("reference", "full"),
    [
        ("keda-tenancy-router:1", "docker.io/library/keda-tenancy-router:1"),
        ("kedacore/keda:2", "docker.io/kedacore/keda:2"),
        ("ghcr.io/kedacore/keda:2.20.2", "ghcr.io/kedacore/keda:2.20.2"),
        ("keda-tenancy.local/pause:3.10", "keda-tenancy.local/pause:3.10"),
        ("localhost/x:1", "localhost/x:1"),
    ],
)
def test_normalized_references(reference: str, full: str) -> None:
    assert normalized(reference) == full


def test_debian_sources_are_read_from_deb822_and_one_line_files(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d/debian.sources").write_text(
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\n"
    )
    (tmp_path / "sources.list.d/other.sources").write_text(
        "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\nComponents: main\n"
    )
    (tmp_path / "sources.list").write_text(
        "deb http://security.debian.org/debian-security bookworm-security main\n"
    )
    assert debian_sources(tmp_path) == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://security.debian.org/debian-security bookworm-security main",
    ]


@pytest.mark.parametrize(
    ("line", "ours"),
    [
        (":KUBE-SERVICES - [0:0]", True),
        (":KT-GUARD - [0:0]", True),
        (":DOCKER - [0:0]", False),
        ("-A FORWARD -j KT-GUARD", True),
        ("-A FORWARD -m comment --comment x -j KUBE-ROUTER-FORWARD", True),
        ("-A KUBE-NWPLCY-DEFAULT -j MARK --set-xmark 0x10000/0x10000", True),
        ("-A FORWARD -i eth0 -j ACCEPT", False),
        ("-A INPUT -g KUBE-FIREWALL", True),
        ("*filter", False),
        ("COMMIT", False),
    ],
)
def test_teardown_removes_exactly_the_clusters_iptables_lines(line: str, ours: bool) -> None:
    assert _ours(line) is ours


def test_the_archive_cache_keeps_one_build_per_repository(tmp_path: Path) -> None:
    builder = Builder(tmp_path / "bin", "v2.20.2", cache=tmp_path / "cache")
    first = builder.static("keda-tenancy.local/app:1", fake_base, "input 1")
    other = builder.static("keda-tenancy.local/app-other:1", fake_base, "input 1")
    assert builder.static("keda-tenancy.local/app:1", fake_base, "input 1") == first  # cached
    second = builder.static("keda-tenancy.local/app:1", fake_base, "input 2")
    assert second.archive != first.archive
    assert sorted(builder.archives.iterdir()) == sorted([second.archive, other.archive])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_package_the_project_installs_reaches_the_image(dockerfile: Path) -> None:
    """pip installs what pyproject's package list finds: a package the Dockerfile does not
    COPY (or its .dockerignore keeps out) is silently missing from the image, and its program
    (keda-tenancy-controller, keda-tenancy-operator-pod) fails at start in the cluster."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [
        pattern.rstrip("*")
        for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    assert {"router", "reloader", "tenancy_common", "controller", "operator_pod"} <= set(packages)
    copied = {
        ins.value.split()[0].rstrip("/")
        for ins in parse(dockerfile.read_text())
        if ins.keyword == "COPY" and not ins.value.startswith("--from")
    }
    files = context_files(
        ROOT, ignore_rules(dockerfile.with_name(dockerfile.name + ".dockerignore"))
    )
    for package in packages:
        assert package in copied, f"{dockerfile.name} does not COPY {package}/"
        assert f"{package}/__init__.py" in files, f"{package}/ is not in the build context"
    for script in pyproject["project"]["scripts"].values():
        assert script.split(".")[0] in packages, script
