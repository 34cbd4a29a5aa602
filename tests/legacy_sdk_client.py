"""Drive the legacy 0.x Anthropic SDK against a gateway and print what it saw, as JSON.

Run by ``test_e2e_legacy_sdk.py`` in a subprocess, because the 0.x and 2.x SDKs cannot share
one environment: ``python -s legacy_sdk_client.py BASE_URL SCENARIO`` with ``PYTHONPATH``
naming the directory that holds ``anthropic==0.125.0``. That directory is moved to the front of
``sys.path`` so the 2.x SDK in site-packages can never be imported instead.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

EXPECTED_VERSION = "0.125.0"
API_KEY = "sk-legacy"
MODEL = "claude-sonnet-4-6"
HELLO = [{"role": "user", "content": "Hello"}]


def _import_legacy_sdk() -> Any:
    target = os.path.abspath(os.environ["PYTHONPATH"].split(os.pathsep)[0])
    sys.path[:] = [target, *(entry for entry in sys.path if os.path.abspath(entry) != target)]
    import anthropic

    if anthropic.__version__ != EXPECTED_VERSION:
        raise SystemExit(f"expected anthropic {EXPECTED_VERSION}, imported {anthropic.__version__}")
    if not os.path.abspath(anthropic.__file__).startswith(target + os.sep):
        raise SystemExit(f"anthropic was imported from {anthropic.__file__}, not from {target}")
    return anthropic


def _create(sdk: Any, base_url: str) -> dict[str, Any]:
    with sdk.Anthropic(base_url=base_url, api_key=API_KEY, max_retries=0) as client:
        message = client.messages.create(model=MODEL, max_tokens=64, messages=HELLO)
    return {"message": message.to_dict(mode="json"), "request_id": message._request_id}


def _stream(sdk: Any, base_url: str) -> dict[str, Any]:
    with (
        sdk.Anthropic(base_url=base_url, api_key=API_KEY, max_retries=0) as client,
        client.messages.stream(model=MODEL, max_tokens=64, messages=HELLO) as stream,
    ):
        events = list(stream)
        final = stream.get_final_message()
    return {
        "events": [event.type for event in events],
        "partial_json": [event.partial_json for event in events if event.type == "input_json"],
        "text": [event.text for event in events if event.type == "text"],
        "final": final.to_dict(mode="json"),
    }


def _count_tokens(sdk: Any, base_url: str) -> dict[str, Any]:
    with sdk.Anthropic(base_url=base_url, api_key=API_KEY, max_retries=0) as client:
        counted = client.messages.count_tokens(model=MODEL, messages=HELLO)
    return {"input_tokens": counted.input_tokens}


def _models_list(sdk: Any, base_url: str) -> dict[str, Any]:
    with sdk.Anthropic(base_url=base_url, api_key=API_KEY, max_retries=0) as client:
        return {"ids": [model.id for model in client.models.list()]}


def _rate_limited(sdk: Any, base_url: str) -> dict[str, Any]:
    with sdk.Anthropic(base_url=base_url, api_key=API_KEY, max_retries=0) as client:
        try:
            client.messages.create(model=MODEL, max_tokens=64, messages=HELLO)
        except sdk.APIStatusError as error:
            return {
                "error_class": type(error).__name__,
                "is_rate_limit_error": isinstance(error, sdk.RateLimitError),
                "status": error.status_code,
                "body": error.body,
                "request_id": error.request_id,
                "retry_after": error.response.headers.get("retry-after"),
            }
    return {"error_class": None}


def _retry_529(sdk: Any, base_url: str) -> dict[str, Any]:
    with sdk.Anthropic(base_url=base_url, api_key=API_KEY, max_retries=1) as client:
        started = time.monotonic()
        message = client.messages.create(model=MODEL, max_tokens=64, messages=HELLO)
        elapsed = time.monotonic() - started
    return {"text": message.content[0].text, "elapsed": elapsed}


SCENARIOS: dict[str, Callable[[Any, str], dict[str, Any]]] = {
    "create": _create,
    "stream": _stream,
    "count_tokens": _count_tokens,
    "models_list": _models_list,
    "rate_limited": _rate_limited,
    "retry_529": _retry_529,
}


def main(argv: list[str]) -> None:
    base_url, scenario = argv
    sdk = _import_legacy_sdk()
    result = SCENARIOS[scenario](sdk, base_url)
    print(json.dumps({"sdk_version": sdk.__version__, **result}))


if __name__ == "__main__":
    main(sys.argv[1:])
