"""Anthropic SSE output with the block grammar kept by construction."""

from __future__ import annotations

import msgspec

from ..protocol import (
    ContentBlock,
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    Delta,
    StreamEvent,
)
from ..streaming import frame_event

__all__ = ["BlockWriter"]

_event_encoder = msgspec.json.Encoder()


class BlockWriter:
    """Collects framed events; at most one block is open, and indexes follow start order."""

    def __init__(self) -> None:
        self._out: list[bytes] = []
        self._count = 0
        self.open_kind: str | None = None
        """The ``type`` of the open block (``text``, ``thinking``, ``tool_use``), else None."""

    def emit(self, event: StreamEvent) -> None:
        name = str(event.__struct_config__.tag)
        self._out.append(frame_event(name, _event_encoder.encode(event)))

    def start(self, block: ContentBlock) -> None:
        self.stop()
        self.emit(ContentBlockStartEvent(index=self._count, content_block=block))
        self.open_kind = str(block.__struct_config__.tag)
        self._count += 1

    def delta(self, delta: Delta) -> None:
        assert self.open_kind is not None, "a delta needs an open block"
        self.emit(ContentBlockDeltaEvent(index=self._count - 1, delta=delta))

    def stop(self) -> None:
        if self.open_kind is not None:
            self.emit(ContentBlockStopEvent(index=self._count - 1))
            self.open_kind = None

    def take(self) -> bytes:
        """Everything emitted since the last call, ready to send."""
        out = b"".join(self._out)
        self._out.clear()
        return out
