"""Build a Dockerfile's final stage into a root filesystem, instruction by instruction, as
`docker build` would, without a daemon: the repository's Dockerfiles stay the one description
of the images, and what this cannot follow fails loudly instead of being approximated.

Supported: ARG, FROM [AS], ENV, RUN (shell form, in a chroot), WORKDIR, COPY [--from], USER,
EXPOSE, ENTRYPOINT/CMD (exec form), and the `.dockerignore` next to the Dockerfile.
Base images come from `bases`: a name -> builder mapping (see bases.py).
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.images.oci import ImageConfig

HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BUILD_CA_BUNDLE = "/.build-ca-certificates.crt"
# How RUN's downloads find BUILD_CA_BUNDLE (pip, and anything using OpenSSL's defaults).
BUILD_ENV = {"PIP_CERT": BUILD_CA_BUNDLE, "SSL_CERT_FILE": BUILD_CA_BUNDLE}
SUPPORTED = {"ARG", "FROM", "ENV", "RUN", "WORKDIR", "COPY", "USER", "EXPOSE", "ENTRYPOINT", "CMD"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    line: int


@dataclass
class Image:
    """A root filesystem directory and the config that goes with it."""

    rootfs: Path
    config: ImageConfig = field(default_factory=ImageConfig)


BaseBuilder = Callable[[Path], Image]  # builds the base image into the given directory


class UnsupportedDockerfile(ValueError):
    pass


def parse(text: str) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, value = full.partition(" ")
        keyword = keyword.upper()
        if keyword not in SUPPORTED:
            raise UnsupportedDockerfile(f"line {start}: {keyword} is not supported here")
        instructions.append(Instruction(keyword, value.strip(), start))
    return instructions


def substitute(value: str, variables: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, "")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)", one, value)


def key_values(value: str) -> list[tuple[str, str]]:
    """`ENV A=1 B="x y"` and the legacy `ENV A 1`."""
    words = shlex.split(value)
    if words and "=" not in words[0]:
        return [(words[0], " ".join(words[1:]))]
    return [tuple(w.split("=", 1)) for w in words]  # type: ignore[misc]


def exec_form(value: str, line: int) -> list[str]:
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise UnsupportedDockerfile(f"line {line}: only the exec (JSON) form is supported") from exc
    return [str(v) for v in parsed]


# -- .dockerignore -------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = []
    for piece in re.split(r"(\*\*/?)", pattern):
        if piece.startswith("**"):
            parts.append("(?:.*/)?" if piece.endswith("/") else ".*")
        else:
            parts.append(fnmatch.translate(piece).removeprefix("(?s:").removesuffix(")\\Z"))
    return re.compile("(?s:" + "".join(parts) + r")\Z")


def ignore_rules(dockerignore: Path) -> list[tuple[bool, re.Pattern[str]]]:
    """(re-included?, pattern) in file order; the last rule matching a path decides."""
    rules = []
    if dockerignore.exists():
        for raw in dockerignore.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip("/"))
            rules.append((negate, _pattern_regex(pattern)))
    return rules


def is_ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's semantics: a pattern matching a directory also covers what is inside it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, regex in rules:
        if any(regex.match(p) for p in prefixes):
            ignored = not negate
    return ignored


def context_files(context: Path, rules: list[tuple[bool, re.Pattern[str]]]) -> list[str]:
    """Every file of the build context that reaches the build, relative and sorted."""
    kept = []
    for directory, dirs, files in os.walk(context):
        dirs.sort()
        rel_dir = os.path.relpath(directory, context)
        for name in sorted(files):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if not is_ignored(rel, rules):
                kept.append(rel)
    return sorted(kept)


# -- building ------------------------------------------------------------------------------


@contextlib.contextmanager
def _chroot_mounts(rootfs: Path) -> Iterator[None]:
    """/proc, /dev and the host's resolver for RUN (pip reaches PyPI); undone afterwards."""
    mounted: list[Path] = []
    resolv = rootfs / "etc/resolv.conf"
    saved = resolv.read_bytes() if resolv.is_file() and not resolv.is_symlink() else None
    try:
        # /dev without its submounts (pts, shm), made private so that unmounting it later can
        # never propagate to the machine's own /dev.
        for target, args in (
            (rootfs / "proc", ["-t", "proc", "proc"]),
            (rootfs / "dev", ["--bind", "/dev"]),
        ):
            target.mkdir(exist_ok=True)
            subprocess.run(["mount", *args, str(target)], check=True)
            mounted.append(target)
            subprocess.run(["mount", "--make-private", str(target)], check=True)
        if resolv.is_symlink():
            resolv.unlink()
        shutil.copy("/etc/resolv.conf", resolv)
        # The machine's trust for the build's own downloads (a TLS-inspecting egress proxy has
        # its CA there); only for RUN, never in the image.
        shutil.copy(HOST_CA_BUNDLE, rootfs / BUILD_CA_BUNDLE.lstrip("/"))
        yield
    finally:
        (rootfs / BUILD_CA_BUNDLE.lstrip("/")).unlink(missing_ok=True)
        for target in reversed(mounted):
            subprocess.run(["umount", "-l", str(target)], check=False)
        if saved is None:
            resolv.unlink(missing_ok=True)
        else:
            resolv.write_bytes(saved)


def _copy_into(src: Path, dest: Path) -> None:
    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest, follow_symlinks=False)


class Build:
    def __init__(
        self,
        dockerfile: Path,
        context: Path,
        workdir: Path,
        bases: Mapping[str, BaseBuilder],
        build_args: Mapping[str, str] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.dockerfile = dockerfile
        self.context = context
        self.workdir = workdir
        self.bases = bases
        self.build_args = dict(build_args or {})
        self.log = log
        self.rules = ignore_rules(dockerfile.with_name(dockerfile.name + ".dockerignore"))
        if not self.rules:
            self.rules = ignore_rules(context / ".dockerignore")

    def base_names(self) -> list[str]:
        """The images the Dockerfile starts FROM (not its own stages), after ARG defaults."""
        names, stages, args = [], set(), dict(self.build_args)
        for ins in parse(self.dockerfile.read_text()):
            if ins.keyword == "ARG":
                name, _, default = ins.value.partition("=")
                args.setdefault(name, default)
            elif ins.keyword == "FROM":
                words = substitute(ins.value, args).split()
                if words[0] not in stages:
                    names.append(words[0])
                if len(words) == 3:
                    stages.add(words[2])
        return names

    def _rootfs_of(self, name: str, stages: dict[str, Image], index: int) -> Image:
        target = self.workdir / f"stage-{index}"
        if target.exists():
            raise UnsupportedDockerfile(f"{target} exists: the work directory must start empty")
        if name in stages:
            source = stages[name]
            subprocess.run(["cp", "-a", str(source.rootfs), str(target)], check=True)
            return Image(target, copy.deepcopy(source.config))
        if name not in self.bases:
            raise UnsupportedDockerfile(f"no local builder for base image {name}")
        return self.bases[name](target)

    def run(self) -> Image:
        global_args = dict(self.build_args)
        stages: dict[str, Image] = {}
        image: Image | None = None
        stage_args: dict[str, str] = {}
        index = 0
        for ins in parse(self.dockerfile.read_text()):
            if ins.keyword == "ARG":
                name, _, default = ins.value.partition("=")
                target = global_args if image is None else stage_args
                target[name] = self.build_args.get(name, global_args.get(name, default))
                continue
            if ins.keyword == "FROM":
                words = substitute(ins.value, global_args).split()
                self.log(f"FROM {words[0]}")
                image = self._rootfs_of(words[0], stages, index)
                index += 1
                stage_args = {}
                if len(words) == 3 and words[1].upper() == "AS":
                    stages[words[2]] = image
                else:
                    stages[str(index - 1)] = image
                continue
            if image is None:
                raise UnsupportedDockerfile(f"line {ins.line}: {ins.keyword} before FROM")
            variables = {**global_args, **stage_args, **image.config.env_dict()}
            value = substitute(ins.value, variables)
            self._step(image, ins, value, stages)
        if image is None:
            raise UnsupportedDockerfile("no FROM")
        return image

    def _step(self, image: Image, ins: Instruction, value: str, stages: dict[str, Image]) -> None:
        config = image.config
        if ins.keyword == "ENV":
            for name, val in key_values(ins.value):
                config.set_env(name, substitute(val, {**os.environ, **config.env_dict()}))
        elif ins.keyword == "WORKDIR":
            config.workdir = os.path.join(config.workdir or "/", value)
            (image.rootfs / config.workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
        elif ins.keyword == "USER":
            config.user = value
        elif ins.keyword == "EXPOSE":
            config.exposed_ports += value.split()
        elif ins.keyword == "ENTRYPOINT":
            config.entrypoint = exec_form(value, ins.line)
            config.cmd = None  # as Docker does: a new ENTRYPOINT resets an inherited CMD
        elif ins.keyword == "CMD":
            config.cmd = exec_form(value, ins.line)
        elif ins.keyword == "COPY":
            self._copy(image, value, stages, ins.line)
        elif ins.keyword == "RUN":
            self.log(f"RUN {value}")
            if config.user not in ("", "root", "0", "0:0"):
                raise UnsupportedDockerfile(f"line {ins.line}: RUN as a non-root USER")
            env = {"HOME": "/root", **BUILD_ENV, **config.env_dict()}
            with _chroot_mounts(image.rootfs):
                subprocess.run(
                    [
                        "chroot",
                        str(image.rootfs),
                        "/bin/sh",
                        "-c",
                        f"cd {shlex.quote(config.workdir or '/')} && {value}",
                    ],
                    env=env,
                    check=True,
                )

    def _copy(self, image: Image, value: str, stages: dict[str, Image], line: int) -> None:
        words = value.split()
        source_stage = None
        while words and words[0].startswith("--"):
            flag = words.pop(0)
            if flag.startswith("--from="):
                source_stage = flag.removeprefix("--from=")
            else:
                raise UnsupportedDockerfile(f"line {line}: COPY {flag} is not supported")
        *sources, dest = words
        workdir = image.config.workdir or "/"
        dest_path = image.rootfs / os.path.join(workdir, dest).lstrip("/")
        into_dir = dest.endswith("/") or len(sources) > 1
        for source in sources:
            if source_stage is not None:
                if source_stage not in stages:
                    raise UnsupportedDockerfile(f"line {line}: no stage {source_stage}")
                src = stages[source_stage].rootfs / source.lstrip("/")
                target = dest_path / src.name if into_dir and not src.is_dir() else dest_path
                _copy_into(src, target)
                continue
            # From the build context, through .dockerignore.
            prefix = os.path.normpath(source)
            files = [
                f
                for f in context_files(self.context, self.rules)
                if prefix == "." or f == prefix or f.startswith(prefix + "/")
            ]
            if not files:
                raise UnsupportedDockerfile(f"line {line}: COPY {source}: nothing in the context")
            for rel in files:
                if rel == prefix:  # a single file
                    target = dest_path / Path(rel).name if into_dir else dest_path
                else:  # a directory's contents go into dest
                    target = dest_path / os.path.relpath(rel, prefix)
                _copy_into(self.context / rel, target)
