"""Namespace -> backend for each tenancy mode, over a namespace cache view."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry

from router.app import RequestHeaderSource
from router.backends import BackendResolver
from router.config import RouterConfig
from router.metrics import RouterMetrics
from router.status import StatusError
from router.tenants import TenantDirectory
from tenancy_common.names import NamespaceName
from tenancy_common.namespace import Namespace
from tenancy_common.tenancy import HncTreeRule, LabelValueRule, NamePatternRule, TenancyRule

TEMPLATE = "https://keda.{tenant}.svc:6443"


def directory(
    rule: TenancyRule, *namespaces: Namespace, default: str | None = None
) -> TenantDirectory:
    view = {ns.name: ns for ns in namespaces}
    return TenantDirectory(
        rule,
        BackendResolver(TEMPLATE, {}, default),
        lambda: view,
        RouterMetrics(CollectorRegistry()),
    )


def ns(name: str, **labels: str) -> Namespace:
    return Namespace(NamespaceName(name), labels)


def host(d: TenantDirectory, name: str) -> str:
    return str(d.backend_for(NamespaceName(name)).origin.host)


def test_label_mode() -> None:
    d = directory(
        TenancyRule((LabelValueRule("capsule.clastix.io/tenant"),)),
        ns("web", **{"capsule.clastix.io/tenant": "oil"}),
    )
    assert host(d, "web") == "keda.oil.svc"


def test_hnc_mode() -> None:
    d = directory(
        TenancyRule((HncTreeRule(root_label_key="keda-tenancy.io/tenant-root"),)),
        ns(
            "org-a", **{"org-a.tree.hnc.x-k8s.io/depth": "0", "keda-tenancy.io/tenant-root": "true"}
        ),
        ns(
            "org-a-dev",
            **{"org-a.tree.hnc.x-k8s.io/depth": "1", "org-a-dev.tree.hnc.x-k8s.io/depth": "0"},
        ),
    )
    assert host(d, "org-a-dev") == "keda.org-a.svc"


def test_name_pattern_mode_needs_the_namespace_to_exist() -> None:
    d = directory(
        TenancyRule((NamePatternRule(re.compile(r"(?P<tenant>[a-z0-9-]+?)--.+")),)),
        ns("pfn--train"),
    )
    assert host(d, "pfn--train") == "keda.pfn.svc"
    with pytest.raises(StatusError) as caught:
        d.backend_for(NamespaceName("pfn--missing"))
    assert caught.value.code == 404


def test_conflicts_never_fall_through_to_the_default_upstream() -> None:
    rule = TenancyRule((LabelValueRule("a"), LabelValueRule("b")))
    d = directory(rule, ns("both", a="x", b="y"), ns("none"), default="https://platform-keda:443")
    with pytest.raises(StatusError) as caught:
        d.backend_for(NamespaceName("both"))
    assert caught.value.code == 404
    assert host(d, "none") == "platform-keda"


def test_decisions_follow_cache_changes_after_invalidate() -> None:
    view = {NamespaceName("web"): ns("web", t="one")}
    rule = TenancyRule((LabelValueRule("t"),))
    d = TenantDirectory(
        rule, BackendResolver(TEMPLATE, {}, None), lambda: view, RouterMetrics(CollectorRegistry())
    )
    assert host(d, "web") == "keda.one.svc"
    view[NamespaceName("web")] = ns("web", t="two")
    d.invalidate()
    assert host(d, "web") == "keda.two.svc"


def test_requestheader_settings_from_the_configmap() -> None:
    config = RouterConfig.from_args(
        ["--tls-cert-file=/c", "--tls-private-key-file=/k", "--tenant-label-key=t"], {}
    )
    source = RequestHeaderSource(config)
    assert source.from_cluster
    with pytest.raises(OSError):
        source.ca_pem()
    data = {
        "requestheader-client-ca-file": "-----BEGIN CERTIFICATE-----\n...",
        "requestheader-allowed-names": '["front-proxy-client"]',
        "requestheader-username-headers": '["X-Remote-User"]',
        "requestheader-group-headers": '["X-Remote-Group"]',
        "requestheader-extra-headers-prefix": '["X-Remote-Extra-"]',
    }
    assert source.update_from_configmap(data)
    assert not source.update_from_configmap(data)
    assert source.allowed_names == {"front-proxy-client"}
    assert source.ca_pem().startswith(b"-----BEGIN CERTIFICATE-----")
    with pytest.raises(ValueError):
        source.update_from_configmap({})


def test_not_synced_yet_is_503_not_404() -> None:
    synced = False
    d = TenantDirectory(
        TenancyRule((LabelValueRule("t"),)),
        BackendResolver(TEMPLATE, {}, None),
        dict,
        RouterMetrics(CollectorRegistry()),
        synced=lambda: synced,
    )
    with pytest.raises(StatusError) as caught:
        d.backend_for(NamespaceName("web"))
    assert caught.value.code == 503
    synced = True
    with pytest.raises(StatusError) as caught:
        d.backend_for(NamespaceName("web"))
    assert caught.value.code == 404
