"""One lifecycle for both binaries: signals set a stop event, named root tasks run in a
TaskGroup, and any root that ends (or fails) stops the others.

Roots are expected to return promptly once `stop` is set, finishing their own drain;
cancellation is only the fallback for a root that fails.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def install_stop_signals(
    stop: asyncio.Event, on_signal: Callable[[signal.Signals], None] | None = None
) -> None:
    """SIGTERM/SIGINT set `stop`; `on_signal` learns which one (to forward it)."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, _on_signal, stop, sig, on_signal)


def _on_signal(
    stop: asyncio.Event, sig: signal.Signals, on_signal: Callable[[signal.Signals], None] | None
) -> None:
    logger.info("received %s, stopping", sig.name, extra={"signal": sig.name})
    if on_signal is not None:
        on_signal(sig)
    stop.set()


async def run_roots(roots: Mapping[str, Coroutine[Any, Any, None]], stop: asyncio.Event) -> None:
    """Run the root tasks until all have returned; the first to end sets `stop`."""

    async def guarded(name: str, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except Exception:
            logger.exception("root task %s failed", name, extra={"task": name})
            raise
        finally:
            if not stop.is_set():
                logger.info("root task %s ended, stopping the others", name)
                stop.set()

    async with asyncio.TaskGroup() as group:
        for name, coro in roots.items():
            group.create_task(guarded(name, coro), name=name)


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` on uvloop when it is installed (the `fast` extra), else asyncio's loop."""
    try:
        import uvloop  # noqa: PLC0415 - optional
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


async def wait_stopped(stop: asyncio.Event, timeout_s: float) -> bool:
    """Sleep up to `timeout_s`, waking early on stop; True when stopping."""
    try:
        await asyncio.wait_for(stop.wait(), timeout_s)
    except TimeoutError:
        return False
    return True
