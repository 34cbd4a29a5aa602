"""Opening a connection to an upstream host: resolve it, then race its addresses.

Addresses are tried in turn, the next one starting when the last failed or after
``_NEXT_ADDRESS_DELAY`` (RFC 8305's Happy Eyeballs, families interleaved), so one black-holed
address (a broken IPv6 route) does not use up the whole connect timeout. uvloop's
create_connection has no happy_eyeballs_delay, hence this module.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from ._http11 import Connection, Origin

__all__ = ["Resolver", "open_connection", "resolve"]

# RFC 8305's recommended wait before trying a host's next address alongside the last.
_NEXT_ADDRESS_DELAY = 0.25
# (loop, hostname, port) -> the host's addresses as (family, socket address) pairs.
Resolver = Callable[
    [asyncio.AbstractEventLoop, str, int], Awaitable[list[tuple[int, tuple[Any, ...]]]]
]


async def resolve(
    loop: asyncio.AbstractEventLoop, hostname: str, port: int
) -> list[tuple[int, tuple[Any, ...]]]:
    """``hostname``'s addresses for a TCP connection, as (family, socket address) pairs."""
    infos = await loop.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


async def open_connection(
    loop: asyncio.AbstractEventLoop,
    key: Origin,
    hostname: str,
    port: int,
    tls: ssl.SSLContext | None,
    resolver: Resolver,
) -> Connection:
    """A connection to the first of ``hostname``'s addresses (as ``resolver`` gives them) that
    answers.

    Addresses are tried in turn, the next one starting when the last failed or after
    ``_NEXT_ADDRESS_DELAY`` (RFC 8305's Happy Eyeballs, families interleaved), so one
    black-holed address (a broken IPv6 route) does not use up the whole connect timeout.
    uvloop's create_connection has no happy_eyeballs_delay, hence this.
    """

    async def connect(address: tuple[int, tuple[Any, ...]]) -> Connection:
        family, sockaddr = address
        _, conn = await loop.create_connection(
            lambda: Connection(loop, key),
            sockaddr[0],
            sockaddr[1],
            family=family,
            ssl=tls,
            server_hostname=hostname if tls is not None else None,
        )
        return conn

    addresses = _interleaved(await resolver(loop, hostname, port))
    if len(addresses) == 1:
        return await connect(addresses[0])
    return await _first_to_connect([functools.partial(connect, a) for a in addresses])


def _interleaved(
    addresses: list[tuple[int, tuple[Any, ...]]],
) -> list[tuple[int, tuple[Any, ...]]]:
    """Unique addresses, alternating between families, the resolver's first family first."""
    unique = list(dict.fromkeys(addresses))
    if not unique:
        raise OSError("getaddrinfo returned no address")
    first = unique[0][0]
    preferred = [a for a in unique if a[0] == first]
    others = [a for a in unique if a[0] != first]
    return [a for pair in itertools.zip_longest(preferred, others) for a in pair if a]


async def _first_to_connect(attempts: list[Callable[[], Awaitable[Connection]]]) -> Connection:
    """The first attempt to succeed; each starts when those before it have failed or have run
    ``_NEXT_ADDRESS_DELAY`` seconds. The rest are cancelled, or closed if they connected too.
    Raises the last attempt's error if none succeeds."""
    started: list[asyncio.Task[Connection]] = []
    winner: asyncio.Task[Connection] | None = None
    try:
        for index, attempt in enumerate(attempts):
            started.append(asyncio.ensure_future(attempt()))
            wait = None if index == len(attempts) - 1 else _NEXT_ADDRESS_DELAY
            while True:
                winner = next((task for task in started if _connected(task)), None)
                running = [task for task in started if not task.done()]
                if winner is not None:
                    return winner.result()
                if not running:
                    break  # all failed so far: the next address starts at once
                done, _ = await asyncio.wait(
                    running, timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    break  # the delay passed: the next address starts alongside
        error = started[-1].exception()
        assert error is not None
        raise error
    finally:
        for task in started:
            if task is winner:
                continue
            if not task.done():
                task.cancel()
            elif _connected(task):
                task.result().abort()  # connected in the same pass as the winner


def _connected(task: asyncio.Task[Connection]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None
