"""Kubernetes label selectors as an HPA sends them (`labelSelector=` of an external metric).

Only what routing rules ask is extracted: which keys the selector requires, and the one
value of those it sets with `=`, `==` or a one-element `in`. Negative requirements (`!key`,
`!=`, `notin`) require no key.
"""

from __future__ import annotations

import re

_REQUIREMENT = re.compile(
    r"\s*(?P<not>!)?\s*(?P<key>[A-Za-z0-9._/-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9._-]*)"
    r"|(?P<set>in|notin)\s*\((?P<values>[^()]*)\))?\s*"
)


class SelectorError(ValueError):
    pass


def _split(selector: str) -> list[str]:
    """Requirements are separated by commas outside parentheses."""
    parts, depth, start = [], 0, 0
    for index, char in enumerate(selector):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError("unbalanced parentheses")
        elif char == "," and depth == 0:
            parts.append(selector[start:index])
            start = index + 1
    if depth:
        raise SelectorError("unbalanced parentheses")
    parts.append(selector[start:])
    return parts


def positive_requirements(selector: str) -> dict[str, str | None]:
    """Key -> its one required value, or None when required with any or several values."""
    required: dict[str, str | None] = {}
    if not selector.strip():
        return required
    for part in _split(selector):
        match = _REQUIREMENT.fullmatch(part)
        if match is None or (match["not"] and (match["op"] or match["set"])):
            raise SelectorError(f"cannot parse requirement {part.strip()!r}")
        key, op, kind = match["key"], match["op"], match["set"]
        if match["not"] or op == "!=" or kind == "notin":
            continue
        if op:
            value: str | None = match["value"]
        elif kind:
            values = {v.strip() for v in match["values"].split(",")}
            value = values.pop() if len(values) == 1 else None
        else:
            value = None
        if key in required and required[key] != value:
            value = None  # two requirements on one key: not one value
        required[key] = value
    return required
