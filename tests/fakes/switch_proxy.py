"""A TCP proxy in front of the fake API server that can be switched to act as a hung or an
unreachable API server: `hang` accepts connections and never answers (and freezes open ones),
`refuse` closes every connection at once; `pass` forwards bytes unchanged."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

Mode = Literal["pass", "hang", "refuse"]


class SwitchProxy:
    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self.mode: Mode = "pass"
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def switch(self, mode: Mode) -> None:
        """`hang` and `refuse` also apply to connections already open."""
        self.mode = mode
        if mode == "refuse":
            self.cut()

    def cut(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            if self.mode == "refuse":
                return
            while self.mode == "hang":
                await asyncio.sleep(0.05)
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
            self._writers.add(up_writer)
            await asyncio.gather(self._copy(reader, up_writer), self._copy(up_reader, writer))
        except OSError:
            pass
        finally:
            self._tasks.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                while self.mode == "hang":
                    await asyncio.sleep(0.05)
                if self.mode == "refuse":
                    break
                writer.write(data)
                await writer.drain()
        writer.transport.abort()
