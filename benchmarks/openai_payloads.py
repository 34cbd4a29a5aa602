"""What an OpenAI Chat Completions upstream sends, byte for byte as gpt-4o sends it.

Shared by the translation benchmark (``translation.py``) and the mock upstream's
``/v1/chat/completions`` route (``upstream.py``), so both measure the same realistic answers:
a ~1 KB completion, a text stream of ~30 chunks, and a tool-call stream whose arguments arrive
as a few characters per chunk. Every field a real chunk carries is there (``created``,
``system_fingerprint``, ``logprobs: null``, ``usage: null``...), since decoding them is part of
what translation costs.
"""

from __future__ import annotations

import json
from typing import Any

MODEL = "gpt-4o-2024-08-06"
_ID = "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"
_CREATED = 1741570283
_FINGERPRINT = "fp_f9f4fb6dbf"
# The same answer the Anthropic mock gives, cut the way an OpenAI tokenizer streams it.
TEXT_PIECES = (
    "I found",
    " the bug.",
    " In `ledgerline/export/csv.py`,",
    " `format_amount`",
    " calls `abs()`",
    " before applying",
    " the sign convention,",
    " so credits,",
    " which are stored",
    " as negative amounts,",
    " lose their sign",
    " on export.",
    " The fix is to keep",
    " the sign and only",
    " round with `ROUND_HALF_EVEN`",
    " at the presentation boundary.",
    " I'll update the function,",
    " add a regression test",
    " under `tests/export/test_csv.py`",
    " that exports a ledger",
    " with one debit",
    " and one credit,",
    " and run the export",
    " test module to confirm",
    " both rows keep their sign.",
    " No public signatures",
    " change, so the finance",
    " notebooks are unaffected.",
    " Shall I go ahead?",
)
_TOOL_CALLS = (
    ("call_Vx3mYk1bQ9sdf81LmNa0pR2c", "Read", {"file_path": "/repo/ledgerline/export/csv.py"}),
    (
        "call_f8Kq2ZrB0uTnW4yHc7DdJm5e",
        "Grep",
        {"pattern": "format_amount", "path": "/repo/tests/export", "output_mode": "content"},
    ),
)
_USAGE = {
    "prompt_tokens": 14215,
    "completion_tokens": 187,
    "total_tokens": 14402,
    "prompt_tokens_details": {"cached_tokens": 12372, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
_DONE = b"data: [DONE]\n\n"


def _compact(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def completion_body() -> bytes:
    """A non-streaming text completion (about 1 KB)."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(TEXT_PIECES),
        "refusal": None,
        "annotations": [],
    }
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
    return _compact(
        {
            "id": _ID,
            "object": "chat.completion",
            "created": _CREATED,
            "model": MODEL,
            "choices": [choice],
            "usage": _USAGE,
            "service_tier": "default",
            "system_fingerprint": _FINGERPRINT,
        }
    )


def _chunk(delta: dict[str, Any] | None, finish_reason: str | None = None) -> bytes:
    choices = [] if delta is None else [_choice(delta, finish_reason)]
    usage = _USAGE if delta is None else None
    body = {
        "id": _ID,
        "object": "chat.completion.chunk",
        "created": _CREATED,
        "model": MODEL,
        "service_tier": "default",
        "system_fingerprint": _FINGERPRINT,
        "choices": choices,
        "usage": usage,
    }
    return b"data: " + _compact(body) + b"\n\n"


def _choice(delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def _closing(finish_reason: str) -> list[bytes]:
    # OpenAI ends with an empty delta carrying finish_reason, then (stream_options.include_usage)
    # a chunk with no choices and the usage, then [DONE].
    return [_chunk({}, finish_reason), _chunk(None), _DONE]


def text_stream() -> list[bytes]:
    """A streamed text answer, one SSE event per element, as each arrives from the network."""
    opening = _chunk({"role": "assistant", "content": "", "refusal": None})
    pieces = [_chunk({"content": piece}) for piece in TEXT_PIECES]
    return [opening, *pieces, *_closing("stop")]


def _argument_fragments(arguments: dict[str, Any]) -> list[str]:
    """The arguments' JSON text cut into the 1-6 character pieces OpenAI streams."""
    text = json.dumps(arguments)
    cuts = [4, 2, 6, 3, 5, 1]
    fragments, start, turn = [], 0, 0
    while start < len(text):
        end = start + cuts[turn % len(cuts)]
        fragments.append(text[start:end])
        start, turn = end, turn + 1
    return fragments


def tool_call_stream() -> list[bytes]:
    """Two parallel tool calls: each opens with its id and name, then argument fragments."""
    events = [_chunk({"role": "assistant", "content": None, "refusal": None})]
    for index, (call_id, name, arguments) in enumerate(_TOOL_CALLS):
        function = {"name": name, "arguments": ""}
        opening = {"index": index, "id": call_id, "type": "function", "function": function}
        events.append(_chunk({"tool_calls": [opening]}))
        for fragment in _argument_fragments(arguments):
            call = {"index": index, "function": {"arguments": fragment}}
            events.append(_chunk({"tool_calls": [call]}))
    return [*events, *_closing("tool_calls")]


def tool_names() -> list[str]:
    """The tools ``tool_call_stream`` calls, in order (for checking a translation)."""
    return [name for _, name, _ in _TOOL_CALLS]
