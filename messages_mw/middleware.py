"""Wrap any ASGI app so that it also answers the Messages API under a path prefix."""

from __future__ import annotations

from .app import Gateway, close_at_shutdown, route_path
from .types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["MessagesMiddleware"]


class MessagesMiddleware:
    """ASGI middleware: requests under ``prefix`` go to ``gateway``, everything else
    (other paths, websockets, lifespan) to the wrapped ``app``.

    ``prefix`` must start with ``/`` and not end with one (``""`` sends every HTTP request to
    the gateway); anything else raises :class:`ValueError`.

    The gateway is closed (:meth:`Gateway.aclose <messages_mw.app.Gateway.aclose>`) when the
    wrapped app sends ``lifespan.shutdown.complete`` or ``lifespan.shutdown.failed``, before
    that message is passed on (a ``complete`` becomes ``failed``, logged, if ``aclose``
    raises). Only then: if the server runs without lifespan events, or the wrapped app never
    answers the shutdown, close the gateway yourself.
    """

    def __init__(self, app: ASGIApp, gateway: Gateway, *, prefix: str = "/anthropic") -> None:
        if prefix and (not prefix.startswith("/") or prefix.endswith("/")):
            raise ValueError("prefix must start with '/' and not end with '/', e.g. '/anthropic'")
        self.app = app
        self.gateway = gateway
        self._prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = route_path(scope)
            if path == self._prefix or path.startswith(self._prefix + "/"):
                root_path = scope.get("root_path", "") + self._prefix
                child = {
                    **scope,
                    "root_path": root_path,
                    "path": root_path + path[len(self._prefix) :],
                }
                await self.gateway(child, receive, send)
                return
        elif scope["type"] == "lifespan":
            await self.app(scope, receive, self._closing_send(send))
            return
        await self.app(scope, receive, send)

    def _closing_send(self, send: Send) -> Send:
        async def closing_send(message: Message) -> None:
            kind = message["type"]
            if kind in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                closed = await close_at_shutdown(self.gateway)
                if kind == "lifespan.shutdown.complete":
                    message = closed  # the host's own failure, if any, is the one to report
            await send(message)

        return closing_send
