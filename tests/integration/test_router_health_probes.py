"""Active health per backend (issue 24, item 4): a backend found dead by a probe fails fast
before an HPA request waits for it, only that backend, and it is served again once a probe
is answered. Fake backends: refusing, hung, slow, answering 503, recovering."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Callable

import pytest
from prometheus_client import generate_latest
from yarl import URL

from router.app import Router
from router.backends import Backend
from router.health_probes import PROBE_TARGET, PROBE_USER, HealthProbes, ProbeSettings
from tests.fakes.tenant_backend import TenantBackend
from tests.router_harness import METRIC_PATH, Pki, RawResponse, raw_request, router_args
from tests.router_harness import running_router as start_router

USER = ("X-Remote-User", "system:serviceaccount:kube-system:horizontal-pod-autoscaler")
PROBES = ("--health-probe-interval=300ms", "--health-probe-timeout=200ms")


@pytest.fixture
def aggregator(pki: Pki) -> ssl.SSLContext:
    return pki.client_context(pki.aggregator())


@pytest.fixture
async def router(pki: Pki, tenancy_file: Callable[..., str]) -> AsyncIterator[Router]:
    async with start_router(router_args(pki, tenancy_file(), *PROBES)) as router:
        yield router


async def get(router: Router, aggregator: ssl.SSLContext, ns: str) -> RawResponse:
    assert router.secure_port
    return await raw_request(
        router.secure_port, aggregator, METRIC_PATH.format(ns=ns, metric="s0-value"), (USER,)
    )


async def eventually(check: Callable[[], bool], what: str) -> None:
    """Wait for a state change (the timeout only bounds a failing test)."""
    async with asyncio.timeout(20):
        while not check():
            await asyncio.sleep(0.02)
    assert check(), what


def probes_received(backend: TenantBackend) -> int:
    return sum(r.path == PROBE_TARGET for r in backend.received)


def gauge(router: Router, tenant: str) -> str | None:
    text = generate_latest(router.registry).decode()
    prefix = f'keda_tenancy_router_backend_healthy{{tenant="{tenant}"}} '
    return next(
        (line[len(prefix) :] for line in text.splitlines() if line.startswith(prefix)), None
    )


async def test_a_dead_backend_fails_fast_and_only_that_one(
    router: Router, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    alpha, beta = backends["alpha"], backends["beta"]
    assert (await get(router, aggregator, "alpha-ns")).status == 200
    assert (await get(router, aggregator, "beta-ns")).status == 200
    await eventually(lambda: probes_received(alpha) and probes_received(beta), "both probed")
    await eventually(lambda: gauge(router, "alpha") == "1.0", "alpha healthy")
    # The probe's identity, with the router's client certificate, as requests have it.
    probe = next(r for r in alpha.received if r.path == PROBE_TARGET)
    assert (b"X-Remote-User", PROBE_USER.encode()) in probe.raw_headers
    assert probe.client_cn == "keda-tenancy-router"

    await alpha.stop()  # connections refused from now on
    await eventually(lambda: router.health_probes.state_of("alpha") == "unhealthy", "found")
    answer = await get(router, aggregator, "alpha-ns")
    assert answer.status == 503
    assert "health probe" in str(answer.json()["message"])
    assert gauge(router, "alpha") == "0.0"
    # Beta is untouched, and no request of its own was made to wait.
    assert (await get(router, aggregator, "beta-ns")).status == 200
    assert router.health_probes.state_of("beta") == "healthy"
    assert gauge(router, "beta") == "1.0"


async def test_a_backend_refusing_for_a_moment_is_not_held_down(
    router: Router, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    """Issue 22: probes that meet a metrics server being rolled (refused for well under
    REFUSED_GRACE_S) hold nothing: a refusal costs a request no wait, and its own path
    dials again."""
    alpha = backends["alpha"]
    assert (await get(router, aggregator, "alpha-ns")).status == 200
    await eventually(lambda: gauge(router, "alpha") == "1.0", "alpha probed healthy")
    port = alpha.port
    probed = probes_received(alpha)
    await alpha.stop()
    states = set()
    loop = asyncio.get_running_loop()
    back_at = loop.time() + 0.8  # probes every 300 ms: two or three are refused
    while loop.time() < back_at:
        states.add(router.health_probes.state_of("alpha"))
        await asyncio.sleep(0.02)
    await alpha.start(port)
    await eventually(lambda: probes_received(alpha) > probed, "probed again after")
    print(f"states while refusing: {states}")
    assert states == {"healthy"}
    assert (await get(router, aggregator, "alpha-ns")).status == 200
    assert gauge(router, "alpha") == "1.0"


async def test_a_hung_backend_fails_fast_without_a_request_waiting_for_it(
    router: Router, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    alpha = backends["alpha"]
    assert (await get(router, aggregator, "alpha-ns")).status == 200
    requests_before = len(alpha.received)
    alpha.mode = "hang"  # accepts and never answers, as a KEDA waiting for its operator
    await eventually(lambda: router.health_probes.state_of("alpha") == "unhealthy", "found")
    answer = await get(router, aggregator, "alpha-ns")
    assert answer.status == 503
    assert "no answer in time" in str(answer.json()["message"])
    # Only probes reached it after it hung: the request was failed at the router.
    assert all(r.path == PROBE_TARGET for r in alpha.received[requests_before:])
    assert (await get(router, aggregator, "beta-ns")).status == 200


async def test_a_recovering_backend_is_served_again_once_a_probe_is_answered(
    router: Router, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    alpha = backends["alpha"]
    assert (await get(router, aggregator, "alpha-ns")).status == 200
    alpha.mode = "status:503"
    await eventually(lambda: router.health_probes.state_of("alpha") == "unhealthy", "found")
    assert (await get(router, aggregator, "alpha-ns")).status == 503
    alpha.mode = "ok"
    await eventually(lambda: router.health_probes.state_of("alpha") == "healthy", "back")
    answer = await get(router, aggregator, "alpha-ns")
    assert (answer.status, answer.json()["items"][0]["value"]) == (200, "7")  # type: ignore[index]


async def test_a_slow_backend_that_answers_within_the_timeout_stays_healthy(
    router: Router, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    alpha = backends["alpha"]
    alpha.delay_s = 0.05
    assert (await get(router, aggregator, "alpha-ns")).status == 200
    await eventually(lambda: probes_received(alpha) >= 3, "probed several times")
    assert router.health_probes.probes.get(("alpha", "unhealthy"), 0) == 0
    assert (await get(router, aggregator, "alpha-ns")).status == 200


async def test_the_access_log_line_says_the_backends_health(
    router: Router,
    aggregator: ssl.SSLContext,
    backends: dict[str, TenantBackend],
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert (await get(router, aggregator, "alpha-ns")).status == 200
    await eventually(lambda: router.health_probes.state_of("alpha") == "healthy", "probed")
    with caplog.at_level(logging.INFO, logger="router.access"):
        assert (await get(router, aggregator, "alpha-ns")).status == 200
    logged = [r for r in caplog.records if r.name == "router.access"]
    assert logged[-1].backend_health == "healthy"  # type: ignore[attr-defined]


async def test_the_default_upstream_is_probed_before_any_request(
    pki: Pki, tenancy_file: Callable[..., str], backends: dict[str, TenantBackend]
) -> None:
    beta = backends["beta"]
    argv = router_args(pki, tenancy_file(), *PROBES, f"--default-upstream={beta.url}")
    async with start_router(argv) as router:
        await eventually(lambda: probes_received(beta) > 0, "default upstream probed")
        await eventually(lambda: gauge(router, "_default") == "1.0", "healthy")
        assert [r.path for r in beta.received] == [PROBE_TARGET] * len(beta.received)


class _Holder:
    def __init__(self) -> None:
        self.down: dict[str, str] = {}

    def hold_down(self, backend: Backend, reason: str, since: float) -> None:
        self.down[backend.name] = reason

    def release_down(self, backend: Backend) -> None:
        self.down.pop(backend.name, None)


async def test_never_more_than_one_probe_in_flight_per_backend(
    pki: Pki, backends: dict[str, TenantBackend]
) -> None:
    alpha = backends["alpha"]
    alpha.mode = "hang"
    context = ssl.create_default_context(cafile=pki.path("backend_ca.crt"))
    context.load_cert_chain(pki.path("router-client.crt"), pki.path("router-client.key"))
    backend = Backend("alpha", URL(alpha.url))
    holder = _Holder()
    probes = HealthProbes(ProbeSettings(10.0, 5.0), list, lambda _: context, holder)
    first = probes.start(backend)
    assert first is not None
    await eventually(lambda: probes_received(alpha) == 1, "the first probe arrived")
    assert probes.start(backend) is None  # still in flight: no second one
    assert probes.start(backend) is None
    assert probes_received(alpha) == 1
    alpha.hang_released.set()  # it answers: the probe ends, the next one may start
    await first
    assert probes.state_of("alpha") == "healthy"
    assert holder.down == {}
    second = probes.start(backend)
    assert second is not None
    await second
    assert probes_received(alpha) == 2
    probes.close()
    await asyncio.sleep(0)


async def test_a_backend_found_unhealthy_is_probed_again_at_once_not_a_round_later(
    pki: Pki, backends: dict[str, TenantBackend]
) -> None:
    """A new tenant's KEDA answers the probe only once it reached its operator; found
    unhealthy before that, it was held down until its next round, an interval (10 s) later
    (issue 22: the onboarding scenario's first read waited for it). Now it is probed again a
    second after each failed probe, and released as soon as one is answered. No rounds run
    here (the interval is an hour): every probe after the first is a re-probe."""
    alpha = backends["alpha"]
    alpha.mode = "status:503"
    context = ssl.create_default_context(cafile=pki.path("backend_ca.crt"))
    context.load_cert_chain(pki.path("router-client.crt"), pki.path("router-client.key"))
    backend = Backend("alpha", URL(alpha.url))
    holder = _Holder()
    probes = HealthProbes(ProbeSettings(3600.0, 1.0), lambda: [backend], lambda _: context, holder)
    first = probes.start(backend)
    assert first is not None
    await first
    assert probes.state_of("alpha") == "unhealthy"
    assert "answered 503" in holder.down["alpha"]
    await eventually(lambda: probes_received(alpha) >= 2, "probed again, still down")
    assert "alpha" in holder.down
    alpha.mode = "ok"
    await eventually(lambda: probes.state_of("alpha") == "healthy", "released")
    assert holder.down == {}
    answered = probes_received(alpha)
    await asyncio.sleep(1.5)  # healthy: no more re-probes
    assert probes_received(alpha) == answered
    probes.close()
    await asyncio.sleep(0)
