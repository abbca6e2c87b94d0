"""Certificates reloaded from disk while serving, health and metrics, and draining on stop."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.fakes.tenant_backend import TenantBackend
from tests.router_harness import METRIC_PATH, Pki, raw_request, router_args, running_router

USER = ("X-Remote-User", "system:serviceaccount:kube-system:horizontal-pod-autoscaler")
ALPHA = METRIC_PATH.format(ns="alpha-ns", metric="s0-value")


def swap_in(target_dir: Path, files: dict[str, bytes]) -> None:
    """Replace files the way the kubelet updates a Secret volume: a new directory and a
    symlink swap, so the paths never change but their content does."""
    current = target_dir / "..data"
    if current.exists():  # a Secret update rewrites every key; unchanged ones keep their content
        files = {p.name: p.read_bytes() for p in current.iterdir()} | files
    data = target_dir / f"..data-{os.urandom(4).hex()}"
    data.mkdir()
    for name, content in files.items():
        (data / name).write_bytes(content)
    link = target_dir / "..data"
    tmp_link = target_dir / "..data_tmp"
    tmp_link.symlink_to(data.name)
    tmp_link.replace(link)
    for name in files:
        path = target_dir / name
        if not path.is_symlink():
            path.symlink_to(Path("..data") / name)


def secret_volume(tmp_path: Path, pki: Pki) -> Path:
    volume = tmp_path / "secret"
    volume.mkdir()
    swap_in(
        volume,
        {
            "tls.crt": Path(pki.path("serving.crt")).read_bytes(),
            "tls.key": Path(pki.path("serving.key")).read_bytes(),
            "requestheader-ca.crt": Path(pki.path("front_proxy_ca.crt")).read_bytes(),
            "client.crt": Path(pki.path("router-client.crt")).read_bytes(),
            "client.key": Path(pki.path("router-client.key")).read_bytes(),
        },
    )
    return volume


def args_with_volume(pki: Pki, tenancy: str, volume: Path) -> list[str]:
    return router_args(
        pki,
        tenancy,
        f"--tls-cert-file={volume / 'tls.crt'}",
        f"--tls-private-key-file={volume / 'tls.key'}",
        f"--requestheader-client-ca-file={volume / 'requestheader-ca.crt'}",
        f"--upstream-client-cert-file={volume / 'client.crt'}",
        f"--upstream-client-key-file={volume / 'client.key'}",
    )


async def served_common_name(port: int, context: ssl.SSLContext) -> str:
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    try:
        tls = writer.get_extra_info("ssl_object")
        subject = dict(item[0] for item in tls.getpeercert()["subject"])
        return str(subject["commonName"])
    finally:
        writer.close()
        await writer.wait_closed()


async def eventually(check: Callable[[], object], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await _true(check):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


async def _true(check: Callable[[], object]) -> bool:
    result = check()
    if asyncio.iscoroutine(result):
        result = await result
    return bool(result)


async def test_certificates_rotate_without_restart(
    tmp_path: Path, pki: Pki, tenancy_file: Callable[..., str], backends: dict[str, TenantBackend]
) -> None:
    volume = secret_volume(tmp_path, pki)
    aggregator = pki.client_context(pki.aggregator())
    async with running_router(args_with_volume(pki, tenancy_file(), volume)) as router:
        port = router.secure_port
        assert port
        assert await served_common_name(port, aggregator) == "router"
        assert (await raw_request(port, aggregator, ALPHA, (USER,))).status == 200

        new_serving = pki.serving_ca.issue(
            "router-rotated", dns=("localhost",), ips=("127.0.0.1",), server=True
        )
        new_client = pki.router_client_ca.issue("keda-tenancy-router-rotated", client=True)
        backends["alpha"].allowed_names = ("keda-tenancy-router", "keda-tenancy-router-rotated")
        swap_in(
            volume,
            {
                "tls.crt": new_serving.cert_pem,
                "tls.key": new_serving.key_pem,
                "requestheader-ca.crt": pki.front_proxy_ca.cert_pem,
                "client.crt": new_client.cert_pem,
                "client.key": new_client.key_pem,
            },
        )
        await eventually(lambda: _cn_is(port, aggregator, "router-rotated"))
        response = await raw_request(port, aggregator, ALPHA, (USER,))
        assert response.status == 200
        assert backends["alpha"].received[-1].client_cn == "keda-tenancy-router-rotated"

        # A broken file keeps the last good certificate in service.
        swap_in(volume, {"tls.crt": b"not a certificate", "tls.key": new_serving.key_pem})
        await eventually(lambda: router.serving.last_error is not None)
        assert await served_common_name(port, aggregator) == "router-rotated"
        assert (await raw_request(port, aggregator, ALPHA, (USER,))).status == 200


async def _cn_is(port: int, context: ssl.SSLContext, name: str) -> bool:
    return await served_common_name(port, context) == name


async def test_a_removed_requestheader_ca_stops_being_trusted(
    tmp_path: Path, pki: Pki, tenancy_file: Callable[..., str], backends: dict[str, TenantBackend]
) -> None:
    volume = secret_volume(tmp_path, pki)
    old_aggregator = pki.aggregator()
    new_aggregator = pki.aggregator(ca=pki.other_ca)
    async with running_router(args_with_volume(pki, tenancy_file(), volume)) as router:
        port = router.secure_port
        url = f"https://localhost:{port}{ALPHA}"
        connector = aiohttp.TCPConnector(ssl=pki.client_context(old_aggregator), limit=1)
        async with aiohttp.ClientSession(connector=connector) as kept_alive:
            async with kept_alive.get(url, headers=dict([USER])) as response:
                assert response.status == 200
            # The CA is replaced: the old aggregator certificate no longer chains to it.
            swap_in(volume, {"requestheader-ca.crt": pki.other_ca.cert_pem})
            await eventually(lambda: router.serving.generation >= 2)
            # Even on the connection that was authenticated before, nothing more is forwarded.
            before = len(backends["alpha"].received)
            async with kept_alive.get(url, headers=dict([USER])) as response:
                assert response.status == 401
            assert len(backends["alpha"].received) == before
        try:
            refused = await raw_request(port, pki.client_context(old_aggregator), ALPHA, (USER,))
            assert refused.status == 401
        except (ssl.SSLError, ConnectionError):
            pass
        accepted = await raw_request(port, pki.client_context(new_aggregator), ALPHA, (USER,))
        assert accepted.status == 200


async def test_health_readiness_and_metrics(
    pki: Pki, tenancy_file: Callable[..., str], backends: dict[str, TenantBackend]
) -> None:
    aggregator = pki.client_context(pki.aggregator())
    async with running_router(router_args(pki, tenancy_file())) as router:
        assert router.secure_port
        await raw_request(router.secure_port, aggregator, ALPHA, (USER,))
        await raw_request(
            router.secure_port, aggregator, METRIC_PATH.format(ns="nobody", metric="m"), (USER,)
        )
        base = f"http://127.0.0.1:{router.health_port}"
        async with aiohttp.ClientSession() as session:
            for path in ("/healthz", "/livez", "/readyz"):
                async with session.get(base + path) as response:
                    assert response.status == 200, path
            async with session.get(base + "/metrics") as response:
                text = await response.text()
        assert (
            'keda_tenancy_router_requests_total{code="200",outcome="forwarded",tenant="alpha"} 1.0'
            in text
        )
        assert (
            'keda_tenancy_router_requests_total{code="404",outcome="rejected",tenant=""} 1.0'
            in text
        )
        assert (
            'keda_tenancy_router_certificate_expiry_timestamp_seconds{certificate="serving"}'
            in text
        )
        assert (
            'keda_tenancy_router_certificate_expiry_timestamp_seconds{certificate="upstream-client"}'
            in text
        )
        assert "keda_tenancy_router_request_duration_seconds_bucket" in text


async def test_stop_drains_requests_in_flight(
    pki: Pki, tenancy_file: Callable[..., str], backends: dict[str, TenantBackend]
) -> None:
    aggregator = pki.client_context(pki.aggregator())
    backends["alpha"].mode = "hang"
    stop_task = None
    async with running_router(
        router_args(pki, tenancy_file(), "--shutdown-grace-period=5s")
    ) as router:
        port = router.secure_port
        assert port
        in_flight = asyncio.create_task(raw_request(port, aggregator, ALPHA, (USER,)))
        await eventually(lambda: backends["alpha"].received)
        # Stop while the request is still waiting on the backend, then let the backend answer.
        stop_task = asyncio.create_task(_release_later(backends["alpha"]))
    # running_router has set stop and waited for the router to finish draining.
    response = await in_flight
    assert response.status == 200
    await stop_task
    try:
        await raw_request(port, aggregator, ALPHA, (USER,))
    except OSError:
        pass
    else:
        raise AssertionError("the router still accepts connections after stopping")


async def _release_later(backend: TenantBackend) -> None:
    await asyncio.sleep(0.3)
    backend.mode = "ok"
    backend.hang_released.set()
