"""The footprint benchmark's reading of kube-apiserver's audit log and of the pod specs: the
per-tenant figures (requests/s, Lease writes/s, open watches, requests) come from these."""

from __future__ import annotations

import json
from pathlib import Path

from bench.footprint_audit import AuditLog, open_watches_in, usage_by_caller, watch_ends
from bench.footprint_node import containers_of, cpu_millicores, memory_mib

OPERATOR = "system:serviceaccount:keda-alpha:keda-operator"


def line(
    audit_id: str,
    stage: str,
    verb: str,
    at: str,
    user: str = OPERATOR,
    resource: str = "scaledobjects",
    namespace: str = "apps",
    agent: str = "keda/v2.20.2 (linux/amd64)",
) -> str:
    return json.dumps(
        {
            "auditID": audit_id,
            "stage": stage,
            "verb": verb,
            "user": {"username": user},
            "userAgent": agent,
            "objectRef": {"resource": resource, "namespace": namespace, "name": "x"},
            "stageTimestamp": f"2026-12-07T10:00:{at}Z",
        }
    )


def test_rates_and_open_watches_by_caller(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(
        "\n".join(
            [
                line("w1", "ResponseStarted", "watch", "00.000000"),  # opened before, still open
                line("w2", "ResponseStarted", "watch", "01.000000"),
                line("w2", "ResponseComplete", "watch", "15.000000"),  # ended in the window
                line("l1", "ResponseComplete", "update", "12.000000", resource="leases"),
                line("l2", "ResponseComplete", "update", "14.000000", resource="leases"),
                line("g1", "ResponseComplete", "get", "13.000000"),
                # a review is answered and forgotten: a request, not a write
                line("s1", "ResponseComplete", "create", "13.5", resource="subjectaccessreviews"),
                line("g0", "ResponseComplete", "get", "05.000000"),  # before the window
                line("g9", "ResponseComplete", "get", "40.000000"),  # after it
                line("w3", "ResponseStarted", "watch", "16.000000", agent="Python-urllib/3.11"),
            ]
        )
        + "\n"
        + line("p1", "ResponseComplete", "get", "17.0")[:30]  # a line still being written
    )
    audit = AuditLog(log)
    events = audit.read()
    start = events[0].at + 10  # 10:00:10
    usage = usage_by_caller(events, start, start + 20)
    keda = usage[f"{OPERATOR} [keda]"]
    assert (keda.requests, keda.writes, keda.lease_writes, keda.open_watches) == (4, 2, 2, 1)
    assert keda.by_call == {
        "update leases": 2,
        "get scaledobjects": 1,
        "create subjectaccessreviews": 1,
    }
    python = usage[f"{OPERATOR} [Python-urllib]"]
    assert (python.requests, python.open_watches) == (1, 1)


def test_a_line_is_read_once_when_its_end_arrives(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    whole = line("g1", "ResponseComplete", "get", "13.000000")
    log.write_text(whole[:20])
    audit = AuditLog(log)
    assert audit.read() == []
    with log.open("a") as more:
        more.write(whole[20:] + "\n")
    assert [e.audit_id for e in audit.read()] == ["g1"]
    assert [e.audit_id for e in audit.read()] == ["g1"]


def test_watches_in_a_namespace_and_their_end(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_text(
        "\n".join(
            [
                line("a", "ResponseStarted", "watch", "01.000000"),
                line("b", "ResponseStarted", "watch", "01.000000", namespace="other"),
                line("c", "ResponseStarted", "watch", "01.000000", user="system:node:n"),
                line("d", "ResponseStarted", "watch", "02.000000"),
                line("d", "ResponseComplete", "watch", "03.000000"),
            ]
        )
        + "\n"
    )
    events = AuditLog(log).read()
    tenant = open_watches_in(events, "apps", lambda user: user == OPERATOR)
    assert set(tenant) == {"a"}
    with log.open("a") as more:
        more.write(line("a", "ResponseComplete", "watch", "09.500000") + "\n")
    ended = list(watch_ends(AuditLog(log).read(), set(tenant)))
    assert [e.at - events[0].at for e in ended] == [8.5]


def test_requests_come_from_the_running_containers_specs() -> None:
    pod = {
        "metadata": {"name": "keda-operator-6d9f-abcde", "uid": "u1"},
        "spec": {
            "containers": [
                {
                    "name": "keda-operator",
                    "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                },
                {"name": "reloader", "resources": {"requests": {"cpu": "0.01", "memory": "1Gi"}}},
            ]
        },
        "status": {
            "containerStatuses": [
                {
                    "name": "keda-operator",
                    "containerID": "containerd://c1",
                    "state": {"running": {}},
                },
                {"name": "reloader", "containerID": "containerd://c2", "state": {"waiting": {}}},
            ]
        },
    }
    (ref,) = containers_of([pod])
    assert (ref.container, ref.container_id, ref.cpu_request_m, ref.memory_request_mib) == (
        "keda-operator",
        "c1",
        100,
        128.0,
    )
    assert cpu_millicores("0.01") == 10
    assert memory_mib("1Gi") == 1024.0
    assert memory_mib("65536Ki") == 64.0
