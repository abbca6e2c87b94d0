"""The node's host networking: a bridge holding the node IP, the Service route, a FORWARD
guard, the sysctls the node needs; and putting all of it back.

Addresses are inside 198.18.0.0/15 (benchmarking, never routed on the internet): pods on the
CNI bridge, Services routed to the node bridge, and the guard drops any forwarded packet of
that range that is not going to the pod bridge, so nothing reaches the machine's uplink.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

NODE_NAME = "kt-node"
NODE_IP = "198.18.255.1"
POD_CIDR = "198.18.0.0/24"
POD_GATEWAY = "198.18.0.1"
SERVICE_CIDR = "198.19.0.0/24"
KUBERNETES_SERVICE_IP = "198.19.0.1"
DNS_SERVICE_IP = "198.19.0.10"
GUARDED = "198.18.0.0/15"
POD_BRIDGE = "kt-pods"  # made by the CNI bridge plugin
# The kernel here has no dummy-interface driver (`ip link add X type dummy`: "Unknown device
# type"); a bridge without ports holds the node IP just as well and carries nothing.
NODE_BRIDGE = "kt-node"
GUARD_CHAIN = "KT-GUARD"

# Set here (forwarding) or by the kubelet once at its start (it does not re-apply them).
SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.bridge.bridge-nf-call-iptables",
    "vm.overcommit_memory",
    "kernel.panic",
    "kernel.panic_on_oops",
)
KUBELET_SYSCTLS = ("vm.overcommit_memory", "kernel.panic", "kernel.panic_on_oops")
# Chains left by the kubelet, kube-proxy, kube-router (whose --cleanup-config leaves its own)
# and this module.
CHAIN_PREFIXES = ("KUBE-", "KT-")
IPTABLES = [
    (tool, table)
    for tool in ("iptables", "ip6tables")
    for table in ("filter", "nat", "mangle", "raw")
]


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def read_sysctl(name: str) -> str:
    return Path("/proc/sys", *name.split(".")).read_text().strip()


def write_sysctl(name: str, value: str) -> None:
    Path("/proc/sys", *name.split(".")).write_text(value)


class HostNetwork:
    def __init__(self, state: Path) -> None:
        # Kept outside the cluster's work directory cleanup, so a run that died is undone too.
        self.saved = state / "sysctls.json"

    def up(self) -> None:
        if not self.saved.exists():  # after a crash the saved values are the machine's own
            self.saved.parent.mkdir(parents=True, exist_ok=True)
            self.saved.write_text(
                json.dumps(
                    {"sysctls": {n: read_sysctl(n) for n in SYSCTLS}, "nft_tables": nft_tables()}
                )
            )
        if sh("ip", "link", "show", NODE_BRIDGE, check=False).returncode != 0:
            sh("ip", "link", "add", NODE_BRIDGE, "type", "bridge")
        sh("ip", "link", "set", NODE_BRIDGE, "up")
        sh("ip", "addr", "replace", f"{NODE_IP}/32", "dev", NODE_BRIDGE)
        # Host -> ClusterIP: a source of NODE_IP, DNATed by kube-proxy; an address without a
        # Service dies on the port-less bridge instead of leaving by the default route.
        sh("ip", "route", "replace", SERVICE_CIDR, "dev", NODE_BRIDGE)
        write_sysctl("net.ipv4.ip_forward", "1")
        write_sysctl("net.bridge.bridge-nf-call-iptables", "1")
        if sh("iptables", "-N", GUARD_CHAIN, check=False).returncode != 0:
            sh("iptables", "-F", GUARD_CHAIN)
        sh("iptables", "-A", GUARD_CHAIN, "-s", GUARDED, "-o", POD_BRIDGE, "-j", "RETURN")
        sh("iptables", "-A", GUARD_CHAIN, "-s", GUARDED, "-j", "DROP")
        sh("iptables", "-A", GUARD_CHAIN, "-d", GUARDED, "!", "-o", POD_BRIDGE, "-j", "DROP")
        if sh("iptables", "-C", "FORWARD", "-j", GUARD_CHAIN, check=False).returncode != 0:
            sh("iptables", "-I", "FORWARD", "1", "-j", GUARD_CHAIN)

    def machine_sysctls(self) -> dict[str, str]:
        """The machine's own values: those saved by a run that died before its teardown (which
        the next up() keeps and down() restores), else the current ones."""
        if self.saved.exists():
            return dict(json.loads(self.saved.read_text())["sysctls"])
        return {name: read_sysctl(name) for name in SYSCTLS}

    def restore_kubelet_sysctls(self) -> None:
        """The kubelet set these once at start (protectKernelDefaults=false): put them back."""
        saved = json.loads(self.saved.read_text())["sysctls"]
        for name in KUBELET_SYSCTLS:
            write_sysctl(name, saved[name])

    def down(self) -> None:
        # The kubelet and kube-proxy program IPv6 too (canaries, KUBE-FIREWALL).
        for tool, table in IPTABLES:
            rules = sh(f"{tool}-save", "-t", table, check=False).stdout
            kept = [line for line in rules.splitlines() if not _ours(line)]
            if kept != rules.splitlines():
                subprocess.run(
                    [f"{tool}-restore", "-T", table],
                    input="\n".join(kept) + "\n",
                    text=True,
                    check=True,
                )
        for name in sh("ipset", "list", "-n", check=False).stdout.split():
            if name.upper().startswith(("KUBE-", "INET6:KUBE-")):
                sh("ipset", "destroy", name, check=False)
        for bridge in (POD_BRIDGE, NODE_BRIDGE):  # the route goes with the node bridge
            sh("ip", "link", "del", bridge, check=False)
        if self.saved.exists():
            saved = json.loads(self.saved.read_text())
            for name, value in saved["sysctls"].items():
                write_sysctl(name, value)
            # iptables (nf_tables) made these tables on first use: drop them again when empty.
            tools = {"ip": "iptables", "ip6": "ip6tables"}
            for table in set(nft_tables()) - set(saved["nft_tables"]):
                family, name = table.split()
                if family not in tools:
                    continue
                if "\n-A " not in sh(f"{tools[family]}-save", "-t", name, check=False).stdout:
                    sh("nft", "delete", "table", family, name, check=False)
            self.saved.unlink()

    @staticmethod
    def leftovers() -> list[str]:
        """What down() should have removed, for the teardown test."""
        left = [
            f"link {b}"
            for b in (POD_BRIDGE, NODE_BRIDGE)
            if sh("ip", "link", "show", b, check=False).returncode == 0
        ]
        for tool, table in IPTABLES:
            left += [
                f"{tool} {table}: {line}"
                for line in sh(f"{tool}-save", "-t", table, check=False).stdout.splitlines()
                if _ours(line)
            ]
        return left


def nft_tables() -> list[str]:
    """`family name` of every nf_tables table (iptables' tables are `ip filter`, `ip nat`...)."""
    listed = sh("nft", "list", "tables", check=False).stdout.splitlines()
    return [line.removeprefix("table ").strip() for line in listed if line.startswith("table ")]


def _ours(line: str) -> bool:
    """An iptables-save line declaring, filling or jumping to a chain of ours."""
    if line.startswith(":"):
        return line[1:].startswith(CHAIN_PREFIXES)
    if line.startswith("-A "):
        chain = line.split()[1]
        if chain.startswith(CHAIN_PREFIXES):
            return True
        words = line.split()
        for flag in ("-j", "-g"):
            if flag in words:
                target = words[words.index(flag) + 1]
                if target.startswith(CHAIN_PREFIXES):
                    return True
    return False
