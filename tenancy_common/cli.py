"""Command-line conventions both binaries follow."""

from __future__ import annotations

import argparse
from collections.abc import Mapping


def apply_env_defaults(
    parser: argparse.ArgumentParser, environ: Mapping[str, str], prefix: str
) -> None:
    """Let `<PREFIX><FLAG>` environment variables (upper case, '_' for '-') set flag defaults,
    the way in-cluster defaults come from a Deployment's env; flags still win."""
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        value = environ.get(prefix + action.dest.upper())
        if value is None:
            continue
        if isinstance(action, argparse._AppendAction):
            action.default = [value]
        elif action.type is int:
            action.default = int(value)
        else:
            action.default = value
