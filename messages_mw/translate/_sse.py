"""Incremental reading of an OpenAI-style event stream (``data: {...}`` lines)."""

from __future__ import annotations

__all__ = ["DataLines", "SseData"]

_BOM = b"\xef\xbb\xbf"

SseData = tuple[bytes | None, bytes]
"""The ``event:`` name in force (None for OpenAI's unnamed events) and one ``data:`` payload."""


class DataLines:
    """Splits a byte stream, cut anywhere, into ``data:`` payloads.

    Every ``data:`` line is one payload: Chat Completions servers send one JSON object per
    line, and some omit the blank line between events, so joining consecutive ``data:`` lines
    as the SSE spec would turn two chunks into one undecodable payload. Comments, ``id:`` and
    ``retry:`` lines are skipped. LF, CRLF and CR line ends are accepted.
    """

    def __init__(self) -> None:
        self._pending = bytearray()
        self._event: bytes | None = None
        self._after_cr = False
        self._begun = False

    def feed(self, chunk: bytes) -> list[SseData]:
        if not chunk:  # between a CR and its LF, it must not forget the CR
            return []
        if not self._begun:
            self._begun = True
            chunk = chunk.removeprefix(_BOM)  # the SSE spec's, ahead of the first line
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF cut in two; not an empty line
        self._after_cr = chunk.endswith(b"\r")
        if not chunk:
            return []
        # Only the new chunk is searched: a long line arriving in small pieces stays linear.
        cut = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
        if cut < 0:
            self._pending += chunk
            return []
        complete = bytes(self._pending) + chunk[: cut + 1]
        self._pending = bytearray(chunk[cut + 1 :])
        return self._parse(complete.splitlines())

    def flush(self) -> list[SseData]:
        """The payload of a last line that ended without a line break, if any."""
        rest, self._pending = bytes(self._pending), bytearray()
        return self._parse([rest]) if rest else []

    def _parse(self, lines: list[bytes]) -> list[SseData]:
        found: list[SseData] = []
        for line in lines:
            if not line:
                self._event = None
            elif line.startswith(b"data:"):
                value = line[5:]
                found.append((self._event, value[1:] if value.startswith(b" ") else value))
            elif line.startswith(b"event:"):
                self._event = line[6:].strip()
        return found
