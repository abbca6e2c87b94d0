"""Slow, partly gone and hung tenants: pools that grow to demand, failures that match
reality, deadlines that fit the HPA, and shutdown with requests still queued."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Callable

import pytest

from router.app import Router
from router.upstreams import REFUSED_GRACE_S
from tests.fakes.tenant_backend import TenantBackend
from tests.router_harness import METRIC_PATH, Pki, RawResponse, raw_request, router_args
from tests.router_harness import running_router as start_router

USER = ("X-Remote-User", "system:serviceaccount:kube-system:horizontal-pod-autoscaler")


def metric(ns: str, name: str = "s0-value") -> str:
    return METRIC_PATH.format(ns=ns, metric=name)


@pytest.fixture
def aggregator(pki: Pki) -> ssl.SSLContext:
    return pki.client_context(pki.aggregator())


@pytest.fixture
async def router(pki: Pki, tenancy_file: Callable[..., str]) -> AsyncIterator[Router]:
    async with start_router(router_args(pki, tenancy_file())) as router:  # default flags
        yield router


async def burst(
    router: Router, aggregator: ssl.SSLContext, ns: str, count: int
) -> list[RawResponse]:
    assert router.secure_port
    port = router.secure_port
    return list(
        await asyncio.gather(
            *(raw_request(port, aggregator, metric(ns), (USER,)) for _ in range(count))
        )
    )


@pytest.mark.parametrize("count", [30, 64])
async def test_a_burst_to_a_slow_tenant_gets_a_connection_per_waiting_request(
    router: Router,
    aggregator: ssl.SSLContext,
    backends: dict[str, TenantBackend],
    count: int,
) -> None:
    alpha = backends["alpha"]
    alpha.delay_s = 1.0  # a slow scaler behind this tenant's KEDA
    # No answer leaves before the whole burst has arrived: a request queued behind a busy
    # connection would wait for ever (504), however slowly this machine runs the clients.
    alpha.hold_until_received = count
    started = time.monotonic()
    answers = await burst(router, aggregator, "alpha-ns", count)
    connections = len({r.connection for r in alpha.received})
    print(f"{count} at 1 s: {time.monotonic() - started:.1f} s, {connections} connections")
    assert [a.status for a in answers] == [200] * count
    # Each waiting request got its own connection (up to --upstream-max-connections, 64),
    # instead of queueing behind a few busy ones for rounds.
    assert len({r.connection for r in alpha.received}) == count


async def test_a_failed_dial_fails_nothing_that_open_connections_can_serve(
    router: Router, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    alpha = backends["alpha"]
    alpha.delay_s = 0.3
    assert [a.status for a in await burst(router, aggregator, "alpha-ns", 4)] == [200] * 4
    kept = {r.connection for r in alpha.received}
    alpha.stop_listening()  # one replica gone: every new connection is refused
    answers = await burst(router, aggregator, "alpha-ns", 12)
    after = (await burst(router, aggregator, "alpha-ns", 1))[0]
    print(f"{len(kept)} kept; then {sorted(a.status for a in answers)}, next {after.status}")
    assert len(kept) == 4
    assert [a.status for a in answers] == [200] * 12, [a.body for a in answers]
    assert {r.connection for r in alpha.received} == kept
    assert after.status == 200  # not marked down: forwarded as usual


async def reads_every_100ms(
    router: Router, aggregator: ssl.SSLContext, ns: str, count: int
) -> list[RawResponse]:
    """As the HPA's reads and the cluster suite's reader come: one at a time, spaced."""
    reads = []
    for _ in range(count):
        reads.append(asyncio.create_task(burst(router, aggregator, ns, 1)))
        await asyncio.sleep(0.1)
    return [(await read)[0] for read in reads]


async def test_a_metrics_server_being_rolled_fails_no_read(
    router: Router, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    """Issue 22: a rollout closes the old pod's connections, and for a moment new ones are
    refused (the Service still sends some to the pod that is going). Reads wait it out."""
    alpha = backends["alpha"]
    assert (await burst(router, aggregator, "alpha-ns", 1))[0].status == 200
    port = alpha.port
    await alpha.stop()

    async def new_pod() -> None:
        await asyncio.sleep(0.6)
        await alpha.start(port)

    back = asyncio.create_task(new_pod())
    started = time.monotonic()
    answers = await reads_every_100ms(router, aggregator, "alpha-ns", 12)
    await back
    print(f"rolled: {[a.status for a in answers]} in {time.monotonic() - started:.2f} s")
    assert [a.status for a in answers] == [200] * 12, [a.body for a in answers]
    fast_failed = router.registry.get_sample_value(
        "keda_tenancy_router_upstream_fast_failed_total", {"tenant": "alpha"}
    )
    assert not fast_failed


async def test_a_tenant_that_answered_and_died_fails_after_the_grace_then_fast(
    router: Router, aggregator: ssl.SSLContext, backends: dict[str, TenantBackend]
) -> None:
    alpha = backends["alpha"]
    assert (await burst(router, aggregator, "alpha-ns", 1))[0].status == 200
    await alpha.stop()  # and never back
    started = time.monotonic()
    waiting = asyncio.create_task(burst(router, aggregator, "alpha-ns", 3))
    # Meanwhile the other tenant is served as usual.
    assert [a.status for a in await reads_every_100ms(router, aggregator, "beta-ns", 5)] == [
        200
    ] * 5
    first = await waiting
    waited = time.monotonic() - started
    print(f"refused for good: {[a.status for a in first]} after {waited:.2f} s")
    assert [a.status for a in first] == [503] * 3
    assert "the metrics server of alpha is unreachable" in str(first[0].json()["message"])
    assert waited >= REFUSED_GRACE_S  # dialled again all that while
    # Then it is down: failed at once, not dialled.
    later = (await burst(router, aggregator, "alpha-ns", 1))[0]
    assert later.status == 503
    assert "failing fast" in str(later.json()["message"])


async def test_a_hung_tenant_is_answered_fast_after_one_deadline_and_probed_back(
    pki: Pki,
    tenancy_file: Callable[..., str],
    aggregator: ssl.SSLContext,
    backends: dict[str, TenantBackend],
) -> None:
    alpha = backends["alpha"]
    async with start_router(router_args(pki, tenancy_file(), "--upstream-timeout=1s")) as router:
        assert router.secure_port
        alpha.mode = "hang"
        first = await burst(router, aggregator, "alpha-ns", 3)
        assert [a.status for a in first] == [504] * 3
        forwarded = len(alpha.received)
        # Nothing came back during a whole deadline: the next callers are not held.
        started = time.monotonic()
        later = await burst(router, aggregator, "alpha-ns", 5)
        print(
            f"after a deadline: {[a.status for a in later]} in {time.monotonic() - started:.2f} s"
        )
        assert [a.status for a in later] == [503] * 5
        assert "failing fast" in str(later[0].json()["message"])
        assert len(alpha.received) == forwarded  # not forwarded at all
        # The other tenant is untouched.
        assert (await burst(router, aggregator, "beta-ns", 1))[0].status == 200
        metrics = router.registry.get_sample_value
        assert metrics("keda_tenancy_router_upstream_timeouts_total", {"tenant": "alpha"}) == 3
        assert metrics("keda_tenancy_router_upstream_fast_failed_total", {"tenant": "alpha"}) == 5
        # Back to health: once the cooldown is over one request probes, and it answers.
        alpha.mode = "ok"
        alpha.hang_released.set()
        for _ in range(100):
            answer = (await burst(router, aggregator, "alpha-ns", 1))[0]
            if answer.status == 200:
                break
            assert answer.status == 503
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the tenant never came back")


async def test_stop_answers_requests_still_queued_for_a_connection(
    pki: Pki,
    tenancy_file: Callable[..., str],
    aggregator: ssl.SSLContext,
    backends: dict[str, TenantBackend],
) -> None:
    alpha = backends["alpha"]
    alpha.delay_s = 1.0
    async with start_router(
        router_args(pki, tenancy_file(), "--shutdown-grace-period=6s")
    ) as router:
        assert router.secure_port
        port = router.secure_port
        requests = [
            asyncio.create_task(raw_request(port, aggregator, metric("alpha-ns"), (USER,)))
            for _ in range(30)
        ]
        for _ in range(500):  # every request accepted by the router
            if router.upstreams.in_flight().get("alpha", 0) == 30:
                break
            await asyncio.sleep(0.01)
        # running_router stops the router here: the 30 are accepted, most still queued.
    answers = await asyncio.gather(*requests, return_exceptions=True)
    statuses = [a.status if isinstance(a, RawResponse) else type(a).__name__ for a in answers]
    print(
        f"30 queued at SIGTERM: {statuses.count(200)} answered 200; {sorted(set(map(str, statuses)))}"
    )
    assert statuses == [200] * 30


async def test_requests_still_waiting_when_the_grace_period_ends_are_answered_503(
    pki: Pki,
    tenancy_file: Callable[..., str],
    aggregator: ssl.SSLContext,
    backends: dict[str, TenantBackend],
) -> None:
    alpha = backends["alpha"]
    alpha.mode = "hang"
    async with start_router(
        router_args(pki, tenancy_file(), "--shutdown-grace-period=2s", "--upstream-timeout=30s")
    ) as router:
        assert router.secure_port
        port = router.secure_port
        requests = [
            asyncio.create_task(raw_request(port, aggregator, metric("alpha-ns"), (USER,)))
            for _ in range(5)
        ]
        for _ in range(500):
            if len(alpha.received) == 5:
                break
            await asyncio.sleep(0.01)
    answers = await asyncio.gather(*requests, return_exceptions=True)
    statuses = [a.status if isinstance(a, RawResponse) else type(a).__name__ for a in answers]
    print(f"waiting at the end of the grace period: {statuses}")
    assert statuses == [503] * 5
    assert isinstance(answers[0], RawResponse)
    assert "the router is stopping" in str(answers[0].json()["message"])
