"""An OCI image archive (oci-layout + index + one uncompressed layer) from a root filesystem
directory, the format `ctr images import` reads."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Inside a container these are mounts; their contents from the build do not belong in a layer.
SKIPPED_CONTENTS = ("dev", "proc", "sys", "run")


@dataclass
class ImageConfig:
    """The parts of an image config the Dockerfiles here set."""

    env: list[str] = field(
        default_factory=lambda: [
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        ]
    )
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    user: str = ""
    workdir: str = ""
    exposed_ports: list[str] = field(default_factory=list)

    def set_env(self, name: str, value: str) -> None:
        self.env = [e for e in self.env if not e.startswith(f"{name}=")] + [f"{name}={value}"]

    def env_dict(self) -> dict[str, str]:
        return dict(e.split("=", 1) for e in self.env)

    def to_oci(self) -> dict[str, Any]:
        config: dict[str, Any] = {"Env": list(self.env)}
        if self.entrypoint is not None:
            config["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            config["Cmd"] = list(self.cmd)
        if self.user:
            config["User"] = self.user
        if self.workdir:
            config["WorkingDir"] = self.workdir
        if self.exposed_ports:
            config["ExposedPorts"] = {p if "/" in p else f"{p}/tcp": {} for p in self.exposed_ports}
        return config


def normalized(reference: str) -> str:
    """The full name containerd and the kubelet use: `router:1` is `docker.io/library/router:1`."""
    name = reference.split("@", 1)[0]
    first = name.split("/", 1)[0]
    if "/" not in name:
        reference = f"docker.io/library/{reference}"
    elif "." not in first and ":" not in first and first != "localhost":
        reference = f"docker.io/{reference}"
    return reference


def manifest_digest(archive: Path) -> str:
    """The digest `ctr images ls` shows for the image in `archive`."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None
        return str(json.load(member)["manifests"][0]["digest"])


def _layer(rootfs: Path, out: Path) -> None:
    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        if len(parts) > 1 and parts[0] in SKIPPED_CONTENTS:
            return None
        if info.isdev():
            return None
        info.mtime = 0
        return info

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(os.listdir(rootfs)):
            tar.add(rootfs / entry, arcname=entry, filter=keep)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_archive(rootfs: Path, config: ImageConfig, references: Sequence[str], out: Path) -> None:
    """Write `out` atomically; every reference names the same manifest."""
    out.parent.mkdir(parents=True, exist_ok=True)
    layer = out.with_suffix(".layer.tmp")
    _layer(rootfs, layer)
    layer_digest = _sha256_file(layer)
    image_config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": config.to_oci(),
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        },
        sort_keys=True,
    ).encode()
    config_digest = hashlib.sha256(image_config).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": f"sha256:{config_digest}",
                "size": len(image_config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": f"sha256:{layer_digest}",
                    "size": layer.stat().st_size,
                }
            ],
        },
        sort_keys=True,
    ).encode()
    manifest_digest = hashlib.sha256(manifest).hexdigest()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": f"sha256:{manifest_digest}",
                    "size": len(manifest),
                    "annotations": {
                        "io.containerd.image.name": normalized(ref),
                        "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1],
                    },
                }
                for ref in references
            ],
        }
    ).encode()

    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    tmp = out.with_suffix(".tmp")
    with tarfile.open(tmp, "w") as tar:
        add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add(tar, "index.json", index)
        add(tar, f"blobs/sha256/{config_digest}", image_config)
        add(tar, f"blobs/sha256/{manifest_digest}", manifest)
        tar.add(layer, arcname=f"blobs/sha256/{layer_digest}")
    layer.unlink()
    tmp.replace(out)
