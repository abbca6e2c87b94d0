"""Router benchmark: `python -m bench` (or `make bench`).

On loopback, in one run: an mTLS tenant backend (NGINX serving a fixed
ExternalMetricValueList, requiring a client certificate), then, with the same load
generator (client certificate and X-Remote-* headers, like the aggregator):

  direct        straight to the backend (the physical limit)
  router        keda-tenancy-router
  nginx-talk    NGINX as the talk configured it: regex location on the namespace, a variable
                proxy_pass to the tenant's Service name through a resolver (a stub DNS server
                here), no upstream block (a new upstream TLS connection per request)
  nginx-best    NGINX with an upstream block per tenant, keepalive, HTTP/1.1 upstream and
                proxy_ssl_session_reuse

at concurrency 1, 16 and 64, with 3 and with 1,000 tenants. The proxy is pinned to CPU 0,
the backend and the load generator to CPU 1, for every configuration alike. Each cell is the
median of --repeat runs. Prints requests/s, p50/p99 latency and CPU microseconds per request
of the proxy process, and the ratios the performance issue asks about. The load
generator's workers start spread evenly over the namespaces and each walks them in order,
so with 1,000 tenants consecutive requests mostly go to different tenants. Certificates are
RSA 2048 unless --key-type ec; every cell is warmed first by passes over all tenants at its
own concurrency. Ends with the router's RSS with 10,000 namespaces, from a static file and
listed and watched from a (fake) API server. Then (bench/slow.py) a backend that takes
50 ms and 1 s per answer, through the router and NGINX at its best at c=16 and c=64, and
the router's RSS while clients without a certificate pipeline requests and never read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import slow  # noqa: E402
from tests.pki import CertificateAuthority as _CertificateAuthority  # noqa: E402

CONFIGS = ("direct", "router", "nginx-talk", "nginx-best")
TENANT_LABEL = "keda-tenancy.io/tenant"
CLK_TCK = os.sysconf("SC_CLK_TCK")
METRIC_BODY = json.dumps(
    {
        "kind": "ExternalMetricValueList",
        "apiVersion": "external.metrics.k8s.io/v1beta1",
        "metadata": {},
        "items": [
            {
                "metricName": "s0-metric",
                "metricLabels": {},
                "timestamp": "2026-01-01T00:00:00Z",
                "value": "7",
            }
        ],
    }
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def wait_ready(health_port: int, timeout_s: float = 60) -> None:
    """Until /readyz answers 200 (certificates loaded, namespace cache synced)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=1),
        ):
            return
        time.sleep(0.1)
    raise TimeoutError("the router never became ready")


@dataclass
class Pki:
    """Every certificate of the benchmark. RSA 2048 by default, as kubeadm, cert-manager and
    KEDA's own certificate rotation make them; "ec" (P-256) makes handshakes several times
    cheaper, which matters only where a configuration opens a connection per request."""

    directory: Path
    key_type: str = "rsa"

    def __post_init__(self) -> None:
        d = self.directory

        def CertificateAuthority(name: str) -> _CertificateAuthority:  # noqa: N802
            return _CertificateAuthority(name, key_type=self.key_type)

        self.front_proxy = CertificateAuthority("front-proxy-ca")
        self.front_proxy.write(d, "front-proxy-ca")
        self.front_proxy.issue("front-proxy-client", client=True).write(d, "aggregator")
        serving = CertificateAuthority("proxy-serving-ca")
        serving.write(d, "serving-ca")
        serving.issue("proxy", dns=("localhost",), ips=("127.0.0.1",), server=True).write(
            d, "proxy"
        )
        client = CertificateAuthority("router-client-ca")
        client.write(d, "client-ca")
        client.issue("keda-tenancy-router", client=True).write(d, "proxy-client")
        backend = CertificateAuthority("backend-ca")
        backend.write(d, "backend-ca")
        backend.issue("backend", dns=("localhost",), ips=("127.0.0.1",), server=True).write(
            d, "backend"
        )

    def path(self, name: str) -> str:
        return str(self.directory / name)


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        raise SystemExit(
            "nginx not found: apt-get install nginx-light (make bench-packages does this)"
        )
    return found


class Nginx:
    """One NGINX instance with its own prefix, config and workers pinned to `cpu`."""

    def __init__(self, name: str, workdir: Path, http_block: str, cpu: int) -> None:
        self.prefix = workdir / name
        (self.prefix / "logs").mkdir(parents=True, exist_ok=True)
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(
            "daemon off;\nmaster_process on;\nworker_processes 1;\n"
            f"worker_cpu_affinity {1 << cpu:b};\npid {self.prefix}/nginx.pid;\n"
            f"error_log {self.prefix}/logs/error.log warn;\n"
            # 1,000 tenants x keepalive pools need far more than NGINX's default 512 connections.
            "worker_rlimit_nofile 20000;\nevents { worker_connections 16384; }\n"
            "http {\n  access_log off;\n"
            f"  client_body_temp_path {self.prefix}/tmp; proxy_temp_path {self.prefix}/tmp;\n"
            f"  fastcgi_temp_path {self.prefix}/tmp; uwsgi_temp_path {self.prefix}/tmp; scgi_temp_path {self.prefix}/tmp;\n"
            f"{http_block}\n}}\n"
        )
        (self.prefix / "tmp").mkdir(exist_ok=True)
        self.process = subprocess.Popen(
            [
                "taskset",
                "-c",
                str(cpu),
                nginx_binary(),
                "-p",
                str(self.prefix),
                "-c",
                str(self.conf),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def pids(self) -> list[int]:
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        extra = [int(p) for p in children.read_text().split()] if children.exists() else []
        return [self.process.pid, *extra]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGQUIT)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def backend_block(pki: Pki, port: int) -> str:
    body = METRIC_BODY.replace('"', '\\"')
    return f"""
  server {{
    listen 127.0.0.1:{port} ssl reuseport backlog=4096;
    ssl_certificate {pki.path("backend.crt")};
    ssl_certificate_key {pki.path("backend.key")};
    ssl_client_certificate {pki.path("client-ca.crt")};
    ssl_verify_client on;
    keepalive_requests 1000000;
    location / {{ default_type application/json; return 200 "{body}"; }}
  }}"""


def proxy_tls(pki: Pki, port: int) -> str:
    return f"""
    listen 127.0.0.1:{port} ssl backlog=4096;
    ssl_certificate {pki.path("proxy.crt")};
    ssl_certificate_key {pki.path("proxy.key")};
    ssl_client_certificate {pki.path("front-proxy-ca.crt")};
    ssl_verify_client on;
    keepalive_requests 1000000;"""


def upstream_tls(pki: Pki) -> str:
    return f"""
      proxy_ssl_verify on;
      proxy_ssl_name localhost;
      proxy_ssl_trusted_certificate {pki.path("backend-ca.crt")};
      proxy_ssl_certificate {pki.path("proxy-client.crt")};
      proxy_ssl_certificate_key {pki.path("proxy-client.key")};"""


def nginx_talk_block(pki: Pki, port: int, backend_port: int, dns_port: int) -> str:
    # As in the talk: the tenant from a regex on the namespace, the Service name in a
    # variable proxy_pass resolved through a resolver, no upstream block.
    return f"""
  resolver 127.0.0.1:{dns_port} ipv6=off valid=30s;
  server {{{proxy_tls(pki, port)}
    location ~ ^/apis/external\\.metrics\\.k8s\\.io/v1beta1/namespaces/(?<tenant>t[0-9]+)--[a-z0-9-]+/ {{
      set $upstream_service "keda-operator-metrics-apiserver.$tenant.svc.cluster.local:{backend_port}";
      proxy_pass https://$upstream_service$request_uri;{upstream_tls(pki)}
    }}
  }}"""


class StubDns:
    """A DNS server on loopback that answers every A query with 127.0.0.1 (TTL 30 s), as
    cluster DNS answers for the tenants' Services in the talk's configuration."""

    def __init__(self) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.port = int(self.socket.getsockname()[1])
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                query, peer = self.socket.recvfrom(512)
            except OSError:  # closed
                return
            end = 12
            while end < len(query) and query[end]:  # the question's name, label by label
                end += query[end] + 1
            end += 5  # the root label, QTYPE, QCLASS
            question, qtype = query[12:end], query[end - 4 : end - 2]
            answers = b"\x00\x01" if qtype == b"\x00\x01" else b"\x00\x00"
            response = query[:2] + b"\x81\x80\x00\x01" + answers + b"\x00\x00\x00\x00" + question
            if qtype == b"\x00\x01":
                response += (
                    b"\xc0\x0c\x00\x01\x00\x01" + struct.pack(">IH", 30, 4) + bytes((127, 0, 0, 1))
                )
            self.socket.sendto(response, peer)

    def close(self) -> None:
        self.socket.close()


def nginx_best_block(pki: Pki, port: int, backend_port: int, tenants: int) -> str:
    upstreams = "".join(
        f"\n  upstream tenant_t{i} {{ server 127.0.0.1:{backend_port}; keepalive 32; keepalive_requests 1000000; }}"
        for i in range(tenants)
    )
    return f"""{upstreams}
  server {{{proxy_tls(pki, port)}
    location ~ ^/apis/external\\.metrics\\.k8s\\.io/v1beta1/namespaces/(?<tenant>t[0-9]+)--[a-z0-9-]+/ {{
      proxy_pass https://tenant_$tenant;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_session_reuse on;{upstream_tls(pki)}
    }}
  }}"""


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def sockets(pid: int) -> int:
    """Open sockets of a process: its client connections plus its upstream pools."""
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed while we count
            count += os.readlink(fd).startswith("socket:")
    return count


def memory(pid: int) -> str:
    return f"{rss_mb(pid):.0f} MB with {sockets(pid)} sockets open"


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float
    errors: int


def loadgen() -> str:
    binary = Path(tempfile.gettempdir()) / "keda-tenancy-loadgen"
    source = ROOT / "bench" / "loadgen"
    if not binary.exists() or binary.stat().st_mtime < (source / "main.go").stat().st_mtime:
        subprocess.run(
            ["go", "build", "-o", str(binary), "."],
            cwd=source,
            check=True,
            env={**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"},
        )
    return str(binary)


def measure(
    pki: Pki,
    port: int,
    namespaces: list[str],
    concurrency: int,
    seconds: float,
    proxy_pids: list[int],
    direct: bool,
    passes: int = 0,
    aggregator_headers: bool = False,
    path: str = "",
) -> Result:
    """One load-generator run; with `passes`, every namespace exactly that many times. With
    `aggregator_headers`, each request carries what kube-apiserver's aggregator sends with an
    HPA's request, not only the identity headers."""
    cert, key = (
        ("proxy-client.crt", "proxy-client.key") if direct else ("aggregator.crt", "aggregator.key")
    )
    ca = "backend-ca.crt" if direct else "serving-ca.crt"
    before = cpu_seconds(proxy_pids)
    started = time.monotonic()
    done = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            loadgen(),
            f"-url=https://127.0.0.1:{port}",
            f"-namespaces={','.join(namespaces)}",
            f"-c={concurrency}",
            *([f"-passes={passes}"] if passes else [f"-d={seconds}s", "-warmup=0.5s"]),
            *(["-aggregator-headers"] if aggregator_headers else []),
            *([f"-path={path}"] if path else []),
            f"-cert={pki.path(cert)}",
            f"-key={pki.path(key)}",
            f"-ca={pki.path(ca)}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.monotonic() - started
    used = cpu_seconds(proxy_pids) - before
    out = json.loads(done.stdout)
    # CPU over the whole run (warm-up included) against requests over the same span.
    requests_whole = out["rps"] * wall if out["rps"] else 0
    cpu_us = used / requests_whole * 1e6 if requests_whole and proxy_pids else 0.0
    return Result(out["rps"], out["p50_ms"], out["p99_ms"], cpu_us, out["errors"])


@contextlib.contextmanager
def router_process(
    pki: Pki,
    workdir: Path,
    port: int,
    backend_port: int,
    tenants: int,
    namespaces: int,
    kubeconfig: str | None = None,
    *,
    wrapper: Sequence[str] = (),
    root: Path = ROOT,
    extra_args: Sequence[str] = (),
) -> Iterator[subprocess.Popen[bytes]]:
    """The router, pinned to CPU 0. Namespaces come from a static tenancy file, or with
    `kubeconfig` from the cluster's namespace labels (the file then only gives upstreams).
    `wrapper` runs it under another program (valgrind); `root` is the source tree it runs
    from (another revision's worktree, say)."""
    tenancy = workdir / f"tenancy-{tenants}{'-cluster' if kubeconfig else ''}.yaml"
    per_tenant = max(1, namespaces // tenants)
    lines = ["tenants:"]
    for i in range(tenants):
        names = ", ".join(f"t{i}--ns{j}" for j in range(per_tenant))
        lines.append(
            f"  t{i}:\n"
            + ("" if kubeconfig else f"    namespaces: [{names}]\n")
            + f"    upstream: https://127.0.0.1:{backend_port}\n    serverName: localhost"
        )
    tenancy.write_text("\n".join(lines) + "\n")
    cluster = (
        [f"--kubeconfig={kubeconfig}", f"--tenant-label-key={TENANT_LABEL}"] if kubeconfig else []
    )
    health = free_port()
    process = subprocess.Popen(
        [
            "taskset",
            "-c",
            "0",
            *wrapper,
            sys.executable,
            "-m",
            "router",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            "--health-bind-address=127.0.0.1",
            f"--health-port={health}",
            f"--tls-cert-file={pki.path('proxy.crt')}",
            f"--tls-private-key-file={pki.path('proxy.key')}",
            f"--requestheader-client-ca-file={pki.path('front-proxy-ca.crt')}",
            "--requestheader-allowed-names=front-proxy-client",
            f"--upstream-client-cert-file={pki.path('proxy-client.crt')}",
            f"--upstream-client-key-file={pki.path('proxy-client.key')}",
            f"--upstream-ca-file={pki.path('backend-ca.crt')}",
            f"--tenancy-file={tenancy}",
            *cluster,
            *extra_args,
            "--log-level=error",
        ],
        env={**os.environ, "PYTHONPATH": str(root)},
        cwd=root,  # `python -m` looks in the working directory first, before PYTHONPATH
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(health, 600 if wrapper else 60)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def namespace_count(tenants: int) -> int:
    """Namespaces in the static tenancy file: 10,000 for the large platform, one each else."""
    return max(tenants, 10_000) if tenants >= 1000 else tenants


def cluster_rss(pki: Pki, workdir: Path, backend_port: int, tenants: int, namespaces: int) -> str:
    """Router RSS in label mode with `namespaces` in its namespace cache, listed and watched
    from a fake API server (list/watch with resourceVersion, as kube-apiserver serves it),
    after every tenant's upstream pool is warm."""
    from tests.fakes.kube_api import FakeKubeAPI  # noqa: PLC0415 - only for this measurement

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    api = FakeKubeAPI(bookmark_interval_s=5.0)

    async def populate() -> None:
        await api.start()
        for j in range(namespaces):
            name = f"t{j % tenants}--ns{j // tenants}"
            labels = {TENANT_LABEL: f"t{j % tenants}", "kubernetes.io/metadata.name": name}
            api.create(name, **labels)

    try:
        asyncio.run_coroutine_threadsafe(populate(), loop).result(60)
        kubeconfig = api.write_kubeconfig(workdir / "kubeconfig")
        port = free_port()
        with router_process(
            pki, workdir, port, backend_port, tenants, namespaces, kubeconfig
        ) as process:
            names = [f"t{i}--ns0" for i in range(tenants)]
            warm = measure(pki, port, names, 16, 0, [process.pid], False, passes=3)
            if warm.errors:
                raise RuntimeError(f"{warm.errors} failed requests in label mode")
            return memory(process.pid)
    finally:
        asyncio.run_coroutine_threadsafe(api.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per cell")
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per cell (the median is reported)"
    )
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--tenants", default="3,1000")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument(
        "--parts",
        default="fast,slow,abuse",
        help="fast: the fast-backend table; slow: 50 ms and 1 s backends; abuse: RSS under abuse",
    )
    parser.add_argument(
        "--key-type",
        choices=("rsa", "ec"),
        default="rsa",
        help="certificate keys: rsa (2048, Kubernetes' usual) or ec (P-256)",
    )
    args = parser.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    tenant_counts = [int(t) for t in args.tenants.split(",")]
    configs = args.configs.split(",")
    parts = args.parts.split(",")
    if "fast" not in parts:
        tenant_counts = []
    workdir = Path(tempfile.mkdtemp(prefix="keda-tenancy-bench-"))
    pki = Pki(workdir, args.key_type)
    backend_port = free_port()
    backend = Nginx("backend", workdir, backend_block(pki, backend_port), cpu=1)
    dns = StubDns()
    table: dict[tuple[str, int, int], Result] = {}
    rss: dict[str, str] = {}
    try:
        wait_port(backend_port)
        for tenants in tenant_counts:
            namespaces = [f"t{i}--ns0" for i in range(tenants)]
            for config in configs:
                port = free_port()
                with contextlib.ExitStack() as stack:
                    pids: list[int] = []
                    target = port
                    if config == "direct":
                        target = backend_port
                    elif config == "router":
                        process = stack.enter_context(
                            router_process(
                                pki,
                                workdir,
                                port,
                                backend_port,
                                tenants,
                                namespace_count(tenants),
                            )
                        )
                        pids = [process.pid]
                    else:
                        block = (
                            nginx_talk_block(pki, port, backend_port, dns.port)
                            if config == "nginx-talk"
                            else nginx_best_block(pki, port, backend_port, tenants)
                        )
                        proxy = Nginx(f"{config}-{tenants}", workdir, block, cpu=0)
                        stack.callback(proxy.stop)
                        wait_port(port)
                        pids = proxy.pids()
                    for concurrency in concurrencies:
                        # Warm every tenant's path (kept-alive pools sized for this
                        # concurrency, TLS sessions) before measuring, the same for every
                        # configuration: steady state is what HPAs see, since each polls every
                        # 15 s, well within the keep-alive.
                        measure(
                            pki,
                            target,
                            namespaces,
                            concurrency,
                            0,
                            pids,
                            config == "direct",
                            passes=3,
                        )
                        runs = [
                            measure(
                                pki,
                                target,
                                namespaces,
                                concurrency,
                                args.seconds,
                                pids,
                                config == "direct",
                            )
                            for _ in range(args.repeat)
                        ]
                        table[(config, tenants, concurrency)] = Result(
                            statistics.median(r.rps for r in runs),
                            statistics.median(r.p50_ms for r in runs),
                            statistics.median(r.p99_ms for r in runs),
                            statistics.median(r.cpu_us for r in runs),
                            sum(r.errors for r in runs),
                        )
                        cell = table[(config, tenants, concurrency)]
                        print(
                            f"{config:11s} tenants={tenants:<5d} c={concurrency:<3d} {cell.rps:9.0f} req/s  "
                            f"p50 {cell.p50_ms:7.2f} ms  p99 {cell.p99_ms:7.2f} ms  cpu {cell.cpu_us:7.0f} us/req  errors {cell.errors}",
                            flush=True,
                        )
                    if config == "router":
                        rss[
                            f"{tenants} tenants, {namespace_count(tenants)} namespaces in a static tenancy file, after every cell"
                        ] = memory(pids[0])
        if "router" in configs and tenant_counts and max(tenant_counts) >= 1000:
            many = max(tenant_counts)
            rss[
                f"{many} tenants, 10000 namespaces listed and watched from the API, after warm passes at c=16"
            ] = cluster_rss(pki, workdir, backend_port, many, 10_000)
        slow_table = run_slow(pki, workdir, configs, args.seconds) if "slow" in parts else {}
        if "abuse" in parts and "router" in configs:
            port = free_port()
            with router_process(pki, workdir, port, backend_port, 3, 3) as process:
                names = [f"t{i}--ns0" for i in range(3)]
                measure(pki, port, names, 1, 0, [process.pid], False, passes=3)
                rss["abuse"] = slow.abuse_line(
                    pki,
                    process.pid,
                    port,
                    lambda: measure(pki, port, names, 1, 3, [process.pid], False),
                )
    finally:
        dns.close()
        backend.stop()
    report(table, rss, configs, tenant_counts, concurrencies)
    report_slow(slow_table)
    return 0


def run_slow(
    pki: Pki, workdir: Path, configs: list[str], seconds: float
) -> dict[tuple[str, float, int], tuple[Result, int]]:
    """Router and NGINX at its best before one tenant whose answers take 50 ms and 1 s."""
    table: dict[tuple[str, float, int], tuple[Result, int]] = {}
    for delay_s in slow.DELAYS_S:
        backend_port = free_port()
        with slow.slow_backend(pki, backend_port, delay_s, METRIC_BODY):
            wait_port(backend_port)
            for config in [c for c in ("router", "nginx-best") if c in configs]:
                port = free_port()
                with contextlib.ExitStack() as stack:
                    if config == "router":
                        process = stack.enter_context(
                            router_process(pki, workdir, port, backend_port, 1, 1)
                        )
                        pids = [process.pid]
                    else:
                        proxy = Nginx(
                            f"slow-{delay_s}",
                            workdir,
                            nginx_best_block(pki, port, backend_port, 1),
                            0,
                        )
                        stack.callback(proxy.stop)
                        wait_port(port)
                        pids = proxy.pids()
                    for concurrency in (16, 64):
                        result = measure(
                            pki, port, ["t0--ns0"], concurrency, max(seconds, 4), pids, False
                        )
                        table[(config, delay_s, concurrency)] = (
                            result,
                            slow.upstream_connections(backend_port),
                        )
                        print(
                            f"slow {delay_s * 1000:5.0f} ms {config:11s} c={concurrency:<3d} "
                            f"{result.rps:8.1f} req/s  p99 {result.p99_ms:8.1f} ms  "
                            f"upstream connections {table[(config, delay_s, concurrency)][1]}  "
                            f"errors {result.errors}",
                            flush=True,
                        )
    return table


def report_slow(table: dict[tuple[str, float, int], tuple[Result, int]]) -> None:
    if not table:
        return
    print("\nslow backend, one tenant (router / NGINX at its best):")
    for delay_s in slow.DELAYS_S:
        for concurrency in (16, 64):
            router, best = (table.get((c, delay_s, concurrency)) for c in ("router", "nginx-best"))
            if router is None:
                continue
            line = (
                f"  {delay_s * 1000:5.0f} ms c={concurrency:<3d} router {router[0].rps:7.1f} req/s "
                f"p99 {router[0].p99_ms:7.1f} ms {router[1]} connections"
            )
            if best is not None and best[0].rps:
                line += (
                    f" | NGINX best {best[0].rps:7.1f} req/s p99 {best[0].p99_ms:7.1f} ms "
                    f"{best[1]} connections | {router[0].rps / best[0].rps:4.2f}x"
                )
            print(line)


def report(
    table: dict[tuple[str, int, int], Result],
    rss: dict[str, str],
    configs: list[str],
    tenant_counts: list[int],
    concurrencies: list[int],
) -> None:
    print("\nratios (requests/s; p99 ratio below 1.0 means the router is faster):")
    for tenants in tenant_counts:
        for concurrency in concurrencies:
            router = table.get(("router", tenants, concurrency))
            if router is None:
                continue
            parts = [f"tenants={tenants:<5d} c={concurrency:<3d}"]
            for other in ("direct", "nginx-best", "nginx-talk"):
                cell = table.get((other, tenants, concurrency))
                if cell and cell.rps:
                    parts.append(f"router/{other} {router.rps / cell.rps:5.2f}x")
            best = table.get(("nginx-best", tenants, concurrency))
            if best and best.p99_ms:
                parts.append(f"p99 router/nginx-best {router.p99_ms / best.p99_ms:5.2f}")
            print("  ".join(parts))
    if len(tenant_counts) >= 2:
        few, many = min(tenant_counts), max(tenant_counts)
        for concurrency in concurrencies:
            a, b = table.get(("router", few, concurrency)), table.get(("router", many, concurrency))
            if a and b and a.rps:
                print(
                    f"router {many} tenants / {few} tenants at c={concurrency}: {b.rps / a.rps:5.2f}x"
                )
    for what, used in rss.items():
        if what == "abuse":
            print(used)
        else:
            print(f"router RSS, {what}: {used} (target: <= 150 MB with 10,000 namespaces)")


if __name__ == "__main__":
    sys.exit(main())
