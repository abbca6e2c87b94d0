"""The base images the Dockerfiles start FROM, and the cluster's own small images, made here:
a Debian root filesystem from Debian packages (mmdebstrap, the machine's own apt sources) in
place of python:3.11-slim, and KEDA's upstream images from the binaries built from KEDA's module.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.e2e.images.dockerfile import BaseBuilder, Image
from tests.e2e.images.oci import ImageConfig

SUITE = "bookworm"
# What python:3.11-slim gives the Dockerfiles: `python` 3.11 with venv/pip, CA certificates.
PYTHON_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
NONROOT = "65532"
PASSWD = f"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin\n"
GROUP = f"root:x:0:\nnonroot:x:{NONROOT}:\n"


def debian_sources(sources_dir: Path = Path("/etc/apt")) -> list[str]:
    """The machine's Debian apt sources as one-line `deb URI SUITE COMPONENTS` entries."""
    lines: list[str] = []
    for path in sorted((sources_dir / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields = dict(
                (k.strip(), v.strip())
                for k, _, v in (ln.partition(":") for ln in stanza.splitlines() if ":" in ln)
            )
            if "deb" not in fields.get("Types", "").split():
                continue
            if fields.get("Enabled", "yes") == "no":
                continue
            for uri in fields.get("URIs", "").split():
                for suite in fields.get("Suites", "").split():
                    lines.append(f"deb {uri} {suite} {fields.get('Components', 'main')}")
    legacy = sources_dir / "sources.list"
    if legacy.exists():
        lines += [
            ln.strip()
            for ln in legacy.read_text().splitlines()
            if re.match(r"deb\s", ln.strip()) and "[" not in ln
        ]
    # Only Debian's own archive (bookworm, -updates, -security); third-party repositories
    # need their keyrings and are not what python:3.11-slim is made of.
    return [ln for ln in lines if ln.split()[2].startswith(SUITE) and "/debian" in ln.split()[1]]


def digest_of(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def remove_unmounted(directory: Path) -> None:
    """rmtree, but never through a mount (a RUN step's bind of /dev would be the machine's)."""
    prefix = str(directory) + "/"
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    if held := [m for m in mounts if m.startswith(prefix)]:
        raise RuntimeError(f"not removing {directory}: still mounted: {held}")
    shutil.rmtree(directory, ignore_errors=True)


def copy_tree(src: Path, dest: Path) -> None:
    """cp -a: ownership, modes, links as the packages made them."""
    if dest.exists():
        remove_unmounted(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(src), str(dest)], check=True)


class Bases:
    """Builders for the base images, cached under `cache` by what goes into them."""

    def __init__(
        self,
        cache: Path,
        bin_dir: Path,
        keda_version: str,
        log: Callable[[str], None] = print,
        keda_suffix: str = "",
    ) -> None:
        self.cache = cache
        self.bin = bin_dir
        self.keda_tag = keda_version.lstrip("v")
        self.log = log
        # build.sh names a second KEDA's binaries keda-<version>, keda-adapter-<version>, ...
        self.keda_suffix = keda_suffix

    def keda_binary(self, name: str) -> Path:
        return self.bin / f"{name}{self.keda_suffix}"

    # python:3.11-slim --------------------------------------------------------------------

    def _mmdebstrap(self) -> tuple[list[str], list[str]]:
        sources = debian_sources()
        if not sources:
            raise RuntimeError("no Debian apt source found in /etc/apt")
        argv = [
            "mmdebstrap",
            "--mode=root",
            "--variant=minbase",
            f"--include={','.join(PYTHON_PACKAGES)}",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            '--aptopt=Acquire::Languages "none"',
            SUITE,
        ]
        return argv, sources

    def debian_key(self) -> str:
        argv, sources = self._mmdebstrap()
        return digest_of(*argv, *sources)

    def debian_python_rootfs(self) -> Path:
        argv, sources = self._mmdebstrap()
        key = self.debian_key()
        done = self.cache / f"debian-python-{key}"
        if (done / "rootfs/usr/bin/python3").exists():
            return done / "rootfs"
        tmp = done.with_suffix(".tmp")
        if tmp.exists():
            remove_unmounted(tmp)
        tmp.mkdir(parents=True)
        self.log(f"mmdebstrap {SUITE} with {', '.join(PYTHON_PACKAGES)}")
        subprocess.run(
            [*argv, str(tmp / "rootfs"), *sources], check=True, stdout=subprocess.DEVNULL
        )
        if done.exists():
            shutil.rmtree(done)
        tmp.rename(done)
        return done / "rootfs"

    def python_slim(self, target: Path) -> Image:
        copy_tree(self.debian_python_rootfs(), target)
        config = ImageConfig()
        config.set_env("LANG", "C.UTF-8")
        config.cmd = ["python3"]
        return Image(target, config)

    # KEDA's upstream images: distroless-like, the one binary, nonroot ---------------------

    def _static(
        self, target: Path, files: dict[str, Path], entrypoint: list[str], user: str
    ) -> Image:
        if target.exists():
            shutil.rmtree(target)
        for d in ("etc", "tmp", "home/nonroot"):
            (target / d).mkdir(parents=True, exist_ok=True)
        (target / "tmp").chmod(0o1777)
        (target / "etc/passwd").write_text(PASSWD)
        (target / "etc/group").write_text(GROUP)
        os.chown(target / "home/nonroot", int(NONROOT), int(NONROOT))
        for dest, src in files.items():
            path = target / dest.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, path)
            path.chmod(0o755)
        config = ImageConfig(entrypoint=entrypoint, user=user)
        return Image(target, config)

    def keda(self, target: Path) -> Image:
        return self._static(
            target, {"/keda": self.keda_binary("keda")}, ["/keda"], f"{NONROOT}:{NONROOT}"
        )

    def keda_metrics_apiserver(self, target: Path) -> Image:
        return self._static(
            target,
            {"/keda-adapter": self.keda_binary("keda-adapter")},
            ["/keda-adapter"],
            f"{NONROOT}:{NONROOT}",
        )

    def keda_admission_webhooks(self, target: Path) -> Image:
        return self._static(
            target,
            {"/keda-admission-webhooks": self.keda_binary("keda-webhooks")},
            ["/keda-admission-webhooks"],
            f"{NONROOT}:{NONROOT}",
        )

    def upstream(self) -> dict[str, BaseBuilder]:
        """Base-image name -> builder, for the Dockerfiles' FROM lines."""
        return {
            "python:3.11-slim": self.python_slim,
            f"ghcr.io/kedacore/keda:{self.keda_tag}": self.keda,
            f"ghcr.io/kedacore/keda-metrics-apiserver:{self.keda_tag}": self.keda_metrics_apiserver,
            f"ghcr.io/kedacore/keda-admission-webhooks:{self.keda_tag}": self.keda_admission_webhooks,
        }

    # the cluster's own ---------------------------------------------------------------------

    def pause(self, target: Path) -> Image:
        """The pod sandbox: sleeps until signalled, reaps children."""
        src = target.with_suffix(".c")
        src.write_text(PAUSE_C)
        binary = target.with_suffix(".bin")
        subprocess.run(["gcc", "-Os", "-static", "-o", str(binary), str(src)], check=True)
        image = self._static(target, {"/pause": binary}, ["/pause"], "65535:65535")
        src.unlink()
        binary.unlink()
        return image

    def busybox(self, target: Path) -> Image:
        """The scaled workloads and the network probes: sh, sleep, nc."""
        busybox = Path(shutil.which("busybox") or "/bin/busybox")
        image = self._static(target, {"/bin/busybox": busybox}, [], "")
        listed = subprocess.run(
            [str(busybox), "--list"], capture_output=True, text=True, check=True
        )
        for applet in listed.stdout.split():
            link = target / "bin" / applet
            if not link.exists():
                link.symlink_to("busybox")
        image.config.entrypoint = None
        image.config.cmd = ["sh"]
        return image

    def prometheus(self, target: Path) -> Image:
        """The monitoring scenario's Prometheus: Debian's binary (tests/packages.sh cluster) on
        the Debian root filesystem it was built for (it links only libc), nonroot."""
        binary = Path(shutil.which("prometheus") or "/usr/bin/prometheus")
        copy_tree(self.debian_python_rootfs(), target)
        shutil.copy2(binary, target / "usr/bin/prometheus")
        config = ImageConfig(entrypoint=["/usr/bin/prometheus"], user=f"{NONROOT}:{NONROOT}")
        return Image(target, config)

    def coredns(self, target: Path) -> Image:
        # root: it binds port 53 (the pod has no extra capabilities to grant)
        return self._static(target, {"/coredns": self.bin / "coredns"}, ["/coredns"], "")


PAUSE_C = r"""
/* The pod sandbox's process: holds the namespaces, exits on SIGINT/SIGTERM, reaps orphans. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }

int main(void) {
    struct sigaction on_stop = {.sa_handler = stop}, on_child = {.sa_handler = reap};
    sigaction(SIGINT, &on_stop, NULL);
    sigaction(SIGTERM, &on_stop, NULL);
    sigaction(SIGCHLD, &on_child, NULL);
    for (;;) pause();
}
"""
