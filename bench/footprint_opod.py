"""keda-tenancy-operator-pod's memory: `python -m bench.footprint_opod` (`make bench-operator-pod`).

Starts the installed program in both modes as the chart would (process mode: following the
namespace-set ConfigMap, releasing the Lease, holding the gRPC port, asking KEDA's probes;
deployment mode: the Lease gate) against the fake API server behind TLS (so the ssl module is
loaded as in a cluster), with tests/fakes/operator_child.py standing in for KEDA. It works the
program for a while (namespace-set changes that restart KEDA, probe and metrics scrapes,
connections through the gRPC port), then reads VmRSS and VmHWM of the program's own process
from /proc. The issue's bound is 32 MiB per process. Not a test: nothing is asserted, the exit
status says only whether it ran.

The same for the deployment-mode sidecar of KEDA's metrics adapter, with an adapter connection
open and spliced to an operator stand-in: keda-tenancy-operator-forward (the platform layout's,
stdlib only) beside keda-tenancy-grpc-forward (the old layout's), worked the same way (bytes
through the held connection, a reconnect each round, probe and metrics scrapes).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import ssl
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes.kube_api import FakeKubeAPI  # noqa: E402
from tests.pki import CertificateAuthority  # noqa: E402

BIN = Path(sys.executable).parent
ENTRYPOINT = BIN / "keda-tenancy-operator-pod"
FORWARDERS = {
    "forward": "keda-tenancy-operator-forward",
    "forward (old)": "keda-tenancy-grpc-forward",
}
NAMESPACE = "keda-alpha"
LIMIT_MIB = 32.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0])
    return fields


async def tls_front(target_port: int, cert: str, key: str) -> asyncio.Server:
    """TLS in front of the fake API server, as kube-apiserver serves."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return await asyncio.start_server(accepted, "127.0.0.1", 0, ssl=context)


async def get(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return int(data.split()[1]) if data else 0


async def wait_for(check: object, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("the program did not get there in time")
        await asyncio.sleep(0.05)


def starts(log: Path) -> int:
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text().splitlines() if '"start"' in line)


async def measure(mode: str, work_s: float, workdir: Path) -> dict[str, object]:
    api = FakeKubeAPI()
    await api.start()
    ca = CertificateAuthority("bench-cluster-ca")
    ca_file = ca.write(workdir, "ca")
    cert, key = ca.issue("kube-apiserver", ips=("127.0.0.1",), server=True).write(
        workdir, "apiserver"
    )
    front = await tls_front(api.port, cert, key)
    front_port = int(front.sockets[0].getsockname()[1])
    kubeconfig = workdir / f"{mode}.kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": f"https://127.0.0.1:{front_port}",
                            "certificate-authority": ca_file,
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"token": "bench"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    namespaces = [f"alpha-{i:02d}" for i in range(10)]
    api.put_configmap(
        NAMESPACE, "keda-operator-namespaces", {}, {"namespaces": ",".join(namespaces)}
    )
    api.put_lease(NAMESPACE, "operator.keda.sh", {"holderIdentity": ""})
    health, grpc, keda_probes = free_port(), free_port(), free_port()
    log = workdir / f"{mode}-child.log"
    flags = [
        f"--mode={mode}",
        f"--kubeconfig={kubeconfig}",
        f"--lease={NAMESPACE}/operator.keda.sh",
        "--health-bind-address=127.0.0.1",
        f"--health-port={health}",
        "--grace-period=2s",
    ]
    if mode == "process":
        flags += [
            f"--namespaces-configmap={NAMESPACE}/keda-operator-namespaces",
            f"--forward-grpc=127.0.0.1:{grpc}=127.0.0.1:{keda_probes}",
            "--check-operator-health=true",
            "--operator-start-grace=0s",
        ]
    child = [
        sys.executable,
        "-m",
        "tests.fakes.operator_child",
        f"--log={log}",
        f"--health-probe-bind-address=127.0.0.1:{keda_probes}",
    ]
    env = {**os.environ, "WATCH_NAMESPACE": ",".join(namespaces), "PYTHONPATH": str(ROOT)}
    process = await asyncio.create_subprocess_exec(
        str(ENTRYPOINT), *flags, "--", *child, env=env, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await wait_for(lambda: starts(log) == 1)
        at_start = memory_kib(process.pid)
        deadline = time.monotonic() + work_s
        rounds = 0
        while time.monotonic() < deadline:
            rounds += 1
            for path in ("/readyz", "/livez", "/metrics"):
                await get(health, path)
            if mode == "process":
                await get(grpc, "/healthz")  # through the held gRPC port to the stand-in
                if rounds % 10 == 0:  # a namespace joins: KEDA restarts with it
                    namespaces.append(f"alpha-{len(namespaces):02d}")
                    api.put_configmap(
                        NAMESPACE,
                        "keda-operator-namespaces",
                        {},
                        {"namespaces": ",".join(namespaces)},
                    )
            await asyncio.sleep(0.1)
        worked = memory_kib(process.pid)
        restarts = starts(log) - 1
    finally:
        process.terminate()
        await process.wait()
        front.close()
        await front.wait_closed()
        await api.stop()
    return {
        "mode": mode,
        "rss_at_start_kib": at_start["VmRSS"],
        "rss_kib": worked["VmRSS"],
        "peak_rss_kib": worked["VmHWM"],
        "anon_kib": worked.get("RssAnon", 0),
        "file_kib": worked.get("RssFile", 0),
        "keda_restarts": restarts,
        "work_s": work_s,
    }


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The operator's gRPC port stand-in: sends back what it gets."""
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


async def measure_forward(mode: str, work_s: float) -> dict[str, object]:
    """A forwarder as the chart runs it, with one adapter connection open while it is read."""
    operator = await asyncio.start_server(echo, "127.0.0.1", 0)
    target = int(operator.sockets[0].getsockname()[1])
    listen, health = free_port(), free_port()
    process = await asyncio.create_subprocess_exec(
        str(BIN / FORWARDERS[mode]),
        f"--listen=127.0.0.1:{listen}",
        f"--target=127.0.0.1:{target}",
        "--health-bind-address=127.0.0.1",
        f"--health-port={health}",
        "--shutdown-grace=1s",
        stderr=asyncio.subprocess.DEVNULL,
    )
    held: asyncio.StreamWriter | None = None
    try:
        ready: list[int] = []

        async def probe() -> None:
            with contextlib.suppress(OSError, IndexError, ValueError):
                ready.append(await get(health, "/readyz"))

        deadline = time.monotonic() + 20
        while 200 not in ready:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{FORWARDERS[mode]} did not become ready")
            await probe()
            await asyncio.sleep(0.05)
        reader, held = await asyncio.open_connection("127.0.0.1", listen)
        held.write(b"x")
        await reader.readexactly(1)
        at_start = memory_kib(process.pid)
        payload = b"m" * 16384  # a page of metrics answers
        deadline = time.monotonic() + work_s
        while time.monotonic() < deadline:
            held.write(payload)
            await reader.readexactly(len(payload))
            for path in ("/readyz", "/livez", "/metrics"):
                await get(health, path)
            other_reader, other = await asyncio.open_connection("127.0.0.1", listen)
            other.write(b"y")  # the adapter's reconnect after an operator roll
            await other_reader.readexactly(1)
            other.close()
            await asyncio.sleep(0.1)
        worked = memory_kib(process.pid)  # the held connection still open
    finally:
        if held is not None:
            held.close()
        process.terminate()
        await process.wait()
        operator.close()
        await operator.wait_closed()
    return {
        "mode": mode,
        "rss_at_start_kib": at_start["VmRSS"],
        "rss_kib": worked["VmRSS"],
        "peak_rss_kib": worked["VmHWM"],
        "anon_kib": worked.get("RssAnon", 0),
        "file_kib": worked.get("RssFile", 0),
        "keda_restarts": "-",
        "work_s": work_s,
    }


async def run(work_s: float) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as directory:
        figures = [
            await measure(mode, work_s, Path(directory)) for mode in ("process", "deployment")
        ]
    return figures + [await measure_forward(mode, work_s) for mode in FORWARDERS]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-s", type=float, default=20.0, help="how long to work it")
    parser.add_argument("--json", default="", help="also write the figures here")
    args = parser.parse_args()
    figures = asyncio.run(run(args.work_s))
    print(f"{'mode':<14}{'RSS MiB':>9}{'peak MiB':>10}{'anon MiB':>10}{'at start':>10}  restarts")
    for f in figures:
        print(
            f"{f['mode']:<14}{int(f['rss_kib']) / 1024:>9.1f}{int(f['peak_rss_kib']) / 1024:>10.1f}"  # type: ignore[call-overload]
            f"{int(f['anon_kib']) / 1024:>10.1f}{int(f['rss_at_start_kib']) / 1024:>10.1f}"  # type: ignore[call-overload]
            f"  {f['keda_restarts']}"
        )
    print(
        f"(bound per process: {LIMIT_MIB:g} MiB; keda-tenancy-reloader measured 106 MB; "
        "forward: keda-tenancy-operator-forward with a connection open, forward (old): "
        "keda-tenancy-grpc-forward the same way)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
