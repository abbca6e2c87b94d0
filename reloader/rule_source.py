"""The tenancy rule the router release publishes, read from its one ConfigMap.

Every reloader evaluates the router's own rule document (the router mounts the same
ConfigMap as a file), so no tenant release carries a copy that could drift. The rule is
read once at start; a later change ends the reloader (exit 1, the kubelet restarts it), so
the rule, the watch's server-side selector and the cache are always built from one version.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass

import aiohttp
import yaml
from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from tenancy_common.kube import read_json
from tenancy_common.lifecycle import wait_stopped
from tenancy_common.names import TenantName
from tenancy_common.tenancy import TenancyRule
from tenancy_common.tenancy_config import ConfigError, parse_rule_document

logger = logging.getLogger(__name__)

RULE_KEY = "rule.yaml"
"""The ConfigMap key holding the rule document (the router chart's `tenancy:` values)."""
_ERRORS = (ApiException, aiohttp.ClientError, TimeoutError)
READ_TIMEOUT_S = 10.0


class RuleChangedError(Exception):
    """The published rule is no longer the one this process runs with."""


@dataclass(frozen=True, slots=True)
class LoadedRule:
    rule: TenancyRule
    digest: str
    """sha256 of the document's text: what a later read is compared with."""


def parse_published_rule(text: str, *, ref: str, tenant: TenantName) -> LoadedRule:
    """The rule in a published document, refused unless `tenant` round-trips through it."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"configmap {ref} {RULE_KEY}: {exc}") from exc
    rule = parse_rule_document(raw or {}, source=f"configmap {ref} {RULE_KEY}")
    problem = rule.never_owns(tenant)
    if problem is not None:
        raise ConfigError(f"configmap {ref}: {problem}")
    return LoadedRule(rule, hashlib.sha256(text.encode()).hexdigest())


class PublishedRule:
    """Reads `namespace/name` (needs only `get` on that one ConfigMap)."""

    def __init__(self, api: ApiClient, namespace: str, name: str, tenant: TenantName) -> None:
        self.namespace, self.name, self.tenant = namespace, name, tenant
        self._core = CoreV1Api(api)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    async def _read_text(self) -> str:
        obj = await asyncio.wait_for(
            read_json(
                self._core.read_namespaced_config_map(
                    self.name, self.namespace, _preload_content=False
                )
            ),
            READ_TIMEOUT_S,
        )
        text = (obj.get("data") or {}).get(RULE_KEY)
        if not isinstance(text, str):
            raise ConfigError(f"configmap {self.ref} has no {RULE_KEY!r} key")
        return text

    def parse(self, text: str) -> LoadedRule:
        return parse_published_rule(text, ref=self.ref, tenant=self.tenant)

    async def load(
        self, stop: asyncio.Event, *, initial_backoff_s: float = 1.0, max_backoff_s: float = 30.0
    ) -> LoadedRule | None:
        """The rule, retried until it can be read and parsed; None when stopped first."""
        backoff = initial_backoff_s
        while True:
            try:
                return self.parse(await self._read_text())
            except (*_ERRORS, ConfigError) as exc:
                logger.error(
                    "cannot load the tenancy rule; the operator waits for it",
                    extra={"configmap": self.ref, "error": str(exc), "retry_s": backoff},
                )
            if await wait_stopped(stop, backoff):
                return None
            backoff = min(backoff * 2, max_backoff_s)

    async def watch_for_change(
        self, loaded: LoadedRule, stop: asyncio.Event, interval_s: float
    ) -> None:
        """Return when stopped; raise RuleChangedError once the published text differs.
        A read that fails keeps the rule in force (logged): only a new rule replaces it."""
        while not await wait_stopped(stop, interval_s):
            try:
                text = await self._read_text()
            except (*_ERRORS, ConfigError) as exc:
                logger.warning(
                    "cannot re-read the tenancy rule; keeping the loaded one",
                    extra={"configmap": self.ref, "error": str(exc)},
                )
                continue
            if hashlib.sha256(text.encode()).hexdigest() == loaded.digest:
                continue
            try:
                self.parse(text)
            except ConfigError as exc:
                logger.error(
                    "the published tenancy rule changed and is invalid; keeping the loaded one",
                    extra={"configmap": self.ref, "error": str(exc)},
                )
                continue
            raise RuleChangedError(
                f"the tenancy rule in configmap {self.ref} changed; exiting to start with it"
            )
