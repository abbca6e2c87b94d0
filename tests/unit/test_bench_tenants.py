"""bench.tenants' pure parts: the tenant objects built from one rendering of the chart, the
latencies read from recorded changes, and the figures (percentiles, request rates, /proc,
the table)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import tenants_objects as objects
from bench.tenants import binding_latency, first_after, operator_latency, set_latency
from bench.tenants_api import Api, Change, Recorder
from bench.tenants_stats import (
    authorization_seconds,
    mean_ms,
    parse_cpu_ticks,
    parse_status_kib,
    percentile,
    rates_by_verb,
    ratio,
    request_counts,
    summarize,
    table,
    writes_per_second,
)

P = objects.PLACEHOLDER


def rendered() -> list[dict[str, Any]]:
    """A trimmed tenant release as the chart renders it for PLACEHOLDER (platform layout)."""
    ns = f"keda-{P}"
    return [
        {"kind": "ServiceAccount", "metadata": {"name": "keda-operator", "namespace": ns}},
        {
            "kind": "ConfigMap",
            "metadata": {
                "name": "keda-operator-namespaces",
                "namespace": ns,
                "labels": {objects.PLATFORM_LABEL: "namespaces", objects.TENANT_LABEL: P},
            },
        },
        {
            "kind": "RoleBinding",
            "metadata": {
                "name": "keda-tenancy-controller",
                "namespace": ns,
                "labels": {objects.PLATFORM_LABEL: "grant"},
                "annotations": {
                    "keda-tenancy.io/operator-clusterrole": f"keda-tenancy-{P}-operator",
                    "keda-tenancy.io/lease": f"{P}.operator.keda-tenancy.io",
                },
            },
            "roleRef": {"kind": "Role", "name": "keda-tenancy-controller"},
            "subjects": [
                {"kind": "ServiceAccount", "name": "keda-tenancy-controller", "namespace": "sys"}
            ],
        },
        {"kind": "ClusterRole", "metadata": {"name": f"keda-tenancy-{P}-operator"}},
        {
            "kind": "Deployment",
            "metadata": {"name": "keda-operator", "namespace": ns},
            "spec": {
                "template": {
                    "metadata": {"labels": {"app.kubernetes.io/component": "operator"}},
                    "spec": {"containers": [{"name": "keda-operator"}]},
                }
            },
        },
        {"kind": "Service", "metadata": {"name": "keda-operator", "namespace": ns}},
        {
            "kind": "Role",
            "metadata": {
                "name": "hook",
                "namespace": ns,
                "annotations": {"helm.sh/hook": "pre-delete"},
            },
        },
    ]


def test_each_tenant_gets_the_rendered_objects_under_its_own_name() -> None:
    template = objects.template_objects(rendered())
    kinds = sorted(o["kind"] for o in template)
    # Services are not created, hooks exist only during uninstall, the Deployment becomes a Pod.
    assert kinds == ["ClusterRole", "ConfigMap", "Pod", "RoleBinding", "ServiceAccount"]

    built = objects.for_tenant(template, "t0042")
    assert P not in json.dumps(built)
    grant = next(o for o in built if o["kind"] == "RoleBinding")
    assert grant["metadata"]["namespace"] == "keda-t0042"
    assert grant["metadata"]["annotations"]["keda-tenancy.io/operator-clusterrole"] == (
        "keda-tenancy-t0042-operator"
    )
    # the controller's subject is not the tenant's to rename
    assert grant["subjects"][0]["namespace"] == "sys"
    lease = next(o for o in built if o["kind"] == "Lease")
    assert lease["metadata"] == {
        "name": "t0042.operator.keda-tenancy.io",
        "namespace": "keda-t0042",
    }
    pod = next(o for o in built if o["kind"] == "Pod")
    assert pod["metadata"]["labels"] == {"app.kubernetes.io/component": "operator"}
    # the template is not changed by building a tenant from it
    assert P in json.dumps(template)


def test_a_chart_without_the_platform_layout_is_refused() -> None:
    docs = [d for d in rendered() if d["kind"] != "RoleBinding"]
    with pytest.raises(ValueError, match=r"platformController\.enabled"):
        objects.template_objects(docs)


def test_creation_waves_put_namespaces_first_and_grants_last() -> None:
    built = [
        objects.namespace("keda-t1"),
        *objects.for_tenant(objects.template_objects(rendered()), "t1"),
    ]
    waves = objects.creation_order(built)
    assert [o["kind"] for o in waves[0]] == ["Namespace"]
    assert [o["kind"] for o in waves[1]] == ["ServiceAccount"]
    assert [o["kind"] for o in waves[-1]] == ["RoleBinding"]
    assert sum(len(w) for w in waves) == len(built)


def test_paths_names_and_label_patches() -> None:
    assert objects.collection_path("Namespace") == "/api/v1/namespaces"
    assert objects.collection_path("RoleBinding", "a") == (
        "/apis/rbac.authorization.k8s.io/v1/namespaces/a/rolebindings"
    )
    assert objects.object_path(objects.lease("keda-t1", "l")) == (
        "/apis/coordination.k8s.io/v1/namespaces/keda-t1/leases/l"
    )
    with pytest.raises(ValueError):
        objects.collection_path("ConfigMap")
    assert objects.app_namespaces("t0001", 3) == ["t0001-ns00", "t0001-ns01", "t0001-ns02"]
    assert objects.namespace("x", "t1")["metadata"]["labels"] == {objects.TENANT_LABEL: "t1"}
    # null in a merge patch removes the label
    assert objects.label_patch(None) == {"metadata": {"labels": {objects.TENANT_LABEL: None}}}
    assert objects.binding_name("t1") == "keda-tenancy-operator-t1"


def test_published_sets() -> None:
    assert objects.namespaces_in({"metadata": {}}) is None  # not decided yet
    assert objects.namespaces_in({"data": {"namespaces": ""}}) == frozenset()  # decided empty
    assert objects.namespaces_in({"data": {"namespaces": "a,b"}}) == {"a", "b"}


def recorder(changes: dict[tuple[str, str], list[Change]]) -> Recorder:
    made = Recorder(Api(0, Path(), Path(), Path()), "/x", "s")
    made.changes = changes
    return made


def cm(names: str | None) -> dict[str, Any]:
    return {"metadata": {}, **({"data": {"namespaces": names}} if names is not None else {})}


def test_latencies_count_from_the_change_to_the_first_effect_after_it() -> None:
    key = ("apps", "keda-tenancy-operator-t1")
    rbs = recorder(
        {
            key: [
                Change(1.0, "ADDED", {}),  # before the change: not its effect
                Change(5.5, "MODIFIED", {}),  # marked for deletion still grants
                Change(6.0, "DELETED", {}),
                Change(9.0, "ADDED", {}),
            ]
        }
    )
    assert binding_latency(rbs, "apps", "t1", 5.0, join=False) == 1.0
    assert binding_latency(rbs, "apps", "t1", 8.0, join=True) == 1.0
    assert binding_latency(rbs, "apps", "t1", 9.5, join=True) is None  # not seen (yet)
    cms = recorder(
        {
            ("keda-t1", objects.NAMESPACES_CONFIGMAP): [
                Change(1.0, "ADDED", cm(None)),
                Change(2.0, "MODIFIED", cm("apps,b")),
                Change(4.5, "MODIFIED", cm("b")),
            ]
        }
    )
    assert set_latency(cms, "apps", "t1", 1.5, join=True) == 0.5
    assert set_latency(cms, "apps", "t1", 4.0, join=False) == 0.5
    # an undecided set is neither with nor without it
    assert set_latency(cms, "apps", "t1", 0.5, join=False) == 4.0
    assert first_after([], 0.0, lambda c: True) is None


def test_operator_latency_from_the_stand_in_log(tmp_path: Path) -> None:
    log = tmp_path / "child.jsonl"
    log.write_text(
        "\n".join(
            [
                json.dumps({"event": "start", "t": 1.0, "watch_namespace": "a,b"}),
                json.dumps({"event": "signal", "t": 2.0}),
                json.dumps({"event": "start", "t": 2.5, "watch_namespace": "a"}),
                '{"event": "sta',  # still being written
            ]
        )
    )
    assert operator_latency(log, "b", 2.0, join=False) == 0.5
    assert operator_latency(log, "b", 0.5, join=True) == 0.5
    assert operator_latency(log, "c", 0.0, join=True) is None
    assert operator_latency(tmp_path / "none", "a", 0.0, join=True) is None


def test_percentiles_and_summaries() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))
    summary = summarize([0.2, None, 0.1, 0.4])
    assert (summary.count, summary.missing, summary.p50, summary.max) == (3, 1, 0.2, 0.4)
    assert summary.cell() == "0.20/0.40/0.40 (1 unseen)"
    assert summarize([]).cell() == "-"
    assert summarize([None]).cell() == "- (1 unseen)"


METRICS = """# HELP apiserver_request_total Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="configmaps",scope="resource",subresource="",verb="PATCH",version="v1"} 10
apiserver_request_total{code="403",component="apiserver",dry_run="",group="",resource="configmaps",scope="resource",subresource="",verb="PATCH",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="",resource="namespaces",scope="cluster",subresource="",verb="WATCH",version="v1"} 3
apiserver_request_total_other{verb="GET"} 99
apiserver_request_duration_seconds_count{verb="GET"} 5
"""


def test_request_rates_by_verb_from_the_api_servers_metrics() -> None:
    before = request_counts(METRICS)
    assert before == {("PATCH", "configmaps"): 12.0, ("WATCH", "namespaces"): 3.0}
    after = {**before, ("PATCH", "configmaps"): 32.0, ("DELETE", "rolebindings"): 10.0}
    rates = rates_by_verb(before, after, 10.0)
    assert rates == {"DELETE": 1.0, "PATCH": 2.0}
    assert writes_per_second({**rates, "GET": 5.0}) == 3.0


def test_authorization_time_per_request() -> None:
    text = (
        'authorization_duration_seconds_sum{result="allowed"} 2.5\n'
        'authorization_duration_seconds_count{result="allowed"} 100\n'
        'authorization_duration_seconds_sum{result="denied"} 0.5\n'
        'authorization_duration_seconds_count{result="denied"} 100\n'
        'authorization_duration_seconds_bucket{result="allowed",le="0.001"} 7\n'
    )
    assert authorization_seconds(text) == (3.0, 200.0)
    assert mean_ms((1.0, 100.0), (3.0, 200.0)) == 20.0
    assert math.isnan(mean_ms((1.0, 100.0), (1.0, 100.0)))


def test_proc_readers_and_the_table() -> None:
    assert (
        parse_status_kib("Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n", "VmRSS") == 1024
    )
    assert parse_status_kib("Name:\tx\n", "VmRSS") == 0
    # the command may hold spaces and parentheses
    assert parse_cpu_ticks("42 (a (b) c) S " + " ".join(["0"] * 10) + " 7 5 0 0") == 12
    assert ratio(256.0, 512.0) == "0.50"
    assert ratio(math.nan, 2.0) == "-"
    assert table(["a", "bb"], [["xxx", "1"]]).splitlines() == ["a    bb", "---  --", "xxx  1"]


def test_the_report_reads_back_from_its_json() -> None:
    from dataclasses import asdict  # noqa: PLC0415

    from bench.tenants import Result, load, report  # noqa: PLC0415
    from bench.tenants_stats import ProcessUse  # noqa: PLC0415

    use = ProcessUse(rss_mib=100.0, peak_rss_mib=128.0, cpu_s=3.0)
    result = Result(
        tenants=1000,
        namespaces=10,
        objects=35000,
        create_s=100.0,
        sync_s=30.0,
        sync_use=use,
        rest_use=use,
        end_use=use,
        rest_s=60.0,
        rest_cpu_s=0.6,
        rest_api={"GET": 0.1, "PUT": 0.1},
        rest_controller={"watch pods": 0.0},
        rest_controller_writes=0.5,
        rest_by_user={"system:apiserver": 0.2},
        bursts_api={"leave": {"PATCH": 50.0}},
        bursts_controller={
            "leave": {"requests/s": 80.0, "writes/s": 40.0, "window_s": 12.0, "sent_s": 4.0}
        },
        latencies={
            "burst leave: leave": {
                "binding": summarize([1.0, 3.0]),
                "set": summarize([0.5]),
                "operator": summarize([]),
            }
        },
        sampled_operators=20,
    )
    text = report([load(json.loads(json.dumps(asdict(result))))])
    assert "system:apiserver 0.20" in text
    assert "1.00/3.00/3.00" in text  # binding p50/p99/max
    # ratios: 128/512 MiB, p99 3.0/2 s, 0.5 writes/s over 1,000 tenants against 0.1 each
    assert "0.25 (128/512 MiB)" in text
    assert "1.50 (3.00/2 s)" in text
    assert "0.01 (0.0005/0.1)" in text
