"""What an OpenAI-compatible upstream can and cannot express: one immutable value per upstream."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["OpenAIQuirks"]


class OpenAIQuirks(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Capabilities of one Chat Completions upstream, read by :func:`to_chat_completions`.

    ``max_tokens_field``: the name the upstream reads the output limit from (OpenAI's own API
    wants ``max_completion_tokens``; many compatible servers only know ``max_tokens``).
    ``supports_images`` / ``supports_documents``: whether image parts and PDF ``file`` parts
    may be sent; when not, such blocks are answered with a 400 naming the block.
    ``reasoning``: ``"reasoning_effort"`` maps Anthropic ``thinking`` to ``reasoning_effort``;
    ``"none"`` drops it. ``stream_usage``: ask for a final usage chunk
    (``stream_options.include_usage``). ``strict_roles``: merge consecutive same-role messages
    for upstreams that reject them. ``system_first``: fold every system message (Claude Code
    sends one inside ``messages``) into a single leading one, for chat templates that accept a
    system message only first. ``max_output_tokens``: cap the output limit sent upstream
    (Claude Code asks for 128000, more than many local models allow). ``reasoning_history``:
    ``"reasoning_content"`` sends an assistant turn's thinking back as its
    ``reasoning_content`` (DeepSeek's thinking mode refuses a tool-call turn without it);
    ``"drop"`` leaves it out, as most servers want.
    """

    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_completion_tokens"
    supports_images: bool = True
    supports_documents: bool = False
    reasoning: Literal["none", "reasoning_effort"] = "none"
    stream_usage: bool = True
    strict_roles: bool = True
    system_first: bool = False
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    reasoning_history: Literal["drop", "reasoning_content"] = "drop"
