"""Mappings shared by the response and stream translators, so both give the same message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..protocol import DECODE_ERRORS, Usage
from ..streaming import TokenUsage
from ._openai import InMessage, InToolCall, InUsage, any_decoder, encoder

__all__ = [
    "ABORTED_FINISH_REASONS",
    "RAW_ARGUMENTS_KEY",
    "anthropic_usage",
    "arguments_chars",
    "arguments_text",
    "generated_chars",
    "output_estimate",
    "stop_of",
    "stop_reason",
    "token_usage",
    "tool_id",
    "tool_input",
]

RAW_ARGUMENTS_KEY = "_raw"
_FINISH_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}


def stop_reason(finish_reason: str | None, *, used_tools: bool, refused: bool) -> str:
    """Anthropic ``stop_reason`` for an OpenAI ``finish_reason``.

    Some servers answer tool calls with ``stop`` (or nothing); a message that holds tool calls
    then still ends in ``tool_use``, or clients would not run them; one that holds none never
    does. OpenAI does not say which stop sequence matched, so ``stop`` is ``end_turn`` (see
    :func:`stop_of` for servers that do).
    """
    mapped = _FINISH_REASONS.get(finish_reason or "stop", "end_turn")
    if mapped == "tool_use" and not used_tools:
        # An agent loop told tool_use looks for a call to run and would find none.
        return "end_turn"
    if mapped == "end_turn" and used_tools:
        return "tool_use"
    if mapped == "end_turn" and refused:
        return "refusal"
    return mapped


# finish_reason values that say the answer was cut off, not finished (vLLM's abort, for an
# engine shutdown or a cancelled request): reported as an error, so that a client retries
# instead of taking a truncated answer for a complete one.
ABORTED_FINISH_REASONS = frozenset({"abort", "error"})


def stop_of(
    finish_reason: str | None, matched: str | int | None, *, used_tools: bool, refused: bool
) -> tuple[str, str | None]:
    """Anthropic ``stop_reason`` and ``stop_sequence``: :func:`stop_reason`, unless the server
    names the stop string that ended a plain answer (vLLM's ``stop_reason``, ``matched``
    here), which Anthropic reports as ``stop_sequence`` with the string."""
    if finish_reason == "stop" and isinstance(matched, str) and matched and not used_tools:
        return "stop_sequence", matched
    return stop_reason(finish_reason, used_tools=used_tools, refused=refused), None


def token_usage(usage: InUsage) -> TokenUsage:
    """Anthropic's split: ``input_tokens`` excludes the cached prompt tokens."""
    prompt = usage.prompt_tokens or 0
    details = usage.prompt_tokens_details
    cached = min(details.cached_tokens or 0, prompt) if details else 0
    return TokenUsage(
        input_tokens=prompt - cached,
        output_tokens=usage.completion_tokens or 0,
        cache_read_input_tokens=cached,
    )


def anthropic_usage(usage: TokenUsage) -> Usage:
    return Usage(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_creation_input_tokens=usage.cache_creation_input_tokens,
        cache_read_input_tokens=usage.cache_read_input_tokens,
    )


def tool_id(upstream_id: str | None, message_id: str, position: int) -> str:
    """The upstream's id, kept as is so that ``tool_result`` maps back to it; a made-up one
    (stable per message and position) for servers that send none."""
    return upstream_id or f"toolu_{message_id}_{position}"


def generated_chars(message: InMessage) -> int:
    """How much text a reply generated: its text, reasoning, refusal and tool arguments, in
    characters."""
    size = len(message.text or "") + len(message.reasoning_text or "") + len(message.refusal or "")
    return size + arguments_chars(message.tool_calls)


def arguments_chars(calls: Sequence[InToolCall] | None) -> int:
    """The characters of tool calls' arguments (a stream's: of their pieces)."""
    return sum(
        len(arguments_text(call.function.arguments))
        for call in calls or ()
        if call.function is not None
    )


def output_estimate(chars: int) -> int:
    """Output tokens for ``chars`` generated characters when the upstream reports no usage:
    one per four, as the gateway estimates input."""
    return (chars + 3) // 4


def arguments_text(arguments: str | dict[str, Any] | None) -> str:
    if isinstance(arguments, dict):
        return encoder.encode(arguments).decode()
    return arguments or ""


def tool_input(arguments: str | dict[str, Any] | None) -> dict[str, Any]:
    """Parsed tool arguments. Empty arguments are ``{}``; arguments that are not a JSON object
    (malformed, or cut short by ``length``) are kept as ``{"_raw": "<the text>"}``, so the
    client's tool rejects the call visibly and the text is not lost."""
    if isinstance(arguments, dict):
        return arguments
    if not arguments or not arguments.strip():
        return {}
    try:
        value = any_decoder.decode(arguments)
    except DECODE_ERRORS:
        return {RAW_ARGUMENTS_KEY: arguments}
    return value if isinstance(value, dict) else {RAW_ARGUMENTS_KEY: arguments}
