"""`keda-tenancy-router explain`: where it finds the router, and what it prints."""

from __future__ import annotations

from pathlib import Path

from router.explain_http import _router_health_port, render


def test_the_health_port_is_the_routers_flag_in_the_same_container(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    argv = ["/opt/keda-tenancy/bin/python", "/opt/keda-tenancy/bin/keda-tenancy-router"]
    cmdline.write_bytes("\0".join([*argv, "--secure-port=6443", "--health-port=9091", ""]).encode())
    assert _router_health_port(str(cmdline)) == 9091
    cmdline.write_bytes("\0".join(["/bin/sh", "--health-port=1", ""]).encode())
    assert _router_health_port(str(cmdline)) == 8080  # someone else's process 1: the default


def test_the_answer_starts_with_the_verdict_and_shows_what_it_rests_on() -> None:
    report = {
        "namespace": "beta-apps",
        "verdict": "tenant beta owns beta-apps by label t=beta; its metrics server failed 2 of "
        "the last 2 requests (refused) — tenant down",
        "ownership": {
            "verdict": "owned",
            "tenant": "beta",
            "candidates": ["beta"],
            "rules": [{"rule": "label t", "proposes": ["beta"], "reason": "label t=beta"}],
        },
        "upstream": {
            "name": "beta",
            "url": "https://m.keda-beta.svc",
            "health": [{"source": "fast-fail", "healthy": False, "detail": "down (refused)"}],
        },
        "recent": {
            "namespace": [{"at": 1.0, "status": 503, "message": "refused"}],
            "tenant": {"answers": 2, "unavailable": 2, "errors": 2, "lastErrors": []},
        },
        "operator": {
            "watches": {"known": None, "detail": "no configmap"},
            "access": {"known": True, "detail": "RoleBinding x grants y"},
        },
    }
    assert render(report).splitlines() == [
        report["verdict"],
        "",
        "ownership: owned",
        "  label t: label t=beta -> beta",
        "upstream: https://m.keda-beta.svc",
        "  fast-fail: DOWN: down (refused)",
        "tenant's last 2 requests: 2 failed, 2 without a working metrics server",
        "  503: refused",
        "operator watches it: unknown: no configmap",
        "operator access: yes: RoleBinding x grants y",
    ]
