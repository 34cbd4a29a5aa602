"""Chat Completions response -> Anthropic ``Message`` (non-streaming).

The content order is the one the stream translator produces for the same completion:
reasoning as a ``thinking`` block, then the text, then one ``tool_use`` block per tool call.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from ..errors import UpstreamUnavailableError
from ..protocol import DECODE_ERRORS, ContentBlock, Message, TextBlock, ThinkingBlock, ToolUseBlock
from ..streaming import TokenUsage
from ._mapping import (
    ABORTED_FINISH_REASONS,
    anthropic_usage,
    generated_chars,
    output_estimate,
    stop_of,
    token_usage,
    tool_id,
    tool_input,
)
from ._openai import (
    InBody,
    InChoice,
    InFunction,
    InMessage,
    any_decoder,
    body_decoder,
    encoder,
)
from .errors import upstream_error

__all__ = ["completion_as_stream_data", "to_anthropic_message"]

_message_encoder = msgspec.json.Encoder()


def to_anthropic_message(
    body: bytes,
    *,
    model: str,
    message_id: str,
    estimate_input: Callable[[], int] | None = None,
    thinking: bool = True,
) -> bytes:
    """Translate a 2xx Chat Completions body into an Anthropic Message JSON body.

    ``model`` is the model the client asked for (not the upstream's), ``message_id`` the id to
    report; ``thinking`` false leaves a reasoning model's reasoning out, as Anthropic answers
    a request that did not ask for thinking. A body without ``usage`` reports
    ``estimate_input()`` input tokens (as a translated stream's ``message_start`` does), or 0
    without it, and output tokens estimated from the reply's length. Raises
    :class:`~messages_mw.errors.UpstreamUnavailableError` (502) for a body that is not a
    completion, and the mapped :class:`~messages_mw.errors.GatewayError` subclass for an error
    object sent with a 2xx status.
    """
    parsed, choice, reply = _completion(body)
    if choice.finish_reason in ABORTED_FINISH_REASONS:
        error = UpstreamUnavailableError(
            f"upstream stopped the response early (finish_reason '{choice.finish_reason}')"
        )
        if parsed.usage is not None:  # counted upstream all the same
            error.usage = token_usage(parsed.usage)
        raise error
    reported = parsed.usage
    usage = token_usage(reported) if reported is not None else TokenUsage()
    # A count the upstream left out (or sent null) is estimated: 0 would leave token limits
    # and cost blind to the reply.
    if reported is None or reported.prompt_tokens is None:
        usage.input_tokens = estimate_input() if estimate_input is not None else 0
    if reported is None or reported.completion_tokens is None:
        usage.output_tokens = output_estimate(generated_chars(reply))
    reason, sequence = stop_of(
        choice.finish_reason,
        choice.stop_reason,
        used_tools=bool(reply.tool_calls),
        refused=bool(reply.refusal),
    )
    message = Message(
        id=message_id,
        role="assistant",
        model=model,
        content=_content(reply, message_id, thinking),
        stop_reason=reason,
        stop_sequence=sequence,
        usage=anthropic_usage(usage),
    )
    return _message_encoder.encode(message)


def completion_as_stream_data(body: bytes) -> bytes:
    """A whole 2xx Chat Completions body as the ``data:`` lines of the one-chunk stream that
    says the same, for :class:`~messages_mw.translate.StreamTranslator`: what a server that
    ignored ``stream: true`` means. Raises as :func:`to_anthropic_message` does for an error
    object or a body that is not a completion."""
    _, choice, _ = _completion(body)
    document = any_decoder.decode(body)
    whole = next(c for c in document["choices"] if not c.get("index"))  # 0, null or absent
    delta = whole["message"]
    # A message's tool calls have no index; a delta's must, to tell the calls apart.
    for position, call in enumerate(delta.get("tool_calls") or ()):
        call.setdefault("index", position)
    # stop_reason is vLLM's named stop string, which the stream reports as stop_sequence too.
    ending = {"finish_reason": choice.finish_reason, "stop_reason": choice.stop_reason}
    chunk: dict[str, object] = {"choices": [{"index": 0, "delta": delta, **ending}]}
    if isinstance(model := document.get("model"), str):
        chunk["model"] = model  # the snapshot that answered, as a real stream's chunks say
    if document.get("usage") is not None:
        chunk["usage"] = document["usage"]
    return b"data: " + encoder.encode(chunk) + b"\n\ndata: [DONE]\n\n"


def _completion(body: bytes) -> tuple[InBody, InChoice, InMessage]:
    """The body, its first choice and that choice's message; raises the mapped error for an
    error object, and a 502 for a body that is not a completion."""
    parsed = _decode(body)
    error = parsed.error_detail()
    if error is not None:
        raise upstream_error(error)
    choice = parsed.first_choice()
    if choice is None or choice.message is None:
        raise UpstreamUnavailableError("upstream response holds no choices[0].message")
    return parsed, choice, choice.message


def _decode(body: bytes) -> InBody:
    try:
        return body_decoder.decode(body)
    except DECODE_ERRORS as exc:
        raise UpstreamUnavailableError(
            f"upstream response is not a Chat Completions body: {exc}"
        ) from exc


def _content(reply: InMessage, message_id: str, thinking: bool) -> list[ContentBlock]:
    blocks: list[ContentBlock] = []
    reasoning = reply.reasoning_text if thinking else None
    if reasoning:
        # Chat Completions has no signatures; "" marks the block as unsigned (see README).
        blocks.append(ThinkingBlock(thinking=reasoning, signature=""))
    text = (reply.text or "") + (reply.refusal or "")
    calls = reply.tool_calls or []
    if text or not calls:
        blocks.append(TextBlock(text=text))
    for position, call in enumerate(calls):
        function = call.function or InFunction()
        blocks.append(
            ToolUseBlock(
                id=tool_id(call.id, message_id, position),
                name=function.name or "",
                input=tool_input(function.arguments),
            )
        )
    return blocks
