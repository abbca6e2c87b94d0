"""The diagnosis path: for one namespace, who owns it and why, where its requests go and how
that upstream is, its last answers, and whether the tenant's operator watches it and may.

`Explainer.explain` builds the answer (JSON-able) and its one-line verdict; the router serves
it on its health port at /debug/explain (router/explain_http.py) and
`keda-tenancy-router explain NAMESPACE` prints it. Ownership comes from the same
TenantDirectory the request path decides with; this module only reads and words things.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from router.backends import Backend, BackendResolver
from router.operator_access import OperatorAccess, OperatorFacts
from router.recent import Answer, RecentAnswers
from router.status import StatusError
from router.tenants import NamespaceView, TenantDirectory
from router.upstream_health import HealthSource, UpstreamHealth
from tenancy_common.names import NamespaceName, is_dns1123_label
from tenancy_common.namespace import Namespace
from tenancy_common.tenancy import Decision, TenancyRule, Verdict
from tenancy_common.tenancy_explain import RuleFinding, explain_rules

_SHOWN_ANSWERS = 10
_DOWN_STREAK = 3
"""This many unavailable answers in a row (or all there are) say the tenant is down."""


class Explainer:
    def __init__(
        self,
        *,
        rule: TenancyRule,
        directory: TenantDirectory,
        resolver: BackendResolver,
        namespaces: NamespaceView | None,
        recent: RecentAnswers,
        health_sources: Sequence[HealthSource],
        access: Callable[[], OperatorAccess],
    ) -> None:
        """`access` is called per explanation: the API client exists only once the router runs."""
        self._rule = rule
        self._directory = directory
        self._resolver = resolver
        self._namespaces = namespaces
        self._recent = recent
        self._health_sources = health_sources
        self._access = access

    async def explain(self, name: str) -> dict[str, Any]:
        if not is_dns1123_label(name):
            raise StatusError(400, f"{name!r} is not a namespace name")
        namespace = NamespaceName(name)
        report: dict[str, Any] = {"namespace": namespace}
        try:
            decision = self._directory.decide(namespace)
        except StatusError as exc:  # not synced yet
            report["verdict"] = f"cannot tell who owns {namespace} yet: {exc.message}"
            return report
        known = self._known(namespace)
        report["inCluster"] = known is not None if self._namespaces is not None else None
        report["terminating"] = bool(known and known.terminating)
        findings = self._findings(namespace, known)
        report["ownership"] = {
            "verdict": decision.verdict.value,
            "tenant": decision.tenant,
            "candidates": sorted(decision.candidates),
            "rules": [asdict(finding) for finding in findings],
        }
        backend = self._backend(namespace, decision)
        health: list[UpstreamHealth] = []
        if backend is not None:
            health = [h for source in self._health_sources if (h := source.health(backend))]
            report["upstream"] = {
                "name": backend.name,
                "url": str(backend.origin),
                "health": [asdict(h) for h in health],
            }
        tenant_answers = self._recent.of_tenant(decision.tenant) if decision.tenant else []
        namespace_answers = self._recent.of_namespace(namespace)
        report["recent"] = {
            "namespace": [asdict(a) for a in namespace_answers[-_SHOWN_ANSWERS:]],
            "tenant": _summary(tenant_answers),
        }
        facts: OperatorFacts | None = None
        if decision.tenant is not None:
            facts = await self._access().facts(decision.tenant, namespace)
            report["operator"] = {
                "watches": asdict(facts.watched),
                "access": asdict(facts.access),
            }
        report["verdict"] = verdict(
            namespace,
            decision,
            findings=findings,
            known=known,
            in_cluster=report["inCluster"],
            health=health,
            answers=tenant_answers,
            facts=facts,
            default=self._resolver.default is not None,
        )
        return report

    def _known(self, namespace: NamespaceName) -> Namespace | None:
        if self._namespaces is None:
            return Namespace(namespace)
        return self._namespaces().get(namespace)

    def _findings(self, namespace: NamespaceName, known: Namespace | None) -> list[RuleFinding]:
        if known is None:
            return []
        others = self._namespaces() if self._namespaces is not None else {}
        return explain_rules(self._rule, known, others)

    def _backend(self, namespace: NamespaceName, decision: Decision) -> Backend | None:
        if decision.tenant is not None:
            return self._directory.backend_for(namespace)
        if decision.verdict is Verdict.UNMAPPED:
            return self._resolver.default
        return None


def _summary(answers: list[Answer]) -> dict[str, Any]:
    errors = [a for a in answers if a.error]
    return {
        "answers": len(answers),
        "unavailable": sum(a.unavailable for a in answers),
        "errors": len(errors),
        "lastErrors": [asdict(a) for a in errors[-_SHOWN_ANSWERS:]],
    }


def verdict(
    namespace: str,
    decision: Decision,
    *,
    findings: list[RuleFinding],
    known: Namespace | None,
    in_cluster: bool | None,
    health: list[UpstreamHealth],
    answers: list[Answer],
    facts: OperatorFacts | None,
    default: bool,
) -> str:
    """One line: the cause a person should look at first."""
    if decision.tenant is None:
        return _nobody(namespace, decision, findings, in_cluster, default=default)
    owner = f"tenant {decision.tenant} owns {namespace} by {_by(findings)}"
    if known is not None and known.terminating:
        owner += " (the namespace is terminating)"
    down = _down(decision.tenant, health, answers)
    if down:
        return f"{owner}; {down} — tenant down"
    if facts is not None:
        if facts.access.known is False:
            return (
                f"{owner}; its operator has no access there ({facts.access.detail}) "
                "— waiting for access"
            )
        if facts.watched.known is False:
            return (
                f"{owner}; its operator does not watch it yet ({facts.watched.detail}) "
                "— waiting for the operator"
            )
    errors = [a for a in answers if a.error]
    if answers and answers[-1].error:
        last = answers[-1]
        return (
            f"{owner}; the tenant's last request failed ({last.status}: {last.message}; "
            f"{len(errors)} of its last {len(answers)}) — tenant answers errors"
        )
    unknown = [
        fact.detail for fact in (facts.access, facts.watched) if fact.known is None
    ] if facts is not None else []  # fmt: skip
    if not answers:
        served = "no request for it since the router started"
    elif errors:
        served = (
            f"its metrics server answered the last request ({len(errors)} of its last "
            f"{len(answers)} failed, the last: {errors[-1].status} {errors[-1].message})"
        )
    else:
        served = f"its metrics server answered the last {len(answers)} requests"
    tail = f"; not known: {'; '.join(unknown)}" if unknown else "; its operator watches it"
    return f"{owner}; {served}{tail} — ok"


def _nobody(
    namespace: str,
    decision: Decision,
    findings: list[RuleFinding],
    in_cluster: bool | None,
    *,
    default: bool,
) -> str:
    fallback = "; its requests go to --default-upstream" if default else ""
    if in_cluster is False:
        return (
            f"no tenant owns {namespace}: the router's namespace list has no such namespace"
            f"{fallback}"
        )
    if decision.verdict is Verdict.CONFLICT:
        claims = "; ".join(f.reason for f in findings if f.proposes)
        return (
            f"no tenant owns {namespace}: claimed by several tenants "
            f"({', '.join(sorted(decision.candidates))}: {claims}); a conflict belongs to nobody"
        )
    if decision.verdict is Verdict.INVALID_TENANT:
        return (
            f"no tenant owns {namespace}: the rule names {', '.join(sorted(decision.candidates))}, "
            "which is not a DNS-1123 label"
        )
    reasons = ", ".join(f.reason for f in findings) or "no rule proposes a tenant"
    return f"no tenant owns {namespace}: {reasons}{fallback}"


def _by(findings: list[RuleFinding]) -> str:
    return " and ".join(f.reason for f in findings if f.proposes) or "its rule"


def _down(tenant: str, health: list[UpstreamHealth], answers: list[Answer]) -> str:
    streak = 0  # the tenant's last answers that came from no working metrics server
    for answer in reversed(answers):
        if not answer.unavailable:
            break
        streak += 1
    if answers and (streak == len(answers) or streak >= _DOWN_STREAK):
        return (
            f"its metrics server failed {streak} of the last {len(answers)} requests "
            f"({answers[-1].message})"
        )
    sick = [h for h in health if h.healthy is False]
    if sick:
        return f"its metrics server is {sick[0].detail} (per {sick[0].source})"
    return ""
