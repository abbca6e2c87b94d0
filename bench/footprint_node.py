"""What a pod's containers use, read on the node: the processes of each container's cgroup
(cgroup.procs of the kubelet's cgroupfs layout, kubepods/<qos>/pod<uid>/<container id>), each
one's VmRSS from /proc/<pid>/status, and the container's CPU time (cpuacct.usage).

RSS is resident memory per process: pages two processes of one container share count twice
(what `ps` and the issue's figures say; the cgroup's own charge is printed beside it).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CGROUP_ROOT = Path("/sys/fs/cgroup")
QOS_DIRS = ("", "burstable/", "besteffort/")


@dataclass
class ProcessUse:
    pid: int
    name: str
    """The executable's name (comm, at most 15 characters)."""
    rss_kib: int


@dataclass
class ContainerUse:
    pod: str
    container: str
    cpu_request_m: int
    memory_request_mib: float
    processes: list[ProcessUse] = field(default_factory=list)
    cgroup_rss_kib: int = 0
    """The memory cgroup's total_rss (anonymous memory charged to the container)."""
    cpu_ns_start: int = 0
    cpu_ns_end: int = 0

    @property
    def rss_kib(self) -> int:
        return sum(p.rss_kib for p in self.processes)


def cpu_millicores(quantity: str | None) -> int:
    if not quantity:
        return 0
    if quantity.endswith("m"):
        return int(quantity[:-1])
    return int(float(quantity) * 1000)


def memory_mib(quantity: str | None) -> float:
    if not quantity:
        return 0.0
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0, "k": 1e3 / 2**20, "M": 1e6 / 2**20}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity) / 2**20


def cgroup_dir(controller: str, pod_uid: str, container_id: str) -> Path | None:
    base = CGROUP_ROOT / controller / "kubepods"
    for qos in QOS_DIRS:
        candidate = base / f"{qos}pod{pod_uid}" / container_id
        if candidate.is_dir():
            return candidate
    found = sorted(base.glob(f"**/pod{pod_uid}/{container_id}"))
    return found[0] if found else None


def read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def process_use(pid: int) -> ProcessUse | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None  # gone meanwhile
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = fields.get("VmRSS", "0 kB").split()[0]  # kernel threads have none
    return ProcessUse(pid, fields.get("Name", "?").strip(), int(rss))


@dataclass
class ContainerRef:
    pod: str
    container: str
    pod_uid: str
    container_id: str
    cpu_request_m: int
    memory_request_mib: float


def containers_of(pods: list[dict[str, Any]]) -> list[ContainerRef]:
    """Each running container of `pods` (kubectl's JSON), with its requests from the spec."""
    refs = []
    for pod in pods:
        specs = {c["name"]: c for c in pod["spec"]["containers"]}
        for status in pod.get("status", {}).get("containerStatuses", []):
            container_id = status.get("containerID", "").partition("://")[2]
            if not container_id or "running" not in status.get("state", {}):
                continue
            requests = specs.get(status["name"], {}).get("resources", {}).get("requests", {})
            refs.append(
                ContainerRef(
                    pod=pod["metadata"]["name"],
                    container=status["name"],
                    pod_uid=pod["metadata"]["uid"],
                    container_id=container_id,
                    cpu_request_m=cpu_millicores(requests.get("cpu")),
                    memory_request_mib=memory_mib(requests.get("memory")),
                )
            )
    return refs


def cpu_ns(ref: ContainerRef) -> int:
    directory = cgroup_dir("cpuacct", ref.pod_uid, ref.container_id)
    return read_int(directory / "cpuacct.usage") if directory else 0


def measure(ref: ContainerRef) -> ContainerUse:
    use = ContainerUse(ref.pod, ref.container, ref.cpu_request_m, ref.memory_request_mib)
    memory = cgroup_dir("memory", ref.pod_uid, ref.container_id)
    if memory is None:
        return use
    for pid in sorted(pids(memory)):
        if (process := process_use(pid)) is not None:
            use.processes.append(process)
    with contextlib.suppress(OSError):
        stat = dict(line.split() for line in (memory / "memory.stat").read_text().splitlines())
        use.cgroup_rss_kib = int(stat.get("total_rss", 0)) // 1024
    return use


def pids(cgroup: Path) -> set[int]:
    try:
        return {int(line) for line in (cgroup / "cgroup.procs").read_text().split()}
    except (OSError, ValueError):
        return set()
