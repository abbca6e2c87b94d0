"""Which namespaces keda-tenancy-certs serves from its namespace watch between full passes."""

from __future__ import annotations

import re

from controller.certs.watch import NewNamespaces
from tenancy_common.names import NamespaceName
from tenancy_common.namespace import Namespace
from tenancy_common.namespace_cache import NamespaceCache

PATTERN = re.compile(r"keda-(?P<tenant>[a-z0-9-]+)")


def cache_of(*names: str, terminating: tuple[str, ...] = ()) -> NamespaceCache:
    cache = NamespaceCache()
    cache.replace(Namespace(NamespaceName(n), terminating=n in terminating) for n in names)
    return cache


def test_only_tenant_namespaces_the_first_pass_did_not_list_are_new() -> None:
    cache = cache_of("default", "keda-system", "keda-alpha", "keda-beta", "apps")
    new = NewNamespaces(cache, PATTERN, "keda-system")
    assert new.take(0) == ([], [])  # before the first pass: it serves everything
    new.passed(["keda-alpha"])
    assert new.take(0) == (["keda-beta"], [])  # appeared between the pass's list and the cache
    assert new.take(0) == ([], [])
    cache.apply("ADDED", Namespace(NamespaceName("keda-gamma")))
    cache.apply("MODIFIED", Namespace(NamespaceName("keda-alpha"), terminating=True))
    assert new.take(0) == (["keda-gamma"], ["keda-alpha"])
    # A later pass is no baseline: what the watch did not hand out yet still comes.
    cache.apply("ADDED", Namespace(NamespaceName("keda-delta")))
    new.passed(["keda-beta", "keda-gamma", "keda-delta"])
    assert new.take(0) == (["keda-delta"], [])


def test_a_namespace_without_a_grant_is_tried_again_ever_later_then_left_to_the_passes() -> None:
    cache = cache_of("keda-system", "keda-alpha")
    new = NewNamespaces(cache, PATTERN, "keda-system")
    new.passed([])
    assert new.take(0) == (["keda-alpha"], [])
    tries = []
    now = 0.0
    while True:
        new.not_granted(["keda-alpha"], now)
        wait = new.next_try_in_s(now)
        if wait is None:
            break
        now += wait
        assert new.take(now) == (["keda-alpha"], [])
        tries.append(now)
    assert tries == [1, 3, 7, 15, 31, 63, 127]
    # Granted: no more tries; gone: none either.
    cache.apply("ADDED", Namespace(NamespaceName("keda-beta")))
    assert new.take(now) == (["keda-beta"], [])
    new.not_granted(["keda-beta"], now)
    cache.apply("DELETED", Namespace(NamespaceName("keda-beta")))
    assert new.take(now + 5) == ([], ["keda-beta"])
    assert new.next_try_in_s(now + 5) is None
