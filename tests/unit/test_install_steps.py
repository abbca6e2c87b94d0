"""Every command the suites, benchmarks and make targets run has an install step.

CI runs on a machine where earlier sessions installed things by hand, so a command whose package
nothing installs passes there and fails on a fresh machine (issue 19: `nft`). This test finds the
commands statically (argv literals handed to subprocess and `sh(...)`, `shutil.which`, Makefile
recipes, shell scripts) and asserts each one is built by the project, in the venv, a documented
prerequisite, from a Debian package in `tests/packages.sh`, or from Debian's essential set.
"""

from __future__ import annotations

import ast
import functools
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES_SCRIPT = ROOT / "tests" / "packages.sh"
COMMAND = re.compile(r"^[a-z][a-z0-9_.+-]*$")
# Calls whose argument list literal is a command line, and those whose first argument is a name.
ARGV_CALLS = {"run", "Popen", "check_output", "check_call", "call", "start"}
NAME_CALLS = {"sh", "which"}
# What README.md asks a new machine to have; `.ci/run` installs make itself.
PREREQUISITES = {"go", "python3"}
BASH_WORDS = (
    "if then else elif fi for while until do done case esac in function return exit set shift "
    "local export declare readonly unset source . : true false echo printf read cd pwd test [ [[ "
    "]] { } ! time command exec eval trap wait kill type hash break continue let mapfile pushd "
    "popd shopt getopts umask"
)
SHELL_WORDS = set(BASH_WORDS.split())


def python_commands(path: Path) -> Iterator[tuple[str, str]]:
    """(command, where) for argv literals in subprocess-like calls and names given to sh/which."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List | ast.Tuple):
            # A command line built before the call: `argv = ["mmdebstrap", ...]`.
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            head = node.value.elts[0] if node.value.elts else None
            if any(re.search(r"argv|cmd|command|wrapper", n) for n in names) and (
                isinstance(head, ast.Constant) and isinstance(head.value, str)
            ):
                yield head.value, f"{path.relative_to(ROOT)}:{node.lineno}"
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        where = f"{path.relative_to(ROOT)}:{node.lineno}"
        if name in NAME_CALLS and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield first.value, where
        elif name in ARGV_CALLS:
            for arg in node.args:
                if isinstance(arg, ast.List | ast.Tuple) and arg.elts:
                    head = arg.elts[0]
                    if isinstance(head, ast.Constant) and isinstance(head.value, str):
                        yield head.value, where


def shell_lines(text: str) -> Iterator[tuple[int, str]]:
    """Lines of a shell script or recipe that are commands: no comments, heredoc bodies or
    continuation lines of an array."""
    heredoc: str | None = None
    in_array = False
    lines = [re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines()]
    # Quoted programs (awk, sh -c) and arithmetic are not commands; keep the line count.
    text = re.sub(r"'[^']*'", lambda m: "''" + "\n" * m.group().count("\n"), "\n".join(lines))
    text = re.sub(r"\$\$?\(\([^)]*\)\)", "0", text)
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if heredoc is not None:
            if line == heredoc:
                heredoc = None
            continue
        if in_array:
            in_array = ")" not in line
            continue
        if not line:
            continue
        if found := re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line):
            heredoc = found.group(1)
        if re.search(r"=\($", line):
            in_array = True
        yield number, line


def shell_commands(text: str, where: str) -> Iterator[tuple[str, str]]:
    functions = set(re.findall(r"^\s*([a-z_][a-z0-9_]*)\s*\(\)\s*\{", text, re.M))
    for number, line in shell_lines(text):
        for segment in re.split(r"\|\||&&|[|;`]|\$\(|\(|\bthen\b|\bdo\b|\belse\b", line):
            words = segment.split()
            while words and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]) or words[0] in {
                "!", "time", "exec", "env", "-"}):  # fmt: skip
                words.pop(0)
            if words and words[0] == "command" and len(words) > 2 and words[1] == "-v":
                words = words[2:]
            if words and COMMAND.match(words[0]) and words[0] not in functions:
                yield words[0], f"{where}:{number}"


def makefile_recipes() -> str:
    lines = (ROOT / "Makefile").read_text().splitlines()
    return "\n".join(line[1:] for line in lines if line.startswith("\t"))


def all_commands() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}

    def add(pairs: Iterator[tuple[str, str]]) -> None:
        for command, where in pairs:
            if COMMAND.match(command) and command not in SHELL_WORDS:
                found.setdefault(command, []).append(where)

    for top in ("tests", "bench"):
        for path in sorted((ROOT / top).rglob("*.py")):
            add(python_commands(path))
        for path in sorted((ROOT / top).rglob("*.sh")):
            add(shell_commands(path.read_text(), str(path.relative_to(ROOT))))
    add(shell_commands((ROOT / ".ci" / "run").read_text(), ".ci/run"))
    add(shell_commands(makefile_recipes(), "Makefile"))
    return found


def declared_packages() -> dict[str, str]:
    """command -> Debian package, from tests/packages.sh and .ci/run's apt-get lines."""
    declared: dict[str, str] = {}
    for package, commands in re.findall(
        r'^\s*"([a-z0-9.+-]+):([a-z0-9_. +-]*)"', PACKAGES_SCRIPT.read_text(), re.M
    ):
        for command in commands.split():
            declared[command] = package
    for line in (ROOT / ".ci" / "run").read_text().splitlines():
        for packages in re.findall(r"apt-get install [^;&|}]*", line):
            for word in packages.split()[2:]:
                if not word.startswith("-"):
                    declared.setdefault(word, word)
    return declared


def built_by_project() -> set[str]:
    """What tests/e2e/build/build.sh builds, and the project's own entry points."""
    build = (ROOT / "tests" / "e2e" / "build" / "build.sh").read_text()
    default = re.search(r"components=\(((?:etcd)[^)]*)\)", build)
    assert default, "build.sh's default component list moved: update this test"
    scripts = re.findall(r"^(keda-tenancy-[a-z-]+) =", (ROOT / "pyproject.toml").read_text(), re.M)
    return set(default.group(1).split()) | set(scripts)


@functools.cache
def debian_package(command: str) -> str | None:
    """The installed package that ships `command` here (usrmerge: /bin and /usr/bin alike)."""
    found = shutil.which(command)
    if found is None:
        return None
    candidates = {found, str(Path(found).resolve())}
    for path in list(candidates):
        if path.startswith("/usr/"):
            candidates.add(path.removeprefix("/usr"))
        else:
            candidates.add("/usr" + path)
    for path in sorted(candidates):
        done = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return done.stdout.split(":", 1)[0].split(",")[0].strip()
    return None


def essential(package: str) -> bool:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Essential} ${Priority}", package],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.split()[:1] == ["yes"] or done.stdout.endswith("required")


def test_the_scan_finds_the_commands_it_must() -> None:
    """The scanner itself: it sees commands in each kind of source (else the next test could
    pass on an empty list)."""
    found = all_commands()
    for command in ("nft", "ip", "gcc", "mount", "containerd", "mmdebstrap", "make", "apt-get"):
        assert command in found, command
    assert "valgrind" in found  # bench
    assert "nginx" in found
    assert "bash" in found  # Makefile recipes


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="Debian's package database is needed")
def test_every_command_has_an_install_step() -> None:
    declared = declared_packages()
    built = built_by_project()
    venv = Path(sys.prefix) / "bin"
    unaccounted = []
    for command, where in sorted(all_commands().items()):
        if command in built or command in PREREQUISITES or (venv / command).exists():
            continue
        package = declared.get(command) or debian_package(command)
        if command in declared:
            here = debian_package(command)
            # Where the package is installed, the declared package must be the one shipping it.
            assert here in (None, declared[command]), f"{command}: from {here}, not {package}"
            continue
        if package is not None and essential(package):
            continue
        unaccounted.append(f"{command} ({package or 'not on this machine'}) at {where[0]}")
    assert not unaccounted, (
        "commands with no install step (add their package to tests/packages.sh): "
        + "; ".join(unaccounted)
    )


def test_readme_names_the_prerequisites() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "Python 3.11+" in readme
    assert "Go 1.26+" in readme
