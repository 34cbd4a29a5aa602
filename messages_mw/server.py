"""The uvicorn HTTP protocol ``messages-mw serve`` runs: uvicorn's httptools protocol with the
response head sent together with the first body bytes.

uvicorn writes a response head the moment the app sends ``http.response.start`` and the body
with the next message, and uvloop sends each write at once: two ``write(2)`` calls for every
answer, where one would do. On loopback and in VMs a syscall costs as much as a few thousand
Python instructions, so the head is held until the app's next write joins it, or until the
current loop pass ends, whichever comes first. A client therefore receives the same bytes in
the same order, no later than the next pass of the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ._http11 import head_and_body

__all__ = ["HeadJoiningHttpToolsProtocol"]

_HEAD_PREFIX = b"HTTP/1.1 "


class _HeadJoiningTransport:
    """Forwards everything to ``transport``, holding a response head until the next write."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines(head_and_body(held, data))
        elif data.startswith(_HEAD_PREFIX):
            self._held = data
            self._loop.call_soon(self._flush)
        else:
            self._transport.write(data)

    def _flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        # Everything else (extra info, flow control, abort, set_protocol) is the transport's.
        return getattr(self._transport, name)


class HeadJoiningHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's ``httptools`` protocol, sending each response head with the body's first bytes."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        joining: Any = _HeadJoiningTransport(transport, self.loop)
        super().connection_made(joining)
