"""A pooled HTTP/1.1 transport for httpx built on asyncio protocols.

httpx's default transport spends several milliseconds of CPU per proxied request, much of it in
pool bookkeeping that visits every pooled connection. This transport keeps httpx as the client
API but does the network work with a low-level :class:`asyncio.Protocol` per socket, a LIFO list
of idle connections per origin, and a sans-I/O parser (:mod:`messages_mw._http11_parse`), so the
per-request cost stays flat as the pool grows. Body bytes reach the caller as each socket read
arrives, which is what relaying Server-Sent Events needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import NamedTuple

import httpx

from ._connect import Resolver, open_connection, resolve
from ._http11 import Connection, Origin, PeerClosedError, ProtocolError, head_and_body
from ._http11_parse import TOKEN_CHARS, ResponseHead

__all__ = ["FastHTTPTransport", "Origin", "ResponseBody", "ResponseHead", "origin_of"]

_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_IDEMPOTENCY_HEADERS = frozenset({b"idempotency-key", b"x-idempotency-key"})
_DEFAULT_PORTS = {b"http": 80, b"https": 443}

_Timeouts = Mapping[str, float | None]
_RawHeaders = Sequence[tuple[bytes, bytes]]


class _Outgoing(NamedTuple):
    """One request as the pool sends it."""

    method: str
    head: bytes
    headers: _RawHeaders
    # The body in memory, which can be sent again; None when it streams from ``request``.
    body: bytes | None
    timeouts: _Timeouts
    # The httpx request this one came from, which httpx's errors name; None on the raw path.
    request: httpx.Request | None


class _StaleConnectionError(Exception):
    """A reused connection died before answering; the request may be sent again."""


_Waiter = asyncio.Future[Connection | None]


class _Pool:
    """Idle connections per origin, newest first, under one cap on open sockets.

    A slot is counted from the moment a caller reserves it to connect until its connection is
    discarded; idle connections keep their slot. Every operation touches one origin's list or one
    waiter, so its cost does not grow with the number of pooled connections.
    """

    def __init__(self, max_connections: int, keepalive_expiry: float) -> None:
        self._max = max_connections
        self._expiry = keepalive_expiry
        self._open = 0
        self._connections: set[Connection] = set()
        self._idle: dict[Origin, deque[Connection]] = {}
        # Every idle connection, oldest first, so one can be evicted for another origin.
        self._idle_order: dict[Connection, None] = {}
        self._waiters: deque[tuple[Origin, _Waiter]] = deque()
        # Once closed, connections still in use are closed when their exchange ends: the
        # pool's owner has let go of it, so an idle one would stay open for nobody.
        self._closed = False

    def take_idle(self, key: Origin) -> Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            del self._idle_order[conn]
            if conn.usable and conn.idle_seconds() <= self._expiry and not conn.spoke_while_idle():
                return conn
            self._forget(conn)
            self._open -= 1
        return None

    def reserve(self) -> bool:
        """Claim a slot for a new connection, evicting the oldest idle one if the pool is full."""
        if self._open >= self._max:
            if not self._idle_order:
                return False
            oldest = next(iter(self._idle_order))
            del self._idle_order[oldest]
            self._idle[oldest.key].remove(oldest)
            self._forget(oldest)
            self._open -= 1
        self._open += 1
        return True

    async def wait_turn(self, key: Origin, pool_timeout: float | None) -> Connection | None:
        """Wait for a connection to ``key`` or a free slot (None); raise TimeoutError."""
        waiter: _Waiter = asyncio.get_running_loop().create_future()
        entry = (key, waiter)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(pool_timeout):
                return await waiter
        except BaseException:
            # A connection or slot handed over just as the wait ended must not be lost.
            if waiter.done() and not waiter.cancelled():
                self._give_back(waiter.result())
            elif entry in self._waiters:
                self._waiters.remove(entry)
            raise

    def adopt(self, conn: Connection) -> None:
        self._connections.add(conn)

    def release(self, conn: Connection) -> None:
        """Take back a connection whose exchange is over, keeping it only if it is reusable."""
        if conn not in self._connections:
            return
        if not conn.reusable or self._closed:
            self.discard(conn)
            return
        conn.make_idle()
        self._hand_on(conn)

    def _hand_on(self, conn: Connection) -> None:
        while self._waiters:
            key, waiter = self._waiters.popleft()
            if waiter.done():
                continue
            if key == conn.key:
                waiter.set_result(conn)
            else:
                self._forget(conn)
                waiter.set_result(None)
            return
        self._idle.setdefault(conn.key, deque()).append(conn)
        self._idle_order[conn] = None

    def discard(self, conn: Connection) -> None:
        """Close a connection at once and free its slot; calling it again does nothing."""
        if conn in self._connections:
            self._forget(conn)
            self.free_slot()

    def replace(self, conn: Connection) -> None:
        """Close a connection but keep its slot for the caller's next connection."""
        self._forget(conn)

    def free_slot(self) -> None:
        while self._waiters:
            _, waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._open -= 1

    def close_all(self) -> None:
        self._closed = True
        for conn in self._idle_order:
            self._forget(conn)
        self._open -= len(self._idle_order)
        self._idle_order.clear()
        self._idle.clear()
        # Connections in use keep their slots until their owners discard them.
        for conn in list(self._connections):
            with contextlib.suppress(RuntimeError):  # its loop is closed, as in _forget
                conn.abort()

    def _give_back(self, result: Connection | None) -> None:
        if result is None:
            self.free_slot()
        elif result.usable:
            self._hand_on(result)
        else:
            self.discard(result)

    def _forget(self, conn: Connection) -> None:
        self._connections.discard(conn)
        # RuntimeError: its event loop is closed (the pool was used from another loop since);
        # the socket goes with the transport object, and the slot is freed all the same.
        with contextlib.suppress(RuntimeError):
            conn.abort()


class ResponseBody(httpx.AsyncByteStream):
    """A response body read straight off its connection, one socket read at a time."""

    def __init__(
        self,
        conn: Connection,
        pool: _Pool,
        request: httpx.Request | None,
        read_timeout: float | None,
    ) -> None:
        self._conn = conn
        self._pool = pool
        self._request = request
        self._read_timeout = read_timeout
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while not self._done:
            try:
                chunk = await conn.receive_body(self._read_timeout)
            except (TimeoutError, ProtocolError, PeerClosedError) as exc:
                self._finish()
                raise _translate(exc, self._request, sent=True) from exc
            if not chunk:
                break
            yield chunk
        self._finish()

    def body_complete(self) -> bool:
        """Whether the whole body has been received and handed out: the next read ends."""
        return self._done or self._conn.body_complete

    def chunk_ready(self) -> bool:
        """Whether the next read returns without waiting: a payload, the body's end or an
        error has arrived."""
        return self._done or self._conn.read_ready

    async def aclose(self) -> None:
        """Return the connection to the pool if the body was read to its end and the server
        keeps connections alive; otherwise close the socket now. Never suspends, so it completes
        even in a cancelled task, and a second call does nothing."""
        self._finish()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._pool.release(self._conn)


class FastHTTPTransport(httpx.AsyncBaseTransport):
    """An HTTP/1.1 transport for :class:`httpx.AsyncClient` that pools connections per origin.

    Use it as ``httpx.AsyncClient(transport=FastHTTPTransport())``. It speaks ``http`` and
    ``https`` (HTTP/1.1 only), honours httpx's connect/read/write/pool timeouts, never decodes
    ``Content-Encoding`` and hands body bytes to the caller as they arrive.
    """

    def __init__(
        self,
        *,
        max_connections: int = 256,
        keepalive_expiry: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        """``max_connections`` caps open sockets across all origins; a connection left idle for
        more than ``keepalive_expiry`` seconds is closed instead of reused. ``ssl_context``
        defaults to :func:`ssl.create_default_context`, built on the first ``https`` request.
        ``resolver`` is awaited as ``resolver(loop, hostname, port)`` for a host's addresses,
        a list of (address family, socket address) pairs; the default asks
        ``loop.getaddrinfo`` (tests pass their own to point a name at chosen addresses).

        Raises ValueError if ``max_connections`` is below 1.
        """
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._max_connections, self._keepalive_expiry = max_connections, keepalive_expiry
        self._pool = _Pool(max_connections, keepalive_expiry)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ssl_context = ssl_context
        self._resolver = resolver

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and return the response as soon as its head has arrived.

        The body streams from the connection; closing the response returns the connection to
        the pool, or closes it if the body was not read to the end. A replayable request (an
        idempotent method, or an idempotency key) with a bytes body is sent once more on a
        fresh connection if a reused one dies before answering.

        Raises httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.PoolTimeout,
        httpx.ConnectTimeout, httpx.ConnectError, httpx.WriteTimeout, httpx.WriteError,
        httpx.ReadTimeout, httpx.ReadError or httpx.RemoteProtocolError, and TypeError for a
        synchronous request body. If the calling task is cancelled, the connection in use is
        closed and its slot freed before CancelledError propagates.
        """
        body = _body_if_bytes(request)
        fields = request.headers.raw
        head = _encode_head(request.method, request.url.raw_path, fields, request)
        timeouts: _Timeouts = request.extensions.get("timeout", {})
        outgoing = _Outgoing(request.method, head, fields, body, timeouts, request)
        parsed, stream = await self._send(origin_of(request.url, request), outgoing)
        return httpx.Response(
            parsed.status_code,
            headers=parsed.headers,
            stream=stream,
            extensions={"http_version": parsed.http_version, "reason_phrase": parsed.reason},
        )

    async def send_raw(
        self,
        method: str,
        origin: Origin,
        target: bytes,
        headers: _RawHeaders,
        body: bytes,
        timeouts: _Timeouts,
    ) -> tuple[ResponseHead, ResponseBody]:
        """:meth:`handle_async_request` without httpx's ``Request`` and ``Response`` objects,
        whose header normalisation costs a proxy tens of microseconds per request.

        ``origin`` is :func:`origin_of` the URL, ``target`` its path and query as sent on the
        request line, ``headers`` every header to send (``Host`` and ``Content-Length``
        included), ``timeouts`` httpx's timeout dictionary. Returns the answer's head and its
        body, which :meth:`ResponseBody.aclose` gives back as closing the response would.
        Raises what :meth:`handle_async_request` raises, with no request attached.
        """
        head = _encode_head(method, target, headers, None)
        return await self._send(origin, _Outgoing(method, head, headers, body, timeouts, None))

    async def _send(self, key: Origin, outgoing: _Outgoing) -> tuple[ResponseHead, ResponseBody]:
        if asyncio.get_running_loop() is not self._loop:
            self._bind_to_running_loop()
        # This request's pool to the end, even should aclose() replace it meanwhile.
        pool = self._pool
        conn = await self._checkout(pool, key, outgoing)
        try:
            return await self._attempt(pool, conn, outgoing)
        except _StaleConnectionError:
            pass
        conn = await self._connect(pool, key, outgoing.request, outgoing.timeouts.get("connect"))
        return await self._attempt(pool, conn, outgoing)

    async def aclose(self) -> None:
        """Close every connection; responses still streaming then fail with httpx.ReadError or
        httpx.RemoteProtocolError, and connections still in use close when their exchange
        ends. Never suspends, so it completes even in a cancelled task. A request sent after
        it gets a fresh pool."""
        self._pool.close_all()
        self._pool = _Pool(self._max_connections, self._keepalive_expiry)

    def _bind_to_running_loop(self) -> None:
        """Connections belong to the event loop that opened them. A host may call the gateway
        from a new loop (a test client per request, a pytest loop per test): the old loop's
        connections are unusable there, so they are dropped with their slots. Two loops at
        once (two servers in threads sharing one gateway) cannot share it: the other loop's
        streams would break, their sockets aborted from the wrong thread. That is refused."""
        old = self._loop
        if old is not None and old.is_running() and not old.is_closed():
            raise RuntimeError(
                "this transport (and the gateway that owns it) is in use by an event loop "
                "running in another thread; build one gateway per event loop"
            )
        if old is not None:
            self._pool.close_all()
            self._pool = _Pool(self._max_connections, self._keepalive_expiry)
        self._loop = asyncio.get_running_loop()

    async def _checkout(self, pool: _Pool, key: Origin, outgoing: _Outgoing) -> Connection:
        conn = pool.take_idle(key)
        if conn is not None:
            return conn
        timeouts, request = outgoing.timeouts, outgoing.request
        if not pool.reserve():
            try:
                conn = await pool.wait_turn(key, timeouts.get("pool"))
            except TimeoutError as exc:
                message = "Timed out waiting for a connection from the pool."
                raise httpx.PoolTimeout(message, request=request) from exc
            if conn is not None:
                return conn
        return await self._connect(pool, key, request, timeouts.get("connect"))

    async def _connect(
        self,
        pool: _Pool,
        key: Origin,
        request: httpx.Request | None,
        connect_timeout: float | None,
    ) -> Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        tls = self._tls_context() if scheme == b"https" else None
        hostname = host.decode("ascii")
        try:
            async with asyncio.timeout(connect_timeout):
                conn = await open_connection(loop, key, hostname, port, tls, self._resolver)
        except BaseException as exc:
            pool.free_slot()
            if isinstance(exc, TimeoutError):
                raise httpx.ConnectTimeout("Timed out connecting.", request=request) from exc
            if isinstance(exc, OSError):
                raise httpx.ConnectError(str(exc) or repr(exc), request=request) from exc
            raise
        pool.adopt(conn)
        return conn

    async def _attempt(
        self, pool: _Pool, conn: Connection, outgoing: _Outgoing
    ) -> tuple[ResponseHead, ResponseBody]:
        try:
            return await self._exchange(pool, conn, outgoing)
        except (TimeoutError, ProtocolError, PeerClosedError) as exc:
            if _is_stale(exc, conn) and outgoing.body is not None and _is_replayable(outgoing):
                pool.replace(conn)
                raise _StaleConnectionError from exc
            pool.discard(conn)
            raise _translate(exc, outgoing.request, sent=conn.request_sent) from exc
        except BaseException:
            pool.discard(conn)
            raise

    async def _exchange(
        self, pool: _Pool, conn: Connection, outgoing: _Outgoing
    ) -> tuple[ResponseHead, ResponseBody]:
        conn.start(head_request=outgoing.method == "HEAD")
        timeouts, body = outgoing.timeouts, outgoing.body
        write_timeout = timeouts.get("write")
        if body is None:
            assert outgoing.request is not None  # only an httpx request streams its body
            conn.send(outgoing.head)
            await _send_stream(conn, outgoing.request, write_timeout)
        else:
            conn.send_parts(head_and_body(outgoing.head, body))
            await conn.drain(write_timeout)
        conn.request_sent = True
        read_timeout = timeouts.get("read")
        parsed = await conn.receive_head(read_timeout)
        return parsed, ResponseBody(conn, pool, outgoing.request, read_timeout)

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            context = ssl.create_default_context()
            context.set_alpn_protocols(["http/1.1"])
            self._ssl_context = context
        return self._ssl_context


async def _send_stream(
    conn: Connection, request: httpx.Request, write_timeout: float | None
) -> None:
    stream = request.stream
    assert isinstance(stream, httpx.AsyncByteStream)
    chunked = _last_coding(request.headers) == "chunked"
    async for part in stream:
        if not part:
            continue
        if chunked:
            conn.send_parts((b"%x\r\n" % len(part), part, b"\r\n"))
        else:
            conn.send(part)
        if await conn.drain(write_timeout):
            return
    if chunked:
        conn.send(b"0\r\n\r\n")


def _body_if_bytes(request: httpx.Request) -> bytes | None:
    """Return the body if it is in memory (so it can be sent again); None if it streams."""
    stream = request.stream
    if isinstance(stream, httpx.ByteStream):
        # Iterating is what Request.aread() does, minus an async comprehension.
        return b"".join(stream)
    if not isinstance(stream, httpx.AsyncByteStream):
        raise TypeError("FastHTTPTransport needs an async request body.")
    return None


def _is_stale(exc: Exception, conn: Connection) -> bool:
    # The server closed an idle connection just as it was reused: most likely nothing was
    # processed. Most likely only: a server that read the request and died before answering
    # looks the same, which is why only replayable requests are sent again.
    return isinstance(exc, PeerClosedError) and conn.reused and not conn.received_any


def _is_replayable(outgoing: _Outgoing) -> bool:
    """Whether sending a request twice is harmless: an idempotent method, or a client that
    made it so with an idempotency key (the rule of Go's net/http). A POST to /v1/messages is
    not: a second copy is billed again, so its failure goes to the client, whose SDK decides
    (and may have been told not to retry)."""
    return outgoing.method in _IDEMPOTENT_METHODS or any(
        name.lower() in _IDEMPOTENCY_HEADERS for name, _ in outgoing.headers
    )


def _last_coding(headers: httpx.Headers) -> str:
    value: str = headers.get("transfer-encoding", "")
    return value.rsplit(",", 1)[-1].strip().lower()


def origin_of(url: httpx.URL, request: httpx.Request | None = None) -> Origin:
    """Where a request to ``url`` connects: (scheme, host, port), the pool's key.

    Raises httpx.UnsupportedProtocol, naming ``request``, for a scheme other than http and
    https, or no host.
    """
    scheme = url.raw_scheme
    default_port = _DEFAULT_PORTS.get(scheme)
    if default_port is None:
        message = f"Unsupported URL scheme {url.scheme!r}."
        raise httpx.UnsupportedProtocol(message, request=request)
    if not url.raw_host:
        raise httpx.UnsupportedProtocol("Request URL has no host.", request=request)
    return scheme, url.raw_host, url.port or default_port


def _encode_head(
    method: str, target: bytes, fields: _RawHeaders, request: httpx.Request | None
) -> bytes:
    # A non-ASCII method becomes "?", which the token check below then refuses.
    encoded_method = method.encode("ascii", "replace")
    lines = b"".join([b"%s: %s\r\n" % pair for pair in fields])
    # A CR or LF inside a name or value would let one header smuggle in others.
    if (
        not encoded_method
        or encoded_method.translate(None, TOKEN_CHARS)
        or lines.count(b"\n") != len(fields)
        or lines.count(b"\r") != len(fields)
    ):
        raise httpx.LocalProtocolError("Invalid method or header for HTTP/1.1.", request=request)
    return b"%s %s HTTP/1.1\r\n%s\r\n" % (encoded_method, target, lines)


def _translate(
    exc: Exception, request: httpx.Request | None, *, sent: bool
) -> httpx.TransportError:
    if isinstance(exc, TimeoutError):
        if sent:
            return httpx.ReadTimeout("Timed out waiting for the server.", request=request)
        return httpx.WriteTimeout("Timed out sending the request.", request=request)
    cause = exc.__cause__
    if isinstance(exc, PeerClosedError) and isinstance(cause, OSError):
        message = str(cause) or repr(cause)
        if sent:
            return httpx.ReadError(message, request=request)
        return httpx.WriteError(message, request=request)
    return httpx.RemoteProtocolError(str(exc), request=request)
