"""Two gateway processes share one rate limit through a real redis-server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .test_limits_redis import RedisServer, fresh_prefix

LIMIT = 7
BODY = b'{"model":"claude-haiku-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert process.poll() is None, "the gateway process exited at start-up"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"gateway on port {port} did not start within 15 s")


@pytest.fixture
def two_gateways(tmp_path: Path) -> Iterator[list[str]]:
    redis = RedisServer(tmp_path)
    redis.start()
    config = tmp_path / "gateway.toml"
    config.write_text(
        'provider = "mock"\nusage_log = false\n'
        f'[limits]\nstore = "redis"\nredis_url = "{redis.url}"\n'
        # Generous: the pure-Python server .ci/run also tests against can be slow under a burst.
        f'key_prefix = "{fresh_prefix()}"\non_store_error = "closed"\nstore_timeout = 5.0\n'
        f'[[limits.rules]]\nscope = "key"\nrequests_per_minute = {LIMIT}\n'
    )
    processes: list[subprocess.Popen[bytes]] = []
    try:
        urls = []
        for _ in range(2):
            port = _free_port()
            command = [sys.executable, "-m", "messages_mw", "serve", "--config", str(config)]
            command += ["--port", str(port), "--log-level", "warning"]
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            processes.append(process)
            _wait_until_listening(port, process)
            urls.append(f"http://127.0.0.1:{port}")
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)
        redis.stop()


def test_two_gateway_processes_share_one_limit(two_gateways: list[str]) -> None:
    def call(index: int) -> httpx.Response:
        url = two_gateways[index % 2] + "/v1/messages"
        headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
        return httpx.post(url, content=BODY, headers=headers, timeout=10)

    # One request to each process first: both admit from the shared budget...
    first = [call(0), call(1)]
    assert [response.status_code for response in first] == [200, 200]
    # ...then a concurrent burst at both: per-process limits would admit 2 * LIMIT in all.
    with ThreadPoolExecutor(10) as pool:
        burst = list(pool.map(call, range(22)))
    responses = first + burst
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * LIMIT + [429] * (24 - LIMIT)
    for response in responses:
        assert response.headers["anthropic-ratelimit-requests-limit"] == str(LIMIT)
        if response.status_code == 429:
            assert response.json()["error"]["type"] == "rate_limit_error"
            assert int(response.headers["retry-after"]) >= 1
            assert response.headers["anthropic-ratelimit-requests-remaining"] == "0"
