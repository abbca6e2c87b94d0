"""operator_pod's own metrics page is valid Prometheus text exposition (read back with
prometheus_client's parser, as a scraper would), labels escaped."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from operator_pod.prometheus import Counter, Gauge, Registry, process_metrics


def test_the_page_parses_as_prometheus_text_with_labels_escaped() -> None:
    registry = Registry()
    process_metrics(registry)
    exits = Counter("x_operator_exits", "Exits, by code.", ["code"], registry=registry)
    up = Gauge("x_operator_up", "1 while it runs.\nSecond line.", registry=registry)
    exits.labels("137").inc()
    exits.labels(code='we"ird\\\n').inc(2)
    up.set(1)
    families = {f.name: f for f in text_string_to_metric_families(registry.expose().decode())}
    assert families["x_operator_exits"].type == "counter"
    assert {(s.labels["code"], s.value) for s in families["x_operator_exits"].samples} == {
        ("137", 1.0),
        ('we"ird\\\n', 2.0),
    }
    assert families["x_operator_up"].samples[0].value == 1.0
    assert families["process_resident_memory_bytes"].samples[0].value > 1024 * 1024
    assert families["process_cpu_seconds"].type == "counter"
