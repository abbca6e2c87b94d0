"""The health probe's verdict on KEDA's answers, its flags, and its bounded rate."""

from __future__ import annotations

import json
import ssl

import pytest
from yarl import URL

from router.backends import Backend
from router.config import RouterConfig
from router.health_probes import ProbeSettings, judge, spacing_s
from router.upstreams import Upstreams, UpstreamSettings

REQUIRED = [
    "--tls-cert-file=c",
    "--tls-private-key-file=k",
    "--tenant-label-key=keda-tenancy.io/tenant",
]


def status(message: str, code: int = 500) -> bytes:
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "message": message,
            "code": code,
        }
    ).encode()


def test_keda_connected_to_its_operator_is_healthy() -> None:
    # What KEDA v2.20.2's provider answers once WaitForConnectionReady passed, for a request
    # without the scaledobject.keda.sh/name label: no scaler and no operator call involved.
    assert judge(500, status("scaledObject name is not specified")) is None
    assert judge(403, status('User "x" cannot get resource', 403)) is None
    assert judge(404, b"") is None
    assert judge(200, b"{}") is None


def test_keda_without_its_operator_is_unhealthy() -> None:
    grpc = "timeout while waiting to establish gRPC connection to KEDA Metrics Service server"
    assert judge(500, status(grpc)) == "its KEDA cannot reach the operator"
    unavailable = "rpc error: code = Unavailable desc = connection refused"
    assert judge(500, status(unavailable)) == "its KEDA's operator is unavailable"
    for code in (502, 503, 504):
        assert judge(code, status("x", code)) == f"answered {code}"


def test_a_thousand_backends_are_not_a_thousand_probes_a_second() -> None:
    settings = ProbeSettings(interval_s=10.0, timeout_s=2.0, max_rate=20.0)
    assert 1 / spacing_s(1000, settings) == pytest.approx(20.0)  # a round takes 50 s
    assert spacing_s(2, settings) == 5.0  # few backends: spread over the interval
    assert spacing_s(0, settings) == 10.0


def test_flags_and_their_environment_defaults() -> None:
    config = RouterConfig.from_args(REQUIRED, {})
    assert config.health_probes == ProbeSettings(10.0, 2.0, 20.0)
    env = {
        "KEDA_TENANCY_ROUTER_HEALTH_PROBE_INTERVAL": "30s",
        "KEDA_TENANCY_ROUTER_HEALTH_PROBE_TIMEOUT": "3s",
        "KEDA_TENANCY_ROUTER_HEALTH_PROBE_MAX_RATE": "5",
    }
    assert RouterConfig.from_args(REQUIRED, env).health_probes == ProbeSettings(30.0, 3.0, 5.0)
    off = RouterConfig.from_args([*REQUIRED, "--health-probe-interval=0s"], {})
    assert off.health_probes.interval_s == 0


@pytest.mark.parametrize(
    "flags",
    [
        ["--health-probe-timeout=0s"],
        ["--health-probe-interval=2s", "--health-probe-timeout=2s"],
        ["--health-probe-max-rate=0"],
    ],
)
def test_invalid_probe_flags_are_refused(flags: list[str]) -> None:
    with pytest.raises(SystemExit):
        RouterConfig.from_args([*REQUIRED, *flags], {})


def test_a_backend_that_answered_a_request_during_the_probe_is_not_held_down() -> None:
    context = ssl.create_default_context()
    upstreams = Upstreams(UpstreamSettings(), lambda _: context, clock=lambda: 100.0)
    backend = Backend("alpha", URL("https://127.0.0.1:1"))
    upstreams.hold_down(backend, "health probe: refused", since=99.0)
    assert upstreams.backend_down(backend)  # nothing answered: held down
    upstreams.release_down(backend)
    assert not upstreams.backend_down(backend)
    upstreams._pools["alpha"].answered_at = 99.5  # a request was answered meanwhile
    upstreams.hold_down(backend, "health probe: refused", since=99.0)
    assert not upstreams.backend_down(backend)
