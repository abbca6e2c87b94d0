"""Which desired namespaces the operator may be given: KEDA never watches one it cannot read.

A gate admits namespaces: `SelfAccessGate` (process mode, the operator's own credentials)
asks the API server whether every access KEDA needs there is granted (one
SelfSubjectRulesReview per namespace; SelfSubjectAccessReviews only where that is incomplete); `BindingGate` (deployment mode, the reloader's own ServiceAccount) creates the
operator's RoleBinding first. A namespace not admitted waits and is retried; the reason is
in /readyz, a metric and the log. A namespace once admitted stays so until it leaves the
desired set (its binding is not removed while the operator watches it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio.client import ApiClient, AuthorizationV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from reloader.clock import Clock, LoopClock
from reloader.rolebindings import BindingMetrics, RoleBindingError, RoleBindingManager
from reloader.schedule import crash_backoff_s
from tenancy_common.kube import read_json

logger = logging.getLogger(__name__)

REQUIRED_ACCESS: tuple[tuple[str, str, str], ...] = (
    # (API group, resource, verb): the informers KEDA starts in every watched namespace and
    # what it reads for triggers; missing any makes its cache sync time out and KEDA exit.
    ("keda.sh", "scaledobjects", "watch"),
    ("keda.sh", "scaledjobs", "watch"),
    ("keda.sh", "triggerauthentications", "watch"),
    ("eventing.keda.sh", "cloudeventsources", "watch"),
    ("autoscaling", "horizontalpodautoscalers", "watch"),
    ("", "secrets", "get"),
)


class Gate(Protocol):
    async def admit(self, namespaces: Sequence[str]) -> tuple[str, ...]:
        """The subset of `namespaces` the operator can be given now (order kept)."""
        ...

    @property
    def waiting(self) -> dict[str, str]:
        """Namespace -> why it is not admitted yet, from the last `admit`."""
        ...

    def retry_in_s(self) -> float | None:
        """When to call `admit` again for the waiting ones; None: nothing waits."""
        ...


class _Retrying:
    """What both gates share: the admitted cache, the waiting list and its backoff."""

    def __init__(
        self,
        metrics: BindingMetrics,
        *,
        retry_initial_s: float,
        retry_max_s: float,
        clock: Clock | None = None,
    ) -> None:
        self._metrics = metrics
        self._clock: Clock = clock or LoopClock()
        self._retry_at = 0.0
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._admitted: set[str] = set()
        self._waiting: dict[str, str] = {}
        self._attempts = 0

    @property
    def waiting(self) -> dict[str, str]:
        return dict(self._waiting)

    def retry_in_s(self) -> float | None:
        if not self._waiting:
            return None
        return max(0.0, self._retry_at - self._clock.now())

    def _to_check(self, namespaces: Sequence[str]) -> list[str]:
        """Namespaces not admitted yet; those already waiting only once their retry is due."""
        due = self._clock.now() >= self._retry_at
        return [
            ns for ns in namespaces if ns not in self._admitted and (due or ns not in self._waiting)
        ]

    def _settle(
        self, namespaces: Sequence[str], checked: Sequence[str], waiting: dict[str, str]
    ) -> tuple[str, ...]:
        """Record the verdicts on `checked`; `waiting` holds those refused, with why."""
        wanted = set(namespaces)
        unchecked = {
            ns: why for ns, why in self._waiting.items() if ns in wanted and ns not in checked
        }
        waiting = {**unchecked, **waiting}
        self._admitted = {ns for ns in self._admitted if ns in wanted} | (wanted - set(waiting))
        newly = sorted(set(waiting) - set(self._waiting))
        if newly or (waiting and set(waiting) != set(self._waiting)):
            logger.warning(
                "namespaces kept out of the operator's list until it can read them",
                extra={"namespaces": sorted(waiting), "reasons": waiting},
            )
        elif self._waiting and not waiting:
            logger.info("every desired namespace is readable by the operator")
        failed = set(checked) & set(waiting)
        if not waiting:
            self._attempts = 0
        elif failed:
            # A retry that failed again backs off further; a new refusal starts the backoff.
            retried = failed & set(self._waiting)
            self._attempts = self._attempts + 1 if retried else max(self._attempts, 1)
            delay = crash_backoff_s(self._attempts, self._retry_initial_s, self._retry_max_s)
            self._retry_at = self._clock.now() + delay
        self._waiting = waiting
        self._metrics.waiting.set(len(waiting))
        return tuple(ns for ns in namespaces if ns not in waiting)


class SelfAccessGate(_Retrying):
    """Asks, as the operator (we share its ServiceAccount), what it may do in a namespace."""

    def __init__(
        self,
        api: ApiClient,
        metrics: BindingMetrics,
        *,
        required: Sequence[tuple[str, str, str]] = REQUIRED_ACCESS,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 30.0,
        concurrency: int = 8,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            metrics, retry_initial_s=retry_initial_s, retry_max_s=retry_max_s, clock=clock
        )
        self._authz = AuthorizationV1Api(api)
        self._required = tuple(required)
        self._limit = asyncio.Semaphore(concurrency)

    async def admit(self, namespaces: Sequence[str]) -> tuple[str, ...]:
        unknown = self._to_check(namespaces)
        reasons = await asyncio.gather(*(self._check(ns) for ns in unknown))
        waiting = {ns: reason for ns, reason in zip(unknown, reasons, strict=True) if reason}
        return self._settle(namespaces, unknown, waiting)

    async def _check(self, namespace: str) -> str | None:
        """None when every required access is allowed, else what is missing.

        One SelfSubjectRulesReview lists what we may do there; only what it cannot vouch
        for (an authorizer other than RBAC makes it `incomplete`) is asked one by one."""
        async with self._limit:
            try:
                rules = await self._rules(namespace)
                missing = [need for need in self._required if not _granted(rules, *need)]
                if missing and rules.incomplete:
                    missing = [
                        need for need in missing if not await self._allowed(namespace, *need)
                    ]
            except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
                return f"cannot check access: {exc}"
            if missing:
                what = ", ".join(
                    f"{verb} {resource}{'.' + group if group else ''}"
                    for group, resource, verb in missing
                )
                return f"the operator may not {what} there (no RoleBinding yet?)"
            return None

    async def _rules(self, namespace: str) -> _Rules:
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectRulesReview",
            "spec": {"namespace": namespace},
        }
        review = await read_json(
            self._authz.create_self_subject_rules_review(
                body,  # type: ignore[arg-type] # a dict is sent as is
                _preload_content=False,
            )
        )
        status = review.get("status") or {}
        return _Rules(list(status.get("resourceRules") or []), bool(status.get("incomplete")))

    async def _allowed(self, namespace: str, group: str, resource: str, verb: str) -> bool:
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {
                "resourceAttributes": {
                    "namespace": namespace,
                    "group": group,
                    "resource": resource,
                    "verb": verb,
                }
            },
        }
        review = await read_json(
            self._authz.create_self_subject_access_review(
                body,  # type: ignore[arg-type] # a dict is sent as is
                _preload_content=False,
            )
        )
        return bool((review.get("status") or {}).get("allowed"))


@dataclass(frozen=True, slots=True)
class _Rules:
    resource_rules: list[dict[str, Any]]
    incomplete: bool


def _granted(rules: _Rules, group: str, resource: str, verb: str) -> bool:
    """Whether a rule allows `verb` on every object of `resource` (a rule narrowed to
    resourceNames does not: KEDA lists and watches them all)."""
    for rule in rules.resource_rules:
        if rule.get("resourceNames"):
            continue
        if (
            _has(rule.get("verbs"), verb)
            and _has(rule.get("apiGroups"), group)
            and _has(rule.get("resources"), resource)
        ):
            return True
    return False


def _has(values: list[str] | None, wanted: str) -> bool:
    return bool(values) and ("*" in values or wanted in values)  # type: ignore[operator]


class BindingGate(_Retrying):
    """Deployment mode: create the operator's RoleBinding before the namespace is patched in."""

    def __init__(
        self,
        manager: RoleBindingManager,
        metrics: BindingMetrics,
        *,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            metrics, retry_initial_s=retry_initial_s, retry_max_s=retry_max_s, clock=clock
        )
        self._manager = manager

    async def admit(self, namespaces: Sequence[str]) -> tuple[str, ...]:
        unknown = self._to_check(namespaces)
        if not unknown:
            return self._settle(namespaces, unknown, {})
        try:
            result = await self._manager.ensure(unknown)
        except RoleBindingError as exc:
            waiting = {ns: str(exc) for ns in unknown}
        else:
            waiting = {
                ns: result.failed.get(ns, "not bound") for ns in unknown if ns not in result.bound
            }
        return self._settle(namespaces, unknown, waiting)
