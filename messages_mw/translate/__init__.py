"""Anthropic Messages <-> OpenAI Chat Completions translation: pure functions, no I/O.

For the OpenAI-compatible provider: :func:`to_chat_completions` builds the upstream request,
:func:`to_anthropic_message` and :class:`StreamTranslator` turn its answer back into Anthropic's
shapes, and :func:`translate_error` its error responses. The mapping table is in ``README.md``.
"""

from .errors import translate_error
from .quirks import OpenAIQuirks
from .request import to_chat_completions
from .response import to_anthropic_message
from .stream import StreamTranslator

__all__ = [
    "OpenAIQuirks",
    "StreamTranslator",
    "to_anthropic_message",
    "to_chat_completions",
    "translate_error",
]
