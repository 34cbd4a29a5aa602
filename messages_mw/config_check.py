"""Checking a configuration built in code the way a configuration file is checked.

msgspec checks types, ``Literal`` choices and ``Meta`` bounds when it decodes, but a struct's
constructor checks none of them: ``AuthConfig(mode="statik")`` builds, and a gateway given it
would run with no auth at all. So what the gateway and the rate limiter are handed is decoded
once more from its own builtins, at construction, where a mistake costs one exception.
"""

from __future__ import annotations

import os
from typing import TypeVar

import msgspec

__all__ = ["ConfigError", "check_config"]

_S = TypeVar("_S", bound=msgspec.Struct)


class ConfigError(ValueError):
    """A configuration file or value is invalid; the message names the key and the file."""


def check_config(config: _S, name: str) -> _S:
    """``config`` itself, once it passes the checks decoding applies; otherwise raises
    :class:`ConfigError` naming the key, e.g. ``config: Invalid enum value 'statik' - at
    `$.auth.mode```. ``name`` leads the message."""
    try:
        msgspec.convert(msgspec.to_builtins(config, enc_hook=_as_builtin), type(config))
    except (msgspec.ValidationError, TypeError) as exc:
        # TypeError: a value msgspec cannot even represent (a set where a tuple belongs).
        raise ConfigError(f"{name}: {exc}") from None
    return config


def _as_builtin(value: object) -> object:
    # A path where a file name is expected (usage_file) is what the gateway opens anyway.
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"Encoding objects of type {type(value).__name__} is unsupported")
