"""Chat Completions stream -> Anthropic SSE, incrementally, in the exact Anthropic grammar.

Output for a normal stream: ``message_start``; blocks in order (reasoning -> ``thinking``, text
-> ``text``, each tool call -> ``tool_use`` with ``input_json_delta``s), each started and
stopped once with consecutive indexes, a new kind of delta closing the open block; then at
``data: [DONE]`` (or at :meth:`StreamTranslator.finish` after a ``finish_reason``) one
``message_delta`` and ``message_stop``. ``message_delta`` waits for the end because OpenAI sends
usage in a last chunk of its own, after ``finish_reason``.

Ending badly: an error object in the stream, a malformed chunk, :meth:`~StreamTranslator.fail`,
or an upstream that ends with neither ``finish_reason`` nor ``[DONE]`` each give one ``error``
event right after whatever was sent (open blocks are left open, as the grammar allows), so a
client never mistakes a cut-off answer for a complete one.
"""

from __future__ import annotations

import msgspec

from ..errors import GatewayError
from ..protocol import (
    DECODE_ERRORS,
    ErrorDetail,
    ErrorEvent,
    Message,
    MessageDelta,
    MessageDeltaEvent,
    MessageDeltaUsage,
    MessageStartEvent,
    MessageStopEvent,
    TextBlock,
    TextDelta,
    ThinkingBlock,
    ThinkingDelta,
    Usage,
)
from ..streaming import TokenUsage
from ._blocks import BlockWriter
from ._mapping import (
    ABORTED_FINISH_REASONS,
    arguments_chars,
    output_estimate,
    stop_of,
    token_usage,
)
from ._openai import InBody, InError, InMessage, body_decoder
from ._sse import DataLines
from ._tool_stream import ToolStreams
from .errors import classify

__all__ = ["StreamTranslator"]

_MAX_ECHO = 200


class StreamTranslator:
    """Translates one upstream stream; create one per response, feed it every chunk in order.

    Nothing here blocks or does I/O: :meth:`feed` returns the Anthropic bytes to send now
    (possibly ``b""``), so cancellation between calls loses nothing but the rest of the stream.
    After the stream has ended (``message_stop`` or ``error`` returned) every call returns
    ``b""``. ``thinking`` false leaves the upstream's reasoning out (it still counts as
    generated output), as Anthropic answers a request that did not ask for thinking.
    """

    def __init__(
        self, *, model: str, message_id: str, input_tokens: int, thinking: bool = True
    ) -> None:
        self._model = model
        self._thinking = thinking
        self._message_id = message_id
        self._input_estimate = input_tokens
        self._lines = DataLines()
        self._blocks = BlockWriter()
        self._tools = ToolStreams(self._blocks, message_id)
        self._usage = TokenUsage()
        # Which counts the upstream gave (a null or missing one is estimated).
        self._input_reported = self._output_reported = False
        self._upstream_model: str | None = None
        # Characters generated so far: the output estimate, should no usage chunk come.
        self._generated = 0
        self._finish_reason: str | None = None
        self._matched_stop: str | int | None = None
        self._refused = False
        # Text or thinking that arrived while a tool call's arguments were incomplete, held
        # until they complete: starting its block would close the call's block for good.
        self._held: list[tuple[str, str]] = []
        self._wrote_text = False
        self._started = False
        self._ended = False

    @property
    def usage_reported(self) -> bool:
        """Whether the upstream reported its usage (else the usage sent is, at least in
        part, an estimate)."""
        return self._input_reported and self._output_reported

    @property
    def any_usage_reported(self) -> bool:
        """Whether the upstream reported either count (else all usage sent is estimated)."""
        return self._input_reported or self._output_reported

    @property
    def upstream_model(self) -> str | None:
        """The model the upstream's chunks named, if any."""
        return self._upstream_model

    @property
    def ended(self) -> bool:
        """Whether ``message_stop`` or an ``error`` event has been returned: nothing follows."""
        return self._ended

    def start(self) -> bytes:
        """``message_start`` now, before the upstream has sent anything, unless already sent:
        a client (and its first-byte watchdog) hears from the stream while the model thinks."""
        self._start()
        return self._blocks.take()

    @property
    def usage(self) -> TokenUsage:
        """Usage as the upstream reported it so far (all zero until its usage chunk)."""
        return msgspec.structs.replace(self._usage)

    def feed(self, chunk: bytes) -> bytes:
        """Translate the next upstream bytes, cut anywhere; never raises for stream content."""
        if not self._ended:
            for event, data in self._lines.feed(chunk):
                self._on_data(event, data)
                if self._ended:
                    break
        return self._blocks.take()

    def finish(self) -> bytes:
        """The upstream body ended: the closing events, or an ``error`` event if the upstream
        stopped before saying it was done (no ``finish_reason`` and no ``[DONE]``)."""
        if not self._ended:
            for event, data in self._lines.flush():
                self._on_data(event, data)
        if not self._ended and self._finish_reason is None:
            self._error("api_error", "upstream stream ended before the response was complete")
        if not self._ended:
            self._end()
        return self._blocks.take()

    def fail(self, error: GatewayError) -> bytes:
        """The upstream broke (read error, timeout): an ``error`` event carrying ``error``,
        unless its ``finish_reason`` had come: the answer is whole, and ends as at
        :meth:`finish` (an error would have the client retry a finished answer)."""
        if not self._ended:
            if self._finish_reason is None:
                self._error(error.error_type, error.message)
            else:
                self._end()
        return self._blocks.take()

    def _on_data(self, event: bytes | None, data: bytes) -> None:
        if data.strip() == b"[DONE]":
            self._end()
            return
        if not data.strip():
            return
        try:
            body = body_decoder.decode(data)
        except DECODE_ERRORS:
            echo = data[:_MAX_ECHO].decode("utf-8", "replace")
            self._error("api_error", f"upstream sent a malformed stream event: {echo}")
            return
        error = _error_in(event, body)
        if error is not None:
            _, error_type, message = classify(None, error)
            self._error(error_type, message)
            return
        self._start()
        if body.model and self._upstream_model is None:
            self._upstream_model = body.model
        if body.usage is not None and not body.usage.empty():
            self._usage = token_usage(body.usage)
            self._input_reported = body.usage.prompt_tokens is not None
            self._output_reported = body.usage.completion_tokens is not None
        choice = body.first_choice()
        if choice is not None and choice.delta is not None:
            self._on_delta(choice.delta)
        if choice is not None and choice.finish_reason:
            self._finish_reason = choice.finish_reason
            self._matched_stop = choice.stop_reason

    def _on_delta(self, delta: InMessage) -> None:
        if self._thinking:
            self._write("thinking", delta.reasoning_text)
        elif delta.reasoning_text:
            self._generated += len(delta.reasoning_text)  # generated all the same
        self._write("text", delta.text)
        if delta.refusal:
            self._refused = True
            self._write("text", delta.refusal)
        if delta.tool_calls:
            self._generated += arguments_chars(delta.tool_calls)
            for call in delta.tool_calls:
                self._tools.feed(call)
        if self._held and not self._tools.open_incomplete():
            self._release_held()

    def _write(self, kind: str, text: str | None) -> None:
        if not text:
            return
        self._generated += len(text)
        if self._tools.open_incomplete():
            self._held.append((kind, text))
            return
        self._emit(kind, text)

    def _release_held(self) -> None:
        held, self._held = self._held, []
        for kind, text in held:
            self._emit(kind, text)

    def _emit(self, kind: str, text: str) -> None:
        if self._blocks.open_kind != kind:
            self._tools.close_open()
            if kind == "text":
                self._blocks.start(TextBlock(text=""))
                self._wrote_text = True
            else:
                self._blocks.start(ThinkingBlock(thinking="", signature=""))
        self._blocks.delta(TextDelta(text=text) if kind == "text" else ThinkingDelta(thinking=text))

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        usage = Usage(
            input_tokens=self._input_estimate,
            output_tokens=1,
            cache_creation_input_tokens=0,
            cache_read_input_tokens=0,
        )
        message = Message(self._message_id, "assistant", self._model, [], None, None, usage)
        self._blocks.emit(MessageStartEvent(message=message))

    def _end(self) -> None:
        if self._held:
            self._tools.close_open()
            self._release_held()
        if self._finish_reason in ABORTED_FINISH_REASONS:
            message = f"upstream stopped the response early (finish_reason '{self._finish_reason}')"
            self._error("api_error", message)
            return
        self._start()
        self._tools.close_open()
        self._blocks.stop()
        self._tools.finish()
        if not self._wrote_text and not self._tools.has_calls:
            self._blocks.start(TextBlock(text=""))  # as the non-streaming translation has
            self._blocks.stop()
        reason, sequence = stop_of(
            self._finish_reason,
            self._matched_stop,
            used_tools=self._tools.has_calls,
            refused=self._refused,
        )
        delta = MessageDelta(stop_reason=reason, stop_sequence=sequence)
        self._blocks.emit(MessageDeltaEvent(delta=delta, usage=self._delta_usage()))
        self._blocks.emit(MessageStopEvent())
        self._ended = True

    def _delta_usage(self) -> MessageDeltaUsage:
        # A count the upstream did not give (no usage chunk with stream_usage off, a server
        # that ignores include_usage, a null) is estimated: token limits and cost would
        # otherwise count no output at all.
        output = self._usage.output_tokens if self._output_reported else None
        output_tokens = output_estimate(self._generated) if output is None else output
        if not self._input_reported:  # message_start's estimate stands
            return MessageDeltaUsage(output_tokens=output_tokens)
        usage = self._usage
        return MessageDeltaUsage(
            output_tokens=output_tokens,
            input_tokens=usage.input_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens,
        )

    def _error(self, error_type: str, message: str) -> None:
        if self._started and (self._input_reported or self._output_reported):
            # The upstream counted this response before it failed (a usage chunk after an
            # aborted finish_reason, say): the usage goes out ahead of the error, where the
            # gateway reads it, as an Anthropic stream reports it in message_delta (which
            # comes after the last content_block_stop).
            self._tools.close_open()
            self._blocks.stop()
            delta = MessageDelta(stop_reason=None, stop_sequence=None)
            self._blocks.emit(MessageDeltaEvent(delta=delta, usage=self._delta_usage()))
        self._blocks.emit(ErrorEvent(error=ErrorDetail(type=error_type, message=message)))
        self._ended = True


def _error_in(event: bytes | None, body: InBody) -> InError | None:
    error = body.error_detail()
    if error is None and event == b"error":
        error = InError(message=body.message, type=body.type, code=body.code)
    return error
