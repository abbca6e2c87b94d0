"""Property: the router and every tenant's reloader give each namespace the same owner.

Random namespace forests as HNC labels them (a `<ancestor>.tree.hnc.x-k8s.io/depth` label
for every ancestor and itself, roots nested in roots), tenant labels under two keys (some
invalid, some disagreeing), names a pattern can read two ways, static lists, and random
moves between tenants, under random combinations of rules. The router's side is its
TenantDirectory over the whole cache with the rule it loads from the published document;
each tenant's side is what its reloader does: the same document parsed as the reloader
parses the ConfigMap, its namespace watch narrowed by the selector the reloader would ask
the API server for, then `desired_namespaces`. Seeded, so a failure replays.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from reloader.config import watch_selector
from reloader.desired import desired_namespaces
from reloader.rule_source import parse_published_rule
from reloader.schedule import SchedulePolicy
from router.backends import BackendResolver
from router.metrics import RouterMetrics
from router.tenants import TenantDirectory
from tenancy_common.names import NamespaceName, TenantName, is_dns1123_label
from tenancy_common.namespace import Namespace
from tenancy_common.tenancy import HNC_DEPTH_SUFFIX, TenancyRule
from tenancy_common.tenancy_config import load_rule_document, parse_rule_document
from tests.fakes.kube_api import _matches, _parse_selector

TENANTS = ("a", "b", "a--b", "c", "team-x")
ROOT_LABEL = "example.com/tenant-root"
KEYS = ("keda-tenancy.io/tenant", "capsule.clastix.io/tenant")
PATTERNS = (
    "(?P<tenant>[a-z0-9-]+?)--.+",  # ambiguous: a--b--x is a or a--b
    "(?P<tenant>[a-z0-9]+(-[a-z0-9]+)*)--.+",  # unambiguous: the first "--" ends the tenant
)
SEEDS = range(100)


def random_rule(rng: random.Random) -> dict[str, Any]:
    """A rule document: one kind of rule alone (where a watch may be narrowed), or several."""
    doc: dict[str, Any] = {
        "labelKeys": [],
        "hnc": {"roots": [], "rootLabel": ""},
        "namespaceNamePattern": "",
        "tenants": {},
    }
    kinds = ["labels", "hnc-roots", "hnc-label", "pattern", "static"]
    weights = [1, 1, 2, 1, 1]  # root labels are where a narrowed watch would go wrong
    alone = rng.random() < 0.5
    chosen = rng.choices(kinds, weights) if alone else rng.sample(kinds, rng.randint(2, 4))
    for kind in chosen:
        if kind == "labels":
            doc["labelKeys"] = rng.sample(KEYS, rng.randint(1, 2))
        elif kind == "hnc-roots":
            doc["hnc"]["roots"] = rng.sample(TENANTS, rng.randint(1, len(TENANTS)))
        elif kind == "hnc-label":
            doc["hnc"]["rootLabel"] = rng.choice((ROOT_LABEL, f"{ROOT_LABEL}=yes"))
        elif kind == "pattern":
            doc["namespaceNamePattern"] = rng.choice(PATTERNS)
        else:
            doc["tenants"] = {
                tenant: {"namespaces": [f"static-{rng.randint(0, 5)}", f"{tenant}--db"]}
                for tenant in rng.sample(TENANTS, 2)
            }
    return doc


def random_namespaces(rng: random.Random) -> dict[str, dict[str, str]]:
    """name -> labels: an HNC forest (roots may sit under other roots) plus loose names."""
    parents: dict[str, str | None] = {}
    names = [*TENANTS, *(f"{t}--{s}" for t in TENANTS for s in ("dev", "b--prod", "x"))]
    names += [f"static-{i}" for i in range(6)] + ["kube-system", "shared"]
    rng.shuffle(names)
    for name in names:
        placed = list(parents)
        parents[name] = rng.choice(placed) if placed and rng.random() < 0.5 else None
    return {name: labels_for(rng, name, parents) for name in names}


def labels_for(rng: random.Random, name: str, parents: Mapping[str, str | None]) -> dict[str, str]:
    labels: dict[str, str] = {}
    depth, node = 0, name
    while node is not None:  # HNC writes one depth label per ancestor, itself at 0
        labels[f"{node}{HNC_DEPTH_SUFFIX}"] = str(depth)
        node, depth = parents[node], depth + 1
    for key in KEYS:
        if rng.random() < 0.35:
            labels[key] = rng.choice((*TENANTS, "Not.Valid", ""))
    if name in TENANTS and rng.random() < 0.8:
        labels[ROOT_LABEL] = rng.choice(("yes", "yes", "no"))
    return labels


def move(rng: random.Random, namespaces: dict[str, dict[str, str]]) -> None:
    """A namespace moves to another tenant: a relabel, or a subtree reparented under HNC."""
    name = rng.choice(sorted(namespaces))
    labels = namespaces[name]
    if rng.random() < 0.5:
        labels[rng.choice(KEYS)] = rng.choice(TENANTS)
        return
    new_parent = rng.choice(sorted(namespaces))
    old_ancestors = {k for k in labels if k.endswith(HNC_DEPTH_SUFFIX)} - {
        f"{name}{HNC_DEPTH_SUFFIX}"
    }
    parent_tree = {
        k: int(v) for k, v in namespaces[new_parent].items() if k.endswith(HNC_DEPTH_SUFFIX)
    }
    if f"{name}{HNC_DEPTH_SUFFIX}" in parent_tree:
        return  # HNC refuses a cycle
    for other_labels in namespaces.values():
        own = f"{name}{HNC_DEPTH_SUFFIX}"
        if own not in other_labels:
            continue  # not in the moved subtree
        below = int(other_labels[own])
        for key in old_ancestors:
            other_labels.pop(key, None)
        for key, depth in parent_tree.items():
            other_labels[key] = str(depth + 1 + below)


def router_owners(rule: TenancyRule, cache: Mapping[NamespaceName, Namespace]) -> dict[str, str]:
    directory = TenantDirectory(
        rule,
        BackendResolver("https://keda.{tenant}.svc", {}, None),
        lambda: cache,
        RouterMetrics(CollectorRegistry()),
    )
    owners = {}
    for name in cache:
        tenant = directory.decide(name).tenant
        if tenant is not None:
            owners[name] = tenant
    return owners


def reloader_set(
    text: str, tenant: str, cache: Mapping[NamespaceName, Namespace], schedule: SchedulePolicy
) -> tuple[str, ...]:
    rule = parse_published_rule(
        text, ref="keda-tenancy-system/rule", tenant=TenantName(tenant)
    ).rule
    selector = watch_selector(rule, TenantName(tenant), schedule)
    view = cache
    if selector is not None:  # what the API server would send the narrowed watch
        requirements = _parse_selector(selector)
        view = {
            name: ns
            for name, ns in cache.items()
            if _matches({"metadata": {"labels": dict(ns.labels)}}, requirements)
        }
    return desired_namespaces(view, rule=rule, tenant=TenantName(tenant)).names


@pytest.mark.parametrize("seed", SEEDS)
def test_router_and_every_reloader_agree_on_every_owner(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    doc = random_rule(rng)
    text = yaml.safe_dump(doc)
    path = tmp_path / "rule.yaml"
    path.write_text(text)
    router_rule = load_rule_document(path)  # the router: --tenancy-rule-file
    tenants = [t for t in TENANTS if router_rule.never_owns(t) is None]
    namespaces = random_namespaces(rng)
    schedule = SchedulePolicy(removal_delay_s=rng.choice((0.0, 0.0, 30.0)))
    for _round in range(6):
        cache = {
            NamespaceName(name): Namespace(NamespaceName(name), dict(labels))
            for name, labels in namespaces.items()
        }
        owners = router_owners(router_rule, cache)
        for tenant in tenants:
            expected = tuple(sorted(n for n, t in owners.items() if t == tenant))
            got = reloader_set(text, tenant, cache, schedule)
            assert got == expected, (seed, _round, tenant, doc)
        # Every namespace has at most one owner, and only a valid tenant owns anything.
        assert all(is_dns1123_label(t) for t in owners.values())
        move(rng, namespaces)


def test_the_generator_reaches_nested_roots_conflicts_and_ambiguous_names() -> None:
    """The property is only as good as the cases it sees: each hard case occurs."""
    seen = {"nested-root-conflict": 0, "nested-root-label": 0, "ambiguous-name": 0, "owned": 0}
    for seed in SEEDS:
        rng = random.Random(seed)
        doc = random_rule(rng)
        rule = load_rule_from(doc)
        namespaces = random_namespaces(rng)
        cache = {
            NamespaceName(n): Namespace(NamespaceName(n), dict(labels))
            for n, labels in namespaces.items()
        }
        for namespace in cache.values():
            decision = rule.decide(namespace, cache)
            if decision.tenant is not None:
                seen["owned"] += 1
            elif {"a", "a--b"} <= decision.candidates:
                seen["ambiguous-name"] += 1
            elif len(decision.candidates) > 1 and doc["hnc"]["roots"]:
                seen["nested-root-conflict"] += 1
            elif len(decision.candidates) > 1 and len(rule.rules) == 1 and doc["hnc"]["rootLabel"]:
                seen["nested-root-label"] += 1  # where a narrowed watch would hide the outer root
    assert all(seen.values()), seen


def load_rule_from(doc: dict[str, Any]) -> TenancyRule:
    return parse_rule_document(yaml.safe_load(yaml.safe_dump(doc)), source="test")
